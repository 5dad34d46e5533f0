"""Which rows train and which test (whole photos on one side; augmented copies only ever train), and the
metrics a trained predictor's card records (scikit-learn's / SciPy's)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from imutility.errors import InvalidInputError, SettingError


def split_by_source(sources: np.ndarray, test_fraction: float, seed: int) -> np.ndarray:
    """Boolean test mask: whole source images go to one side (sklearn's GroupShuffleSplit)."""
    from sklearn.model_selection import GroupShuffleSplit

    if not 0 < test_fraction < 1:
        raise SettingError("test_fraction must be in (0, 1)")
    gss = GroupShuffleSplit(n_splits=1, test_size=test_fraction, random_state=seed)
    _, test_idx = next(gss.split(np.zeros(len(sources)), groups=sources))
    mask = np.zeros(len(sources), dtype=bool)
    mask[test_idx] = True
    return mask


def binary_metrics(y: np.ndarray, p_useful: np.ndarray, threshold: float = 0.5) -> dict:
    """Accuracy, balanced accuracy, AUROC, F1 (useful = positive) and the confusion matrix [[TN, FP], [FN, TP]]."""
    from sklearn.metrics import accuracy_score, balanced_accuracy_score, confusion_matrix, f1_score, roc_auc_score

    y = np.asarray(y).astype(int)
    pred = (np.asarray(p_useful) >= threshold).astype(int)
    return {
        "n": int(len(y)), "n_useful": int(y.sum()), "n_non_useful": int((1 - y).sum()),
        "accuracy": float(accuracy_score(y, pred)),
        "balanced_accuracy": float(balanced_accuracy_score(y, pred)) if len(set(y)) > 1 else float("nan"),
        "auroc": float(roc_auc_score(y, p_useful)) if len(set(y)) > 1 else float("nan"),
        "f1": float(f1_score(y, pred, zero_division=0)),
        "confusion_matrix": confusion_matrix(y, pred, labels=[0, 1]).tolist(),
    }


def regression_metrics(y: np.ndarray, pred: np.ndarray) -> dict:
    from scipy.stats import pearsonr, spearmanr

    return {"n": int(len(y)), "srcc": float(spearmanr(y, pred).statistic), "plcc": float(pearsonr(y, pred).statistic),
            "rmse": float(np.sqrt(np.mean((np.asarray(y) - np.asarray(pred)) ** 2)))}


def select_split(cfg, table, usable: np.ndarray) -> tuple[np.ndarray, np.ndarray, str]:
    """(train rows, test rows, how) among the ``usable`` rows: whole photos on one side, the test side from
    ``cfg.test_sources_file`` or a seeded split; augmented copies only ever train."""
    if cfg.test_sources_file:  # a split fixed by the caller, shared by several predictors (reproduce)
        fixed = set(json.loads(Path(cfg.test_sources_file).read_text()))
        test = table["source"].isin(fixed).to_numpy().copy()
        if not test.any():
            raise InvalidInputError(f"none of the {len(fixed)} sources in {cfg.test_sources_file} is in {cfg.labels}")
        how = f"sources listed in {cfg.test_sources_file}"
    else:
        test = np.zeros(len(table), dtype=bool)
        if usable.any():
            test[usable] = split_by_source(table["source"].to_numpy()[usable], cfg.test_fraction, cfg.seed)
        how = f"{cfg.test_fraction:.0%} of sources held out (GroupShuffleSplit)"
    test &= table["augment"].isna().to_numpy() & usable  # augmented copies never judge the model
    held_out_sources = set(table["source"].to_numpy()[test])
    train = usable & ~test & ~table["source"].isin(held_out_sources).to_numpy()
    if cfg.train_distortions is not None:
        unknown = set(cfg.train_distortions) - set(table["distortion"])
        if unknown:
            raise InvalidInputError(f"train_distortions {sorted(unknown)} are not in {cfg.labels}")
        train &= table["distortion"].isin(cfg.train_distortions).to_numpy()
        how += f"; trained on {len(cfg.train_distortions)} of the {table['distortion'].nunique()} levels"
    return np.flatnonzero(train), np.flatnonzero(test), how


def split_validation(table, train_idx: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(fit rows, validation rows): ``fraction`` of the training PHOTOS held out whole (seeded, sklearn's
    GroupShuffleSplit). Augmented copies of a validation photo are dropped from both sides (they would leak it into
    the fit and are never judged). ``fraction`` 0: every training row fits, none validates."""
    if fraction == 0 or len(train_idx) == 0:
        return train_idx, train_idx[:0]
    sources = table["source"].to_numpy()[train_idx]
    original = table["augment"].isna().to_numpy()[train_idx]
    if len(set(sources[original])) < 2:
        raise InvalidInputError(f"a validation split needs at least 2 training photos, there are "
                                f"{len(set(sources[original]))} (pass val_fraction 0 to calibrate on the training "
                                "rows)")
    val_mask = np.zeros(len(train_idx), dtype=bool)
    val_mask[original] = split_by_source(sources[original], fraction, seed + 1)
    val_sources = set(sources[val_mask])
    in_val = np.isin(sources, list(val_sources))
    return train_idx[~in_val], train_idx[val_mask]


#: below these, a test figure says little: its interval spans most of [0, 1]
MIN_TEST_PHOTOS = 30
MIN_TEST_PER_CLASS = 10


def sample_warnings(test_photos: int, metrics: dict) -> list[str]:
    """What a card must say aloud about its own test figures: too few test photos, too few of a class, a binary
    predictor no better than chance."""
    out = []
    if test_photos < MIN_TEST_PHOTOS:
        out.append(f"only {test_photos} test photos (fewer than {MIN_TEST_PHOTOS}): the test figures are anecdotes; "
                   "label more photos")
    for cls in ("useful", "non_useful"):
        n = metrics.get(f"n_{cls}")
        if n is not None and n < MIN_TEST_PER_CLASS:
            out.append(f"only {n} {cls.replace('_', '-')} test images (fewer than {MIN_TEST_PER_CLASS}): AUROC and "
                       "balanced accuracy rest on too few of them")
    bal = metrics.get("balanced_accuracy")
    if bal is not None and bal == bal and bal <= 0.55:
        out.append(f"balanced accuracy {bal:.3f}: no better than chance on its test images")
    return out
