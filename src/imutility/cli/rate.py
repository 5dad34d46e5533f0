"""Rate control for machines: ``compress`` (a folder at the lowest quality that keeps it useful) and ``curves``
(rate-accuracy curves and BD-rates on a labelled quality ladder)."""

from __future__ import annotations

import math
from pathlib import Path

import click

from imutility.cli.common import (
    EXIT_OK,
    EXIT_SKIPPED,
    cli,
    device_option,
    labeler_spec_option,
    labelers_of,
    library_call,
    load_predictor,
    model_option,
    models_option,
    named,
    precision_option,
    workers_option,
)
from imutility.rate import CODECS, SEARCHES


@cli.command("compress")
@click.argument("src", type=click.Path(exists=True))
@click.argument("out", type=click.Path(file_okay=False))
@click.option("--min-utility", type=click.FloatRange(0, 1), required=True,
              help="Keep each image at the lowest quality scored at least this (in [0, 1]).")
@click.option("--codec", type=click.Choice(list(CODECS)), default="jpeg", show_default=True)
@click.option("--min-quality", type=click.IntRange(0, 100), default=1, show_default=True)
@click.option("--max-quality", type=click.IntRange(0, 100), default=95, show_default=True,
              help="Also what an image no quality satisfies is written at (flagged in the manifest).")
@click.option("--search", type=click.Choice(SEARCHES), default=SEARCHES[0], show_default=True,
              help="bisect: ~8 encodes per image, assumes the score grows with quality; exhaustive: every quality.")
@model_option
@click.option("--target", default=None,
              help="Zoo network(s), comma-separated: choose by their OWN utility against the pristine image (an "
                   "oracle that needs the networks and the pristine photo; an ensemble is averaged) instead of the "
                   "predictor.")
@device_option
@precision_option()
@click.option("--batch-size", type=click.IntRange(min=1), default=32, show_default=True,
              help="Images searched in lockstep: each round's candidates go to the predictor in one batch.")
@workers_option(0, "encoding and decoding the candidates (threads)")
@click.option("--memory-mb", type=click.FloatRange(min=1), default=2048, show_default=True,
              help="Memory the images searched at once may take (about 13 bytes per pixel each): fewer than "
                   "--batch-size large photos are searched together; one image always is.")
@labeler_spec_option
@models_option
@click.option("--no-progress", is_flag=True)
def compress_cmd(src, out, min_utility, codec, min_quality, max_quality, search, model, target, device, precision,
                 batch_size, workers, memory_mb, models, no_progress) -> int:
    """Write every image of SRC into OUT at the lowest quality that still scores MIN_UTILITY, with OUT/manifest.csv
    (source, chosen quality, bytes, bpp, score, encodes tried). Resumable; unreadable files are reported (exit 3)."""
    from imutility.jobs.compress import compress_folder
    from imutility.rate import NetworkOracle

    if not math.isfinite(min_utility):
        raise click.BadParameter(f"{min_utility} is not a number in [0, 1]", param_hint="--min-utility")
    lo, hi = CODECS[codec][1]
    if not lo <= min_quality <= max_quality <= hi:
        raise click.BadParameter(f"{codec} needs {lo} <= --min-quality <= --max-quality <= {hi}, got "
                                 f"{min_quality}..{max_quality}", param_hint="--min-quality/--max-quality")
    scorer = (NetworkOracle(labelers_of(target, models, device)) if target
              else load_predictor(model, device=device, models=models, precision=precision))
    rep = library_call(compress_folder, src, out, min_utility, scorer, codec, min_quality, max_quality, search,
                       on_error=lambda p, r: click.echo(f"skipped {p}: {r}", err=True), progress=not no_progress,
                       batch_size=batch_size, workers=workers, memory_mb=memory_mb)
    click.echo(f"{rep.n_written} images -> {rep.out} ({rep.encodes / max(rep.n_written, 1):.1f} encodes per image"
               + (f", {rep.n_resumed} already done" if rep.n_resumed else "") + f"); manifest: {rep.manifest}")
    if rep.n_unsatisfied:
        click.echo(f"{rep.n_unsatisfied} images reach {min_utility} at no quality: written at {max_quality}, "
                   "satisfied=0 in the manifest", err=True)
    return EXIT_SKIPPED if rep.errors else EXIT_OK


@cli.command("curves")
@click.argument("labels", type=click.Path(exists=True, file_okay=False))
@click.option("--out", "-o", required=True, type=click.Path(file_okay=False),
              help="Where curves.json and the figure go.")
@click.option("--predictor", "predictors", multiple=True, default=("default=default",), show_default=True,
              help="NAME=PATH of a predictor driving the adaptive quality; repeatable.")
@click.option("--test-sources", type=click.Path(exists=True, dir_okay=False), default=None,
              help="JSON list of the photos to use [default: all photos of LABELS].")
@click.option("--oracle", "oracles", default=None,
              help="Comma-separated networks of LABELS whose own retained confidence drives an oracle curve "
                   "[default: the held-out networks].")
@click.option("--useful-points", type=float, default=2.0, show_default=True,
              help="The useful range: top-1 within this many points of the pristine photos'.")
@device_option
def curves_cmd(labels, out, predictors, test_sources, oracles, useful_points, device) -> None:
    """Rate-accuracy curves of the held-out networks (top-1 or COCO mAP; fixed quality, predictor-driven, bit-rate
    rule, oracle) on a quality ladder labelled by `imutility label ... --held-out`, and the BD-rate against fixed
    quality."""
    from imutility.evaluation.curves import curves_for_folder

    result = library_call(curves_for_folder, labels, named(predictors, "--predictor"), out, test_sources,
                          oracles.split(",") if oracles else None, useful_points, device,
                          lambda m: click.echo(m, err=True))
    for net, r in result["networks"].items():
        bd = ", ".join(f"{k} {v:+.1f} %" for k, v in r["bd_rate_vs_fixed_quality"].items() if v == v)
        click.echo(f"{net}: BD-rate vs fixed quality in the useful range: {bd or 'n/a'}")
    click.echo(f"curves: {Path(out) / 'curves.json'}; figure: {Path(out) / 'rate_accuracy.png'}")
