"""Writing a predictor's ONNX graphs for the torch-free engines (:mod:`imutility.predictor.onnx_engine`).

``imutility train`` calls :func:`write_onnx_files` on every predictor it makes, and ``imutility export --graphs``
on any folder (how the shipped predictors got theirs); a folder without them gets them on first use with ONNX
Runtime, in the cache (:func:`ensure_onnx_files`). Needs PyTorch; the engines that read the files do not.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from imutility import atomic
from imutility.predictor.onnx_engine import SIDECAR, SIDECAR_FORMAT, backbone_dirs, card_key, fits, read_sidecar
from imutility.zoo.backends.onnx_export import export_onnx
from imutility.zoo.weights import cache_dir, file_sha256


def features_file_name(backbone: str, backbone_sha256: str) -> str:
    """The features graph of a backbone's weights: one per weights file, shared by every predictor on it."""
    return f"{backbone}-{backbone_sha256[:12]}-features.onnx"


def write_features_graph(backbone: str, folder: str | os.PathLike, models=None) -> Path:
    """Export ``backbone``'s frozen per-tile features (pooled + confidence, float32) as ``folder/<name>``."""
    from imutility import zoo
    from imutility.predictor.content import build_recognition

    feats, pre, _ = build_recognition(backbone, True, models=models)
    path = Path(folder) / features_file_name(backbone, zoo.get_spec(backbone).weights.sha256)
    h, w = pre.size
    export_onnx(feats.cpu().eval(), torch.zeros(1, 3, h, w), path)
    return path


def write_onnx_files(predictor, out: str | os.PathLike, features_dir: str | os.PathLike | None = None,
                     models=None) -> Path:
    """Write ``out/onnx.json`` and the predictor's own graph (``head.onnx`` or ``network.onnx``) for a
    :class:`~imutility.predictor.Predictor` on a PyTorch engine. A content predictor's features graph is found in
    the usual places (:func:`~imutility.predictor.onnx_engine.backbone_dirs`) or exported into ``features_dir``
    (default: the cache). Returns ``out/onnx.json``."""
    from imutility import zoo

    out = Path(out)
    card, engine = predictor.card, predictor.engine
    side: dict = {"format": SIDECAR_FORMAT, "architecture": predictor.architecture, "card_key": card_key(card),
                  "weights_sha256": card["weights_sha256"]}
    if predictor.architecture == "content":
        backbone = card["backbone"]
        name = features_file_name(backbone, zoo.get_spec(backbone).weights.sha256)
        found = next((d / name for d in backbone_dirs(out) if (d / name).is_file()), None)
        if found is None:
            found = write_features_graph(backbone, features_dir or cache_dir() / "onnx", models)
        model = engine.model
        head_in, total = card["head"]["n_features"], _features_width(found)  # confidence heads read the last 5
        export_onnx(model.head.cpu().eval(), torch.zeros(1, head_in), out / "head.onnx")
        pool = model.pool
        side["features"] = {"backbone": backbone, "backbone_sha256": zoo.get_spec(backbone).weights.sha256,
                            "file": name, "sha256": file_sha256(found), "columns": [total - head_in, total]}
        side["head"] = {"file": "head.onnx", "sha256": file_sha256(out / "head.onnx")}
        side["pool"] = {"mean": float(pool.weights[0].detach()), "min": float(pool.weights[1].detach()),
                        "bias": float(pool.bias.detach())}
    else:
        s = engine.size
        export_onnx(engine.model.cpu().eval(), torch.zeros(1, 3, s, s), out / "network.onnx")
        side["network"] = {"file": "network.onnx", "sha256": file_sha256(out / "network.onnx")}
    engine.to(torch.device(predictor.device))
    atomic.write_json(out / SIDECAR, side)
    return out / SIDECAR


def _features_width(path: Path) -> int:
    """The width of a features graph's output, read from the graph."""
    import onnx

    dims = onnx.load(str(path), load_external_data=False).graph.output[0].type.tensor_type.shape.dim
    return int(dims[-1].dim_value)


def ensure_onnx_files(predictor) -> Path:
    """The folder holding the predictor's ``onnx.json``: its own, or (for a folder made without one, or one whose
    card changed since) a cache folder keyed by the card, written now."""
    folder = Path(predictor.source)
    if fits(read_sidecar(folder), predictor.card):
        return folder
    cached = cache_dir() / "onnx" / f"predictor-{card_key(predictor.card)[:20]}"
    if not fits(read_sidecar(cached), predictor.card):
        cached.mkdir(parents=True, exist_ok=True)
        write_onnx_files(predictor, cached)
    return cached
