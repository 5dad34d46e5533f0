"""The engine contract: what every runtime of every predictor architecture provides, and the one scoring path.

An engine is built from a checked card (:class:`~imutility.predictor.card.PredictorCard`) by
:func:`build_engine`, the one dispatch on (runtime, architecture). It offers:

- ``preparer()``: a picklable callable, RGB image -> uint8 array ``(k, S, S, 3)`` (a window: k = 1; tiles:
  k >= 1), what decoding workers run (:mod:`imutility.predictor.runtime.prepare`);
- ``outputs(prepared, device)``: the network's raw outputs for a list of prepared images, one row per unit
  (window or tile) in order: logits, nothing else;
- ``to(device)``.

:func:`score` turns outputs into scores with the card's :class:`~imutility.predictor.geometry.ScoreHead` (tile
pooling, then the link): the same code for every engine, so two engines of one predictor differ only in their
network arithmetic (tested for every architecture x runtime x precision).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Protocol

import numpy as np
from PIL import Image

from imutility.predictor.card import PredictorCard


class Engine(Protocol):
    card: PredictorCard
    runtime: str

    def preparer(self) -> Callable[[Image.Image], np.ndarray]: ...

    def outputs(self, prepared: Sequence[np.ndarray], device: str) -> np.ndarray: ...

    def to(self, device: str) -> None: ...


def score(engine: Engine, prepared: Sequence[np.ndarray], device: str) -> np.ndarray:
    """One score per prepared image (float64): the engine's outputs through the card's score head."""
    if not prepared:
        return np.zeros(0, dtype=np.float64)
    owner = np.repeat(np.arange(len(prepared)), [len(p) for p in prepared])
    return engine.card.head(engine.outputs(prepared, device), owner, len(prepared))


def build_engine(card: PredictorCard, folder: Path, runtime: str, precision: str = "fp32", models=None,
                 sidecar=None) -> Engine:
    """The engine of ``card`` on ``runtime``: ONNX Runtime over the folder's graphs (``sidecar``), or PyTorch
    over its ``model.pt``."""
    if runtime == "onnx":
        from imutility.predictor.runtime.onnx_engines import onnx_engine

        return onnx_engine(card, folder, sidecar, precision)
    from imutility.predictor.runtime.torch_engines import torch_engine

    return torch_engine(card, folder, models, precision)
