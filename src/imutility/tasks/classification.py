"""Image classification: ImageNet-1k classes, Eq. 5 labels, top-1 after dropping filtered images."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from imutility.errors import InvalidInputError
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

#: classes kept per cached record (with the exact probability of the target and of the pristine top-1)
TOPK = 5


class ClassificationTask(Task):
    name = "classification"
    other = "detection"
    default_labelers = ("efficientnet_lite0", "mobilenet_v2", "squeezenet1_1")
    default_data = ("imagenet-sample",)
    one_data_folder = True
    class_probabilities = True
    metric_name = "top-1"
    metric_percent = True
    filter_rule = "filtered images are dropped; top-1 over the kept ones"
    confidence_columns = ("ccsp", "phi_ref")  # a network's phi and phi' in the labels table
    success_name = "correctness (top-1)"
    # where the paper shows this task: Table I (labels from -> predictor accuracy), Table III (held-out network:
    # cls-trained, OD-trained predictor), Fig. 2(a)
    paper_tables = ("table1", "table3", "Fig. 2(a)")
    paper_predictors = [("Inception-v3", 0.875), ("VGG-19", 0.842), ("DenseNet-121", 0.912),
                        ("Inception+VGG+DenseNet", 0.933)]
    paper_inter_task = [("AlexNet", 0.468, 0.460), ("ResNeXt-50", 0.663, 0.654), ("EfficientNet-B7", 0.658, 0.659)]

    # ------------------------------------------------------------------ data
    def sources(self, data: Sequence[str | os.PathLike], labels_file: str | os.PathLike | None = None,
                limit: int | None = None, reference: str = GROUND_TRUTH,
                log: Callable[[str], None] | None = None) -> tuple[list[Source], str]:
        """One image folder: ImageNet-style labels (file names, class folders or ``labels_file``); with the
        pristine reference, every image of the folder, unlabelled. A ``labels_file`` also chooses the photos:
        with either reference only the files it lists are labelled (the others are counted in one line)."""
        from imutility.datasets import ClassificationDataset, read_file_list

        folder = Path(data[0])
        if reference != GROUND_TRUTH:
            sources = sources_from_folder(folder, log)
            if labels_file is not None:
                listed = read_file_list(Path(labels_file))
                kept = [s for s in sources if s.key in listed or Path(s.key).name in listed]
                if not kept:
                    raise InvalidInputError(f"none of the {len(listed)} files listed in {labels_file} is in {folder}")
                if log is not None and len(kept) < len(sources):
                    log(f"left out {len(sources) - len(kept)} images of {folder} not listed in {labels_file}")
                sources = kept
            return sources[:limit], str(folder)
        ds = ClassificationDataset.from_folder(folder, labels_file)
        if log is not None and labels_file is not None and ds.unlabelled:
            log(f"left out {len(ds.unlabelled)} images of {folder} not listed in {labels_file}")
        elif log is not None:
            for p in ds.unlabelled:
                log(f"skipped {p}: no class label")
        return sources_from_dataset(ds)[:limit], str(folder)

    def check_sources(self, sources: Sequence[Source], reference: str) -> None:
        if reference == GROUND_TRUTH and any(s.target is None for s in sources):
            raise InvalidInputError("some sources have no class label: use reference='pristine' "
                                    "(`--reference pristine`) to label photos without ground truth")

    def check_labelers(self, labelers: Sequence, reference: str) -> None:
        """The ground truth is an ImageNet-1k class: every network must answer in those classes. The pristine
        reference is the labelers' agreed top-1: they (and the held-out networks) must share one class list."""
        own = [lab.name for lab in labelers if lab.spec.label_space is not None]
        if reference == GROUND_TRUTH and own:
            raise InvalidInputError(f"{', '.join(own)} answer(s) in their own classes, not ImageNet-1k's: label "
                                    "against their agreed pristine prediction with reference='pristine' "
                                    "(`--reference pristine`)")
        spaces = {lab.spec.label_space for lab in labelers}
        if len(spaces) > 1:
            raise InvalidInputError("these classifiers answer in different class lists, so their decisions cannot be "
                             f"compared: {', '.join(f'{lab.name} ({lab.spec.num_classes})' for lab in labelers)}")

    # ------------------------------------------------------------------ the labeler's raw outputs
    def records(self, items, outputs, failed, targets) -> list[dict]:
        """``top``/``p``: the top-5 classes and probabilities; ``pt``: the probability of the ground truth;
        ``pr``: that of the network's own pristine top-1 (what a reference-free label needs)."""
        recs = []
        own_top1: dict[str, int] = {}  # the labeler's pristine decision per source (pristine comes first)
        for i, (key, dist) in enumerate(items):
            if i in failed:
                recs.append({"k": key, "d": dist, "error": failed[i]})
                continue
            p = np.asarray(outputs[i], dtype=np.float64)
            top = np.argsort(-p)[:TOPK]
            if dist == PRISTINE:
                own_top1[key] = int(top[0])
            t, r = targets.get(key), own_top1.get(key)
            recs.append({"k": key, "d": dist, "top": top.tolist(), "p": np.round(p[top], 6).tolist(),
                         "pt": None if t is None else round(float(p[t]), 6),
                         "pr": None if r is None else round(float(p[r]), 6)})
        return recs

    # ------------------------------------------------------------------ the labels table
    def table_reference(self, rows, meta, sources, labeler_caches, reference) -> np.ndarray:
        """The ``target`` column: the ground truth, or the labelers' agreed pristine top-1 (``<NA>`` where they
        disagree); returned as floats (NaN = none)."""
        import pandas as pd

        if reference == GROUND_TRUTH:
            rows["target"] = [sources[r["k"]].target for r in meta]
        else:
            agreed = _agreed_pristine_class(labeler_caches, list(sources))
            rows["target"] = pd.array([agreed.get(r["k"]) for r in meta], dtype="Int64")
        return np.asarray(pd.array(rows["target"], dtype="Int64").to_numpy(dtype=np.float64, na_value=np.nan))

    def columns(self, rows, name, meta, sources, cache, thresholds: Thresholds, reference, ref_data
                ) -> NetworkColumns:
        """``N.pristine_top5``/``N.pristine_p5``, ``N.top5``/``N.p5``, ``N.pristine_pred``, ``N.pred`` (nullable
        integers: ``<NA>`` where the network failed), ``N.phi_ref``, ``N.ccsp`` (= phi), ``N.utility``, ``N.label``."""
        import pandas as pd

        from imutility.utility import classification_label, confidence_utility

        targets, ground_truth, th = ref_data, reference == GROUND_TRUTH, thresholds
        m = len(meta)
        cols = {c: [None] * m for c in ("pristine_top5", "pristine_p5", "top5", "p5")}
        p0, p1 = np.full(m, -1), np.full(m, -2)
        phi, phi_ref = np.full(m, np.nan), np.full(m, np.nan)
        ok = np.zeros(m, dtype=bool)
        for i, r in enumerate(meta):
            r0, r1 = pair(cache, r["k"], r["d"])
            if r0 is None or not np.isfinite(targets[i]):
                continue
            t = int(targets[i])
            f1 = _class_probability(r1, t, r0["top"][0], ground_truth)
            f0 = _class_probability(r0, t, r0["top"][0], ground_truth)
            if f1 is None or f0 is None:
                continue
            ok[i] = True
            cols["pristine_top5"][i], cols["pristine_p5"][i] = r0["top"], r0["p"]
            cols["top5"][i], cols["p5"][i] = r1["top"], r1["p"]
            p0[i], p1[i] = r0["top"][0], r1["top"][0]
            phi[i], phi_ref[i] = f1, f0
        for c, v in cols.items():
            rows[f"{name}.{c}"] = v
        # a failed output is missing (<NA>), never a class index: it must not count as a wrong answer
        rows[f"{name}.pristine_pred"] = pd.arrays.IntegerArray(np.where(ok, p0, 0).astype(np.int64), mask=~ok)
        rows[f"{name}.pred"] = pd.arrays.IntegerArray(np.where(ok, p1, 0).astype(np.int64), mask=~ok)
        rows[f"{name}.phi_ref"] = phi_ref
        rows[f"{name}.ccsp"] = phi
        label, util = np.full(m, np.nan), np.full(m, np.nan)
        if m:
            lab = classification_label(p0, p1, np.nan_to_num(targets, nan=-3).astype(np.int64),
                                       np.where(ok, phi, 0.0), th.th, th.tl)
            label = np.where(ok, lab, np.nan)
            util = np.where(ok, confidence_utility(np.where(ok, phi, 0.0), np.where(ok, phi_ref, 0.0), th.phi_rec),
                            np.nan)
        rows[f"{name}.utility"] = util.copy()
        rows[f"{name}.label"] = label.copy()
        return NetworkColumns(label=label, utility=util, confidence=phi, confidence_ref=phi_ref)

    plan_feature_names = ("p1", "margin", "log_ratio", "top5_mass")
    plan_retention = 0.01  # the pristine top-1 kept (with any confidence): top-1 as pristine at the fewest bits

    def plan_features(self, pristine: dict) -> np.ndarray:
        """The top-1 probability, the top-1/top-2 margin and log ratio, the top-5 mass."""
        p = np.sort(np.asarray(pristine["p"], dtype=np.float64))[::-1]
        p1, p2 = float(p[0]), float(p[1]) if len(p) > 1 else 0.0
        return np.array([p1, p1 - p2, np.log((p1 + 1e-6) / (p2 + 1e-6)), float(p[:5].sum())], dtype=np.float64)

    def retention(self, pristine: dict, distorted: dict, score_threshold: float = 0.5) -> float:
        """0 when the top-1 class changed; else the share of its pristine probability the pristine top-1 keeps,
        at most 1."""
        if distorted["top"][0] != pristine["top"][0]:
            return 0.0
        return float(min(1.0, float(distorted["pr"]) / max(float(pristine["p"][0]), 1e-12)))

    # ------------------------------------------------------------------ full reference, on images
    def measure(self, labeler, pristine, distorted, *, targets=None, annotations=None, phi_rec=0.5,
                reference_score=0.5, iou_threshold=0.5, normalised=False):
        """phi / phi': the probability of the reference class (the ground truth, else the network's pristine top-1)
        on the distorted / pristine image; Eq. 2 of them, or its normalised form."""
        from imutility.errors import InvalidInputError
        from imutility.utility import classification_utility, normalised_confidence_utility

        if targets is not None and labeler.spec.label_space is not None:
            raise InvalidInputError(f"{labeler.name} answers in its own classes, so ImageNet ground-truth targets "
                                    "do not apply: measure against each network's own pristine prediction "
                                    "(no targets)")
        p0, p1 = labeler(list(pristine)), labeler(list(distorted))
        t = np.asarray(targets) if targets is not None else None
        ref = t if t is not None else p0.argmax(1)
        idx = np.arange(len(ref))
        phi, phi_ref = p1[idx, ref].astype(np.float64), p0[idx, ref].astype(np.float64)
        values = (normalised_confidence_utility(phi, phi_ref, phi_rec) if normalised
                  else classification_utility(p0, p1, t, phi_rec))
        info = [{"phi": float(phi[i]), "phi_ref": float(phi_ref[i]), "reference_class": int(ref[i]),
                 "distorted_class": int(p1[i].argmax())} for i in idx]
        return np.asarray(values, dtype=np.float64), info

    # ------------------------------------------------------------------ judging
    def success(self, table, network: str) -> np.ndarray:
        """1 where the network's top-1 on the distorted image is the reference class, NaN where unknown."""
        return _top1_correct(table, f"{network}.pred")

    def pristine_success(self, table, network: str) -> np.ndarray:
        """1 where the network's top-1 on the row's pristine photo is the reference class, NaN where unknown."""
        return _top1_correct(table, f"{network}.pristine_pred")

    def fig2(self, held, keeps, networks, outputs, sources, reference_filter, seed, draws, levels=()) -> dict:
        from imutility.filtering import filtered_top1, lowest_rate_keep, top1_correct

        ref = keeps.get(reference_filter) if reference_filter else None
        lv = held["distortion"].to_numpy()
        out, per_level = {}, {d: {} for d in levels} if ref is not None else {}
        for net in networks:
            valid, correct = top1_correct(held, net)  # a failed output is not a wrong answer: left out
            res = {fname: filtered_top1(correct, keep[valid]).as_dict() for fname, keep in keeps.items()}
            if ref is not None:
                n_rej = int((~ref[valid]).sum())
                res["lowest bit rate (same count)"] = filtered_top1(
                    correct, lowest_rate_keep(held["bpp"].to_numpy()[valid], n_rej)).as_dict()
                for d in per_level:  # where filtering acts: per held-out level, no filter vs the reference filter
                    at = lv[valid] == d
                    per_level[d][net] = {"no_filter": filtered_top1(correct[at], np.ones(int(at.sum()), bool)).metric,
                                         "combined": filtered_top1(correct[at], ref[valid][at]).as_dict()}
            out[net] = res
        return {"images": int(len(held)), "photos": int(held["key"].nunique()), "networks": out,
                "per_level": per_level}

    def selection_metric(self, rows, network, outputs, sources, pristine=False) -> float:
        """Top-1 over the rows (a failed output left out); ``pristine``: on the photos' pristine images."""
        col = f"{network}.pristine_pred" if pristine else f"{network}.pred"
        pred = rows[col]
        ok = pred.notna().to_numpy() & rows["target"].notna().to_numpy()
        return float((pred == rows["target"]).to_numpy(dtype=bool, na_value=False)[ok].mean()) if ok.any() \
            else float("nan")

    def evaluate_labeler(self, labeler, data, progress: bool = True) -> str:
        from imutility.datasets import ClassificationDataset
        from imutility.paths import shared_data
        from imutility.zoo.evaluate import classification_accuracy

        ds = ClassificationDataset.from_folder(data or shared_data(self.default_data[0]))
        r = classification_accuracy(labeler, ds, progress=progress)
        return f"{labeler.name}: top-1 {r.top1:.4f} top-5 {r.top5:.4f} on {r.n} images"


def sources_from_dataset(dataset) -> list[Source]:
    """Sources of a :class:`~imutility.datasets.ClassificationDataset`."""
    return [Source(key=s.key, path=str(s.path), target=int(s.target)) for s in dataset]


def _agreed_pristine_class(caches: Sequence[dict], keys: list[str]) -> dict[str, int]:
    """Per source, the pristine top-1 class all labelers agree on (sources where they disagree are absent)."""
    out = {}
    for k in keys:
        tops = {c.get((k, PRISTINE), {}).get("top", [None])[0] for c in caches}
        if len(tops) == 1 and None not in tops:
            out[k] = int(tops.pop())
    return out


def _class_probability(record: dict, cls: int, own_pristine_top1: int, is_ground_truth: bool) -> float | None:
    """A network's probability of ``cls`` from its cached record: exact when ``cls`` is the ground truth
    (``pt``) or the network's own pristine top-1 (``pr``), else read from its top-5; None when unknown."""
    if is_ground_truth:
        return None if record.get("pt") is None else float(record["pt"])
    if cls == own_pristine_top1 and record.get("pr") is not None:
        return float(record["pr"])
    if cls in record["top"]:
        return float(record["p"][record["top"].index(cls)])
    return None


def _top1_correct(table, column: str) -> np.ndarray:
    pred = table[column]
    ok = pred.notna().to_numpy() & table["target"].notna().to_numpy()
    same = (pred == table["target"]).to_numpy(dtype=bool, na_value=False)
    return np.where(ok, same.astype(np.float64), np.nan)
