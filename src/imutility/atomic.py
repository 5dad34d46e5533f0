"""Atomic file writes: a reader (or a rerun after ``kill -9``) sees the old file or the new one, never half."""

from __future__ import annotations

import csv
import io
import json
import os
import re
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from imutility.errors import ImutilityError


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


#: mkstemp creates files readable by their owner only; atomic outputs get the usual mode instead
FILE_MODE = 0o666 & ~_umask()


def write_bytes(path: str | os.PathLike, data: bytes, durable: bool = True) -> None:
    """Write to a temporary file in the same folder, then rename over ``path``.

    The rename makes the write atomic against a killed process; ``durable`` also fsyncs the data
    first so that it survives a power loss (bulk outputs that a rerun can redo may skip that).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # the temporary name starts with at most 64 characters of the final one: a name the file system takes must
    # not become one it refuses once ".", the random part and ".tmp" are added
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name[:64]}.", suffix=".tmp")
    try:
        os.fchmod(fd, FILE_MODE)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            if durable:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


_TEMP_NAME = re.compile(r"^\..+\.[A-Za-z0-9_]{8}\.tmp$")  # what write_bytes' mkstemp names look like


def remove_stale_temps(folder: str | os.PathLike) -> int:
    """Delete the temporary files that writes killed mid-way (``kill -9``) left under ``folder``; call it when
    a run resumes into its output folder (one run at a time per folder). Returns how many were removed."""
    n = 0
    for p in Path(folder).rglob("*.tmp"):
        if _TEMP_NAME.match(p.name) and p.is_file():
            p.unlink(missing_ok=True)
            n += 1
    return n


def write_text(path: str | os.PathLike, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


def write_json(path: str | os.PathLike, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")


def json_safe(x: Any) -> Any:
    """``x`` made JSON-ready: NaN and infinities become ``None`` (JSON has no NaN), numpy scalars plain numbers,
    tuples lists; dict keys strings."""
    import math

    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if isinstance(x, dict):
        return {str(k): json_safe(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [json_safe(v) for v in x]
    if hasattr(x, "item") and callable(x.item) and getattr(x, "ndim", 1) == 0:  # a numpy scalar
        return json_safe(x.item())
    return x


def write_figure(fig, path: str | os.PathLike, dpi: int = 110, **savefig) -> None:
    """A matplotlib figure as PNG, atomically; the figure is closed."""
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, **savefig)
    plt.close(fig)
    write_bytes(path, buf.getvalue())


def write_csv(path: str | os.PathLike, rows: Iterable[Mapping[str, Any]], fieldnames: Sequence[str]) -> None:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(fieldnames), extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow(row)
    write_text(path, buf.getvalue())


class ConfigMismatchError(ImutilityError, RuntimeError):
    """A folder holds a run made with other settings; resuming into it would mix two runs."""


def check_or_write_config(path: str | os.PathLike, config: Mapping[str, Any]) -> None:
    """Record a run's settings, or refuse to resume a run whose recorded settings differ."""
    path = Path(path)
    if path.exists():
        try:
            old = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            old = None
        if old is not None and old != dict(config):
            diff = [k for k in config if old.get(k) != config[k]]
            raise ConfigMismatchError(f"{path.parent} already holds a run with different {', '.join(diff)}; "
                                      "choose another output folder or delete it to start over")
    write_json(path, dict(config))


class CorruptJournalError(ImutilityError, RuntimeError):
    """A journal holds damaged lines that are not the torn last one: work recorded there is lost."""


class Journal:
    """An append-only JSON-lines log of finished work, the record a rerun resumes from.

    Each record is one line, flushed as written; a line torn by a crash (the last one) is ignored on
    reading, so the work it described is simply done again. A damaged line ELSEWHERE is not a crash's
    doing: :meth:`read` lists it in :attr:`corrupt` (1-based line numbers) and, with ``strict``, raises
    :class:`CorruptJournalError`; :meth:`compact` drops such lines once their work has been redone.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._f = None
        self.corrupt: list[int] = []

    def read(self, strict: bool = False) -> list[dict]:
        self.corrupt = []
        if not self.path.exists():
            return []
        records = []
        with open(self.path, encoding="utf-8", errors="replace") as f:
            for n, line in enumerate(f, 1):
                if not line.endswith("\n"):
                    break  # torn final line
                try:
                    records.append(json.loads(line))
                except json.JSONDecodeError:
                    self.corrupt.append(n)
        if self.corrupt and strict:
            raise CorruptJournalError(
                f"{self.path}: line(s) {', '.join(map(str, self.corrupt[:10]))} are damaged (not the torn last line "
                "of a crash): the outputs recorded there are lost. Rerun the same `imutility label` command into "
                "this folder: it redoes exactly that work.")
        return records

    def compact(self) -> None:
        """Rewrite the journal without its damaged lines (atomically)."""
        records = self.read()
        if self.corrupt:
            self.close()
            write_text(self.path, "".join(json.dumps(r, default=str) + "\n" for r in records))
            self.corrupt = []

    def append(self, record: Mapping[str, Any]) -> None:
        if self._f is None:
            self._truncate_torn_tail()
            self._f = open(self.path, "a", encoding="utf-8")  # noqa: SIM115
        self._f.write(json.dumps(record, default=str) + "\n")
        self._f.flush()

    def _truncate_torn_tail(self) -> None:
        if not self.path.exists():
            return
        data = self.path.read_bytes()
        if data and not data.endswith(b"\n"):
            cut = data.rfind(b"\n") + 1
            with open(self.path, "r+b") as f:
                f.truncate(cut)

    def sync(self) -> None:
        if self._f is not None:
            self._f.flush()
            os.fsync(self._f.fileno())

    def close(self) -> None:
        if self._f is not None:
            self.sync()
            self._f.close()
            self._f = None

    def __enter__(self) -> Journal:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def write_parquet(path: str | os.PathLike, frame) -> None:
    """A pandas DataFrame as Parquet, atomically (no index)."""
    import io

    buf = io.BytesIO()
    frame.to_parquet(buf, index=False)
    write_bytes(path, buf.getvalue())
