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


@cli.command(short_help="Find test photos that are copies of training photos (perceptual hash).")
@click.argument("test", type=click.Path(exists=True, file_okay=False))
@click.option("--against", "train", multiple=True, required=True, type=click.Path(exists=True, file_okay=False),
              help="A folder of training photos (repeatable).")
@click.option("--max-bits", type=click.IntRange(0, 64), default=6, show_default=True,
              help="Hamming distance of the 64-bit difference hashes at or below which two photos are one.")
@click.option("--out", "-o", type=click.Path(dir_okay=False), default=None,
              help="Write the copies as JSON (test path -> [training path, bits]); an existing file is replaced "
                   "atomically.")
def dedup(test: str, train: tuple[str, ...], max_bits: int, out: str | None) -> None:
    """List the photos of TEST that are resized or recompressed copies of a photo under --against, to drop them
    from a test set (a network, a predictor or a rate model trained on that photo has seen it)."""
    import json

    from imutility import atomic
    from imutility.evaluation.dedup import folder_images, near_copies

    train_paths = [p for folder in train for p in folder_images(folder)]
    copies = library_call(near_copies, folder_images(test), train_paths, max_bits)
    for t, (s, bits) in sorted(copies.items()):
        click.echo(f"{t}\t{s}\t{bits}")
    if out:
        library_call(atomic.write_text, out, json.dumps({k: list(v) for k, v in copies.items()}, indent=1) + "\n")
    click.echo(f"{len(copies)} of the test photos are copies of training photos (<= {max_bits} bits)"
               + (f"; -> {out}" if out else ""), err=True)
