"""Inputs of the utility predictor. Compression artifacts live in pixels, so the default geometry
takes crops at NATIVE resolution (no resampling that would smooth the 8x8 blocks away); whole-image
resizing is kept as the comparison. Augmentation is limited to crops and flips: never a re-encode."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from imutility.images import load_image


@dataclass(frozen=True)
class InputSpec:
    """How the predictor sees an image; stored in the model card."""

    size: int = 224
    geometry: str = "crop"  # "crop" (native-resolution crop) or "resize" (whole image to size x size)
    channels: str = "RGB"
    scale: float = 1 / 255
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)

    def as_dict(self) -> dict:
        return dict(self.__dict__)


def crop_or_pad(img: Image.Image, size: int, rng: np.random.Generator | None) -> Image.Image:
    """A size x size window at native resolution: random when ``rng`` is given, else central.
    Images smaller than the window are padded with grey (never upscaled)."""
    w, h = img.size
    if w < size or h < size:
        canvas = Image.new("RGB", (max(w, size), max(h, size)), (128, 128, 128))
        canvas.paste(img, ((canvas.width - w) // 2, (canvas.height - h) // 2))
        img, (w, h) = canvas, canvas.size
    if rng is None:
        x, y = (w - size) // 2, (h - size) // 2
    else:
        x, y = int(rng.integers(0, w - size + 1)), int(rng.integers(0, h - size + 1))
    return img.crop((x, y, x + size, y + size))


def to_tensor(img: Image.Image, spec: InputSpec, rng: np.random.Generator | None = None,
              flip: bool = False) -> torch.Tensor:
    if spec.geometry == "crop":
        img = crop_or_pad(img, spec.size, rng)
    elif spec.geometry == "resize":
        img = img.resize((spec.size, spec.size), Image.Resampling.BILINEAR)
    else:
        raise ValueError(f"geometry must be 'crop' or 'resize', got {spec.geometry!r}")
    if flip:
        img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    arr = np.asarray(img, dtype=np.float32)
    if spec.channels == "BGR":
        arr = arr[..., ::-1]
    arr = (arr * spec.scale - np.asarray(spec.mean, np.float32)) / np.asarray(spec.std, np.float32)
    return torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1)))


class UtilityImages(torch.utils.data.Dataset):
    """(image, target) pairs from a labels table: target is the class (binary) or the utility (continuous)."""

    def __init__(self, paths: Sequence[str], targets: Sequence[float], spec: InputSpec, train: bool, seed: int = 0):
        self.paths, self.targets, self.spec, self.train, self.seed = list(paths), list(targets), spec, train, seed
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        rng = np.random.default_rng([self.seed, self.epoch, i]) if self.train else None
        flip = bool(rng.integers(0, 2)) if rng is not None else False
        x = to_tensor(load_image(self.paths[i]), self.spec, rng, flip)
        return x, torch.tensor(self.targets[i])
