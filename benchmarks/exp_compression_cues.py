"""An experiment (nothing shipped uses it): do compression cues, or a within-level target, help the default's head?

    python benchmarks/exp_compression_cues.py runs/cls-jpeg15 runs/cls-val600 \
        --model src/imutility/resources/predictors/default-classification --seeds 3

Issue 22 suggested pairing the distorted image's features with cues the file carries. This trains the default's
head (the card's recipe: its fit photos, i.e. neither its test nor its validation photos, the nine paper-jpeg9
levels, the ``retained_mean`` target, 256 hidden units, dropout 0.5, AdamW, one-cycle, 15 epochs) on the cached
frozen features of TRAIN, once as shipped and once with two per-image cues appended to every tile's features: the
JPEG quality / 100 (on these ladders the level is the file's quality, what ``imutility.rules.jpeg_quality`` reads
from its tables) and log2 of the bits per pixel; a third head learns only the differences within a level (the
target minus its level's mean, MSE). Each head is scored on the validation photos of TRAIN and on every photo of
TEST; the figure is the within-level AUROC (mean over the transition levels named below) for each held-out
network's top-1 correctness, averaged over ``--seeds`` trainings. The features come from the cache that
``imutility train`` keeps (``LABELS/features/``): run one ``imutility train`` on TEST first to make its cache.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from sklearn.metrics import roc_auc_score

from imutility.distort import resolve_levels
from imutility.predictor.training.content import fit_head
from imutility.tasks import get_task


def load(labels: Path):
    table = pd.read_parquet(labels / "labels.parquet")
    caches = sorted((labels / "features").glob("efficientnet_lite1-*.npz"))
    if not caches:
        raise SystemExit(f"{labels}/features holds no efficientnet_lite1 features: run imutility train on it first")
    for cache in caches:  # the cache of THIS table's image list (one row per tile, owner = table row)
        with np.load(cache) as z:
            if int(z["owner"].max()) == len(table) - 1:
                return table, z["features"].astype(np.float32), z["owner"].astype(np.int64)
    raise SystemExit(f"no feature cache in {labels}/features matches its table")


def cues(table) -> np.ndarray:
    return np.stack([table["level"].to_numpy(np.float32) / 100,
                     np.log2(table["bpp"].to_numpy(np.float32).clip(1e-3))], 1)


def tiles_by_image(owner: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, list[list[int]]]:
    """The tiles of ``rows`` (indices into the features) and, per row, its tiles' positions among them."""
    tiles = np.flatnonzero(np.isin(owner, rows))
    index = {r: i for i, r in enumerate(rows)}
    of: list[list[int]] = [[] for _ in rows]
    for k, r in enumerate(owner[tiles]):
        of[index[r]].append(k)
    return tiles, of


def scores(feats, owner, fit, y, evaluate: list[tuple[np.ndarray, np.ndarray, np.ndarray]], seed: int,
           binary: bool = True):
    """Train the card's head (:func:`imutility.predictor.training.content.fit_head`, the recipe's settings) on the
    rows ``fit``; return its logits on each (features, owner, rows) of ``evaluate``."""
    tiles, of = tiles_by_image(owner, fit)
    head, pool, _, _ = fit_head(feats[tiles], of, np.arange(len(fit)), y[fit], hidden=256, dropout=0.5, lr=2e-3,
                                weight_decay=0.05, epochs=15, batch_size=256, seed=seed,
                                binary=binary)
    out = []
    with torch.no_grad():
        for f, o, rows in evaluate:
            t, of_e = tiles_by_image(o, rows)
            img = torch.from_numpy(np.concatenate([[i] * len(k) for i, k in enumerate(of_e)]).astype(np.int64))
            order = np.concatenate(of_e)
            out.append(pool(head(torch.from_numpy(f[t][order])), img, len(rows)).numpy())
    return out


def within_level(table, rows, s, levels, networks) -> dict:
    task = get_task("classification")
    out = {}
    for net in networks:
        ok = task.success(table.iloc[rows], net)
        lv = table["distortion"].to_numpy()[rows]
        a = [roc_auc_score(ok[(lv == d) & np.isfinite(ok)], s[(lv == d) & np.isfinite(ok)]) for d in levels]
        out[net] = float(np.mean(a))
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("train", type=Path)
    ap.add_argument("test", type=Path)
    ap.add_argument("--model", type=Path, required=True, help="the predictor whose split is reused")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--val-levels", default="jpeg:q=5,jpeg:q=6,jpeg:q=7,jpeg:q=8")
    ap.add_argument("--test-levels", default="jpeg:q=10,jpeg:q=15")
    a = ap.parse_args(argv)
    card = json.loads((a.model / "card.json").read_text())
    tab, feats, owner = load(a.train)
    test_tab, test_feats, test_owner = load(a.test)
    held_out = json.loads((a.train / "config.json").read_text())["held_out"]
    test_nets = json.loads((a.test / "config.json").read_text())["held_out"]
    test_photos = set(json.loads((a.model / "test_sources.json").read_text()))
    val_photos = set(json.loads((a.model / "validation_sources.json").read_text()))
    levels = resolve_levels(card["config"]["train_distortions"])
    src = tab["source"].to_numpy()
    fit = np.flatnonzero(~np.isin(src, list(test_photos | val_photos)) & tab["distortion"].isin(levels).to_numpy()
                         & tab["retained_mean"].notna().to_numpy())
    val = np.flatnonzero(np.isin(src, list(val_photos)))
    test = np.arange(len(test_tab))
    y = tab["retained_mean"].to_numpy(np.float64)
    results = {}
    # the within-level target: each image's retained confidence minus its level's mean over the fit rows (MSE), so
    # that nothing but the differences WITHIN a level is learnt (what within-level AUROC asks for)
    level_mean = pd.Series(y[fit]).groupby(tab["distortion"].to_numpy()[fit]).mean()
    centred = y - tab["distortion"].map(level_mean).to_numpy(np.float64)
    variants = (("as shipped", False, y, True), ("with cues (quality, log2 bpp)", True, y, True),
                ("within-level target", False, centred, False))
    for name, with_cues, target, binary in variants:
        f, tf = feats, test_feats
        if with_cues:
            f = np.concatenate([feats, cues(tab)[owner]], 1)
            tf = np.concatenate([test_feats, cues(test_tab)[test_owner]], 1)
        runs = []
        for seed in range(a.seeds):
            s_val, s_test = scores(f, owner, fit, target, [(f, owner, val), (tf, test_owner, test)], seed, binary)
            runs.append({"validation": within_level(tab, val, s_val, a.val_levels.split(","), held_out),
                         "test": within_level(test_tab, test, s_test, a.test_levels.split(","), test_nets)})
        results[name] = {part: {n: round(float(np.mean([r[part][n] for r in runs])), 3) for n in runs[0][part]}
                         for part in ("validation", "test")}
        print(name, json.dumps(results[name]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
