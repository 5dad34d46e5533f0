"""How an image becomes what a predictor's network sees: a window (crop or resize) or tiles over the whole image.

Pure Pillow and numpy (no torch), so the worker processes that decode and prepare images
(:mod:`imutility.predictor.prepare`) start in a fraction of a second. Each spec is stored in the model card
and is its own picklable *preparer*: ``spec(image) -> uint8 array (k, S, S, 3)``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image


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


def window(img: Image.Image, spec: InputSpec, rng: np.random.Generator | None = None) -> Image.Image:
    """What the predictor sees of an RGB image: the (central or random) crop, or the resized image."""
    if spec.geometry == "crop":
        return crop_or_pad(img, spec.size, rng)
    if spec.geometry == "resize":
        return img.resize((spec.size, spec.size), Image.Resampling.BILINEAR)
    raise ValueError(f"geometry must be 'crop' or 'resize', got {spec.geometry!r}")


@dataclass(frozen=True)
class WindowPreparer:
    """Picklable preparer (:mod:`imutility.predictor.prepare`): RGB image -> its window, uint8 (1, S, S, 3)."""

    spec: InputSpec

    def __call__(self, img: Image.Image) -> np.ndarray:
        return np.asarray(window(img, self.spec))[None]


#: above this many tiles' worth of resized pixels, tiles are resized one by one (see :meth:`TileSpec.tiles`)
WHOLE_RESIZE_TILES = 64


@dataclass(frozen=True)
class TileSpec:
    """How an image becomes tiles (see the module doc); stored in the predictor's card."""

    size: int = 224
    max_tiles: int = 4

    def boxes(self, width: int, height: int) -> tuple[tuple[int, int], list[tuple[int, int]]]:
        """((resized width, resized height), [(left, top) of each tile]) for an image of this size."""
        s = self.size
        r = s / min(width, height)
        rw, rh = max(s, round(width * r)), max(s, round(height * r))
        long_side = max(rw, rh)
        n = min(self.max_tiles, max(1, math.ceil(long_side / s - 0.15)))  # a sliver under 15 % adds no tile
        starts = [round(i * (long_side - s) / (n - 1)) for i in range(n)] if n > 1 else [(long_side - s) // 2]
        return (rw, rh), [(x, 0) if rw >= rh else (0, x) for x in starts]

    def tiles(self, img: Image.Image) -> list[np.ndarray]:
        """The tiles of one RGB image, each an HWC uint8 array of ``size`` x ``size``.

        The image is resized whole, then cut; only a very elongated one (resized, more than
        :data:`WHOLE_RESIZE_TILES` tiles' worth of pixels: a 1 x 60,000 strip would be 10 GB) has each tile
        resized from its own region of the original instead, so that memory stays bounded."""
        (rw, rh), starts = self.boxes(img.width, img.height)
        s = self.size
        if rw * rh > WHOLE_RESIZE_TILES * s * s:
            fx, fy = img.width / rw, img.height / rh
            return [np.asarray(img.resize((s, s), Image.Resampling.BILINEAR,
                                          box=(x * fx, y * fy, (x + s) * fx, (y + s) * fy))) for x, y in starts]
        big = img.resize((rw, rh), Image.Resampling.BILINEAR) if (rw, rh) != img.size else img
        arr = np.asarray(big)
        return [arr[y:y + s, x:x + s] for x, y in starts]

    def __call__(self, img: Image.Image) -> np.ndarray:
        """The tiles stacked, uint8 (k, size, size, 3): a TileSpec is its own picklable preparer
        (:mod:`imutility.predictor.prepare`)."""
        return np.stack(self.tiles(img))


def normalise(pixels: np.ndarray, channels: str, scale: float, mean: Sequence[float], std: Sequence[float]
              ) -> np.ndarray:
    """(..., H, W, 3) uint8 -> (..., 3, H, W) float32 ``(pixel * scale - mean) / std`` (channels reversed for
    BGR): the input values of every engine, PyTorch or ONNX Runtime."""
    x = np.asarray(pixels, dtype=np.float32)
    if channels == "BGR":
        x = x[..., ::-1]
    x = (x * np.float32(scale) - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
    return np.ascontiguousarray(np.moveaxis(x, -1, -3))


def pool_tiles(tile_logits: np.ndarray, owner: np.ndarray, n_images: int, mean_weight: float, min_weight: float,
               bias: float) -> np.ndarray:
    """Image logits ``mean_weight * mean + min_weight * min + bias`` over each image's tiles (NaN: no tile); the
    trained :class:`imutility.predictor.content.TilePool` in numpy."""
    z = np.asarray(tile_logits, dtype=np.float64)
    count = np.bincount(owner, minlength=n_images).astype(np.float64)
    mean = np.bincount(owner, weights=z, minlength=n_images) / np.maximum(count, 1)
    low = np.full(n_images, np.inf)
    np.minimum.at(low, owner, z)
    out = mean_weight * mean + min_weight * low + bias
    out[count == 0] = np.nan
    return out
