"""PyTorch labelers: torchvision's builders (the paper's networks), EfficientNet-Lite, SqueezeNet from ncnn.

Weights are loaded with ``torch.load(..., weights_only=True)`` into a model built with ``weights=None``,
so random-initialised test models and real files go through the same construction code.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from imutility.errors import InvalidInputError
from imutility.zoo.base import Classifier, Detections, Detector, LabelerSpec


def load_state_dict_file(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """A checkpoint as a flat state dict, never unpickling arbitrary objects."""
    obj = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict):
        raise InvalidInputError(f"{path}: expected a state dict, got {type(obj).__name__}")
    return obj


def load_into(model: torch.nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Strict load, except BatchNorm's ``num_batches_tracked`` (absent from frozen-BN checkpoints)."""
    res = model.load_state_dict(state, strict=False)
    missing = [k for k in res.missing_keys if not k.endswith("num_batches_tracked")]
    if missing or res.unexpected_keys:
        raise InvalidInputError(f"{source} does not fit the model: missing {missing[:5]}, "
                         f"unexpected {list(res.unexpected_keys)[:5]}")


class TorchClassifier(Classifier):
    """Any torch module that maps the declared preprocessing to 1000 (or 1001) logits, or to a custom classifier's
    own classes (logits, or probabilities where ``options.output`` says so)."""

    def __init__(self, spec: LabelerSpec, model: torch.nn.Module, device: str = "cpu"):
        self.spec = spec
        self.device = torch.device(device)
        self.model = model.eval().to(self.device)
        self.batch_size = spec.options.batch_size or 32

    @torch.inference_mode()
    def _torch_logits(self, batch: np.ndarray) -> torch.Tensor:
        logits = self.model(torch.from_numpy(batch).to(self.device))
        if isinstance(logits, tuple):  # inception in train mode; eval returns a tensor
            logits = logits[0]
        logits = logits.float()
        if self.spec.classes is None and logits.shape[1] == 1001:  # drop a background class
            logits = logits[:, 1:]
        return logits

    def _logits(self, batch: np.ndarray) -> np.ndarray:
        if self.spec.options.output == "probs":
            return super()._logits(batch)
        return self._torch_logits(batch).cpu().numpy()

    def _forward(self, batch: np.ndarray) -> np.ndarray:
        out = self._torch_logits(batch)
        return (out if self.spec.options.output == "probs" else out.softmax(-1)).cpu().numpy()


# ----------------------------------------------------------------------------- torchvision
def _densenet_keys(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """torchvision's own fix for its DenseNet files ('norm.1' -> 'norm1')."""
    pattern = re.compile(
        r"^(.*denselayer\d+\.(?:norm|relu|conv))\.((?:[12])\.(?:weight|bias|running_mean|running_var))$")
    out = {}
    for k, v in state.items():
        m = pattern.match(k)
        out[m.group(1) + m.group(2) if m else k] = v
    return out


STATE_DICT_FIXUPS: dict[str, Callable[[dict], dict]] = {"densenet": _densenet_keys}


def build_torchvision_model(spec: LabelerSpec, weights_path: Path | None) -> torch.nn.Module:
    import torchvision

    kwargs = dict(spec.options.kwargs)  # declared per entry (detectors: weights_backbone=None)
    model = torchvision.models.get_model(spec.options.arch, weights=None, **kwargs)
    if weights_path is not None:
        state = load_state_dict_file(weights_path)
        fix = STATE_DICT_FIXUPS.get(spec.options.state_dict_fixup or "")
        load_into(model, fix(state) if fix else state, str(weights_path))
    return model


def build_torchvision_classifier(spec: LabelerSpec, weights_path: Path | None, device: str = "cpu",
                                 **_: object) -> TorchClassifier:
    return TorchClassifier(spec, build_torchvision_model(spec, weights_path), device)


class TorchvisionDetector(Detector):
    """torchvision detection models: [0, 1] RGB tensors of any size in; they resize internally and
    return boxes in input pixels with COCO's official category ids (their 91-slot label space)."""

    def __init__(self, spec: LabelerSpec, model: torch.nn.Module, device: str = "cpu",
                 score_threshold: float | None = None):
        self.spec = spec
        self.device = torch.device(device)
        self.model = model.eval().to(self.device)
        self.batch_size = spec.options.batch_size or 4
        self.score_threshold = (spec.options.score_threshold or 0.05) if score_threshold is None \
            else score_threshold

    @torch.inference_mode()
    def _detect(self, images: Sequence[Image.Image]) -> list[Detections]:
        tensors = [torch.from_numpy(np.asarray(im, dtype=np.float32) / 255.0).permute(2, 0, 1).to(self.device)
                   for im in images]
        out = []
        for res in self.model(tensors):
            keep = res["scores"] >= self.score_threshold
            order = torch.argsort(res["scores"][keep], descending=True)
            out.append(Detections(res["boxes"][keep][order].cpu().numpy().astype(np.float64),
                                  res["labels"][keep][order].cpu().numpy().astype(np.int64),
                                  res["scores"][keep][order].cpu().numpy().astype(np.float64)))
        return out


def build_torchvision_detector(spec: LabelerSpec, weights_path: Path | None, device: str = "cpu",
                               score_threshold: float | None = None, **_: object) -> TorchvisionDetector:
    return TorchvisionDetector(spec, build_torchvision_model(spec, weights_path), device, score_threshold)


# ----------------------------------------------------------------------------- EfficientNet-Lite
def build_efficientnet_lite(spec: LabelerSpec, weights_path: Path | None, device: str = "cpu",
                            runtime: str | None = None, **_: object) -> Classifier:
    """EfficientNet-Lite0/1/2 from the efficientnet-lite-pytorch package; ONNX Runtime on CPU by default."""
    try:
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError as e:
        raise ImportError("EfficientNet-Lite needs: pip install efficientnet-lite-pytorch==0.1.0") from e
    model = EfficientNet.from_name(spec.options.arch)
    if weights_path is not None:
        load_into(model, load_state_dict_file(weights_path), str(weights_path))
    return torch_or_onnx(spec, model, weights_path, device, runtime)


def torch_or_onnx(spec: LabelerSpec, model: torch.nn.Module, weights_path: Path | None, device: str,
                  runtime: str | None) -> Classifier:
    """ONNX Runtime for pretrained models on CPU (5-9x faster than eager here, see docs/zoo.md), else PyTorch."""
    if runtime not in (None, "onnx", "torch"):
        raise ValueError(f"runtime must be 'onnx' or 'torch', got {runtime!r}")
    runtime = runtime or ("onnx" if device == "cpu" and weights_path is not None else "torch")
    if runtime == "onnx":
        from imutility.zoo.backends.onnx_export import OnnxClassifier

        return OnnxClassifier.from_torch(spec, model.eval(), weights_path)
    return TorchClassifier(spec, model, device)


# ----------------------------------------------------------------------------- SqueezeNet from ncnn
def parse_ncnn_convs(param_path: Path, bin_path: Path) -> list[tuple[str, np.ndarray, np.ndarray | None]]:
    """Convolution weights of an ncnn model (.param text + .bin blobs, fp16 or fp32 tagged)."""
    import struct

    lines = param_path.read_text().splitlines()
    if not lines or lines[0].strip() != "7767517":
        raise InvalidInputError(f"{param_path}: not an ncnn .param file (magic 7767517 missing)")
    convs = []
    for line in lines[2:]:
        parts = line.split()
        if parts and parts[0] == "Convolution":
            n_in, n_out = int(parts[2]), int(parts[3])
            kv = dict(x.split("=") for x in parts[4 + n_in + n_out:])
            convs.append((parts[1], int(kv["0"]), int(kv.get("1", 1)), int(kv.get("5", 0)), int(kv["6"])))
    buf = bin_path.read_bytes()
    off, out = 0, []
    for name, cout, k, bias_term, wsize in convs:
        flag = struct.unpack_from("<I", buf, off)[0]
        off += 4
        if flag == 0x01306B47:  # fp16 blob
            w = np.frombuffer(buf, np.float16, wsize, off).astype(np.float32)
            off += (wsize * 2 + 3) // 4 * 4
        elif flag == 0:
            w = np.frombuffer(buf, np.float32, wsize, off).copy()
            off += wsize * 4
        else:
            raise InvalidInputError(f"{bin_path}: unsupported blob tag {flag:#x} at layer {name}")
        b = None
        if bias_term:
            b = np.frombuffer(buf, np.float32, cout, off).copy()
            off += cout * 4
        out.append((name, w.reshape(cout, -1, k, k), b))
    if off != len(buf):
        raise InvalidInputError(f"{bin_path}: {len(buf) - off} bytes left over; the .bin does not match the .param")
    return out


def build_squeezenet_ncnn(spec: LabelerSpec, weights_path: Path | None, device: str = "cpu",
                          runtime: str | None = None, **_: object) -> Classifier:
    """ncnn's SqueezeNet 1.1 (Caffe weights) loaded into torchvision's squeezenet1_1: same layers."""
    import torchvision

    model = torchvision.models.squeezenet1_1(weights=None)
    if weights_path is not None:
        convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
        blobs = parse_ncnn_convs(weights_path.with_suffix(".param"), weights_path)
        if len(blobs) != len(convs):
            raise InvalidInputError(f"{weights_path}: {len(blobs)} conv layers, torchvision's squeezenet1_1 has "
                                    f"{len(convs)}")
        for m, (name, w, b) in zip(convs, blobs, strict=True):
            if tuple(m.weight.shape) != w.shape:
                raise InvalidInputError(f"{weights_path}: layer {name} has shape {w.shape}, expected "
                                        f"{tuple(m.weight.shape)}")
            m.weight.data = torch.from_numpy(w)
            m.bias.data = torch.from_numpy(b)
    return torch_or_onnx(spec, model, weights_path, device, runtime)
