"""``imutility train``: a predictor from a labels folder, dispatched once on its architecture; every predictor it
makes gets its card (written by :func:`imutility.predictor.card.write_card`) and its ONNX graphs
(:mod:`imutility.predictor.artefacts.graphs`)."""

from __future__ import annotations

import os
from pathlib import Path

from imutility.predictor.card import PredictorCard
from imutility.predictor.training.config import TrainConfig

TRAINERS = {"finetune": "imutility.predictor.training.finetune:train_finetune_predictor",
            "content": "imutility.predictor.training.content:train_content_predictor"}


def train_predictor(cfg: TrainConfig, out: str | os.PathLike, progress: bool = True) -> PredictorCard:
    """Train, evaluate on the held-out sources, write ``model.pt`` + ``card.json`` into ``out``, and the ONNX graphs
    the torch-free runtime reads (``onnx.json``). Returns the card (its JSON as written: ``.raw``)."""
    import importlib

    from imutility.predictor.artefacts.graphs import write_onnx_files
    from imutility.predictor.runtime.predictor import Predictor

    cfg.validate()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    module, name = TRAINERS[cfg.architecture].split(":")
    card = getattr(importlib.import_module(module), name)(cfg, out, progress)
    write_onnx_files(Predictor.load(out, runtime="torch", models=cfg.models), out, models=cfg.models)
    return card
