"""What a quality plan reads of a pristine image: cheap content features and a network's own pristine confidence.

``content_features(image)``: from the luma and chroma of the image (at most about one megapixel: larger images
are box-reduced first), the statistics JPEG's rate and a network's robustness depend on: the energy of the 8x8
block DCT in low, middle and high frequency bands, the share of flat and of textured blocks, how many luma
coefficients survive JPEG's quantiser at quality 50 and 90 (a proxy for the file's size at those qualities),
gradient and chroma spread, and the image's size. Numpy only, about 10 ms for a 500x375 photo.

What a plan reads of the network's own pristine output is the task's (``Task.plan_features``: a classifier's
top-1 probability and margin, a detector's confident detections): a network keeps its decision under compression
in proportion to how sure it was, so these carry most of a known network's need.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

CONTENT_FEATURES = ("log_pixels", "luma_std", "grad_mean", "dct_low", "dct_mid", "dct_high", "flat_share",
                    "textured_share", "nz_q50", "nz_q90", "chroma_std")
#: images are box-reduced below this many pixels before the content features (speed; the same in training)
MAX_FEATURE_PIXELS = 1_100_000

# JPEG's luma quantisation table (Annex K), row-major, and the 8x8 DCT-II matrix
_Q50 = np.array([16, 11, 10, 16, 24, 40, 51, 61, 12, 12, 14, 19, 26, 58, 60, 55, 14, 13, 16, 24, 40, 57, 69, 56,
                 14, 17, 22, 29, 51, 87, 80, 62, 18, 22, 37, 56, 68, 109, 103, 77, 24, 35, 55, 64, 81, 104, 113, 92,
                 49, 64, 78, 87, 103, 121, 120, 101, 72, 92, 95, 98, 112, 100, 103, 99], dtype=np.float64).reshape(8, 8)
_K = np.arange(8)
_DCT = np.sqrt(2 / 8) * np.cos((2 * _K[None, :] + 1) * _K[:, None] * np.pi / 16)
_DCT[0] /= np.sqrt(2)
_BAND = _K[:, None] + _K[None, :]  # u + v: 0 DC, 1-2 low, 3-6 middle, 7-14 high


def _table(quality: int) -> np.ndarray:
    scale = 5000 / quality if quality < 50 else 200 - 2 * quality
    return np.clip(np.floor((_Q50 * scale + 50) / 100), 1, 255)


def content_features(image: Image.Image) -> np.ndarray:
    """The :data:`CONTENT_FEATURES` of an RGB image, as float64."""
    w, h = image.size
    log_pixels = np.log(max(w * h, 1))
    factor = int(np.ceil(np.sqrt(w * h / MAX_FEATURE_PIXELS)))
    if factor > 1:
        image = image.reduce(factor)
    ycc = np.asarray(image.convert("YCbCr"), dtype=np.float64)
    y = ycc[..., 0]
    hh, ww = (y.shape[0] // 8) * 8, (y.shape[1] // 8) * 8
    if hh == 0 or ww == 0:
        y = np.pad(y, ((0, max(0, 8 - y.shape[0])), (0, max(0, 8 - y.shape[1]))), mode="edge")
        hh, ww = 8, 8
    blocks = (y[:hh, :ww] - 128).reshape(hh // 8, 8, ww // 8, 8).transpose(0, 2, 1, 3).reshape(-1, 8, 8)
    coef = _DCT @ blocks @ _DCT.T
    mag = np.abs(coef)
    low = mag[:, (_BAND >= 1) & (_BAND <= 2)].mean(1)
    mid = mag[:, (_BAND >= 3) & (_BAND <= 6)].mean(1)
    high = mag[:, _BAND >= 7].mean(1)
    ac = mag[:, _BAND >= 1].mean(1)
    nz50 = (np.round(coef / _table(50)) != 0).sum((1, 2)).mean()
    nz90 = (np.round(coef / _table(90)) != 0).sum((1, 2)).mean()
    gy, gx = np.abs(np.diff(y, axis=0)).mean() if y.shape[0] > 1 else 0.0, (
        np.abs(np.diff(y, axis=1)).mean() if y.shape[1] > 1 else 0.0)
    chroma = float(np.sqrt(ycc[..., 1].var() + ycc[..., 2].var()))
    return np.array([log_pixels, np.log1p(y.std()), np.log1p((gx + gy) / 2), np.log1p(low.mean()),
                     np.log1p(mid.mean()), np.log1p(high.mean()), float((ac < 1.0).mean()), float((high > 4.0).mean()),
                     np.log1p(nz50), np.log1p(nz90), np.log1p(chroma)], dtype=np.float64)
