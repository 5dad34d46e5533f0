"""The ONNX Runtime engines (CPU, no PyTorch): what the lean install (``pip install imutility``) runs.

Both read the graphs named by the folder's ``onnx.json`` (:mod:`imutility.predictor.runtime.sidecar`) and give
the engine contract's raw outputs (:mod:`imutility.predictor.runtime.engine`); scores equal the PyTorch
engines' within float32 rounding (tested).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from imutility.errors import SettingError
from imutility.predictor.card import PredictorCard, PredictorLoadError
from imutility.predictor.geometry import WindowPreparer
from imutility.predictor.runtime.sidecar import Sidecar, features_key, make_graphs_command


def _cpu_only(device) -> None:
    if str(device) != "cpu":
        raise SettingError(f"the ONNX Runtime engine runs on the CPU; device {device} needs runtime 'torch'")


class OnnxContentEngine:
    """Tiles -> backbone features (ONNX) -> head (ONNX): one logit per tile."""

    runtime = "onnx"

    def __init__(self, card: PredictorCard, side: Sidecar, precision: str = "fp32"):
        from imutility.zoo.backends.ort import ort_session

        if side.graph(features_key(precision)) is None:
            raise PredictorLoadError(f"{side.folder}: no {precision} features graph in its onnx.json: make one with "
                                     f"imutility export --model {side.folder} --int8 --calibration PHOTOS")
        self.card = card
        self.features = ort_session(side.locate(features_key(precision), f"{precision} features graph"))
        self.take = side.features_columns()
        self.head = ort_session(side.locate("head", "head"))
        self.tiles = card.tiles

    def preparer(self):
        return self.tiles  # a TileSpec is its own picklable preparer: image -> uint8 tiles (k, S, S, 3)

    def to(self, device) -> None:
        _cpu_only(device)

    def outputs(self, stacks: Sequence[np.ndarray], device=None, batch_size: int = 64) -> np.ndarray:
        tiles = np.concatenate(stacks)
        logits = [np.zeros(0, np.float32)]
        for i in range(0, len(tiles), batch_size):
            f = self.features.run(None, {"input": self.card.values.normalise(tiles[i:i + batch_size])})[0]
            logits.append(self.head.run(None, {"input": np.ascontiguousarray(f[:, self.take])})[0].reshape(-1))
        return np.concatenate(logits)


class OnnxFinetuneEngine:
    """One window (crop or resize) -> the fine-tuned network (ONNX): its logits per image."""

    runtime = "onnx"

    def __init__(self, card: PredictorCard, side: Sidecar, precision: str = "fp32"):
        from imutility.zoo.backends.ort import ort_session

        if precision != "fp32":
            raise SettingError(f"precision {precision} is for content predictors (their backbone's features graph); "
                               "a fine-tuned predictor runs in fp32 on the CPU")
        self.card = card
        self.network = ort_session(side.locate("network", "network"))

    def preparer(self) -> WindowPreparer:
        return WindowPreparer(self.card.window)

    def to(self, device) -> None:
        _cpu_only(device)

    def outputs(self, windows: Sequence[np.ndarray], device=None) -> np.ndarray:
        return self.network.run(None, {"input": self.card.values.normalise(np.concatenate(windows))})[0]


ENGINES = {"content": OnnxContentEngine, "finetune": OnnxFinetuneEngine}


def onnx_engine(card: PredictorCard, folder: Path, side: Sidecar | None, precision: str = "fp32"):
    """The ONNX Runtime engine over the graphs ``side`` (the folder's checked ``onnx.json``) names."""
    if side is None or not side.fits(card):
        what = "no onnx.json" if side is None else "an onnx.json made for another card (other weights or input)"
        raise PredictorLoadError(f"{folder} has {what}: make its ONNX graphs with {make_graphs_command(folder)} "
                                 "(that needs PyTorch once: pip install 'imutility[train]')")
    return ENGINES[card.architecture](card, side, precision)
