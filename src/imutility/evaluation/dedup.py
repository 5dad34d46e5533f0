"""Test photos that are copies of training photos: found by a perceptual hash, so a test set can be cleaned.

The same photo often sits in two collections under two names, resized or recompressed (ImageNet-train photos in
Imagenette, a class's example photo in a sample set). Byte hashes miss such copies; a perceptual hash does not:
:func:`dhash` (the difference hash: a 9x8 grey thumbnail, one bit per horizontally adjacent pair, 64 bits) changes
by a few bits under resizing, JPEG recompression and mild colour changes, and by about 32 bits between unrelated
photos. :func:`near_copies` lists every test photo within ``max_bits`` of some training photo.

    imutility dedup TEST_FOLDER --against TRAIN_FOLDER [--against ...] [--max-bits 6] [-o copies.json]
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

import numpy as np
from PIL import Image

from imutility.images import ImageLoadError, list_images, load_image

#: Hamming distance (of 64 bits) at or below which two photos count as one; unrelated photos sit near 32
MAX_BITS = 6


def dhash(image: Image.Image) -> int:
    """The 64-bit difference hash of an image."""
    grey = np.asarray(image.convert("L").resize((9, 8), Image.Resampling.LANCZOS), dtype=np.int16)
    bits = (grey[:, 1:] > grey[:, :-1]).ravel()
    return int("".join("1" if b else "0" for b in bits), 2)


def hashes(paths: Iterable[str | os.PathLike]) -> dict[str, int]:
    """Path -> dhash of every readable image (unreadable ones are left out)."""
    out = {}
    for p in paths:
        try:
            out[str(p)] = dhash(load_image(p))
        except ImageLoadError:
            continue
    return out


def _bits(a: np.ndarray, b: int) -> np.ndarray:
    x = np.bitwise_xor(a, np.uint64(b))
    return np.array([int(v).bit_count() for v in x])


def near_copies(test: Iterable[str | os.PathLike], train: Iterable[str | os.PathLike],
                max_bits: int = MAX_BITS) -> dict[str, tuple[str, int]]:
    """Test path -> (the nearest training path, its Hamming distance) for every test photo within ``max_bits``."""
    train_h = hashes(train)
    if not train_h:
        return {}
    names = list(train_h)
    arr = np.array([train_h[n] for n in names], dtype=np.uint64)
    out = {}
    for path, h in hashes(test).items():
        d = _bits(arr, h)
        i = int(np.argmin(d))
        if d[i] <= max_bits:
            out[path] = (names[i], int(d[i]))
    return out


def folder_images(folder: str | os.PathLike) -> list[Path]:
    return list_images(Path(folder))
