"""int8 on the CPU: the shipped content predictors' quantized backbone is what ``precision="int8"`` runs (scores
move, but stay close to fp32), the lean install runs it, the wrong combinations are refused in one line, and
the quantization itself (calibration, float32 after the last convolution, hash-checked files)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import require_shared
from imutility.predictor import Predictor, PredictorLoadError
from imutility.predictor.builtin import builtin_dir
from imutility.predictor.runtime.sidecar import self_digest

ROOT = Path(__file__).resolve().parents[1]
CONTENT = ("default-classification", "confidence-classification", "default-detection")


@pytest.fixture(scope="module")
def images():
    from imutility.distort import JPEG
    from imutility.images import list_images, load_image

    files = list_images(require_shared("data", "imagenette-val"))[::160][:24]
    return [JPEG(q)(load_image(f)).image for f, q in zip(files, [5, 8, 12, 50] * 6, strict=True)]


def test_the_lean_install_runs_int8(tmp_path):
    photos = sorted(require_shared("data", "photos").glob("*.jpg"))[:3]
    res = subprocess.run([sys.executable, str(ROOT / "tests" / "lean_cli.py"), "predict", "--precision", "int8",
                          "--no-progress", *map(str, photos)], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    from imutility.images import load_image

    got = [json.loads(line)["p_useful"] for line in res.stdout.splitlines()]
    ref = Predictor.load("default", precision="int8")([load_image(p) for p in photos])
    np.testing.assert_allclose(got, ref, atol=2e-6)


def test_wrong_combinations_are_refused(tmp_path):
    from imutility.cli import main

    with pytest.raises(ValueError, match="ONNX Runtime"):
        Predictor.load("default", precision="int8", runtime="torch")
    with pytest.raises(ValueError, match="for the CPU"):
        Predictor.load("default", precision="int8", device="cuda")
    with pytest.raises(ValueError, match="for a CUDA device"):
        Predictor.load("default", precision="bf16")
    with pytest.raises(ValueError, match="content predictors"):
        Predictor.load("finetune-classification", precision="int8")
    photo = sorted(require_shared("data", "photos").glob("*.jpg"))[0]
    assert main(["predict", "--model", "finetune-classification", "--precision", "int8", str(photo)]) == 2
    # a folder whose onnx.json has no int8 graph says how to make one
    folder = tmp_path / "pred"
    shutil.copytree(builtin_dir("default-classification"), folder)
    side = json.loads((folder / "onnx.json").read_text())
    del side["features_int8"]
    (folder / "onnx.json").write_text(json.dumps({**side, "sha256": self_digest(side)}))
    with pytest.raises(PredictorLoadError, match="--int8"):
        Predictor.load(folder, precision="int8")
    assert Predictor.load(folder, runtime="onnx")  # fp32 is unaffected


def test_a_tampered_int8_graph_fails_its_hash(tmp_path):
    folder = tmp_path / "pred"
    shutil.copytree(builtin_dir("default-classification"), folder)
    name = json.loads((folder / "onnx.json").read_text())["features_int8"]["file"]
    data = bytearray((builtin_dir("default-classification").parents[1] / "backbones" / name).read_bytes())
    data[-100] ^= 0xFF
    (folder / name).write_bytes(bytes(data))  # the predictor's own folder is searched first
    with pytest.raises(PredictorLoadError, match="SHA-256"):
        Predictor.load(folder, precision="int8")


def test_quantize_a_features_graph(tmp_path):
    """A fresh quantization from a few calibration photos: int8 convolutions, the classifier left float32, the
    calibration in the metadata; recording the shipped graph for a predictor copies that metadata."""
    import onnx

    from imutility.images import list_images, load_image
    from imutility.predictor.artefacts.quantize import (
        add_int8_features,
        after_last_conv,
        calibration_tiles,
        graph_calibration,
        quantize_graph,
    )

    pred = Predictor.load("default", runtime="onnx")
    engine = pred.engine
    fp32 = builtin_dir("default").parents[1] / "backbones" / json.loads(
        (builtin_dir("default") / "onnx.json").read_text())["features"]["file"]
    photos = [load_image(f) for f in list_images(require_shared("data", "imagenet-sample"))[:6]]
    tiles = calibration_tiles(photos, engine.preparer())
    assert tiles.dtype == np.uint8 and len(tiles) >= 6
    out = quantize_graph(fp32, pred.card.values.normalise(tiles), tmp_path / "q" / "f-int8.onnx", "six photos")
    model = onnx.load(str(out))
    ops = [n.op_type for n in model.graph.node]
    assert "DequantizeLinear" in ops and graph_calibration(out) == "six photos"
    gemm = next(n for n in model.graph.node if n.op_type == "Gemm")
    producers = {o: n.op_type for n in model.graph.node for o in n.output}
    assert producers.get(gemm.input[0]) != "DequantizeLinear"  # the classifier reads float32
    assert "/_fc/Gemm" in after_last_conv(onnx.load(str(fp32)))
    assert not list((tmp_path / "q").glob("*.tmp*"))
    folder = tmp_path / "pred"
    shutil.copytree(builtin_dir("confidence-classification"), folder)
    side = json.loads((folder / "onnx.json").read_text())
    shipped = side.pop("features_int8")
    (folder / "onnx.json").write_text(json.dumps({**side, "sha256": self_digest(side)}))
    add_int8_features(folder, [])  # found where the package keeps it: recorded, not made again
    again = json.loads((folder / "onnx.json").read_text())["features_int8"]
    assert again == shipped and "128 photos" in again["calibration"]
