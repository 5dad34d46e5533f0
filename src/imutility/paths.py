"""Paths: where the read-only shared material lives (data and models), overridable, never written to;
and where each source's output goes inside an output folder (always inside it, one file per source)."""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from imutility.errors import InvalidInputError

#: Environment variable naming the shared folder (data/, models/); default ``../shared``.
SHARED_ENV = "IMUTILITY_SHARED"


#: the user's configuration file: ``shared = "/path/to/shared"`` (and nothing else, for now)
USER_CONFIG = Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config") / "imutility" / "config.toml"


def shared_dir(override: str | os.PathLike | None = None) -> Path:
    """The shared folder (``data/``, ``models/``), in this order, the first that applies:

    1. ``override`` (``--shared``);
    2. ``$IMUTILITY_SHARED``;
    3. ``shared`` in the user's config file (:data:`USER_CONFIG`, ``~/.config/imutility/config.toml``);
    4. ``../shared`` relative to the current folder, if it exists (running from the repository root);
    5. ``shared/`` beside the repository this package was installed from (an install from the clone), if it
       exists;
    6. else ``../shared`` (named in the error that follows).

    So zoo and labelling commands find the shared models and photos wherever they are run from, once one of 2-3 is
    set or the package is installed from its clone."""
    if override is not None:
        return Path(override)
    env = os.environ.get(SHARED_ENV)
    if env:
        return Path(env)
    configured = _configured_shared()
    if configured is not None:
        return configured
    here = Path("..") / "shared"
    if here.is_dir():
        return here
    beside_clone = Path(__file__).resolve().parents[3] / "shared"
    if beside_clone.is_dir():
        return beside_clone
    return here


def _configured_shared() -> Path | None:
    import tomllib

    try:
        value = tomllib.loads(USER_CONFIG.read_text()).get("shared")
    except (OSError, ValueError):
        return None
    return Path(value).expanduser() if isinstance(value, str) and value else None


def shared_data(name: str, override: str | os.PathLike | None = None) -> Path:
    """A data set under ``<shared>/data``."""
    return shared_dir(override) / "data" / name


# ------------------------------------------------------------------------------------ paths inside an output folder
def safe_relpath(key: str) -> str:
    """``key`` as a relative POSIX path that stays inside whatever folder it is joined to.

    A safe key (relative, ``/``-separated, no empty, ``.`` or ``..`` part) is returned unchanged. Any other
    key (absolute, with ``..``, backslashes or a drive) loses its root, turns ``..`` into ``__``, drops
    empty and ``.`` parts, and gets ``~`` + 8 hex digits of its SHA-1 appended, so that two different keys
    never share a path (``../x.jpg`` and ``x.jpg`` stay apart).
    """
    import hashlib

    text = str(key)
    parts = text.split("/")
    if text and "\\" not in text and all(p not in ("", ".", "..") for p in parts):
        return text
    clean = [("__" if p == ".." else p) for p in text.replace("\\", "/").split("/") if p not in ("", ".")]
    if not clean:
        clean = ["_"]
    clean[-1] += "~" + hashlib.sha1(text.encode("utf-8")).hexdigest()[:8]
    return "/".join(clean)


def output_relpath(key: str, suffix: str) -> str:
    """Where the output of one source goes, relative to its folder: the source's safe relative path with
    the output's own suffix APPENDED (``a.png`` -> ``a.png.jpg``, ``a.jpg`` -> ``a.jpg.jpg``).

    Appending rather than replacing keeps the mapping one-to-one: ``a.jpg``, ``a.png``, ``a.JPG`` and
    ``a_jpg.png`` never meet in one output file.
    """
    return safe_relpath(key) + suffix


def check_unique_outputs(keys: Iterable[str]) -> None:
    """Refuse a run in which two source keys would write one output path (never happens with
    :func:`output_relpath` short of a hash collision; checked so that it can never pass silently)."""
    seen: dict[str, str] = {}
    for k in keys:
        p = safe_relpath(k)
        if p in seen and seen[p] != k:
            raise InvalidInputError(f"sources {seen[p]!r} and {k!r} would write the same output file {p!r}")
        seen[p] = k


#: the longest file name (bytes) most file systems take (ext4, XFS, APFS, NTFS in UTF-16 units)
NAME_MAX = 255


def name_too_long(relpath: str) -> str | None:
    """Why the output path ``relpath`` cannot be created (a part of it over :data:`NAME_MAX` bytes), or None:
    a legal 250-byte source name plus the suffix an output appends is a name no file system takes."""
    for part in relpath.split("/"):
        n = len(os.fsencode(part))
        if n > NAME_MAX:
            return f"its output name would be {n} bytes long, over the file system's {NAME_MAX} (rename the file)"
    return None
