"""Writing a predictor's ONNX graphs, what the torch-free engines read (:mod:`imutility.predictor.runtime.sidecar`).

``imutility train`` writes them into every predictor it makes and ``imutility export --graphs`` into any folder
(how the shipped predictors got theirs). A content predictor's backbone features graph is one file per
backbone's weights, shared by every predictor on it: found in the package or the cache, else exported into the
cache (:func:`features_graph`, through the project's one export-and-cache scheme,
:func:`imutility.zoo.backends.onnx_export.cached_export`); the training feature pass runs the same file. Nothing
here runs when a predictor is loaded. Needs PyTorch.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from imutility import atomic
from imutility.predictor.runtime.sidecar import SIDECAR, SIDECAR_FORMAT, backbone_dirs, self_digest
from imutility.zoo.backends.onnx_export import cached_export, export_onnx
from imutility.zoo.weights import file_sha256


def features_file_name(backbone: str, backbone_sha256: str) -> str:
    """The features graph of a backbone's weights: one per weights file, shared by every predictor on it."""
    return f"{backbone}-{backbone_sha256[:12]}-features.onnx"


def features_graph(backbone: str, models=None, out_dir: str | os.PathLike | None = None) -> Path:
    """The ONNX graph of ``backbone``'s frozen per-tile features (pooled + confidence, float32): the package's or
    the cache's, else exported into ``out_dir`` (default: the cache)."""
    from imutility import zoo
    from imutility.predictor.networks.content import build_recognition

    name = features_file_name(backbone, zoo.get_spec(backbone).weights.sha256)
    places = ([Path(out_dir)] if out_dir else []) + backbone_dirs(Path(out_dir or "."))[1:]  # + package, cache
    found = next((d / name for d in places if (d / name).is_file()), None)
    if found is not None:
        return found
    feats, pre, _ = build_recognition(backbone, True, models=models)
    h, w = pre.size
    return cached_export(feats.cpu(), torch.zeros(1, 3, h, w), name, Path(out_dir) if out_dir else None)


def write_onnx_files(predictor, out: str | os.PathLike, features_dir: str | os.PathLike | None = None,
                     models=None) -> Path:
    """Write ``out/onnx.json`` and the predictor's own graph (``head.onnx`` or ``network.onnx``) for a
    :class:`~imutility.predictor.Predictor` on the PyTorch engine; a content predictor's features graph is
    :func:`features_graph`'s. Returns ``out/onnx.json``."""
    from imutility import zoo

    out = Path(out)
    card, engine = predictor.card, predictor.engine
    if predictor.runtime != "torch":
        raise ValueError("writing ONNX graphs needs the predictor on the PyTorch engine (runtime='torch')")
    side: dict = {"format": SIDECAR_FORMAT, "architecture": card.architecture, "card_key": card.key,
                  "weights_sha256": card.weights_sha256}
    if card.content is not None:
        found = features_graph(card.backbone, models, features_dir)
        head_in, total = card.content.n_features, _features_width(found)  # confidence heads read the last 5
        export_onnx(engine.model.head.cpu().eval(), torch.zeros(1, head_in), out / "head.onnx")
        side["features"] = {"backbone": card.backbone, "backbone_sha256": zoo.get_spec(card.backbone).weights.sha256,
                            "file": found.name, "sha256": file_sha256(found), "columns": [total - head_in, total]}
        side["head"] = {"file": "head.onnx", "sha256": file_sha256(out / "head.onnx")}
    else:
        s = card.size
        export_onnx(engine.model.cpu().eval(), torch.zeros(1, 3, s, s), out / "network.onnx")
        side["network"] = {"file": "network.onnx", "sha256": file_sha256(out / "network.onnx")}
    engine.to(torch.device(predictor.device))
    keep = _kept_entries(out)
    side.update(keep)
    side["sha256"] = self_digest(side)
    atomic.write_json(out / SIDECAR, side)
    return out / SIDECAR


def _kept_entries(folder: Path) -> dict:
    """What a rewrite of ``onnx.json`` keeps from the old one: its int8 features graph, if the file still exists
    (the same backbone's weights: the features graph's name says so)."""
    import json

    path = folder / SIDECAR
    if not path.is_file():
        return {}
    try:
        old = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    entry = old.get("features_int8") if isinstance(old, dict) else None
    if isinstance(entry, dict) and any((d / str(entry.get("file"))).is_file() for d in backbone_dirs(folder)):
        return {"features_int8": entry}
    return {}


def _features_width(path: Path) -> int:
    """The width of a features graph's output, read from the graph."""
    import onnx

    dims = onnx.load(str(path), load_external_data=False).graph.output[0].type.tensor_type.shape.dim
    return int(dims[-1].dim_value)


def record(folder: str | os.PathLike, entries: dict) -> Path:
    """Add ``entries`` to a folder's ``onnx.json`` (its digest made again): how an int8 graph is recorded."""
    import json

    path = Path(folder) / SIDECAR
    side = json.loads(path.read_text())
    side.update(entries)
    side["sha256"] = self_digest(side)
    atomic.write_json(path, side)
    return path


@dataclass(frozen=True)
class GraphsReport:
    sidecar: Path
    max_diff: float  # ONNX Runtime against PyTorch on a probe image


def make_graphs(model: str | os.PathLike, features_dir: str | os.PathLike | None = None, models=None
                ) -> GraphsReport:
    """``imutility export --graphs``: write a predictor folder's graphs, then check that ONNX Runtime scores a
    probe image as PyTorch does."""
    from imutility.predictor.deployment import probe_image
    from imutility.predictor.runtime.predictor import Predictor

    pred = Predictor.load(model, runtime="torch", models=models)
    probe = probe_image()
    ref = pred(probe)
    side = write_onnx_files(pred, pred.source, features_dir, models)
    lean = Predictor.load(pred.source, runtime="onnx")
    return GraphsReport(side, float(np.abs(lean(probe) - ref).max()))
