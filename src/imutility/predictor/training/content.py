"""Training the content-aware predictor (:mod:`imutility.predictor.networks.content`): frozen features, a small head.

The backbone never trains, so its features are computed ONCE per image (tiles included) and the head
trains on them in seconds. The head can learn the binary labels directly, or distil a dense target that
every image has (``soft_target``, e.g. ``confidence_mean``: the labelers' mean confidence in the true
class on the distorted image, defined for every image where the unanimous label is defined for ~20 %);
a distilled head is then calibrated on the binary labels (Platt scaling folded into the tile pooling),
so that its output is P(useful) again.
"""

from __future__ import annotations

import io
import json
import math
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from imutility import atomic
from imutility.errors import InvalidInputError
from imutility.predictor.card import PredictorCard, write_card
from imutility.predictor.geometry import TileSpec
from imutility.zoo.preprocess import Values


class TileBatcher:
    """Decode, tile and normalise images (in a thread pool: Pillow's codecs release the GIL) and run a per-tile
    function (normalised numpy in, numpy out) over them in batches; returns per-tile outputs and the image each tile
    belongs to."""

    def __init__(self, tiles: TileSpec, values: Values, run, batch_size: int = 64, threads: int = 2):
        self.tiles, self.values, self.run, self.batch_size, self.threads = tiles, values, run, batch_size, threads

    def __call__(self, images: Sequence, load=None, progress=None) -> tuple[np.ndarray, np.ndarray, dict[int, str]]:
        """(outputs (T, ...), owner (T,), errors {image index: reason}); ``load`` maps an item to a PIL image."""
        from concurrent.futures import ThreadPoolExecutor

        from imutility.images import ImageLoadError

        def prep(item):
            try:
                img = load(item) if load is not None else item
                return self.tiles.tiles(img), None
            except ImageLoadError as e:
                return None, e.reason

        outs, owner, errors = [], [], {}
        buf, own = [], []

        def flush():
            outs.append(np.asarray(self.run(self.values.normalise(np.stack(buf)))))
            owner.extend(own)
            buf.clear()
            own.clear()

        with ThreadPoolExecutor(max(1, self.threads)) as pool:
            for i, (tiles, err) in enumerate(pool.map(prep, images)):
                if err is not None:
                    errors[i] = err
                else:
                    buf.extend(tiles)
                    own.extend([i] * len(tiles))
                if len(buf) >= self.batch_size:
                    flush()
                if progress is not None:
                    progress(1)
        if buf:
            flush()
        out = np.concatenate(outs) if outs else np.zeros((0,), dtype=np.float32)
        return out, np.asarray(owner, dtype=np.int64), errors


def feature_runner(backbone: str, models, device: str, precision: str):
    """A function normalised tiles (numpy) -> frozen features (numpy): on the CPU in fp32, ONNX Runtime over the
    backbone's features graph (the same file the predictor runs: :func:`imutility.predictor.artefacts.graphs.
    features_graph`); elsewhere PyTorch on ``device``, under autocast for a reduced ``precision``."""
    from imutility.predictor.training.config import autocast_dtype

    if device == "cpu" and precision == "fp32":
        from imutility.predictor.artefacts.graphs import features_graph
        from imutility.zoo.backends.ort import ort_session

        session = ort_session(features_graph(backbone, models))
        return lambda x: session.run(None, {"input": x})[0]
    from imutility.predictor.networks.content import build_recognition

    feats, _, _ = build_recognition(backbone, True, models=models, device=device)
    autocast, kind = autocast_dtype(precision), torch.device(device).type

    @torch.inference_mode()
    def run(x: np.ndarray) -> np.ndarray:
        with torch.autocast(kind, dtype=autocast or torch.float32, enabled=autocast is not None):
            return feats(torch.from_numpy(x).to(device, non_blocking=True)).float().cpu().numpy()

    return run


def _features(cfg, paths: list[str], progress: bool):
    """Per-tile frozen features of every image, and the image of each tile (one pass).

    The pooled + confidence features are computed (the confidence ones are their last columns) and kept in
    ``<labels>/features/<key>.npz``, keyed by the backbone's weights, the tiling and the image list, so that
    every head trained on the same images and backbone reuses them.
    """
    import hashlib

    from tqdm.auto import tqdm

    from imutility import zoo
    from imutility.images import load_image
    from imutility.predictor.networks.content import CONFIDENCE_FEATURES, weights_note

    pre, note = zoo.get_spec(cfg.backbone).preprocess, weights_note(cfg.backbone)
    spec = TileSpec(size=pre.size[0], max_tiles=cfg.max_tiles)
    key = f"features|{cfg.backbone}|{zoo.get_spec(cfg.backbone).weights.sha256}|pooled|{asdict(spec)}"
    if cfg.precision != "fp32":  # reduced-precision features are other features (fp32 keeps its cache names)
        key += f"|{cfg.precision}"
    digest = hashlib.sha256((key + "\n" + "\n".join(paths)).encode()).hexdigest()[:24]
    cache = Path(cfg.labels) / "features" / f"{cfg.backbone}-{digest}.npz"
    rate = None
    if cache.is_file():
        with np.load(cache) as z:
            out, owner = z["features"], z["owner"]
            errors = dict(zip(z["error_index"].tolist(), z["error_reason"].tolist(), strict=True))
    else:
        run = feature_runner(cfg.backbone, cfg.models, cfg.device, cfg.precision)
        bar = tqdm(total=len(paths), desc="features", unit="img", disable=not progress, dynamic_ncols=True)
        t0 = time.perf_counter()
        out, owner, errors = TileBatcher(spec, pre.values, run, batch_size=64, threads=max(1, cfg.workers or 2))(
            paths, load=load_image, progress=bar.update)
        rate = round(len(paths) / max(time.perf_counter() - t0, 1e-9), 1)
        bar.close()
        buf = io.BytesIO()
        np.savez(buf, features=out.astype(np.float32), owner=owner, error_index=np.asarray(list(errors), dtype=int),
                 error_reason=np.asarray(list(errors.values()), dtype=str))
        atomic.write_bytes(cache, buf.getvalue())
    if cfg.features == "confidence":
        out = out[:, -len(CONFIDENCE_FEATURES):]
    return np.ascontiguousarray(out, dtype=np.float32), owner, errors, spec, pre, note, rate


def _within_level_error(out: torch.Tensor, target: torch.Tensor, level: torch.Tensor) -> torch.Tensor:
    """Mean squared difference between the outputs' and the targets' deviations from their level's batch mean."""
    n = int(level.max()) + 1
    count = torch.zeros(n).index_add_(0, level, torch.ones_like(out))
    mean_out = torch.zeros(n).index_add_(0, level, out) / count.clamp(min=1)
    mean_target = torch.zeros(n).index_add_(0, level, target) / count.clamp(min=1)
    return (((out - mean_out[level]) - (target - mean_target[level])) ** 2).mean()


def fit_head(feats: np.ndarray, tiles_of: list[list[int]], train_pos: np.ndarray, y: np.ndarray, *, hidden: int,
             dropout: float, lr: float, weight_decay: float, epochs: int, batch_size: int, seed: int,
             binary: bool = True, levels: np.ndarray | None = None, within_level_weight: float = 0.0):
    """Train a head and its tile pooling on frozen per-tile features: image ``i``'s tiles are the rows
    ``tiles_of[i]`` of ``feats``, its target ``y[i]``; the images ``train_pos`` train (AdamW, one-cycle, batches of
    images; binary cross-entropy on [0, 1] targets, else MSE). Returns (head, pool, image_logits, per-epoch loss),
    ``image_logits(images, training)`` giving pooled logits of any images.

    ``within_level_weight`` > 0 adds a term for what separates images of ONE level (``levels[i]``: image ``i``'s
    level): per level in the batch, the squared error between the outputs' and the targets' deviations from their
    level means (outputs as probabilities in binary mode), times the weight."""
    from imutility.predictor.networks.content import TilePool, UtilityHead

    torch.manual_seed(seed)
    head, pool = UtilityHead(feats.shape[1], hidden, dropout), TilePool()
    head.set_standardisation(torch.from_numpy(feats[np.concatenate([tiles_of[i] for i in train_pos])]))
    F = torch.from_numpy(feats)
    target = torch.tensor(y, dtype=torch.float32)
    opt = torch.optim.AdamW(list(head.parameters()) + list(pool.parameters()), lr=lr, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, lr, total_steps=max(1, epochs * math.ceil(
        len(train_pos) / batch_size)))
    loss_fn = torch.nn.functional.binary_cross_entropy_with_logits if binary else torch.nn.functional.mse_loss
    rng = np.random.default_rng(seed)
    if within_level_weight and levels is None:
        raise ValueError("within_level_weight needs the level of every image")
    level_ids = torch.from_numpy(np.unique(levels, return_inverse=True)[1].astype(np.int64)) if within_level_weight \
        else None

    def image_logits(sel: np.ndarray, training: bool) -> torch.Tensor:
        ks = np.concatenate([tiles_of[i] for i in sel])
        img = np.concatenate([[j] * len(tiles_of[i]) for j, i in enumerate(sel)])
        head.train(training)
        return pool(head(F[ks]), torch.from_numpy(img), len(sel))

    history = []
    for _ in range(epochs):
        perm = rng.permutation(train_pos)
        total = 0.0
        for b in range(0, len(perm), batch_size):
            sel = perm[b:b + batch_size]
            z = image_logits(sel, True)
            loss = loss_fn(z, target[sel])
            if within_level_weight:
                loss = loss + within_level_weight * _within_level_error(
                    torch.sigmoid(z) if binary else z, target[sel], level_ids[sel])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += float(loss.detach()) * len(sel)
        history.append(round(total / max(len(train_pos), 1), 5))
    head.eval()
    return head, pool, image_logits, history


def train_content_predictor(cfg, out, progress: bool = True) -> PredictorCard:
    """See the module doc; writes ``model.pt`` (head + pooling, the backbone is the zoo's) and ``card.json``."""
    import pandas as pd

    from imutility.predictor.geometry import TilePooling
    from imutility.predictor.training.config import InsufficientLabelsError
    from imutility.predictor.training.split import (
        binary_metrics,
        regression_metrics,
        sample_warnings,
        select_split,
        split_validation,
    )

    out = Path(out)
    labels_dir = Path(cfg.labels)
    run = json.loads((labels_dir / "config.json").read_text())
    table = pd.read_parquet(labels_dir / "labels.parquet")
    target_col = (cfg.soft_target or cfg.label_column) if cfg.mode == "binary" else cfg.target_column
    for c in {target_col, cfg.label_column} if cfg.mode == "binary" else {target_col}:
        if c not in table.columns:
            raise InvalidInputError(f"{c!r} is not a column of {labels_dir}/labels.parquet")
    y_all = table[target_col].to_numpy(dtype=np.float64)
    if cfg.mode == "binary" and not np.all((y_all[np.isfinite(y_all)] >= 0) & (y_all[np.isfinite(y_all)] <= 1)):
        raise InvalidInputError(f"{target_col!r} must hold values in [0, 1] to train a binary predictor on it")
    train_idx, test_idx, split_note = select_split(cfg, table, np.isfinite(y_all))
    train_idx, val_idx = split_validation(table, train_idx, cfg.val_fraction, cfg.seed)
    if len(val_idx):
        split_note += (f"; {cfg.val_fraction:.0%} of the training photos held out whole as validation "
                       f"({table['source'].iloc[val_idx].nunique()} photos: calibration and the validation figures)")
    if cfg.max_samples is not None:
        train_idx = np.random.default_rng(cfg.seed).permutation(train_idx)[: cfg.max_samples]
    if len(train_idx) < 10 or len(test_idx) == 0:
        raise InsufficientLabelsError(f"{target_col}: {len(train_idx)} training and {len(test_idx)} test rows")
    labels = table[cfg.label_column].to_numpy(dtype=np.float64) if cfg.mode == "binary" else None
    if cfg.mode == "binary" and len(set(labels[train_idx][np.isfinite(labels[train_idx])])) < 2:
        raise InsufficientLabelsError(f"{cfg.label_column}: the training rows hold one class only")

    rows = np.concatenate([train_idx, val_idx, test_idx])
    t0 = time.perf_counter()
    # features of EVERY image of the table (one cache per labels folder and backbone, shared by all heads)
    all_feats, all_owner, all_errors, spec, pre, note, fresh_rate = _features(
        cfg, [str(labels_dir / p) for p in table["path"]], progress)
    feature_seconds = time.perf_counter() - t0
    errors = {i: all_errors[r] for i, r in enumerate(rows) if r in all_errors}
    ok = np.array([i not in errors for i in range(len(rows))])
    n_train, n_val = len(train_idx), len(val_idx)
    by_row: dict[int, list[int]] = {}
    for k, r in enumerate(all_owner):
        by_row.setdefault(int(r), []).append(k)
    pick = [by_row.get(int(r), []) for r in rows]
    feats = all_feats[np.concatenate(pick).astype(int)] if rows.size else all_feats[:0]
    owner = np.concatenate([[i] * len(p) for i, p in enumerate(pick)]).astype(np.int64)
    tiles_of = [[] for _ in range(len(rows))]
    for k, i in enumerate(owner):
        tiles_of[i].append(k)

    train_pos = np.flatnonzero(ok[:n_train])
    val_pos = np.flatnonzero(ok[n_train:n_train + n_val]) + n_train
    t1 = time.perf_counter()
    head, pool, image_logits, history = fit_head(
        feats, tiles_of, train_pos, y_all[rows], hidden=cfg.hidden, dropout=cfg.dropout, lr=cfg.lr or 2e-3,
        weight_decay=cfg.weight_decay, epochs=cfg.epochs, batch_size=cfg.batch_size, seed=cfg.seed,
        binary=cfg.mode == "binary", levels=table["distortion"].to_numpy()[rows],
        within_level_weight=cfg.within_level_weight)

    calibration = None
    if cfg.mode == "binary" and target_col != cfg.label_column:  # Platt scaling on the binary labels
        from sklearn.linear_model import LogisticRegression

        lab = labels[rows]
        cal, photos = val_pos[np.isfinite(lab[val_pos])], "validation photos (held out of the fit)"
        if len(set(lab[cal])) < 2:  # no validation split, or one label class in it: the fit's own rows, said so
            photos = ("training rows (no validation split)" if n_val == 0 else
                      f"training rows (the {len(cal)} labelled validation rows hold one class)")
            cal = train_pos[np.isfinite(lab[train_pos])]
        with torch.no_grad():
            z = image_logits(cal, False).numpy()[:, None]
        lr = LogisticRegression(C=1e6).fit(z, lab[cal].astype(int))
        pool.calibrate(float(lr.coef_[0, 0]), float(lr.intercept_[0]))
        calibration = {"on": cfg.label_column, "rows": int(len(cal)), "photos": photos,
                       "scale": float(lr.coef_[0, 0]), "shift": float(lr.intercept_[0])}
    train_seconds = time.perf_counter() - t1

    test_pos = np.flatnonzero(ok[n_train + n_val:]) + n_train + n_val
    pooling = TilePooling(float(pool.weights[0].detach()), float(pool.weights[1].detach()),
                          float(pool.bias.detach()))
    with torch.no_grad():
        z_all = pooling(head(torch.from_numpy(feats)).numpy(), owner, len(rows))

    def figures(pos: np.ndarray) -> dict:
        z = z_all[pos]
        scores = 1 / (1 + np.exp(-z)) if cfg.mode == "binary" else z
        at = rows[pos]
        if cfg.mode != "binary":
            return regression_metrics(y_all[at], scores)
        lab = labels[at]
        have = np.isfinite(lab)
        if not have.any():
            return {"n": 0}
        m = binary_metrics(lab[have], scores[have])
        levels = table["distortion"].to_numpy()[at][have]
        m["accuracy_per_level"] = {
            lv: float(((scores[have][levels == lv] >= 0.5) == (lab[have][levels == lv] == 1)).mean())
            for lv in [d for d in run["distortions"] if d in set(levels)]}
        if target_col != cfg.label_column:
            m["distilled"] = regression_metrics(y_all[at], scores)
        return m

    test_rows = rows[test_pos]
    metrics = figures(test_pos)
    validation = None
    if len(val_pos):
        validation = {"fraction": cfg.val_fraction, "seed": cfg.seed + 1,
                      "photos": int(table["source"].iloc[rows[val_pos]].nunique()), "rows": int(len(val_pos)),
                      "procedure": "whole training photos held out before the fit (GroupShuffleSplit, seed + 1); "
                                   "calibration and every design choice use these (validation_sources.json), the "
                                   "test photos judge once",
                      "metrics": figures(val_pos) if len(val_pos) > 1 else None}

    buf = io.BytesIO()
    state = {f"head.{k}": v for k, v in head.state_dict().items()} | {f"pool.{k}": v.detach()
                                                                      for k, v in pool.state_dict().items()}
    torch.save(state, buf)
    atomic.write_bytes(out / "model.pt", buf.getvalue())
    from imutility import zoo

    card = {
        "architecture": "content",
        "task": run["task"],
        "labelers": run["labelers"],
        "held_out": run.get("held_out", []),
        "reference": run.get("reference", "ground-truth"),
        "distortions": run["distortions"],
        "data": {"labels": str(labels_dir), "dataset": run.get("dataset", ""), "rows": int(len(table)),
                 "train_rows": int(len(train_pos)), "validation_rows": int(len(val_pos)),
                 "test_rows": int(len(test_pos)),
                 "train_sources": int(table["source"].iloc[rows[train_pos]].nunique()),
                 "test_sources": int(table["source"].iloc[test_rows].nunique()),
                 "unreadable": len(errors)},
        "target": {"mode": cfg.mode, "column": target_col,
                   **({"labels": cfg.label_column, "calibration": calibration} if cfg.mode == "binary" else {})},
        "backbone": cfg.backbone, "weights_init": note,
        "backbone_sha256": zoo.get_spec(cfg.backbone).weights.sha256,
        "features": cfg.features,
        "input": {"tiles": asdict(spec), "channels": pre.channels, "scale": pre.scale, "mean": list(pre.mean),
                  "std": list(pre.std), "resize": "shorter side to tiles.size (bilinear), then tiles"},
        "head": {"hidden": cfg.hidden, "dropout": cfg.dropout, "n_features": int(feats.shape[1])},
        "pool": {"mean_weight": pooling.mean_weight, "min_weight": pooling.min_weight, "bias": pooling.bias},
        "recipe": {"name": "frozen backbone + head", "optimizer": "AdamW", "lr": cfg.lr or 2e-3,
                   "weight_decay": cfg.weight_decay, "schedule": "one-cycle",
                   "loss": ("binary cross-entropy (soft targets)" if cfg.mode == "binary" else "MSE") + (
                       f" + {cfg.within_level_weight:g} x within-level deviation error" if cfg.within_level_weight
                       else ""),
                   "epochs": cfg.epochs, "batch_size": cfg.batch_size, "train_loss": history},
        "metrics": metrics,
        "warnings": sample_warnings(int(table["source"].iloc[test_rows].nunique()), metrics) + (
            [f"calibrated on its {calibration['photos']}: the 0.5 threshold is fitted on rows it trained on"]
            if calibration and n_val and not calibration["photos"].startswith("validation") else []),
        "validation": validation,
        "seed": cfg.seed, "split": split_note,
        "feature_seconds": round(feature_seconds, 1), "train_seconds": round(train_seconds, 1),
        "feature_images_per_second": fresh_rate,  # None when the features came from the cache
        "device": cfg.device, "precision": cfg.precision,
    }
    atomic.write_json(out / "test_sources.json", sorted(set(table["source"].iloc[test_rows])))
    if validation is not None:  # the photos design choices are judged on (`imutility benchmark --test-sources`)
        atomic.write_json(out / "validation_sources.json", sorted(set(table["source"].iloc[rows[val_pos]])))
    return write_card(out, card, asdict(cfg))
