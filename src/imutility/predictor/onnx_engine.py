"""Predictors on ONNX Runtime without PyTorch: what ``pip install imutility`` (the lean install) runs.

A predictor folder's ``onnx.json`` (:data:`SIDECAR`) names the ONNX graphs that compute its scores and their
SHA-256:

- ``content`` predictors: the frozen backbone's per-tile features (``features``: one graph per backbone,
  shared by every predictor on it; the package ships EfficientNet-Lite1's in ``resources/backbones/``), the
  trained head on those features (``head``: per-tile logits), and the tile pooling's three numbers (``pool``);
- ``finetune`` predictors: the whole network (``network``: per-image logits);
- optionally ``features_int8``: the features graph quantized to int8 (``precision="int8"``, made by
  :mod:`imutility.predictor.quantize`).

Everything else (tiling, input values, the score's link) is the card's. The graphs are written by
:mod:`imutility.predictor.onnx_files` (``imutility train`` and ``imutility export --graphs`` call it; PyTorch is
needed there, not here). Scores equal the PyTorch engines' within float32 rounding (tested).
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

import numpy as np

from imutility.errors import ImutilityError
from imutility.predictor.common import PredictorLoadError
from imutility.predictor.geometry import InputSpec, TileSpec, WindowPreparer, normalise, pool_tiles

SIDECAR = "onnx.json"
SIDECAR_FORMAT = "imutility-onnx/1"


class OnnxFilesMissing(ImutilityError, FileNotFoundError):
    """A predictor without (some of) its ONNX graphs; :mod:`imutility.predictor.onnx_files` can make them."""


def backbone_dirs(folder: Path) -> list[Path]:
    """Where a backbone's features graph is looked for: the predictor's folder, the package, the cache."""
    from imutility.zoo.weights import cache_dir

    return [folder, Path(str(resources.files("imutility").joinpath("resources", "backbones"))), cache_dir() / "onnx"]


def features_key(precision: str) -> str:
    """The ``onnx.json`` entry of a content predictor's features graph in ``precision`` (``features``,
    ``features_int8``)."""
    return "features" if precision == "fp32" else f"features_{precision}"


def verified_file(path: Path, sha256: str, what: str) -> Path:
    """``path``, once its SHA-256 is the one ``onnx.json`` recorded for it (``what`` names it in the error)."""
    from imutility.zoo.weights import file_sha256

    digest = file_sha256(path)
    if digest != sha256:
        raise PredictorLoadError(f"{path}: SHA-256 {digest[:16]}... differs from the {what} recorded in "
                                 f"{SIDECAR} ({sha256[:16]}...): corrupt or another file")
    return path


def _cpu_only(device) -> None:
    if str(device) != "cpu":
        raise ValueError(f"the ONNX Runtime engine runs on the CPU; device {device} needs runtime='torch'")


class OnnxContentEngine:
    """Tiles -> backbone features (ONNX) -> head (ONNX) -> tile pooling (numpy) -> sigmoid or identity."""

    def __init__(self, card: dict, folder: Path, side: dict, precision: str = "fp32"):
        from imutility.zoo.backends.ort import ort_session

        feats = side["features"]
        graph = side.get(features_key(precision))
        if graph is None:
            raise PredictorLoadError(f"{folder}: no {precision} features graph in its {SIDECAR}: make one with "
                                     f"imutility export --model {folder} --int8 --calibration PHOTOS")
        where = next((d / graph["file"] for d in backbone_dirs(folder) if (d / graph["file"]).is_file()), None)
        if where is None:
            raise OnnxFilesMissing(f"{folder}: the features graph {graph['file']} of {feats['backbone']} is in none "
                                   f"of {', '.join(str(d) for d in backbone_dirs(folder))}")
        self.features = ort_session(verified_file(where, graph["sha256"], f"{precision} features graph"))
        self.take = slice(*feats["columns"])
        self.head = ort_session(verified_file(folder / side["head"]["file"], side["head"]["sha256"], "head"))
        self.pool = (float(side["pool"]["mean"]), float(side["pool"]["min"]), float(side["pool"]["bias"]))
        i = card["input"]
        self.tiles = TileSpec(**i["tiles"])
        self.values = (i["channels"], i["scale"], i["mean"], i["std"])
        self.binary = card["target"]["mode"] == "binary"
        self.size = self.tiles.size

    def preparer(self) -> TileSpec:
        return self.tiles

    def to(self, device) -> None:
        _cpu_only(device)

    def scores_prepared(self, stacks: list[np.ndarray], device=None, batch_size: int = 64) -> np.ndarray:
        owner = np.repeat(np.arange(len(stacks)), [len(t) for t in stacks])
        tiles = np.concatenate(stacks) if stacks else np.zeros((0, self.size, self.size, 3), np.uint8)
        logits = [np.zeros(0, np.float32)]
        for i in range(0, len(tiles), batch_size):
            f = self.features.run(None, {"input": normalise(tiles[i:i + batch_size], *self.values)})[0]
            logits.append(self.head.run(None, {"input": np.ascontiguousarray(f[:, self.take])})[0].reshape(-1))
        z = pool_tiles(np.concatenate(logits), owner, len(stacks), *self.pool)
        return 1 / (1 + np.exp(-z)) if self.binary else z


class OnnxFinetuneEngine:
    """One window (crop or resize) -> the fine-tuned network (ONNX) -> softmax column 1 or the raw output."""

    def __init__(self, card: dict, folder: Path, side: dict, precision: str = "fp32"):
        from imutility.zoo.backends.ort import ort_session

        if precision != "fp32":
            raise ValueError(f"precision {precision} is for content predictors (their backbone's features graph); "
                             "a fine-tuned predictor runs in fp32 on the CPU")
        self.input = InputSpec(**card["input"])
        self.network = ort_session(verified_file(folder / side["network"]["file"], side["network"]["sha256"],
                                             "network"))
        self.binary = card["target"]["mode"] == "binary"
        self.size = self.input.size

    def preparer(self) -> WindowPreparer:
        return WindowPreparer(self.input)

    def to(self, device) -> None:
        _cpu_only(device)

    def scores_prepared(self, windows: list[np.ndarray], device=None) -> np.ndarray:
        i = self.input
        out = self.network.run(None, {"input": normalise(np.concatenate(windows), i.channels, i.scale, i.mean,
                                                         i.std)})[0].astype(np.float64)
        if not self.binary:
            return out[:, 0]
        e = np.exp(out - out.max(1, keepdims=True))
        return e[:, 1] / e.sum(1)


ENGINES = {"content": OnnxContentEngine, "finetune": OnnxFinetuneEngine}


def card_key(card: dict) -> str:
    """What the graphs of ``onnx.json`` depend on in a card: the weights, the architecture and the input (another
    input size is another graph). ``onnx.json`` records it; a card that no longer matches gets new graphs."""
    import hashlib

    shaping = {k: card.get(k) for k in ("weights_sha256", "architecture", "input", "backbone", "backbone_sha256",
                                        "features", "head")}
    return hashlib.sha256(json.dumps(shaping, sort_keys=True).encode()).hexdigest()


def fits(side: dict | None, card: dict) -> bool:
    """Whether an ``onnx.json`` holds the graphs of this card."""
    return side is not None and side.get("card_key") == card_key(card)


def read_sidecar(folder: Path) -> dict | None:
    """The folder's ``onnx.json``, or None when it has none."""

    path = folder / SIDECAR
    if not path.is_file():
        return None
    try:
        side = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise PredictorLoadError(f"{path}: unreadable ({e})") from e
    if not isinstance(side, dict) or side.get("format") != SIDECAR_FORMAT:
        raise PredictorLoadError(f"{path}: not an {SIDECAR_FORMAT} file")
    return side


def onnx_engine(card: dict, folder: Path, side: dict, precision: str = "fp32"):
    """The ONNX Runtime engine for a predictor whose ONNX graphs ``side`` describes; ``precision`` ``int8``: its
    quantized features graph (:mod:`imutility.predictor.quantize`)."""

    arch = card.get("architecture", "finetune")
    if not fits(side, card):
        raise PredictorLoadError(f"{folder / SIDECAR} was made for another card (other weights or input): make it "
                                 "again (imutility export --model FOLDER --graphs)")
    try:
        return ENGINES[arch](card, folder, side, precision)
    except (KeyError, TypeError) as e:
        raise PredictorLoadError(f"{folder / SIDECAR}: incomplete ({type(e).__name__}: {e})") from e
