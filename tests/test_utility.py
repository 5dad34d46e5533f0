"""The paper's equations pinned to hand-computed values, numpy and torch alike."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from imutility.utility import (
    classification_label,
    classification_label_from_probs,
    classification_utility,
    combine,
    confidence_utility,
    detection_label,
    detection_utility,
    match_scores,
    normalised_confidence_utility,
)

nan = float("nan")


def same(a, b):
    return np.testing.assert_allclose(np.asarray(a, dtype=float), np.asarray(b, dtype=float), rtol=0, atol=1e-12)


# ------------------------------------------------------------------ Eq. 2
@pytest.mark.parametrize(
    ("phi", "phi_ref", "rec", "expected"),
    [
        (0.8, 0.9, 0.5, 0.3 / 0.6),  # ordinary loss
        (0.9, 0.9, 0.5, 0.4 / 0.6),  # phi == phi_ref is NOT 1 as printed
        (1.0, 1.0, 0.5, 1.0),  # ... except at phi_ref = 1, phi_rec = 0.5
        (0.2, 0.9, 0.5, -0.3 / 0.6),  # decision lost -> negative
        (0.5, 0.9, 0.5, 0.0),  # exactly at the rejection threshold
        (0.0, 1.0, 0.5, -1.0),  # the lower bound for phi_rec = 0.5
        (0.3, 0.7, 0.3, 0.0),
        (0.6, 0.6, 0.6, 0.0),  # phi_ref == phi_rec: denominator 1
    ],
)
def test_confidence_utility_values(phi, phi_ref, rec, expected):
    same(confidence_utility(phi, phi_ref, rec), expected)
    t = confidence_utility(torch.tensor(phi, dtype=torch.float64), torch.tensor(phi_ref, dtype=torch.float64), rec)
    assert isinstance(t, torch.Tensor)
    assert t.item() == pytest.approx(expected, abs=1e-12)


def test_confidence_utility_vectorised_and_nan():
    out = confidence_utility(np.array([0.8, nan, 0.2]), np.array([0.9, 0.9, 0.9]))
    same(out[[0, 2]], [0.5, -0.5])
    assert math.isnan(out[1])


def test_confidence_utility_is_differentiable():
    phi = torch.tensor([0.8], requires_grad=True)
    confidence_utility(phi, torch.tensor([0.9])).sum().backward()
    assert phi.grad.item() == pytest.approx(1 / 0.6)


@pytest.mark.parametrize("bad", [(-0.1, 0.5, 0.5), (0.5, 1.2, 0.5), (0.5, 0.5, 0.0), (0.5, 0.5, 1.5)])
def test_confidence_utility_rejects_out_of_domain(bad):
    with pytest.raises(ValueError):
        confidence_utility(*bad)


def test_normalised_utility_extension():
    same(normalised_confidence_utility(0.8, 0.9, 0.5), 0.75)
    same(normalised_confidence_utility(0.9, 0.9, 0.5), 1.0)
    same(normalised_confidence_utility(0.2, 0.9, 0.5), -0.75)
    assert math.isnan(normalised_confidence_utility(0.9, 0.4, 0.5))  # pristine decision already rejected
    t = normalised_confidence_utility(torch.tensor([0.8, 0.9]), torch.tensor([0.9, 0.4]))
    assert t[0].item() == pytest.approx(0.75) and math.isnan(t[1].item())


# ------------------------------------------------------------------ Eq. 3-4
ROWS = np.array([
    [0.5, -0.2, nan],
    [1.0, 1.0, 1.0],
    [0.0, 0.0, 0.0],
    [1.0, 0.0, 1.0],
    [nan, nan, nan],
])


@pytest.mark.parametrize(
    ("op", "expected"),
    [
        ("mean", [0.15, 1.0, 0.0, 2 / 3, nan]),
        ("max", [0.5, 1.0, 0.0, 1.0, nan]),
        ("min", [-0.2, 1.0, 0.0, 0.0, nan]),
        ("majority", [nan, 1.0, 0.0, 1.0, nan]),  # row 0: one vote each way -> tie
        ("unanimous", [nan, 1.0, 0.0, nan, nan]),  # row 0: an excluded network excludes the image
    ],
)
@pytest.mark.parametrize("backend", ["numpy", "torch"])
def test_combine(op, expected, backend):
    values = ROWS if backend == "numpy" else torch.tensor(ROWS)
    out = combine(values, op)
    assert isinstance(out, np.ndarray if backend == "numpy" else torch.Tensor)
    np.testing.assert_allclose(np.asarray(out, dtype=float), expected, atol=1e-12, equal_nan=True)


def test_combine_mask_equals_nan():
    vals = np.array([[0.5, -0.2, 0.9]])
    mask = np.array([[True, True, False]])
    same(combine(vals, "mean", mask=mask), [0.15])
    same(combine(torch.tensor(vals), "max", mask=torch.tensor(mask)), [0.5])


def test_combine_majority_threshold_and_single_row():
    assert combine(np.array([0.2, 0.3, 0.9]), "majority", threshold=0.5) == 0.0
    assert combine([0.6, 0.7, 0.1], "majority", threshold=0.5) == 1.0


def test_combine_unknown_op_suggests():
    with pytest.raises(ValueError, match="did you mean 'majority'|Did you mean 'majority'"):
        combine(ROWS, "majorty")


# ------------------------------------------------------------------ Eq. 5
def test_classification_label_cases():
    # columns: pristine pred, distorted pred, target, ccsp(distorted)
    cases = [
        (3, 3, 3, 0.95, 1.0),  # correct, kept, confident
        (3, 3, 3, 0.90, nan),  # exactly TH is not "exceeding"
        (3, 3, 3, 0.60, nan),  # kept but unsure -> excluded
        (3, 7, 3, 0.05, 0.0),  # decision lost, correct class far down
        (3, 7, 3, 0.10, nan),  # exactly TL is not "below"
        (3, 7, 3, 0.30, nan),  # lost, but the correct class still close -> excluded
        (5, 5, 3, 0.01, nan),  # pristine wrong -> excluded whatever happens
        (5, 3, 3, 0.95, nan),  # pristine wrong, distortion "fixed" it -> still excluded
    ]
    p0, p1, t, c, expected = map(np.array, zip(*cases, strict=True))
    np.testing.assert_array_equal(classification_label(p0, p1, t, c), expected)
    tt = classification_label(torch.tensor(p0), torch.tensor(p1), torch.tensor(t), torch.tensor(c))
    np.testing.assert_array_equal(tt.numpy(), expected)


def test_classification_label_custom_thresholds():
    assert classification_label(1, 1, 1, 0.7, th=0.6, tl=0.2) == 1.0
    with pytest.raises(ValueError):
        classification_label(1, 1, 1, 0.7, th=0.1, tl=0.6)


def test_classification_from_probs_and_continuous():
    p_pristine = np.array([[0.05, 0.9, 0.05], [0.2, 0.7, 0.1]])
    p_dist = np.array([[0.02, 0.95, 0.03], [0.92, 0.05, 0.03]])
    np.testing.assert_array_equal(classification_label_from_probs(p_pristine, p_dist, [1, 1]), [1.0, 0.0])
    # Eq. 2 on the ground-truth class: (0.95-.5)/(1-(.9-.5)) and (0.05-.5)/(1-(.7-.5))
    same(classification_utility(p_pristine, p_dist, [1, 1]), [0.45 / 0.6, -0.45 / 0.8])
    # without a ground truth, the pristine prediction (class 1 for both) is the reference
    same(classification_utility(p_pristine, p_dist), [0.45 / 0.6, -0.45 / 0.8])
    t = classification_utility(torch.tensor(p_pristine), torch.tensor(p_dist), torch.tensor([1, 1]))
    np.testing.assert_allclose(t.numpy(), [0.45 / 0.6, -0.45 / 0.8])


# ------------------------------------------------------------------ Eq. 6
GT = np.array([[0, 0, 10, 10], [20, 20, 40, 40]], dtype=float)
GT_L = np.array([1, 2])


def det(boxes, labels, scores):
    return {"boxes": np.asarray(boxes, float).reshape(-1, 4), "labels": np.asarray(labels),
            "scores": np.asarray(scores, float)}


PRISTINE = det([[0, 0, 10, 10], [20, 20, 40, 40]], [1, 2], [0.9, 0.8])


@pytest.mark.parametrize(
    ("distorted", "expected"),
    [
        (det([[0, 0, 10, 5]], [1], [0.6]), 1.0),  # IoU exactly 0.5 counts
        (det([[0, 0, 10, 4.9]], [1], [0.6]), 0.0),  # IoU just under 0.5
        (det([[0, 0, 10, 10]], [1], [0.5]), 1.0),  # score exactly 0.5 counts
        (det([[0, 0, 10, 10]], [1], [0.49]), 0.0),
        (det([[0, 0, 10, 10]], [2], [0.99]), 0.0),  # wrong label
        (det([[20, 20, 40, 40]], [2], [0.7]), 1.0),  # the second object is enough
        (det([], [], []), 0.0),  # no detections at all
    ],
)
def test_detection_label(distorted, expected):
    assert detection_label(GT, GT_L, PRISTINE, distorted) == expected


def test_detection_label_needs_same_object_in_both():
    pristine = det([[0, 0, 10, 10]], [1], [0.9])  # finds object 0 only
    distorted = det([[20, 20, 40, 40]], [2], [0.9])  # finds object 1 only
    assert detection_label(GT, GT_L, pristine, distorted) == 0.0


def test_detection_label_edge_cases():
    empty = det([], [], [])
    assert math.isnan(detection_label(np.zeros((0, 4)), [], PRISTINE, PRISTINE))  # no ground truth
    assert detection_label(GT, GT_L, empty, PRISTINE) == 0.0  # paper: pristine miss -> 0
    assert math.isnan(detection_label(GT, GT_L, empty, PRISTINE, require_pristine_hit=True))
    assert detection_label(GT, GT_L, PRISTINE, PRISTINE, score_threshold=0.85) == 1.0
    assert detection_label(GT, GT_L, PRISTINE, PRISTINE, score_threshold=0.95) == 0.0


def test_match_scores_best_same_label_match():
    dets = det([[0, 0, 10, 10], [0, 0, 10, 9], [0, 0, 10, 10]], [1, 1, 2], [0.3, 0.7, 0.99])
    same(match_scores(GT, GT_L, dets["boxes"], dets["labels"], dets["scores"]), [0.7, 0.0])
    assert match_scores(np.zeros((0, 4)), [], dets["boxes"], dets["labels"], dets["scores"]).shape == (0,)
    with pytest.raises(ValueError):
        match_scores(GT, [1], dets["boxes"], dets["labels"], dets["scores"])


def test_detection_utility_continuous():
    distorted = det([[0, 0, 10, 10]], [1], [0.6])
    out = detection_utility(GT, GT_L, PRISTINE, distorted)
    assert out["phi_ref"] == pytest.approx(0.85)
    assert out["phi"] == pytest.approx(0.3)
    assert out["found"] == pytest.approx(0.5)
    assert out["utility"] == pytest.approx((0.3 - 0.5) / (1 - (0.85 - 0.5)))
    assert all(math.isnan(v) for v in detection_utility(np.zeros((0, 4)), [], PRISTINE, distorted).values())


def test_combined_detection_labels_all_excluded():
    per_network = np.array([[nan, nan, nan]])
    assert math.isnan(combine(per_network, "unanimous")[0])
    assert math.isnan(combine(per_network, "majority")[0])


def test_eq2_no_loss_is_one_exactly_when_phi_ref_minus_phi_rec_is_half():
    from imutility.utility import confidence_utility

    assert confidence_utility(0.9, 0.9, phi_rec=0.4) == pytest.approx(1.0)  # 0.9 - 0.4 = 0.5
    assert confidence_utility(1.0, 1.0, phi_rec=0.5) == pytest.approx(1.0)
    assert confidence_utility(0.9, 0.9, phi_rec=0.5) == pytest.approx(0.4 / 0.6)
