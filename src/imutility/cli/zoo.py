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
