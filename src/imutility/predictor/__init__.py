"""The utility predictor (Section IV): from the distorted image alone, is it still useful to machines?

``Predictor.load("default")`` gives the predictor shipped with the package (:func:`list_predictors` names them
all); :func:`train_predictor` trains new ones from a labels table (``imutility label``).

The package is a floor and rooms above it (docs/architecture.md):

- floor (torch-free): :mod:`.card` (the typed card, its vocabularies and errors), :mod:`.geometry` (how an image
  becomes the network's input, how outputs become the score), :mod:`.placement` (where it runs: the one rule),
  :mod:`.builtin` (the shipped predictors), :mod:`.deployment` (the deploy spec: what a deployment needs besides the
  graph);
- :mod:`.networks`: the PyTorch networks; :mod:`.runtime`: loading and scoring (engines, decoding workers);
  :mod:`.training`: making predictors; :mod:`.artefacts`: what is made from one (ONNX graphs, int8, one deployable
  file).

Importing the package is cheap (no torch): the names below load on first use, so decoding workers that need only
:mod:`.geometry` start fast.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "Predictor": "imutility.predictor.runtime.predictor",
    "PredictorLoadError": "imutility.predictor.card",
    "PredictorCard": "imutility.predictor.card",
    "read_card": "imutility.predictor.card",
    "list_predictors": "imutility.predictor.builtin",
    "TrainConfig": "imutility.predictor.training.config",
    "InsufficientLabelsError": "imutility.predictor.training.config",
    "train_predictor": "imutility.predictor.training.train",
    "create_backbone": "imutility.predictor.networks.backbones",
    "list_backbones": "imutility.predictor.networks.backbones",
}

__all__ = list(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'imutility.predictor' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY])
