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
from imutility.rate.plan import DEFAULT_FIXED_QUALITY, list_rate_models


@cli.command("compress", short_help="Each image at the lowest quality a network still works on.")
@click.argument("src", type=click.Path(exists=True))
@click.argument("out", type=click.Path(file_okay=False))
@click.option("--for", "for_network", default=None, metavar="NETWORK",
              help="Plan each image's quality for this network (a zoo network with a rate model: "
                   f"{', '.join(sorted(set(n.split('-')[0] for n in list_rate_models())))}; or yours with "
                   "--rate-model): one pass of it on the photo, one encode, one check, at most one correction.")
@click.option("--keep", type=click.FloatRange(0, 1, min_open=True), default=None,
              help="With --for: the share of its pristine confidence the network must keep in its pristine "
                   "decision (0.01, the default: the decision itself; 0.5: with at least half its confidence).")
@click.option("--rate-model", type=click.Path(exists=True, dir_okay=False), default=None,
              help="With --for: a rate model file from `imutility train-rate` [default: the shipped one].")
@click.option("--quality", type=click.IntRange(0, 100), default=None,
              help="One quality for every image (one encode, no network). The default when no network is named: "
                   f"{DEFAULT_FIXED_QUALITY}, which kept every measured network within 1 top-1 point of the "
                   "pristine photos; no per-image mode beat one fixed quality for networks it was not made for.")
@click.option("--min-utility", type=click.FloatRange(0, 1), default=None,
              help="Without --for: keep each image at the lowest quality the utility predictor (--model) scores "
                   "at least this; a binary 'still useful at all' score, flat where accuracy is kept (q 30-90): it "
                   "saves nothing over one fixed quality (docs/compress.md).")
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
def compress_cmd(src, out, for_network, keep, rate_model, quality, min_utility, codec, min_quality, max_quality,
                 search, model, target, device, precision,
                 batch_size, workers, memory_mb, models, no_progress) -> int:
    """Write every image of SRC into OUT at the lowest quality a network still works on, with OUT/manifest.csv
    (source, chosen quality, bytes, bpp, score, encodes) and OUT/qualities.png. Resumable; unreadable files are
    reported (exit 3).

    \b
    --for NETWORK (a known model): plan, check, at most one correction. Measured on 600 ILSVRC val photos no
      model here trained on, for mobilenet_v3_small: 42 % fewer bits than one fixed JPEG quality at the same
      top-1 (95 % interval 8-60 %); for other networks it LOSES bits (docs/compress.md).
    --target NETS: a full search with the networks' own utility, --min-utility the share kept [default 0.9]
      (about 8 encodes and passes per image).
    --quality Q (the default, 90, when none of these is given): one quality for every image.
    --min-utility U: a search driven by the binary utility predictor; saves nothing over one fixed quality."""
    from imutility.jobs.compress import compress_folder
    from imutility.rate import PLANNED, NetworkOracle

    chosen = [o for o, v in (("--for", for_network), ("--target", target), ("--quality", quality),
                             ("--min-utility", min_utility if target is None else None)) if v is not None]
    if len(chosen) > 1:
        raise click.UsageError("give one of --for NETWORK (plan for a known network), --quality Q (one quality), "
                               "--target NETS (search with their own utility) or --min-utility U (search with the "
                               f"utility predictor); got {' and '.join(chosen)}")
    if (keep is not None or rate_model is not None) and for_network is None:
        raise click.UsageError("--keep and --rate-model go with --for NETWORK")
    if min_utility is not None and not math.isfinite(min_utility):
        raise click.BadParameter(f"{min_utility} is not a number in [0, 1]", param_hint="--min-utility")
    lo, hi = CODECS[codec][1]
    if not lo <= min_quality <= max_quality <= hi:
        raise click.BadParameter(f"{codec} needs {lo} <= --min-quality <= --max-quality <= {hi}, got "
                                 f"{min_quality}..{max_quality}", param_hint="--min-quality/--max-quality")
    if not chosen:
        quality = DEFAULT_FIXED_QUALITY
        click.echo(f"no network named (--for NETWORK): one quality for every image, {quality} (docs/compress.md)",
                   err=True)
    if quality is not None:
        from imutility.rate.plan import FixedQuality

        lo, hi = CODECS[codec][1]
        if not lo <= quality <= hi:
            raise click.BadParameter(f"{codec} qualities run {lo}..{hi}", param_hint="--quality")
        scorer, min_utility, search = FixedQuality(quality), 0.0, PLANNED
        min_quality = max_quality = quality
    elif for_network is not None:
        from imutility.rate.plan import QualityPlanner, load_rate_model

        rate = library_call(load_rate_model, rate_model or for_network, codec)
        (labeler,) = labelers_of(for_network, models, device)
        keep = rate.card.get("default_retention", 0.01) if keep is None else keep
        scorer = library_call(QualityPlanner, rate, labeler, keep)
        min_utility, search = keep, PLANNED
    elif target:
        scorer, min_utility = NetworkOracle(labelers_of(target, models, device)), (
            0.9 if min_utility is None else min_utility)
    else:
        scorer = load_predictor(model, device=device, models=models, precision=precision)
    rep = library_call(compress_folder, src, out, min_utility, scorer, codec, min_quality, max_quality, search,
                       on_error=lambda p, r: click.echo(f"skipped {p}: {r}", err=True), progress=not no_progress,
                       batch_size=batch_size, workers=workers, memory_mb=memory_mb)
    for line in rep.summary():
        click.echo(line)
    click.echo(f"-> {rep.out}" + (f" ({rep.n_resumed} already done)" if rep.n_resumed else "")
               + f"; manifest: {rep.manifest}" + (f"; figure: {rep.figure}" if rep.n_written else ""))
    return EXIT_SKIPPED if rep.errors else EXIT_OK


@cli.command("curves", short_help="Rate-accuracy curves and BD-rates on a quality ladder.")
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


@cli.command("train-rate", short_help="Train a quality plan for a network from labelled quality ladders.")
@click.argument("labels", nargs=-1, required=True, type=click.Path(exists=True, file_okay=False))
@click.option("--for", "for_network", default=None, metavar="NETWORK",
              help="The network the plan is for (labelled with --held-out NETWORK or as a labeler); without it a "
                   "content-only plan for the labelers' ensemble.")
@click.option("--out", "-o", required=True, type=click.Path(dir_okay=False), help="The model file (.json).")
@click.option("--codec", type=click.Choice(list(CODECS)), default="jpeg", show_default=True)
@click.option("--validation", type=click.FloatRange(0, 1, min_open=True, max_open=True), default=0.2,
              show_default=True, help="Share of the photos (by photo) kept out for choosing the plan's confidences.")
@click.option("--ensemble", default=None,
              help="Without --for: the networks whose highest just-recognizable quality the content-only plan "
                   "learns [default: the folders' labelers].")
@click.option("--seed", type=int, default=0, show_default=True)
def train_rate(labels, for_network, out, codec, validation, ensemble, seed) -> None:
    """A rate model (each image's just-recognizable quality from the pristine image) from folders labelled on a
    dense ladder: `imutility label OUT -p jpeg-dense --held-out NETWORK ...`. Then: imutility compress SRC DST --for
    NETWORK --rate-model OUT."""
    from imutility.rate.training import train_rate_model

    if not out.endswith(".json"):
        raise click.BadParameter("the model file ends in .json", param_hint="--out")
    if ensemble and for_network:
        raise click.UsageError("--ensemble is for a content-only plan (without --for)")
    model = library_call(train_rate_model, labels, for_network, codec, validation, seed=seed,
                         ensemble=ensemble.split(",") if ensemble else None)
    library_call(model.save, out)
    v = model.card["validation"]
    click.echo(f"validation photos ({model.card['photos']['validation']}): mean {v['mean_bpp']:.3f} bits/pixel "
               f"(the ladder's top: {v['fixed_top_bpp']:.3f}), decision kept on {v['kept_share']:.1%}, "
               f"{v['encodes']:.2f} encodes per image")
    click.echo(f"-> {out}")


@cli.command("rate-benchmark", short_help="Which rate-control mode saves bits, judged on test photos.")
@click.argument("labels", type=click.Path(exists=True, file_okay=False))
@click.option("--judge", "judges", required=True, help="Comma-separated judging networks (labelled in LABELS).")
@click.option("--plan", "plans", multiple=True,
              help="NETWORK or NETWORK=MODEL.json: a quality plan to measure (repeatable) [default: the shipped].")
@click.option("--content-model", type=click.Path(exists=True, dir_okay=False), default=None,
              help="A content-only rate model (train-rate without --for).")
@click.option("--draws", type=click.IntRange(min=10), default=500, show_default=True, help="Bootstrap draws.")
@click.option("--codec", type=click.Choice(list(CODECS)), default="jpeg", show_default=True,
              help="Which ladder of LABELS to judge on.")
@click.option("--validation-photos-of", "validation_of", type=click.Path(exists=True, dir_okay=False), default=None,
              help="Only the validation photos of this rate model (LABELS: its training folder): for choosing "
                   "modes and defaults without touching test photos.")
@click.option("--useful-points", type=click.FloatRange(min=0, min_open=True), default=1.0, show_default=True,
              help="The useful range: the judge's metric within this many points of its pristine value (wider for a "
                   "judge scored against its own pristine output, e.g. reference-free segmentation: 1.0 there).")
@click.option("--out", "-o", required=True, type=click.Path(file_okay=False))
def rate_benchmark_cmd(labels, judges, plans, content_model, draws, codec, validation_of, useful_points, out) -> None:
    """Every rate-control mode (fixed quality, bit-rate rule, two-level check, plan, content plan, conservative
    mixes, oracles) against fixed quality at equal top-1 of each judge, with photo-bootstrap intervals, on a
    dense ladder labelled on TEST photos (never the rate models' training photos). Writes OUT/rate.json,
    OUT/rate.md (the table) and OUT/rate.png."""
    from imutility.evaluation.rate_modes import rate_benchmark, write
    from imutility.rate.plan import QualityModel, load_rate_model

    models = {}
    for spec in plans:
        net, _, path = spec.partition("=")
        models[net] = library_call(load_rate_model, path or net, codec)
    content = library_call(QualityModel.read, content_model) if content_model else None
    photos = library_call(QualityModel.read, validation_of).card.get("validation_photos") if validation_of else None
    result = library_call(rate_benchmark, labels, judges.split(","), models, content, (), draws,
                          lambda m: click.echo(m, err=True), photos, codec, useful_points)
    paths = library_call(write, result, out)
    click.echo(paths["table"].read_text())
    click.echo(f"-> {paths['json']}; table: {paths['table']}; figure: {paths['figure']}")
