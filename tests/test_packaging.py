"""The package as users install it: a wheel and an sdist that build and pass ``twine check``, with the
version from its one place, the type marker, every built-in predictor, and the ``serve`` extra declared."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from email.parser import Parser
from pathlib import Path

import pytest

import imutility
from imutility.predictor.builtin import BUILTIN

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def dist(tmp_path_factory) -> Path:
    pytest.importorskip("build")
    out = tmp_path_factory.mktemp("dist")
    res = subprocess.run([sys.executable, "-m", "build", "--wheel", "--sdist", "--outdir", str(out), str(ROOT)],
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    return out


def test_wheel_and_sdist_pass_twine_check(dist):
    pytest.importorskip("twine")
    files = sorted(dist.iterdir())
    assert {f.suffix for f in files} == {".whl", ".gz"}
    res = subprocess.run([sys.executable, "-m", "twine", "check", "--strict", *map(str, files)],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr


def test_wheel_holds_what_the_library_needs(dist):
    wheel = next(dist.glob("*.whl"))
    assert wheel.name.startswith(f"imutility-{imutility.__version__}-")
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        meta = Parser().parsestr(z.read(f"imutility-{imutility.__version__}.dist-info/METADATA").decode())
    assert "imutility/py.typed" in names and "imutility/serve.py" in names
    for folder in set(BUILTIN.values()):
        for f in ("card.json", "model.pt"):
            assert f"imutility/resources/predictors/{folder}/{f}" in names, (folder, f)
    assert meta["Version"] == imutility.__version__
    extras = meta.get_all("Provides-Extra")
    assert {"serve", "models", "test"} <= set(extras)
    assert any("fastapi" in r and 'extra == "serve"' in r for r in meta.get_all("Requires-Dist"))
