"""``imutility reproduce``: the paper's study as cached stages under one output folder.

Stages (each leaves ``OUT/stages/<stage>.json`` when it finishes):

- ``label``: distort every photo at the training levels and label it with the task's labelers
  (``OUT/labels/<task>``), then fix the test photos (``OUT/labels/test_sources_<task>.json``);
- ``train``: one predictor per labeler and one on the combined labels, per task (``OUT/predictors``);
- ``evaluate``: the TEST photos at training and held-out levels through labelers AND held-out networks,
  and every predictor's score on them (``OUT/evaluate/<task>``);
- ``baselines``: BRISQUE, PSNR, SSIM, MSP and energy on the labelled test images (``OUT/baselines``);
- ``report``: ``OUT/results.json``, ``OUT/report.md`` and ``OUT/figures/*.png`` from the cached outputs.

A rerun skips every stage whose marker matches the settings it depends on (a fingerprint chained through
the earlier stages); a stage that changed, or ``from_stage`` onwards, is redone after clearing its outputs.
A stage interrupted before its marker resumes where it stopped (labelling caches, finished predictors).
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from imutility import __version__, atomic
from imutility.errors import ImutilityError
from imutility.reproduce.config import TASKS, ReproduceConfig
from imutility.reproduce.study import COMBINED, STAGES, Study, eval_table, predictor_jobs

#: the top-level settings each stage reads (earlier stages' settings reach it through the chained fingerprint)
STAGE_SETTINGS: dict[str, tuple[str, ...]] = {
    "label": (*TASKS, "train_distortions", "test_fraction", "seed"),
    "train": ("predictor",),
    "evaluate": ("heldout_distortions",),
    "baselines": ("ood_network", "fig1_max_images"),
    "report": ("random_draws",),
}

#: folders a stage owns (cleared before it is redone)
STAGE_OUTPUTS: dict[str, tuple[str, ...]] = {
    "label": ("labels",), "train": ("predictors",), "evaluate": ("evaluate",), "baselines": ("baselines",),
    "report": ("figures", "report.md", "results.json"),
}


class NetworkUnavailableError(ImutilityError, RuntimeError):
    """A network of the config cannot be built here (missing weights file or package)."""


# ------------------------------------------------------------------------------------------------- helpers
def resolve_data(entry: str, shared: Path | None) -> Path:
    """A config ``data`` entry: an absolute or existing path as given, else a name under ``<shared>/data``."""
    from imutility.paths import shared_data

    p = Path(entry).expanduser()
    return p if p.is_absolute() or p.exists() else shared_data(entry, shared)


def build_sources(study: Study, task: str) -> tuple[list, str]:
    """The task's labelling sources and a description of the data (the task reads its data)."""
    from imutility.tasks import get_task

    ts = study.config.task(task)
    paths = [resolve_data(d, study.shared) for d in ts.data]
    labels_file = resolve_data(ts.labels_file, study.shared) if ts.labels_file else None
    return get_task(task).sources(paths, labels_file, ts.limit, log=study.log)


def choose_test_sources(paths: list[str], fraction: float, seed: int) -> list[str]:
    """A seeded, order-independent choice of test photos (whole photos: never on both sides)."""
    unique = sorted(set(paths))
    n = max(1, round(fraction * len(unique))) if unique else 0
    rng = np.random.default_rng(seed)
    return sorted(unique[i] for i in rng.permutation(len(unique))[:n])


def preflight(study: Study) -> None:
    """Refuse to start when a network cannot be built: say which weights are missing, before any work."""
    from imutility import zoo

    cfg = study.config
    names = [n for t in cfg.tasks for n in (*cfg.task(t).labelers, *cfg.task(t).held_out)] + [cfg.ood_network]
    missing = [(a.name, a.detail) for a in (zoo.availability(n, study.models) for n in dict.fromkeys(names))
               if not a.ok]
    backbone = _backbone_problem(cfg.predictor) if cfg.predictor.pretrained or cfg.predictor.architecture == "content" \
        else None
    if backbone is not None:
        missing.append((f"predictor backbone {cfg.predictor.backbone}", backbone))
    if missing:
        lines = "\n".join(f"  {name}: {detail}" for name, detail in missing)
        raise NetworkUnavailableError(f"config {cfg.name!r} needs networks that are not available here:\n{lines}\n"
                                      "Put the weight files in your torch cache or pass --models DIR "
                                      "(`imutility zoo list` shows what is found).")
    for t in cfg.tasks:
        ts = study.config.task(t)
        for d in ts.data:
            if not resolve_data(d, study.shared).exists():
                raise FileNotFoundError(f"[{t}] data {d!r}: {resolve_data(d, study.shared)} not found "
                                        "(set --shared or IMUTILITY_SHARED, or give a path)")


def _test_eligible(study: Study, task: str) -> Callable[[str], bool]:
    """Whether a photo may be a test photo: it comes from one of the task's ``test_data`` entries (all when unset;
    COCO: the images folder beside the json)."""
    ts = study.config.task(task)
    if ts.test_data is None:
        return lambda path: True
    roots = []
    for d in ts.test_data:
        p = resolve_data(d, study.shared)
        roots.append((p.parent if p.suffix == ".json" else p).resolve())
    return lambda path: any(Path(path).resolve().is_relative_to(r) for r in roots)


def _backbone_problem(settings) -> str | None:
    """Why the predictor backbone's pretrained weights cannot be loaded, or None when they can."""
    from imutility import zoo
    from imutility.predictor.networks.backbones import create_backbone
    from imutility.zoo.weights import WeightsError

    if settings.architecture == "content":  # a zoo classifier, used frozen
        av = zoo.availability(settings.backbone)
        return None if av.ok else av.detail
    try:
        create_backbone(settings.backbone, 2, pretrained=True)
    except (WeightsError, ImportError) as e:
        return str(e).splitlines()[0]
    return None


# ------------------------------------------------------------------------------------------------- stages
def stage_label(study: Study) -> dict:
    from imutility import labelling as lb
    from imutility.distort import parse_distortion

    cfg = study.config
    info = {}
    for task in cfg.tasks:
        sources, described = build_sources(study, task)
        labs = [study.labeler(n) for n in cfg.task(task).labelers]
        study.log(f"[label] {task}: {len(sources)} photos x {len(cfg.train_distortions)} levels, "
                  f"labelers {', '.join(cfg.task(task).labelers)}")
        rep = lb.run_labelling(task, sources, [parse_distortion(s) for s in cfg.train_distortions], labs,
                               study.labels_dir(task), dataset=described, seed=cfg.seed, progress=study.progress,
                               on_error=lambda k, r: study.log(f"skipped {k}: {r}"))
        if rep.errors:  # reported as they happened; kept beside the labels for later
            atomic.write_csv(study.out / "labels" / f"unreadable_{task}.csv",
                             [{"key": k, "reason": r} for k, r in rep.errors], ["key", "reason"])
        readable = {s.key for s in sources} - {k for k, _ in rep.errors}
        eligible = _test_eligible(study, task)
        test = choose_test_sources([s.path for s in sources if s.key in readable and eligible(s.path)],
                                   cfg.test_fraction, cfg.seed)
        atomic.write_json(study.split_file(task), test)
        info[task] = {"photos": len(sources), "unreadable": len(rep.errors), "rows": rep.n_rows,
                      "test_photos": len(test)}
    return info


def stage_train(study: Study) -> dict:
    from imutility.predictor.training.config import InsufficientLabelsError, TrainConfig
    from imutility.predictor.training.train import train_predictor

    cfg, ps = study.config, study.config.predictor
    info = {}
    for task in cfg.tasks:
        for name in study.predictors(task):
            folder = study.predictor_dir(task, name)
            if (folder / "card.json").is_file() or (folder / "skipped.json").is_file():
                continue  # finished before an interruption
            tc = TrainConfig(labels=str(study.labels_dir(task)), label_column="label" if name == COMBINED
                             else f"{name}.label", backbone=ps.backbone, pretrained=ps.pretrained, recipe=ps.recipe,
                             geometry=ps.geometry, size=ps.size, epochs=ps.epochs, batch_size=ps.batch_size,
                             lr=ps.lr, max_samples=ps.max_samples, seed=cfg.seed, device=study.device,
                             test_sources_file=str(study.split_file(task)), architecture=ps.architecture,
                             features=ps.features, soft_target=ps.soft_target, hidden=ps.hidden, dropout=ps.dropout,
                             weight_decay=ps.weight_decay)
            study.log(f"[train] {task} predictor on {name} labels")
            try:
                card = train_predictor(tc, folder, progress=study.progress)
            except InsufficientLabelsError as e:  # too few labels of this labeler: report it, go on
                atomic.write_json(folder / "skipped.json", {"reason": str(e)})
                study.log(f"[train] {task}-{name} not trained: {e}")
                continue
            m, seconds = card.raw["metrics"], card.raw["train_seconds"]
            info[f"{task}-{name}"] = {"accuracy": m["accuracy"], "auroc": m["auroc"], "seconds": seconds}
            study.log(f"[train] {task}-{name}: test accuracy {m['accuracy']:.3f}, AUROC {m['auroc']:.3f} "
                      f"({seconds:.0f} s)")
    return info


def stage_evaluate(study: Study) -> dict:
    import pandas as pd

    from imutility import labelling as lb
    from imutility.distort import parse_distortion
    from imutility.predictor.runtime.predictor import Predictor

    cfg = study.config
    info = {}
    for task in cfg.tasks:
        ts = cfg.task(task)
        test = set(json.loads(study.split_file(task).read_text()))
        sources = [s for s in lb.read_sources(study.labels_dir(task)) if s.augment is None and s.path in test]
        nets = [*ts.labelers, *ts.held_out]
        study.log(f"[evaluate] {task}: {len(sources)} test photos x {len(cfg.train_distortions)} training + "
                  f"{len(cfg.heldout_distortions)} held-out levels, networks {', '.join(nets)}")
        dists = [parse_distortion(s) for s in (*cfg.train_distortions, *cfg.heldout_distortions)]
        lb.run_labelling(task, sources, dists, [study.labeler(n) for n in nets], study.eval_dir(task),
                         dataset=f"test photos of {study.labels_dir(task)}", seed=cfg.seed, progress=study.progress,
                         on_error=lambda k, r: study.log(f"skipped {k}: {r}"))
        table = pd.read_parquet(study.eval_dir(task) / "labels.parquet")
        table = table[table["augment"].isna()].reset_index(drop=True)
        paths = [str(study.eval_dir(task) / p) for p in table["path"]]
        for name, folder in predictor_jobs(study, task):
            target = study.scores_file(task, name)
            if target.is_file() or not (folder / "card.json").is_file():
                continue
            pred = Predictor.load(folder, device=study.device)  # ONNX Runtime on the CPU: the graphs train wrote
            t0 = time.perf_counter()
            scores = [s if s is not None else np.nan for _, s, _ in pred.predict_paths(paths)]
            atomic.write_parquet(target, pd.DataFrame({"key": table["key"], "distortion": table["distortion"],
                                                       "score": np.asarray(scores, dtype=np.float64)}))
            study.log(f"[evaluate] {name} scored {len(paths)} {task} images in {time.perf_counter() - t0:.0f} s")
        info[task] = {"test_photos": len(sources), "images": len(table)}
    return info


def stage_baselines(study: Study) -> dict:
    """Fig. 1 on the classification test images, under two labellings (one frame, both label columns):

    - ``label``: the study's unanimous labels (images the labelers agree on, as everywhere in this study);
    - ``label_paper``: the paper's Fig. 1 protocol: ONE classifier (``ood_network``), ALL compressed images,
      useful when its top-1 on the image equals its top-1 on the pristine image.

    Each is sampled to at most ``fig1_max_images``; the scores are computed once for the union.
    """
    import pandas as pd

    from imutility.images import ImageLoadError, load_image
    from imutility.reproduce.baselines import feature_squeezing, image_quality_scores, ood_scores

    cfg = study.config
    table = eval_table(study, "classification")
    ood = cfg.ood_network
    if f"{ood}.pred" in table:
        same = (table[f"{ood}.pred"] == table[f"{ood}.pristine_pred"]).to_numpy(dtype=float, na_value=np.nan)
        table["label_paper"] = np.where(table[f"{ood}.pred"].notna() & table[f"{ood}.pristine_pred"].notna(),
                                        same, np.nan)
    else:  # the OOD network is not among the evaluated networks: the paper's protocol cannot be read off
        study.log(f"[baselines] {ood} was not run on the test images: no paper-protocol Fig. 1")
        table["label_paper"] = np.nan
    rng = np.random.default_rng(cfg.seed)

    def sample(mask: np.ndarray) -> np.ndarray:
        idx = np.flatnonzero(mask)
        return np.sort(rng.permutation(idx)[: cfg.fig1_max_images]) if len(idx) > cfg.fig1_max_images else idx

    in_unanimous = np.zeros(len(table), dtype=bool)
    in_unanimous[sample(table[COMBINED].notna().to_numpy())] = True
    in_paper = np.zeros(len(table), dtype=bool)
    in_paper[sample(table["label_paper"].notna().to_numpy())] = True
    keep = in_unanimous | in_paper
    table = table[keep].reset_index(drop=True)
    in_unanimous, in_paper = in_unanimous[keep], in_paper[keep]
    dist_paths = [str(study.eval_dir("classification") / p) for p in table["path"]]
    study.log(f"[baselines] {len(table)} test images ({int(in_unanimous.sum())} unanimous-labelled, "
              f"{int(in_paper.sum())} for the paper's protocol): BRISQUE, PSNR, SSIM ({study.workers} workers), "
              f"MSP, energy and feature squeezing of {ood}")
    iq, errors = image_quality_scores(list(zip(dist_paths, table["source"], strict=True)), study.workers,
                                      study.progress)
    net = study.labeler(ood)
    msp = np.full(len(table), np.nan)
    energy = np.full(len(table), np.nan)
    squeeze = np.full(len(table), np.nan)
    for i in range(0, len(table), 32):
        idx, imgs = [], []
        for j in range(i, min(i + 32, len(table))):
            try:
                imgs.append(load_image(dist_paths[j]))
                idx.append(j)
            except ImageLoadError as e:
                errors[j] = errors[j] or e.reason
        if imgs:
            m, e = ood_scores(net.logits(imgs))
            msp[idx], energy[idx] = m, e
            squeeze[idx] = feature_squeezing(net, [np.asarray(im) for im in imgs])
    frame = pd.DataFrame({"key": table["key"], "distortion": table["distortion"], "level": table["level"],
                          "bpp": table["bpp"], "label": table[COMBINED], "label_paper": table["label_paper"],
                          "in_unanimous": in_unanimous, "in_paper": in_paper, "brisque": iq[:, 0], "psnr": iq[:, 1],
                          "ssim": iq[:, 2], "msp": msp, "energy": energy, "squeeze": squeeze,
                          "predictor": table.get("score:classification-combined", np.nan),
                          "error": errors})
    atomic.write_parquet(study.out / "baselines" / "fig1.parquet", frame)
    for k, r in zip(frame["key"], frame["error"], strict=True):
        if r:
            study.log(f"[baselines] {k}: {r}")
    return {"images": len(frame), "errors": int(frame["error"].notna().sum())}


def stage_report(study: Study) -> dict:
    from imutility.reproduce.analysis import build_results
    from imutility.reproduce.report import write_report

    results = build_results(study)
    write_report(study, results)
    return {"report": str(study.out / "report.md")}


STAGE_FUNCTIONS: dict[str, Callable[[Study], dict]] = {
    "label": stage_label, "train": stage_train, "evaluate": stage_evaluate, "baselines": stage_baselines,
    "report": stage_report,
}


# ------------------------------------------------------------------------------------------------- driver
def stage_fingerprints(config: ReproduceConfig) -> dict[str, str]:
    """Per stage, a hash of its settings chained with every earlier stage's."""
    out, prev = {}, __version__
    for stage in STAGES:
        prev = f"{prev}:{config.fingerprint(*STAGE_SETTINGS[stage])}"
        out[stage] = prev
    return out


def _clear(study: Study, stage: str) -> None:
    for name in STAGE_OUTPUTS[stage]:
        p = study.out / name
        if p.is_dir():
            shutil.rmtree(p)
        elif p.exists():
            p.unlink()
    (study.out / "stages" / f"{stage}.json").unlink(missing_ok=True)


def unreadable_photos(out: Path) -> int:
    """How many photos the label stage of the study in ``out`` could not read (0 before it ran)."""
    marker = Path(out) / "stages" / "label.json"
    info = json.loads(marker.read_text()).get("info", {}) if marker.is_file() else {}
    return sum(t.get("unreadable", 0) for t in info.values())


def run_study(study: Study, from_stage: str | None = None, until: str | None = None) -> dict[str, str]:
    """Run the stages in order, skipping the finished ones; returns what each stage did (ran / skipped)."""
    for value in (from_stage, until):
        if value is not None and value not in STAGES:
            from imutility.names import UnknownNameError

            raise UnknownNameError("stage", value, STAGES)
    study.out.mkdir(parents=True, exist_ok=True)
    preflight(study)
    atomic.write_json(study.out / "config.json", study.config.as_dict())
    prints = stage_fingerprints(study.config)
    start = STAGES.index(from_stage) if from_stage else len(STAGES)
    stop = STAGES.index(until) if until else len(STAGES) - 1
    done: dict[str, str] = {}
    redo = False
    for i, stage in enumerate(STAGES[: stop + 1]):
        marker = study.out / "stages" / f"{stage}.json"
        old = json.loads(marker.read_text()) if marker.is_file() else None
        fresh = old is not None and old.get("fingerprint") == prints[stage]
        if fresh and not redo and i < start:
            done[stage] = "skipped"
            study.log(f"[{stage}] up to date, skipped ({marker})")
            continue
        if old is not None or redo:  # stale, asked for, or fed by a stage just redone: start from scratch
            _clear(study, stage)
        redo = True
        t0 = time.perf_counter()
        info = STAGE_FUNCTIONS[stage](study)
        seconds = time.perf_counter() - t0
        atomic.write_json(marker, {"stage": stage, "fingerprint": prints[stage], "seconds": round(seconds, 1),
                                   "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "info": info,
                                   "cpu_count": os.cpu_count()})
        study.log(f"[{stage}] done in {seconds:.0f} s")
        done[stage] = "ran"
    return done
