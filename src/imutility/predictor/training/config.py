"""How a predictor is trained, as typed settings (:class:`TrainConfig`), checked before any work; and the
training vocabularies the CLI and the study configs take their choices from. Torch-free at import."""

from __future__ import annotations

from dataclasses import dataclass

from imutility.errors import ImutilityError, SettingError
from imutility.predictor.card import ARCHITECTURES, FEATURE_SETS, GEOMETRIES, MODES

#: ``paper``: SGD lr 1e-4, plain cross-entropy; ``adamw``: AdamW + cosine, class-weighted loss
RECIPES = ("paper", "adamw")
#: training precisions (``fp32``: none; ``bf16``: autocast). fp16 is not offered: it needs loss scaling, and bf16
#: trains these networks as well without it
TRAIN_PRECISIONS = ("fp32", "bf16")
#: the smallest input a predictor trains on: every backbone here shrinks its input 32-fold
MIN_SIZE = 32


class InsufficientLabelsError(ImutilityError, ValueError):
    """Too few labelled rows (or one class only) to train and test a predictor."""


def autocast_dtype(precision: str):
    """The autocast dtype of a training precision (None for fp32)."""
    if precision not in TRAIN_PRECISIONS:
        raise SettingError(f"precision must be one of {', '.join(TRAIN_PRECISIONS)}, got {precision!r}")
    if precision == "fp32":
        return None
    import torch

    return torch.bfloat16


@dataclass
class TrainConfig:
    labels: str  # a labelling output folder (holds labels.parquet and config.json)
    architecture: str = "finetune"
    mode: str = "binary"  # "binary" (useful / non-useful) or "continuous" (regress a utility)
    label_column: str = "label"  # binary target: "label" (combined) or "<labeler>.label"
    target_column: str = "utility_mean"  # continuous target
    backbone: str = "squeezenet1_1"
    pretrained: bool = True
    recipe: str = "adamw"  # "paper" or "adamw"
    geometry: str = "crop"  # "crop" (native resolution) or "resize"
    size: int = 224
    epochs: int = 10
    batch_size: int = 32
    lr: float | None = None  # default: 1e-4 (paper), 1e-3 (adamw)
    weight_decay: float = 1e-4
    test_fraction: float = 0.2
    seed: int = 0
    device: str = "cpu"
    max_samples: int | None = None  # cap on training rows (quick runs, tests)
    workers: int = 0  # finetune: DataLoader processes decoding and augmenting; content: feature-decoding threads
    precision: str = "fp32"  # "bf16": the training steps under autocast (CUDA, or a CPU with bf16 support)
    test_sources_file: str | None = None  # JSON list of source paths to test on (else a seeded split)
    models: str | None = None  # the folder of the offline model files (default: $IMUTILITY_MODELS, ../shared/models)
    train_distortions: list[str] | None = None  # train only on these levels (test on all): held-out levels
    # content architecture only
    features: str = "confidence"  # "confidence" (the classifier's 5 confidence features) or "pooled" (+ pooled)
    soft_target: str | None = None  # binary mode: a dense [0, 1] column to distil, then calibrate on label_column
    max_tiles: int = 4
    hidden: int = 32
    dropout: float = 0.0
    # content, binary with a soft target: the share of the TRAINING photos held out (whole photos) on which the
    # head is calibrated and its validation figures taken (design choices are made on these, never on test photos);
    # 0: calibrate on the training rows themselves (how predictors before 0.6.0 were made)
    val_fraction: float = 0.1
    # content: weight of a loss term on what separates images of one level (their deviations from the level mean);
    # 0: the plain loss (every shipped predictor)
    within_level_weight: float = 0.0

    def validate(self) -> None:
        """Refuse settings that cannot train (a one-line :class:`ValueError`)."""
        choices = {"architecture": ARCHITECTURES, "mode": MODES, "recipe": RECIPES, "geometry": GEOMETRIES,
                   "features": FEATURE_SETS}
        for k, allowed in choices.items():
            if getattr(self, k) not in allowed:
                raise SettingError(f"{k} must be one of {', '.join(allowed)}, got {getattr(self, k)!r}")
        for k in ("epochs", "batch_size", "size", "max_tiles", "hidden"):
            v = getattr(self, k)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise SettingError(f"{k} must be a positive integer, got {v!r}")
        if self.size < MIN_SIZE:
            raise SettingError(f"size must be at least {MIN_SIZE} pixels (the backbones shrink their input 32-fold), "
                             f"got {self.size}")
        if not isinstance(self.weight_decay, int | float) or isinstance(self.weight_decay, bool) \
                or not self.weight_decay >= 0:
            raise SettingError(f"weight_decay must be a number >= 0, got {self.weight_decay!r}")
        if self.lr is not None and not (isinstance(self.lr, int | float) and self.lr > 0):
            raise SettingError(f"lr must be a positive number, got {self.lr!r}")
        if self.max_samples is not None and (not isinstance(self.max_samples, int) or self.max_samples < 1):
            raise SettingError(f"max_samples must be a positive integer, got {self.max_samples!r}")
        if not isinstance(self.dropout, int | float) or isinstance(self.dropout, bool) or not 0 <= self.dropout < 1:
            raise SettingError(f"dropout must be in [0, 1), got {self.dropout!r}")
        if not isinstance(self.val_fraction, int | float) or isinstance(self.val_fraction, bool) \
                or not 0 <= self.val_fraction < 1:
            raise SettingError(f"val_fraction must be in [0, 1), got {self.val_fraction!r}")
        if not isinstance(self.within_level_weight, int | float) or isinstance(self.within_level_weight, bool) \
                or not self.within_level_weight >= 0:
            raise SettingError(f"within_level_weight must be a number >= 0, got {self.within_level_weight!r}")
        if self.precision not in TRAIN_PRECISIONS:
            raise SettingError(f"precision must be one of {', '.join(TRAIN_PRECISIONS)}, got {self.precision!r}")
        if not isinstance(self.workers, int) or isinstance(self.workers, bool) or self.workers < 0:
            raise SettingError(f"workers must be a non-negative integer, got {self.workers!r}")
        if self.device != "cpu":
            from imutility.predictor.runtime.torch_engines import check_device

            check_device(str(self.device))  # the machine's doing, not the settings': PredictorLoadError (exit 1)
