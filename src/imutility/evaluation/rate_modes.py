"""Which rate-control mode saves bits, and for whom: ``imutility rate-benchmark``.

On a labelled quality ladder of TEST photos (``imutility label OUT -p jpeg-dense --held-out ...`` on photos no rate
model trained on, e.g. ``ilsvrc-val600``), every mode chooses one ladder quality per photo, read off the ladder
(every quality of every photo was encoded and run through every network when labelling); a judging network's top-1
over the chosen encodings is its accuracy, their mean bits per pixel its rate. Modes:

- ``fixed quality``: one quality for every photo (one point per ladder quality): the reference;
- ``bit-rate rule``: per photo the lowest quality with at least B bits per pixel (sweep of B);
- ``two-level check (NET)``: encode at a low quality, one pass of NET: keep it when NET keeps its pristine
  decision, else the ladder's top (sweep of the low quality; <= 2 encodes, 2 passes of NET): the plan's baseline;
- ``plan (NET)``: the shipped/trained :class:`~imutility.rate.plan.QualityModel` of NET: plan, check, at most one
  correction (sweep of the retention level), what ``compress --for NET`` does;
- ``plan (content)``: the content-only model trained on an ensemble's just-recognizable quality (no network pass;
  sweep of its confidence);
- ``conservative (content|plan NET)``: never below a floor quality, otherwise the mode's choice (sweep of the floor);
- ``oracle (NET)``: NET's own just-recognizable quality (a full search: every quality, needs the pristine image;
  the bound), sweep of the retention level.

Each mode's point is compared with fixed quality AT EQUAL TOP-1: the fixed-quality rate reaching the mode's top-1,
read off the fixed curve (log-rate interpolated between ladder qualities; its upper envelope), so ``saving`` =
1 - mode bits / fixed bits at that top-1 (positive: fewer bits). Bootstrap intervals resample photos (the mode's
point and the fixed curve together). A mode's headline point is its most saving point in the USEFUL range (top-1
within 1 point of the judge's pristine top-1). BD-rates over shared accuracies beside them.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from imutility import atomic
from imutility.evaluation.curves import bd_rate
from imutility.rate.plan import QualityModel, plan_index
from imutility.rate.training import RETENTIONS, LadderData, ladder_data

USEFUL_POINTS = 1.0


def fixed_rate_at(fixed_bpp: np.ndarray, fixed_acc: np.ndarray, acc: float) -> tuple[float, bool]:
    """The fixed-quality rate reaching accuracy ``acc``: along the ladder (ascending), the upper envelope of its
    accuracy, log-rate interpolated. Returns (rate, reached); unreached (the mode is more accurate than every fixed
    quality): the rate of the cheapest fixed quality of the highest accuracy, not the ladder's top."""
    env = np.maximum.accumulate(fixed_acc)
    i = int(np.searchsorted(env, acc - 1e-12))
    if i >= len(env):
        return float(fixed_bpp[int(np.argmax(env >= env[-1]))]), False
    if i == 0 or env[i] == env[i - 1]:
        return float(fixed_bpp[i]), True
    t = (acc - env[i - 1]) / (env[i] - env[i - 1])
    return float(10 ** ((1 - t) * np.log10(fixed_bpp[i - 1]) + t * np.log10(fixed_bpp[i]))), True


class CorrectnessJudge:
    """A classifier judging: its top-1 correctness per photo and ladder quality; the metric of a choice is the mean
    over the chosen encodings."""

    def __init__(self, correct: np.ndarray, pristine: np.ndarray):
        self.correct, self.pristine_correct = correct, pristine

    def metric(self, rows: np.ndarray, choice: np.ndarray) -> float:
        return float(self.correct[rows, choice].mean())

    def pristine(self, rows: np.ndarray) -> float:
        return float(self.pristine_correct[rows].mean())

    def restrict(self, rows: np.ndarray) -> CorrectnessJudge:
        """The same judge over ``rows`` of its photos only (row i of the new one = photo ``rows[i]``)."""
        return CorrectnessJudge(self.correct[rows], self.pristine_correct[rows])


class DetectionJudge:
    """A detector judging: COCO mAP@[.5:.95] (pycocotools) of its cached detections on the chosen encodings
    against the photos' ground truth; a photo drawn twice by the bootstrap counts as two images."""

    def __init__(self, records: list[list[dict]], pristine: list[dict], ground_truth: list[tuple]):
        self.records, self.pristine_records, self.gt = records, pristine, ground_truth

    def metric(self, rows: np.ndarray, choice: np.ndarray) -> float:
        from imutility.filtering import CocoScorer

        return CocoScorer([self.gt[i] for i in rows]).score([self.records[i][c] for i, c in zip(rows, choice,
                                                                                               strict=True)])[0]

    def pristine(self, rows: np.ndarray) -> float:
        from imutility.filtering import CocoScorer

        return CocoScorer([self.gt[i] for i in rows]).score([self.pristine_records[i] for i in rows])[0]

    def restrict(self, rows: np.ndarray) -> DetectionJudge:
        return DetectionJudge([self.records[i] for i in rows], [self.pristine_records[i] for i in rows],
                              [self.gt[i] for i in rows])


def _fixed_metric(judge, rows: np.ndarray, k: int) -> np.ndarray:
    """The judge's metric at every fixed quality over ``rows``, memoised on the judge: the modes' bootstraps draw the
    same photo resamples (one seed), so each draw's fixed curve is computed once."""
    cache = judge.__dict__.setdefault("_fixed", {})
    key = np.asarray(rows, dtype=np.int64).tobytes()
    if key not in cache:
        cache[key] = np.array([judge.metric(rows, np.full(len(rows), j)) for j in range(k)])
    return cache[key]


def _saving(judge, bpp: np.ndarray, choice: np.ndarray, rows: np.ndarray) -> tuple[float, float, float, bool, float]:
    """(rate, metric, bits saved at equal metric, whether fixed quality reaches it, metric gained at equal bits)."""
    k = bpp.shape[1]
    rate, acc = float(bpp[rows, choice[rows]].mean()), judge.metric(rows, choice[rows])
    fixed_bpp = bpp[rows].mean(0)
    fixed_acc = _fixed_metric(judge, rows, k)
    fixed, reached = fixed_rate_at(fixed_bpp, fixed_acc, acc)
    at_rate = float(np.interp(np.log(rate), np.log(fixed_bpp), fixed_acc))  # fixed quality's metric at these bits
    return rate, acc, 1 - rate / fixed, reached, acc - at_rate


def evaluate_point(judge, bpp: np.ndarray, choice: np.ndarray, draws: int = 500, seed: int = 0) -> dict:
    """One mode's point (a ladder index per photo) against fixed quality at equal metric, with a photo bootstrap
    (``draws`` = 0: no interval). ``judge``: a :class:`CorrectnessJudge` (or an array of correctness per photo and
    quality), a :class:`DetectionJudge`."""
    if isinstance(judge, np.ndarray):
        judge = CorrectnessJudge(judge, np.full(len(judge), np.nan))
    n = len(choice)
    rate, acc, saving, reached, gain = _saving(judge, bpp, choice, np.arange(n))
    out = {"bpp": rate, "top1": acc, "saving": saving, "fixed_reaches_top1": reached, "gain_at_equal_bits": gain}
    if draws:
        rng = np.random.default_rng(seed)
        boots = np.array([_saving(judge, bpp, choice, rng.integers(0, n, n)) for _ in range(draws)], dtype=float)
        out["saving_ci"] = np.percentile(boots[:, 2], [2.5, 97.5]).tolist()
        out["gain_ci"] = np.percentile(boots[:, 4], [2.5, 97.5]).tolist()
    return out


def _oracle_index(retention: np.ndarray, r: float) -> np.ndarray:
    from imutility.rate.training import jrq_classes

    return np.minimum(jrq_classes(retention, [r])[:, 0], retention.shape[1] - 1)


def _plan_check(model: QualityModel, feats: np.ndarray, retention: np.ndarray, r: float) -> tuple[np.ndarray, float]:
    first = model.checked_plan_index(feats, r)
    top = retention.shape[1] - 1
    failed = retention[np.arange(len(first)), first] < r
    return np.where(failed, top, first), float(1 + (failed & (first < top)).mean())


def mode_choices(test: LadderData, nets: dict[str, LadderData], plans: dict[str, QualityModel],
                 content: QualityModel | None, content_feats: np.ndarray) -> dict[str, list[tuple[str, np.ndarray,
                                                                                               dict]]]:
    """Every mode's sweep: name -> [(setting, ladder index per photo, cost)]; cost: encodes and network passes
    per photo."""
    from imutility.tasks import get_task

    r_check = get_task(test.task).plan_retention
    n, k = test.bpp.shape
    out: dict[str, list] = {"bit-rate rule": []}
    for b in np.quantile(test.bpp, np.linspace(0.02, 0.98, 25)):
        ok = test.bpp >= b
        out["bit-rate rule"].append((f"{b:.3f} bpp", np.where(ok.any(1), np.argmax(ok, 1), k - 1),
                                     {"encodes": 1, "passes": 0}))
    for net, data in nets.items():
        out[f"oracle ({net})"] = [(f"r={r}", _oracle_index(data.retention, r), {"encodes": k, "passes": k + 1})
                                  for r in RETENTIONS]
        lows = []
        for j in range(k - 1):
            failed = data.retention[:, j] < r_check
            lows.append((f"q={test.ladder[j]}", np.where(failed, k - 1, j),
                         {"encodes": float(1 + failed.mean()), "passes": 2}))
        out[f"two-level check ({net})"] = lows
        if net in plans:
            pts = []
            for r in RETENTIONS:
                choice, encodes = _plan_check(plans[net], data.features, data.retention, r)
                pts.append((f"r={r}", choice, {"encodes": encodes, "passes": 2}))
            out[f"plan ({net})"] = pts
    if content is not None:
        cum = content.cumulative(content_feats, r_check)
        out["plan (content)"] = [(f"P={c}", plan_index(cum, c), {"encodes": 1, "passes": 0})
                                 for c in (0.3, 0.5, 0.7, 0.8, 0.9, 0.95, 0.98, 0.99)]
        base = plan_index(cum, content.confidence)
        out["conservative (content)"] = [(f"floor q={test.ladder[j]}", np.maximum(base, j), {"encodes": 1,
                                                                                              "passes": 0})
                                         for j in range(k)]
    for net in plans:
        if net in nets:
            base, encodes = _plan_check(plans[net], nets[net].features, nets[net].retention, r_check)
            out[f"conservative (plan {net})"] = [(f"floor q={test.ladder[j]}", np.maximum(base, j),
                                                  {"encodes": encodes, "passes": 2}) for j in range(k)]
    return out


def make_judge(folder: Path, keys: Sequence[str], ladder: Sequence[int], judge: str, codec: str = "jpeg"):
    """The judge of a labelling folder's task for network ``judge``, and the rows it can judge (a boolean mask)."""
    config = json.loads((folder / "config.json").read_text())
    return _JUDGES.get(config["task"], _metric_judge)(folder, config, keys, ladder, judge, codec)


def _correctness_judge(folder, config, keys, ladder, judge, codec):
    correct, pristine = judge_correct(folder, keys, ladder, judge, codec)
    ok = np.isfinite(correct).all(1) & np.isfinite(pristine)
    return CorrectnessJudge(correct, pristine), ok


def _detection_judge(folder, config, keys, ladder, judge, codec):
    from imutility.distort import parse_distortion
    from imutility.labelling.store import read_outputs, read_sources
    from imutility.tasks import PRISTINE

    cache = read_outputs(folder, judge)
    sources = {s.key: s for s in read_sources(folder)}
    spec = {int(parse_distortion(d).level): d for d in config["distortions"]
            if parse_distortion(d).family == codec and int(parse_distortion(d).level) in set(ladder)}
    empty = {"b": [], "l": [], "s": []}

    def rec(key, dist):
        r = cache.get((key, dist))
        return r if r is not None and "error" not in r else None

    records, pristine, gt, ok = [], [], [], []
    for key in keys:
        row = [rec(key, spec[q]) for q in ladder]
        p0 = rec(key, PRISTINE)
        ok.append(p0 is not None and all(r is not None for r in row))
        records.append([r or empty for r in row])
        pristine.append(p0 or empty)
        s = sources[key]
        gt.append((np.asarray(s.boxes or (), dtype=float).reshape(-1, 4), list(s.labels or ())))
    return DetectionJudge(records, pristine, gt), np.array(ok)


class MetricJudge:
    """Any task's network judging by the task's own metric of a selection of images
    (:meth:`imutility.tasks.Task.selection_metric`, e.g. segmentation's dataset mIoU), from the labels table: the
    judge of every task without a faster one of its own."""

    def __init__(self, task, table, grid: np.ndarray, network: str, outputs, sources, parts=None):
        self.task, self.table, self.grid, self.network = task, table, grid, network
        self.outputs, self.sources = outputs, sources
        if parts is None:  # an additive metric (segmentation's confusion matrices): every row's parts once
            flat = task.selection_parts(table, network, outputs, sources)
            if flat is not None:
                first = table.iloc[grid[:, 0]]
                parts = (flat[grid], task.selection_parts(first, network, outputs, sources, pristine=True))
        self.parts = parts  # ([photo, level, ...], [photo, ...]) or None

    def metric(self, rows: np.ndarray, choice: np.ndarray) -> float:
        rows = np.asarray(rows)
        if self.parts is not None:
            return self.task.metric_of_parts(self.parts[0][rows, np.asarray(choice)].sum(0))
        sel = self.table.iloc[self.grid[rows, np.asarray(choice)]]
        return self.task.selection_metric(sel, self.network, self.outputs, self.sources)

    def pristine(self, rows: np.ndarray) -> float:
        if self.parts is not None:
            return self.task.metric_of_parts(self.parts[1][np.asarray(rows)].sum(0))
        sel = self.table.iloc[self.grid[np.asarray(rows), 0]]
        return self.task.selection_metric(sel, self.network, self.outputs, self.sources, pristine=True)

    def restrict(self, rows: np.ndarray) -> MetricJudge:
        parts = None if self.parts is None else (self.parts[0][rows], self.parts[1][rows])
        return MetricJudge(self.task, self.table, self.grid[rows], self.network, self.outputs, self.sources, parts)


def _metric_judge(folder, config, keys, ladder, judge, codec):
    from functools import lru_cache

    import pandas as pd

    from imutility.distort import parse_distortion
    from imutility.labelling.store import read_outputs, read_sources
    from imutility.tasks import get_task

    table = pd.read_parquet(folder / "labels.parquet")
    table = table[table["augment"].isna()].reset_index(drop=True)
    pos, qpos = {k: i for i, k in enumerate(keys)}, {q: j for j, q in enumerate(ladder)}
    grid = np.full((len(keys), len(ladder)), -1, dtype=np.int64)
    for i, (k, d) in enumerate(zip(table["key"], table["distortion"], strict=True)):
        spec = parse_distortion(d)
        if spec.family == codec and k in pos and int(spec.level) in qpos:
            grid[pos[k], qpos[int(spec.level)]] = i
    ok = (grid >= 0).all(1)
    sources = {s.key: s for s in read_sources(folder)}
    outputs = lru_cache(maxsize=None)(lambda net: read_outputs(folder, net))
    return MetricJudge(get_task(config["task"]), table, grid.clip(0), judge, outputs, sources), ok


#: the tasks whose folders have a faster judge of their own (a table, not a comparison of task names); every
#: other task is judged by its selection metric (:class:`MetricJudge`)
_JUDGES = {"classification": _correctness_judge, "detection": _detection_judge}


def judge_correct(folder: Path, keys: Sequence[str], ladder: Sequence[int], judge: str, codec: str = "jpeg"):
    """[photo, quality] top-1 correctness of ``judge`` (NaN: unknown), and its pristine top-1."""
    import pandas as pd

    from imutility.distort import parse_distortion

    table = pd.read_parquet(folder / "labels.parquet")
    table = table[table["augment"].isna()]
    pos = {k: i for i, k in enumerate(keys)}
    qpos = {q: j for j, q in enumerate(ladder)}
    grid = np.full((len(keys), len(ladder)), np.nan)
    pristine = np.full(len(keys), np.nan)
    for key, dist, pred, p0, target in zip(table["key"], table["distortion"], table[f"{judge}.pred"],
                                           table[f"{judge}.pristine_pred"], table["target"], strict=True):
        i = pos.get(str(key))
        d = parse_distortion(dist)
        if i is None or d.family != codec or int(d.level) not in qpos or pd.isna(pred) or pd.isna(target):
            continue
        grid[i, qpos[int(d.level)]] = float(pred == target)
        pristine[i] = float(p0 == target)
    return grid, pristine


def rate_benchmark(test_folder: str | os.PathLike, judges: Sequence[str], plans: dict[str, QualityModel],
                   content: QualityModel | None = None, networks: Sequence[str] = (), draws: int = 500,
                   log: Callable[[str], None] = lambda m: None, photos: Sequence[str] | None = None,
                   codec: str = "jpeg", useful_points: float = USEFUL_POINTS) -> dict:
    """Every mode against fixed quality for every judge (see the module doc). ``networks``: the networks whose
    two-level check and oracle are measured (default: the plans' and the judges'). ``useful_points``: the useful
    range, within this many points (hundredths) of the judge's metric on the pristine photos; a judge scored
    against its own pristine output (segmentation's reference-free mIoU) is 1.0 there by definition, so it needs
    a wider range than top-1 does."""
    folder = Path(test_folder)
    nets_needed = list(dict.fromkeys([*plans, *judges, *networks]))
    nets = {net: ladder_data([folder], net, codec) for net in nets_needed}
    keys = sorted(set.intersection(*(set(d.keys) for d in nets.values())) & (set(photos) if photos else {
        k for d in nets.values() for k in d.keys}))
    nets = {net: _subset(d, keys) for net, d in nets.items()}
    test = next(iter(nets.values()))
    content_feats = test.features[:, :len(content.features)] if content is not None else None
    choices = mode_choices(test, nets, plans, content, content_feats)
    from imutility.tasks import get_task

    metric = get_task(test.task).metric_name
    result = {"test_folder": str(folder), "photos": len(keys), "task": test.task, "metric": metric,
              "ladder": test.ladder, "useful_points": useful_points,
              "judges": {}}
    for judge in judges:
        full, ok = make_judge(folder, keys, test.ladder, judge, codec)
        rows = np.flatnonzero(ok)
        j_ = _restrict(full, rows)
        b = test.bpp[ok]
        p_top1 = j_.pristine(np.arange(len(rows)))
        fixed = [(float(b[:, j].mean()), j_.metric(np.arange(len(rows)), np.full(len(rows), j)))
                 for j in range(len(test.ladder))]
        modes = {}
        for name, sweep in choices.items():
            pts = []
            for setting, choice, cost in sweep:
                pt = evaluate_point(j_, b, choice[ok], draws=0)
                pts.append({"setting": setting, **pt, **cost})
            useful = [p for p in pts if p["top1"] >= p_top1 - useful_points / 100]
            best = max(useful, key=lambda p: p["saving"]) if useful else None
            if best is not None:  # the interval of the headline point (bootstrap over photos)
                i = pts.index(best)
                best.update(evaluate_point(j_, b, sweep[i][1][ok], draws=draws))
            modes[name] = {"points": pts, "useful_best": best,
                           "bd_rate_all": bd_rate(fixed, [(p["bpp"], p["top1"]) for p in pts])}
            log(f"{judge}: {name}: " + (f"{best['setting']} top-1 {best['top1']:.3f} saving {best['saving']:+.1%} "
                                        f"[{best['saving_ci'][0]:+.1%}, {best['saving_ci'][1]:+.1%}]"
                                        if best else "never in the useful range"))
        result["judges"][judge] = {"photos": int(ok.sum()), "pristine_top1": p_top1,
                                   "fixed": [{"quality": q, "bpp": f[0], "top1": f[1]}
                                             for q, f in zip(test.ladder, fixed, strict=True)], "modes": modes}
    return result


def _restrict(judge, rows: np.ndarray):
    return judge.restrict(np.asarray(rows))


def _subset(d: LadderData, keys: Sequence[str]) -> LadderData:
    pos = {k: i for i, k in enumerate(d.keys)}
    rows = np.array([pos[k] for k in keys])
    return LadderData(list(keys), [d.sources[i] for i in rows], d.features[rows], d.classes[rows],
                      d.retention[rows], d.bpp[rows], d.ladder, d.feature_names, d.task)


def table_markdown(result: dict) -> str:
    lines = []
    m_ = result.get("metric", "top-1")
    points = result.get("useful_points", USEFUL_POINTS)
    for judge, r in result["judges"].items():
        lines.append(f"\n**Judged by {judge}** ({r['photos']} photos, pristine {m_} {r['pristine_top1']:.3f}); "
                     f"useful range: {m_} >= {r['pristine_top1'] - points / 100:.3f}\n")
        lines.append(f"| mode | setting | {m_} | bits/pixel | saving vs fixed quality at equal {m_} (95 % CI) | "
                     f"{m_} gained at equal bits, points (95 % CI) | encodes / passes per image |")
        lines.append("|---|---|---|---|---|---|---|")
        for name, m in r["modes"].items():
            b = m["useful_best"]
            if b is None:
                lines.append(f"| {name} | - | never within {points:g} point of pristine | | | | |")
                continue
            flag = "" if b["fixed_reaches_top1"] else " (above every fixed quality: vs the best of them)"
            lines.append(f"| {name} | {b['setting']} | {b['top1']:.3f} | {b['bpp']:.3f} | {b['saving']:+.1%} "
                         f"[{b['saving_ci'][0]:+.1%}, {b['saving_ci'][1]:+.1%}]{flag} | "
                         f"{100 * b['gain_at_equal_bits']:+.1f} [{100 * b['gain_ci'][0]:+.1f}, "
                         f"{100 * b['gain_ci'][1]:+.1f}] | {b['encodes']:.2f} / "
                         f"{b['passes']} |")
    return "\n".join(lines) + "\n"


def plot(result: dict, path: str | os.PathLike) -> None:
    from imutility.evaluation.curves import rate_axes

    fig, axes = rate_axes(list(result["judges"]), 6, 4.8)
    for judge, ax in axes.items():
        r = result["judges"][judge]
        ax.plot([f["bpp"] for f in r["fixed"]], [100 * f["top1"] for f in r["fixed"]], "k.-", lw=2,
                label="fixed quality")
        for name, m in r["modes"].items():
            pts = sorted((p["bpp"], 100 * p["top1"]) for p in m["points"])
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker=".", lw=1, label=name)
        points = result.get("useful_points", USEFUL_POINTS)
        ax.axhline(100 * (r["pristine_top1"] - points / 100), color="grey", ls=":", lw=0.8,
                   label="useful range from")
        ax.set_ylabel(f"{result.get('metric', 'top-1')} of {judge} (x100)")
        ax.set_ylim(bottom=max(0, 100 * r["pristine_top1"] - 15))
        ax.set_title(f"judged by {judge}", fontsize=9)
        ax.legend(fontsize=6)
    fig.tight_layout()
    atomic.write_figure(fig, path)


def write(result: dict, out: str | os.PathLike) -> dict[str, Path]:
    out = Path(out)
    paths = {"json": out / "rate.json", "table": out / "rate.md", "figure": out / "rate.png"}
    atomic.write_json(paths["json"], atomic.json_safe(result))
    atomic.write_text(paths["table"], table_markdown(result))
    plot(result, paths["figure"])
    return paths


def load(path: str | os.PathLike) -> dict:
    return json.loads(Path(path).read_text())
