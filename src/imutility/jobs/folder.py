"""What every folder job shares: ``distort``, ``compress`` and ``filter`` read the images of a folder SRC and
write outputs into a folder OUT, one output (or one per level) per source.

- **Listing** (:class:`FolderJob`): the image files of SRC (:func:`imutility.images.list_images`: regular files
  only, so a FIFO or a link to a device is reported, never read), each with its key, its path relative to SRC;
  what was not listed though it might have been meant is reported, as is a source whose output name cannot exist
  (:func:`imutility.paths.name_too_long`: a legal 250-byte name plus the output's suffix is over the file system's 255).
- **Refusals** decided before any work: OUT inside SRC (its files would be read back), two sources that would
  write one output.
- **Reading** a source (:meth:`FolderJob.read`): its bytes, non-blocking and checked again when opened.
- **Resuming** (:meth:`FolderJob.resumable`): the run's settings recorded in ``OUT/.imutility/config.json`` (a
  rerun with others is refused), what a killed write left removed, and a journal of finished sources with the
  SHA-256 of the bytes they were made from: a rerun skips those whose outputs exist and whose bytes are unchanged.
- **Reports**: ``OUT/errors.csv`` (source, reason) when something was skipped, removed when a rerun skips
  nothing; the manifest written atomically in source order.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from imutility import atomic
from imutility.errors import InvalidInputError
from imutility.images import list_images, read_file
from imutility.paths import check_unique_outputs, name_too_long

STATE_DIR = ".imutility"
ERROR_FIELDS = ("source", "reason")
def refuse_out_inside_src(src: Path, out: Path) -> None:
    s, o = src.resolve(), out.resolve()
    if o == s or o.is_relative_to(s):
        raise InvalidInputError(f"OUT {out} is inside SRC {src}: its files would be read back as input")


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class FolderJob:
    """The sources of one folder job and what it skipped; see the module doc.

    ``outputs(key)`` gives the relative output paths a source will get (checked for length and uniqueness up
    front: a source that cannot have its output is skipped with the reason, never the end of the run);
    ``on_error(key, reason)`` hears of every skipped source as it happens.
    """

    def __init__(self, src: str | os.PathLike, out: str | os.PathLike,
                 outputs: Callable[[str], Iterable[str]] = lambda key: (key,),
                 on_error: Callable[[str, str], None] | None = None):
        self.src, self.out = Path(src), Path(out)
        refuse_out_inside_src(self.src, self.out)
        self.on_error = on_error
        self.errors: list[tuple[str, str]] = []
        self.root = self.src if self.src.is_dir() else self.src.parent
        files = list_images(self.src, on_skip=lambda path, reason: self.skip(self.key_of(Path(path)), reason))
        self.sources: dict[str, Path] = {}
        for p in files:
            key = self.key_of(p)
            reason = next(filter(None, map(name_too_long, outputs(key))), None)
            if reason is not None:
                self.skip(key, reason)
            else:
                self.sources[key] = p
        check_unique_outputs(self.sources)
        self.journal: atomic.Journal | None = None

    def key_of(self, path: Path) -> str:
        """A source's key: its path relative to SRC (its name, for a single-file SRC)."""
        try:
            return path.relative_to(self.root).as_posix() if path != self.root else path.name
        except ValueError:
            return str(path)

    def skip(self, key: str, reason: str) -> None:
        self.errors.append((key, reason))
        if self.on_error is not None:
            self.on_error(key, reason)

    def read(self, key: str) -> bytes:
        """The bytes of source ``key`` (:func:`imutility.images.read_file`: raises ImageLoadError)."""
        return read_file(self.sources[key])

    def sha256(self, key: str) -> str | None:
        """The SHA-256 of source ``key``'s bytes as they are now (None: it can no longer be read)."""
        try:
            return sha256_bytes(self.read(key))
        except Exception:  # noqa: BLE001 - unreadable now: whatever was done from it is not current
            return None

    # ------------------------------------------------------------------------------------------------ resuming
    def resumable(self, settings: Mapping[str, Any], complete: Callable[[dict], bool],
                  outputs: Callable[[dict], Iterable[str]]) -> dict[str, dict]:
        """Start or resume the run: refuse one with other ``settings``, remove what killed writes left, open the
        journal; return the journal's records (by key) of sources still listed, unchanged (same SHA-256) and
        ``complete`` (their outputs on disk). The ``outputs`` of a source that is no longer listed (deleted,
        renamed) are removed: OUT holds what the sources it lists give, nothing older."""
        state = self.out / STATE_DIR
        atomic.check_or_write_config(state / "config.json", settings)
        atomic.remove_stale_temps(self.out)
        self.journal = atomic.Journal(state / "journal.jsonl")
        records: dict[str, dict] = {}
        for r in self.journal.read():
            if r.get("source") in self.sources:
                records[r["source"]] = r
            elif isinstance(r.get("source"), str):
                self._remove(outputs(r) if r.get("ok", True) else ())
        return {k: r for k, r in records.items() if complete(r) and r.get("sha256") == self.sha256(k)}

    def _remove(self, relpaths: Iterable[str]) -> None:
        inside = self.out.resolve()
        for rel in relpaths:
            target = (self.out / rel).resolve()
            if target.is_relative_to(inside) and target.is_file():
                target.unlink()

    def record(self, record: Mapping[str, Any]) -> None:
        """A finished source, in the journal (after its outputs are on disk)."""
        self.journal.append(record)

    def close(self) -> None:
        if self.journal is not None:
            self.journal.close()

    def __enter__(self) -> FolderJob:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------------------------------------- reports
    def in_order(self, by_key: Mapping[str, Any]) -> list:
        """The values of ``by_key`` in the order of the sources."""
        return [by_key[k] for k in self.sources if k in by_key]

    def write_manifest(self, name: str, rows: Iterable[Mapping[str, Any]], fields: Sequence[str]) -> Path:
        atomic.write_csv(self.out / name, rows, fields)
        return self.out / name

    def write_errors(self, extra: Iterable[tuple[str, str]] = ()) -> Path | None:
        """``OUT/errors.csv`` with every skipped source (and ``extra``), or none (an old one removed)."""
        rows = [*self.errors, *extra]
        path = self.out / "errors.csv"
        if rows:
            atomic.write_csv(path, ({"source": s, "reason": r} for s, r in rows), ERROR_FIELDS)
            return path
        path.unlink(missing_ok=True)
        return None
