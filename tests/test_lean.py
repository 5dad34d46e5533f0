"""The lean install: predict, filter, compress and serve with only numpy, Pillow, onnxruntime, click and tqdm
(and FastAPI for serve), every package of the train/zoo/ray extras made unimportable (tests/lean_cli.py);
scores equal to the PyTorch engines'; a command that needs the extras says which, in one line; the package's
core dependencies are that short list; and (slow) a real wheel in a fresh venv without torch."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import tomllib
from pathlib import Path

import numpy as np
import pytest

from conftest import require_shared, wait_until_serving
from imutility.predictor import Predictor
from imutility.predictor.builtin import BUILTIN

ROOT = Path(__file__).resolve().parents[1]
LEAN = [sys.executable, str(ROOT / "tests" / "lean_cli.py")]
LEAN_DEPENDENCIES = {"numpy", "pillow", "onnxruntime", "click", "tqdm"}


def lean(*args: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([*LEAN, *args], capture_output=True, text=True, timeout=300, **kw)


@pytest.fixture(scope="module")
def photos() -> list[Path]:
    folder = require_shared("data", "photos")
    return sorted(folder.glob("*.jpg"))[:4]


@pytest.mark.parametrize("name", sorted(set(BUILTIN.values())))
def test_predict_without_torch_equals_the_pytorch_engine(name, photos):
    res = lean("predict", "--model", name, "--no-progress", *map(str, photos))
    assert res.returncode == 0, res.stderr
    lines = [json.loads(line) for line in res.stdout.splitlines()]
    from imutility.images import load_image

    reference = Predictor.load(name, runtime="torch")([load_image(p) for p in photos])
    got = np.array([line[Predictor.load(name, runtime="torch").score_name] for line in lines])
    np.testing.assert_allclose(got, reference, atol=2e-6)  # predict rounds to 6 decimals


def test_filter_and_compress_without_torch(photos, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for p in photos:
        (src / p.name).write_bytes(p.read_bytes())
    (src / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 broken")
    res = lean("filter", str(src), "--out", str(tmp_path / "kept"), "--no-progress")
    assert res.returncode == 3, res.stderr  # finished, one unreadable file reported
    assert "broken.jpg" in res.stderr and (tmp_path / "kept" / "filter.csv").is_file()
    res = lean("compress", str(src), str(tmp_path / "small"), "--min-utility", "0.6", "--no-progress")
    assert res.returncode == 3, res.stderr
    assert len(list((tmp_path / "small").glob("*.jpg"))) == len(photos)


def test_commands_that_need_the_extras_say_which(tmp_path):
    res = lean("label", str(tmp_path / "out"), "--task", "classification", "--limit", "1")
    err = res.stderr.strip().splitlines()
    assert res.returncode == 1 and len(err) == 1 and "pip install '.[train,zoo]'" in err[0], res.stderr
    res = lean("predict", "--device", "cuda", str(tmp_path / "x.jpg"))
    assert res.returncode != 0 and "[train]" in res.stderr


@pytest.mark.parametrize("name", ["default-classification", "finetune-classification"])
def test_export_without_torch_composes_the_shipped_graphs(name, photos, tmp_path):
    """The lean install with the [export] extra (onnx, no PyTorch) writes the deployable file from the shipped
    graphs; without it, one line says what to install; the file scores as `predict` does."""
    import os

    from imutility.images import load_image
    from imutility.predictor.artefacts.deploy import run_deployed

    res = lean("export", "--model", name, "--onnx", str(tmp_path / "x.onnx"))
    assert res.returncode == 1 and "pip install onnx" in res.stderr and len(res.stderr.strip().splitlines()) == 1
    res = lean("export", "--model", name, "--onnx", str(tmp_path / "m.onnx"),
               env={**os.environ, "IMUTILITY_LEAN_ALLOW": "onnx"})
    assert res.returncode == 0, res.stderr
    assert "composed from its ONNX graphs" in res.stdout and "|diff| 0.0e+00" in res.stdout
    pred = Predictor.load(name, runtime="torch")
    for p in photos[:2]:
        assert run_deployed(tmp_path / "m.onnx", load_image(p)) == pytest.approx(pred(p), abs=1e-5)


def test_serve_without_torch(photos):
    pytest.importorskip("fastapi")
    httpx = pytest.importorskip("httpx")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([*LEAN, "serve", "--port", str(port)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        wait_until_serving(proc, f"http://127.0.0.1:{port}/health")
        r = httpx.post(f"http://127.0.0.1:{port}/predict", content=photos[0].read_bytes(), timeout=60)
    finally:
        proc.terminate()
        proc.wait(30)
    from imutility.images import load_image

    assert r.json()["p_useful"] == pytest.approx(Predictor.load("default", runtime="torch")(
        load_image(photos[0])), abs=2e-6)


def test_the_core_dependencies_are_the_lean_list():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    names = {d.split(">")[0].split("=")[0].split("<")[0].split("[")[0].strip().lower()
             for d in project["dependencies"]}
    assert names == LEAN_DEPENDENCIES
    assert {"train", "zoo", "serve", "ray"} <= set(project["optional-dependencies"])


@pytest.mark.slow
def test_a_wheel_in_a_fresh_venv_predicts_without_torch(tmp_path, photos):
    """Build the wheel, install it with its core dependencies only into a new venv, predict."""
    subprocess.run([sys.executable, "-m", "build", "--wheel", "--outdir", str(tmp_path / "dist"), str(ROOT)],
                   check=True, capture_output=True, timeout=600)
    wheel = next((tmp_path / "dist").glob("imutility-*.whl"))
    subprocess.run([sys.executable, "-m", "venv", str(tmp_path / "venv")], check=True, timeout=120)
    py = tmp_path / "venv" / "bin" / "python"
    subprocess.run([str(py), "-m", "pip", "install", "--quiet", str(wheel)], check=True, timeout=900)
    res = subprocess.run([str(py), "-c", "import importlib.util as u; print(u.find_spec('torch') is None)"],
                         capture_output=True, text=True, check=True)
    assert res.stdout.strip() == "True"
    res = subprocess.run([str(tmp_path / "venv" / "bin" / "imutility"), "predict", "--no-progress",
                          *map(str, photos)], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    assert len(res.stdout.splitlines()) == len(photos)
    res = subprocess.run([str(tmp_path / "venv" / "bin" / "imutility"), "predict", "--no-progress", "--precision",
                          "int8", *map(str, photos)], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0 and len(res.stdout.splitlines()) == len(photos), res.stderr  # the shipped int8 graph
    size = sum(f.stat().st_size for f in (tmp_path / "venv").rglob("*") if f.is_file() and not f.is_symlink())
    print(f"lean install: wheel {wheel.stat().st_size / 1e6:.1f} MB, venv {size / 2**20:.0f} MiB")  # docs/deploy.md
    assert size < 400 * 2**20  # the full environment is ~7 GB


@pytest.mark.parametrize("name", sorted(set(BUILTIN.values())))
def test_each_shipped_predictor_carries_graphs_that_fit_its_card(name):
    """The wheel's graphs must be the card's own (a card retrained without `export --graphs` fails here)."""
    from imutility.predictor.builtin import builtin_dir
    from imutility.predictor.card import read_card
    from imutility.predictor.runtime.sidecar import SIDECAR_FORMAT, read_sidecar

    folder = builtin_dir(name)
    side = read_sidecar(folder)
    assert side.raw["format"] == SIDECAR_FORMAT and side.fits(read_card(folder))
    assert Predictor.load(name, runtime="onnx").source == folder  # served from the package, not the cache
