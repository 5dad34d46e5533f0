"""The ``imutility`` command line: a thin layer over the library, testable in-process with :func:`main`.

Exit status of every command: 0 success; 1 an error that stopped the command (message on
stderr); 2 bad usage; 3 finished, but some inputs were unreadable and skipped (listed on stderr
and in the output folder's ``errors.csv``); 130 interrupted.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

import click

from imutility import __version__

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_SKIPPED, EXIT_INTERRUPTED = 0, 1, 2, 3, 130


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="imutility")
def cli() -> None:
    """Image utility for machines: label, measure and predict how useful distorted images are to models."""


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
    from imutility.distort import resolve_distortions
    from imutility.distort_folder import distort_folder
    from imutility.images import DEFAULT_MAX_PIXELS

    if preset is None and not specs:
        preset = "paper-jpeg9"
    distortions = _library_call(resolve_distortions, preset, specs)
    report = _library_call(
        distort_folder, src, out, distortions, seed=seed, workers=workers,
        max_pixels=max_pixels or DEFAULT_MAX_PIXELS, progress=not no_progress,
        on_error=lambda s, r: click.echo(f"skipped {s}: {r}", err=True))
    click.echo(f"{report.n_images} images from {report.n_sources - len(report.errors)} sources "
               f"x {len(distortions)} distortions -> {report.out}"
               + (f" ({report.n_resumed} sources already done)" if report.n_resumed else ""))
    click.echo(f"manifest: {report.manifest}")
    if report.errors:
        click.echo(f"{len(report.errors)} unreadable sources skipped, listed in {report.out / 'errors.csv'}",
                   err=True)
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
@click.option("--task", type=click.Choice(["classification", "detection"]), default=None)
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
    from imutility.datasets import ClassificationDataset, CocoDetectionDataset
    from imutility.paths import shared_data
    from imutility.zoo.evaluate import classification_accuracy, detection_map

    for name in names:
        spec = _library_call(z.get_spec, name)
        labeler = _library_call(z.get_labeler, name, models=models)
        if spec.task == "classification":
            ds = ClassificationDataset.from_folder(data or shared_data("imagenet-sample"))
            r = classification_accuracy(labeler, ds, progress=True)
            click.echo(f"{name}: top-1 {r.top1:.4f} top-5 {r.top5:.4f} on {r.n} images")
        else:
            ds = CocoDetectionDataset.from_json(data or shared_data("coco2017-val128") / "instances.json")
            m = detection_map(labeler, ds, progress=True)
            click.echo(f"{name}: mAP@0.5 {m['mAP50']:.4f} mAP@[.5:.95] {m['mAP']:.4f} on {int(m['n'])} images")


def _library_call(fn, *args, **kwargs):
    """Turn the library's expected errors into one clean CLI error line."""
    from imutility.distort_folder import RunMismatchError
    from imutility.zoo.weights import WeightsError

    try:
        return fn(*args, **kwargs)
    except (ValueError, KeyError, FileNotFoundError, RunMismatchError, WeightsError, ImportError) as e:
        raise click.ClickException(str(e.args[0]) if isinstance(e, KeyError) and e.args else str(e)) from e


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
    return rv if isinstance(rv, int) else EXIT_OK


def run() -> None:
    """Console-script entry point."""
    sys.exit(main())
