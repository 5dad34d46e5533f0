"""Preprocessing declared as data: it travels with the weights, as in torchvision's weights API.

A :class:`Preprocess` turns a batch of RGB images of any size into the array a network takes and
keeps, per image, what is needed to map boxes back to original pixel coordinates.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
from PIL import Image

from imutility.images import to_rgb


@dataclass(frozen=True)
class Values:
    """The pixel values a network takes: each 8-bit pixel times ``scale``, minus ``mean``, over ``std``, per
    channel in ``channels`` order. One type for every network of the project: a zoo labeler's
    (:attr:`Preprocess.values`), a predictor's backbone (which IS a zoo entry) and a fine-tuned predictor's input,
    all stored in their cards and checked when made (three finite means, three finite non-zero stds)."""

    channels: Literal["RGB", "BGR"] = "RGB"
    scale: float = 1.0
    mean: tuple[float, float, float] = (0.0, 0.0, 0.0)
    std: tuple[float, float, float] = (1.0, 1.0, 1.0)

    def __post_init__(self) -> None:
        import math

        if self.channels not in ("RGB", "BGR"):
            raise ValueError(f"channels must be RGB or BGR, got {self.channels!r}")
        nums = [self.scale, *self.mean, *self.std]
        if len(self.mean) != 3 or len(self.std) != 3 or not all(
                isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) for v in nums):
            raise ValueError(f"scale, mean and std must be finite numbers, 3 each for mean and std, got "
                             f"{self.scale!r}, {list(self.mean)!r}, {list(self.std)!r}")
        if self.scale == 0 or any(v == 0 for v in self.std):
            raise ValueError(f"scale and std must be non-zero (a division by zero), got {self.scale!r}, "
                             f"{list(self.std)!r}")

    def normalise(self, pixels: np.ndarray) -> np.ndarray:
        """(..., H, W, 3) uint8 -> (..., 3, H, W) float32 ``(pixel * scale - mean) / std`` (channels reversed
        for BGR): the input of every predictor engine, PyTorch or ONNX Runtime, and of their training."""
        x = np.asarray(pixels, dtype=np.float32)
        if self.channels == "BGR":
            x = x[..., ::-1]
        x = (x * np.float32(self.scale) - np.asarray(self.mean, np.float32)) / np.asarray(self.std, np.float32)
        return np.ascontiguousarray(np.moveaxis(x, -1, -3))

    def affine(self) -> tuple[np.ndarray, np.ndarray]:
        """(a, b) per channel with ``a * pixel + b`` = the normalised value: the form :class:`Preprocess` applies
        in place, image by image, to a labeler's batch (the same map, rounded once less: faster on big batches)."""
        std = np.asarray(self.std, np.float32)
        return (np.float32(self.scale) / std).astype(np.float32), (-np.asarray(self.mean, np.float32) / std
                                                                  ).astype(np.float32)

    def describe(self) -> dict:
        return {"channels": self.channels, "scale": self.scale, "mean": list(self.mean), "std": list(self.std)}


_INTERP = {"bilinear": Image.Resampling.BILINEAR, "bicubic": Image.Resampling.BICUBIC,
           "area": Image.Resampling.BOX, "nearest": Image.Resampling.NEAREST}


@dataclass(frozen=True)
class Preprocess:
    """How a network wants its input.

    * ``resize``: ``stretch`` (whole image to ``size``), ``letterbox`` (keep aspect, pad the
      bottom/right with ``pad_value``), ``center_crop`` (shorter side to ``resize_size``, then the
      central ``size``) or ``model`` (the network resizes internally, e.g. torchvision's detectors;
      ``size`` is then its nominal input).
    * values: pixels 0..255 are multiplied by ``scale``, then ``(x - mean) / std`` per channel (in
      the order of ``channels``); ``dtype="uint8"`` hands raw pixels to a quantised network.
    """

    size: tuple[int, int]  # (height, width) of the network input
    resize: Literal["stretch", "letterbox", "center_crop", "model"] = "stretch"
    resize_size: int | None = None
    interpolation: Literal["bilinear", "bicubic", "area", "nearest"] = "bilinear"
    channels: Literal["RGB", "BGR"] = "RGB"
    layout: Literal["NCHW", "NHWC"] = "NCHW"
    scale: float = 1.0
    mean: tuple[float, float, float] = (0.0, 0.0, 0.0)
    std: tuple[float, float, float] = (1.0, 1.0, 1.0)
    dtype: Literal["float32", "uint8"] = "float32"
    pad_value: int = 114

    def __post_init__(self) -> None:
        if self.resize == "center_crop" and self.resize_size is None:
            raise ValueError("center_crop needs resize_size")

    @property
    def values(self) -> Values:
        """The pixel values this network takes (:class:`Values`)."""
        return Values(self.channels, self.scale, tuple(self.mean), tuple(self.std))

    def describe(self) -> str:
        h, w = self.size
        how = {"stretch": f"resize to {w}x{h}", "letterbox": f"letterbox to {w}x{h} (pad {self.pad_value})",
               "center_crop": f"resize shorter side to {self.resize_size}, center-crop {w}x{h}",
               "model": f"any size (the model resizes internally, nominal {w}x{h})"}[self.resize]
        vals = "raw uint8" if self.dtype == "uint8" else f"x*{self.scale:g}, mean {self.mean}, std {self.std}"
        return f"{how}, {self.interpolation}, {self.channels} {self.layout}, {vals}"

    def geometry(self, width: int, height: int) -> tuple[float, float, float, float]:
        """(scale_x, scale_y, offset_x, offset_y) mapping input pixels to network pixels."""
        h, w = self.size
        if self.resize == "model":
            return 1.0, 1.0, 0.0, 0.0
        if self.resize == "stretch":
            return w / width, h / height, 0.0, 0.0
        if self.resize == "letterbox":
            r = min(w / width, h / height)
            return r, r, 0.0, 0.0
        r = self.resize_size / min(width, height)
        rw, rh = max(1, round(width * r)), max(1, round(height * r))
        return rw / width, rh / height, -((rw - w) // 2), -((rh - h) // 2)

    def image_to_array(self, img: Image.Image) -> np.ndarray:
        """One image as an HWC uint8 array of the network's size (before value scaling)."""
        img = to_rgb(img)
        h, w = self.size
        interp = _INTERP[self.interpolation]
        if self.resize == "model":
            arr = np.asarray(img)
        elif self.resize == "stretch":
            arr = np.asarray(img.resize((w, h), interp))
        elif self.resize == "letterbox":
            r = min(w / img.width, h / img.height)
            nw, nh = max(1, int(img.width * r)), max(1, int(img.height * r))
            arr = np.full((h, w, 3), self.pad_value, dtype=np.uint8)
            arr[:nh, :nw] = np.asarray(img.resize((nw, nh), interp))
        else:
            r = self.resize_size / min(img.width, img.height)
            rw, rh = max(1, round(img.width * r)), max(1, round(img.height * r))
            big = img.resize((rw, rh), interp)
            left, top = (rw - w) // 2, (rh - h) // 2
            arr = np.asarray(big.crop((left, top, left + w, top + h)))  # crop pads with 0 if smaller
        return arr

    def __call__(self, images: Sequence[Image.Image | np.ndarray]) -> np.ndarray:
        """A batch ready for the network: NCHW/NHWC, float32 normalised or uint8 raw.

        Built image by image into one preallocated array, so the channel swap, layout change and
        normalisation run on cache-sized pieces (several times faster than on the whole batch).
        """
        h, w = self.size
        n = len(images)
        dtype = np.float32 if self.dtype == "float32" else np.uint8
        first = None
        if self.resize == "model":  # sizes differ per image: only a batch of one is well defined
            first = self.image_to_array(as_pil(images[0]))
            h, w = first.shape[:2]
        shape = (n, 3, h, w) if self.layout == "NCHW" else (n, h, w, 3)
        out = np.empty(shape, dtype=dtype)
        a, b = self.values.affine()
        affine = self.dtype == "float32" and not (np.all(a == 1) and np.all(b == 0))
        for i, im in enumerate(images):
            arr = first if (i == 0 and first is not None) else self.image_to_array(as_pil(im))
            if self.channels == "BGR":
                arr = arr[..., ::-1]
            if self.layout == "NCHW":
                out[i] = arr.transpose(2, 0, 1)
                if affine:
                    out[i] *= a[:, None, None]
                    out[i] += b[:, None, None]
            else:
                out[i] = arr
                if affine:
                    out[i] *= a
                    out[i] += b
        return out


def as_pil(im: Image.Image | np.ndarray) -> Image.Image:
    """Accept PIL images or HWC uint8 RGB arrays (a 2-D array is grayscale)."""
    if isinstance(im, Image.Image):
        return im
    arr = np.asarray(im)
    if arr.dtype != np.uint8:
        raise TypeError(f"image arrays must be uint8 HWC RGB, got {arr.dtype}")
    if arr.ndim == 2:
        return Image.fromarray(arr, "L")
    if arr.ndim == 3 and arr.shape[2] in (3, 4):
        return Image.fromarray(arr, "RGB" if arr.shape[2] == 3 else "RGBA")
    raise TypeError(f"image arrays must be HxW or HxWx3, got shape {arr.shape}")
