"""Training a :class:`~imutility.rate.plan.QualityModel` from labelled quality ladders (``imutility train-rate``).

Data: labelling folders made on a codec ladder (``imutility label OUT -p jpeg-dense --held-out NETWORK``) hold,
for every photo, the network's outputs on the pristine photo and at every quality. From them:
:func:`ladder_data` gives per photo the features (content of the pristine photo, and the network's pristine
top-5), the just-recognizable quality's ladder class for every retention level, the network's retention at every
quality (what the check sees), and the bits per pixel of every quality.

Procedure (recorded in the card): photos split into training and validation by photo (``validation`` share,
seeded); the ordinal model fitted on the training photos (full-batch Adam, weight decay); on the validation photos
the plan's confidence and the correction's confidence chosen as the pair with the fewest mean bits per pixel among
those whose final encodings keep the network's decision (at the default retention) on at least ``keep_share`` of
the photos; the validation figures of that choice go in the card. No test photo is read here: figures on photos
the model never saw come from :mod:`imutility.evaluation.rate_modes`.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from imutility.errors import InvalidInputError, SettingError
from imutility.images import load_image
from imutility.labelling.jrq import ladders, retention_table
from imutility.labelling.store import read_outputs
from imutility.rate.features import CONTENT_FEATURES, content_features
from imutility.rate.plan import QualityModel, plan_index
from imutility.tasks import PRISTINE, get_task

#: the retention levels a model plans for: 0.01 ~ "keeps its top-1 decision"; higher keep more confidence
RETENTIONS = (0.01, 0.5, 0.8, 0.9, 0.95)
DEFAULT_RETENTION = 0.01  # a classifier's: "keeps its pristine decision" (each task's: Task.plan_retention)
CONFIDENCES = (0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99)


@dataclass
class LadderData:
    """Per photo (rows): features, JRQ classes per retention, retention per quality, bpp per quality."""

    keys: list[str]
    sources: list[str]
    features: np.ndarray  # [n, f]
    classes: np.ndarray  # [n, R] in 0..K (K: beyond the ladder's top)
    retention: np.ndarray  # [n, K] the network's (the ensemble's minimum for a content model)
    bpp: np.ndarray  # [n, K]
    ladder: list[int]
    feature_names: list[str]
    task: str = "classification"


def jrq_classes(retention: np.ndarray, levels: Sequence[float]) -> np.ndarray:
    """Ladder class of the JRQ per row and retention level: the lowest index from which every higher entry keeps
    at least ``r`` (``K`` when the top does not)."""
    k = retention.shape[1]
    out = np.empty((retention.shape[0], len(levels)), dtype=np.int64)
    for j, r in enumerate(levels):
        ok = retention >= r
        # suffix-all: from column i on, every column passes
        suffix = np.flip(np.cumprod(np.flip(ok, 1), 1), 1).astype(bool)
        out[:, j] = np.where(suffix.any(1), np.argmax(suffix, 1), k)
    return out


_FEATURE_CACHE: dict[str, np.ndarray] = {}


def _content(path: str) -> np.ndarray:
    if path not in _FEATURE_CACHE:
        _FEATURE_CACHE[path] = content_features(load_image(path))
    return _FEATURE_CACHE[path]


def ladder_data(folders: Sequence[str | os.PathLike], network: str | None, codec: str = "jpeg",
                networks: Sequence[str] | None = None) -> LadderData:
    """The :class:`LadderData` of labelling folders for ``network`` (its own features and retention), or, with
    ``network=None``, for the content alone against ``networks`` (default: each folder's labelers): their
    minimum retention, so the JRQ is the highest of theirs."""
    rows = {"keys": [], "sources": [], "features": [], "retention": [], "bpp": []}
    ladder, task = None, None
    for folder in folders:
        folder = Path(folder)
        config = json.loads((folder / "config.json").read_text())
        lad = ladders(config["distortions"]).get(codec)
        if not lad:
            raise InvalidInputError(f"{folder} holds no {codec} quality ladder (label it with -p {codec}-dense)")
        qs = [int(q) for q, _ in lad]
        if ladder is not None and qs != ladder:
            raise InvalidInputError(f"{folder}: its {codec} ladder {qs} differs from the first folder's {ladder}")
        ladder = qs
        if task is not None and config["task"] != task.name:
            raise InvalidInputError(f"{folder} is a {config['task']} folder; the first one is {task.name}")
        task = get_task(config["task"])
        nets = [network] if network is not None else list(networks or config["labelers"])
        have = {*config["labelers"], *config.get("held_out", [])}
        if missing := [n for n in nets if n not in have]:
            raise InvalidInputError(f"{folder} has no outputs of {', '.join(missing)} (label with --held-out "
                               f"{','.join(missing)})")
        pristine = read_outputs(folder, network) if network is not None else None  # read once, used twice
        long = retention_table(folder, nets, {network: pristine} if network is not None else None)
        long = long[long["codec"] == codec]
        for key, g in long.groupby("key", sort=True):
            ret = g.pivot_table(index="network", columns="quality", values="retention", aggfunc="first")
            if ret.shape != (len(nets), len(qs)) or ret.isna().to_numpy().any():
                continue  # a failed output: the ladder is not whole
            bpp = g.groupby("quality")["bpp"].first().reindex(qs).to_numpy(float)
            feats = [_content(g["source"].iloc[0])]
            if network is not None:
                r0 = pristine.get((key, PRISTINE))
                if r0 is None or "error" in r0:
                    continue
                feats.append(task.plan_features(r0))
            rows["keys"].append(str(key))
            rows["sources"].append(str(g["source"].iloc[0]))
            rows["features"].append(np.concatenate(feats))
            rows["retention"].append(ret.to_numpy(float).min(0))
            rows["bpp"].append(bpp)
    if not rows["keys"]:
        raise InvalidInputError("no photo with a whole ladder in the folders given")
    retention = np.stack(rows["retention"])
    names = list(CONTENT_FEATURES) + (list(task.plan_feature_names) if network is not None else [])
    return LadderData(rows["keys"], rows["sources"], np.stack(rows["features"]),
                      jrq_classes(retention, RETENTIONS), retention, np.stack(rows["bpp"]), ladder, names, task.name)


def fit_ordinal(x: np.ndarray, classes: np.ndarray, n_levels: int, hidden: int = 16, epochs: int = 600,
                weight_decay: float = 1e-3, seed: int = 0) -> dict:
    """Fit ``P(y_r <= j) = sigmoid(theta[r, j] - s(x))`` (``s``: one ReLU layer plus a linear skip) by maximum
    likelihood; returns the arrays of a :class:`QualityModel`."""
    import torch

    g = torch.Generator().manual_seed(seed)
    mean, std = x.mean(0), x.std(0) + 1e-6
    xt = torch.tensor((x - mean) / std, dtype=torch.float32)
    yt = torch.tensor(classes, dtype=torch.long)
    n_f, n_r = x.shape[1], classes.shape[1]
    w1 = torch.nn.Parameter(torch.randn(n_f, hidden, generator=g) * (1 / np.sqrt(n_f)))
    b1 = torch.nn.Parameter(torch.zeros(hidden))
    w2 = torch.nn.Parameter(torch.randn(hidden, generator=g) * 0.1)
    skip = torch.nn.Parameter(torch.zeros(n_f))
    start = torch.logit(torch.tensor((classes[:, 0].clip(0, n_levels - 1).astype(float).mean() + 0.5) / n_levels))
    t0 = torch.nn.Parameter(torch.full((n_r, 1), float(start) - 2.0))
    dt = torch.nn.Parameter(torch.full((n_r, n_levels - 1), -0.5))
    opt = torch.optim.Adam([w1, b1, w2, skip, t0, dt], lr=0.02)

    def thetas():
        return torch.cat([t0, t0 + torch.cumsum(torch.nn.functional.softplus(dt), 1)], 1)

    for _ in range(epochs):
        s = torch.relu(xt @ w1 + b1) @ w2 + xt @ skip
        cum = torch.sigmoid(thetas()[None, :, :] - s[:, None, None])  # [n, R, K]
        ones = torch.ones_like(cum[..., :1])
        upper = torch.cat([cum, ones], -1)  # P(y <= c), c = 0..K
        lower = torch.cat([torch.zeros_like(ones), cum], -1)  # P(y <= c - 1)
        p = (upper - lower).gather(-1, yt[..., None]).squeeze(-1).clamp_min(1e-9)
        loss = -p.log().mean() + weight_decay * (w1.square().sum() + w2.square().sum() + skip.square().sum())
        opt.zero_grad()
        loss.backward()
        opt.step()
    return {"mean": mean.tolist(), "std": std.tolist(), "w1": w1.detach().numpy().tolist(),
            "b1": b1.detach().numpy().tolist(), "w2": w2.detach().numpy().tolist(),
            "skip": skip.detach().numpy().tolist(), "theta": thetas().detach().numpy().tolist()}


def simulate(model: QualityModel, data: LadderData, rows: np.ndarray, retention: float,
             confidence: float | None = None) -> dict:
    """What the plan does on ladder photos (rows of ``data``), read off their ladders: the final ladder index per
    photo, its mean bpp, the share whose final encoding keeps ``retention``, encodes per photo. A network's plan is
    checked (:meth:`QualityModel.checked_plan_index`, a failure corrected to the top); ``confidence`` given: the
    content-only plan at that confidence, unchecked."""
    if confidence is None:
        first = model.checked_plan_index(data.features[rows], retention)
        failed = data.retention[rows, first] < retention
        top = data.bpp.shape[1] - 1
        final = np.where(failed, top, first)
        encodes = np.where(failed & (first < top), 2.0, 1.0)
    else:
        final, encodes = plan_index(model.cumulative(data.features[rows], retention), confidence), np.ones(len(rows))
    idx = np.arange(len(rows))
    return {"index": final, "bpp": float(data.bpp[rows][idx, final].mean()),
            "kept": float((data.retention[rows][idx, final] >= retention).mean()), "encodes": float(encodes.mean())}


def split_photos(sources: Sequence[str], validation: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(training rows, validation rows) split by photo identity (the source file's name, hashed with ``seed``), so
    no photo is on both sides and the split does not depend on the order of the rows."""
    order = np.argsort([hashlib.sha256(f"{seed}:{Path(s).name}".encode()).hexdigest() for s in sources])
    n_val = max(10, int(round(validation * len(sources))))
    return np.sort(order[n_val:]), np.sort(order[:n_val])


def train_rate_model(folders: Sequence[str | os.PathLike], network: str | None, codec: str = "jpeg",
                     validation: float = 0.2, keep_share: float = 0.99, seed: int = 0, hidden: int = 16,
                     epochs: int = 600, description: str | None = None,
                     ensemble: Sequence[str] | None = None) -> QualityModel:
    """A :class:`QualityModel` for ``network`` (or the content alone, ``None``) from labelling folders; see the
    module doc for the procedure."""
    if not 0 < validation < 1 or not 0 < keep_share <= 1:
        raise SettingError(f"validation must be in (0, 1) and keep_share in (0, 1], got {validation}, {keep_share}")
    data = ladder_data(folders, network, codec, ensemble)
    n = len(data.keys)
    if n < 50:
        raise InvalidInputError(f"{n} photos with a whole ladder: too few to train a rate model (label at least 50)")
    train, val = split_photos(data.sources, validation, seed)
    arrays = fit_ordinal(data.features[train], data.classes[train], len(data.ladder), hidden=hidden, epochs=epochs,
                         seed=seed)
    model = QualityModel(network=network, task=data.task, codec=codec, ladder=data.ladder, retentions=list(RETENTIONS),
                         features=data.feature_names, confidence=0.5, **arrays,
                         relative_bpp=(data.bpp[train] / data.bpp[train][:, -1:]).mean(0).tolist())
    # what can be kept at all: the photos whose ladder top keeps the retention (the others keep it nowhere)
    r_default = get_task(data.task).plan_retention
    reachable = float((data.retention[val, -1] >= r_default).mean())
    need = keep_share * reachable
    if network is not None:  # plan + check + correction to the top: the validation figures of the checked plan
        chosen = simulate(model, data, val, r_default)
    else:  # the plan alone: the confidence that keeps every labeler's decision on keep_share of what can be kept
        options = [(c, simulate(model, data, val, r_default, c)) for c in CONFIDENCES]
        passing = [o for o in options if o[1]["kept"] >= need]
        model.confidence, chosen = min(passing, key=lambda o: o[1]["bpp"]) if passing else options[-1]
    folders_txt = [str(f) for f in folders]
    model.card = {
        "description": description or (f"plans each image's JPEG quality for {network} from one pass of it"
                                       if network else "plans each image's quality from its content alone"),
        "network": network, "ensemble": None if network else list(ensemble or []) or "the folders' labelers",
        "codec": codec, "ladder": data.ladder, "retentions": list(RETENTIONS),
        "default_retention": r_default, "training_folders": folders_txt,
        "photos": {"train": int(len(train)), "validation": int(len(val))},
        "validation_photos": sorted(data.keys[i] for i in val),
        "validation_procedure": (f"photos split by file name hash (seed {seed}), {validation:.0%} validation; "
                                 + ("the checked plan (fewest expected bits, a failed check corrected to the "
                                    "ladder's top) simulated on the validation photos" if network is not None else
                                    f"the confidence chosen on validation photos: fewest bits with every labeler's "
                                    f"decision kept (retention {r_default}) on >= {keep_share:.0%} of the "
                                    f"photos whose ladder top keeps it")),
        "validation": {"mean_bpp": chosen["bpp"], "kept_share": chosen["kept"], "keepable_share": reachable,
                       "encodes": chosen["encodes"],
                       "fixed_top_bpp": float(data.bpp[val, -1].mean())},
        "training_sources_sha": hashlib.sha256("\n".join(sorted(data.sources)).encode()).hexdigest()[:16],
    }
    model.card["sha"] = hashlib.sha256(json.dumps(arrays, sort_keys=True).encode()).hexdigest()[:16]
    return model
