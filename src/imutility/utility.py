"""The paper's utility definitions (Sections III-IV), vectorised over numpy arrays and torch tensors.

Conventions used throughout:

* Probabilities / confidences live in [0, 1].
* A per-network label is a float: ``1.0`` useful, ``0.0`` non-useful, ``NaN`` excluded (the
  network's verdict is ambiguous or undefined for that image).
* Arrays of per-network values put the networks on the LAST axis: shape ``(..., N)``.

Every function accepts numpy arrays or torch tensors (and Python scalars) and returns the same
kind it was given; torch inputs keep their device and, for the arithmetic functions, autograd.
"""

from __future__ import annotations

import importlib
import sys
from typing import TYPE_CHECKING, Literal, TypeVar

import numpy as np

from imutility.names import unknown_name_message

if TYPE_CHECKING:
    from collections.abc import Sequence

    import torch

    ArrayLike = np.ndarray | torch.Tensor | float | int | Sequence[float]
else:
    class _Torch:
        """``torch``, imported on first use: a tensor reaches these functions only once torch is imported (see
        :func:`_is_tensor`), so numpy-only callers (the command line's start, decoding workers) never load it."""

        def __getattr__(self, name: str):
            import torch

            return getattr(torch, name)

    torch = _Torch()

T = TypeVar("T", np.ndarray, "torch.Tensor")

CombineOp = Literal["mean", "max", "min", "majority", "unanimous"]
COMBINE_OPS: tuple[str, ...] = ("mean", "max", "min", "majority", "unanimous")

#: Thresholds of the paper (Section V): correct-class softmax probability above TH -> useful,
#: below TL -> non-useful.
PAPER_TH = 0.9
PAPER_TL = 0.1
#: Detection thresholds of Eq. 6 and Section IV.
PAPER_DET_SCORE = 0.5
PAPER_DET_IOU = 0.5


# --------------------------------------------------------------------------------------------
# small numpy/torch shims
# --------------------------------------------------------------------------------------------
def _is_tensor(x: object) -> bool:
    t = sys.modules.get("torch")
    return t is not None and isinstance(x, t.Tensor)


def _is_torch(*xs: object) -> bool:
    return any(_is_tensor(x) for x in xs)


def _as_float(x: ArrayLike, like_torch: bool, ref: torch.Tensor | None = None):
    if like_torch:
        if _is_tensor(x):
            return x if x.is_floating_point() else x.to(torch.get_default_dtype())
        device = ref.device if ref is not None else None
        dtype = ref.dtype if ref is not None and ref.is_floating_point() else torch.get_default_dtype()
        return torch.as_tensor(np.asarray(x, dtype=np.float64), dtype=dtype, device=device)
    arr = np.asarray(x)
    return arr if np.issubdtype(arr.dtype, np.floating) else arr.astype(np.float64)


def _first_tensor(*xs: object) -> torch.Tensor | None:
    for x in xs:
        if _is_tensor(x):
            return x
    return None


def _check_unit_interval(name: str, x) -> None:
    """Reject confidences outside [0, 1]; NaN (excluded) is allowed."""
    if _is_tensor(x):
        finite = x[~torch.isnan(x)]
        bad = bool(((finite < 0) | (finite > 1)).any()) if finite.numel() else False
    else:
        arr = np.asarray(x, dtype=np.float64)
        finite = arr[~np.isnan(arr)]
        bad = bool(((finite < 0) | (finite > 1)).any()) if finite.size else False
    if bad:
        raise ValueError(f"{name} must be a confidence in [0, 1] (NaN marks an excluded value)")


# --------------------------------------------------------------------------------------------
# Eq. 2: full-reference confidence utility
# --------------------------------------------------------------------------------------------
def confidence_utility(phi: ArrayLike, phi_ref: ArrayLike, phi_rec: ArrayLike = 0.5):
    r"""Utility of a distorted image for one network, Eq. 2 exactly as printed in the paper.

    .. math:: U_i = \frac{\phi_i - \phi^{rec}_i}{1 - (\phi'_i - \phi^{rec}_i)}

    ``phi`` is the network's confidence in the ground truth (or the reference decision) on the
    distorted image, ``phi_ref`` (the paper's :math:`\phi'`) the same on the pristine image and
    ``phi_rec`` the recognition threshold below which the network's decision is rejected.

    Behaviour worth knowing before citing a number:

    * ``U < 0`` exactly when ``phi < phi_rec`` (the decision is lost), ``U == 0`` at ``phi == phi_rec``.
    * With ``phi == phi_ref`` (no loss at all) the value is ``(phi_ref - phi_rec) / (1 - phi_ref + phi_rec)``,
      which is 1 exactly when ``phi_ref - phi_rec == 0.5`` (with the default ``phi_rec = 0.5``: only at
      ``phi_ref == 1``); e.g. 0.4 / 0.6 = 0.667 for
      ``phi_ref = 0.9``. Values are comparable across images only for a fixed reference confidence.
      :func:`normalised_confidence_utility` is the variant that equals 1 at no loss.
    * Domain: ``phi, phi_ref`` in [0, 1], ``phi_rec`` in (0, 1]. The denominator is then at least
      ``phi_rec > 0``, so U is finite and lies in
      ``[-phi_rec / (1 - phi_ref + phi_rec), (1 - phi_rec) / phi_rec]``.
    * NaN inputs propagate (an excluded sample stays excluded).

    Raises ``ValueError`` for confidences outside [0, 1] or ``phi_rec`` outside (0, 1].
    """
    use_torch = _is_torch(phi, phi_ref, phi_rec)
    ref = _first_tensor(phi, phi_ref, phi_rec)
    phi_, ref_, rec_ = (_as_float(v, use_torch, ref) for v in (phi, phi_ref, phi_rec))
    _check_unit_interval("phi", phi_)
    _check_unit_interval("phi_ref", ref_)
    _check_rec(rec_)
    return (phi_ - rec_) / (1.0 - (ref_ - rec_))


def normalised_confidence_utility(phi: ArrayLike, phi_ref: ArrayLike, phi_rec: ArrayLike = 0.5):
    r"""Extension (not in the paper): Eq. 2 rescaled so that no loss gives exactly 1.

    .. math:: U_i = \frac{\phi_i - \phi^{rec}_i}{\phi'_i - \phi^{rec}_i}

    1 when ``phi == phi_ref``, 0 at the rejection threshold, negative once the decision is lost,
    above 1 when the distortion *raised* the confidence. Where the pristine decision is itself
    rejected (``phi_ref <= phi_rec``) there is no reference decision to lose and the value is NaN
    (excluded), mirroring the paper's exclusion of images misclassified in their pristine form.
    """
    use_torch = _is_torch(phi, phi_ref, phi_rec)
    ref = _first_tensor(phi, phi_ref, phi_rec)
    phi_, ref_, rec_ = (_as_float(v, use_torch, ref) for v in (phi, phi_ref, phi_rec))
    _check_unit_interval("phi", phi_)
    _check_unit_interval("phi_ref", ref_)
    _check_rec(rec_)
    denom = ref_ - rec_
    if use_torch:
        nan = torch.full_like(denom, float("nan"))
        safe = torch.where(denom > 0, denom, torch.ones_like(denom))
        return torch.where(denom > 0, (phi_ - rec_) / safe, nan)
    denom = np.asarray(denom, dtype=np.float64)
    num = np.asarray(phi_ - rec_, dtype=np.float64)
    out = np.divide(num, denom, out=np.full(np.broadcast(num, denom).shape, np.nan), where=denom > 0)
    return out if out.ndim else out[()]


def _check_rec(rec) -> None:
    if _is_tensor(rec):
        bad = bool(((rec <= 0) | (rec > 1) | torch.isnan(rec)).any())
    else:
        r = np.asarray(rec, dtype=np.float64)
        bad = bool(((r <= 0) | (r > 1) | np.isnan(r)).any())
    if bad:
        raise ValueError("phi_rec must lie in (0, 1]")


# --------------------------------------------------------------------------------------------
# Eq. 3-4: combining N networks
# --------------------------------------------------------------------------------------------
def combine(values: ArrayLike, op: CombineOp | str = "mean", *, mask: ArrayLike | None = None,
            threshold: float = 0.0):
    """Combine per-network utilities ``U_1..U_N`` (last axis) into one value per image, Eq. 3-4.

    Excluded values are marked by NaN in ``values`` or by ``False`` in ``mask`` (same shape).

    * ``mean``, ``max``, ``min``: over the non-excluded networks; NaN when all are excluded.
    * ``majority``: each non-excluded network votes useful when its value ``> threshold`` (0 by
      default, i.e. Section III-B: positive utility is useful; for 0/1 labels a 1 is a useful vote).
      Returns 1.0 / 0.0 by strict majority of the votes cast; a tie or no vote gives NaN.
    * ``unanimous`` (the paper's rule for its combined labels, Section IV): 1.0 when every network
      votes useful, 0.0 when every network votes non-useful, NaN otherwise. Strict: one excluded
      network excludes the image, since the paper requires agreement of *all* networks.
    """
    if op not in COMBINE_OPS:
        raise ValueError(unknown_name_message("combine operator", str(op), COMBINE_OPS))
    use_torch = _is_torch(values, mask)
    v = _as_float(values, use_torch, _first_tensor(values, mask))
    if v.ndim == 0:
        raise ValueError("combine needs an array with the networks on the last axis")
    if use_torch:
        return _combine_torch(v, op, mask, threshold)
    return _combine_numpy(np.asarray(v, dtype=np.float64), op, mask, threshold)


def _combine_numpy(v: np.ndarray, op: str, mask, threshold: float):
    if mask is not None:
        m = np.broadcast_to(np.asarray(mask, dtype=bool), v.shape)
        v = np.where(m, v, np.nan)
    excluded = np.isnan(v)
    n_valid = (~excluded).sum(-1)
    if op == "mean":
        total = np.where(excluded, 0.0, v).sum(-1)
        out = np.divide(total, n_valid, out=np.full(total.shape, np.nan), where=n_valid > 0)
    elif op in ("max", "min"):
        fill = -np.inf if op == "max" else np.inf
        red = np.where(excluded, fill, v)
        red = red.max(-1) if op == "max" else red.min(-1)
        out = np.where(n_valid > 0, red, np.nan)
    else:
        yes = ((v > threshold) & ~excluded).sum(-1)
        no = ((v <= threshold) & ~excluded).sum(-1)
        if op == "majority":
            out = np.where(yes > no, 1.0, np.where(no > yes, 0.0, np.nan))
        else:
            n = v.shape[-1]
            out = np.where(yes == n, 1.0, np.where(no == n, 0.0, np.nan))
    out = np.asarray(out, dtype=np.float64)
    return out if out.ndim else out[()]


def _combine_torch(v: torch.Tensor, op: str, mask, threshold: float) -> torch.Tensor:
    if mask is not None:
        m = torch.as_tensor(mask, dtype=torch.bool, device=v.device).expand_as(v)
        v = torch.where(m, v, torch.full_like(v, float("nan")))
    excluded = torch.isnan(v)
    n_valid = (~excluded).sum(-1)
    nan = torch.full(n_valid.shape, float("nan"), dtype=v.dtype, device=v.device)
    if op == "mean":
        total = torch.where(excluded, torch.zeros_like(v), v).sum(-1)
        return torch.where(n_valid > 0, total / n_valid.clamp(min=1), nan)
    if op in ("max", "min"):
        fill = torch.full_like(v, float("-inf") if op == "max" else float("inf"))
        red = torch.where(excluded, fill, v)
        red = red.amax(-1) if op == "max" else red.amin(-1)
        return torch.where(n_valid > 0, red, nan)
    yes = ((v > threshold) & ~excluded).sum(-1)
    no = ((v <= threshold) & ~excluded).sum(-1)
    one, zero = torch.ones_like(nan), torch.zeros_like(nan)
    if op == "majority":
        return torch.where(yes > no, one, torch.where(no > yes, zero, nan))
    n = v.shape[-1]
    return torch.where(yes == n, one, torch.where(no == n, zero, nan))


# --------------------------------------------------------------------------------------------
# Classification: Eq. 5 with the CCSP thresholds of Section IV
# --------------------------------------------------------------------------------------------
def classification_label(pristine_pred: ArrayLike, distorted_pred: ArrayLike, target: ArrayLike,
                         ccsp: ArrayLike, th: float = PAPER_TH, tl: float = PAPER_TL):
    """Binary utility label of one classifier (Eq. 5 and Section IV), per image.

    ``ccsp`` is the correct-class softmax probability on the DISTORTED image.

    * 1.0 when the pristine prediction equals ``target``, the distorted prediction equals the
      pristine one and ``ccsp > th``;
    * 0.0 when the pristine prediction is correct, the distorted one differs and ``ccsp < tl``;
    * NaN (excluded) otherwise: the pristine prediction is wrong (only the effect of the
      distortion is labelled), or the network is correct but unsure / wrong but not far off.
    """
    if not 0.0 <= tl <= th <= 1.0:
        raise ValueError(f"need 0 <= tl <= th <= 1, got tl={tl}, th={th}")
    use_torch = _is_torch(pristine_pred, distorted_pred, target, ccsp)
    if use_torch:
        dev = _first_tensor(pristine_pred, distorted_pred, target, ccsp).device
        p0, p1, t = (torch.as_tensor(x, device=dev) for x in (pristine_pred, distorted_pred, target))
        c = torch.as_tensor(ccsp, device=dev, dtype=torch.float64 if not _is_tensor(ccsp)
                            else (ccsp.dtype if ccsp.is_floating_point() else torch.float64))
        _check_unit_interval("ccsp", c)
        ok = p0 == t
        useful = ok & (p1 == p0) & (c > th)
        useless = ok & (p1 != p0) & (c < tl)
        nan = torch.full(torch.broadcast_shapes(ok.shape, c.shape), float("nan"), dtype=c.dtype, device=dev)
        return torch.where(useful, torch.ones_like(nan), torch.where(useless, torch.zeros_like(nan), nan))
    p0, p1, t = (np.asarray(x) for x in (pristine_pred, distorted_pred, target))
    c = np.asarray(ccsp, dtype=np.float64)
    _check_unit_interval("ccsp", c)
    ok = p0 == t
    useful = ok & (p1 == p0) & (c > th)
    useless = ok & (p1 != p0) & (c < tl)
    out = np.where(useful, 1.0, np.where(useless, 0.0, np.nan))
    return out if out.ndim else out[()]


def classification_label_from_probs(p_pristine: T, p_distorted: T, target: ArrayLike,
                                    th: float = PAPER_TH, tl: float = PAPER_TL) -> T:
    """:func:`classification_label` from class-probability arrays of shape ``(..., C)``."""
    t = _index_like(target, p_distorted)
    if _is_tensor(p_distorted):
        ccsp = torch.gather(p_distorted, -1, t.unsqueeze(-1)).squeeze(-1)
        return classification_label(p_pristine.argmax(-1), p_distorted.argmax(-1), t, ccsp, th, tl)
    ccsp = np.take_along_axis(np.asarray(p_distorted), t[..., None], -1)[..., 0]
    return classification_label(np.argmax(p_pristine, -1), np.argmax(p_distorted, -1), t, ccsp, th, tl)


def classification_utility(p_pristine: T, p_distorted: T, target: ArrayLike | None = None,
                           phi_rec: float = 0.5) -> T:
    """Extension: continuous Eq. 2 for one classifier from class probabilities ``(..., C)``.

    ``phi`` / ``phi_ref`` are the probabilities of the ground-truth class on the distorted /
    pristine image. Without a ground truth the pristine prediction is the reference decision
    (the paper's full-reference assumption that the pristine decision is correct).
    """
    if target is None:
        t = p_pristine.argmax(-1) if _is_tensor(p_pristine) else np.argmax(p_pristine, -1)
    else:
        t = _index_like(target, p_distorted)
    if _is_tensor(p_distorted):
        phi = torch.gather(p_distorted, -1, t.unsqueeze(-1)).squeeze(-1)
        phi_ref = torch.gather(p_pristine, -1, t.unsqueeze(-1)).squeeze(-1)
    else:
        phi = np.take_along_axis(np.asarray(p_distorted), np.asarray(t)[..., None], -1)[..., 0]
        phi_ref = np.take_along_axis(np.asarray(p_pristine), np.asarray(t)[..., None], -1)[..., 0]
    return confidence_utility(phi, phi_ref, phi_rec)


def _index_like(target: ArrayLike, like):
    if _is_tensor(like):
        return torch.as_tensor(target, dtype=torch.long, device=like.device)
    return np.asarray(target, dtype=np.int64)


# --------------------------------------------------------------------------------------------
# Detection: Eq. 6 and Section IV
# --------------------------------------------------------------------------------------------
def match_scores(gt_boxes: ArrayLike, gt_labels: ArrayLike, boxes: ArrayLike, labels: ArrayLike,
                 scores: ArrayLike, iou_threshold: float = PAPER_DET_IOU) -> np.ndarray:
    """Per ground-truth object, the best score of a detection with the same label and IoU >= threshold.

    Boxes are ``xyxy``; IoU comes from :func:`torchvision.ops.box_iou`. Returns shape ``(G,)``
    (0.0 for objects no detection matches); ``G = 0`` gives an empty array.
    """
    from torchvision.ops import box_iou

    gt_b = torch.as_tensor(np.asarray(gt_boxes, dtype=np.float64).reshape(-1, 4))
    det_b = torch.as_tensor(np.asarray(boxes, dtype=np.float64).reshape(-1, 4))
    gt_l = np.asarray(gt_labels).reshape(-1)
    det_l = np.asarray(labels).reshape(-1)
    det_s = np.asarray(scores, dtype=np.float64).reshape(-1)
    if len(gt_l) != len(gt_b) or not (len(det_l) == len(det_b) == len(det_s)):
        raise ValueError("boxes, labels and scores must have matching lengths")
    if len(gt_b) == 0:
        return np.zeros(0)
    if len(det_b) == 0:
        return np.zeros(len(gt_b))
    iou = box_iou(gt_b, det_b).numpy()
    ok = (iou >= iou_threshold) & (gt_l[:, None] == det_l[None, :])
    return np.where(ok, det_s[None, :], 0.0).max(1)


def detection_label(gt_boxes: ArrayLike, gt_labels: ArrayLike, pristine: dict, distorted: dict,
                    score_threshold: float = PAPER_DET_SCORE, iou_threshold: float = PAPER_DET_IOU,
                    require_pristine_hit: bool = False) -> float:
    """Binary utility label of one detector for one image (Eq. 6 and Section IV).

    ``pristine`` / ``distorted`` are detections ``{"boxes": (D, 4) xyxy, "labels": (D,), "scores": (D,)}``.
    1.0 when at least one ground-truth object is found -- same label, score >= ``score_threshold``,
    IoU >= ``iou_threshold`` -- in BOTH the pristine and the distorted image; 0.0 otherwise.

    Edge cases: an image without ground-truth objects has no decision to keep and is excluded
    (NaN). With ``require_pristine_hit=True`` (extension, the analog of excluding misclassified
    pristine images) images whose pristine detections find no object are excluded too, instead of
    being labelled 0 as the paper does.
    """
    phi_ref = match_scores(gt_boxes, gt_labels, pristine["boxes"], pristine["labels"], pristine["scores"],
                           iou_threshold)
    if phi_ref.size == 0:
        return float("nan")
    phi = match_scores(gt_boxes, gt_labels, distorted["boxes"], distorted["labels"], distorted["scores"],
                       iou_threshold)
    found_ref = phi_ref >= score_threshold
    if require_pristine_hit and not found_ref.any():
        return float("nan")
    return 1.0 if bool((found_ref & (phi >= score_threshold)).any()) else 0.0


def detection_utility(gt_boxes: ArrayLike, gt_labels: ArrayLike, pristine: dict, distorted: dict,
                      iou_threshold: float = PAPER_DET_IOU, phi_rec: float = 0.5) -> dict[str, float]:
    """Extension: a continuous per-image detection utility built on Eq. 2.

    ``phi`` is the confidence-weighted recall on the distorted image: the mean over ground-truth
    objects of the best same-label, IoU >= threshold detection score (0 for a missed object);
    ``phi_ref`` the same on the pristine image. Returns ``phi``, ``phi_ref``, the share of objects
    still found at ``phi_rec`` (``found``) and ``utility`` = Eq. 2 of the two. All NaN when the
    image has no ground-truth object.
    """
    phi_g_ref = match_scores(gt_boxes, gt_labels, pristine["boxes"], pristine["labels"], pristine["scores"],
                             iou_threshold)
    if phi_g_ref.size == 0:
        nan = float("nan")
        return {"phi": nan, "phi_ref": nan, "found": nan, "utility": nan}
    phi_g = match_scores(gt_boxes, gt_labels, distorted["boxes"], distorted["labels"], distorted["scores"],
                         iou_threshold)
    phi, phi_ref = float(phi_g.mean()), float(phi_g_ref.mean())
    return {
        "phi": phi,
        "phi_ref": phi_ref,
        "found": float((phi_g >= phi_rec).mean()),
        "utility": float(confidence_utility(phi, phi_ref, phi_rec)),
    }



class _CallableModule(type(sys)):
    """``imutility.utility(distorted, pristine, network=...)``: the module is also the one-call full-reference
    utility (:func:`imutility.measure.utility_of`), as an image-quality library's metric is called on two images;
    its functions stay importable as before."""

    def __call__(self, distorted, pristine, network="efficientnet_lite0", **kwargs):
        # the one call that reaches up from this floor: a facade, like the package's lazy attributes (named in
        # docs/architecture.md), resolved at call time so the floor's import graph stays below measure
        return importlib.import_module("imutility.measure").utility_of(distorted, pristine, network, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
