"""Training the ``finetune`` architecture: a backbone trained end to end on one window per image (the paper's
way), written as ``model.pt`` and its card (:func:`imutility.predictor.card.write_card`)."""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from imutility import atomic
from imutility.errors import InvalidInputError
from imutility.predictor.card import PredictorCard, write_card
from imutility.predictor.geometry import InputSpec
from imutility.predictor.networks.backbones import create_backbone, get_backbone_spec
from imutility.predictor.training.config import InsufficientLabelsError, TrainConfig, autocast_dtype
from imutility.predictor.training.data import UtilityImages
from imutility.predictor.training.split import binary_metrics, regression_metrics, sample_warnings, select_split


def _rows(cfg: TrainConfig):
    import pandas as pd

    table = pd.read_parquet(Path(cfg.labels) / "labels.parquet")
    column = cfg.label_column if cfg.mode == "binary" else cfg.target_column
    if column not in table.columns:
        raise InvalidInputError(f"{column!r} is not a column of {cfg.labels}/labels.parquet")
    table = table[table[column].notna()].reset_index(drop=True)
    if cfg.mode == "binary" and set(table[column].unique()) - {0.0, 1.0}:
        raise InvalidInputError(f"{column!r} is not a 0/1 label column")
    if len(table) < 10:
        raise InsufficientLabelsError(f"only {len(table)} labelled rows in {cfg.labels}: too few to train")
    return table, column


def train_finetune_predictor(cfg: TrainConfig, out: Path, progress: bool) -> PredictorCard:
    """The ``finetune`` architecture: the backbone trained end to end on one window per image."""
    from tqdm.auto import tqdm

    labels_dir = Path(cfg.labels)
    run = json.loads((labels_dir / "config.json").read_text())
    table, column = _rows(cfg)
    train_idx, test_idx, split_note = select_split(cfg, table, np.ones(len(table), dtype=bool))
    if cfg.max_samples is not None:
        train_idx = np.random.default_rng(cfg.seed).permutation(train_idx)[: cfg.max_samples]
    if len(train_idx) == 0 or len(test_idx) == 0:
        raise InsufficientLabelsError(f"{column}: {len(train_idx)} training and {len(test_idx)} test rows")
    if cfg.mode == "binary" and table.loc[train_idx, column].nunique() < 2:
        raise InsufficientLabelsError(f"{column}: the training rows hold one class only")

    torch.manual_seed(cfg.seed)
    pre = get_backbone_spec(cfg.backbone).preprocess()  # the backbone's declared preprocessing: one system
    spec = InputSpec(size=cfg.size, geometry=cfg.geometry, channels=pre.channels, scale=pre.scale,
                     mean=tuple(pre.mean), std=tuple(pre.std))
    n_out = 2 if cfg.mode == "binary" else 1
    model, weights_note = create_backbone(cfg.backbone, n_out, cfg.pretrained)
    device = torch.device(cfg.device)
    model.to(device)
    paths = [str(labels_dir / p) for p in table["path"]]
    y = table[column].to_numpy(dtype=np.float32)
    targets = y.astype(np.int64) if cfg.mode == "binary" else y
    train_ds = UtilityImages([paths[i] for i in train_idx], [targets[i] for i in train_idx], spec, True, cfg.seed)
    test_ds = UtilityImages([paths[i] for i in test_idx], [targets[i] for i in test_idx], spec, False)
    loader = torch.utils.data.DataLoader(train_ds, batch_size=cfg.batch_size, shuffle=True, num_workers=cfg.workers,
                                         generator=torch.Generator().manual_seed(cfg.seed), drop_last=False,
                                         pin_memory=device.type == "cuda", persistent_workers=cfg.workers > 0)
    autocast = autocast_dtype(cfg.precision)

    lr = cfg.lr or (1e-4 if cfg.recipe == "paper" else 1e-3)
    steps = max(1, cfg.epochs * math.ceil(len(train_ds) / cfg.batch_size))
    if cfg.recipe == "paper":
        opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
        sched = None
        weight = None
    else:
        opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=cfg.weight_decay)
        warm = max(1, steps // 20)
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda s: min(1.0, (s + 1) / warm) * 0.5 * (1 + math.cos(math.pi * min(1.0, s / steps))))
        weight = None
        if cfg.mode == "binary":
            counts = np.bincount(targets[train_idx].astype(int), minlength=2).astype(np.float32)
            weight = torch.tensor(counts.sum() / (2 * np.maximum(counts, 1)), device=device)
    loss_fn = torch.nn.CrossEntropyLoss(weight=weight) if cfg.mode == "binary" else torch.nn.MSELoss()

    history = []
    n_seen = 0
    t0 = time.perf_counter()
    for epoch in range(cfg.epochs):
        model.train()
        train_ds.epoch = epoch
        total, seen = 0.0, 0
        for x, t in tqdm(loader, desc=f"epoch {epoch + 1}/{cfg.epochs}", disable=not progress, leave=False):
            x, t = x.to(device, non_blocking=True), t.to(device, non_blocking=True)
            with torch.autocast(device.type, dtype=autocast or torch.float32, enabled=autocast is not None):
                outp = model(x).float()
            loss = loss_fn(outp, t) if cfg.mode == "binary" else loss_fn(outp.squeeze(1), t)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if sched is not None:
                sched.step()
            total += float(loss.detach()) * len(t)
            seen += len(t)
        n_seen += seen
        history.append(round(total / max(seen, 1), 5))
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    train_seconds = time.perf_counter() - t0

    scores = predict_dataset(model, test_ds, cfg.mode, device, cfg.batch_size)
    y_test = y[test_idx]
    if cfg.mode == "binary":
        metrics = binary_metrics(y_test, scores)
        levels = table.loc[test_idx, "distortion"].to_numpy()
        metrics["accuracy_per_level"] = {
            lv: float(((scores[levels == lv] >= 0.5) == (y_test[levels == lv] == 1)).mean())
            for lv in [d for d in run["distortions"] if d in set(levels)]}
    else:
        metrics = regression_metrics(y_test, scores)

    import io

    buf = io.BytesIO()
    torch.save({k: v.detach().cpu() for k, v in model.state_dict().items()}, buf)
    atomic.write_bytes(out / "model.pt", buf.getvalue())

    card = {
        "architecture": "finetune",
        "task": run["task"],
        "labelers": run["labelers"],
        "distortions": run["distortions"],
        "data": {"labels": str(labels_dir), "dataset": run.get("dataset", ""), "rows": int(len(table)),
                 "train_rows": int(len(train_idx)), "test_rows": int(len(test_idx)),
                 "train_sources": int(table.loc[train_idx, "source"].nunique()),
                 "test_sources": int(table.loc[test_idx, "source"].nunique()),
                 "train_label_counts": _counts(y[train_idx]) if cfg.mode == "binary" else None},
        "target": {"mode": cfg.mode, "column": column},
        "backbone": cfg.backbone, "weights_init": weights_note,
        "input": spec.as_dict(),
        "recipe": {"name": cfg.recipe, "optimizer": "SGD(momentum=0.9)" if cfg.recipe == "paper" else "AdamW",
                   "lr": lr, "weight_decay": cfg.weight_decay if cfg.recipe == "adamw" else 0.0,
                   "schedule": None if cfg.recipe == "paper" else "linear warm-up + cosine",
                   "loss": "cross-entropy" + (" (class-weighted)" if weight is not None else "")
                   if cfg.mode == "binary" else "MSE",
                   "epochs": cfg.epochs, "batch_size": cfg.batch_size, "augmentation": "random crop + h-flip"
                   if cfg.geometry == "crop" else "resize + h-flip", "train_loss": history},
        "metrics": metrics,
        "warnings": sample_warnings(int(table.loc[test_idx, "source"].nunique()), metrics),
        "seed": cfg.seed, "split": split_note,
        "train_seconds": round(train_seconds, 1), "device": cfg.device, "precision": cfg.precision,
        "train_images_per_second": round(n_seen / max(train_seconds, 1e-9), 1),
    }
    atomic.write_json(out / "test_sources.json", sorted(set(table.loc[test_idx, "source"])))
    # no calibration and no validation split here: the config records what was done, not the shared default
    return write_card(out, card, asdict(cfg) | {"val_fraction": 0.0})


def _counts(y: np.ndarray) -> dict[str, int]:
    return {"useful": int((y == 1).sum()), "non_useful": int((y == 0).sum())}


@torch.inference_mode()
def predict_dataset(model: torch.nn.Module, ds: UtilityImages, mode: str, device, batch_size: int) -> np.ndarray:
    model.eval()
    out = []
    loader = torch.utils.data.DataLoader(ds, batch_size=batch_size, shuffle=False)
    for x, _ in loader:
        o = model(x.to(device)).float()
        out.append((o.softmax(1)[:, 1] if mode == "binary" else o[:, 0]).cpu().numpy())
    return np.concatenate(out) if out else np.zeros(0)
