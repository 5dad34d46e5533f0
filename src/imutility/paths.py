"""Where the read-only shared material lives (data and models), overridable, never written to."""

from __future__ import annotations

import os
from pathlib import Path

#: Environment variable naming the shared folder (data/, models/); default ``../shared``.
SHARED_ENV = "IMUTILITY_SHARED"


def shared_dir(override: str | os.PathLike | None = None) -> Path:
    """The shared folder: an explicit path, else ``$IMUTILITY_SHARED``, else ``../shared``."""
    if override is not None:
        return Path(override)
    env = os.environ.get(SHARED_ENV)
    return Path(env) if env else Path("..") / "shared"


def shared_data(name: str, override: str | os.PathLike | None = None) -> Path:
    """A data set under ``<shared>/data``."""
    return shared_dir(override) / "data" / name
