"""What a labelling folder stores and how it is read back: the sources and the per-labeler caches."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

from imutility import atomic
from imutility.tasks import Source


def write_sources(out: Path, sources: Sequence[Source]) -> None:
    atomic.write_text(out / "sources.jsonl", "".join(json.dumps(s.as_json()) + "\n" for s in sources))


def read_sources(out: str | os.PathLike) -> list[Source]:
    return [Source.from_json(json.loads(line)) for line in (Path(out) / "sources.jsonl").read_text().splitlines()
            if line]


def read_cache(path: Path, strict: bool = False) -> dict[tuple[str, str], dict]:
    """A cache journal as ``{(source key, distortion): record}``; ``strict`` refuses damaged lines."""
    out: dict[tuple[str, str], dict] = {}
    for line in atomic.Journal(path).read(strict=strict):
        for r in line.get("records", []):
            out[(r["k"], r["d"])] = r
    return out


def read_outputs(out: str | os.PathLike, labeler: str) -> dict[tuple[str, str], dict]:
    """A labeler's cached raw outputs in a labelling folder, by (source key, distortion spec or PRISTINE).

    The record schema belongs to the task (:meth:`imutility.tasks.Task.records`): classification records hold
    ``top``/``p``/``pt``/``pr``, detection records ``b``/``l``/``s``; failures hold ``error``.
    """
    return read_cache(Path(out) / "cache" / f"{labeler}.jsonl")
