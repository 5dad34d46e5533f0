"""The ``imutility`` command line: a shell over the library, testable in-process with :func:`main`.

One module per command group; each command parses its options, calls the library once (through
:func:`~imutility.cli.common.library_call`) and presents the result. Choices and defaults come from the library's
vocabularies; decisions (where a predictor runs, how a folder job resumes, what a curve is) are the library's.
Exit statuses: :mod:`imutility.cli.common`.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

import click

from imutility.cli import data, labels, predictors, rate, serve, study, zoo  # noqa: F401 - registers the commands
from imutility.cli.common import (
    EXIT_ERROR,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_SKIPPED,
    EXIT_USAGE,
    cli,
    library_call,
    missing_extra,
)

__all__ = ["EXIT_ERROR", "EXIT_INTERRUPTED", "EXIT_OK", "EXIT_SKIPPED", "EXIT_USAGE", "cli", "library_call", "main",
           "run"]


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
    except ModuleNotFoundError as e:  # a command's own imports, on the lean install
        click.echo(f"Error: {missing_extra(e)}", err=True)
        return EXIT_ERROR
    return rv if isinstance(rv, int) else EXIT_OK


def run() -> None:
    """Console-script entry point."""
    sys.exit(main())
