"""The cheap rules a sceptical reader tries before any predictor: bits per pixel and the JPEG quality read
from the file.

Both cost next to nothing and judge only how hard the file was compressed, never what it shows. Every
predictor figure in this project is reported beside them (``imutility.evaluation``): a predictor that
does not beat them has learnt the compression level, not utility.

``jpeg_quality`` estimates the IJG quality factor (1..100) from the file's quantisation tables: the
tables libjpeg writes at each quality are computed once (by encoding with Pillow, so the table order
and rounding are libjpeg's own) and the file's luminance table (and chrominance table, when present)
is matched to the nearest. Files from other encoders (custom tables) get the nearest IJG quality.
"""

from __future__ import annotations

import io
import os
from functools import lru_cache

import numpy as np
from PIL import Image

from imutility.errors import ImutilityError


class NotJpegError(ImutilityError, ValueError):
    """The file is not a JPEG: it has no quantisation tables."""


@lru_cache(maxsize=1)
def _ijg_tables() -> np.ndarray:
    """(100, 2, 64): the luminance and chrominance tables libjpeg writes at quality 1..100."""
    img = Image.new("RGB", (16, 16), (128, 128, 128))
    out = np.zeros((100, 2, 64), dtype=np.float64)
    for q in range(1, 101):
        buf = io.BytesIO()
        img.save(buf, "JPEG", quality=q, subsampling=2)
        tables = Image.open(io.BytesIO(buf.getvalue())).quantization
        out[q - 1, 0] = tables[0]
        out[q - 1, 1] = tables.get(1, tables[0])
    return out


def quantization_tables(source: str | os.PathLike | bytes) -> dict[int, list[int]]:
    """The quantisation tables of a JPEG file or its bytes (``{0: luminance, 1: chrominance, ...}``)."""
    fp = io.BytesIO(source) if isinstance(source, bytes | bytearray) else open(source, "rb")  # noqa: SIM115
    with fp, Image.open(fp) as img:
        tables = getattr(img, "quantization", None)
        if img.format != "JPEG" or not tables:
            raise NotJpegError(f"{source if not isinstance(source, bytes | bytearray) else 'bytes'}: "
                               f"not a JPEG file ({img.format})")
        return {int(k): list(v) for k, v in tables.items()}


def jpeg_quality(source: str | os.PathLike | bytes) -> float:
    """The IJG quality factor (1..100) whose tables are nearest to the file's (exact for libjpeg files)."""
    tables = quantization_tables(source)
    ref = _ijg_tables()
    lum = np.asarray(tables[0], dtype=np.float64)
    err = np.abs(ref[:, 0] - lum).sum(1)
    if 1 in tables:
        err = err + np.abs(ref[:, 1] - np.asarray(tables[1], dtype=np.float64)).sum(1)
    return float(np.argmin(err) + 1)


def bits_per_pixel(n_bytes: int, width: int, height: int) -> float:
    """File size in bits over the pixel count."""
    return 8.0 * n_bytes / max(1, width * height)
