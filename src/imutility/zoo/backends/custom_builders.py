"""Builders for user-declared labelers (:mod:`imutility.zoo.custom`): one per (task, file format, decoder)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

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
        raise ValueError(f"{weights_path}: not a TorchScript file ({str(e).splitlines()[0]})") from e
    return TorchClassifier(spec, model, device)


def builder(task: str, fmt: str, decoder: str | None) -> Callable[..., Labeler]:
    """The builder for a custom labeler (the spec file was checked by :func:`imutility.zoo.custom.load_spec`)."""
    if task == "classification":
        return {"onnx": _onnx_classifier, "torchvision": _torchvision_classifier,
                "torchscript": _torchscript_classifier}[fmt]
    from imutility.zoo.backends import onnx_detectors

    return {"xyxy_score_class": onnx_detectors.build_xyxy, "yolox": onnx_detectors.build_yolox,
            "nanodet": onnx_detectors.build_nanodet, "fastestdet": onnx_detectors.build_fastestdet}[decoder]
