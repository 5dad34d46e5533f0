"""What every task shares, and the :class:`Task` interface each task implements once.

A task owns everything that differs between classification and detection: how labelled photos become
labelling :class:`Source` records, what a labeler's raw output is cached as (the only code that knows
the record schema), the per-network columns of the labels table (Eq. 5 / Eq. 6 and the continuous
utilities), what "a network still succeeds" means, how filtering is scored (top-1 after dropping, mAP
after replacing with the pristine image), and its defaults and the paper's published numbers. Generic
code asks ``get_task(name)`` once and calls these methods; it never compares task names.
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np

from imutility.errors import InvalidInputError
from imutility.utility import PAPER_DET_IOU, PAPER_DET_SCORE, PAPER_TH, PAPER_TL

#: the distortion key of the pristine image in the caches
PRISTINE = "pristine"
#: what a distorted image is judged against: the dataset's ground truth, or the pristine decisions
GROUND_TRUTH, PRISTINE_REFERENCE = "ground-truth", "pristine"
REFERENCES = (GROUND_TRUTH, PRISTINE_REFERENCE)


@dataclass(frozen=True)
class Source:
    """One pristine image and its ground truth; ``augment`` makes it a virtual, augmented copy."""

    key: str
    path: str
    target: int | None = None  # classification
    boxes: tuple[tuple[float, float, float, float], ...] | None = None  # detection, xyxy
    labels: tuple[int, ...] | None = None
    mask: str | None = None  # segmentation: the ground-truth class grid (tasks.segmentation.encode_mask)
    augment: str | None = None
    distortions: tuple[str, ...] | None = None  # a subset of the run's (balancing); None = all

    def as_json(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if v is not None}

    @classmethod
    def from_json(cls, d: dict) -> Source:
        d = dict(d)
        for k in ("boxes", "labels", "distortions"):
            if k in d:
                d[k] = tuple(tuple(x) if isinstance(x, list) else x for x in d[k])
        return cls(**d)


@dataclass(frozen=True)
class Thresholds:
    """Everything a relabel may change without running a model."""

    th: float = PAPER_TH
    tl: float = PAPER_TL
    phi_rec: float = 0.5
    det_score: float = PAPER_DET_SCORE
    det_iou: float = PAPER_DET_IOU
    require_pristine_hit: bool = False
    #: the share of its pristine decision a network must keep for an image's just-recognizable quality
    #: (:mod:`imutility.labelling.jrq`)
    retention: float = 0.9
    #: segmentation (:mod:`imutility.tasks.segmentation`): useful when a network keeps >= seg_th of its pristine
    #: mask quality, non-useful below seg_tl, excluded between; with ground truth, photos whose pristine mask
    #: scores below seg_min (mean IoU) are excluded
    seg_th: float = 0.9
    seg_tl: float = 0.75
    seg_min: float = 0.5


#: the paper's thresholds (Section IV): the default of every labelling and relabel
PAPER_THRESHOLDS = Thresholds()


@dataclass
class NetworkColumns:
    """One network's per-row results in the labels table (besides the named columns it adds itself)."""

    label: np.ndarray  # Eq. 5 / Eq. 6, NaN = excluded
    utility: np.ndarray  # Eq. 2 (continuous)
    confidence: np.ndarray  # phi on the distorted image
    confidence_ref: np.ndarray  # phi' on the pristine image


def sources_from_folder(folder: str | os.PathLike, log: Callable[[str], None] | None = None) -> list[Source]:
    """Every image under a folder, without ground truth (for the pristine reference); what is not listed
    (unsupported formats, links) is reported through ``log``."""
    from imutility.images import list_images

    root = Path(folder)
    files = list_images(root, on_skip=(lambda p, r: log(f"skipped {p}: {r}")) if log else None)
    if not files:
        raise InvalidInputError(f"no image files found in {root}")
    return [Source(key=p.relative_to(root).as_posix() if p != root else p.name, path=str(p)) for p in files]


def pair(cache: dict, key: str, dist: str) -> tuple[dict | None, dict | None]:
    """A network's (pristine, distorted) records of one image, or (None, None) when either failed or is missing."""
    r0, r1 = cache.get((key, PRISTINE)), cache.get((key, dist))
    if r0 is None or r1 is None or "error" in r0 or "error" in r1:
        return None, None
    return r0, r1


class Task(ABC):
    """One machine-vision task; see the module doc. Instances are stateless; get them with ``get_task``."""

    name: ClassVar[str]
    other: ClassVar[str]  # the task whose predictor is tried across tasks (Tables III/IV)
    default_labelers: ClassVar[tuple[str, ...]]
    default_data: ClassVar[tuple[str, ...]]  # under <shared>/data
    one_data_folder: ClassVar[bool]  # a study names exactly one data entry
    class_probabilities: ClassVar[bool]  # its networks output class probabilities (MSP, energy, Fig. 1)
    metric_name: ClassVar[str]  # what filtering is judged by
    metric_percent: ClassVar[bool]  # shown as a percentage
    filter_rule: ClassVar[str]  # what happens to a filtered image
    confidence_columns: ClassVar[tuple[str, str]]  # a network's phi and phi' columns in the labels table
    success_name: ClassVar[str]  # what "a held-out network still succeeds" means
    paper_tables: ClassVar[tuple[str, str, str]]  # its predictor table, inter-task table and Fig. 2 panel
    paper_predictors: ClassVar[list[tuple[str, float]]]  # Table I / II: labels from -> accuracy
    paper_inter_task: ClassVar[list[tuple[str, float, float]]]  # Table III / IV

    # ------------------------------------------------------------------ data
    @abstractmethod
    def sources(self, data: Sequence[str | os.PathLike], labels_file: str | os.PathLike | None = None,
                limit: int | None = None, reference: str = GROUND_TRUTH,
                log: Callable[[str], None] | None = None) -> tuple[list[Source], str]:
        """The labelling sources of the data entries (``limit`` per entry) and a description of the data.
        Photos that cannot be used (no label, missing, unannotated) are reported through ``log``."""

    def check_sources(self, sources: Sequence[Source], reference: str) -> None:  # noqa: B027 - an optional hook
        """Refuse sources that cannot be judged against ``reference`` (``ValueError``); by default all pass."""

    def check_labelers(self, labelers: Sequence, reference: str) -> None:  # noqa: B027 - an optional hook
        """Refuse labelers whose outputs cannot be judged against ``reference`` together (``ValueError``)."""

    # ------------------------------------------------------------------ the labeler's raw outputs
    @abstractmethod
    def records(self, items: Sequence[tuple[str, str]], outputs: Sequence, failed: dict[int, str],
                targets: dict[str, int | None]) -> list[dict]:
        """The cache records of one chunk: ``items`` are (source key, distortion) in chunk order, each source's
        pristine image first; ``failed`` maps item positions to the reason a labeler failed there."""

    # ------------------------------------------------------------------ the labels table
    @abstractmethod
    def table_reference(self, rows: dict, meta: list[dict], sources: dict[str, Source],
                        labeler_caches: Sequence[dict], reference: str) -> np.ndarray | None:
        """Add the task's per-row reference columns to ``rows``; return what :meth:`columns` needs of them."""

    @abstractmethod
    def columns(self, rows: dict, name: str, meta: list[dict], sources: dict[str, Source], cache: dict,
                thresholds: Thresholds, reference: str, ref_data) -> NetworkColumns:
        """Add network ``name``'s columns to ``rows`` and return its label / utility / confidences."""

    #: the names of :meth:`plan_features`
    plan_feature_names: ClassVar[tuple[str, ...]]
    #: the retention a rate plan checks by default (chosen on validation photos: docs/compress.md)
    plan_retention: ClassVar[float]

    @abstractmethod
    def plan_features(self, pristine: dict) -> np.ndarray:
        """What a rate plan (:mod:`imutility.rate.plan`) reads of a network's own output on the PRISTINE image,
        from its cache record: how sure it is, which is how much compression its decision survives."""

    @abstractmethod
    def retention(self, pristine: dict, distorted: dict, score_threshold: float = 0.5) -> float:
        """How much of a network's own decision on the pristine image it keeps on the distorted one, in [0, 1],
        from its two cache records: what a just-recognizable quality (:mod:`imutility.labelling.jrq`) and a
        network's own rate oracle are measured by."""

    # ------------------------------------------------------------------ full reference, on images
    @abstractmethod
    def measure(self, labeler, pristine: Sequence, distorted: Sequence, *, targets=None, annotations=None,
                phi_rec: float = 0.5, reference_score: float = 0.5, iou_threshold: float = PAPER_DET_IOU,
                normalised: bool = False) -> tuple[np.ndarray, list[dict]]:
        """One network's utility of each distorted image against its pristine one, run on the images
        (``imutility measure``): the values and, per pair, what they were computed from. ``targets`` /
        ``annotations``: ground truth where the task takes it (else the network's own pristine output is the
        reference)."""

    # ------------------------------------------------------------------ judging
    @abstractmethod
    def success(self, table, network: str) -> np.ndarray:
        """Per row, 1 when a (held-out) network still succeeds on the distorted image, 0 when not, NaN unknown."""

    def pristine_success(self, table, network: str) -> np.ndarray | None:
        """Per row, 1 when the network succeeds on the row's PRISTINE photo, 0 when not, NaN unknown; None where the
        task has no such notion (the benchmark then makes no figure conditioned on it: the decision lost BY
        compression, the pristine false-reject rate)."""
        return None

    @abstractmethod
    def fig2(self, held, keeps: dict[str, np.ndarray], networks: Sequence[str], outputs: Callable[[str], dict],
             sources: dict[str, Source], reference_filter: str | None, seed: int, draws: int,
             levels: Sequence[str] = ()) -> dict:
        """What filtering does to held-out networks on ``held`` (one row per test image at a held-out level):
        every keep-mask of ``keeps``, plus rate-based baselines at the count that ``reference_filter`` rejects.
        ``outputs(network)`` gives a network's cached records, ``sources`` the labelling sources by key."""

    @abstractmethod
    def selection_metric(self, rows, network: str, outputs: Callable[[str], dict], sources: dict[str, Source],
                         pristine: bool = False) -> float:
        """The task's metric of ``network`` over a selection of images (``rows`` of a labels table, one per photo),
        or over those photos' pristine versions: what a rate-accuracy curve plots (top-1, mAP)."""

    def selection_parts(self, rows, network: str, outputs: Callable[[str], dict], sources: dict[str, Source],
                        pristine: bool = False) -> np.ndarray | None:
        """Optional: per row, statistics that ADD UP to :meth:`selection_metric` of any selection of rows
        (:meth:`metric_of_parts` of their sum), so bootstraps over photos need not recompute; None: not additive."""
        return None

    def metric_of_parts(self, total: np.ndarray) -> float:
        """The metric of a selection from the sum of its rows' :meth:`selection_parts`."""
        raise NotImplementedError(f"{self.name} has no additive selection metric")

    @abstractmethod
    def evaluate_labeler(self, labeler, data: str | os.PathLike | None, progress: bool = True) -> str:
        """A labeler's pristine accuracy on a labelled set, as one line (``imutility zoo eval``)."""

    def format_metric(self, value: float | None) -> str:
        if value is None or (isinstance(value, float) and np.isnan(value)):
            return "—"
        return f"{100 * value:.1f} %" if self.metric_percent else f"{value:.3f}"
