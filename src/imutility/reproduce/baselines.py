"""The notions the paper's Fig. 1 shows to be unfit for utility: perceptual quality and OOD scores.

Each score is oriented so that HIGHER should mean MORE USEFUL, then judged by AUROC against the binary
utility labels, beside the trained predictor on the same images:

- BRISQUE (no reference; the SVM and scaling shipped in the ``brisque`` package), negated: lower is better;
- PSNR (dB) and SSIM against the pristine image (scikit-image);
- maximum softmax probability and the negative energy logsumexp(logits) of a classifier (Hendrycks &
  Gimpel 2017; Liu et al. 2020), computed on the distorted image alone;
- feature squeezing (Xu et al., NDSS 2018), the adversarial-detection family of the paper's Fig. 1: the L1
  distance between the classifier's softmax on the image and on its squeezed versions (4-bit colour depth,
  2x2 median filter), the larger of the two; larger = more suspicious, so it is negated.
"""

from __future__ import annotations

import functools
import multiprocessing
import os
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor

import numpy as np

#: score name -> (axis label with units, True when the raw score grows with quality)
SCORES: dict[str, tuple[str, bool]] = {
    "brisque": ("BRISQUE (no reference; lower = better)", False),
    "psnr": ("PSNR vs pristine (dB)", True),
    "ssim": ("SSIM vs pristine", True),
    "msp": ("maximum softmax probability", True),
    "energy": ("negative energy = logsumexp(logits)", True),
    "squeeze": ("feature squeezing L1 (max of 4-bit, median 2x2; lower = better)", False),
    "predictor": ("predictor P(useful)", True),
}


@functools.lru_cache(maxsize=1)
def _brisque_model():
    try:
        from brisque import BRISQUE
    except ImportError as e:  # pragma: no cover - a core dependency
        raise ImportError("the BRISQUE baseline needs the 'brisque' package: pip install brisque") from e

    class _Brisque(BRISQUE):
        # brisque 0.2.0 hands 1-element arrays to float(), which numpy 2 refuses; flatten them first
        def scale_features(self, features):
            flat = np.array([float(np.asarray(f, dtype=np.float64).reshape(-1)[0]) for f in features])
            return super().scale_features(flat)

    return _Brisque(url=False)


def brisque_score(image: np.ndarray) -> float:
    """BRISQUE of an RGB uint8 array (about 0 = pristine, 100+ = heavily distorted)."""
    return float(_brisque_model().score(np.asarray(image)))


def full_reference_scores(distorted: np.ndarray, pristine: np.ndarray) -> tuple[float, float]:
    """(PSNR in dB, SSIM) of two same-size RGB uint8 arrays."""
    from skimage.metrics import peak_signal_noise_ratio, structural_similarity

    if distorted.shape != pristine.shape:
        raise ValueError(f"sizes differ: {distorted.shape} vs {pristine.shape}")
    with np.errstate(divide="ignore"):  # identical images: infinite PSNR, capped below
        psnr = peak_signal_noise_ratio(pristine, distorted, data_range=255)
    ssim = structural_similarity(pristine, distorted, data_range=255, channel_axis=2)
    return float(min(psnr, 100.0)), float(ssim)  # identical images: PSNR is infinite; cap it


def ood_scores(logits: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(maximum softmax probability, negative energy) per row of (N, C) logits."""
    z = np.asarray(logits, dtype=np.float64)
    m = z.max(1, keepdims=True)
    lse = (m + np.log(np.exp(z - m).sum(1, keepdims=True)))[:, 0]
    msp = np.exp(z.max(1) - lse)
    return msp, lse


def squeeze_bit_depth(image: np.ndarray, bits: int = 4) -> np.ndarray:
    """Colour depth reduced to ``bits`` per channel (Xu et al.'s first squeezer), as uint8."""
    levels = 2**bits - 1
    return (np.round(np.asarray(image, dtype=np.float64) / 255.0 * levels) / levels * 255.0).round().astype(np.uint8)


def squeeze_median(image: np.ndarray, size: int = 2) -> np.ndarray:
    """A ``size`` x ``size`` median filter per channel (Xu et al.'s second squeezer), as uint8."""
    from scipy.ndimage import median_filter

    return median_filter(np.asarray(image), size=(size, size, 1), mode="reflect")


def feature_squeezing(classifier, images: Sequence[np.ndarray]) -> np.ndarray:
    """Per image, the larger L1 distance between the classifier's softmax on it and on each squeezed version."""
    def probs(batch):
        z = np.asarray(classifier.logits(batch), dtype=np.float64)
        z = z - z.max(1, keepdims=True)
        e = np.exp(z)
        return e / e.sum(1, keepdims=True)

    base = probs(list(images))
    d_bits = np.abs(base - probs([squeeze_bit_depth(im) for im in images])).sum(1)
    d_median = np.abs(base - probs([squeeze_median(im) for im in images])).sum(1)
    return np.maximum(d_bits, d_median)


def _image_scores(pair: tuple[str, str]) -> tuple[float, float, float] | str:
    from imutility.images import ImageLoadError, load_image

    try:
        d = np.asarray(load_image(pair[0]))
        p = np.asarray(load_image(pair[1]))
        psnr, ssim = full_reference_scores(d, p)
    except (ImageLoadError, ValueError) as e:
        return f"{type(e).__name__}: {e}"
    try:
        return brisque_score(d), psnr, ssim
    except ImportError:  # the brisque package (or its libsvm) is missing: the other scores still count
        return float("nan"), psnr, ssim


def image_quality_scores(pairs: Sequence[tuple[str, str]], workers: int | None = None, progress: bool = False
                         ) -> tuple[np.ndarray, list[str | None]]:
    """(N, 3) BRISQUE / PSNR / SSIM per (distorted, pristine) path pair, in parallel; NaN + reason on failure."""
    from tqdm.auto import tqdm

    workers = max(1, workers or os.cpu_count() or 1)
    out = np.full((len(pairs), 3), np.nan)
    errors: list[str | None] = [None] * len(pairs)
    if workers == 1:
        results = map(_image_scores, pairs)
    else:
        # spawn, not fork: a fork of a process whose torch / ONNX Runtime thread pools already ran can deadlock
        pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"))
        results = pool.map(_image_scores, pairs, chunksize=8)
    try:
        for i, r in enumerate(tqdm(results, total=len(pairs), disable=not progress, desc="BRISQUE/PSNR/SSIM")):
            if isinstance(r, str):
                errors[i] = r
            else:
                out[i] = r
    finally:
        if workers > 1:
            pool.shutdown()
    return out, errors


def oriented_auroc(labels: np.ndarray, score: np.ndarray, higher_is_better: bool) -> float:
    """AUROC of a score for 'useful' (1) vs 'non-useful' (0); 0.5 = chance, NaN rows dropped."""
    from sklearn.metrics import roc_auc_score

    y = np.asarray(labels, dtype=float)
    s = np.asarray(score, dtype=float)
    ok = ~(np.isnan(y) | np.isnan(s))
    if len(set(y[ok])) < 2:
        return float("nan")
    return float(roc_auc_score(y[ok].astype(int), s[ok] if higher_is_better else -s[ok]))
