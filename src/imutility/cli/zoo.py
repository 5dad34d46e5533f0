"""The labelers: ``zoo list``, ``zoo info``, ``zoo eval``."""

from __future__ import annotations

import click

from imutility.cli.common import cli, device_option, labeler_spec_option, library_call, models_option
from imutility.tasks import TASK_NAMES


@cli.group()
def zoo() -> None:
    """Pretrained classifiers and detectors (labelers), and your own networks (docs/custom.md)."""


@zoo.command("list")
@click.option("--task", type=click.Choice(TASK_NAMES), default=None)
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@labeler_spec_option
@models_option
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
@labeler_spec_option
def zoo_info(name: str) -> None:
    """The declared card of one labeler: weights, hash, preprocessing, licence."""
    import json

    from imutility import zoo as z

    click.echo(json.dumps(library_call(z.describe, name), indent=2))


@zoo.command("eval")
@click.argument("names", nargs=-1, required=True)
@click.option("--data", type=click.Path(exists=True), default=None,
              help="ImageNet-style folder (classifiers) or COCO instances json (detectors) "
                   "[default: the shared imagenet-sample / coco2017-val128].")
@labeler_spec_option
@models_option
@device_option
def zoo_eval(names: tuple[str, ...], data: str | None, models: str | None, device: str) -> None:
    """Pristine top-1/top-5 (classifiers) or COCO mAP (detectors) of labelers."""
    from imutility import zoo as z
    from imutility.tasks import get_task

    for name in names:
        spec = library_call(z.get_spec, name)
        labeler = library_call(z.get_labeler, name, models=models, device=device)
        click.echo(library_call(get_task(spec.task).evaluate_labeler, labeler, data, progress=True))


@zoo.command("spec")
@click.argument("model_file", type=click.Path(exists=True, dir_okay=False))
@click.option("--task", type=click.Choice(TASK_NAMES), default=TASK_NAMES[0], show_default=True)
@click.option("--name", default=None, help="The labeler's name [default: the file's stem].")
@click.option("--out", "-o", type=click.Path(dir_okay=False), default=None,
              help="Where the TOML goes [default: beside MODEL_FILE, same stem]. An existing file is never replaced.")
def zoo_spec(model_file: str, task: str, name: str | None, out: str | None) -> None:
    """Draft the spec of your own ONNX network: name, SHA-256, input size and layout from the file; lines marked
    CHECK need your eyes (docs/custom.md). Then: imutility zoo info NAME --labeler-spec THE.toml"""
    from pathlib import Path

    from imutility import atomic
    from imutility.zoo.custom import draft_spec

    target = Path(out) if out else Path(model_file).with_suffix(".toml")
    if target.exists():
        raise click.ClickException(f"{target} exists: choose another --out (it is never replaced)")
    text = library_call(draft_spec, model_file, task, name)
    library_call(atomic.write_text, target, text)
    click.echo(f"wrote {target}; check the lines marked CHECK, then: imutility zoo info "
               f"{text.split(chr(34))[1]} --labeler-spec {target}")
