"""Model zoo: real pretrained classifiers and detectors behind two interfaces.

``list_labelers(task)`` / ``get_labeler(name)`` are the registry's pair, as in timm. A
:class:`Classifier` maps images of any size and mode to probabilities over the 1000 ImageNet-1k
classes in the standard order; a :class:`Detector` maps them to per-image :class:`Detections` with
official COCO category ids. Each entry's weights, preprocessing and provenance are declared data
(:class:`LabelerSpec`); weights are looked up, hash-checked and never downloaded (see
:mod:`imutility.zoo.weights`).
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass
from functools import lru_cache

from imutility.names import UnknownNameError
from imutility.zoo.base import (
    COCO80_IDS,
    VOC_CLASSES,
    Classifier,
    Detections,
    Detector,
    Labeler,
    LabelerRecipe,
    LabelerSpec,
    Segmentation,
    Segmenter,
)
from imutility.zoo.preprocess import Preprocess
from imutility.zoo.weights import (
    WeightsError,
    WeightsHashError,
    WeightsNotFoundError,
    WeightsSpec,
    models_dir,
    resolve,
)

__all__ = [
    "COCO80_IDS", "VOC_CLASSES", "Segmentation", "Segmenter",
    "Classifier", "Detections", "Detector", "Labeler", "LabelerSpec", "Preprocess",
    "WeightsError", "WeightsHashError", "WeightsNotFoundError", "WeightsSpec", "Availability",
    "LabelerRecipe", "availability", "get_labeler", "get_spec", "list_labelers", "models_dir", "rebuild",
    "register",
]

TASKS = ("classification", "detection", "segmentation")


@lru_cache(maxsize=1)
def _declared() -> dict[str, LabelerSpec]:
    from imutility.zoo.entries import all_entries

    return {e.name: e for e in all_entries()}


#: labelers registered in this process (:func:`register`), after the declared ones
_CUSTOM: dict[str, LabelerSpec] = {}


def _registry() -> dict[str, LabelerSpec]:
    return {**_declared(), **_CUSTOM}


def register(spec: LabelerSpec | str | os.PathLike) -> LabelerSpec:
    """Add a labeler to the registry: a :class:`LabelerSpec`, or a spec file (:mod:`imutility.zoo.custom`).
    Registering the same spec again is a no-op; a zoo name, or another spec under a registered name, is refused."""
    from imutility.zoo.custom import CustomSpecError, load_spec

    if not isinstance(spec, LabelerSpec):
        spec = load_spec(spec)
    if spec.name in _declared():
        raise CustomSpecError(f"{spec.name!r} is a zoo labeler's name; give yours another")
    known = _CUSTOM.get(spec.name)
    if known is not None and known != spec:
        raise CustomSpecError(f"another labeler is already registered as {spec.name!r} ({known.weights.source})")
    _CUSTOM[spec.name] = spec
    return spec


def list_labelers(task: str | None = None, paper: bool | None = None) -> list[str]:
    """Registered labeler names, optionally only one task's, or only the paper's (or only offline) ones."""
    if task is not None and task not in TASKS:
        raise UnknownNameError("task", task, TASKS)
    return [n for n, s in _registry().items()
            if (task is None or s.task == task) and (paper is None or s.paper == paper)]


def get_spec(name: str) -> LabelerSpec:
    """The declared entry of a labeler (close names are suggested on a miss)."""
    try:
        return _registry()[name]
    except KeyError:
        raise UnknownNameError("labeler", name, _registry()) from None


def get_labeler(name: str, *, pretrained: bool = True, weights_path: str | os.PathLike | None = None,
                models: str | os.PathLike | None = None, device: str = "cpu", verify: bool = True,
                **options: object) -> Labeler:
    """Build a labeler with its weights.

    ``weights_path`` overrides the lookup (explicit path > models folder / package > torch cache).
    ``pretrained=False`` gives a randomly initialised network (torch backends only), for tests.
    ``verify=False`` skips the hash check, for fine-tuned files of the same architecture.
    Extra ``options`` go to the backend (``score_threshold`` for detectors, ``runtime`` for
    EfficientNet-Lite: ``"onnx"`` or ``"torch"``).
    """
    spec = get_spec(name)
    _check_requirements(spec)
    path = resolve(spec.weights, weights_path, models, verify=verify) if pretrained else None
    labeler = spec.builder(spec, path, device=device, **options)
    labeler.recipe = LabelerRecipe(spec, None if path is None else str(path), device, verify,
                                   tuple(sorted(options.items())))
    if spec.custom and path is not None:
        from imutility.zoo.custom import probe

        probe(labeler)
    return labeler


def rebuild(recipe: LabelerRecipe, device: str | None = None) -> Labeler:
    """The labeler ``recipe`` describes, built again (its file hash-checked again), e.g. in a worker process.
    A custom labeler's spec travels in the recipe: nothing needs registering there. On a cluster the weight
    file must be at the same path on every machine."""
    spec = recipe.spec
    _check_requirements(spec)
    path = None if recipe.weights_path is None else resolve(spec.weights, recipe.weights_path, verify=recipe.verify)
    labeler = spec.builder(spec, path, device=device or recipe.device, **dict(recipe.options))
    labeler.recipe = recipe
    return labeler


@dataclass(frozen=True)
class Availability:
    name: str
    ok: bool
    detail: str  # the weights' path when ok, else why not


def availability(name: str, models: str | os.PathLike | None = None, verify: bool = True) -> Availability:
    """Whether a labeler can be built here, and if not, why (missing package, file or hash)."""
    spec = get_spec(name)
    try:
        _check_requirements(spec)
        path = resolve(spec.weights, None, models, verify=verify)
    except (ImportError, WeightsError) as e:
        return Availability(name, False, str(e).splitlines()[0])
    return Availability(name, True, str(path))


def _check_requirements(spec: LabelerSpec) -> None:
    missing = [m for m in spec.options.requires if importlib.util.find_spec(m) is None]
    if missing:
        raise ImportError(f"{spec.name} needs the Python module(s) {', '.join(missing)}: "
                          "pip install 'imutility[train,zoo]'")


def describe(name: str) -> dict[str, object]:
    """A JSON-ready card of a labeler's declared data."""
    s = get_spec(name)
    return {"name": s.name, "task": s.task, "backend": s.backend, "paper": s.paper,
            "description": s.description, "preprocess": s.preprocess.describe(),
            "weights": {"file": s.weights.file, "sha256": s.weights.sha256, "source": s.weights.source,
                        "license": s.weights.license, "url": s.weights.url},
            "metrics": s.metrics, "classes": list(s.classes) if s.classes is not None else
            {"classification": "imagenet-1k", "detection": "coco"}.get(s.task)}

