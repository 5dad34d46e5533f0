"""Object detection: COCO categories, Eq. 6 labels, mAP after replacing filtered images by pristine ones."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from imutility.tasks.base import (
    GROUND_TRUTH,
    PRISTINE,
    NetworkColumns,
    Source,
    Task,
    Thresholds,
    pair,
    sources_from_folder,
)


class DetectionTask(Task):
    name = "detection"
    other = "classification"
    default_labelers = ("ssd_mobilenet_v2", "yolox_nano", "nanodet_m")
    default_data = ("coco2017-val128/instances.json", "coco2017-train128/instances.json")
    one_data_folder = False
    class_probabilities = False
    metric_name = "mAP@[.5:.95]"
    metric_percent = False
    filter_rule = "filtered images are replaced by their pristine versions (the paper's rule); mAP over all images"
    confidence_columns = ("phi", "phi_ref")  # a network's phi and phi' in the labels table
    success_name = "success (its own Eq. 6 label)"
    # where the paper shows this task: Table II (labels from -> predictor accuracy), Table IV (held-out detector:
    # OD-trained, cls-trained predictor), Fig. 2(b)
    paper_tables = ("table2", "table4", "Fig. 2(b)")
    paper_predictors = [("Faster R-CNN ResNet-50", 0.848), ("SSD-300 VGG-16", 0.813), ("SSD-320 MobileNet-v3", 0.831),
                        ("SSD-300 + SSD-320 + Faster R-CNN", 0.928)]
    paper_inter_task = [("Mask R-CNN", 0.128, 0.126), ("RetinaNet", 0.128, 0.125), ("FR-CNN MobileNet", 0.164, 0.161)]

    # ------------------------------------------------------------------ data
    def sources(self, data: Sequence[str | os.PathLike], labels_file: str | os.PathLike | None = None,
                limit: int | None = None, reference: str = GROUND_TRUTH,
                log: Callable[[str], None] | None = None) -> tuple[list[Source], str]:
        """COCO json file(s) (keys prefixed by each set's folder when there are several); with the pristine
        reference, the images of a folder, unannotated."""
        from imutility.datasets import CocoDetectionDataset

        paths = [Path(d) for d in data]
        if reference != GROUND_TRUTH and paths[0].suffix != ".json":
            return sources_from_folder(paths[0], log)[:limit], str(paths[0])
        sources: list[Source] = []
        for js in paths:
            ds = CocoDetectionDataset.from_json(js)
            if log is not None:
                for p in ds.missing:
                    log(f"skipped {p}: listed in {js} but not on disk")
                for p in ds.unannotated:
                    log(f"skipped {p}: not in the annotations of {js}")
            srcs = sources_from_dataset(ds)[:limit]
            if len(paths) > 1:
                prefix = js.parent.name
                srcs = [Source(key=f"{prefix}/{s.key}", path=s.path, boxes=s.boxes, labels=s.labels) for s in srcs]
            sources += srcs
        return sources, ";".join(map(str, paths))

    # ------------------------------------------------------------------ the labeler's raw outputs
    def records(self, items, outputs, failed, targets) -> list[dict]:
        """``b``: xyxy boxes, ``l``: COCO category ids, ``s``: scores (after the detector's NMS)."""
        recs = []
        for i, (key, dist) in enumerate(items):
            if i in failed:
                recs.append({"k": key, "d": dist, "error": failed[i]})
                continue
            out = outputs[i]
            recs.append({"k": key, "d": dist, "b": np.round(out.boxes, 1).tolist(),
                         "l": out.labels.astype(int).tolist(), "s": np.round(out.scores, 5).tolist()})
        return recs

    # ------------------------------------------------------------------ the labels table
    def table_reference(self, rows, meta, sources, labeler_caches, reference) -> None:
        rows["n_gt"] = [len(sources[r["k"]].labels or ()) for r in meta]
        return None

    def columns(self, rows, name, meta, sources, cache, thresholds: Thresholds, reference, ref_data
                ) -> NetworkColumns:
        """``N.phi_g_ref``/``N.phi_g`` (per reference object, the best same-label score at IoU >= det_iou),
        ``N.iou_g`` (per object, the best IoU of a same-label detection scoring >= det_score on the distorted
        image), ``N.phi_ref``/``N.phi`` (their means), ``N.found`` (share found), ``N.utility``, ``N.label``
        (Eq. 6), ``N.p5``/``N.pristine_p5`` (the detector's own confidence: its highest detection score on the
        distorted / pristine image, 0 when it detects nothing; a one-element list, as the classifiers' top-5
        probabilities, so that the benchmark reads every task's own-confidence baseline from one column). With the
        pristine reference, a network's own confident pristine detections are its objects."""
        import torch
        from torchvision.ops import box_iou

        from imutility.utility import detection_label, detection_utility, match_scores

        th = thresholds
        m = len(meta)
        cols = {c: [None] * m for c in ("phi_g_ref", "phi_g", "iou_g")}
        num = {c: np.full(m, np.nan) for c in ("phi_ref", "phi", "found")}
        label, util = np.full(m, np.nan), np.full(m, np.nan)
        own: list = [None] * m
        own0: list = [None] * m
        for i, r in enumerate(meta):
            r0, r1 = pair(cache, r["k"], r["d"])
            if r0 is None:
                continue
            d0 = _detections(r0)
            own0[i] = [float(d0["scores"].max()) if len(d0["scores"]) else 0.0]
            if reference != GROUND_TRUTH:
                confident = d0["scores"] >= th.det_score
                gt_b, gt_l = d0["boxes"][confident], d0["labels"][confident]
            else:
                src = sources[r["k"]]
                gt_b = np.asarray(src.boxes or (), dtype=np.float64).reshape(-1, 4)
                gt_l = np.asarray(src.labels or (), dtype=np.int64)
            d1 = _detections(r1)
            own[i] = [float(d1["scores"].max()) if len(d1["scores"]) else 0.0]
            label[i] = detection_label(gt_b, gt_l, d0, d1, th.det_score, th.det_iou, th.require_pristine_hit)
            u = detection_utility(gt_b, gt_l, d0, d1, th.det_iou, th.phi_rec)
            util[i] = u["utility"]
            for c in num:
                num[c][i] = u[c]
            cols["phi_g_ref"][i] = np.round(match_scores(gt_b, gt_l, **d0, iou_threshold=th.det_iou), 5).tolist()
            cols["phi_g"][i] = np.round(match_scores(gt_b, gt_l, **d1, iou_threshold=th.det_iou), 5).tolist()
            keep = d1["scores"] >= th.det_score
            if len(gt_b) and keep.any():
                iou = box_iou(torch.from_numpy(gt_b), torch.from_numpy(d1["boxes"][keep])).numpy()
                same = gt_l[:, None] == d1["labels"][keep][None, :]
                cols["iou_g"][i] = np.round(np.where(same, iou, 0.0).max(1), 4).tolist()
            else:
                cols["iou_g"][i] = [0.0] * len(gt_b)
        for c, v in cols.items():
            rows[f"{name}.{c}"] = v
        for c, v in num.items():
            rows[f"{name}.{c}"] = v
        rows[f"{name}.p5"], rows[f"{name}.pristine_p5"] = own, own0
        rows[f"{name}.utility"] = util.copy()
        rows[f"{name}.label"] = label.copy()
        return NetworkColumns(label=label, utility=util, confidence=num["phi"], confidence_ref=num["phi_ref"])

    plan_feature_names = ("log_n_confident", "max_score", "mean_confident", "min_confident", "log_n_any",
                          "log_box_area")
    plan_retention = 0.8  # 80 % of the confidence-weighted recall of its own confident pristine detections

    def plan_features(self, pristine: dict) -> np.ndarray:
        """How many confident (>= 0.5) detections, the highest, mean and lowest confident score, how many
        detections at all, and the log mean area of the confident boxes (small objects break first)."""
        s = np.asarray(pristine["s"], dtype=np.float64)
        b = np.asarray(pristine["b"], dtype=np.float64).reshape(-1, 4)
        conf = s >= 0.5
        area = ((b[conf, 2] - b[conf, 0]).clip(0) * (b[conf, 3] - b[conf, 1]).clip(0)) if conf.any() else [1.0]
        return np.array([np.log1p(conf.sum()), s.max() if len(s) else 0.0, s[conf].mean() if conf.any() else 0.0,
                         s[conf].min() if conf.any() else 0.0, np.log1p(len(s)), np.log(np.mean(area) + 1.0)],
                        dtype=np.float64)

    def retention(self, pristine: dict, distorted: dict, score_threshold: float = 0.5) -> float:
        """The confidence-weighted recall of the network's own confident pristine detections (score >=
        ``score_threshold``) on the distorted image, over the same on the pristine one, at most 1; 1 when it
        detects nothing confidently on the pristine image (nothing to lose)."""
        from imutility.utility import detection_utility

        def as_dets(r):
            return {"boxes": np.asarray(r["b"], dtype=float).reshape(-1, 4),
                    "labels": np.asarray(r["l"], dtype=np.int64), "scores": np.asarray(r["s"], dtype=float)}

        d0, d1 = as_dets(pristine), as_dets(distorted)
        keep = d0["scores"] >= score_threshold
        if not keep.any():
            return 1.0
        u = detection_utility(d0["boxes"][keep], d0["labels"][keep], d0, d1)
        return float(min(1.0, u["phi"] / max(u["phi_ref"], 1e-12)))

    # ------------------------------------------------------------------ full reference, on images
    def measure(self, labeler, pristine, distorted, *, targets=None, annotations=None, phi_rec=0.5,
                reference_score=0.5, iou_threshold=0.5, normalised=False):
        """Reference objects: the annotations, else the network's own pristine detections scoring >=
        ``reference_score``; phi: their confidence-weighted recall (:func:`~imutility.utility.detection_utility`)."""
        from imutility.utility import detection_utility, normalised_confidence_utility

        d0, d1 = labeler(list(pristine)), labeler(list(distorted))
        values, info = [], []
        for i in range(len(d0)):
            if annotations is not None:
                gt_b, gt_l = annotations[i]["boxes"], annotations[i]["labels"]
            else:
                keep = d0[i].scores >= reference_score
                gt_b, gt_l = d0[i].boxes[keep], d0[i].labels[keep]
            r = detection_utility(gt_b, gt_l, d0[i].as_dict(), d1[i].as_dict(), iou_threshold, phi_rec)
            info.append({**r, "n_reference": int(len(gt_l))})
            values.append(float(normalised_confidence_utility(r["phi"], r["phi_ref"], phi_rec)) if normalised
                          else r["utility"])
        return np.asarray(values, dtype=np.float64), info

    # ------------------------------------------------------------------ judging
    def success(self, table, network: str) -> np.ndarray:
        """The network's own Eq. 6 label: a reference object found in the pristine and the distorted image."""
        return table[f"{network}.label"].to_numpy(dtype=np.float64)

    def fig2(self, held, keeps, networks, outputs, sources, reference_filter, seed, draws, levels=()) -> dict:
        from imutility.filtering import CocoScorer, lowest_rate_keep, random_same_count

        gt = [(np.asarray(sources[k].boxes or (), dtype=float).reshape(-1, 4), list(sources[k].labels or ()))
              for k in held["key"]]
        scorer = CocoScorer(gt)
        empty = {"b": [], "l": [], "s": []}
        out = {}
        for net in networks:
            cache = outputs(net)

            def dets(key, dist, cache=cache):
                r = cache.get((key, dist))
                return r if r is not None and "error" not in r else empty

            distorted = [dets(k, d) for k, d in zip(held["key"], held["distortion"], strict=True)]
            pristine = [dets(k, PRISTINE) for k in held["key"]]
            res = {f: scorer.filtered(distorted, pristine, keep).as_dict() for f, keep in keeps.items()}
            res["all pristine"] = scorer.filtered(distorted, pristine, np.zeros(len(held), dtype=bool)).as_dict()
            if reference_filter in keeps:
                n_rej = int((~keeps[reference_filter]).sum())
                res["lowest bit rate (same count)"] = scorer.filtered(
                    distorted, pristine, lowest_rate_keep(held["bpp"].to_numpy(), n_rej)).as_dict()
                res["random (same count)"] = random_same_count(
                    lambda keep, d=distorted, p=pristine: scorer.filtered(d, p, keep), len(held), n_rej, seed, draws)
            out[net] = res
        return {"images": int(len(held)), "photos": int(held["key"].nunique()), "networks": out}

    def selection_metric(self, rows, network, outputs, sources, pristine=False) -> float:
        """COCO mAP@[.5:.95] (pycocotools) of the network's cached detections on the rows' images (or the
        photos' pristine images), against the sources' ground truth."""
        from imutility.filtering import CocoScorer

        cache = outputs(network)
        empty = {"b": [], "l": [], "s": []}
        gt = [(np.asarray(sources[k].boxes or (), dtype=float).reshape(-1, 4), list(sources[k].labels or ()))
              for k in rows["key"]]
        dets = []
        for k, d in zip(rows["key"], rows["distortion"], strict=True):
            r = cache.get((k, PRISTINE if pristine else d))
            dets.append(r if r is not None and "error" not in r else empty)
        return CocoScorer(gt).score(dets)[0]

    def evaluate_labeler(self, labeler, data, progress: bool = True) -> str:
        from imutility.datasets import CocoDetectionDataset
        from imutility.paths import shared_data
        from imutility.zoo.evaluate import detection_map

        ds = CocoDetectionDataset.from_json(data or shared_data(self.default_data[0]))
        m = detection_map(labeler, ds, progress=progress)
        return f"{labeler.name}: mAP@0.5 {m['mAP50']:.4f} mAP@[.5:.95] {m['mAP']:.4f} on {int(m['n'])} images"


def sources_from_dataset(dataset) -> list[Source]:
    """Sources of a :class:`~imutility.datasets.CocoDetectionDataset` (boxes xyxy, COCO category ids)."""
    return [Source(key=s.key, path=str(s.path), boxes=tuple(map(tuple, np.round(s.boxes, 2).tolist())),
                   labels=tuple(int(x) for x in s.labels)) for s in dataset]


def _detections(record: dict) -> dict[str, np.ndarray]:
    return {"boxes": np.asarray(record["b"], np.float64).reshape(-1, 4),
            "labels": np.asarray(record["l"], np.int64), "scores": np.asarray(record["s"], np.float64)}
