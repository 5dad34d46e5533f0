"""Judging and reproducing: ``benchmark`` (predictors against the cheap rules, with intervals) and ``reproduce``
(the paper's study end to end)."""

from __future__ import annotations

from pathlib import Path

import click

from imutility.cli.common import (
    EXIT_OK,
    EXIT_SKIPPED,
    cli,
    device_option,
    library_call,
    models_option,
    named,
    workers_option,
)
from imutility.reproduce.study import STAGES


@cli.command("benchmark", short_help="Judge predictors against the cheap rules, with intervals.")
@click.argument("labels", nargs=-1, required=True, type=click.Path(exists=True, file_okay=False))
@click.option("--out", "-o", required=True, type=click.Path(file_okay=False),
              help="Where results.json, report.md and the figure go.")
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
@device_option
@click.option("--precision", "precisions", multiple=True,
              help="NAME=PRECISION: run predictor NAME in that precision (int8 on the CPU; bf16/fp16 on a GPU); "
                   "repeatable. Give one predictor twice under two names to judge both precisions side by side.")
def benchmark_cmd(labels, out, test_sources, predictors, baselines, msp, n_boot, seed, device, precisions) -> None:
    """Judge predictors against bits per pixel, the file's JPEG quality and networks' own confidence, within each
    level and pooled, with bootstrap intervals over photos (LABELS: `imutility label` folders with --held-out)."""
    from imutility.evaluation.benchmark import BenchmarkSet, BenchmarkSpec, benchmark
    from imutility.evaluation.report import write_report

    if test_sources and len(test_sources) != len(labels):
        raise click.BadParameter(f"{len(test_sources)} --test-sources for {len(labels)} LABELS folders",
                                 param_hint="--test-sources")
    sets = [BenchmarkSet(Path(d).name, Path(d), None if not test_sources or test_sources[i] == "-"
                         else Path(test_sources[i])) for i, d in enumerate(labels)]
    spec = BenchmarkSpec(sets=sets, predictors=named(predictors, "--predictor"),
                         baselines=named(baselines, "--baseline"), msp=msp.split(",") if msp else None,
                         n_boot=n_boot, seed=seed, device=device, precisions=named(precisions, "--precision"))
    results = library_call(benchmark, spec, out, log=lambda m: click.echo(m, err=True))
    library_call(write_report, results, out)
    click.echo(f"report: {Path(out) / 'report.md'} (results: {Path(out) / 'results.json'}; figure: "
               f"{Path(out) / 'within_level_auroc.png'})")


@cli.command(short_help="The paper's study end to end (Tables I-IV, Figs. 1-2).")
@click.option("--config", "config_name", default="quick", show_default=True,
              help="A built-in study config (quick, offline, paper) or a TOML file.")
@click.option("--out", "-o", type=click.Path(file_okay=False), default=None,
              help="Output folder [default: out/reproduce-<config>].")
@click.option("--from", "from_stage", type=click.Choice(STAGES),
              default=None, help="Redo this stage and every later one (earlier finished stages are kept).")
@click.option("--until", type=click.Choice(STAGES), default=None, help="Stop after this stage.")
@click.option("--shared", type=click.Path(file_okay=False), default=None, envvar="IMUTILITY_SHARED",
              help="The shared folder whose data/ the config names [default: ../shared].")
@models_option
@device_option
@workers_option(None, "computing the image-quality baselines (processes)")
@click.option("--no-progress", is_flag=True, help="No progress bars.")
@click.option("--list-configs", is_flag=True, help="List the built-in configs and exit.")
def reproduce(config_name, out, from_stage, until, shared, models, device, workers, no_progress, list_configs) -> int:
    """Run the paper's study end to end: labels, predictors, Tables I-IV, Figs. 1-2 -> OUT/report.md + results.json.

    Stages are cached: a rerun skips finished ones, an interrupted one resumes. Needs the networks of the
    config (the `paper` config needs the torchvision weight files; nothing is downloaded).
    """
    import os
    import time

    from imutility.reproduce.config import list_configs as builtin_configs
    from imutility.reproduce.config import load_config
    from imutility.reproduce.pipeline import Study, run_study, unreadable_photos

    if list_configs:
        for name in builtin_configs():
            click.echo(f"{name:10s} {load_config(name).description}")
        return EXIT_OK
    cfg = library_call(load_config, config_name)
    out = Path(out or f"out/reproduce-{cfg.name}")
    study = Study(config=cfg, out=out, shared=Path(shared) if shared else None,
                  models=Path(models) if models else None, device=device,
                  workers=workers or os.cpu_count() or 1, progress=not no_progress,
                  log=lambda m: click.echo(m, err=True))
    t0 = time.perf_counter()
    done = library_call(run_study, study, from_stage, until)
    click.echo(f"{', '.join(f'{k} {v}' for k, v in done.items())} in {time.perf_counter() - t0:.0f} s")
    if (out / "report.md").is_file() and "report" in done:
        click.echo(f"report: {out / 'report.md'} (results: {out / 'results.json'})")
    unreadable = unreadable_photos(out)
    if unreadable:
        click.echo(f"{unreadable} unreadable photos were skipped: see {out / 'labels'}/unreadable_*.csv", err=True)
        return EXIT_SKIPPED
    return EXIT_OK
