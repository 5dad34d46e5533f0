"""COCO detectors exported to ONNX (YOLOX-nano, NanoDet-m, FastestDet), each with its own head decoder.

Every detector: declared preprocessing -> ONNX Runtime -> its decoder -> candidates in network pixels
-> back to original pixels (:meth:`Preprocess.geometry`) -> class-wise NMS -> official COCO ids.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torchvision.ops import batched_nms

from imutility.zoo.base import COCO80_IDS, Detections, Detector, LabelerSpec, softmax

_COCO80 = np.asarray(COCO80_IDS, dtype=np.int64)


def finish_detections(boxes_net: np.ndarray, scores: np.ndarray, cls80: np.ndarray, spec: LabelerSpec,
                      width: int, height: int, score_threshold: float) -> Detections:
    """Threshold, map to original pixels, clip, class-wise NMS, top-k, COCO ids."""
    keep = scores >= score_threshold
    boxes_net, scores, cls80 = boxes_net[keep], scores[keep], cls80[keep]
    if len(scores) == 0:
        return Detections.empty()
    sx, sy, ox, oy = spec.preprocess.geometry(width, height)
    boxes = (boxes_net - np.array([ox, oy, ox, oy])) / np.array([sx, sy, sx, sy])
    boxes = np.clip(boxes, 0, [width, height, width, height])
    order = batched_nms(torch.from_numpy(boxes).float(), torch.from_numpy(scores).float(),
                        torch.from_numpy(cls80), spec.options.nms_iou).numpy()
    order = order[: spec.options.max_detections]
    return Detections(boxes[order].astype(np.float64), _COCO80[cls80[order]], scores[order].astype(np.float64))


class OnnxDetector(Detector):
    """Base: one image per run (these graphs have a fixed batch of 1)."""

    def __init__(self, spec: LabelerSpec, path: Path, score_threshold: float | None = None):
        from imutility.zoo.backends.ort import ort_session

        self.spec = spec
        self.session = ort_session(path)
        self.input_name = self.session.get_inputs()[0].name
        self.output_names = [o.name for o in self.session.get_outputs()]
        self.score_threshold = (spec.options.score_threshold or 0.05) if score_threshold is None \
            else score_threshold
        self.batch_size = spec.options.batch_size or 32

    def _detect(self, images: Sequence[Image.Image]) -> list[Detections]:
        out = []
        for im in images:
            x = self.preprocess([im])
            outputs = dict(zip(self.output_names, self.session.run(None, {self.input_name: x}), strict=True))
            boxes, scores, cls = self.decode(outputs)
            out.append(finish_detections(boxes, scores, cls, self.spec, im.width, im.height, self.score_threshold))
        return out

    def decode(self, outputs: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Raw outputs -> (boxes xyxy in network pixels, score, class index 0..79) per candidate."""
        raise NotImplementedError


def _grid(size: int, stride: int) -> tuple[np.ndarray, np.ndarray]:
    n = size // stride
    yv, xv = np.meshgrid(np.arange(n), np.arange(n), indexing="ij")
    return xv.reshape(-1).astype(np.float32), yv.reshape(-1).astype(np.float32)


class YoloxDetector(OnnxDetector):
    """YOLOX: anchor-free grid over strides 8/16/32; xy=(o+grid)*s, wh=exp(o)*s, score=obj*cls."""

    def decode(self, outputs):
        out = next(iter(outputs.values()))[0]
        size = self.spec.preprocess.size[0]
        gx, gy, st = [], [], []
        for s in (8, 16, 32):
            x, y = _grid(size, s)
            gx.append(x)
            gy.append(y)
            st.append(np.full(len(x), s, np.float32))
        gx, gy, st = map(np.concatenate, (gx, gy, st))
        cx = (out[:, 0] + gx) * st
        cy = (out[:, 1] + gy) * st
        w = np.exp(out[:, 2]) * st
        h = np.exp(out[:, 3]) * st
        cls_scores = out[:, 4:5] * out[:, 5:]
        cls = cls_scores.argmax(1)
        return np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], 1), cls_scores.max(1), cls


class NanoDetDetector(OnnxDetector):
    """NanoDet (GFL head): per stride, sigmoid class scores and an 8-bin distance distribution per side."""

    def decode(self, outputs):
        size = self.spec.preprocess.size[0]
        boxes, scores, classes = [], [], []
        for s in (8, 16, 32):
            cls = outputs[f"cls_pred_stride_{s}"][0]
            dis = softmax(outputs[f"dis_pred_stride_{s}"][0].reshape(-1, 8).astype(np.float64))
            d = (dis @ np.arange(8)).reshape(-1, 4) * s
            x, y = _grid(size, s)
            cx, cy = x * s + 0.5 * (s - 1), y * s + 0.5 * (s - 1)
            boxes.append(np.stack([cx - d[:, 0], cy - d[:, 1], cx + d[:, 2], cy + d[:, 3]], 1))
            scores.append(cls.max(1))
            classes.append(cls.argmax(1))
        return np.concatenate(boxes), np.concatenate(scores), np.concatenate(classes)


class FastestDetDetector(OnnxDetector):
    """FastestDet: one 22x22 map; obj ch0, box ch1-4 (tanh offsets, sigmoid sizes), classes ch5+."""

    def decode(self, outputs):
        fm = next(iter(outputs.values()))[0].transpose(1, 2, 0).astype(np.float64)  # H, W, 85
        gh, gw = fm.shape[:2]
        yy, xx = np.meshgrid(np.arange(gh), np.arange(gw), indexing="ij")
        obj, cls = fm[..., 0], fm[..., 5:]
        score = np.clip(obj, 0, None) ** 0.6 * np.clip(cls.max(-1), 0, None) ** 0.4
        cx = (xx + np.tanh(fm[..., 1])) / gw
        cy = (yy + np.tanh(fm[..., 2])) / gh
        bw, bh = 1 / (1 + np.exp(-fm[..., 3])), 1 / (1 + np.exp(-fm[..., 4]))
        h, w = self.spec.preprocess.size
        boxes = np.stack([(cx - bw / 2) * w, (cy - bh / 2) * h, (cx + bw / 2) * w, (cy + bh / 2) * h], -1)
        return boxes.reshape(-1, 4), score.reshape(-1), cls.argmax(-1).reshape(-1)


_COCO_ID_TO_80 = {cid: i for i, cid in enumerate(COCO80_IDS)}


class XyxyDetector(OnnxDetector):
    """A graph that decodes and (usually) suppresses itself: one output of (N, 6) rows ``x1 y1 x2 y2 score class``
    in network pixels (a batch axis of 1 is allowed), as end-to-end exports give. ``options.kwargs["classes"]``:
    ``coco80`` (class i is the i-th COCO id) or ``coco-ids`` (the official ids; ids outside the 80 are dropped)."""

    def decode(self, outputs):
        rows = np.asarray(next(iter(outputs.values())), dtype=np.float64)
        rows = rows.reshape(-1, rows.shape[-1]) if rows.size else np.zeros((0, 6))
        if rows.shape[1] != 6:
            raise RuntimeError(f"{self.name}: expected (N, 6) rows x1 y1 x2 y2 score class, got {rows.shape}")
        cls = np.rint(rows[:, 5]).astype(np.int64)
        if self.spec.options.kwargs.get("classes") == "coco-ids":
            cls = np.asarray([_COCO_ID_TO_80.get(int(c), -1) for c in cls], dtype=np.int64)
        ok = (cls >= 0) & (cls < len(COCO80_IDS)) & np.isfinite(rows[:, :5]).all(1)
        return rows[ok, :4], rows[ok, 4], cls[ok]


def _builder(cls: type[OnnxDetector]):
    def build(spec: LabelerSpec, weights_path: Path | None, score_threshold: float | None = None,
              **_: object) -> OnnxDetector:
        if weights_path is None:
            raise ValueError(f"{spec.name}: an ONNX model has no random-initialised form")
        return cls(spec, weights_path, score_threshold)

    return build


build_yolox = _builder(YoloxDetector)
build_nanodet = _builder(NanoDetDetector)
build_fastestdet = _builder(FastestDetDetector)
build_xyxy = _builder(XyxyDetector)
