"""Rate-accuracy curves for machines and the Bjontegaard rate difference against fixed-quality coding.

From a labelling folder whose distortions form a quality ladder of one codec (``imutility label -p jpeg15
--held-out ...``), every curve is a POLICY choosing one ladder level per test photo, scored by the held-out
networks' metric over the chosen images (the task's: top-1 for classification, COCO mAP@[.5:.95] for
detection) against their mean bits per pixel:

- ``fixed quality``: the same level for every photo (one point per level);
- ``predictor``: per photo, the lowest level the predictor scores >= T (else the top level), for a sweep of T
  (what ``imutility compress`` does, here read off the scores of the ladder's images);
- ``predictor knee``: per photo, the lowest level scored within delta of the top level's score, for a sweep of
  delta (bits go where the predictor sees them change something, not to images it finds hopeless at any level);
- ``bit-rate rule``: per photo, the lowest level with at least B bits per pixel (constant bit rate), for a sweep of B;
- ``oracle (NET)``: per photo, the lowest level where network NET keeps at least T of its pristine confidence in
  the true class (needs the network and the pristine photo: the bound of what a predictor can reach for NET).

The Bjontegaard delta rate (VCEG-M33: log10 of the rate fitted as a cubic polynomial of the accuracy, both
integrated over the accuracies the two curves share) gives the bits saved at equal top-1, restricted to the
USEFUL range: top-1 within ``useful_points`` of the network's top-1 on the pristine photos.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from imutility import atomic

THRESHOLDS = tuple(np.round(np.linspace(0.05, 0.95, 19), 2))


@dataclass
class Ladder:
    """Per photo x level arrays (photos in rows, levels in ascending quality in columns) and how to score a choice."""

    photos: list[str]
    levels: list[float]
    bpp: np.ndarray
    rows: np.ndarray  # the labels-table row of each (photo, level)
    retained: dict[str, np.ndarray]  # network -> min(1, phi / phi')
    scores: dict[str, np.ndarray]  # predictor -> score
    metric: Callable[[np.ndarray, str, bool], float]  # (table rows, network, pristine) -> the task's metric


def build_ladder(table, networks: Sequence[str], scores: dict[str, np.ndarray], task, outputs, sources) -> Ladder:
    """Arrange a labels table (one codec, one row per photo x level) as :class:`Ladder` arrays; photos missing a
    level are dropped (a policy must be able to pick any level). ``task`` scores a choice (top-1, mAP)."""
    levels = sorted(set(table["level"].astype(float)))
    photos = sorted(set(table["key"]))
    pos_p = {k: i for i, k in enumerate(photos)}
    pos_l = {lv: j for j, lv in enumerate(levels)}
    r = np.array([pos_p[k] for k in table["key"]])
    c = np.array([pos_l[float(v)] for v in table["level"]])

    def grid(values) -> np.ndarray:
        g = np.full((len(photos), len(levels)), np.nan)
        g[r, c] = np.asarray(values, dtype=np.float64)
        return g

    bpp = grid(table["bpp"])
    complete = np.isfinite(bpp).all(1)
    rows = grid(np.arange(len(table)))[complete].astype(int)
    retained = {}
    for n in networks:
        phi, ref = (table[f"{n}.{k}"].to_numpy(float) for k in task.confidence_columns)
        with np.errstate(invalid="ignore", divide="ignore"):
            retained[n] = grid(np.clip(phi / ref, 0, 1))[complete]

    def metric(selected: np.ndarray, network: str, pristine: bool = False) -> float:
        return task.selection_metric(table.iloc[selected], network, outputs, sources, pristine)

    return Ladder([p for p, ok in zip(photos, complete, strict=True) if ok], levels, bpp[complete], rows, retained,
                  {k: grid(v)[complete] for k, v in scores.items()}, metric)


def lowest_passing(values: np.ndarray, threshold: float) -> np.ndarray:
    """Per row, the first column whose value reaches ``threshold`` (the last column when none does)."""
    ok = np.asarray(values) >= threshold
    first = np.argmax(ok, axis=1)
    return np.where(ok.any(1), first, values.shape[1] - 1)


def point(ladder: Ladder, choice: np.ndarray, network: str) -> tuple[float, float]:
    """(mean bpp, the task's metric) of a per-photo choice of levels."""
    idx = np.arange(len(choice))
    return float(ladder.bpp[idx, choice].mean()), float(ladder.metric(ladder.rows[idx, choice], network))


def curves(ladder: Ladder, network: str, oracles: Sequence[str] = ()) -> dict[str, list[tuple[float, float]]]:
    """Every policy's (bpp, metric) points for one network, each curve sorted by rate."""
    n_levels = len(ladder.levels)
    out = {"fixed quality": [point(ladder, np.full(len(ladder.photos), j), network) for j in range(n_levels)]}
    for name, s in ladder.scores.items():
        out[f"predictor: {name}"] = [point(ladder, lowest_passing(s, t), network) for t in THRESHOLDS]
        # the knee: the lowest level scored within delta of what the top level scores (spend bits where they help)
        out[f"predictor knee: {name}"] = [point(ladder, lowest_passing(s - (s[:, -1:] - d), 0.0), network)
                                          for d in np.linspace(0.0, 0.6, 25)]
    targets = np.quantile(ladder.bpp, np.linspace(0.02, 0.98, 25))
    out["bit-rate rule"] = [point(ladder, lowest_passing(ladder.bpp, b), network) for b in targets]
    for o in oracles:
        r = np.nan_to_num(ladder.retained[o], nan=0.0)
        out[f"oracle: {o}"] = [point(ladder, lowest_passing(r, t), network) for t in THRESHOLDS]
    return {k: sorted(set(v)) for k, v in out.items()}


def bd_rate(reference: Sequence[tuple[float, float]], test: Sequence[tuple[float, float]],
            low: float | None = None) -> float:
    """Bjontegaard delta rate of ``test`` against ``reference`` (points are (rate, accuracy)), in percent:
    negative = fewer bits at equal accuracy. log10(rate) is fitted as a cubic polynomial of the accuracy for
    each curve and both are integrated over the accuracies they share (from ``low`` up, when given).
    NaN when they share no interval or a curve has fewer than 4 points there."""
    def prep(pts):
        pts = sorted((a, np.log10(r)) for r, a in pts if r > 0 and np.isfinite(a))
        acc = np.array([p[0] for p in pts])
        lr = np.array([p[1] for p in pts])
        return acc, lr

    a1, r1 = prep(reference)
    a2, r2 = prep(test)
    if len(a1) < 4 or len(a2) < 4:
        return float("nan")
    lo, hi = max(a1.min(), a2.min()), min(a1.max(), a2.max())
    if low is not None:
        lo = max(lo, low)
    if not hi > lo:
        return float("nan")
    p1, p2 = np.polyfit(a1, r1, 3), np.polyfit(a2, r2, 3)
    i1, i2 = np.polyint(p1), np.polyint(p2)
    avg = ((np.polyval(i2, hi) - np.polyval(i2, lo)) - (np.polyval(i1, hi) - np.polyval(i1, lo))) / (hi - lo)
    return float((10 ** avg - 1) * 100)


def rate_accuracy(labels: str | os.PathLike, predictors: dict[str, np.ndarray], networks: Sequence[str],
                  table, oracles: Sequence[str] = (), useful_points: float = 2.0, task=None, outputs=None,
                  sources=None) -> dict:
    """Curves and BD-rates (against fixed quality, in the useful range) for every held-out network. ``task``
    (default: classification) gives the metric; detection needs ``outputs(network)`` and ``sources``."""
    from imutility.tasks import get_task

    task = task or get_task("classification")
    ladder = build_ladder(table, networks, predictors, task, outputs, sources)
    result = {"labels": str(labels), "task": task.name, "metric": task.metric_name, "photos": len(ladder.photos),
              "levels": ladder.levels, "useful_points": useful_points, "networks": {}}
    all_rows = ladder.rows[:, -1]
    for net in networks:
        cs = curves(ladder, net, oracles)
        pristine = ladder.metric(all_rows, net, True)
        # the useful range: within ``useful_points`` of the pristine metric (points of a percentage for top-1,
        # of the metric x 100 for mAP)
        low = pristine - useful_points / 100
        fixed = cs["fixed quality"]
        result["networks"][net] = {
            "pristine": pristine, "useful_from": low,
            "curves": {k: [list(p) for p in v] for k, v in cs.items()},
            "bd_rate_vs_fixed_quality": {k: bd_rate(fixed, v, low) for k, v in cs.items() if k != "fixed quality"},
            "bd_rate_vs_fixed_quality_all_accuracies": {k: bd_rate(fixed, v) for k, v in cs.items()
                                                        if k != "fixed quality"},
        }
    return result


def rate_axes(panels: Sequence[str], width: float = 5.5, height: float = 4.6):
    """A figure with one rate-accuracy panel (log-rate x axis) per name: ``(fig, {name: ax})``; the curves and the
    rate-mode benchmark draw on it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(panels), figsize=(width * len(panels), height), squeeze=False)
    for ax in axes[0]:
        ax.set_xscale("log")
        ax.set_xlabel("mean bits per pixel")
    return fig, dict(zip(panels, axes[0], strict=True))


def plot(result: dict, path: str | os.PathLike) -> None:
    fig, axes = rate_axes(list(result["networks"]))
    for net, ax in axes.items():
        r = result["networks"][net]
        for name, pts in r["curves"].items():
            x = [p[0] for p in pts]
            y = [100 * p[1] for p in pts]
            style = {"marker": "o", "lw": 2} if name.startswith("predictor") else {"marker": ".", "lw": 1}
            bd = r["bd_rate_vs_fixed_quality"].get(name)
            label = name + (f" (BD-rate {bd:+.1f} %)" if bd is not None and np.isfinite(bd) else "")
            ax.plot(x, y, label=label, **style)
        ax.axhline(100 * r["pristine"], color="grey", ls="--", lw=0.8, label="pristine")
        ax.axhline(100 * r["useful_from"], color="grey", ls=":", lw=0.8, label="useful range from")
        ax.set_ylabel(f"{result['metric']} of {net} (x100)")
        ax.set_title(net, fontsize=9)
        ax.legend(fontsize=7)
    fig.tight_layout()
    atomic.write_figure(fig, path)


def write(result: dict, out: str | os.PathLike) -> None:
    out = Path(out)
    atomic.write_json(out / "curves.json", atomic.json_safe(result))
    plot(result, out / "rate_accuracy.png")


def curves_for_folder(labels: str | os.PathLike, predictors: dict[str, str], out: str | os.PathLike,
                      test_sources: str | os.PathLike | None = None, oracles: Sequence[str] | None = None,
                      useful_points: float = 2.0, device: str = "cpu",
                      log: Callable[[str], None] = lambda m: None) -> dict:
    """``imutility curves``: score the ladder of an ``imutility label ... --held-out`` folder with ``predictors``
    (name -> folder, card or built-in name; scores cached beside ``out``), build every curve for every held-out
    network (the oracles: ``oracles``, default those networks), write ``out/curves.json`` and
    ``out/rate_accuracy.png``; returns the result."""
    from imutility.errors import InvalidInputError
    from imutility.evaluation.benchmark import BenchmarkSet, cached_scores, load_set
    from imutility.labelling import read_outputs, read_sources
    from imutility.tasks import get_task

    s = BenchmarkSet(Path(labels).name, Path(labels), Path(test_sources) if test_sources else None)
    config, table = load_set(s)
    held = config.get("held_out", [])
    if not held:
        raise InvalidInputError(f"{labels} has no held-out networks: label it with --held-out NETS")
    scores = {name: cached_scores(s, table, name, where, Path(out), device, log) for name, where in predictors.items()}
    result = rate_accuracy(labels, scores, held, table, list(oracles) if oracles else held, useful_points,
                           get_task(config["task"]), lambda net: read_outputs(labels, net),
                           {x.key: x for x in read_sources(labels)})
    write(result, out)
    return result
