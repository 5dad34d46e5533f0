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


def _library_call(fn, *args, **kwargs):
    """Turn the library's expected errors into one clean CLI error line."""
    from imutility.distort_folder import RunMismatchError

    try:
        return fn(*args, **kwargs)
    except (ValueError, KeyError, FileNotFoundError, RunMismatchError) as e:
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
