"""The utility predictor (Section IV): from the distorted image alone, is it still useful to machines?

``Predictor.load("default")`` gives the predictor shipped with the package; :func:`train_predictor`
trains new ones from a labels table (``imutility label``). Importing the package is cheap (no torch):
the names below load on first use, so decoding workers that need only :mod:`.geometry` start fast.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "Predictor": "imutility.predictor.model",
    "PredictorLoadError": "imutility.predictor.model",
    "TrainConfig": "imutility.predictor.train",
    "train_predictor": "imutility.predictor.train",
    "create_backbone": "imutility.predictor.backbones",
    "list_backbones": "imutility.predictor.backbones",
}

__all__ = list(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'imutility.predictor' has no attribute {name!r}")
