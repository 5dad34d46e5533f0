"""The labels table, computed from the caches alone (so new thresholds relabel without running a model)."""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from imutility import atomic
from imutility.distort import parse_distortion
from imutility.labelling.plot import plot_utility_by_level
from imutility.labelling.store import read_cache, read_sources
from imutility.tasks import GROUND_TRUTH, PAPER_THRESHOLDS, Thresholds, get_task
from imutility.utility import combine

#: the row of the counts (and the name of the predictor) for the labelers' combined (unanimous) label
COMBINED = "combined"


def build_table(out: str | os.PathLike, thresholds: Thresholds = PAPER_THRESHOLDS):
    """Labels from the caches alone. One row per (source, distortion) with the image's ``key``, ``source``,
    ``augment``, ``distortion``, ``level``, ``path``, ``bytes``, ``bpp``; the task's reference columns
    (``target`` / ``n_gt``) and, for every labeler and held-out network ``L``, the task's per-network columns
    (:meth:`imutility.tasks.Task.columns`: ``L.pred``, ``L.ccsp``, ... for classification; ``L.phi``,
    ``L.found``, ... for detection; ``L.utility`` (Eq. 2) and ``L.label`` (Eq. 5 / Eq. 6) for both);
    and the combined ``utility_mean|max|min``, ``label_unanimous|majority`` (``label`` = unanimous,
    the paper's rule), ``confidence_mean`` (the labelers' mean ``ccsp`` / ``phi`` on the distorted
    image) and ``retained_mean`` (their mean share of the pristine confidence kept, ``min(1, phi / phi')``):
    dense targets that, unlike the label, nearly every image has. Held-out networks get the same
    per-network columns and take no part in the combined ones. Missing outputs (a labeler failed on
    that image) are NaN. With ``reference = "pristine"`` the ``target`` is the labelers' agreed pristine
    top-1 class (``<NA>`` where they disagree: those rows are excluded).
    """
    import pandas as pd

    out = Path(out)
    config = json.loads((out / "config.json").read_text())
    task, names = config["task"], config["labelers"]
    everyone = names + config.get("held_out", [])
    reference = config.get("reference", GROUND_TRUTH)
    sources = {s.key: s for s in read_sources(out)}
    meta = [r for line in atomic.Journal(out / "cache" / "_images.jsonl").read(strict=True)
            for r in line.get("records", [])]
    meta = list({(r["k"], r["d"]): r for r in meta if r["k"] in sources}.values())
    order = {d: i for i, d in enumerate(config["distortions"])}
    key_order = {k: i for i, k in enumerate(sources)}
    meta.sort(key=lambda r: (key_order[r["k"]], order.get(r["d"], 1 << 30)))
    caches = {n: read_cache(out / "cache" / f"{n}.jsonl", strict=True) for n in everyone}

    rows: dict[str, list] = {
        "key": [r["k"] for r in meta],
        "source": [sources[r["k"]].path for r in meta],
        "augment": [sources[r["k"]].augment for r in meta],
        "distortion": [r["d"] for r in meta],
        "level": [parse_distortion(r["d"]).level for r in meta],
        "path": [r["path"] for r in meta],
        "bytes": [r["bytes"] for r in meta],
        "bpp": [r["bpp"] for r in meta],
    }
    spec = get_task(task)
    ref_data = spec.table_reference(rows, meta, sources, [caches[n] for n in names], reference)
    per = [spec.columns(rows, n, meta, sources, caches[n], thresholds, reference, ref_data) for n in everyone]
    labels = np.stack([c.label for c in per], axis=1) if per else np.zeros((len(meta), 0))
    utils = np.stack([c.utility for c in per], axis=1) if per else np.zeros((len(meta), 0))
    conf = np.stack([c.confidence for c in per], axis=1) if per else np.zeros((len(meta), 0))
    kept = np.stack([_retained(c.confidence, c.confidence_ref) for c in per], axis=1) if per else \
        np.zeros((len(meta), 0))
    labels, utils, conf, kept = (a[:, :len(names)] for a in (labels, utils, conf, kept))  # labelers only
    rows["confidence_mean"] = combine(conf, "mean") if len(meta) else []
    rows["retained_mean"] = combine(kept, "mean") if len(meta) else []
    for op in ("mean", "max", "min"):
        rows[f"utility_{op}"] = combine(utils, op) if len(meta) else []
    for op in ("unanimous", "majority"):
        rows[f"label_{op}"] = combine(labels, op) if len(meta) else []
    rows["label"] = rows["label_unanimous"]
    return pd.DataFrame(rows)


def _retained(phi, phi_ref) -> np.ndarray:
    """``min(1, phi / phi')``: the share of its pristine confidence a network keeps (NaN where phi' = 0)."""
    phi, phi_ref = np.asarray(phi, dtype=np.float64), np.asarray(phi_ref, dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(phi_ref > 0, np.clip(phi / phi_ref, 0.0, 1.0), np.nan)


def label_counts(table, names: Iterable[str]):
    """Useful / non-useful / excluded per level, per labeler and combined."""
    import pandas as pd

    recs = []
    for who in [*names, COMBINED]:
        col = "label" if who == COMBINED else f"{who}.label"
        for level, grp in table.groupby("distortion", sort=False):
            v = grp[col]
            recs.append({"labeler": who, "distortion": level, "level": float(grp["level"].iloc[0]),
                         "useful": int((v == 1).sum()), "non_useful": int((v == 0).sum()),
                         "excluded": int(v.isna().sum()), "n": len(v)})
    return pd.DataFrame(recs)


def write_outputs(out: Path, table, names: Sequence[str]) -> None:
    """labels.parquet, counts.csv, stats.json and utility_by_level.png, each written atomically."""
    atomic.write_parquet(out / "labels.parquet", table)
    counts = label_counts(table, names)
    atomic.write_text(out / "counts.csv", counts.to_csv(index=False))
    combined = counts[counts["labeler"] == COMBINED]
    stats = {"rows": len(table), "useful": int(combined["useful"].sum()),
             "non_useful": int(combined["non_useful"].sum()), "excluded": int(combined["excluded"].sum()),
             "per_labeler": {n: {"useful": int((table[f"{n}.label"] == 1).sum()),
                                 "non_useful": int((table[f"{n}.label"] == 0).sum()),
                                 "excluded": int(table[f"{n}.label"].isna().sum())} for n in names}}
    atomic.write_json(out / "stats.json", stats)
    plot_utility_by_level(table, counts[counts["labeler"] == COMBINED], out / "utility_by_level.png")


def relabel(out: str | os.PathLike, thresholds: Thresholds = PAPER_THRESHOLDS):
    """Recompute every label (and the just-recognizable qualities, ``thresholds.retention``) from the cached outputs
    with new thresholds; rewrites the outputs."""
    out = Path(out)
    from imutility.labelling.jrq import write_jrq

    table = build_table(out, thresholds)
    config = json.loads((out / "config.json").read_text())
    write_outputs(out, table, config["labelers"] + config.get("held_out", []))
    write_jrq(out, thresholds.retention)
    return table
