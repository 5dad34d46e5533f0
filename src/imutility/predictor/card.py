"""A predictor's card, typed: what the predictor is, how it sees an image, how its outputs become the score.

The card is the predictor's declaration, as torchvision's ``Weights`` are a network's: ``card.json`` in the
predictor's folder, written by ONE function (:func:`write_card`, which both trainers call) and read by ONE
function (:func:`read_card`), which checks every field an engine, an export, the deploy spec or ``serve`` uses and
refuses a card that lacks one, or holds one of the wrong kind, in one line naming the field
(:class:`PredictorLoadError`). Everything else the trainers record (data, metrics, recipe, limitations) stays in
:attr:`PredictorCard.raw`, the JSON as written.

Also here, the vocabularies every room and the CLI take their choices from: :data:`ARCHITECTURES`,
:data:`MODES`, :data:`SCORE_NAMES`, :data:`FEATURE_SETS`. Torch-free.
"""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from imutility.errors import ImutilityError
from imutility.predictor.geometry import InputSpec, ScoreHead, TilePooling, TileSpec
from imutility.zoo.preprocess import Values

#: the format tag of every predictor card
CARD_FORMAT = "imutility-predictor/1"
#: ``finetune`` trains a backbone end to end on one window (the paper's way); ``content`` keeps a pretrained
#: classifier frozen, reads it over tiles of the whole image and trains a small head
ARCHITECTURES = ("finetune", "content")
#: ``binary``: P(useful); ``continuous``: a predicted utility
MODES = ("binary", "continuous")
#: the name of a predictor's score in every output (``predict`` lines, ``filter.csv``, the server's answers)
SCORE_NAMES = {"binary": "p_useful", "continuous": "utility"}
#: what a content predictor's head reads: the backbone's confidence features alone, or its pooled features too
FEATURE_SETS = ("confidence", "pooled")
#: what a fine-tuned predictor sees: a native-resolution crop or the resized image
GEOMETRIES = ("crop", "resize")
#: the largest input side a card may declare
MAX_SIDE = 4096


class PredictorLoadError(ImutilityError, RuntimeError):
    """A predictor that cannot be used: missing, corrupt, wrong hash, a card field missing or of the wrong kind,
    or made for another task."""


@dataclass(frozen=True)
class ContentParts:
    """What only a content predictor's card has: its frozen backbone's weights, the head's shape, the pooling."""

    backbone_sha256: str
    features: str
    n_features: int
    hidden: int
    dropout: float
    pooling: TilePooling


@dataclass(frozen=True)
class PredictorCard:
    """A checked card (see the module doc). ``raw`` is the JSON as written; the typed fields are what code reads."""

    task: str
    architecture: str
    mode: str
    backbone: str
    weights_file: str
    weights_sha256: str
    values: Values
    window: InputSpec | None  # finetune
    tiles: TileSpec | None  # content
    content: ContentParts | None
    raw: dict[str, Any] = field(repr=False, compare=False, default_factory=dict)

    @property
    def score_name(self) -> str:
        return SCORE_NAMES[self.mode]

    @property
    def binary(self) -> bool:
        return self.mode == "binary"

    @property
    def name(self) -> str:
        return str(self.raw.get("name", ""))

    @property
    def description(self) -> str:
        return str(self.raw.get("description", ""))

    @property
    def head(self) -> ScoreHead:
        """How this predictor's network outputs become its score."""
        if self.content is not None:
            return ScoreHead("sigmoid" if self.binary else "identity", self.content.pooling)
        return ScoreHead("softmax" if self.binary else "identity")

    @property
    def size(self) -> int:
        """The side of the square the network sees (a window or a tile)."""
        return self.tiles.size if self.tiles is not None else self.window.size

    @property
    def key(self) -> str:
        """What the ONNX graphs of ``onnx.json`` depend on (:func:`card_key`)."""
        return card_key(self.raw)

    def meaning(self) -> str:
        """One line saying what the score means: which networks, which task, relative to what. Shown wherever a
        score is (``predict``, ``imutility models``, the server's answers); derived from the card, never written
        by hand, so it cannot drift from what the predictor was trained on."""
        raw = self.raw
        names = [str(n) for n in raw.get("labelers") or []]
        nets = (", ".join(names[:-1]) + (" and " if len(names) > 1 else "") + names[-1]) if names else \
            "its labelling networks"
        relative = _RELATIVE.get(str(raw.get("reference", "ground-truth")), _RELATIVE["ground-truth"])
        if self.mode == "continuous":
            column = (raw.get("target") or {}).get("column", "utility")
            return (f"utility: the predicted {column} of the {self.task} networks {nets} on this image (from the "
                    "distorted image alone; higher keeps more)")
        return (f"p_useful: the probability that the {self.task} networks {nets} all still keep {relative} on this "
                "image (the paper's unanimous useful label), judged from the distorted image alone; not a guarantee "
                "for other networks")


_RELATIVE = {"ground-truth": "their correct decision (the photo's ground truth)",
             "pristine": "their own decision on the pristine photo"}


def card_key(raw: dict) -> str:
    """What the graphs of ``onnx.json`` depend on in a card: the weights, the architecture, the input (another size
    is another graph), the head and the pooling. ``onnx.json`` records it; a card edited since is refused there."""
    import hashlib

    shaping = {k: raw.get(k) for k in ("weights_sha256", "architecture", "input", "backbone", "backbone_sha256",
                                       "features", "head", "pool", "target")}
    return hashlib.sha256(json.dumps(shaping, sort_keys=True).encode()).hexdigest()


# ---------------------------------------------------------------------------------------------------------- reading
_HEX64 = re.compile(r"[0-9a-f]{64}")


class _Fields:
    """Typed access to a card's JSON: every refusal names the card and the field."""

    def __init__(self, raw: dict, where: str):
        self.raw, self.where = raw, where

    def bad(self, name: str, want: str, value: Any):
        raise PredictorLoadError(f"{self.where}: card field {name} must be {want}, got {value!r}")

    def get(self, name: str, default: Any = ...) -> Any:
        node: Any = self.raw
        for part in name.split("."):
            if not isinstance(node, dict) or part not in node:
                if default is not ...:
                    return default
                raise PredictorLoadError(f"{self.where}: card field {name} is missing")
            node = node[part]
        return node

    def text(self, name: str, choices: tuple[str, ...] | None = None, default: Any = ...) -> str:
        v = self.get(name, default)
        if not isinstance(v, str) or (choices is not None and v not in choices):
            self.bad(name, f"one of {', '.join(choices)}" if choices else "a string", v)
        return v

    def integer(self, name: str, lo: int = 1, hi: int = MAX_SIDE) -> int:
        v = self.get(name)
        if not isinstance(v, int) or isinstance(v, bool) or not lo <= v <= hi:
            self.bad(name, f"an integer in {lo}..{hi}", v)
        return v

    def number(self, name: str, lo: float = -math.inf, hi: float = math.inf) -> float:
        v = self.get(name)
        if not isinstance(v, int | float) or isinstance(v, bool) or not math.isfinite(v) or not lo <= v <= hi:
            self.bad(name, "a finite number" + (f" in [{lo}, {hi}]" if math.isfinite(lo) else ""), v)
        return float(v)

    def digest(self, name: str) -> str:
        v = self.get(name)
        if not isinstance(v, str) or not _HEX64.fullmatch(v):
            self.bad(name, "a 64-hex-digit SHA-256", v)
        return v

    def values(self, prefix: str) -> Values:
        mean, std = self.get(f"{prefix}.mean"), self.get(f"{prefix}.std")
        for name, v in (("mean", mean), ("std", std)):
            if not isinstance(v, list | tuple) or len(v) != 3:
                self.bad(f"{prefix}.{name}", "3 numbers", v)
        try:
            return Values(self.text(f"{prefix}.channels", ("RGB", "BGR")), self.number(f"{prefix}.scale"),
                          tuple(mean), tuple(std))
        except ValueError as e:
            raise PredictorLoadError(f"{self.where}: card field {prefix}: {e}") from e


def parse_card(raw: Any, where: str | os.PathLike = "card") -> PredictorCard:
    """A :class:`PredictorCard` from a card's JSON, every field code reads checked (see the module doc)."""
    from imutility.tasks import TASK_NAMES

    where = str(where)
    if not isinstance(raw, dict) or raw.get("format") != CARD_FORMAT:
        fmt = raw.get("format") if isinstance(raw, dict) else type(raw).__name__
        raise PredictorLoadError(f"{where}: not an imutility predictor card (format {fmt!r})")
    f = _Fields(raw, where)
    task = f.text("task", TASK_NAMES)
    arch = f.text("architecture", ARCHITECTURES, default="finetune")
    mode = f.text("target.mode", MODES)
    weights_file = f.text("weights_file", default="model.pt")
    if not weights_file or Path(weights_file).name != weights_file or weights_file in (".", ".."):
        f.bad("weights_file", "a file name in the predictor folder", weights_file)
    common = dict(task=task, architecture=arch, mode=mode, backbone=f.text("backbone"), weights_file=weights_file,
                  weights_sha256=f.digest("weights_sha256"), raw=raw)
    if arch == "finetune":
        values = f.values("input")
        window = InputSpec(size=f.integer("input.size"), geometry=f.text("input.geometry", GEOMETRIES),
                           channels=values.channels, scale=values.scale, mean=values.mean, std=values.std)
        return PredictorCard(values=values, window=window, tiles=None, content=None, **common)
    values = f.values("input")
    tiles = TileSpec(size=f.integer("input.tiles.size"), max_tiles=f.integer("input.tiles.max_tiles", 1, 64))
    pooling = TilePooling(f.number("pool.mean_weight"), f.number("pool.min_weight"), f.number("pool.bias"))
    parts = ContentParts(backbone_sha256=f.digest("backbone_sha256"), features=f.text("features", FEATURE_SETS),
                         n_features=f.integer("head.n_features", 1, 1 << 16),
                         hidden=f.integer("head.hidden", 1, 1 << 16), dropout=f.number("head.dropout", 0.0, 1.0),
                         pooling=pooling)
    return PredictorCard(values=values, window=None, tiles=tiles, content=parts, **common)


def read_card(path: str | os.PathLike) -> PredictorCard:
    """The card of a predictor folder, or of a ``card.json`` path; its weights file must be in the folder."""
    path = Path(path)
    card_path = path if path.suffix == ".json" else path / "card.json"
    if not card_path.is_file():
        raise PredictorLoadError(f"no predictor at {path}: {card_path} not found")
    try:
        raw = json.loads(card_path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise PredictorLoadError(f"{card_path}: unreadable model card ({e})") from e
    card = parse_card(raw, card_path)
    weights = card_path.parent / card.weights_file
    if not weights.is_file():
        raise PredictorLoadError(f"{weights} is missing (the card's weights_file, in the predictor folder)")
    return card


# ---------------------------------------------------------------------------------------------------------- writing
def write_card(folder: str | os.PathLike, fields: dict[str, Any], config: dict[str, Any] | None = None,
               weights_file: str = "model.pt") -> PredictorCard:
    """The one card writer: ``fields`` (what the trainer knows) between the fields every card has (the format
    first; then the package and torch versions, the weights' file and SHA-256, the training config), checked by
    :func:`parse_card` before it is written atomically as ``folder/card.json``. Returns the card."""
    from imutility import __version__, atomic
    from imutility.zoo.weights import file_sha256

    folder = Path(folder)
    raw: dict[str, Any] = {"format": CARD_FORMAT, **fields}
    try:
        import torch

        raw.setdefault("torch_version", torch.__version__.split("+")[0])
    except ImportError:  # a card written without torch (none of ours; a user's tool could)
        pass
    raw.update({"package_version": __version__, "weights_file": weights_file,
                "weights_sha256": file_sha256(folder / weights_file)})
    if config is not None:
        raw["config"] = config
    card = parse_card(json.loads(json.dumps(raw, default=str)), folder / "card.json")
    atomic.write_json(folder / "card.json", card.raw)
    return card
