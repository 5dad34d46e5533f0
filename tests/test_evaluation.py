"""Within-level metrics with bootstrap intervals over photos: checked against sklearn and hand-built cases."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import balanced_accuracy_score, roc_auc_score

from imutility.evaluation.metrics import (
    auroc_table,
    best_threshold,
    matched_rejection,
    photo_bootstrap,
    reject_lowest,
    weighted_auroc,
    weighted_balanced_accuracy,
)


def test_weighted_metrics_equal_sklearn_with_sample_weights():
    rng = np.random.default_rng(0)
    s = rng.integers(0, 6, 300).astype(float)  # many ties
    y = rng.random(300) < 0.3
    w = rng.integers(0, 4, (5, 300)).astype(float)
    np.testing.assert_allclose(weighted_auroc(s, y, w), [roc_auc_score(y, s, sample_weight=x) for x in w])
    d = s > 2
    np.testing.assert_allclose(weighted_balanced_accuracy(d, y, w),
                               [balanced_accuracy_score(y, d, sample_weight=x) for x in w])
    assert np.isnan(weighted_auroc(s, np.ones(300, bool), w)).all()  # one class: undefined


def test_bootstrap_resamples_whole_photos():
    groups = np.repeat(np.arange(40), 5)  # 40 photos x 5 levels
    W = photo_bootstrap(groups, 200, seed=1)
    assert W.shape == (201, 200) and (W[0] == 1).all()
    assert (W.reshape(201, 40, 5).std(axis=2) == 0).all()  # the 5 rows of a photo share their weight
    np.testing.assert_array_equal(W.sum(1), 200)


def test_within_level_auroc_sees_through_the_level_confound():
    """A score that only tracks the level: pooled AUROC near 1, within each level 0.5."""
    rng = np.random.default_rng(0)
    n = 400
    level = np.repeat(["q=2", "q=90"], n // 2)
    y = np.where(level == "q=90", rng.random(n) < 0.9, rng.random(n) < 0.1).astype(float)
    content = y + rng.normal(0, 0.5, n)  # a content score that separates y inside each level
    rate = np.where(level == "q=90", 8.0, 0.5)  # bits per pixel: constant within a level
    W = photo_bootstrap(np.arange(n), 300)
    tab = auroc_table({"rate": rate, "content": content}, y, level, W, ["q=2", "q=90"])
    assert tab["rate"]["pooled"].value > 0.85
    assert tab["rate"]["q=2"].value == pytest.approx(0.5) and tab["rate"]["mean"].value == pytest.approx(0.5)
    assert tab["content"]["mean"].low > 0.8  # and its interval clears the level rule
    assert tab["content"]["q=2"].value == pytest.approx(roc_auc_score(y[level == "q=2"], content[level == "q=2"]))


def test_matched_rejection_hand_case():
    correct = np.array([0, 0, 1, 1, 1, 0, 1, 1], dtype=float)
    level = np.array(["a"] * 4 + ["b"] * 4)
    pred = np.array([0.1, 0.2, 0.9, 0.8, 0.7, 0.3, 0.9, 0.9])  # rejects 2 in a, 1 in b: exactly the wrong ones
    bpp = np.array([5, 4, 1, 2, 1, 2, 3, 4], dtype=float)  # would reject the right ones in a
    W = photo_bootstrap(np.arange(8), 50)
    r = matched_rejection({"pred": pred, "bpp": bpp}, "pred", correct, level, W, 0.5, ["a", "b"])
    assert r["n_reject"] == {"a": 2, "b": 1}
    assert r["top1"]["pred"]["a"].value == 1.0 and r["top1"]["pred"]["pooled"].value == 1.0
    assert r["top1"]["bpp"]["a"].value == 0.0  # kept the two wrong answers
    # bpp rejects the two correct images in a (bpp 1, 2) and the correct one in b (bpp 1): keeps 2 right of 5
    assert r["gain"]["pred"]["bpp"]["pooled"].value == pytest.approx(1.0 - 2 / 5)
    assert r["no_filter"]["pooled"].value == pytest.approx(5 / 8)


def test_reject_lowest_and_best_threshold():
    np.testing.assert_array_equal(reject_lowest(np.array([3, 1, 2, 1]), 2), [True, False, True, False])
    assert best_threshold(np.array([0.1, 0.2, 0.8, 0.9]), np.array([0, 0, 1, 1])) == 0.8


def test_a_constant_score_on_class_ordered_rows_is_the_random_baseline():
    """Rows sorted by class (as label tables are): position tie-breaking would reject whole classes; seeded random
    tie-breaking makes a constant score random rejection, whose expected top-1 is the unfiltered top-1."""
    n_class, per = 20, 30
    rng = np.random.default_rng(3)
    acc = np.linspace(0.1, 0.95, n_class)  # the first classes are the hard ones
    correct = (rng.random((n_class, per)) < acc[:, None]).astype(float).ravel()
    level = np.full(n_class * per, "q")
    pred = np.full(n_class * per, 0.9)
    pred[: n_class * per // 4] = 0.0  # the reference rejects a quarter
    W = photo_bootstrap(np.arange(n_class * per), 300, seed=2)
    r = matched_rejection({"pred": pred, "const": np.ones(n_class * per)}, "pred", correct, level, W, 0.5, ["q"])
    unfiltered = correct.mean()
    const, rand = r["top1"]["const"]["q"], r["top1"]["random"]["q"]
    assert const.low <= unfiltered <= const.high and abs(const.value - unfiltered) < 0.02
    assert abs(const.value - rand.value) < 0.02
    # by position (the old behaviour) the constant would have rejected the hardest classes: far above random
    by_position = correct[reject_lowest(np.ones(n_class * per), n_class * per // 4)].mean()
    assert by_position > const.high
    assert r["kept_share"]["q"] == pytest.approx(0.75)


def test_dedup_finds_a_resized_recompressed_copy_and_not_a_different_photo(tmp_path):
    import io

    from PIL import Image

    from conftest import require_shared
    from imutility.evaluation.dedup import dhash, near_copies

    src = require_shared("data", "imagenet-sample")
    photos = sorted(src.iterdir())[:20]
    train, test = tmp_path / "train", tmp_path / "test"
    train.mkdir()
    test.mkdir()
    for p in photos[:10]:
        (train / p.name).write_bytes(p.read_bytes())
    original = Image.open(photos[3]).convert("RGB")
    copy = original.resize((original.width * 2 // 3, original.height * 2 // 3))
    buf = io.BytesIO()
    copy.save(buf, "JPEG", quality=40)
    (test / "renamed_copy.jpg").write_bytes(buf.getvalue())
    for p in photos[10:]:  # different photos (other classes)
        (test / p.name).write_bytes(p.read_bytes())
    found = near_copies(sorted(test.iterdir()), sorted(train.iterdir()))
    assert list(found) == [str(test / "renamed_copy.jpg")]
    assert found[str(test / "renamed_copy.jpg")][0] == str(train / photos[3].name)
    assert bin(dhash(original) ^ dhash(Image.open(photos[15]).convert("RGB"))).count("1") > 10
