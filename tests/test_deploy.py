"""Deploying without imutility: the script in docs/deploy.md, run with torch and imutility made unimportable,
scores exported predictors from the ONNX file's metadata alone and agrees with ``imutility predict``."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import onnx
import pytest

from conftest import natural_image
from imutility.cli import main
from imutility.distort import JPEG
from imutility.predictor import Predictor
from imutility.predictor.deployment import DEPLOY_FORMAT

DOC = Path(__file__).resolve().parents[1] / "docs" / "deploy.md"
# torch and imutility cannot be imported in the subprocess: the script must live on onnxruntime, numpy, Pillow
BLOCK = "import sys; sys.modules.update(torch=None, torchvision=None, imutility=None); import runpy; " \
        "sys.argv = sys.argv[1:]; runpy.run_path(sys.argv[0], run_name='__main__')"


def doc_script(tmp_path: Path) -> Path:
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S)
    scripts = [b for b in blocks if "custom_metadata_map" in b]
    assert len(scripts) == 1, "docs/deploy.md must hold exactly one deployment script"
    path = tmp_path / "score.py"
    path.write_text(scripts[0])
    return path


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> list[Path]:
    """JPEGs of several shapes: landscape, portrait, square, smaller than a tile, a wide strip (4 tiles)."""
    folder = tmp_path_factory.mktemp("deploy")
    shapes = [(320, 240), (240, 330), (256, 256), (150, 100), (1200, 200), (500, 375)]
    out = []
    for i, (w, h) in enumerate(shapes):
        p = folder / f"{i}.jpg"
        p.write_bytes(JPEG(8 + 11 * i)(natural_image(w, h, seed=i)).data)
        out.append(p)
    return out


@pytest.mark.parametrize("name", ["default", "finetune-classification"])
def test_doc_script_matches_predict_without_torch(name, photos, tmp_path, capsys):
    onnx_path = tmp_path / f"{name}.onnx"
    assert main(["export", "--model", name, "--onnx", str(onnx_path)]) == 0
    capsys.readouterr()
    meta = {p.key: p.value for p in onnx.load(str(onnx_path), load_external_data=False).metadata_props}
    spec = json.loads(meta["imutility.deploy"])
    assert spec["format"] == DEPLOY_FORMAT and json.loads(meta["imutility.card"])["format"]
    assert onnx_path.stat().st_mode & 0o777 == 0o644

    out = tmp_path / "predict.jsonl"
    assert main(["predict", "--model", name, *map(str, photos), "-o", str(out), "--no-progress"]) == 0
    expected = {json.loads(line)["path"]: json.loads(line)["p_useful"] for line in out.read_text().splitlines()}
    res = subprocess.run([sys.executable, "-c", BLOCK, str(doc_script(tmp_path)), str(onnx_path), *map(str, photos)],
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    got = {json.loads(line)["path"]: json.loads(line)["p_useful"] for line in res.stdout.splitlines()}
    assert set(got) == set(expected)
    spread = max(expected.values()) - min(expected.values())
    assert spread > 0.05, "the test images should not all score alike"
    for path, score in expected.items():
        assert got[path] == pytest.approx(score, abs=1e-5), path


def test_deploy_spec_states_the_pooling_the_predictor_uses():
    p = Predictor.load("default", runtime="torch")
    spec = p.deploy_spec()
    pool = p.engine.model.pool  # the trained pooling in model.pt: what the card's head declares
    assert spec["output"]["per"] == "tile" and spec["score"]["link"] == "sigmoid"
    assert (spec["pool"]["mean"], spec["pool"]["min"], spec["pool"]["bias"]) == pytest.approx(
        (float(pool.weights[0]), float(pool.weights[1]), float(pool.bias)))
    assert spec["prepare"]["size"] == p.card.tiles.size and spec["prepare"]["max_tiles"] == p.card.tiles.max_tiles
