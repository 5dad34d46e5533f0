"""The two labeler interfaces and the declared entry that describes one labeler."""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
from PIL import Image

from imutility.zoo.preprocess import Preprocess
from imutility.zoo.weights import WeightsSpec

Task = Literal["classification", "detection", "segmentation"]
IMAGENET_CLASSES = 1000
ImageInput = Image.Image | np.ndarray

#: PASCAL VOC's 21 segmentation classes in the standard output order (0 = background)
VOC_CLASSES: tuple[str, ...] = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor")

#: The 80 official COCO category ids in sorted order: index i of an 80-class model is COCO80_IDS[i].
COCO80_IDS: tuple[int, ...] = tuple(i for i in range(1, 91) if i not in {12, 26, 29, 30, 45, 66, 68, 69, 71, 83})


def default_threads() -> int:
    """Threads a backend may use: ``$IMUTILITY_THREADS``, else every core."""
    return int(os.environ.get("IMUTILITY_THREADS", os.cpu_count() or 1))


@dataclass(frozen=True)
class LabelerOptions:
    """A labeler's backend settings, typed, one default each (a misspelt name fails at declaration).

    ``None`` for ``batch_size`` / ``score_threshold`` means the backend's own default.
    """

    requires: tuple[str, ...] = ()  # import names the backend needs (checked before building)
    batch_size: int | None = None
    arch: str | None = None  # torchvision / EfficientNet-Lite architecture name
    kwargs: dict[str, Any] = field(default_factory=dict)  # extra builder arguments (torchvision)
    state_dict_fixup: str | None = None  # a named key fix-up for old checkpoint layouts (torchvision)
    #: what the graph outputs: class probabilities or logits; a segmenter may also output a class map
    output: Literal["probs", "logits", "classmap"] = "logits"
    score_threshold: float | None = None  # detectors: the lowest score kept
    nms_iou: float = 0.45  # detectors decoded by imutility: NMS IoU
    max_detections: int = 100


@dataclass(frozen=True)
class LabelerSpec:
    """A registry entry: everything about a labeler that is data, the builder that makes it live.

    ``builder(spec, weights_path, **build_options)`` returns a :class:`Classifier` or :class:`Detector`;
    ``weights_path`` is ``None`` for random initialisation (tests of the torchvision path).
    """

    name: str
    task: Task
    backend: str
    weights: WeightsSpec
    preprocess: Preprocess
    builder: Callable[..., Labeler] = field(repr=False, compare=False)
    description: str = ""
    options: LabelerOptions = field(default_factory=LabelerOptions)  # backend settings
    paper: bool = False  # one of the paper's own networks
    metrics: dict[str, float] = field(default_factory=dict)  # measured figures, see docs/zoo.md
    #: a classifier's own class names in output order; None: the 1000 ImageNet-1k classes in the standard order
    classes: tuple[str, ...] | None = None
    custom: bool = False  # registered by a user (imutility.zoo.custom), not declared by the package

    @property
    def num_classes(self) -> int:
        return IMAGENET_CLASSES if self.classes is None else len(self.classes)

    @property
    def label_space(self) -> tuple[str, ...] | None:
        """What a class index means: None for ImageNet-1k (and COCO ids for detectors), else the class names."""
        return self.classes


@dataclass
class Detections:
    """One image's detections: xyxy boxes in original pixels, official COCO ids, scores (descending)."""

    boxes: np.ndarray  # (D, 4) float
    labels: np.ndarray  # (D,) int, official COCO category ids
    scores: np.ndarray  # (D,) float in [0, 1]

    def __len__(self) -> int:
        return len(self.scores)

    def as_dict(self) -> dict[str, np.ndarray]:
        return {"boxes": self.boxes, "labels": self.labels, "scores": self.scores}

    @classmethod
    def empty(cls) -> Detections:
        return cls(np.zeros((0, 4)), np.zeros(0, dtype=np.int64), np.zeros(0))


@dataclass(frozen=True)
class LabelerRecipe:
    """How a labeler was built (:func:`imutility.zoo.get_labeler` records it): enough to build the same labeler
    again in another process, e.g. a Ray actor (:func:`imutility.zoo.rebuild`). Picklable: the spec's builder is
    a module-level function."""

    spec: LabelerSpec
    weights_path: str | None  # the resolved file (None: random initialisation)
    device: str = "cpu"
    verify: bool = True
    options: tuple[tuple[str, Any], ...] = ()  # the backend options it was built with


class Labeler(ABC):
    """A network that labels images for one task. Call it on a batch of images of any size and mode."""

    spec: LabelerSpec
    batch_size: int = 32
    recipe: LabelerRecipe | None = None  # set by imutility.zoo.get_labeler

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def task(self) -> Task:
        return self.spec.task

    @property
    def preprocess(self) -> Preprocess:
        return self.spec.preprocess

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name} ({self.spec.backend})>"


class Classifier(Labeler):
    """Images -> probabilities over the 1000 ImageNet-1k classes in the standard (sorted synset) order, or over
    a custom classifier's own declared classes (``spec.classes``)."""

    @abstractmethod
    def _forward(self, batch: np.ndarray) -> np.ndarray:
        """Preprocessed batch -> (N, num_classes) probabilities."""

    def __call__(self, images: Sequence[ImageInput]) -> np.ndarray:
        k = self.spec.num_classes
        if len(images) == 0:
            return np.zeros((0, k), dtype=np.float32)
        out = []
        for i in range(0, len(images), self.batch_size):
            chunk = images[i:i + self.batch_size]
            out.append(self._forward(self.preprocess(chunk)))
        probs = np.concatenate(out).astype(np.float32)
        if probs.shape[1] != k:
            raise RuntimeError(f"{self.name} produced {probs.shape[1]} classes, expected {k}")
        return probs

    def _logits(self, batch: np.ndarray) -> np.ndarray:
        """Preprocessed batch -> (N, 1000) pre-softmax scores; backends whose model outputs logits override it."""
        raise NotImplementedError(f"{self.name} ({self.spec.backend}) outputs probabilities only, not logits")

    def logits(self, images: Sequence[ImageInput]) -> np.ndarray:
        """(N, num_classes) logits: what energy-type out-of-distribution scores need (softmax loses their offset)."""
        out = [self._logits(self.preprocess(images[i:i + self.batch_size]))
               for i in range(0, len(images), self.batch_size)]
        return np.concatenate(out).astype(np.float32) if out else np.zeros((0, self.spec.num_classes),
                                                                           dtype=np.float32)


class Detector(Labeler):
    """Images -> per image :class:`Detections` after NMS, boxes in the image's own pixel coordinates."""

    @abstractmethod
    def _detect(self, images: Sequence[Image.Image]) -> list[Detections]:
        """A chunk of RGB images -> detections in original coordinates."""

    def __call__(self, images: Sequence[ImageInput]) -> list[Detections]:
        from imutility.images import to_rgb
        from imutility.zoo.preprocess import as_pil

        pil = [to_rgb(as_pil(im)) for im in images]
        out: list[Detections] = []
        for i in range(0, len(pil), self.batch_size):
            out += self._detect(pil[i:i + self.batch_size])
        return out


@dataclass
class Segmentation:
    """One image's semantic segmentation: a class index per pixel of the network's output grid, which covers the
    WHOLE image stretched to it (segmenters take a plain resize, no crop or letterbox), and, for networks that
    output scores, the mean over pixels of the winning class's probability (``None`` for class-map outputs)."""

    mask: np.ndarray  # (H, W) uint8 class indices into the spec's classes
    confidence: float | None = None


class Segmenter(Labeler):
    """Images -> per image :class:`Segmentation` over ``spec.classes`` (PASCAL VOC's 21 for the zoo's)."""

    @abstractmethod
    def _raw(self, batch: np.ndarray) -> list[np.ndarray]:
        """Preprocessed batch -> per image the network's output: a class map or class scores (logits/probs)."""

    def __call__(self, images: Sequence[ImageInput]) -> list[Segmentation]:
        out: list[Segmentation] = []
        for i in range(0, len(images), self.batch_size):
            for y in self._raw(self.preprocess(images[i:i + self.batch_size])):
                out.append(decode_segmentation(y, self.spec.num_classes, self.spec.options.output, self.name))
        return out


def decode_segmentation(y: np.ndarray, num_classes: int, kind: str, name: str = "segmenter") -> Segmentation:
    """One image's raw segmenter output -> :class:`Segmentation`. ``kind`` ``"classmap"``: (H, W) class indices
    (a leading 1 is dropped); ``"logits"`` / ``"probs"``: class scores with the class axis first (C, H, W) or last
    (H, W, C). Anything else, or indices outside the classes, is one :class:`ValueError` naming the network."""
    y = np.asarray(y)
    while y.ndim > 2 and y.shape[0] == 1 and kind == "classmap":
        y = y[0]
    if kind == "classmap":
        if y.ndim != 2:
            raise ValueError(f"{name}: a class-map output must be (H, W), got shape {tuple(y.shape)}")
        if y.size and (y.min() < 0 or y.max() >= num_classes):
            raise ValueError(f"{name}: class map holds index {int(y.max())}, but the spec declares {num_classes} "
                             "classes")
        return Segmentation(y.astype(np.uint8))
    if y.ndim == 4 and y.shape[0] == 1:
        y = y[0]
    if y.ndim != 3 or num_classes not in (y.shape[0], y.shape[-1]):
        raise ValueError(f"{name}: a {kind} output must be (C, H, W) or (H, W, C) with C = {num_classes} classes, "
                         f"got shape {tuple(y.shape)}")
    scores = (np.moveaxis(y, 0, -1) if y.shape[-1] != num_classes else y).astype(np.float32)
    probs = softmax(scores) if kind == "logits" else scores
    return Segmentation(scores.argmax(-1).astype(np.uint8), float(probs.max(-1).mean()))


def softmax(x: np.ndarray, axis: int = -1) -> np.ndarray:
    x = x - x.max(axis=axis, keepdims=True)
    e = np.exp(x)
    return e / e.sum(axis=axis, keepdims=True)


def drop_background_logits(logits: np.ndarray) -> np.ndarray:
    """1001-wide logits (index 0 = background) -> the 1000 ImageNet ones; softmax of these = drop_background."""
    return logits[:, 1:] if logits.shape[1] == 1001 else logits


def drop_background(probs: np.ndarray) -> np.ndarray:
    """1001-class output (index 0 = background) -> 1000 classes, renormalised to sum to 1."""
    p = probs[:, 1:]
    total = p.sum(1, keepdims=True)
    return np.divide(p, total, out=np.full_like(p, 1.0 / p.shape[1]), where=total > 0)
