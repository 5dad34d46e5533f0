"""Helpful errors for names looked up in a registry (operators, presets, labelers)."""

from __future__ import annotations

import difflib
from collections.abc import Iterable

from imutility.errors import ImutilityError


def unknown_name_message(kind: str, name: str, choices: Iterable[str]) -> str:
    """Say what was not found, suggest close matches, and list the choices."""
    choices = list(choices)
    close = difflib.get_close_matches(name, choices, n=3, cutoff=0.5)
    hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    return f"unknown {kind} {name!r}.{hint} Choices: {', '.join(choices)}"


class UnknownNameError(ImutilityError, KeyError, ValueError):
    """A name not in a registry; the message carries close-match suggestions."""

    def __init__(self, kind: str, name: str, choices: Iterable[str]):
        self.message = unknown_name_message(kind, name, choices)
        super().__init__(self.message)

    def __str__(self) -> str:
        return self.message
