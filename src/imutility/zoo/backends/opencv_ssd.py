"""SSD-MobileNetV2 (TF Object Detection API frozen graph) through OpenCV DNN; its graph ends in NMS."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from imutility.zoo.base import Detections, Detector, LabelerSpec


class OpenCVSSDDetector(Detector):
    """Output rows (image, class id, score, x1, y1, x2, y2), boxes normalised to the image; the class
    ids are the TF OD API's 90-id map, which is COCO's official id space."""

    def __init__(self, spec: LabelerSpec, pb: Path, pbtxt: Path, score_threshold: float | None = None):
        try:
            import cv2
        except ImportError as e:
            raise ImportError("the OpenCV SSD needs: pip install 'opencv-python-headless<5'") from e
        from imutility.zoo.base import default_threads

        cv2.setNumThreads(default_threads())
        self.spec = spec
        self.net = cv2.dnn.readNetFromTensorflow(str(pb), str(pbtxt))
        self.score_threshold = (spec.options.score_threshold or 0.05) if score_threshold is None \
            else score_threshold
        self.batch_size = spec.options.batch_size or 8

    def _detect(self, images: Sequence[Image.Image]) -> list[Detections]:
        self.net.setInput(self.preprocess(images))
        rows = self.net.forward().reshape(-1, 7)
        out = []
        for i, im in enumerate(images):
            r = rows[(rows[:, 0] == i) & (rows[:, 2] >= self.score_threshold)]
            r = r[np.argsort(-r[:, 2])]
            scale = np.array([im.width, im.height, im.width, im.height], np.float64)
            boxes = np.clip(r[:, 3:7].astype(np.float64), 0, 1) * scale
            out.append(Detections(boxes, r[:, 1].astype(np.int64), r[:, 2].astype(np.float64)))
        return out


def build_opencv_ssd(spec: LabelerSpec, weights_path: Path | None, score_threshold: float | None = None,
                     **_: object) -> OpenCVSSDDetector:
    if weights_path is None:
        raise ValueError(f"{spec.name}: a frozen TF graph has no random-initialised form")
    pbtxt = weights_path.parent / Path(spec.weights.extra_files[0]).name
    return OpenCVSSDDetector(spec, weights_path, pbtxt, score_threshold)
