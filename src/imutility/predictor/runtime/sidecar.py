"""A predictor folder's ``onnx.json``: the ONNX graphs that compute its scores without PyTorch, typed and checked.

``onnx.json`` names the graphs and their SHA-256:

- ``content`` predictors: the frozen backbone's per-tile features (``features``: one graph per backbone's
  weights, shared by every predictor on it; the package ships EfficientNet-Lite1's in ``resources/backbones/``)
  and the trained head on those features (``head``: per-tile logits); optionally the features graph quantized to
  int8 (``features_int8``, :mod:`imutility.predictor.artefacts.quantize`);
- ``finetune`` predictors: the whole network (``network``: per-image logits).

Everything else (tiling, input values, the pooling and the link) is the card's. The file is covered whole by a
hash: ``card_key`` ties it to the card it was made for (weights, input, head, pooling: a card edited since is
refused) and ``sha256`` is the digest of its own other fields (an edit after writing is refused, like a changed
weights file). Graph files are plain names in the folder (or, for a backbone's features, in the package's or
the cache's backbone folder): a name that could leave them is refused. Written by
:mod:`imutility.predictor.artefacts.graphs` (``imutility train``, ``imutility export --graphs``), which needs
PyTorch; read here, without it.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from imutility.errors import ImutilityError
from imutility.predictor.card import PredictorCard, PredictorLoadError, card_key

SIDECAR = "onnx.json"
#: /2 adds the digest of the file itself and keys the graphs to the card's pooling too; /1 files (imutility 0.3)
#: are still read, keyed as they were written
SIDECAR_FORMAT = "imutility-onnx/2"
LEGACY_FORMATS = ("imutility-onnx/1",)


class OnnxFilesMissing(ImutilityError, FileNotFoundError):
    """A predictor without (some of) its ONNX graphs: ``imutility export --model FOLDER --graphs`` makes them."""


def make_graphs_command(folder: Path) -> str:
    return f"imutility export --model {folder} --graphs"


def backbone_dirs(folder: Path) -> list[Path]:
    """Where a backbone's features graph is looked for: the predictor's folder, the package, the cache."""
    from imutility.zoo.weights import cache_dir

    return [folder, Path(str(resources.files("imutility").joinpath("resources", "backbones"))), cache_dir() / "onnx"]


def features_key(precision: str) -> str:
    """The ``onnx.json`` entry of a content predictor's features graph in ``precision`` (``features``,
    ``features_int8``)."""
    return "features" if precision == "fp32" else f"features_{precision}"


def self_digest(side: dict[str, Any]) -> str:
    """The SHA-256 of an ``onnx.json``'s fields other than ``sha256`` (canonical JSON)."""
    rest = {k: v for k, v in side.items() if k != "sha256"}
    return hashlib.sha256(json.dumps(rest, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def legacy_card_key(raw: dict) -> str:
    """The key an ``imutility-onnx/1`` file recorded (without the pooling and the target)."""
    shaping = {k: raw.get(k) for k in ("weights_sha256", "architecture", "input", "backbone", "backbone_sha256",
                                       "features", "head")}
    return hashlib.sha256(json.dumps(shaping, sort_keys=True).encode()).hexdigest()


def verified_file(path: Path, sha256: str, what: str) -> Path:
    """``path``, once its SHA-256 is the one ``onnx.json`` recorded for it (``what`` names it in the error)."""
    from imutility.zoo.weights import file_sha256

    digest = file_sha256(path)
    if digest != sha256:
        raise PredictorLoadError(f"{path}: SHA-256 {digest[:16]}... differs from the {what} recorded in "
                                 f"{SIDECAR} ({sha256[:16]}...): corrupt or another file")
    return path


@dataclass(frozen=True)
class Graph:
    """One graph of ``onnx.json``: a plain file name and its SHA-256."""

    file: str
    sha256: str


@dataclass(frozen=True)
class Sidecar:
    """A checked ``onnx.json`` (see the module doc); ``raw`` is the JSON."""

    folder: Path
    raw: dict[str, Any]

    def fits(self, card: PredictorCard) -> bool:
        key = legacy_card_key(card.raw) if self.raw.get("format") in LEGACY_FORMATS else card_key(card.raw)
        return self.raw.get("card_key") == key

    def graph(self, key: str) -> Graph | None:
        entry = self.raw.get(key)
        if entry is None:
            return None
        where = self.folder / SIDECAR
        if not isinstance(entry, dict) or not isinstance(entry.get("file"), str) \
                or not isinstance(entry.get("sha256"), str):
            raise PredictorLoadError(f"{where}: {key} must hold a file name and its sha256")
        name = entry["file"]
        if not name or Path(name).name != name or name in (".", ".."):
            raise PredictorLoadError(f"{where}: {key}.file must be a plain file name, got {name!r}")
        return Graph(name, entry["sha256"])

    def features_columns(self) -> slice:
        cols = self.raw.get("features", {}).get("columns")
        if not (isinstance(cols, list) and len(cols) == 2 and all(isinstance(c, int) and c >= 0 for c in cols)
                and cols[0] < cols[1]):
            raise PredictorLoadError(f"{self.folder / SIDECAR}: features.columns must be [start, end], got {cols!r}")
        return slice(*cols)

    def locate(self, key: str, what: str) -> Path:
        """The verified path of graph ``key``: in the folder, or for a backbone's features in the package or the
        cache too."""
        g = self.graph(key)
        if g is None:
            raise OnnxFilesMissing(f"{self.folder / SIDECAR} names no {what}")
        places = backbone_dirs(self.folder) if key.startswith("features") else [self.folder]
        where = next((d / g.file for d in places if (d / g.file).is_file()), None)
        if where is None:
            raise OnnxFilesMissing(f"{self.folder}: the {what} {g.file} is in none of "
                                   f"{', '.join(str(d) for d in places)}")
        return verified_file(where, g.sha256, what)


def read_sidecar(folder: Path) -> Sidecar | None:
    """The folder's checked ``onnx.json``, or None when it has none."""
    path = Path(folder) / SIDECAR
    if not path.is_file():
        return None
    try:
        raw = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise PredictorLoadError(f"{path}: unreadable ({e})") from e
    if not isinstance(raw, dict) or raw.get("format") not in (SIDECAR_FORMAT, *LEGACY_FORMATS):
        raise PredictorLoadError(f"{path}: not an {SIDECAR_FORMAT} file")
    if raw.get("format") == SIDECAR_FORMAT and raw.get("sha256") != self_digest(raw):
        raise PredictorLoadError(f"{path} was edited after it was written (its sha256 does not match its content): "
                                 f"make it again with {make_graphs_command(Path(folder))}")
    return Sidecar(Path(folder), raw)


def fitting_sidecar(folder: Path, card: PredictorCard) -> Sidecar | None:
    """The folder's ``onnx.json`` if it holds the graphs of ``card``, else None."""
    side = read_sidecar(folder)
    return side if side is not None and side.fits(card) else None
