"""Builders for user-declared labelers (:mod:`imutility.zoo.custom`): one per (task, file format, decoder)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from imutility.errors import InvalidInputError
from imutility.zoo.base import Labeler, LabelerSpec


def _onnx_classifier(spec: LabelerSpec, weights_path: Path | None, **_: object) -> Labeler:
    from imutility.zoo.backends.onnx_export import OnnxClassifier

    if weights_path is None:
        raise ValueError(f"{spec.name}: an ONNX model has no random-initialised form")
    return OnnxClassifier(spec, weights_path)


def _torchvision_classifier(spec: LabelerSpec, weights_path: Path | None, device: str = "cpu",
                            **_: object) -> Labeler:
    from imutility.zoo.backends.torch_models import TorchClassifier, build_torchvision_model

    return TorchClassifier(spec, build_torchvision_model(spec, weights_path), device)


def _torchscript_classifier(spec: LabelerSpec, weights_path: Path | None, device: str = "cpu",
                            **_: object) -> Labeler:
    import torch

    from imutility.zoo.backends.torch_models import TorchClassifier

    if weights_path is None:
        raise ValueError(f"{spec.name}: a TorchScript file has no random-initialised form")
    try:
        model = torch.jit.load(str(weights_path), map_location="cpu")
    except RuntimeError as e:
        raise InvalidInputError(f"{weights_path}: not a TorchScript file ({str(e).splitlines()[0]})") from e
    return TorchClassifier(spec, model, device)


def _tflite_classifier(spec: LabelerSpec, weights_path: Path | None, **_: object) -> Labeler:
    from imutility.zoo.backends.tflite import build_tflite_classifier

    return build_tflite_classifier(spec, weights_path)


#: a custom classifier's builder, by file format
CLASSIFIER_BUILDERS: dict[str, Callable[..., Labeler]] = {
    "onnx": _onnx_classifier, "torchvision": _torchvision_classifier, "torchscript": _torchscript_classifier,
    "tflite": _tflite_classifier}


def _detector(decoder: str) -> Callable[..., Labeler]:
    def build(spec: LabelerSpec, weights_path: Path | None, **kwargs) -> Labeler:
        from imutility.zoo.backends import onnx_detectors

        return getattr(onnx_detectors, f"build_{decoder}")(spec, weights_path, **kwargs)

    build.__name__ = f"build_{decoder}"
    return build


#: a custom ONNX detector's builder, by its output decoder (:mod:`imutility.zoo.backends.onnx_detectors`)
DETECTOR_BUILDERS: dict[str, Callable[..., Labeler]] = {
    d: _detector(d) for d in ("xyxy", "yolox", "nanodet", "fastestdet")}
DETECTOR_BUILDERS["xyxy_score_class"] = DETECTOR_BUILDERS.pop("xyxy")
