"""The engine contract (imutility.predictor.runtime.engine), stated once for every architecture x runtime x
precision a predictor can run in on this machine: the same scores as the reference engine (PyTorch, fp32) within
the stated tolerance, one raw output row per prepared unit, a picklable preparer, the same failure isolation (a bad
file is one reported item, the others are scored), and the library's default placement being the CLI's."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest

from conftest import natural_image, require_shared
from imutility.distort import JPEG
from imutility.predictor import Predictor
from imutility.predictor.runtime.engine import score

#: (shipped predictor, runtime, precision, tolerance against PyTorch fp32): every combination allowed on a CPU.
#: int8: 7-bit weights (quantize.REDUCE_RANGE), mean |d| 0.05-0.06 on an AVX2-only CPU, so judged by the mean and
#: the correlation; the others by the largest difference.
PLACES = [("default-classification", "onnx", "fp32", 1e-5), ("default-classification", "onnx", "int8", None),
          ("confidence-classification", "onnx", "fp32", 1e-5), ("confidence-classification", "onnx", "int8", None),
          ("default-detection", "onnx", "fp32", 1e-5), ("default-detection", "onnx", "int8", None),
          ("finetune-classification", "onnx", "fp32", 1e-5),
          ("default-classification", "torch", "fp32", 0.0), ("finetune-classification", "torch", "fp32", 0.0)]


@pytest.fixture(scope="module")
def images():
    from imutility.images import list_images, load_image

    files = list_images(require_shared("data", "imagenette-val"))[::160][:24]
    return [JPEG(q)(load_image(f)).image for f, q in zip(files, [5, 8, 12, 50] * 6, strict=True)]


@pytest.fixture(scope="module")
def reference(images):
    return {name: Predictor.load(name, runtime="torch")(images) for name in {p[0] for p in PLACES}}


@pytest.mark.parametrize("name, runtime, precision, tol", PLACES, ids=lambda v: str(v))
def test_every_engine_keeps_the_contract(name, runtime, precision, tol, images, reference, tmp_path):
    p = Predictor.load(name, runtime=runtime, precision=precision)
    assert (p.runtime, p.precision) == (runtime, precision)
    got = p(images)
    assert got.dtype == np.float64 and got.shape == (len(images),) and np.isfinite(got).all()
    ref = reference[name]
    if tol is not None:
        assert np.abs(got - ref).max() <= tol
    else:
        d = np.abs(got - ref)
        assert d.max() > 1e-5  # really the int8 graph
        assert d.mean() < 0.075 and np.corrcoef(got, ref)[0, 1] > 0.95, (d.mean(), np.corrcoef(got, ref)[0, 1])
    # raw outputs: one row per prepared unit (a tile of a content predictor, a window of a fine-tuned one)
    prep = pickle.loads(pickle.dumps(p.engine.preparer()))  # what decoding workers receive
    prepared = [prep(im) for im in images[:5]]
    assert all(x.dtype == np.uint8 and x.ndim == 4 and x.shape[-1] == 3 for x in prepared)
    outputs = p.engine.outputs(prepared, p.device)
    assert len(outputs) == sum(len(x) for x in prepared)
    # the same arithmetic on 5 images as on all of them: float32 kernels differ by batch size in the last bits
    np.testing.assert_allclose(score(p.engine, prepared, p.device), got[:5], atol=1e-6)
    # failure isolation: a truncated file is one reported item; the rest are scored as here
    good = tmp_path / "good.jpg"
    good.write_bytes(JPEG(40)(natural_image(180, 120)).data)
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(good.read_bytes()[:200])
    out = list(p.predict_paths([good, bad, good], batch_size=2))
    assert [e is None for _, _, e in out] == [True, False, True] and "truncated" in out[1][2]
    from imutility.images import load_image

    assert out[0][1] == pytest.approx(out[2][1], abs=1e-6)  # a batch of other sizes: float rounding only
    assert out[0][1] == pytest.approx(p(load_image(good)), abs=1e-6)


def test_the_library_default_is_the_cli_engine(tmp_path, capsys):
    """`Predictor.load("default")` in a script and `imutility predict` resolve the same placement (ONNX Runtime on
    the CPU) and give the same scores, to the digit."""
    from imutility.cli import main

    p = Predictor.load("default")
    assert (p.runtime, p.precision, p.device) == ("onnx", "fp32", "cpu")
    files = []
    for i in range(3):
        f = tmp_path / f"{i}.jpg"
        f.write_bytes(JPEG(5 + 20 * i)(natural_image(200, 150, seed=i)).data)
        files.append(f)
    assert main(["predict", *map(str, files), "--no-progress"]) == 0
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    from imutility.images import load_image

    assert [x["p_useful"] for x in lines] == [round(float(s), 6) for s in p([load_image(f) for f in files])]
