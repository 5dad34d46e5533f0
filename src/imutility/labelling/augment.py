"""Augmented copies of sources: flips and native-resolution crops (boxes follow), and class balancing."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image

from imutility.errors import InvalidInputError
from imutility.images import load_image
from imutility.tasks import Source


def apply_augment(img: Image.Image, boxes: np.ndarray | None, spec: str | None
                  ) -> tuple[Image.Image, np.ndarray | None]:
    """``flip``, ``crop:<scale>:<seed>`` or both joined by ``+``; boxes follow the image."""
    if not spec:
        return img, boxes
    b = None if boxes is None else np.asarray(boxes, dtype=np.float64).reshape(-1, 4).copy()
    for step in spec.split("+"):
        if step == "flip":
            img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
            if b is not None:
                b[:, [0, 2]] = img.width - b[:, [2, 0]]
        elif step.startswith("crop:"):
            _, scale, seed = step.split(":")
            rng = np.random.default_rng(int(seed))
            w, h = max(1, round(img.width * float(scale))), max(1, round(img.height * float(scale)))
            x0, y0 = int(rng.integers(0, img.width - w + 1)), int(rng.integers(0, img.height - h + 1))
            img = img.crop((x0, y0, x0 + w, y0 + h))  # native resolution: no resampling
            if b is not None:
                b = b - [x0, y0, x0, y0]
                b = np.clip(b, 0, [w, h, w, h])
        else:
            raise InvalidInputError(f"unknown augmentation {step!r} in {spec!r}")
    return img, b


def _augment_specs(i: int) -> str:
    """The i-th augmentation applied to a non-useful sample when balancing."""
    return ["flip", f"crop:0.85:{i}", f"flip+crop:0.85:{i}", f"crop:0.7:{i}", f"flip+crop:0.7:{i}"][i % 5]


def balancing_sources(table, sources: Sequence[Source], max_per_sample: int = 5) -> list[Source]:
    """Augmented copies of non-useful samples until the combined classes would balance (the paper's recipe).

    Each copy augments the PRISTINE image (flip / native-resolution crop), is distorted at the same
    level and is relabelled by the ensemble, so its label is measured, not assumed.
    """
    by_key = {s.key: s for s in sources}
    zeros = table[(table["label"] == 0) & table["augment"].isna()][["key", "distortion"]].values.tolist()
    deficit = int((table["label"] == 1).sum() - (table["label"] == 0).sum())
    if deficit <= 0 or not zeros:
        return []
    out: list[Source] = []
    sizes: dict[str, tuple[int, int]] = {}  # each photo is decoded once, however many copies it gets
    for rnd in range(max_per_sample):
        for key, dist in zeros:
            if len(out) >= deficit:
                return out
            src = by_key[key]
            aug = _augment_specs(rnd)
            boxes = src.boxes
            if boxes is not None and src.labels is not None:
                if key not in sizes:
                    sizes[key] = load_image(src.path).size  # EXIF-oriented, as the pipeline sees it
                size = sizes[key]
                boxes = tuple(map(tuple, _augment_boxes(np.asarray(boxes), aug, size).round(2).tolist()))
            out.append(Source(key=f"{key}#{aug}@{dist}", path=src.path, target=src.target, boxes=boxes,
                              labels=src.labels, augment=aug, distortions=(dist,)))
    return out


def _augment_boxes(boxes: np.ndarray, aug: str, size: tuple[int, int]) -> np.ndarray:
    """Boxes through :func:`apply_augment`, on a blank stand-in of the image's size."""
    dummy = Image.new("L", size)
    _, b = apply_augment(dummy, boxes, aug)
    return b
