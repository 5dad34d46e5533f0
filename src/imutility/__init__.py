"""imutility: image utility for machines.

How useful is an image still to machine-vision models after compression or another distortion?
The subpackages hold the paper's utility definitions (:mod:`imutility.utility`), distortions
(:mod:`imutility.distort`), data readers (:mod:`imutility.datasets`) and robust image loading
(:mod:`imutility.images`). Importing the package is cheap; submodules load on first use.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.6.0"  # the one place the version is set (pyproject reads it)

_LAZY = {
    "confidence_utility": "imutility.utility",
    "normalised_confidence_utility": "imutility.utility",
    "combine": "imutility.utility",
    "classification_label": "imutility.utility",
    "classification_label_from_probs": "imutility.utility",
    "classification_utility": "imutility.utility",
    "detection_label": "imutility.utility",
    "detection_utility": "imutility.utility",
    "load_image": "imutility.images",
    "ImageLoadError": "imutility.images",
    "get_preset": "imutility.distort",
    "list_presets": "imutility.distort",
    "parse_distortion": "imutility.distort",
    "Predictor": "imutility.predictor",
    "list_predictors": "imutility.predictor",
    "list_labelers": "imutility.zoo",
    "get_labeler": "imutility.zoo",
    "TrainConfig": "imutility.predictor",
    "train_predictor": "imutility.predictor",
    "measure_pairs": "imutility.measure",
    "utility_of": "imutility.measure",
    "compress": "imutility.rate",
    "compress_many": "imutility.rate",
}

__all__ = ["__version__", "utility", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    if name == "utility":  # the module, which is also the one-call full-reference utility
        return importlib.import_module("imutility.utility")
    raise AttributeError(f"module 'imutility' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
