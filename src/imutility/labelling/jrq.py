"""Each image's just-recognizable quality, per network: where a codec's useful range begins for that image.

On a labelled quality ladder (one codec at several qualities, e.g. the ``jpeg-dense`` preset: JPEG q = 10..95 in
steps of 5), a network's *retention* at a level is how much of its own pristine decision it keeps there
(:meth:`imutility.tasks.base.Task.retention`: for a classifier 0 when its top-1 class changed, else the share of its
pristine top-1 probability kept; for a detector the retained confidence-weighted recall of its own confident
pristine detections). For a retention level ``r`` the image's **just-recognizable quality** (JRQ, after the
just-recognizable distortion of DT-JRD, arXiv 2411.09308) is the lowest ladder quality from which the network keeps
at least ``r`` at that quality AND at every higher one; NaN when even the ladder's top quality does not (the image
needs more than the ladder offers).

:func:`write_jrq` stores the table as ``OUT/jrq.parquet`` beside the labels (``imutility label`` does it for every
ladder of 3 levels or more); ``imutility relabel --retention R`` recomputes it for another ``r`` from the cached
outputs, without inference. Columns: ``key``, ``source``, ``network``, ``codec``, ``retention`` (r), ``jrq`` (the
quality, NaN: not reached), ``jrq_bpp`` (bits per pixel there; NaN: not reached), ``top_quality``, ``top_bpp``,
``top_retention`` (kept at the ladder's top).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from imutility import atomic
from imutility.distort import parse_distortion
from imutility.errors import SettingError
from imutility.labelling.store import read_outputs, read_sources
from imutility.tasks import PRISTINE, get_task

JRQ_FILE = "jrq.parquet"
#: the retention level a just-recognizable quality is stated for unless another is asked: the network keeps its
#: decision with at least 90 % of its pristine confidence in it
DEFAULT_RETENTION = 0.9
#: codec families a ladder can be made of, and the fewest levels that make one
LADDER_FAMILIES = ("jpeg", "webp")
MIN_LADDER = 3


def ladders(distortions: Sequence[str]) -> dict[str, list[tuple[float, str]]]:
    """The quality ladders among a run's distortion specs: codec family -> [(quality, spec)] ascending."""
    out: dict[str, list[tuple[float, str]]] = {}
    for spec in distortions:
        d = parse_distortion(spec)
        if d.family in LADDER_FAMILIES:
            out.setdefault(d.family, []).append((d.level, spec))
    return {f: sorted(v) for f, v in out.items() if len(v) >= MIN_LADDER}


def check_retention(retention: float) -> float:
    if not isinstance(retention, int | float) or isinstance(retention, bool) or not 0 < retention <= 1:
        raise SettingError(f"a retention level is a share of the pristine decision kept, in (0, 1]; got {retention!r}")
    return float(retention)


def lowest_from_which(kept: np.ndarray) -> int | None:
    """The lowest index from which every entry of the boolean ladder ``kept`` (ascending quality) is True; None
    when the last one is not."""
    if not len(kept) or not kept[-1]:
        return None
    i = len(kept) - 1
    while i > 0 and kept[i - 1]:
        i -= 1
    return i


def retention_table(out: str | os.PathLike, networks: Sequence[str] | None = None,
                    caches: dict[str, dict] | None = None):
    """Long table of retentions on every ladder: ``key``, ``source``, ``network``, ``codec``, ``quality``,
    ``distortion``, ``bpp``, ``retention`` (NaN where a record failed). ``caches``: networks' outputs already read
    (:func:`~imutility.labelling.store.read_outputs`), not read again."""
    import pandas as pd

    out = Path(out)
    config = json.loads((out / "config.json").read_text())
    task = get_task(config["task"])
    nets = list(networks or [*config["labelers"], *config.get("held_out", [])])
    table = pd.read_parquet(out / "labels.parquet", columns=["key", "source", "augment", "distortion", "bpp"])
    table = table[table["augment"].isna()]
    bpp = {(k, d): b for k, d, b in zip(table["key"], table["distortion"], table["bpp"], strict=True)}
    sources = {s.key: s.path for s in read_sources(out) if s.augment is None}
    rows = []
    for net in nets:
        cache = caches[net] if caches and net in caches else read_outputs(out, net)
        for family, ladder in ladders(config["distortions"]).items():
            for key, source in sources.items():
                r0 = cache.get((key, PRISTINE))
                for quality, spec in ladder:
                    r1 = cache.get((key, spec))
                    ok = r0 is not None and r1 is not None and "error" not in r0 and "error" not in r1
                    rows.append((key, source, net, family, quality, spec, bpp.get((key, spec), np.nan),
                                 task.retention(r0, r1) if ok else np.nan))
    return pd.DataFrame(rows, columns=["key", "source", "network", "codec", "quality", "distortion", "bpp",
                                       "retention"])


def just_recognizable(out: str | os.PathLike, retention: float = DEFAULT_RETENTION,
                      networks: Sequence[str] | None = None):
    """The JRQ table of a labelling folder (see the module doc); empty when it has no ladder."""
    import pandas as pd

    retention = check_retention(retention)
    long = retention_table(out, networks)
    rows = []
    for (key, net, codec), g in long.groupby(["key", "network", "codec"], sort=False):
        g = g.sort_values("quality")
        if g["retention"].isna().any():
            continue  # a failed output: the ladder is not whole
        r = g["retention"].to_numpy()
        q, b = g["quality"].to_numpy(), g["bpp"].to_numpy()
        i = lowest_from_which(r >= retention)
        rows.append({"key": key, "source": g["source"].iloc[0], "network": net, "codec": codec,
                     "retention": retention, "jrq": np.nan if i is None else float(q[i]),
                     "jrq_bpp": np.nan if i is None else float(b[i]), "top_quality": float(q[-1]),
                     "top_bpp": float(b[-1]), "top_retention": float(r[-1])})
    columns = ["key", "source", "network", "codec", "retention", "jrq", "jrq_bpp", "top_quality", "top_bpp",
               "top_retention"]
    return pd.DataFrame(rows, columns=columns)


def write_jrq(out: str | os.PathLike, retention: float = DEFAULT_RETENTION) -> Path | None:
    """Write ``OUT/jrq.parquet`` for a labelling folder with a quality ladder (None, and nothing written, without
    one)."""
    out = Path(out)
    config = json.loads((out / "config.json").read_text())
    if not ladders(config["distortions"]):
        return None
    atomic.write_parquet(out / JRQ_FILE, just_recognizable(out, retention))
    return out / JRQ_FILE
