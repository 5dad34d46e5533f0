"""One deployable ONNX file: the predictor's network with its card and deploy spec
(:func:`imutility.predictor.deployment.deploy_spec`) in the metadata."""

from __future__ import annotations

import json
import os
from pathlib import Path

from imutility.predictor.card import PredictorLoadError
from imutility.predictor.deployment import deploy_spec


def export_onnx(predictor, path: str | os.PathLike) -> Path:
    """The network as ONNX (dynamic batch; a content predictor's per-TILE graph), atomically, with the card
    (``imutility.card``) and :func:`deploy_spec` (``imutility.deploy``) in its metadata."""
    import torch

    from imutility.zoo.backends.onnx_export import export_onnx as write

    if not hasattr(predictor.engine, "graph"):
        raise PredictorLoadError("exporting needs the PyTorch engine: load with runtime='torch'")
    path = Path(path)
    s = predictor.card.size
    write(predictor.engine.graph().cpu().eval(), torch.zeros(1, 3, s, s), path, metadata={
        "imutility.card": json.dumps(predictor.card.raw), "imutility.deploy": json.dumps(deploy_spec(predictor.card))})
    predictor.engine.to(predictor.device)
    return path


def export_checked(model: str | os.PathLike, path: str | os.PathLike, models=None) -> tuple[Path, float]:
    """``imutility export --onnx``: the file of :func:`export_onnx` for a predictor folder or built-in name, and how
    far ONNX Runtime running it (with the PyTorch engine's preparation and pooling) is from PyTorch on a probe
    image."""
    import numpy as np

    from imutility.predictor.artefacts.graphs import probe_image
    from imutility.predictor.runtime.predictor import Predictor

    pred = Predictor.load(model, runtime="torch", models=models)
    probe = probe_image()
    ref = pred(probe)
    out = export_onnx(pred, path)
    pred.use_onnx_runtime(out)
    return out, float(np.abs(pred(probe) - ref).max())
