"""A quality PLAN for one known network: its just-recognizable quality read from the pristine image in one pass.

A :class:`QualityModel` maps the pristine image's features (:mod:`imutility.rate.features`: cheap content
statistics, and for a known network its own pristine probabilities) to the distribution of the image's
just-recognizable quality (JRQ, :mod:`imutility.labelling.jrq`) on a codec's ladder, for several retention levels
``r``: an ordinal (cumulative-logit) model, ``P(JRQ_r <= q_j | x) = sigmoid(theta[r, j] - s(x))`` with ``s`` a
small network shared by every ``r`` and ``theta`` increasing in ``j``. JRQ beyond the ladder's top is its own
class. Numpy inference from one JSON file (weights, ladder, features, and the card: network, training photos,
ladder, validation figures); trained by :mod:`imutility.rate.training`.

:class:`QualityPlanner` is the rate-control scorer ``imutility compress --for NETWORK`` drives: per image one pass
of the network on the pristine image (its features and the reference of the check), the plan (the lowest ladder
quality whose ``P`` reaches the model's chosen confidence, and a correction quality at a higher confidence), then
the search ``planned`` of :func:`imutility.rate.compress_many`: encode at the plan, one check pass (does the
network keep its pristine decision with at least ``r`` of its confidence?), and only when the check fails one
correction encode at the ladder's top, kept unchecked. So <= 2 encodes and 2 network passes per image. The plan's
quality is the one with the fewest EXPECTED bits: low qualities are cheap but fail the check more often, and a
failure costs the top's bits (:meth:`QualityModel.checked_plan_index`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path

import numpy as np
from PIL import Image

from imutility import atomic
from imutility.errors import ImutilityError, SettingError
from imutility.rate.features import content_features
from imutility.tasks import PRISTINE, get_task

FORMAT = "imutility-rate-model/1"
#: what ``imutility compress`` does without a network to plan for: one quality. 90 is the lowest ladder quality at
#: which every network measured kept its top-1 within 1 point of the pristine photos' on the 600 ILSVRC val photos
#: (mobilenet_v3_small, squeezenet1_1, efficientnet_lite0; docs/compress.md): no per-image mode beat one fixed
#: quality for networks it was not made for
DEFAULT_FIXED_QUALITY = 90


class RateModelError(ImutilityError, ValueError):
    """A rate model that cannot be found or read."""


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(z, -40, 40)))


@dataclass
class QualityModel:
    """An ordinal JRQ model for one network (or, ``network`` empty, for the content alone) on one codec ladder."""

    network: str | None  # whose pristine output it reads (None: content features only)
    task: str  # that network's task (its plan features and its retention)
    codec: str
    ladder: list[int]  # ascending qualities; class len(ladder) = beyond the top
    retentions: list[float]  # the retention levels r it was trained for (ascending)
    features: list[str]
    mean: list[float]
    std: list[float]
    w1: list[list[float]]  # [features, hidden]
    b1: list[float]
    w2: list[float]  # [hidden] (+ a linear skip from the inputs below)
    skip: list[float]  # [features]
    theta: list[list[float]]  # [retentions, ladder]
    confidence: float  # content-only plans: the P the plan asks for (chosen on validation photos)
    card: dict = field(default_factory=dict)  # provenance and figures: training photos, ladder, validation, command
    #: mean bits per pixel at each ladder quality relative to the top's, on the training photos (what a checked
    #: plan weighs the chance of passing against)
    relative_bpp: list[float] = field(default_factory=list)

    # ------------------------------------------------------------------ inference
    def score(self, x: np.ndarray) -> np.ndarray:
        x = (np.atleast_2d(np.asarray(x, dtype=np.float64)) - np.asarray(self.mean)) / np.asarray(self.std)
        hidden = np.maximum(x @ np.asarray(self.w1) + np.asarray(self.b1), 0.0)
        return hidden @ np.asarray(self.w2) + x @ np.asarray(self.skip)

    def retention_index(self, retention: float) -> int:
        """The trained retention level used for ``retention``: the nearest at or above it (conservative)."""
        rs = np.asarray(self.retentions)
        above = np.nonzero(rs >= retention - 1e-9)[0]
        if not len(above):
            raise SettingError(f"this rate model plans for retention <= {max(self.retentions)}, got {retention}")
        return int(above[0])

    def cumulative(self, x: np.ndarray, retention: float) -> np.ndarray:
        """``P(JRQ_r <= q_j)`` per image (rows) and ladder quality (columns)."""
        theta = np.asarray(self.theta)[self.retention_index(retention)]
        return _sigmoid(theta[None, :] - self.score(x)[:, None])

    def checked_plan_index(self, x: np.ndarray, retention: float) -> np.ndarray:
        """Per image, the ladder index a CHECKED plan encodes first: the one with the fewest expected bits when a
        failed check is corrected to the ladder's top, ``rel[q] * P(kept at q) + 1 * (1 - P(kept at q))`` with
        ``rel`` the training photos' mean bits relative to the top (:attr:`relative_bpp`)."""
        cum = self.cumulative(x, retention)
        rel = np.asarray(self.relative_bpp) if self.relative_bpp else np.linspace(0.2, 1.0, cum.shape[1])
        return expected_bits_index(cum, rel)

    # ------------------------------------------------------------------ files
    def save(self, path: str | os.PathLike) -> Path:
        path = Path(path)
        atomic.write_text(path, json.dumps({"format": FORMAT, **asdict(self)}, indent=1) + "\n")
        return path

    @classmethod
    def read(cls, path: str | os.PathLike) -> QualityModel:
        path = Path(path)
        try:
            raw = json.loads(path.read_text())
        except (OSError, ValueError) as e:
            raise RateModelError(f"{path}: not a readable rate model ({e})") from e
        if not isinstance(raw, dict) or raw.get("format") != FORMAT:
            raise RateModelError(f"{path}: not a rate model of format {FORMAT}")
        raw.pop("format")
        try:
            model = cls(**raw)
        except TypeError as e:
            raise RateModelError(f"{path}: {e}") from e
        n_f, n_r, n_q = len(model.features), len(model.retentions), len(model.ladder)
        shapes = [(np.shape(model.mean), (n_f,)), (np.shape(model.std), (n_f,)), (np.shape(model.skip), (n_f,)),
                  (np.shape(model.w1)[:1], (n_f,)), (np.shape(model.theta), (n_r, n_q))]
        if any(a != b for a, b in shapes):
            raise RateModelError(f"{path}: arrays do not match its {n_f} features, {n_r} retentions, {n_q} levels")
        return model

    def featurize(self, image: Image.Image, pristine_record: dict | None) -> np.ndarray:
        """The model's input for one image: content features, then the network's (its task's plan features of
        the network's cache record on the pristine image), when it reads a network."""
        parts = [content_features(image)]
        if self.network is not None:
            if pristine_record is None:
                raise RateModelError(f"the rate model for {self.network} needs that network's pristine output")
            parts.append(get_task(self.task).plan_features(pristine_record))
        return np.concatenate(parts)


def expected_bits_index(cumulative: np.ndarray, relative_bpp: np.ndarray) -> np.ndarray:
    """Per row, the column minimising ``rel * P + (1 - P)``: the expected bits of encoding there, kept with
    probability ``P``, else corrected to the top (relative bits 1)."""
    return np.argmin(relative_bpp[None, :] * cumulative + (1.0 - cumulative), axis=1)


def plan_index(cumulative: np.ndarray, confidence: float) -> np.ndarray:
    """Per row, the first column reaching ``confidence`` (the last column when none does)."""
    ok = cumulative >= confidence
    return np.where(ok.any(1), np.argmax(ok, axis=1), cumulative.shape[1] - 1)


# ---------------------------------------------------------------------- the shipped models
def _shipped_dir() -> Path:
    return Path(str(resources.files("imutility").joinpath("resources", "rate")))


def list_rate_models() -> dict[str, str]:
    """Shipped rate models, ``NETWORK`` (JPEG) or ``NETWORK-CODEC`` -> its one-line description."""
    out = {}
    for p in sorted(_shipped_dir().glob("*.json")):
        model = QualityModel.read(p)
        out[p.stem] = model.card.get("description", "")
    return out


def load_rate_model(network_or_path: str | os.PathLike, codec: str = "jpeg") -> QualityModel:
    """The shipped rate model of a network for a codec (``mobilenet_v3_small``: ``mobilenet_v3_small-webp.json``,
    else ``mobilenet_v3_small.json``, whichever plans that codec), or a model file written by ``imutility
    train-rate`` (which must plan ``codec``)."""
    path = Path(network_or_path)
    if path.suffix == ".json" and path.is_file():
        candidates = [path]
    else:
        candidates = [_shipped_dir() / f"{network_or_path}-{codec}.json", _shipped_dir() / f"{network_or_path}.json"]
    for c in candidates:
        if c.is_file():
            model = QualityModel.read(c)
            if model.codec == codec:
                return model
            if c == path:
                raise RateModelError(f"{path} plans {model.codec} qualities, not {codec} (--codec {model.codec})")
    have = ", ".join(list_rate_models()) or "none"
    raise RateModelError(f"no {codec} rate model for {network_or_path!r} (shipped: {have}); make one from a "
                         f"labelled quality ladder: imutility label OUT -p {codec}-dense --held-out {network_or_path} "
                         f"... then imutility train-rate OUT --for {network_or_path} --codec {codec} -o MODEL.json "
                         "(docs/compress.md)")


# ---------------------------------------------------------------------- the scorer compress drives
class _Planned:
    """One image's check scorer: the network's retention of its pristine decision, with the plan attached."""

    __slots__ = ("check", "plan")

    def __init__(self, check: Callable[[list[Image.Image]], np.ndarray], plan: tuple[int, int]):
        self.check, self.plan = check, plan

    def __call__(self, images: list[Image.Image]) -> np.ndarray:
        return self.check(images)


class QualityPlanner:
    """The plan-check-correct scorer for ``search="planned"`` (see the module doc): ``labeler`` is the network
    (a zoo classifier or detector, or the user's registered one), ``model`` its :class:`QualityModel`."""

    def __init__(self, model: QualityModel, labeler, retention: float):
        if model.network is None:
            raise RateModelError("a content-only rate model has no network to check with; use one made with "
                                 "train-rate --for NETWORK")
        if model.network != labeler.name:
            raise RateModelError(f"this rate model plans for {model.network}, not {labeler.name}")
        self.model, self.labeler, self.retention = model, labeler, float(retention)
        model.retention_index(self.retention)  # refuse a retention it was not trained for, before any work

    @property
    def identity(self) -> str:
        return f"plan:{self.labeler.name}:{self.model.card.get('sha', '')}"


    def scorer_for(self, pristine: Image.Image) -> _Planned:
        task = get_task(self.model.task)
        out0 = self.labeler([pristine])[0]
        (r0,) = task.records([("x", PRISTINE)], [out0], {}, {})
        x = self.model.featurize(pristine, r0)
        ladder = np.asarray(self.model.ladder)
        first = int(ladder[self.model.checked_plan_index(x, self.retention)[0]])
        second = int(ladder[-1])  # a failed check is corrected to the ladder's top, not checked again

        def check(images):
            outs = list(self.labeler(images))
            recs = task.records([("x", PRISTINE)] + [("x", f"c{i}") for i in range(len(outs))], [out0, *outs],
                                {}, {})
            return np.array([task.retention(recs[0], r) for r in recs[1:]], dtype=np.float64)

        return _Planned(check, (first, second))


class FixedQuality:
    """One quality for every image (one encode, no network): the reference every mode is measured against, and
    what ``imutility compress`` does without a network to plan for."""

    def __init__(self, quality: int):
        self.quality = int(quality)

    @property
    def identity(self) -> str:
        return f"fixed:{self.quality}"

    def scorer_for(self, pristine: Image.Image) -> _Planned:
        return _Planned(lambda images: np.ones(len(images)), (self.quality, self.quality))
