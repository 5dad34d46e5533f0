"""Predictors against the cheap rules, within each level and pooled, with bootstrap intervals over photos.

``benchmark(...)`` scores the TEST photos of one or more labelling folders (``imutility label`` with the
unseen networks as ``--held-out``) with every predictor given, and sets beside them:

- the cheap rules: bits per pixel and the JPEG quality read from the file (:mod:`imutility.rules`);
- the maximum softmax probability (MSP) of every classifier in the folder (one that defined no label is
  the bar a content-aware predictor must clear at equal cost);
- any predictor named as a baseline (e.g. a pixel quality regressor trained with ``imutility train``);
- the COMPRESSION-BLIND CONTROLS: every predictor's score, and every network's MSP, on the PRISTINE photo of the
  row (one value for all levels of a photo): what a score adds over its control is what it reads of the
  compression rather than of how recognisable the photo is;
- a random baseline (``random`` in the matched-count tables: ties of every score are broken at random, averaged
  over seeded draws), the share of images kept beside every matched-count gain, and each predictor's pristine
  false-reject rate (pristine photos every held-out network gets right that it scores below 0.5).

It reports, per folder: AUROC against the combined label within each level (the levels where both
classes are at least ``min_share`` of the labelled images form the transition zone, whose mean is the
headline), pooled AUROC, balanced accuracy at the predictors' threshold, AUROC for each held-out
network's success within each level (classification: top-1 == ground truth; detection: its own Eq. 6
label), and that success rate (top-1 for classifiers) when every score rejects, within each level, as
many images as the predictor does (matched count), with the gains and their intervals. Scores are
cached per folder and predictor, so a rerun only adds what is new.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from imutility import atomic
from imutility.errors import InvalidInputError, SettingError
from imutility.evaluation.metrics import (
    auroc_table,
    balanced_accuracy_table,
    by_level,
    matched_rejection,
    photo_bootstrap,
    weighted_auroc,
)
from imutility.predictor.training.split import MIN_TEST_PER_CLASS, MIN_TEST_PHOTOS
from imutility.tasks import get_task

THRESHOLD = 0.5  # P(useful) below this = rejected


@dataclass
class BenchmarkSet:
    """One labelling folder and which of its photos to test on (all when ``test_sources`` is None)."""

    name: str
    labels: Path
    test_sources: Path | None = None


@dataclass
class BenchmarkSpec:
    sets: list[BenchmarkSet]
    predictors: dict[str, str]  # name -> predictor folder or built-in name (the contenders)
    baselines: dict[str, str] = field(default_factory=dict)  # name -> predictor used as a baseline rule
    msp: Sequence[str] | None = None  # networks whose MSP is a baseline (default: all in the folder)
    n_boot: int = 1000
    seed: int = 0
    min_share: float = 0.1
    device: str = "cpu"
    precisions: dict[str, str] = field(default_factory=dict)  # name -> precision of that predictor (default fp32)


def load_set(s: BenchmarkSet):
    import pandas as pd

    config = json.loads((s.labels / "config.json").read_text())
    table = pd.read_parquet(s.labels / "labels.parquet")
    table = table[table["augment"].isna()].reset_index(drop=True)
    if s.test_sources is not None:
        test = set(json.loads(Path(s.test_sources).read_text()))
        table = table[table["source"].isin(test)].reset_index(drop=True)
        if table.empty:
            raise InvalidInputError(f"none of the photos in {s.test_sources} is in {s.labels}")
    return config, table


def _predictions(pred, cache: Path, keys: list[str], paths: list[str], log: Callable[[str], None],
                 what: str) -> dict[str, float]:
    """``pred``'s score per key (``paths[i]`` is scored for ``keys[i]``), from ``cache`` when it holds every key,
    else scored once and cached there (the one cache scheme of the benchmark's scores)."""
    import pandas as pd

    if cache.is_file():
        old = pd.read_parquet(cache)
        if set(keys) <= set(old["path"]):
            return dict(zip(old["path"], old["score"].astype(float), strict=True))
    if pred.placement.on_cpu:
        pred.use_onnx_runtime()
    log(f"[benchmark] scoring {what}")
    got = [np.nan if v is None else v for _, v, _ in pred.predict_paths(paths, 64)]
    atomic.write_parquet(cache, pd.DataFrame({"path": keys, "score": np.asarray(got, dtype=np.float64)}))
    return dict(zip(keys, got, strict=True))


def _load(where: str, device: str, precision: str):
    from imutility.predictor.runtime.predictor import Predictor

    return Predictor.load(where, device=device, precision=precision)


def cached_scores(s: BenchmarkSet, table, name: str, where: str, out: Path, device: str,
                  log: Callable[[str], None], precision: str = "fp32", pred=None) -> np.ndarray:
    """A predictor's scores on a set's test images, cached in
    ``out/scores/<set>/<name>-<weights hash>[-<precision>].parquet``."""
    pred = pred or _load(where, device, precision)
    keys = [str(p) for p in table["path"]]
    got = _predictions(pred, score_cache(out, s.name, name, pred.card.weights_sha256, precision), keys,
                       [str(s.labels / p) for p in keys], log, f"{len(keys)} images of {s.name} with {name}")
    return np.array([got[k] for k in keys], dtype=np.float64)


def control_scores(s: BenchmarkSet, table, name: str, where: str, out: Path, device: str,
                   log: Callable[[str], None], precision: str = "fp32", pred=None) -> np.ndarray:
    """The COMPRESSION-BLIND CONTROL of a predictor: its score on each row's PRISTINE photo (the source), which
    knows nothing of the distortion; one value per row (every level of a photo shares it). What a predictor adds
    over it is what it reads of the compression. Cached like :func:`cached_scores` (set name + ``-pristine``)."""
    pred = pred or _load(where, device, precision)
    sources = list(dict.fromkeys(table["source"].astype(str)))
    got = _predictions(pred, score_cache(out, f"{s.name}-pristine", name, pred.card.weights_sha256, precision),
                       sources, sources, log, f"the {len(sources)} pristine photos of {s.name} with {name} "
                       "(the control)")
    return np.array([got[x] for x in table["source"].astype(str)], dtype=np.float64)


def pristine_false_rejects(control: np.ndarray, table, task, networks: Sequence[str], threshold: float = THRESHOLD,
                           successes: dict[str, np.ndarray | None] | None = None) -> dict:
    """Of the pristine photos every judging network gets right (``task.pristine_success``; classification: pristine
    top-1 == ground truth), the share a predictor scores below ``threshold`` on the pristine photo (``filter`` would
    delete them). ``successes``: those arrays already computed, by network."""
    first = ~table["source"].duplicated().to_numpy()
    ok = np.ones(int(first.sum()), dtype=bool)
    for net in networks:
        success = successes[net] if successes is not None else task.pristine_success(table, net)
        if success is None:
            return {"n": 0, "rate": float("nan")}
        ok &= success[first] == 1
    c = np.asarray(control, dtype=np.float64)[first][ok]
    c = c[np.isfinite(c)]
    return {"n": int(len(c)), "rejected": int((c < threshold).sum()),
            "rate": float((c < threshold).mean()) if len(c) else float("nan")}


def score_cache(out: Path, set_name: str, name: str, weights_sha256: str, precision: str = "fp32") -> Path:
    """Where :func:`cached_scores` keeps a predictor's scores on a set: one file per name, weights and precision."""
    tag = "" if precision == "fp32" else f"-{precision}"
    return Path(out) / "scores" / set_name / f"{_slug(name)}-{weights_sha256[:12]}{tag}.parquet"


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)


def _jpeg_quality(s: BenchmarkSet, table) -> np.ndarray:
    from imutility.rules import NotJpegError, jpeg_quality

    out = np.full(len(table), np.nan)
    for i, p in enumerate(table["path"]):
        try:
            out[i] = jpeg_quality(s.labels / p)
        except (NotJpegError, OSError):
            pass
    return out


def _msp(table, network: str) -> np.ndarray:
    return table[f"{network}.p5"].map(lambda v: float(v[0]) if v is not None and len(v) else np.nan).to_numpy(
        dtype=np.float64)


def photo_collections(table, config: dict) -> np.ndarray:
    """Per row, which of the labelled data entries its photo came from (the entry folder's name; a COCO json's
    folder), so figures can be given per collection (real val photos apart from network-training photos)."""
    entries = [e for e in str(config.get("dataset", "")).split(";") if e]
    roots = [(Path(e).parent if e.endswith(".json") else Path(e)) for e in entries]
    names = [r.name or str(r) for r in roots]

    def which(source: str) -> str:
        for root, name in zip(roots, names, strict=True):
            if Path(source).is_relative_to(root):
                return name
        return "other"

    return np.array([which(str(s)) for s in table["source"]])


def transition_levels(table, min_share: float) -> list[str]:
    """Distortions where both label classes make at least ``min_share`` of the labelled images."""
    out = []
    for d, g in table.groupby("distortion", sort=False):
        y = g["label"].dropna()
        if len(y) and min(y.mean(), 1 - y.mean()) >= min_share:
            out.append(d)
    return out


def _diff(scores: dict[str, np.ndarray], y: np.ndarray, levels: np.ndarray, weights: np.ndarray, a: str, b: str,
          order: list[str]) -> dict:
    """Paired bootstrap interval of AUROC(a) - AUROC(b), per level and for the mean over ``order``."""
    y = np.asarray(y, dtype=np.float64)
    sa, sb = scores[a], scores[b]
    ok = np.isfinite(y) & np.isfinite(sa) & np.isfinite(sb)

    def fn(mask):
        m = mask & ok
        return weighted_auroc(sa[m], y[m] == 1, weights[:, m]) - weighted_auroc(sb[m], y[m] == 1, weights[:, m])

    return {k: v.as_dict() for k, v in by_level(levels, fn, weights, order).items()}


def benchmark(spec: BenchmarkSpec, out: str | os.PathLike, log: Callable[[str], None] = print) -> dict:
    """Run the comparison; writes ``out/results.json`` and returns it (see the module doc)."""
    out = Path(out)
    unknown = sorted(set(spec.precisions) - set(spec.predictors) - set(spec.baselines))
    if unknown:
        raise SettingError(f"precision given for {', '.join(unknown)}, which is not a --predictor or --baseline name")
    results: dict = {"predictors": dict(spec.predictors), "baselines": dict(spec.baselines),
                     "precisions": dict(spec.precisions), "sets": {},
                     "n_boot": spec.n_boot, "threshold": THRESHOLD, "min_share": spec.min_share}
    loaded = {name: _load(where, spec.device, spec.precisions.get(name, "fp32"))
              for name, where in {**spec.predictors, **spec.baselines}.items()}  # each loaded once, for every set
    for s in spec.sets:
        config, table = load_set(s)
        held_out = config.get("held_out", [])
        networks = config["labelers"] + held_out
        task = get_task(config["task"])
        # a network's own confidence is a baseline wherever the folder holds it (classifiers' top-5 probabilities;
        # score-output segmenters' mean pixel confidence): the same ``N.p5`` column for every task
        msp_nets = list(spec.msp) if spec.msp is not None else [n for n in networks if f"{n}.p5" in table]
        missing = [n for n in msp_nets if f"{n}.p5" not in table]
        if missing:
            raise InvalidInputError(f"{s.labels} has no outputs of {missing} (networks there: {', '.join(networks)})")
        scores: dict[str, np.ndarray] = {}
        for name, where in {**spec.predictors, **spec.baselines}.items():
            scores[name] = cached_scores(s, table, name, where, out, spec.device, log,
                                         spec.precisions.get(name, "fp32"), loaded[name])
        scores["bits per pixel"] = table["bpp"].to_numpy(dtype=np.float64)
        scores["JPEG quality (file)"] = _jpeg_quality(s, table)
        for n in msp_nets:
            scores[f"MSP {n}" + (" (labeler)" if n in config["labelers"] else "")] = _msp(table, n)
        # the compression-blind controls: the same scores on the pristine photo
        controls = {}
        for name, where in spec.predictors.items():
            controls[name] = control_scores(s, table, name, where, out, spec.device, log,
                                            spec.precisions.get(name, "fp32"), loaded[name])
            scores[f"control: {name} on the pristine photo"] = controls[name]
        for n in msp_nets:
            col = f"{n}.pristine_p5"
            if col in table:
                scores[f"control: MSP {n} on the pristine photo"] = table[col].map(
                    lambda v: float(v[0]) if v is not None and len(v) else np.nan).to_numpy(dtype=np.float64)
        levels = table["distortion"].to_numpy()
        order = list(dict.fromkeys(config["distortions"]))
        order = [d for d in order if d in set(levels)]
        trans = transition_levels(table, spec.min_share)
        W = photo_bootstrap(table["source"].to_numpy(), spec.n_boot, spec.seed)
        collections = photo_collections(table, config)
        y = table["label"].to_numpy(dtype=np.float64)

        def summarise(tab: dict) -> dict:
            return {name: {k: v.as_dict() for k, v in per.items()} for name, per in tab.items()}

        label_auroc = auroc_table(scores, y, levels, W, order)
        trans_auroc = auroc_table(scores, y, levels, W, trans) if trans else {}
        decisions = {n: (scores[n] >= THRESHOLD).astype(np.float64) for n in spec.predictors}
        for n in spec.predictors:
            decisions[n][~np.isfinite(scores[n])] = np.nan
        bal = balanced_accuracy_table(decisions, y, levels, W, order)
        unseen = {}
        pristine = {net: task.pristine_success(table, net) for net in held_out}  # None: the task has no such notion
        for net in held_out:
            c = task.success(table, net)
            unseen[net] = {"auroc": summarise(auroc_table(scores, c, levels, W, order)),
                           "auroc_transition": summarise(auroc_table(scores, c, levels, W, trans)) if trans else {},
                           "by_collection": {}, "matched": {}}
            p0 = pristine[net]
            if p0 is not None:  # the decision lost BY compression: only images whose pristine photo it gets right
                lost = np.where(p0 == 1, c, np.nan)
                unseen[net]["given_pristine_success"] = {
                    "images": int(np.isfinite(lost).sum()),
                    "auroc": summarise(auroc_table(scores, lost, levels, W, trans or order))}
            if len(set(collections)) > 1:  # the same AUROCs per photo collection (e.g. val vs train photos)
                for name in sorted(set(collections)):
                    m = collections == name
                    unseen[net]["by_collection"][name] = {
                        "photos": int(table["source"][m].nunique()),
                        "auroc": summarise(auroc_table({k: v[m] for k, v in scores.items()}, c[m], levels[m],
                                                       W[:, m], trans or order))}
            for ref in spec.predictors:
                contenders = {k: v for k, v in scores.items() if k == ref or k not in spec.predictors}
                mr = matched_rejection(contenders, ref, c, levels, W, THRESHOLD, trans or order)
                unseen[net]["matched"][ref] = {
                    "levels": trans or order, "n_reject": mr["n_reject"], "n": mr["n"],
                    "kept_share": mr["kept_share"],
                    "no_filter": {k: v.as_dict() for k, v in mr["no_filter"].items()},
                    "top1": {k: {lv: e.as_dict() for lv, e in per.items()} for k, per in mr["top1"].items()},
                    "gain": {b: {lv: e.as_dict() for lv, e in per.items()} for b, per in mr["gain"][ref].items()}}
        diffs = {p: {b: _diff(scores, y, levels, W, p, b, trans) for b in scores if b not in spec.predictors}
                 for p in spec.predictors} if trans else {}
        n_photos = int(table["source"].nunique())
        warnings = ([f"{s.name}: only {n_photos} test photos (fewer than {MIN_TEST_PHOTOS}): the intervals span most "
                     "of [0, 1]; label more photos"] if n_photos < MIN_TEST_PHOTOS else [])
        warnings += [f"{s.name}, {d}: only {min(u, nu)} {'useful' if u < nu else 'non-useful'} images (fewer than "
                     f"{MIN_TEST_PER_CLASS}): its AUROC rests on too few" for d in (trans or order)
                     for u, nu in [(int((y[levels == d] == 1).sum()), int((y[levels == d] == 0).sum()))]
                     if min(u, nu) < MIN_TEST_PER_CLASS]
        for w in warnings:
            log(f"WARNING: {w}")
        results.setdefault("warnings", []).extend(warnings)
        results["sets"][s.name] = {
            "task": task.name, "success": task.success_name, "labels": str(s.labels),
            "test_sources": str(s.test_sources) if s.test_sources else None,
            "photos": n_photos, "images": int(len(table)),
            "labelled": {"useful": int((y == 1).sum()), "non_useful": int((y == 0).sum())},
            "labelers": config["labelers"], "held_out": held_out, "levels": order, "transition": trans,
            "pristine_false_rejects": {name: pristine_false_rejects(c, table, task, held_out, successes=pristine)
                                       for name, c in controls.items()}
            if held_out and all(p is not None for p in pristine.values()) else {},
            "label_auroc": summarise(label_auroc), "label_auroc_transition": summarise(trans_auroc),
            "label_auroc_diff": diffs, "balanced_accuracy": summarise(bal), "unseen": unseen,
            "labelled_per_level": {d: {"useful": int((y[levels == d] == 1).sum()),
                                       "non_useful": int((y[levels == d] == 0).sum())} for d in order},
        }
    atomic.write_json(out / "results.json", atomic.json_safe(results))
    return results
