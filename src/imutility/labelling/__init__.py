"""Labelling pipeline: pristine dataset x distortions x labeler ensemble -> a labels table.

Layout of ``OUT``::

    OUT/config.json            task, dataset, labelers, distortions, seed (a rerun with others is refused)
    OUT/sources.jsonl          the pristine sources and their ground truth (augmented ones appended)
    OUT/images/<slug>/<key><codec suffix>   every distorted image, the codec's own bytes; the path is
                               derived from the source key made safe (:func:`imutility.paths.output_relpath`),
                               so it is always inside OUT and never shared by two sources
    OUT/cache/_images.jsonl    per chunk: distorted-image metadata and unreadable sources
    OUT/cache/<labeler>.jsonl  per chunk: the labeler's raw outputs for every (source, distortion)
    OUT/labels.parquet         one row per (source, distortion): see :func:`build_table`
    OUT/counts.csv, OUT/utility_by_level.png, OUT/stats.json

Work goes in chunks of a few sources. A chunk's raw outputs are appended to a labeler's cache as one
journal line once the whole chunk is done, so after ``kill -9`` a rerun redoes at most the chunk
in flight, with the same batches, and ends with the same table. Labels are computed from the caches
alone, so new thresholds or operators relabel in seconds (:func:`relabel`).

Modules: :mod:`.engine` (the run: chunks, labelers, caches, resumption), :mod:`.store` (the sources and
caches on disk), :mod:`.table` (the labels table, counts, relabel), :mod:`.augment` (augmented copies and
balancing), :mod:`.plot`. Everything task-specific (sources, cache records, table columns) is the task's:
:mod:`imutility.tasks`.
"""

from __future__ import annotations

from imutility.labelling.augment import apply_augment, balancing_sources
from imutility.labelling.engine import LabellingConfigError, LabelReport, run_labelling
from imutility.labelling.store import read_outputs, read_sources, write_sources
from imutility.labelling.table import COMBINED, build_table, label_counts, relabel, write_outputs
from imutility.tasks import GROUND_TRUTH, PRISTINE, PRISTINE_REFERENCE, REFERENCES, Source, Thresholds
from imutility.tasks.base import sources_from_folder
from imutility.tasks.classification import sources_from_dataset as sources_from_classification
from imutility.tasks.detection import sources_from_dataset as sources_from_coco
from imutility.utility import COMBINE_OPS

#: where labelling runs: ``local`` (this process) or ``ray`` (a Ray Data pipeline, one actor pool per labeler)
ENGINES = ("local", "ray")


def make_engine(name: str = "local", address: str | None = None, actors: int = 1, cpus_per_actor: float = 1.0):
    """The labelling engine called ``name`` (:data:`ENGINES`): ``local``, or ``ray`` joining ``address`` (default:
    a local Ray instance) with ``actors`` actors of ``cpus_per_actor`` CPUs per labeler."""
    from imutility.errors import SettingError

    if name not in ENGINES:
        raise SettingError(f"engine must be one of {', '.join(ENGINES)}, got {name!r}")
    if name == "local":
        if address is not None:
            raise SettingError("--address is for --engine ray")
        from imutility.labelling.chunks import LocalEngine

        return LocalEngine()
    from imutility.labelling.ray_engine import RayEngine

    return RayEngine(address=address, actors=actors, cpus_per_actor=cpus_per_actor)

__all__ = ["COMBINED", "COMBINE_OPS", "ENGINES", "GROUND_TRUTH", "PRISTINE", "PRISTINE_REFERENCE", "REFERENCES",
           "LabelReport", "LabellingConfigError", "Source", "Thresholds", "apply_augment", "balancing_sources",
           "build_table", "label_counts", "make_engine", "read_outputs", "read_sources", "relabel", "run_labelling",
           "sources_from_classification", "sources_from_coco", "sources_from_folder", "write_outputs",
           "write_sources"]
