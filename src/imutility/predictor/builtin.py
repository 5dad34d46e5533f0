"""The predictors shipped inside the package, by name: one registry (as timm's), discoverable.

``list_predictors()`` names them with their one-line cards; ``"default"`` means ``default-classification``.
Torch-free.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from imutility.names import UnknownNameError

#: built-in predictors, by name (an alias first)
BUILTIN = {"default": "default-classification", "default-classification": "default-classification",
           "default-detection": "default-detection", "default-segmentation": "default-segmentation",
           "confidence-classification": "confidence-classification",
           "finetune-classification": "finetune-classification"}


def builtin_dir(name: str) -> Path:
    """The folder of a built-in predictor (close names suggested on a miss)."""
    if name not in BUILTIN:
        raise UnknownNameError("built-in predictor", name, BUILTIN)
    return Path(str(resources.files("imutility").joinpath("resources", "predictors", BUILTIN[name])))


def predictor_folder(path_or_name) -> Path:
    """A built-in name's folder, or the given folder / ``card.json``'s folder."""
    name = str(path_or_name)
    if name in BUILTIN:
        return builtin_dir(name)
    path = Path(path_or_name)
    return path.parent if path.suffix == ".json" else path


@dataclass(frozen=True)
class PredictorInfo:
    """One line of :func:`list_predictors`: a built-in predictor and what its card says of it."""

    name: str
    task: str
    architecture: str
    score: str
    description: str
    meaning: str


def list_predictors(task: str | None = None) -> list[PredictorInfo]:
    """The built-in predictors (aliases left out), optionally one task's, with their cards' first lines."""
    from imutility.predictor.card import read_card

    out = []
    for name in dict.fromkeys(BUILTIN.values()):
        card = read_card(builtin_dir(name))
        if task is None or card.task == task:
            out.append(PredictorInfo(name, card.task, card.architecture, card.score_name, card.description,
                                     card.meaning()))
    return out
