"""Study configurations for ``imutility reproduce``: TOML files, validated before any work starts.

Built-in configs live in ``imutility/resources/configs`` (``paper``, ``offline``, ``quick``); a path to
any other TOML file works the same way. Unknown keys are refused (a typo must not silently fall back
to a default), and every network is checked against the zoo with close-name suggestions.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tomllib
from dataclasses import asdict, dataclass, field, fields
from importlib import resources
from pathlib import Path
from typing import Any

from imutility.errors import ImutilityError
from imutility.names import UnknownNameError, unknown_name_message
from imutility.predictor.training.config import MIN_SIZE
from imutility.tasks import TASK_NAMES, get_task

TASKS = TASK_NAMES  # the tasks a study may run, in this order
#: the paper's two tasks: every study runs them; the others (segmentation, an extension) when the config names them
REQUIRED_TASKS = ("classification", "detection")


class ConfigError(ImutilityError, ValueError):
    """A study config that cannot be run as written."""


@dataclass(frozen=True)
class TaskSettings:
    """One task's data and networks."""

    data: tuple[str, ...]  # classification: one image folder; detection: COCO json file(s)
    labelers: tuple[str, ...]  # define utility (the paper's labelling ensemble)
    held_out: tuple[str, ...]  # never label; judged with and without filtering (Fig. 2, Tables III/IV)
    limit: int | None = None  # first N photos of each data set (None = all)
    labels_file: str | None = None  # classification ground truth when not in the file names
    test_data: tuple[str, ...] | None = None  # the entries of `data` whose photos may be test photos (None: all)


@dataclass(frozen=True)
class PredictorSettings:
    backbone: str = "squeezenet1_1"
    pretrained: bool = True
    recipe: str = "adamw"
    geometry: str = "crop"
    size: int = 224
    epochs: int = 3
    batch_size: int = 32
    lr: float | None = None
    max_samples: int | None = None
    # the content-aware architecture (imutility.predictor.networks.content); finetune is the paper's way
    architecture: str = "finetune"
    features: str = "confidence"
    soft_target: str | None = None
    hidden: int = 32
    dropout: float = 0.0
    weight_decay: float = 1e-4


@dataclass(frozen=True)
class ReproduceConfig:
    name: str
    description: str
    classification: TaskSettings
    detection: TaskSettings
    train_distortions: tuple[str, ...]  # specs (a preset name is expanded when loading)
    heldout_distortions: tuple[str, ...]
    predictor: PredictorSettings = field(default_factory=PredictorSettings)
    ood_network: str = "efficientnet_lite2"  # classifier whose logits give the MSP / energy scores of Fig. 1
    fig1_max_images: int = 800
    random_draws: int = 5  # draws of the random-replacement baseline (detection)
    test_fraction: float = 0.2
    seed: int = 0
    segmentation: TaskSettings | None = None  # an extension of the paper's protocol (docs/segmentation.md)

    @property
    def tasks(self) -> tuple[str, ...]:
        """The tasks this study runs, in :data:`TASKS` order: the paper's two and any other its config names."""
        return tuple(t for t in TASKS if getattr(self, t, None) is not None)

    def task(self, task: str) -> TaskSettings:
        if task not in self.tasks:
            raise UnknownNameError("task", task, self.tasks)
        return getattr(self, task)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def fingerprint(self, *keys: str) -> str:
        """A short hash of the named top-level settings: what a stage depends on."""
        d = self.as_dict()
        # a task the config does not name (None) leaves the hash as it was before that task existed: studies run
        # before segmentation was added resume without relabelling
        blob = json.dumps({k: d[k] for k in keys if d[k] is not None}, sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


def list_configs() -> list[str]:
    """Names of the built-in study configs."""
    folder = resources.files("imutility") / "resources" / "configs"
    return sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".toml"))


def config_path(name_or_path: str | os.PathLike) -> Path:
    """A built-in config's file, or the given TOML path."""
    text = str(name_or_path)
    if text.endswith(".toml") or os.sep in text or Path(text).is_file():
        path = Path(text)
        if not path.is_file():
            raise ConfigError(f"config file {path} not found")
        return path
    names = list_configs()
    if text not in names:
        raise UnknownNameError("config", text, names)
    return Path(str(resources.files("imutility") / "resources" / "configs" / f"{text}.toml"))


def load_config(name_or_path: str | os.PathLike) -> ReproduceConfig:
    """Read and validate a config (built-in name or TOML path)."""
    path = config_path(name_or_path)
    try:
        raw = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: not valid TOML ({e})") from e
    return parse_config(raw, default_name=path.stem, where=str(path))


def _check_keys(d: dict, allowed: list[str], where: str) -> None:
    for k in d:
        if k not in allowed:
            raise ConfigError(f"{where}: {unknown_name_message('setting', k, allowed)}")


def _strings(value: Any, where: str) -> tuple[str, ...]:
    if isinstance(value, str):
        return (value,)
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ConfigError(f"{where}: expected a string or a list of strings, got {value!r}")
    return tuple(value)


def _distortions(value: Any, where: str) -> tuple[str, ...]:
    """A preset name or a list of specs -> canonical specs."""
    from imutility.distort import resolve_distortions

    specs = _strings(value, where)
    try:
        if len(specs) == 1 and ":" not in specs[0]:
            dists = resolve_distortions(specs[0])
        else:
            dists = resolve_distortions(None, specs)
    except (KeyError, ValueError) as e:
        raise ConfigError(f"{where}: {e}") from e
    return tuple(d.spec for d in dists)


_POSITIVE_INTS = {"limit", "epochs", "size", "batch_size", "max_samples", "fig1_max_images", "random_draws", "hidden"}


def _check_value(key: str, value: Any, where: str) -> None:
    """Refuse values of the wrong type or range (a negative limit would drop photos silently)."""
    def bad(what: str):
        raise ConfigError(f"{where}: {key} must be {what}, got {value!r}")

    if value is None and key in ("limit", "max_samples", "lr", "labels_file"):
        return
    if key in _POSITIVE_INTS and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
        bad("a positive integer")
    if key == "seed" and (not isinstance(value, int) or isinstance(value, bool) or value < 0):
        bad("a non-negative integer")
    if key == "lr" and (not isinstance(value, int | float) or isinstance(value, bool) or value <= 0):
        bad("a positive number")
    if key == "size" and value < MIN_SIZE:
        bad(f"at least {MIN_SIZE} (pixels)")
    if key == "weight_decay" and (not isinstance(value, int | float) or isinstance(value, bool) or value < 0):
        bad("a number >= 0")
    if key == "dropout" and (not isinstance(value, int | float) or isinstance(value, bool) or not 0 <= value < 1):
        bad("a number in [0, 1)")
    if key == "pretrained" and not isinstance(value, bool):
        bad("true or false")
    if key == "test_fraction" and (not isinstance(value, int | float) or isinstance(value, bool)
                                   or not 0 < value < 1):
        bad("a number in (0, 1)")
    if key == "name" and (not isinstance(value, str) or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", value)):
        bad("a plain name (letters, digits, '.', '_', '-'; no path)")
    if key in ("description", "backbone", "recipe", "geometry", "ood_network", "labels_file") \
            and not isinstance(value, str):
        bad("a string")


def parse_config(raw: dict[str, Any], default_name: str = "custom", where: str = "config") -> ReproduceConfig:
    """A config from a parsed TOML mapping, every name checked."""
    from imutility import zoo

    top = [f.name for f in fields(ReproduceConfig) if f.name not in ("train_distortions", "heldout_distortions")]
    _check_keys(raw, [*top, "distortions"], where)
    tasks = {}
    for task in TASKS:
        if task not in raw:
            if task in REQUIRED_TASKS:
                raise ConfigError(f"{where}: the [{task}] section is missing")
            continue
        sec = dict(raw[task])
        _check_keys(sec, [f.name for f in fields(TaskSettings)], f"{where} [{task}]")
        for key in ("data", "labelers", "held_out"):
            if key not in sec:
                raise ConfigError(f"{where} [{task}]: {key!r} is required")
        ts = TaskSettings(data=_strings(sec["data"], f"[{task}] data"),
                          labelers=_strings(sec["labelers"], f"[{task}] labelers"),
                          held_out=_strings(sec["held_out"], f"[{task}] held_out"),
                          limit=sec.get("limit"), labels_file=sec.get("labels_file"),
                          test_data=_strings(sec["test_data"], f"[{task}] test_data") if "test_data" in sec else None)
        if ts.test_data is not None and set(ts.test_data) - set(ts.data):
            raise ConfigError(f"{where} [{task}]: test_data {sorted(set(ts.test_data) - set(ts.data))} "
                              "are not entries of data")
        for k in ("limit", "labels_file"):
            _check_value(k, sec.get(k), f"{where} [{task}]")
        for n in ts.labelers + ts.held_out:
            try:
                spec = zoo.get_spec(n)
            except KeyError as e:
                raise ConfigError(f"{where} [{task}]: {e}") from None
            if spec.task != task:
                raise ConfigError(f"{where} [{task}]: {n} is a {spec.task} network")
        if not ts.labelers or not ts.held_out:
            raise ConfigError(f"{where} [{task}]: needs at least one labeler and one held-out network")
        both = set(ts.labelers) & set(ts.held_out)
        if both:
            raise ConfigError(f"{where} [{task}]: {sorted(both)} cannot both label and be held out")
        if get_task(task).one_data_folder and len(ts.data) != 1:
            raise ConfigError(f"{where} [{task}]: data must name one image folder")
        tasks[task] = ts
    dist = dict(raw.get("distortions", {}))
    _check_keys(dist, ["train", "held_out"], f"{where} [distortions]")
    train = _distortions(dist.get("train", "paper-jpeg9"), "[distortions] train")
    held = _distortions(dist.get("held_out", "heldout-jpeg"), "[distortions] held_out")
    if set(train) & set(held):
        raise ConfigError(f"{where} [distortions]: {sorted(set(train) & set(held))} are both train and held-out")
    pred = dict(raw.get("predictor", {}))
    _check_keys(pred, [f.name for f in fields(PredictorSettings)], f"{where} [predictor]")
    from imutility.predictor.networks.backbones import list_backbones

    for k, v in pred.items():
        _check_value(k, v, f"{where} [predictor]")
    for k, v in raw.items():
        if not isinstance(v, dict):
            _check_value(k, v, where)
    ps = PredictorSettings(**pred)
    from imutility.predictor.networks.backbones import list_recognition_backbones

    allowed = list_recognition_backbones() if ps.architecture == "content" else list_backbones()
    if ps.architecture not in ("finetune", "content"):
        raise ConfigError(f"{where} [predictor]: architecture is finetune|content, got {ps.architecture!r}")
    if ps.backbone not in allowed:
        raise ConfigError(f"{where} [predictor]: {unknown_name_message('backbone', ps.backbone, allowed)}")
    if ps.recipe not in ("paper", "adamw") or ps.geometry not in ("crop", "resize"):
        raise ConfigError(f"{where} [predictor]: recipe is paper|adamw and geometry crop|resize")
    if ps.features not in ("confidence", "pooled"):
        raise ConfigError(f"{where} [predictor]: features is confidence|pooled, got {ps.features!r}")
    ood = raw.get("ood_network", tasks["classification"].held_out[0])
    try:
        if not get_task(zoo.get_spec(ood).task).class_probabilities:
            raise ConfigError(f"{where}: ood_network {ood} is not a classifier")
    except KeyError as e:
        raise ConfigError(f"{where}: ood_network: {e}") from None
    cfg = ReproduceConfig(
        name=raw.get("name", default_name), description=raw.get("description", ""),
        classification=tasks["classification"], detection=tasks["detection"], segmentation=tasks.get("segmentation"),
        train_distortions=train, heldout_distortions=held, predictor=ps, ood_network=ood,
        fig1_max_images=raw.get("fig1_max_images", 800), random_draws=raw.get("random_draws", 5),
        test_fraction=float(raw.get("test_fraction", 0.2)), seed=raw.get("seed", 0))
    if not 0 < cfg.test_fraction < 1:
        raise ConfigError(f"{where}: test_fraction must be in (0, 1)")
    return cfg
