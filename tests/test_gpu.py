"""On a CUDA device the predictors give the CPU's scores (marked gpu: skipped without CUDA)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import natural_image
from imutility.distort import JPEG
from imutility.predictor import Predictor
from imutility.predictor.builtin import BUILTIN

pytestmark = pytest.mark.gpu


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("name", sorted(set(BUILTIN.values())))
def test_gpu_scores_equal_cpu_scores(name):
    imgs = [JPEG(q)(natural_image(400, 300, seed=q)).image for q in (3, 8, 30, 90)]
    cpu = Predictor.load(name)(imgs)
    gpu = Predictor.load(name, device="cuda")(imgs)
    np.testing.assert_allclose(gpu, cpu, atol=2e-3)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_nvjpeg_path_agrees_with_the_cpu(tmp_path):
    from conftest import require_shared

    files = sorted(require_shared("data", "imagenet-sample").iterdir())[:32]
    cpu = {str(f): s for f, s, _ in Predictor.load("default").predict_paths(files)}
    gpu = {str(f): s for f, s, _ in Predictor.load("default", device="cuda").predict_files(files, batch_size=16)}
    assert max(abs(cpu[k] - gpu[k]) for k in cpu) < 0.03


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_reduced_precision_stays_close_to_fp32(precision):
    imgs = [JPEG(q)(natural_image(400, 300, seed=q)).image for q in (3, 8, 30, 90)]
    ref = Predictor.load("default", device="cuda")(imgs)
    got = Predictor.load("default", device="cuda", precision=precision)(imgs)
    np.testing.assert_allclose(got, ref, atol=3e-2)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_a_corrupt_jpeg_in_a_gpu_batch_costs_only_itself(tmp_path):
    from conftest import require_shared

    files = sorted(require_shared("data", "imagenet-sample").iterdir())[:15]
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(files[0].read_bytes()[:600])  # a JPEG header, then nothing
    files = files[:7] + [bad] + files[7:]
    out = list(Predictor.load("default", device="cuda").predict_files(files, batch_size=16))
    assert [f for f, _, _ in out] == files
    assert [f for f, s, e in out if e is not None] == [bad] and sum(s is not None for _, s, _ in out) == 15
