"""Predictors: ``models`` (the built-in ones), ``predict``, ``filter``, ``train``, ``export``."""

from __future__ import annotations

import math
from dataclasses import fields
from pathlib import Path

import click

from imutility.cli.common import (
    EXIT_OK,
    EXIT_SKIPPED,
    cli,
    device_option,
    expand,
    library_call,
    load_predictor,
    model_option,
    models_option,
    precision_option,
    runtime_option,
    workers_option,
)
from imutility.predictor.card import ARCHITECTURES, FEATURE_SETS, GEOMETRIES, MODES
from imutility.predictor.training.config import RECIPES, TrainConfig

#: TrainConfig's own defaults: the CLI shows and uses them, never a second copy
_TRAIN = {f.name: f.default for f in fields(TrainConfig)}


@cli.command(short_help="The built-in predictors and what their scores mean.")
@click.option("--task", default=None, help="Only the predictors of one task.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of lines.")
def models(task: str | None, as_json: bool) -> None:
    """The built-in predictors, each with what its score means (`--model NAME` in every command)."""
    import json
    from dataclasses import asdict

    from imutility.predictor import list_predictors

    infos = library_call(list_predictors, task)
    if as_json:
        click.echo(json.dumps([asdict(i) for i in infos], indent=2))
        return
    for i in infos:
        click.echo(f"{i.name:26s} {i.task:15s} {i.architecture:9s} {i.description}")
        click.echo(f"{'':26s} {i.meaning}")


@cli.command(short_help="Is each image still useful to machines? One score each.")
@click.argument("paths", nargs=-1, required=True, type=click.Path())
@model_option
@click.option("--format", "fmt", type=click.Choice(["jsonl", "csv"]), default="jsonl", show_default=True)
@click.option("--out", "-o", "--output", "output", type=click.Path(dir_okay=False), default=None,
              help="Write the scores to this file instead of stdout.")
@click.option("--batch-size", type=click.IntRange(min=1), default=32, show_default=True)
@runtime_option()
@device_option
@precision_option()
@workers_option(0, "decoding and preparing images beside the network (processes)")
@models_option
@click.option("--no-progress", is_flag=True, help="Hide the progress bar.")
def predict(paths, model, fmt, output, batch_size, runtime, device, precision, workers, models, no_progress) -> int:
    """Is each image still useful to machines? One score per image file (or folder of images), one line each.

    With the default predictor the score is p_useful: the probability that the networks it was trained for all
    still keep their correct decision on this image (`imutility models` says it for every predictor; the first
    line on stderr says it for this one). Unreadable files are reported and skipped (exit 3).
    """
    import csv
    import io
    import json

    from tqdm.auto import tqdm

    pred = load_predictor(model, runtime, device, models, precision)
    key = pred.score_name
    click.echo(f"# {pred.card.meaning()}", err=True)
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n") if fmt == "csv" else None
    if writer:
        writer.writerow(["path", key])
    skipped = 0
    files = expand(paths)
    bar = tqdm(total=len(files), unit="img", desc="predict", disable=no_progress, leave=False)
    for path, score, err in pred.predict_paths(files, batch_size, workers, progress=bar.update):
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

        library_call(atomic.write_text, output, buf.getvalue())
    else:
        click.echo(buf.getvalue(), nl=False)
    return EXIT_SKIPPED if skipped else EXIT_OK


@cli.command("filter", short_help="Keep the images of a folder that are predicted useful.")
@click.argument("src", type=click.Path(exists=True, file_okay=False))
@click.option("--out", "-o", "out", required=True, type=click.Path(file_okay=False), help="Where kept images go.")
@click.option("--min-utility", type=float, default=0.5, show_default=True, help="Keep images scoring at least this.")
@click.option("--replace-with-pristine", type=click.Path(exists=True, file_okay=False), default=None,
              help="Put the pristine version (same relative path, any suffix) in place of each filtered image.")
@model_option
@click.option("--batch-size", type=click.IntRange(min=1), default=32, show_default=True)
@device_option
@precision_option()
@workers_option(0, "decoding and preparing images beside the network (processes)")
@models_option
@click.option("--no-progress", is_flag=True, help="Hide the progress bar.")
def filter_cmd(src, out, min_utility, replace_with_pristine, model, batch_size, device, precision, workers, models,
               no_progress) -> int:
    """Copy the images of SRC predicted useful into OUT, which ends up holding exactly those (and OUT/filter.csv
    with every file's score and decision). A rerun into the same OUT replaces the earlier run's outputs."""
    from imutility.jobs.filter import filter_folder

    if not math.isfinite(min_utility) or not 0 <= min_utility <= 1:
        raise click.BadParameter(f"{min_utility} is not in [0, 1]", param_hint="--min-utility")
    pred = load_predictor(model, device=device, models=models, precision=precision)
    rep = library_call(filter_folder, src, out, pred, min_utility, replace_with_pristine, batch_size,
                       on_error=lambda p, r: click.echo(f"skipped {p}: {r}", err=True), workers=workers,
                       progress=not no_progress)
    click.echo(f"kept {rep.kept}, replaced {rep.replaced}, filtered {rep.filtered}, unreadable {len(rep.unreadable)} "
               f"-> {rep.out} (decisions: {rep.out / 'filter.csv'})")
    return EXIT_SKIPPED if rep.unreadable else EXIT_OK


def _opt(name: str, **kwargs):
    """A ``train`` option whose default is :class:`TrainConfig`'s."""
    return click.option(f"--{name.replace('_', '-')}", name, default=_TRAIN[name], show_default=True, **kwargs)


@cli.command(short_help="Train a utility predictor on labelled images.")
@click.argument("labels", type=click.Path(exists=True, file_okay=False))
@click.argument("out", type=click.Path(file_okay=False))
@_opt("architecture", type=click.Choice(ARCHITECTURES),
      help="finetune: train a backbone end to end on one crop (the paper's way); content: keep a pretrained "
           "classifier frozen, read it over tiles of the whole image, train a small head.")
@_opt("backbone", help="finetune: resnet18 (the paper's), efficientnet_lite0, squeezenet1_1; content: "
                       "efficientnet_lite0/1/2, squeezenet1_1.")
@_opt("features", type=click.Choice(FEATURE_SETS),
      help="content: the head reads the classifier's confidence features, or its pooled features too.")
@_opt("soft_target", help="content, binary: distil this dense [0, 1] column (e.g. confidence_mean), then calibrate "
                          "on the labels.")
@_opt("max_tiles", type=click.IntRange(min=1), help="content: tiles per image at most.")
@click.option("--train-distortion", "train_distortions", multiple=True,
              help="Train only on these levels of LABELS (a spec or a preset name; repeatable); test photos are "
                   "scored at every level.")
@_opt("hidden", type=click.IntRange(min=1), help="content: hidden units of the head.")
@_opt("dropout", type=float, help="content: dropout in the head.")
@_opt("weight_decay", type=float, help="AdamW weight decay.")
@_opt("recipe", type=click.Choice(RECIPES),
      help="paper: SGD lr 1e-4, plain cross-entropy; adamw: AdamW + cosine, class-weighted loss.")
@_opt("geometry", type=click.Choice(GEOMETRIES), help="Native-resolution crops (keep the artifacts) or whole-image "
                                                      "resizing.")
@_opt("mode", type=click.Choice(MODES))
@_opt("label_column", help="Binary target: label (combined) or <labeler>.label.")
@_opt("target_column", help="Continuous target.")
@_opt("epochs", type=click.IntRange(min=1))
@_opt("batch_size", type=click.IntRange(min=1))
@click.option("--lr", type=float, default=None, help="[default: 1e-4 paper, 1e-3 adamw]")
@_opt("size", type=click.IntRange(min=1), help="Input crop / resize size.")
@click.option("--max-samples", type=click.IntRange(min=1), default=None, help="Cap the training rows.")
@_opt("val_fraction", type=click.FloatRange(0, 1, max_open=True),
      help="content: share of the training photos held out whole for calibration and validation figures (0: "
           "calibrate on the training rows).")
@_opt("within_level_weight", type=click.FloatRange(min=0),
      help="content: weight of a loss term on what separates images of one level (0: none).")
@click.option("--no-pretrained", is_flag=True, help="Random initialisation.")
@_opt("seed", type=int)
@click.option("--test-sources", type=click.Path(exists=True, dir_okay=False), default=None,
              help="JSON list of source paths to test on (e.g. a reproduce run's labels/test_sources_<task>.json) "
                   "instead of a seeded 20 % split.")
@device_option
@workers_option(0, "decoding images (finetune: DataLoader processes; content: threads of the feature pass)")
@precision_option("bf16: training (finetune) or the feature pass (content) under autocast, for a GPU.")
@models_option
@click.option("--no-progress", is_flag=True)
def train(labels, out, architecture, backbone, features, soft_target, max_tiles, train_distortions, hidden, dropout,
          weight_decay, recipe, geometry, mode, label_column, target_column, epochs, batch_size, lr, size,
          max_samples, val_fraction, within_level_weight, no_pretrained, seed, test_sources, device, workers,
          precision, models, no_progress) -> None:
    """Train a utility predictor on LABELS (an `imutility label` folder); writes OUT/model.pt, OUT/card.json and
    its ONNX graphs."""
    from imutility.distort import resolve_levels
    from imutility.predictor import train_predictor

    cfg = TrainConfig(labels=labels, architecture=architecture, features=features, soft_target=soft_target,
                      max_tiles=max_tiles, hidden=hidden, dropout=dropout, weight_decay=weight_decay,
                      train_distortions=library_call(resolve_levels, train_distortions), mode=mode,
                      label_column=label_column, target_column=target_column, backbone=backbone,
                      pretrained=not no_pretrained, recipe=recipe, geometry=geometry, size=size, epochs=epochs,
                      batch_size=batch_size, lr=lr, seed=seed, device=device, max_samples=max_samples,
                      test_sources_file=test_sources, models=models, workers=workers, precision=precision,
                      val_fraction=val_fraction, within_level_weight=within_level_weight)
    card = library_call(train_predictor, cfg, out, progress=not no_progress).raw
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
    for warning in card.get("warnings", []):
        click.secho(f"WARNING: {warning} (recorded in the card)", err=True, fg="yellow")


@cli.command(short_help="Export a predictor: one ONNX file, lean graphs, int8.")
@model_option
@click.option("--onnx", "onnx_path", default=None, type=click.Path(dir_okay=False),
              help="Write the predictor as ONE ONNX file with its deployment spec in the metadata (docs/deploy.md).")
@click.option("--graphs", is_flag=True,
              help="Write the graphs the torch-free runtime reads (onnx.json + head/network) into the predictor's "
                   "own folder, so a lean install runs it.")
@click.option("--features-dir", type=click.Path(file_okay=False), default=None,
              help="--graphs, --int8: where a missing backbone features graph goes [default: the cache].")
@click.option("--int8", is_flag=True,
              help="Give a content predictor an int8 features graph for --precision int8 on the CPU (quantized after "
                   "training, calibrated on --calibration photos; one per backbone, shared).")
@click.option("--calibration", type=click.Path(exists=True), default=None,
              help="--int8: a folder of photos (or one photo) to calibrate on, seen at several JPEG qualities.")
@click.option("--calibration-n", type=click.IntRange(min=1), default=128, show_default=True,
              help="--int8: at most this many of those photos (the first ones, sorted by path).")
@models_option
def export(model, onnx_path, graphs, features_dir, int8, calibration, calibration_n, models) -> None:
    """Export a predictor to ONNX: one deployable file (--onnx), its lean-install graphs (--graphs), an int8
    features graph (--int8). Each is checked against PyTorch on a probe image."""
    if (onnx_path is None) == (not (graphs or int8)):
        raise click.UsageError("give --onnx FILE, or --graphs and/or --int8")
    if int8 and calibration is None:
        raise click.UsageError("--int8 needs --calibration PHOTOS")
    if graphs:
        from imutility.predictor.artefacts.graphs import make_graphs

        rep = library_call(make_graphs, model, features_dir, models)
        click.echo(f"wrote {rep.sidecar} (ONNX Runtime vs PyTorch on a probe image: max |diff| {rep.max_diff:.1e})")
    if int8:
        from imutility.predictor.artefacts.quantize import make_int8

        path, diff = library_call(make_int8, model, expand([calibration])[:calibration_n], features_dir)
        click.echo(f"wrote {path} for {model} (int8 vs PyTorch fp32 on a probe image: |diff| {diff:.1e})")
    if onnx_path is not None:
        from imutility.predictor.artefacts.deploy import export_file

        path, diff, how = library_call(export_file, model, onnx_path, models)
        click.echo(f"wrote {path} ({how}; the file alone vs the predictor on a probe image: |diff| {diff:.1e})")
