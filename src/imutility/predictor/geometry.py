"""How an image becomes what a predictor's network sees, and how the network's outputs become its score.

In: a window (crop or resize, :class:`InputSpec`) or tiles over the whole image (:class:`TileSpec`); each spec is
stored in the card and is its own picklable *preparer*: ``spec(image) -> uint8 array (k, S, S, 3)``; the pixel
values are :class:`imutility.zoo.preprocess.Values`. Out: :class:`ScoreHead`, the one place where outputs become
scores (tile pooling, then the link), for every engine, the deploy spec and the docs.

Pure Pillow and numpy (no torch), so the worker processes that decode and prepare images
(:mod:`imutility.predictor.runtime.prepare`) start in a fraction of a second.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image

from imutility.zoo.preprocess import Values


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

    @property
    def values(self) -> Values:
        return Values(self.channels, self.scale, tuple(self.mean), tuple(self.std))


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
    """Picklable preparer (:mod:`imutility.predictor.runtime.prepare`): RGB image -> its window, uint8 (1, S, S, 3)."""

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
        (:mod:`imutility.predictor.runtime.prepare`)."""
        return np.stack(self.tiles(img))


#: how outputs become a score: ``sigmoid`` of one logit, ``softmax`` of two logits (the score is the second's
#: probability), ``identity`` (a continuous utility)
LINKS = ("sigmoid", "softmax", "identity")


@dataclass(frozen=True)
class TilePooling:
    """An image's logit from its tiles' logits: ``mean_weight * mean + min_weight * min + bias`` (learned in
    training as :class:`imutility.predictor.networks.content.TilePool`; a Platt scaling is folded in)."""

    mean_weight: float
    min_weight: float
    bias: float

    def __call__(self, tile_logits: np.ndarray, owner: np.ndarray, n_images: int) -> np.ndarray:
        """Image logits over each image's tiles (``owner[t]`` = the image of tile ``t``; NaN: an image with none)."""
        z = np.asarray(tile_logits, dtype=np.float64).reshape(-1)
        count = np.bincount(owner, minlength=n_images).astype(np.float64)
        mean = np.bincount(owner, weights=z, minlength=n_images) / np.maximum(count, 1)
        low = np.full(n_images, np.inf)
        np.minimum.at(low, owner, z)
        out = self.mean_weight * mean + self.min_weight * low + self.bias
        out[count == 0] = np.nan
        return out


@dataclass(frozen=True)
class ScoreHead:
    """How a network's outputs become one score per image: the tile pooling (content predictors: one logit per
    tile), then the link. Every engine ends here; :meth:`describe` is what the deploy spec says of it."""

    link: str
    pooling: TilePooling | None = None

    def __post_init__(self) -> None:
        if self.link not in LINKS:
            raise ValueError(f"link must be one of {', '.join(LINKS)}, got {self.link!r}")

    def __call__(self, outputs: np.ndarray, owner: np.ndarray, n_images: int) -> np.ndarray:
        """Scores (float64, one per image) of the network's ``outputs`` (one row per prepared unit, ``owner[u]``
        its image: tiles of a content predictor, one window per image of a fine-tuned one)."""
        out = np.asarray(outputs, dtype=np.float64)
        if self.pooling is not None:
            z = self.pooling(out, owner, n_images)
        elif self.link == "softmax":
            e = np.exp(out - out.max(1, keepdims=True))
            return e[:, 1] / e.sum(1)
        else:
            z = out.reshape(len(out), -1)[:, 0]
        return 1 / (1 + np.exp(-z)) if self.link == "sigmoid" else z

    def describe(self) -> dict:
        """The deploy spec's ``score`` (and ``pool``) entries: the same rule in words and numbers."""
        out: dict = {}
        if self.pooling is not None:
            p = self.pooling
            out["pool"] = {"mean": p.mean_weight, "min": p.min_weight, "bias": p.bias,
                           "rule": "z = mean * mean(tile logits) + min * min(tile logits) + bias"}
        out["score"] = ({"link": "softmax", "column": 1} if self.link == "softmax" else
                        {"link": self.link} if self.pooling is not None else {"link": self.link, "column": 0})
        return out
