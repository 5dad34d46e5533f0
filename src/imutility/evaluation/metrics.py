"""Honest numbers for utility scores: within one distortion level as well as pooled, with bootstrap
intervals over PHOTOS (every distorted version of a photo is resampled together), and filtering gains
at a matched rejection count.

Why within a level: pooled over JPEG qualities, any score that tracks the quality separates the labels
(q = 2 is non-useful, q = 90 useful), so a pooled AUROC says little about content. Inside one level the
compression is fixed and only what the image shows can separate useful from non-useful images.

All functions take plain arrays. ``groups`` names the photo of each row; ``weights`` of shape (B, n)
are bootstrap replicates (:func:`photo_bootstrap`), and every statistic is computed for the full sample
and for each replicate, giving a point estimate and a percentile interval.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Estimate:
    """A statistic with its bootstrap percentile interval (``nan`` where undefined)."""

    value: float
    low: float
    high: float

    def as_dict(self) -> dict:
        return {"value": self.value, "low": self.low, "high": self.high}

    def __format__(self, spec: str) -> str:
        spec = spec or ".3f"
        if not np.isfinite(self.value):
            return "n/a"
        return f"{self.value:{spec}} [{self.low:{spec}}, {self.high:{spec}}]"


def photo_bootstrap(groups: Sequence, n_boot: int = 1000, seed: int = 0) -> np.ndarray:
    """(n_boot + 1, n) row weights: row 0 is the sample itself (all ones), the others resample photos with
    replacement (a row's weight is how often its photo was drawn)."""
    _, idx = np.unique(np.asarray(groups), return_inverse=True)
    n_photos = int(idx.max()) + 1 if len(idx) else 0
    rng = np.random.default_rng(seed)
    counts = rng.multinomial(n_photos, np.full(n_photos, 1.0 / max(n_photos, 1)), size=n_boot) if n_photos else \
        np.zeros((n_boot, 0))
    return np.vstack([np.ones((1, len(idx))), counts[:, idx].astype(np.float64)])


def _estimate(values: np.ndarray, level: float = 0.95) -> Estimate:
    boot = values[1:][np.isfinite(values[1:])]
    if not np.isfinite(values[0]) or len(boot) == 0:
        return Estimate(float(values[0]), float("nan"), float("nan"))
    a = (1 - level) / 2
    return Estimate(float(values[0]), float(np.quantile(boot, a)), float(np.quantile(boot, 1 - a)))


def weighted_auroc(scores: np.ndarray, y: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """AUROC of ``scores`` for the positives ``y == 1``, for each row of ``weights`` (ties count a half).

    Equal to sklearn's ``roc_auc_score(y, scores, sample_weight=w)``; NaN where a class has no weight.
    """
    s = np.asarray(scores, dtype=np.float64)
    y = np.asarray(y).astype(bool)
    w = np.atleast_2d(np.asarray(weights, dtype=np.float64))
    if len(s) == 0:
        return np.full(w.shape[0], np.nan)
    order = np.argsort(s, kind="mergesort")
    s, y, w = s[order], y[order], w[:, order]
    starts = np.flatnonzero(np.r_[True, s[1:] != s[:-1]])
    pos = np.add.reduceat(w * y, starts, axis=1)
    neg = np.add.reduceat(w * ~y, starts, axis=1)
    below = np.cumsum(neg, axis=1) - neg
    num = (pos * (below + 0.5 * neg)).sum(1)
    den = pos.sum(1) * neg.sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, num / den, np.nan)


def weighted_balanced_accuracy(pred: np.ndarray, y: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Mean of the true-positive and true-negative rates of a 0/1 decision, per row of ``weights``."""
    pred = np.asarray(pred).astype(bool)
    y = np.asarray(y).astype(bool)
    w = np.atleast_2d(np.asarray(weights, dtype=np.float64))
    with np.errstate(invalid="ignore", divide="ignore"):
        tpr = (w * (pred & y)).sum(1) / (w * y).sum(1)
        tnr = (w * (~pred & ~y)).sum(1) / (w * ~y).sum(1)
    return (tpr + tnr) / 2


def weighted_mean(values: np.ndarray, mask: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Mean of ``values`` over the rows where ``mask`` holds, per row of ``weights``."""
    v = np.asarray(values, dtype=np.float64)
    m = np.asarray(mask).astype(bool)
    w = np.atleast_2d(np.asarray(weights, dtype=np.float64)) * m
    with np.errstate(invalid="ignore", divide="ignore"):
        return (w * np.where(m, v, 0.0)).sum(1) / w.sum(1)


def reject_lowest(scores: np.ndarray, n_reject: int, seed: int | None = None) -> np.ndarray:
    """Keep-mask that rejects the ``n_reject`` lowest scores. Ties are broken at random with ``seed`` (a seeded
    permutation), by position without one: tables are ordered (by class, by photo), so position would reject
    whole classes at a tie, and a constant score is then no random baseline."""
    keep = np.ones(len(scores), dtype=bool)
    if n_reject > 0:
        s = np.asarray(scores, dtype=np.float64)
        if seed is None:
            order = np.argsort(s, kind="stable")
        else:
            order = np.lexsort((np.random.default_rng((_TIE_SALT, seed)).random(len(s)), s))
        keep[order[:n_reject]] = False
    return keep


#: mixed into the tie-breaking seed, so draw d is not the stream of a caller's default_rng(d)
_TIE_SALT = 0x7E5B

#: seeded tie-breaking draws a matched rejection is averaged over
TIE_DRAWS = 8


def best_threshold(scores: np.ndarray, y: np.ndarray) -> float:
    """The threshold (score >= t means useful) with the best balanced accuracy on these rows; fit it on
    TRAINING rows so that a rule's balanced accuracy on test rows is not flattered."""
    s = np.asarray(scores, dtype=np.float64)
    y = np.asarray(y).astype(bool)
    ok = np.isfinite(s)
    s, y = s[ok], y[ok]
    if len(s) == 0 or y.all() or not y.any():
        return float("nan")
    cand = np.unique(s)
    tpr = np.array([(s[y] >= t).mean() for t in cand])
    tnr = np.array([(s[~y] < t).mean() for t in cand])
    return float(cand[int(np.argmax(tpr + tnr))])


def by_level(levels: np.ndarray, fn: Callable[[np.ndarray], np.ndarray], weights: np.ndarray,
             order: Sequence | None = None) -> dict:
    """``{level: Estimate}`` of ``fn(row_mask)`` (which returns one value per weight row) within each level,
    plus ``"mean"``: the mean over the levels where the statistic is defined, bootstrapped jointly."""
    levels = np.asarray(levels)
    keys = list(order) if order is not None else list(dict.fromkeys(levels.tolist()))
    per = {k: fn(levels == k) for k in keys}
    out = {k: _estimate(v) for k, v in per.items()}
    defined = [v for v in per.values() if np.isfinite(v[0])]
    out["mean"] = _estimate(np.mean(defined, axis=0)) if defined else Estimate(np.nan, np.nan, np.nan)
    return out


def _level_table(values: dict[str, np.ndarray], y: np.ndarray, levels: np.ndarray, weights: np.ndarray,
                 order: Sequence | None, metric: Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]
                 ) -> dict[str, dict]:
    """Per entry of ``values``: ``metric`` within each level (and their mean) and pooled, with intervals;
    rows with a NaN label or value are left out."""
    y = np.asarray(y, dtype=np.float64)
    out = {}
    for name, v in values.items():
        v = np.asarray(v, dtype=np.float64)
        ok = np.isfinite(y) & np.isfinite(v)

        def fn(mask, v=v, ok=ok):
            m = mask & ok
            return metric(v[m], y[m] == 1, weights[:, m])

        res = by_level(levels, fn, weights, order)
        res["pooled"] = _estimate(fn(np.ones(len(y), dtype=bool)))
        out[name] = res
    return out


def auroc_table(scores: dict[str, np.ndarray], y: np.ndarray, levels: np.ndarray, weights: np.ndarray,
                order: Sequence | None = None) -> dict[str, dict]:
    """Per score: within-level AUROC (each level and their mean) and the pooled AUROC, with intervals."""
    return _level_table(scores, y, levels, weights, order, weighted_auroc)


def balanced_accuracy_table(decisions: dict[str, np.ndarray], y: np.ndarray, levels: np.ndarray,
                            weights: np.ndarray, order: Sequence | None = None) -> dict[str, dict]:
    """Like :func:`auroc_table` for 0/1 decisions (a predictor at its threshold, a rule at a fitted one)."""
    return _level_table(decisions, y, levels, weights, order,
                        lambda d, yy, w: weighted_balanced_accuracy(d == 1, yy, w))


def matched_rejection(scores: dict[str, np.ndarray], reference: str, correct: np.ndarray, levels: np.ndarray,
                      weights: np.ndarray, threshold: float = 0.5, order: Sequence | None = None,
                      tie_draws: int = TIE_DRAWS) -> dict:
    """Top-1 of a network over the images kept when each score rejects, WITHIN each level, as many images
    as ``reference`` (a predictor) rejects at ``threshold`` there; and each score's gain over the others.
    ``random`` (a constant score) is added: with ties broken at random (``tie_draws`` seeded draws, averaged, for
    every score) it is random rejection, the baseline every other score must beat. ``kept_share``: the share of
    the images kept, to read beside every gain.

    Returns ``{"n_reject": {level: k}, "top1": {score: {level|"pooled": Estimate}},
    "gain": {score: {other: {level|"pooled": Estimate}}}}``, where pooled pools the kept images of all
    levels. ``correct`` is 0/1 (NaN rows, a failed network output, are left out).
    """
    correct = np.asarray(correct, dtype=np.float64)
    levels = np.asarray(levels)
    valid = np.isfinite(correct)
    keys = list(order) if order is not None else list(dict.fromkeys(levels.tolist()))
    ref = np.asarray(scores[reference], dtype=np.float64)
    scores = {**scores, "random": np.zeros(len(correct))}
    n_reject = {k: int((ref[np.flatnonzero((levels == k) & valid)] < threshold).sum()) for k in keys}
    curves: dict[str, dict] = {}
    draws = max(1, int(tie_draws))
    for d in range(draws):
        keeps = {name: np.ones(len(correct), dtype=bool) for name in scores}
        for k in keys:
            at = np.flatnonzero((levels == k) & valid)
            for name, s in scores.items():
                keeps[name][at] = reject_lowest(np.asarray(s, dtype=np.float64)[at], n_reject[k], seed=d)
        for name, keep in keeps.items():
            per = {k: weighted_mean(correct, keep & valid & (levels == k), weights) for k in keys}
            per["pooled"] = weighted_mean(correct, keep & valid & np.isin(levels, keys), weights)
            acc = curves.setdefault(name, {k: 0.0 for k in per})
            for k, v in per.items():
                acc[k] = acc[k] + np.asarray(v) / draws
    top1 = {name: {k: _estimate(v) for k, v in per.items()} for name, per in curves.items()}
    gain = {a: {b: {k: _estimate(curves[a][k] - curves[b][k]) for k in curves[a]} for b in scores if b != a}
            for a in scores}
    none = {k: _estimate(weighted_mean(correct, valid & (levels == k), weights)) for k in keys}
    none["pooled"] = _estimate(weighted_mean(correct, valid & np.isin(levels, keys), weights))
    n_at = {k: int(((levels == k) & valid).sum()) for k in keys}
    kept_share = {k: (n_at[k] - n_reject[k]) / n_at[k] if n_at[k] else float("nan") for k in keys}
    total = sum(n_at.values())
    kept_share["pooled"] = (total - sum(n_reject.values())) / total if total else float("nan")
    return {"n_reject": n_reject, "n": n_at, "kept_share": kept_share, "no_filter": none, "top1": top1,
            "gain": gain}
