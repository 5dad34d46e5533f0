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
from collections.abc import Callable, Generator, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from imutility.distort import JPEG, WebP
from imutility.errors import ImutilityError

#: codecs the search can drive: name -> (distortion class, quality range it accepts)
CODECS: dict[str, tuple[type, tuple[int, int]]] = {"jpeg": (JPEG, (1, 100)), "webp": (WebP, (0, 100))}
SEARCHES = ("bisect", "exhaustive")
#: the search of a plan (:class:`imutility.rate.plan.QualityPlanner`): its quality, one check, at most one correction
PLANNED = "planned"
#: what one image open in a search costs, per pixel: the decoded pristine image (3 bytes), a decoded candidate
#: (3), the codec's and the scorer's working copies. Measured: 16 photos of 24 MP searched at once peak at
#: 4.96 GB, one at a time at 0.55 GB, so (4.96 - 0.55) GB / (15 x 24 MP) = 12.3 bytes; rounded up.
BYTES_PER_OPEN_PIXEL = 13


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


def check_settings(min_utility: float, codec: str, min_quality: int, max_quality: int, search: str) -> None:
    if not isinstance(min_utility, int | float) or math.isnan(min_utility) or not 0 <= min_utility <= 1:
        raise RateControlError(f"min_utility must be in [0, 1], got {min_utility!r}")
    if codec not in CODECS:
        raise RateControlError(f"codec must be one of {', '.join(CODECS)}, got {codec!r}")
    lo, hi = CODECS[codec][1]
    if not (lo <= min_quality <= max_quality <= hi):
        raise RateControlError(f"{codec} qualities must satisfy {lo} <= min_quality <= max_quality <= {hi}, "
                               f"got {min_quality}..{max_quality}")
    if search not in (*SEARCHES, PLANNED):
        raise RateControlError(f"search must be one of {', '.join(SEARCHES)}, got {search!r}")


def compress(image: Image.Image, min_utility: float = 0.5,
             predictor: Callable[[list[Image.Image]], np.ndarray] | None = None, codec: str = "jpeg",
             min_quality: int = 1, max_quality: int = 95, search: str = "bisect") -> Compressed:
    """The lowest quality in ``[min_quality, max_quality]`` whose encoding ``predictor`` rates >= ``min_utility``.

    ``predictor`` is anything that maps a list of decoded images to one score each: a
    :class:`~imutility.Predictor` (default: the shipped ``default``), or :meth:`NetworkOracle.scorer` of
    the pristine image. One image of :func:`compress_many`.
    """
    scorer = predictor if predictor is not None else _default_predictor()
    ((_, res),) = compress_many([(None, image)], min_utility, lambda _img: scorer, codec, min_quality, max_quality,
                                search)
    return res


def compress_many(items: Iterable[tuple[Any, Image.Image]], min_utility: float,
                  scorer_for: Callable[[Image.Image], Callable[[list[Image.Image]], np.ndarray]],
                  codec: str = "jpeg", min_quality: int = 1, max_quality: int = 95, search: str = "bisect",
                  batch_size: int = 32, workers: int = 0,
                  max_open_pixels: int | None = None) -> Iterator[tuple[Any, Compressed]]:
    """:func:`compress` for a stream of ``(key, image)``, ``batch_size`` images searched in lockstep.

    Each round encodes the quality every open search asks for (in ``workers`` threads: Pillow's codecs release
    the GIL) and scores the round's encodings with one call per scorer: ``scorer_for(image)`` gives an image's
    scorer, and images that share one (a predictor) share its batches, so the network sees ``batch_size``
    images at a time instead of one (never more: an exhaustive round is scored ``batch_size`` candidates at a
    time, so memory stays bounded). The result of each image equals :func:`compress`'s; results come as their
    searches end (not in input order), at most ``batch_size`` images open at once, and no more than fit in
    ``max_open_pixels`` pixels together (memory is what their pixels take; one image is always let in)."""
    check_settings(min_utility, codec, min_quality, max_quality, search)
    if batch_size < 1 or workers < 0:
        raise RateControlError(f"batch_size must be >= 1 and workers >= 0, got {batch_size}, {workers}")
    cls = CODECS[codec][0]
    source = iter(items)
    waiting = None  # an image read but not yet let in (it did not fit the pixel budget)
    open_: list[_Search] = []
    pool = ThreadPoolExecutor(workers) if workers else None
    encode = (lambda jobs: list(pool.map(_encode, jobs))) if pool else (lambda jobs: [_encode(j) for j in jobs])
    try:
        while True:
            while len(open_) < batch_size:
                nxt, waiting = (waiting, None) if waiting is not None else (next(source, None), None)
                if nxt is None:
                    break
                key, img = nxt
                held = sum(s.image.width * s.image.height for s in open_)
                if open_ and max_open_pixels is not None and held + img.width * img.height > max_open_pixels:
                    waiting = nxt
                    break
                scorer = scorer_for(img)
                steps = (_planned(min_utility, scorer.plan, min_quality, max_quality) if search == PLANNED
                         else _qualities(min_utility, min_quality, max_quality, search))
                open_.append(_Search(key, img, scorer, steps))
            if not open_:
                return
            by_scorer: dict[int, list[tuple[_Search, int]]] = {}
            for s in open_:
                by_scorer.setdefault(id(s.scorer), []).extend((s, q) for q in s.asked)
            for group in by_scorer.values():  # at most batch_size decoded candidates alive at once
                for i in range(0, len(group), batch_size):
                    part = group[i:i + batch_size]
                    encoded = encode([(cls(q), s.image) for s, q in part])
                    # a plan's correction (its second encode) is kept unchecked: no network pass for it
                    check = [j for j, (s, _) in enumerate(part) if not (search == PLANNED and s.found)]
                    values = np.full(len(part), np.nan)
                    if check:
                        values[check] = np.asarray(part[0][0].scorer([encoded[j].image for j in check]),
                                                   dtype=np.float64)
                    for (s, q), res, value in zip(part, encoded, values, strict=True):
                        s.found[q] = (res.data, res.bpp, res.suffix, float(value))
            still = []
            for s in open_:
                if s.advance():
                    still.append(s)
                else:
                    yield s.key, s.result(max_quality)
            open_ = still
    finally:
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)


def _encode(job):
    distortion, image = job
    res = distortion(image)
    res.image  # decode here (in the worker thread), not in the scorer's call  # noqa: B018
    return res


def _qualities(min_utility: float, lo: int, hi: int, search: str) -> Generator[list[int], dict, int | None]:
    """The search as a generator: yields the qualities it needs scored next, is sent every score so far
    (quality -> score), returns the lowest passing quality found (None: none passes)."""
    if search == "exhaustive":
        scores = yield list(range(lo, hi + 1))
        return next((q for q in range(lo, hi + 1) if scores[q] >= min_utility), None)
    scores = yield [hi]
    if scores[hi] < min_utility:
        return None
    best = hi
    while lo < best:  # invariant: best passes; every quality below lo that was tried failed
        mid = (lo + best) // 2
        scores = yield [mid]
        if scores[mid] >= min_utility:
            best = mid
        else:
            lo = mid + 1
    return best


def _planned(min_utility: float, plan: tuple[int, int], lo: int, hi: int) -> Generator[list[int], dict, int | None]:
    """A plan's search: its first quality, checked; when the check fails, its correction quality, encoded but not
    checked (no second network pass; the image is flagged ``satisfied=False``, its utility NaN)."""
    first, second = (min(max(int(q), lo), hi) for q in plan)
    scores = yield [first]
    if scores[first] >= min_utility or second <= first:
        return first if scores[first] >= min_utility else None
    yield [second]  # encoded, not scored (compress_many runs no network on a correction)
    return None  # kept, and flagged unsatisfied: nothing checked it


class _Search:
    """One image's search in :func:`compress_many`: what it asked for, what it was told."""

    __slots__ = ("key", "image", "scorer", "steps", "asked", "found", "best")

    def __init__(self, key, image: Image.Image, scorer, steps: Generator):
        self.key, self.image, self.scorer, self.steps = key, image, scorer, steps
        self.found: dict[int, tuple[bytes, float, str, float]] = {}  # quality -> (data, bpp, suffix, score)
        self.asked: list[int] = next(steps)
        self.best: int | None = None

    def advance(self) -> bool:
        """Tell the search its scores; False once it has its answer."""
        try:
            self.asked = [q for q in self.steps.send({q: v[3] for q, v in self.found.items()})
                          if q not in self.found]
        except StopIteration as done:
            self.best = done.value
            return False
        return True

    def result(self, fallback: int) -> Compressed:
        # the bisect and exhaustive searches score the fallback (max_quality); a plan keeps its last encode
        q = self.best if self.best is not None else (fallback if fallback in self.found else max(self.found))
        data, bpp, suffix, value = self.found[q]
        return Compressed(data=data, quality=q, utility=value, satisfied=self.best is not None,
                          encodes=len(self.found), suffix=suffix, bpp=bpp)


@functools.lru_cache(maxsize=1)
def _default_predictor():
    """The shipped default predictor, loaded once per process."""
    from imutility.predictor import Predictor

    return Predictor.load("default")


class PredictorScorer:
    """A predictor as a rate-control scorer: the same scorer for every image (it reads the encodings alone)."""

    def __init__(self, predictor):
        self.predictor = predictor

    @property
    def identity(self) -> str:
        return self.predictor.identity

    def scorer_for(self, pristine: Image.Image) -> Callable[[list[Image.Image]], np.ndarray]:
        return self.predictor


def as_scorer(scorer):
    """A rate-control scorer: a :class:`NetworkOracle` (or anything with ``scorer_for`` and ``identity``) as it is,
    a predictor wrapped in :class:`PredictorScorer`."""
    return scorer if hasattr(scorer, "scorer_for") else PredictorScorer(scorer)


class NetworkOracle:
    """Networks' own full-reference utility against the pristine image: the share of its pristine confidence
    each keeps in its pristine decision (classification: min(1, p(class) / p'(class)) for its pristine top-1
    class; any other task: its :meth:`~imutility.tasks.Task.retention`, e.g. detection's retained
    confidence-weighted recall of its own confident pristine detections, segmentation's mIoU of the two masks),
    averaged over the networks given (one network, or an ensemble)."""

    def __init__(self, labelers, score_threshold: float = 0.5):
        self.labelers = list(labelers) if isinstance(labelers, list | tuple) else [labelers]
        self.score_threshold = score_threshold

    @property
    def identity(self) -> str:
        return "oracle:" + ",".join(lab.name for lab in self.labelers)

    def scorer_for(self, pristine: Image.Image) -> Callable[[list[Image.Image]], np.ndarray]:
        return self.scorer(pristine)

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
        # any other task: its own retention, read from the records it caches when labelling (detection: the
        # retained confidence-weighted recall of its confident pristine detections; segmentation: the mIoU of the
        # distorted mask against the pristine one), so compress and jrq.parquet measure the same thing
        from imutility.tasks import PRISTINE, get_task

        task = get_task(labeler.task)
        rec0 = task.records([("image", PRISTINE)], labeler([pristine]), {}, {})[0]

        def score_task(images):
            recs = task.records([("image", "distorted")] * len(images), labeler(images), {}, {})
            return np.asarray([task.retention(rec0, r, self.score_threshold) for r in recs], dtype=np.float64)

        return score_task
