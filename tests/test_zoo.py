"""Model zoo: registry, declared data, weights resolution and failure modes, every backend on odd images.

Golden tests on real photos and accuracy floors read ../shared and skip without it.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import natural_image, require_shared
from imutility import zoo
from imutility.names import UnknownNameError
from imutility.zoo import COCO80_IDS, WeightsHashError, WeightsNotFoundError
from imutility.zoo.weights import resolve

PAPER_CLASSIFIERS = ["inception_v3", "vgg19", "densenet121", "alexnet", "resnext50_32x4d", "efficientnet_b7"]
PAPER_DETECTORS = ["fasterrcnn_resnet50_fpn", "ssd300_vgg16", "ssdlite320_mobilenet_v3_large",
                   "maskrcnn_resnet50_fpn", "retinanet_resnet50_fpn", "fasterrcnn_mobilenet_v3_large_fpn"]
OFFLINE_CLASSIFIERS = ["efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2", "efficientnet_lite3",
                       "mobilenet_v2", "mobilenet_v1_075", "mobilenet_v3_small", "shufflenet_v1", "squeezenet1_1"]
OFFLINE_DETECTORS = ["ssd_mobilenet_v2", "yolox_nano", "nanodet_m", "fastestdet"]
HEAVY_RANDOM = {"fasterrcnn_resnet50_fpn", "maskrcnn_resnet50_fpn", "retinanet_resnet50_fpn"}  # ~20 s each
COCO_IDS = set(range(1, 91))


def odd_images() -> list[Image.Image]:
    """Sizes and modes a labeler must survive."""
    rgba = natural_image(64, 48).convert("RGBA")
    rgba.putalpha(100)
    deep = Image.fromarray(np.asarray(natural_image(50, 70).convert("L"), np.uint16) * 257)
    return [natural_image(1, 1), natural_image(1200, 17), natural_image(31, 900).convert("L"), rgba,
            natural_image(40, 30).convert("CMYK"), deep, natural_image(33, 33).convert("P")]


# ----------------------------------------------------------------------------- registry
def test_registry_lists_every_network():
    assert zoo.list_labelers("classification", paper=True) == PAPER_CLASSIFIERS
    assert zoo.list_labelers("detection", paper=True) == PAPER_DETECTORS
    assert zoo.list_labelers("classification", paper=False) == OFFLINE_CLASSIFIERS
    assert zoo.list_labelers("detection", paper=False) == OFFLINE_DETECTORS
    assert zoo.list_labelers("segmentation") == ["deeplabv3_mnv2_voc", "deeplabv3_mnv2_dm05_voc", "deeplabv3_257_voc"]
    assert len(zoo.list_labelers()) == 28


def test_unknown_names_suggest():
    with pytest.raises(UnknownNameError, match="yolox_nano"):
        zoo.get_spec("yolox-nano")
    with pytest.raises(UnknownNameError, match="classification"):
        zoo.list_labelers("clasification")


@pytest.mark.parametrize("name", PAPER_CLASSIFIERS + PAPER_DETECTORS + OFFLINE_CLASSIFIERS + OFFLINE_DETECTORS)
def test_every_entry_declares_its_data(name):
    s = zoo.get_spec(name)
    assert s.weights.sha256 and len(s.weights.sha256) >= 8
    assert s.weights.source and s.weights.license
    card = zoo.describe(name)
    assert json.loads(json.dumps(card))["preprocess"]


def test_torchvision_entries_follow_torchvision_metadata():
    s = zoo.get_spec("inception_v3")
    assert s.preprocess.size == (299, 299) and s.preprocess.resize_size == 342
    assert s.weights.file == "inception_v3_google-0cc3c7bd.pth" and s.weights.sha256 == "0cc3c7bd"
    assert s.metrics["acc@1"] == pytest.approx(77.294)
    assert zoo.get_spec("efficientnet_b7").preprocess.interpolation == "bicubic"


# ----------------------------------------------------------------------------- torchvision path, random weights
@pytest.mark.parametrize("name", PAPER_CLASSIFIERS)
def test_paper_classifiers_random_init(name):
    clf = zoo.get_labeler(name, pretrained=False)
    probs = clf([natural_image(320, 240), natural_image(97, 503).convert("L")])
    assert probs.shape == (2, 1000) and probs.dtype == np.float32
    np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-4)


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n in HEAVY_RANDOM else n
                                  for n in PAPER_DETECTORS])
def test_paper_detectors_random_init(name):
    det = zoo.get_labeler(name, pretrained=False, score_threshold=0.0)
    imgs = [natural_image(320, 240), natural_image(97, 203).convert("L")]
    for im, d in zip(imgs, det(imgs), strict=True):
        assert d.boxes.shape == (len(d), 4)
        assert set(d.labels.tolist()) <= COCO_IDS
        assert (d.boxes[:, 2] <= im.width + 1e-3).all() and (d.boxes[:, 3] <= im.height + 1e-3).all()
        assert (np.diff(d.scores) <= 1e-6).all()


def test_real_file_path_loads_the_same_weights(tmp_path):
    """The loading code for a real file, exercised with a random state dict saved to disk."""
    torch.manual_seed(1)
    ref = zoo.get_labeler("alexnet", pretrained=False)
    path = tmp_path / "alexnet-finetuned.pth"
    torch.save(ref.model.state_dict(), path)
    loaded = zoo.get_labeler("alexnet", weights_path=path, verify=False)
    imgs = [natural_image(200, 150)]
    np.testing.assert_allclose(loaded(imgs), ref(imgs), atol=1e-6)
    with pytest.raises(WeightsHashError, match="does not match"):
        zoo.get_labeler("alexnet", weights_path=path)


def test_torch_cache_is_searched_and_hash_checked(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    spec = zoo.get_spec("densenet121")
    with pytest.raises(WeightsNotFoundError) as e:
        zoo.get_labeler("densenet121")
    msg = str(e.value)
    assert spec.weights.filename in msg and str(tmp_path / "hub" / "checkpoints") in msg and spec.weights.url in msg
    ckpt = tmp_path / "hub" / "checkpoints" / spec.weights.filename
    ckpt.parent.mkdir(parents=True)
    torch.save(zoo.get_labeler("densenet121", pretrained=False).model.state_dict(), ckpt)
    assert resolve(spec.weights, verify=False) == ckpt
    av = zoo.availability("densenet121")
    assert not av.ok and "does not match" in av.detail


def test_densenet_legacy_keys_are_remapped(tmp_path):
    from imutility.zoo.backends.torch_models import _densenet_keys

    m = zoo.get_labeler("densenet121", pretrained=False).model
    current = {k: v for k, v in m.state_dict().items() if not k.endswith("num_batches_tracked")}
    legacy = {k.replace("norm1.", "norm.1.").replace("conv2.", "conv.2."): v for k, v in current.items()}
    assert any("norm.1." in k for k in legacy)
    assert _densenet_keys(legacy).keys() == current.keys()


def test_checkpoint_for_another_architecture_is_a_clear_error(tmp_path):
    path = tmp_path / "x.pth"
    torch.save(zoo.get_labeler("alexnet", pretrained=False).model.state_dict(), path)
    with pytest.raises(ValueError, match="does not fit"):
        zoo.get_labeler("resnext50_32x4d", weights_path=path, verify=False)


def test_pickled_object_is_refused(tmp_path):
    import pickle

    path = tmp_path / "evil.pth"
    path.write_bytes(pickle.dumps({"w": np.zeros(2)}))  # an arbitrary pickle, not a tensor state dict
    with pytest.raises(pickle.UnpicklingError, match="[Ww]eights only"):  # weights_only refuses it
        zoo.get_labeler("alexnet", weights_path=path, verify=False)


# ----------------------------------------------------------------------------- offline models: failure modes
def test_missing_and_corrupt_weights_fail_alone(tmp_path):
    models = require_shared("models")
    local = tmp_path / "models"
    shutil.copytree(models / "detection", local / "detection")
    (local / "detection" / "nanodet_m_320.onnx").unlink()
    data = bytearray((local / "detection" / "yolox_nano.onnx").read_bytes())
    data[1000] ^= 0xFF
    (local / "detection" / "yolox_nano.onnx").write_bytes(bytes(data))
    with pytest.raises(WeightsNotFoundError, match="nanodet_m_320.onnx"):
        zoo.get_labeler("nanodet_m", models=local)
    with pytest.raises(WeightsHashError, match="yolox_nano.onnx"):
        zoo.get_labeler("yolox_nano", models=local)
    assert not zoo.availability("yolox_nano", local).ok
    det = zoo.get_labeler("fastestdet", models=local)  # the others keep working
    assert len(det([natural_image()])) == 1


def test_missing_companion_file(tmp_path):
    models = require_shared("models")
    local = tmp_path / "m" / "classification"
    local.mkdir(parents=True)
    shutil.copy(models / "classification" / "squeezenet_v1.1.bin", local)
    with pytest.raises(WeightsNotFoundError, match="squeezenet_v1.1.param"):
        zoo.get_labeler("squeezenet1_1", models=tmp_path / "m")


def test_models_env_var(tmp_path, monkeypatch):
    monkeypatch.setenv("IMUTILITY_MODELS", str(tmp_path))
    with pytest.raises(WeightsNotFoundError, match=str(tmp_path)):
        zoo.get_labeler("mobilenet_v2")


# ----------------------------------------------------------------------------- offline models: real outputs
@pytest.fixture(scope="module")
def photos():
    from imutility.images import load_image

    root = require_shared("data", "photos")
    return {p.stem: load_image(p) for p in sorted(root.iterdir())}


@pytest.mark.parametrize("name", OFFLINE_CLASSIFIERS)
def test_offline_classifiers_on_any_image(name):
    require_shared("models")
    probs = zoo.get_labeler(name)(odd_images())
    assert probs.shape == (7, 1000) and np.isfinite(probs).all()
    np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-3)


@pytest.mark.parametrize("name", OFFLINE_DETECTORS)
def test_offline_detectors_on_any_image(name):
    require_shared("models")
    imgs = odd_images()
    for im, d in zip(imgs, zoo.get_labeler(name)(imgs), strict=True):
        assert d.boxes.shape == (len(d), 4) and set(d.labels.tolist()) <= set(COCO80_IDS)
        if len(d):
            assert (d.boxes >= 0).all() and (d.boxes[:, 2] <= im.width).all() and (d.boxes[:, 3] <= im.height).all()


# macaw = 88; on grace_hopper every sound classifier's top-5 holds military uniform (652) or academic gown (400)
@pytest.mark.parametrize("name", [n for n in OFFLINE_CLASSIFIERS if n != "shufflenet_v1"])
def test_golden_photos_classification(name, photos):
    clf = zoo.get_labeler(name)
    probs = clf([photos["parrot"], photos["grace_hopper"]])
    assert probs[0].argmax() == 88 and probs[0, 88] > 0.5
    assert {652, 400, 834, 457} & set(np.argsort(-probs[1])[:5].tolist())  # uniform / gown / suit / bow tie


@pytest.mark.parametrize("name", OFFLINE_DETECTORS)
def test_golden_photos_detection(name, photos):
    det = zoo.get_labeler(name)
    dog, person, kite = det([photos["dog"], photos["person"], photos["kite"]])

    def found(d, cat, box, score=0.3):
        from torchvision.ops import box_iou

        keep = (d.labels == cat) & (d.scores >= score)
        return keep.any() and box_iou(torch.tensor(d.boxes[keep]), torch.tensor([box], dtype=torch.float64)).max() > 0.5

    assert found(dog, 18, [130, 210, 320, 540])  # the dog
    assert found(dog, 2, [100, 130, 570, 430])  # the bicycle
    assert found(person, 1, [188, 100, 275, 370])  # the person
    assert found(person, 18, [65, 263, 205, 350])  # the dog beside her
    assert (kite.labels[kite.scores >= 0.5] == 38).sum() >= 2  # kites


# ----------------------------------------------------------------------------- accuracy floors
# Measured on all 1000 imagenet-sample photos (docs/zoo.md); a broken preprocessing or decoder falls far below.
TOP1_FLOORS = {"efficientnet_lite0": 0.80, "efficientnet_lite1": 0.80, "efficientnet_lite2": 0.80,
               "efficientnet_lite3": 0.80, "mobilenet_v2": 0.80, "mobilenet_v1_075": 0.70,
               "mobilenet_v3_small": 0.70, "squeezenet1_1": 0.60, "shufflenet_v1": 0.10}
MAP50_FLOORS = {"ssd_mobilenet_v2": 0.45, "yolox_nano": 0.40, "nanodet_m": 0.32, "fastestdet": 0.28}


@pytest.fixture(scope="module")
def imagenet_subset():
    from imutility.datasets import ClassificationDataset

    ds = ClassificationDataset.from_folder(require_shared("data", "imagenet-sample"))
    ds.samples = ds.samples[::5]  # 200 photos, 200 classes: a fixed list
    return ds


@pytest.mark.parametrize("name", OFFLINE_CLASSIFIERS)
def test_top1_floor_on_fixed_imagenet_subset(name, imagenet_subset):
    from imutility.zoo.evaluate import classification_accuracy

    r = classification_accuracy(zoo.get_labeler(name), imagenet_subset)
    assert r.n == 200
    assert r.top1 >= TOP1_FLOORS[name] - 0.05, r  # 200 photos: allow sampling noise below the 1000-photo floor


@pytest.mark.parametrize("name", OFFLINE_DETECTORS)
def test_map50_floor_on_coco_val128(name):
    from imutility.datasets import CocoDetectionDataset
    from imutility.zoo.evaluate import detection_map

    ds = CocoDetectionDataset.from_json(require_shared("data", "coco2017-val128", "instances.json"))
    m = detection_map(zoo.get_labeler(name), ds)
    assert m["n"] == 128 and m["mAP50"] >= MAP50_FLOORS[name], m


@pytest.mark.slow
@pytest.mark.parametrize("name", OFFLINE_CLASSIFIERS)
def test_top1_floor_on_all_imagenet_sample(name):
    from imutility.datasets import ClassificationDataset
    from imutility.zoo.evaluate import classification_accuracy

    ds = ClassificationDataset.from_folder(require_shared("data", "imagenet-sample"))
    r = classification_accuracy(zoo.get_labeler(name), ds)
    assert r.n == 1000 and r.top1 >= TOP1_FLOORS[name], r


def test_zoo_list_cli(capsys, tmp_path, monkeypatch):
    from imutility.cli import main

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty-torch-home"))  # the same on a machine that HAS them
    assert main(["zoo", "list"]) == 0
    out = capsys.readouterr().out
    for name in PAPER_CLASSIFIERS + OFFLINE_DETECTORS:
        assert name in out
    assert "not found" in out  # the paper's weights are absent from this torch cache and say so
    assert main(["zoo", "info", "yolox-nano"]) == 1
    assert "yolox_nano" in capsys.readouterr().err


@pytest.mark.parametrize("name", ["efficientnet_lite0", "squeezenet1_1"])
def test_onnx_runtime_path_matches_pytorch(name, photos):
    """PyTorch classifiers run through ONNX Runtime on CPU; they must agree with eager PyTorch."""
    from imutility.zoo.backends.onnx_export import OnnxClassifier

    ort_clf = zoo.get_labeler(name)
    assert isinstance(ort_clf, OnnxClassifier)
    eager = zoo.get_labeler(name, runtime="torch")
    imgs = list(photos.values())
    np.testing.assert_allclose(ort_clf(imgs), eager(imgs), atol=1e-4)  # the stated tolerance (docs/zoo.md)


def test_zoo_info_shows_the_measured_metrics(capsys):
    from imutility.cli import main

    assert main(["zoo", "info", "mobilenet_v2"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["metrics"]["imagenet_sample_top1"] == pytest.approx(0.883)
    assert all(zoo.describe(n)["metrics"] for n in zoo.list_labelers())  # none is empty


def test_missing_model_files_say_how_to_point_at_them(tmp_path, monkeypatch):
    monkeypatch.delenv("IMUTILITY_MODELS", raising=False)
    monkeypatch.setenv("IMUTILITY_SHARED", str(tmp_path / "nowhere"))
    with pytest.raises(WeightsNotFoundError) as e:
        zoo.get_labeler("yolox_nano")
    msg = str(e.value)
    assert "--models" in msg and "IMUTILITY_MODELS" in msg and "IMUTILITY_SHARED" in msg
    assert str(tmp_path / "nowhere") in msg  # where it looked
