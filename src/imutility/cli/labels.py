"""Utility labels and full-reference utility: ``label``, ``relabel``, ``measure``."""

from __future__ import annotations

from pathlib import Path

import click

from imutility.cli.common import (
    EXIT_OK,
    EXIT_SKIPPED,
    cli,
    default_labelers,
    device_option,
    distortions,
    labeler_spec_option,
    labelers_of,
    library_call,
    models_option,
)
from imutility.labelling import ENGINES
from imutility.tasks import PAPER_THRESHOLDS, REFERENCES, TASK_NAMES
from imutility.utility import COMBINE_OPS


def _threshold_options(fn):
    t = PAPER_THRESHOLDS

    def num(flag: str, default: float, text: str):
        return click.option(flag, type=float, default=default, show_default=True, help=text)

    for opt in reversed([
        num("--th", t.th, "CCSP above which a kept decision is useful (Section IV)."),
        num("--tl", t.tl, "CCSP below which a lost decision is non-useful."),
        num("--phi-rec", t.phi_rec, "Rejection threshold of Eq. 2."),
        num("--det-score", t.det_score, "Detection score threshold (Eq. 6)."),
        num("--det-iou", t.det_iou, "Detection IoU threshold (Eq. 6)."),
        click.option("--require-pristine-hit", is_flag=True,
                     help="Exclude (not 0) images whose pristine detections find no object."),
        click.option("--retention", type=click.FloatRange(0, 1, min_open=True), default=t.retention,
                     show_default=True, help="On a quality ladder: the share of its pristine decision a network must "
                                             "keep for an image's just-recognizable quality (OUT/jrq.parquet)."),
        num("--seg-th", t.seg_th, "Segmentation: the share of its pristine mask quality (mIoU) a network keeps on a "
                                  "useful image."),
        num("--seg-tl", t.seg_tl, "Segmentation: below this share kept, non-useful (between: excluded)."),
        num("--seg-min", t.seg_min, "Segmentation with ground truth: photos whose pristine mask scores below this "
                                    "mIoU are excluded."),
    ]):
        fn = opt(fn)
    return fn


def _thresholds(**options) -> object:
    """The :class:`~imutility.tasks.Thresholds` of the threshold options (each option is one of its fields)."""
    from dataclasses import fields

    from imutility.labelling import Thresholds

    return Thresholds(**{f.name: options[f.name] for f in fields(Thresholds)})


@cli.command(short_help="Distort photos, run labelers, write utility labels.")
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
@click.option("--reference", type=click.Choice(REFERENCES), default=REFERENCES[0], show_default=True,
              help="Judge against the dataset's ground truth, or against the labelers' agreed pristine decisions "
                   "(any photo folder, no labels needed).")
@click.option("--preset", "-p", default=None, help="Distortion preset [default: paper-jpeg9].")
@click.option("--distortion", "-d", "specs", multiple=True, help="Distortion spec; repeatable.")
@click.option("--limit", type=click.IntRange(min=1), default=None, help="Only the first N sources of each set.")
@click.option("--balance", is_flag=True, help="Add augmented, relabelled copies of non-useful samples.")
@click.option("--seed", default=0, show_default=True)
@click.option("--chunk", default=8, show_default=True, help="Sources per chunk (the unit of resumption).")
@click.option("--engine", type=click.Choice(ENGINES), default=ENGINES[0], show_default=True,
              help="local: this process; ray: a Ray Data pipeline, one actor pool per labeler (docs/scale.md).")
@click.option("--address", default=None,
              help="ray: a running cluster (auto, ray://HEAD:10001, HOST:6379) [default: a local Ray instance].")
@click.option("--ray-actors", type=click.IntRange(min=1), default=1, show_default=True,
              help="ray: actors per labeler, each holding one copy of the network.")
@click.option("--ray-cpus-per-actor", type=click.FloatRange(min=0, min_open=True), default=1.0, show_default=True)
@_threshold_options
@labeler_spec_option
@models_option
@device_option
@click.option("--no-progress", is_flag=True)
def label(out, task, data, labels_file, labelers, held_out, reference, preset, specs, limit, balance, seed, chunk,
          engine, address, ray_actors, ray_cpus_per_actor, models, device, no_progress, **thresholds) -> int:
    """Distort a labelled dataset, run a labeler ensemble and write OUT/labels.parquet with utility labels.

    Resumable: rerun the same command after an interruption (with either engine). Unreadable images are reported
    and skipped.
    """
    import time

    from imutility import labelling as lb
    from imutility.paths import shared_data
    from imutility.tasks import get_task

    t0 = time.perf_counter()
    runner = library_call(lb.make_engine, engine, address, ray_actors, ray_cpus_per_actor)
    dists = distortions(preset or (None if specs else "paper-jpeg9"), specs)
    names = (labelers or default_labelers(task)).split(",")
    labs = labelers_of(",".join(names), models, device)
    held = labelers_of(held_out or "", models, device)
    spec = get_task(task)
    data_paths = list(data) or [shared_data(d) for d in spec.default_data]
    sources, described = library_call(spec.sources, data_paths, labels_file, limit, reference,
                                      log=lambda m: click.echo(m, err=True))
    report = library_call(
        lb.run_labelling, task, sources, dists, labs, out, dataset=described, seed=seed,
        thresholds=_thresholds(**thresholds), chunk_size=chunk,
        balance=balance, progress=not no_progress, on_error=lambda k, r: click.echo(f"skipped {k}: {r}", err=True),
        held_out=held, reference=reference, engine=runner)
    _print_counts(Path(out), [lab.name for lab in labs])
    click.echo(f"figure: {Path(out) / 'utility_by_level.png'}")
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


@cli.command(short_help="Recompute labels with new thresholds (no inference).")
@click.argument("out", type=click.Path(exists=True, file_okay=False))
@_threshold_options
def relabel(out, **thresholds) -> None:
    """Recompute OUT's labels (and just-recognizable qualities) with new thresholds from the cached model outputs
    (no inference)."""
    import json

    from imutility import labelling as lb

    library_call(lb.relabel, out, _thresholds(**thresholds))
    _print_counts(Path(out), json.loads((Path(out) / "config.json").read_text())["labelers"])


@cli.command(short_help="Full-reference utility of distorted vs pristine images.")
@click.argument("pristine", type=click.Path(exists=True))
@click.argument("distorted", type=click.Path(exists=True))
@click.option("--task", type=click.Choice(TASK_NAMES), required=True)
@click.option("--labelers", default=None, help="Comma-separated labelers [default: three offline ones].")
@click.option("--op", type=click.Choice(COMBINE_OPS), default=COMBINE_OPS[0], show_default=True,
              help="Operator combining the labelers (Eq. 3).")
@click.option("--phi-rec", type=float, default=PAPER_THRESHOLDS.phi_rec, show_default=True)
@click.option("--labels-file", type=click.Path(exists=True, dir_okay=False), default=None,
              help="Classification ground truth ('file_name class' lines) instead of the pristine predictions.")
@click.option("--annotations", type=click.Path(exists=True, dir_okay=False), default=None,
              help="Detection ground truth (COCO json) instead of the pristine detections.")
@click.option("--paper-form", is_flag=True,
              help="Report Eq. 2 as the paper prints it ((phi - phi_rec) / (phi' - phi_rec) unnormalised: below 1, "
                   "even negative, when nothing was lost) instead of the normalised utility (1 at no loss).")
@click.option("--normalised", is_flag=True, hidden=True, help="The default since 0.4 (kept for old scripts).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON (one object per pair).")
@labeler_spec_option
@models_option
@device_option
def measure(pristine, distorted, task, labelers, op, phi_rec, labels_file, annotations, paper_form, normalised,
            as_json, models, device) -> int:
    """Full-reference utility (Eq. 2-4) of DISTORTED against PRISTINE: two images or two folders (normalised: 1
    when nothing was lost, 0 at the rejection threshold)."""
    import json

    from imutility.datasets import imagenet_synset_index, read_label_table
    from imutility.measure import coco_annotations_by_file, measure_paths

    if normalised and paper_form:
        raise click.UsageError("--normalised and --paper-form exclude each other")
    names = (labelers or default_labelers(task)).split(",")
    labs = labelers_of(",".join(names), models, device)
    targets = library_call(read_label_table, Path(labels_file), imagenet_synset_index()) if labels_file else None
    ann = library_call(coco_annotations_by_file, annotations) if annotations else None
    results, errors = library_call(measure_paths, pristine, distorted, labs, op=op, phi_rec=phi_rec,
                                   targets=targets, annotations=ann, normalised=not paper_form)
    which = "Eq. 2 as printed (not 1 at no loss)" if paper_form else "normalised (1 at no loss)"
    for path, reason in errors:
        click.echo(f"skipped {path}: {reason}", err=True)
    if as_json:
        for r in results:
            click.echo(json.dumps({**r.as_dict(), "utility": "eq2" if paper_form else "normalised"}))
    else:
        click.echo(f"utility: {which}")
        click.echo(f"{'distorted':40s} " + " ".join(f"{n:>18s}" for n in names) + f" {'U (' + op + ')':>12s}")
        for r in results:
            click.echo(f"{Path(r.distorted).name:40s} " + " ".join(f"{r.per_labeler[n]:18.4f}" for n in names)
                       + f" {r.combined:12.4f}")
        if any(v != v for r in results for v in r.per_labeler.values()):
            click.echo(f"nan: the network's confidence in its pristine decision is below --phi-rec {phi_rec} (it would "
                       "reject the pristine image itself): left out, as in the paper")
    return EXIT_SKIPPED if errors else EXIT_OK
