"""Distorting photos: ``distort`` (a folder at every level of a preset) and ``presets``."""

from __future__ import annotations

import click

from imutility.cli.common import EXIT_OK, EXIT_SKIPPED, cli, distortions, library_call, workers_option


@cli.command(short_help="Write a folder at every level of a distortion preset.")
@click.argument("src", type=click.Path(exists=True, path_type=str))
@click.argument("out", type=click.Path(file_okay=False, path_type=str))
@click.option("--preset", "-p", default=None, help="A distortion preset (see `imutility presets`) [default: "
                                                   "paper-jpeg9].")
@click.option("--distortion", "-d", "specs", multiple=True,
              help="A distortion spec such as jpeg:q=10 or blur:sigma=1+jpeg:q=20; repeatable.")
@click.option("--seed", default=0, show_default=True, help="Seed for random distortions (noise).")
@workers_option(None, "reading and distorting photos (processes)")
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

    dists = distortions(preset or (None if specs else "paper-jpeg9"), specs)
    report = library_call(
        distort_folder, src, out, dists, seed=seed, workers=None if workers is None else max(1, workers),
        max_pixels=max_pixels or DEFAULT_MAX_PIXELS, progress=not no_progress,
        on_error=lambda s, r: click.echo(f"skipped {s}: {r}", err=True))
    click.echo(f"{report.n_images} images from {report.n_sources - len(report.errors)} sources "
               f"x {len(dists)} distortions -> {report.out}"
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
