"""What every command module of the CLI shares: the ``imutility`` group, the exit statuses, the one library-call
wrapper, and the options that mean the same in every command (their choices and defaults are the library's
vocabularies, never restated here).

Exit status of every command: 0 success; 1 an error that stopped the command (one line on stderr); 2 bad usage
(a bad option, a setting that cannot work); 3 finished, but some inputs were unreadable and skipped (listed on
stderr and in the output folder's ``errors.csv``); 130 interrupted.
"""

from __future__ import annotations

from pathlib import Path

import click

from imutility import __version__
from imutility.predictor.placement import PRECISION_NAMES

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_SKIPPED, EXIT_INTERRUPTED = 0, 1, 2, 3, 130


def _register_specs(ctx: click.Context, _param, paths: tuple[str, ...]) -> tuple[str, ...]:
    """``--labeler-spec FILE``: register a user's network, before or after the subcommand alike."""
    if paths:
        from imutility import zoo

        for path in paths:
            library_call(zoo.register, path)
    return paths


#: ``--labeler-spec FILE`` (repeatable), accepted by the group and by every command that takes a labeler name
labeler_spec_option = click.option(
    "--labeler-spec", "labeler_specs", multiple=True, type=click.Path(dir_okay=False), expose_value=False,
    callback=_register_specs, is_eager=True,
    help="A TOML file declaring your own network as a labeler (docs/custom.md); repeatable. Its name then works "
         "wherever a labeler name does. (IMUTILITY_LABELER_SPECS names several, separated by the path separator.)")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="imutility")
@click.option("--labeler-spec", "labeler_specs", multiple=True, type=click.Path(dir_okay=False),
              envvar="IMUTILITY_LABELER_SPECS", expose_value=False, callback=_register_specs, is_eager=True,
              help="A TOML file declaring your own network as a labeler (docs/custom.md); repeatable, here or after "
                   "the command.")
@click.option("--verbose", "-v", is_flag=True, help="Show third-party libraries' warnings and log lines.")
def cli(verbose: bool) -> None:
    """Image utility for machines: how useful is an image still to machine-vision models?

    Start with `imutility predict PHOTO` (is it still useful?) and `imutility compress SRC OUT` (how hard may it
    be compressed?); `imutility models` lists the built-in predictors. Labelling, training and the paper's study
    need the full install (README).
    """
    from imutility.quiet import quiet_third_party

    if not verbose:
        quiet_third_party()


def library_call(fn, *args, **kwargs):
    """Call the library; its deliberate errors become one clean CLI line: a setting that cannot work
    (:class:`~imutility.errors.SettingError`) is a usage error (exit 2), any other
    :class:`~imutility.errors.ImutilityError` or an operating system's refusal (a read-only or full disk, a missing
    file) exit 1; a package the lean install leaves out names the extra to install. Anything else is a bug and
    keeps its traceback."""
    from imutility.errors import ImutilityError, SettingError

    try:
        return fn(*args, **kwargs)
    except ModuleNotFoundError as e:
        raise click.ClickException(missing_extra(e)) from e
    except SettingError as e:
        raise click.UsageError(str(e)) from e
    except ImutilityError as e:
        raise click.ClickException(str(e.args[0]) if isinstance(e, KeyError) and e.args else str(e)) from e
    except OSError as e:  # PermissionError, ENOSPC (disk full), FileNotFoundError, ...
        where = f"{e.filename}: " if getattr(e, "filename", None) else ""
        raise click.ClickException(f"{where}{e.strerror or e}") from e


#: packages a lean-install command may need without the whole [train] extra: what to install instead
_LIGHT_EXTRAS = {"onnx": "pip install onnx (the [export] extra: no PyTorch)",
                 "fastapi": "pip install '.[serve]'", "uvicorn": "pip install '.[serve]'",
                 "python_multipart": "pip install '.[serve]'"}


def missing_extra(e: ModuleNotFoundError) -> str:
    """One line for a command that needs a package the lean install (``pip install .``) leaves out."""
    name = (e.name or "").partition(".")[0]
    if name in _LIGHT_EXTRAS:
        return f"this needs the Python package {name!r}, which is not installed: {_LIGHT_EXTRAS[name]}"
    return (f"this needs the Python package {e.name!r}, which is not installed: labelling, training and studies "
            "need the [train] extra (from the clone: pip install '.[train,zoo]'; README, 'Install')")


# ------------------------------------------------------------------------------------------------ shared options
models_option = click.option(
    "--models", "models", type=click.Path(file_okay=False), default=None, envvar="IMUTILITY_MODELS",
    help="Folder with the offline model files [default: $IMUTILITY_MODELS, else <shared>/models, see docs/zoo.md].")
device_option = click.option("--device", default="cpu", show_default=True,
                             help="Where the networks run: cpu, cuda, cuda:1.")
model_option = click.option("--model", "model", default="default", show_default=True,
                            help="A predictor folder, its card.json, or a built-in name (`imutility models`).")


def workers_option(default: int | None = 0, what: str = "decoding and preparing images beside the network"):
    """``-j/--workers N``: parallel workers for the per-image work of a command (``what``); 0: all in this process.
    One meaning in every command; the default is each command's."""
    return click.option("--workers", "-j", type=click.IntRange(min=0), default=default,
                        show_default=default is not None,
                        help=f"Parallel workers {what}; 0: none, all in this process"
                             + (" [default: all cores]." if default is None else "."))


def precision_option(help_text: str | None = None):
    """``--precision``: the same values everywhere (the library refuses what a command or device cannot use)."""
    return click.option(
        "--precision", type=click.Choice(PRECISION_NAMES), default="fp32", show_default=True,
        help=help_text or "The network's arithmetic: int8 on the CPU (a content predictor's quantized backbone: "
                          "faster, single scores move), bf16/fp16 on a CUDA device (autocast); docs/performance.md.")


def runtime_option():
    from imutility.predictor.placement import RUNTIME_CHOICES

    return click.option("--runtime", type=click.Choice(RUNTIME_CHOICES), default="auto", show_default=True,
                        help="auto: ONNX Runtime on the CPU, PyTorch on a GPU (the library's rule).")


def load_predictor(model: str, runtime: str = "auto", device: str = "cpu", models: str | None = None,
                   precision: str = "fp32"):
    from imutility.predictor import Predictor

    return library_call(Predictor.load, model, device=device, models=models, precision=precision, runtime=runtime)


def distortions(preset: str | None, specs) -> tuple:
    """Distortions from CLI options; a bad spec or preset name is a usage error (exit 2), naming what is valid."""
    from imutility.distort import DistortionSpecError, resolve_distortions
    from imutility.names import UnknownNameError

    try:
        return resolve_distortions(preset, specs)
    except (DistortionSpecError, UnknownNameError) as e:
        raise click.BadParameter(str(e), param_hint="'-d' / '--preset'") from e


def expand(paths) -> list[Path]:
    """Files and the images of folders, in order."""
    from imutility.images import list_images

    out: list[Path] = []
    for p in map(Path, paths):
        out += library_call(list_images, p) if p.is_dir() else [p]
    return out


def named(values: tuple[str, ...], what: str) -> dict[str, str]:
    """``NAME=PATH`` options (or a bare path, named after its last part)."""
    out = {}
    for v in values:
        name, sep, where = v.partition("=")
        if not sep:
            name, where = Path(v).name or v, v
        if not name or not where:
            raise click.BadParameter(f"{v!r}: expected NAME=PATH (or a path)", param_hint=what)
        out[name] = where
    return out


def default_labelers(task: str) -> str:
    from imutility.tasks import get_task

    return ",".join(get_task(task).default_labelers)


def labelers_of(names: str, models: str | None, device: str = "cpu") -> list:
    from imutility import zoo

    return [library_call(zoo.get_labeler, n.strip(), models=models, device=device) for n in names.split(",")
            if n.strip()]
