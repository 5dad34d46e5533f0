"""Robust image loading: any mode Pillow reads becomes 8-bit RGB, and every bad file fails the same way.

Models get 8-bit RGB in the orientation a person sees. A file that cannot give that raises
:class:`ImageLoadError`, which names the file and the reason, so a run over 10,000 files can
report and skip it.
"""

from __future__ import annotations

import contextlib
import io
import os
import stat
import threading
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from imutility.errors import ImutilityError

#: File name endings treated as images when a folder is scanned.
IMAGE_EXTENSIONS: frozenset[str] = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pnm"}
)
#: The default decompression-bomb limit (what Pillow refuses outright): an image with more pixels is refused
#: before it is decoded. ``max_pixels`` (``--max-pixels``) may lower or raise it; ``None`` removes it.
DEFAULT_MAX_PIXELS = 178_956_970
_BOMB_LOCK = threading.Lock()


class ImageLoadError(ImutilityError):
    """An image that could not be read; ``path`` and ``reason`` say which and why."""

    def __init__(self, path: str | os.PathLike | None, reason: str):
        self.path = None if path is None else str(path)
        self.reason = reason
        super().__init__(f"{self.path or '<bytes>'}: {reason}")


def load_image(source: str | os.PathLike | bytes, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Read an image file (or encoded bytes) as an 8-bit RGB :class:`PIL.Image.Image`.

    EXIF orientation is applied; grayscale, palette, CMYK, 16-bit and float images are converted
    to RGB (16-bit by keeping the high byte, so a 16-bit photo looks like its 8-bit version);
    transparent images are composited over white, as a viewer shows them. Truncated, empty,
    non-image and oversized (``> max_pixels``) files raise :class:`ImageLoadError`, and so does anything
    that is not a regular file (a FIFO, a device such as ``/dev/zero``), before a byte of it is read.
    """
    with _opened(source, max_pixels) as img:
        _strict_load(img)
        img = ImageOps.exif_transpose(img)
        return to_rgb(img)


def image_size(source: str | os.PathLike | bytes, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> tuple[int, int]:
    """``(width, height)`` of an image from its header alone (nothing decoded), with :func:`load_image`'s checks
    and errors: what a caller that must budget memory before decoding asks first."""
    with _opened(source, max_pixels) as img:
        return img.size


@contextlib.contextmanager
def _opened(source: str | os.PathLike | bytes, max_pixels: int | None):
    """The image opened lazily (header read, size checked against ``max_pixels``), every failure, here or in the
    caller's block, one :class:`ImageLoadError`."""
    path = None if isinstance(source, bytes | bytearray) else source
    try:
        if path is not None:
            check_regular_file(path)
        if (os.path.getsize(path) if path is not None else len(source)) == 0:
            raise ImageLoadError(path, "empty file (0 bytes)")
        fp = io.BytesIO(source) if path is None else open(path, "rb")  # noqa: SIM115
        with fp, warnings.catch_warnings():
            # ``max_pixels`` is THE limit: Pillow's own (a warning at 89.5 MP, an error at twice that) would
            # otherwise cap it whatever the caller asked; the header is read without decoding, then checked.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with _BOMB_LOCK:
                pillow_limit, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None
                try:
                    img = Image.open(fp)
                finally:
                    Image.MAX_IMAGE_PIXELS = pillow_limit
            w, h = img.size
            if max_pixels is not None and w * h > max_pixels:
                raise ImageLoadError(path, f"{w}x{h} = {w * h} pixels exceeds the limit of {max_pixels}"
                                           " (possible decompression bomb)")
            yield img
    except ImageLoadError:
        raise
    except FileNotFoundError as e:
        raise ImageLoadError(path, "no such file") from e
    except IsADirectoryError as e:
        raise ImageLoadError(path, "is a directory") from e
    except PermissionError as e:
        raise ImageLoadError(path, "permission denied") from e
    except UnidentifiedImageError as e:
        raise ImageLoadError(path, "not an image Pillow can identify") from e
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise ImageLoadError(path, f"decompression bomb: {e}") from e
    except (OSError, SyntaxError, ValueError, EOFError) as e:
        raise ImageLoadError(path, f"corrupt or truncated image: {e}") from e


def file_kind(st: os.stat_result) -> str | None:
    """What a non-regular file is (``"a FIFO"``, ``"a character device"``, ...), None for a regular file."""
    mode = st.st_mode
    for test, name in ((stat.S_ISREG, None), (stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO (named pipe)"),
                       (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                       (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return name
    return "not a regular file"


def check_regular_file(path: str | os.PathLike) -> None:
    """Refuse (:class:`ImageLoadError`) a path that is not a regular file, following links, without opening it:
    reading a FIFO blocks forever and a device such as ``/dev/zero`` never ends."""
    kind = file_kind(os.stat(path))
    if kind == "a directory":
        raise ImageLoadError(path, "is a directory")
    if kind is not None:
        raise ImageLoadError(path, f"not a regular file: {kind}" + (" (through a symbolic link)"
                                                                    if os.path.islink(path) else ""))


def read_file(path: str | os.PathLike, max_bytes: int | None = None) -> bytes:
    """The bytes of a regular file, read without blocking on a FIFO or running on forever on a device: the file
    is opened non-blocking and checked (``fstat``) before it is read, so one swapped in after a scan is refused
    too. ``max_bytes``: refuse a larger file. Raises :class:`ImageLoadError` (FileNotFoundError and other OS
    refusals as the same, with the reason)."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except FileNotFoundError as e:
        raise ImageLoadError(path, "no such file") from e
    except OSError as e:
        raise ImageLoadError(path, f"cannot read: {e.strerror or e}") from e
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(fd)
        kind = file_kind(st)
        if kind is not None:
            raise ImageLoadError(path, f"not a regular file: {kind}")
        if max_bytes is not None and st.st_size > max_bytes:
            raise ImageLoadError(path, f"{st.st_size} bytes exceeds the limit of {max_bytes}")
        try:
            return f.read()
        except OSError as e:
            raise ImageLoadError(path, f"cannot read: {e.strerror or e}") from e


def _strict_load(img: Image.Image) -> None:
    """Decode fully and refuse truncation even where a caller enabled LOAD_TRUNCATED_IMAGES."""
    previous = ImageFile.LOAD_TRUNCATED_IMAGES
    ImageFile.LOAD_TRUNCATED_IMAGES = False
    try:
        img.load()
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = previous


def to_rgb(img: Image.Image) -> Image.Image:
    """Convert any Pillow mode to 8-bit RGB (see :func:`load_image` for the rules)."""
    mode = img.mode
    if mode == "RGB":
        return img
    if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        arr = np.asarray(img)
        if mode == "I":
            # 32-bit integer images from 16-bit PNGs hold 0..65535; anything else is clipped.
            top = 65535 if arr.max(initial=0) > 255 else 255
            arr = np.clip(arr, 0, top)
            arr8 = (arr >> 8).astype(np.uint8) if top == 65535 else arr.astype(np.uint8)
        else:
            arr8 = (arr.astype(np.uint16) >> 8).astype(np.uint8)
        return Image.fromarray(arr8, "L").convert("RGB")
    if mode == "F":
        arr = np.asarray(img, dtype=np.float64)
        lo, hi = (0.0, 1.0) if arr.max(initial=0) <= 1.0 else (0.0, 255.0)
        arr8 = np.clip((arr - lo) / (hi - lo) * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return Image.fromarray(arr8, "L").convert("RGB")
    if mode == "P" or mode == "PA":
        img = img.convert("RGBA")
        mode = "RGBA"
    if mode in ("RGBA", "LA", "La", "RGBa"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")  # L, 1, CMYK, YCbCr, LAB, HSV, RGBX


#: Image formats that may turn up in a folder but that this installation does not read: reported, not listed.
UNSUPPORTED_EXTENSIONS: frozenset[str] = frozenset({".avif", ".heic", ".heif", ".jxl", ".jp2", ".raw", ".cr2",
                                                    ".nef", ".dng", ".arw", ".svg"})


def list_images(root: str | os.PathLike, recursive: bool = True,
                on_skip: Callable[[str, str], None] | None = None) -> list[Path]:
    """Image files under ``root`` by extension, sorted so that runs are reproducible.

    Files are selected by name only; whether they decode is :func:`load_image`'s concern, so a
    corrupt ``.jpg`` is listed here and reported later rather than silently dropped. What is NOT
    listed and might have been meant is reported through ``on_skip(path, reason)``: image formats
    this installation cannot read (``.avif``, ``.heic``, ...), symbolic links to folders (not followed,
    so a link loop cannot run forever), broken links, and image names that are not regular files (a FIFO
    named ``b.jpg`` would block a reader forever, a link to ``/dev/zero`` would never end).
    """
    root = Path(root)
    if root.is_file():
        return [root]
    if not root.is_dir():
        raise FileNotFoundError(f"no such file or folder: {root}")
    out: list[Path] = []
    stack = [root]
    while stack:
        folder = stack.pop()
        try:
            entries = sorted(folder.iterdir())
        except OSError as e:
            if on_skip is not None:
                on_skip(str(folder), f"folder not readable: {e.strerror or e}")
            continue
        for p in entries:
            if p.name.startswith("."):
                continue
            if p.is_symlink() and p.is_dir():
                if on_skip is not None:
                    on_skip(str(p), "symbolic link to a folder: not followed")
                continue
            if p.is_dir():
                if recursive:
                    stack.append(p)
                continue
            if not p.exists():
                if on_skip is not None:
                    on_skip(str(p), "broken symbolic link")
                continue
            suffix = p.suffix.lower()
            if suffix in IMAGE_EXTENSIONS:
                try:
                    kind = file_kind(p.stat())
                except OSError as e:
                    kind = f"cannot stat: {e.strerror or e}"
                if kind is None:
                    out.append(p)
                elif on_skip is not None:
                    on_skip(str(p), f"not a regular file: {kind}" + (" (through a symbolic link)"
                                                                     if p.is_symlink() else ""))
            elif suffix in UNSUPPORTED_EXTENSIONS and on_skip is not None:
                on_skip(str(p), f"{suffix} images are not supported (convert to PNG or JPEG)")
    return sorted(out)
