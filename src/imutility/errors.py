"""The one base class of every error imutility raises on purpose.

``ImutilityError`` marks an expected failure (bad input, missing weights, a refused run) whose message is
meant for the user; the CLI prints it as one line and exits 1 (2 for usage errors). Anything else that
escapes is a bug and keeps its traceback. Each subclass also keeps its older built-in base (``ValueError``,
``RuntimeError``, ...) so that code catching those still works.
"""

from __future__ import annotations


class ImutilityError(Exception):
    """Base class of imutility's deliberate errors."""


class SettingError(ImutilityError, ValueError):
    """A setting the caller chose that cannot work (a precision for another device, a threshold outside its
    range, a runtime that is not installed): the CLI reports it as a usage error (exit 2)."""


class InvalidInputError(ImutilityError, ValueError):
    """Input data that cannot be used as given (a folder without what the command needs, an output folder that
    would mix with its input): the CLI reports it in one line (exit 1)."""
