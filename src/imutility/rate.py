"""Rate control for machines: the fewest bytes that keep an image useful.

``compress(image, min_utility, scorer)`` finds, per image, the LOWEST quality of a codec whose encoded
image still scores at least ``min_utility``, by bisection over the quality range: each step encodes the
image in memory (no temporary file), decodes it, and scores it. The scorer is either a predictor (from
the distorted image alone: what a deployed encoder can do) or an oracle that needs the pristine image and
a network (:class:`NetworkOracle`: the network's own retained confidence, the bound any predictor can
reach for that network).

Bisection assumes that the score does not fall when the quality rises; where a scorer breaks that, it
returns the lowest passing quality of the qualities it visited. ``search="exhaustive"`` tries every
quality in the range and returns the true lowest passing one, at up to 100 encodes per image. An image no
quality can satisfy is encoded at ``max_quality`` and flagged (``satisfied=False``).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from PIL import Image

from imutility.distort import JPEG, WebP
from imutility.errors import ImutilityError

#: codecs the search can drive: name -> (distortion class, quality range it accepts)
CODECS: dict[str, tuple[type, tuple[int, int]]] = {"jpeg": (JPEG, (1, 100)), "webp": (WebP, (0, 100))}
SEARCHES = ("bisect", "exhaustive")


class RateControlError(ImutilityError, ValueError):
    """Settings the search cannot run with (a threshold outside [0, 1], an empty quality range, ...)."""


@dataclass(frozen=True)
class Compressed:
    """The chosen encoding of one image."""

    data: bytes  # the codec's bitstream at the chosen quality
    quality: int
    utility: float  # the scorer's value at that quality
    satisfied: bool  # False when no quality in the range reached ``min_utility`` (then quality = max_quality)
    encodes: int  # encodes (= scorer calls) the search made
    suffix: str  # the codec's file suffix
    bpp: float


def _check(min_utility: float, codec: str, min_quality: int, max_quality: int, search: str) -> None:
    if not isinstance(min_utility, int | float) or math.isnan(min_utility) or not 0 <= min_utility <= 1:
        raise RateControlError(f"min_utility must be in [0, 1], got {min_utility!r}")
    if codec not in CODECS:
        raise RateControlError(f"codec must be one of {', '.join(CODECS)}, got {codec!r}")
    lo, hi = CODECS[codec][1]
    if not (lo <= min_quality <= max_quality <= hi):
        raise RateControlError(f"{codec} qualities must satisfy {lo} <= min_quality <= max_quality <= {hi}, "
                               f"got {min_quality}..{max_quality}")
    if search not in SEARCHES:
        raise RateControlError(f"search must be one of {', '.join(SEARCHES)}, got {search!r}")


def compress(image: Image.Image, min_utility: float = 0.5,
             predictor: Callable[[list[Image.Image]], np.ndarray] | None = None, codec: str = "jpeg",
             min_quality: int = 1, max_quality: int = 95, search: str = "bisect") -> Compressed:
    """The lowest quality in ``[min_quality, max_quality]`` whose encoding ``predictor`` rates >= ``min_utility``.

    ``predictor`` is anything that maps a list of decoded images to one score each: a
    :class:`~imutility.Predictor` (default: the shipped ``default``), or :meth:`NetworkOracle.scorer` of
    the pristine image.
    """
    _check(min_utility, codec, min_quality, max_quality, search)
    scorer = predictor if predictor is not None else _default_predictor()
    cls = CODECS[codec][0]
    cache: dict[int, tuple[object, float]] = {}

    def score(q: int) -> float:
        if q not in cache:
            res = cls(q)(image)
            cache[q] = (res, float(np.asarray(scorer([res.image]))[0]))
        return cache[q][1]

    if search == "exhaustive":
        passing = [q for q in range(min_quality, max_quality + 1) if score(q) >= min_utility]
        best = passing[0] if passing else None
    else:
        lo, hi, best = min_quality, max_quality, None
        if score(hi) >= min_utility:
            best = hi
            while lo < best:  # invariant: best passes; every quality below lo that was tried failed
                mid = (lo + best) // 2
                if score(mid) >= min_utility:
                    best = mid
                else:
                    lo = mid + 1
    satisfied = best is not None
    q = best if satisfied else max_quality
    res, value = cache[q] if q in cache else (cls(q)(image), float("nan"))
    if q not in cache:
        value = float(np.asarray(scorer([res.image]))[0])
    return Compressed(data=res.data, quality=q, utility=value, satisfied=satisfied, encodes=len(cache),
                      suffix=res.suffix, bpp=res.bpp)


@functools.lru_cache(maxsize=1)
def _default_predictor():
    """The shipped default predictor, loaded once per process."""
    from imutility.predictor import Predictor

    return Predictor.load("default")


class NetworkOracle:
    """Networks' own full-reference utility against the pristine image: the share of its pristine confidence
    each keeps in its pristine decision (classification: min(1, p(class) / p'(class)) for its pristine top-1
    class; detection: the retained confidence-weighted recall of its own confident pristine detections),
    averaged over the networks given (one network, or an ensemble)."""

    def __init__(self, labelers, score_threshold: float = 0.5):
        self.labelers = list(labelers) if isinstance(labelers, list | tuple) else [labelers]
        self.score_threshold = score_threshold

    def scorer(self, pristine: Image.Image) -> Callable[[list[Image.Image]], np.ndarray]:
        """A scorer for distorted versions of ``pristine`` (one pass of each network over the pristine image)."""
        parts = [self._one(lab, pristine) for lab in self.labelers]
        return lambda images: np.mean([f(images) for f in parts], axis=0)

    def _one(self, labeler, pristine: Image.Image) -> Callable[[list[Image.Image]], np.ndarray]:
        from imutility.zoo import Classifier

        if isinstance(labeler, Classifier):
            p0 = np.asarray(labeler([pristine]))[0]
            cls, ref = int(np.argmax(p0)), float(np.max(p0))

            def score(images):
                p = np.asarray(labeler(images))
                return np.minimum(1.0, p[:, cls] / max(ref, 1e-12))

            return score
        from imutility.utility import detection_utility

        d0 = labeler([pristine])[0]
        keep = d0.scores >= self.score_threshold
        gt_b, gt_l = d0.boxes[keep], d0.labels[keep]

        def score_det(images):
            out = []
            for d1 in labeler(images):
                u = detection_utility(gt_b, gt_l, d0.as_dict(), d1.as_dict())
                out.append(1.0 if not len(gt_l) else min(1.0, u["phi"] / max(u["phi_ref"], 1e-12)))
            return np.asarray(out, dtype=np.float64)

        return score_det
