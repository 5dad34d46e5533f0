"""Shared fixtures: RNG isolation, the shared folder, and a folder of deliberately bad images."""

from __future__ import annotations

import io
import json
import os
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from imutility.paths import shared_dir

SHARED = shared_dir(os.environ.get("IMUTILITY_SHARED") or Path(__file__).resolve().parents[1] / ".." / "shared")


@pytest.fixture(autouse=True)
def isolated_rng():
    """Every test starts from the same seeds and leaves the global RNG states as it found them."""
    py, np_state, torch_state = random.getstate(), np.random.get_state(), torch.random.get_rng_state()  # noqa: NPY002
    random.seed(0)
    np.random.seed(0)  # noqa: NPY002
    torch.manual_seed(0)
    yield
    random.setstate(py)
    np.random.set_state(np_state)  # noqa: NPY002
    torch.random.set_rng_state(torch_state)


def require_shared(*parts: str) -> Path:
    path = SHARED.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"shared material not found: {path} (set IMUTILITY_SHARED)")
    return path


@pytest.fixture
def shared() -> Path:
    return require_shared()


def natural_image(w: int = 160, h: int = 120, seed: int = 0) -> Image.Image:
    """A smooth-plus-texture test image: compresses like a photo, unlike flat colour or white noise."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    base = np.stack([128 + 100 * np.sin(x / 17 + c) * np.cos(y / 23 - c) for c in range(3)], -1)
    tex = rng.normal(0, 12, (h // 4 + 1, w // 4 + 1, 3)).repeat(4, 0).repeat(4, 1)[:h, :w]
    return Image.fromarray(np.clip(base + tex, 0, 255).astype(np.uint8), "RGB")


def photo_folder(folder: Path, n: int, w: int = 160, h: int = 120) -> Path:
    """A folder of ``n`` natural test images (PNG), made if missing."""
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        natural_image(w, h, seed=i).save(folder / f"p{i}.png")
    return folder


@pytest.fixture
def bad_folder(tmp_path: Path) -> dict[str, Path]:
    """Valid photos mixed with every kind of bad or unusual file the foundation must survive."""
    d = tmp_path / "mixed"
    d.mkdir()
    files = {}
    for i in range(3):
        p = d / f"good{i}.jpg"
        natural_image(seed=i).save(p, quality=95)
        files[f"good{i}"] = p
    buf = io.BytesIO()
    natural_image(seed=9).save(buf, "JPEG", quality=95)
    files["truncated"] = d / "truncated.jpg"
    files["truncated"].write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    files["empty"] = d / "empty.jpg"
    files["empty"].write_bytes(b"")
    files["text"] = d / "notes.jpg"
    files["text"].write_text("this is not an image\n")
    files["cmyk"] = d / "cmyk.jpg"
    natural_image(seed=3).convert("CMYK").save(files["cmyk"], quality=95)
    files["png16"] = d / "deep.png"
    arr16 = (np.asarray(natural_image(seed=4).convert("L"), dtype=np.uint16) * 257)
    Image.fromarray(arr16).save(files["png16"])
    files["rgba"] = d / "alpha.png"
    rgba = natural_image(seed=5).convert("RGBA")
    rgba.putalpha(128)
    rgba.save(files["rgba"])
    return files


@pytest.fixture(scope="session")
def tiny_labels(tmp_path_factory) -> Path:
    """A labels folder in the layout of `imutility label`: q=2 JPEGs non-useful, q=90 useful, 24 sources."""
    import pandas as pd

    from imutility.distort import JPEG

    out = tmp_path_factory.mktemp("labels")
    rows = []
    for i in range(24):
        img = natural_image(96, 80, seed=i)
        for q, lab in ((2, 0.0), (90, 1.0)):
            res = JPEG(q)(img)
            rel = f"images/jpeg_q{q}/{i}.jpg"
            (out / rel).parent.mkdir(parents=True, exist_ok=True)
            (out / rel).write_bytes(res.data)
            rows.append({"key": f"{i}.png", "source": f"src/{i}.png", "augment": None, "distortion": f"jpeg:q={q}",
                         "level": float(q), "path": rel, "bytes": len(res.data), "bpp": res.bpp, "label": lab,
                         "utility_mean": 0.8 if lab else -0.6 + 0.01 * i})
    pd.DataFrame(rows).to_parquet(out / "labels.parquet")
    (out / "config.json").write_text(json.dumps({"task": "classification", "dataset": "synthetic",
                                                 "labelers": ["a", "b"], "distortions": ["jpeg:q=2", "jpeg:q=90"],
                                                 "seed": 0}))
    return out


@pytest.fixture(scope="session")
def tiny_predictor(tiny_labels, tmp_path_factory) -> Path:
    """A SqueezeNet predictor trained for 2 epochs on :func:`tiny_labels` (random initialisation)."""
    from imutility.predictor import TrainConfig, train_predictor

    out = tmp_path_factory.mktemp("pred")
    train_predictor(TrainConfig(labels=str(tiny_labels), backbone="squeezenet1_1", pretrained=False, size=64,
                                epochs=2, batch_size=8), out, progress=False)
    return out


def wait_until_serving(proc, url: str, timeout: float = 120) -> None:
    """Poll ``url`` (an ``imutility serve`` started as ``proc``) until it answers 200; fail if ``proc`` dies or
    ``timeout`` passes."""
    import time

    import httpx

    deadline = time.monotonic() + timeout
    while True:
        assert proc.poll() is None, proc.stdout.read().decode()
        assert time.monotonic() < deadline, f"imutility serve did not answer in {timeout:.0f} s"
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            time.sleep(0.5)
