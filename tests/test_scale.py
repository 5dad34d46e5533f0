"""Prediction at scale on one machine: decoding in worker processes, order kept, bad files (and a worker that
dies on one) reported and skipped, memory bounded over a 10,000-file folder, the CLI's --workers."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from conftest import natural_image
from imutility.cli import EXIT_SKIPPED, main
from imutility.distort import JPEG
from imutility.images import load_image
from imutility.predictor import Predictor
from imutility.predictor.geometry import InputSpec, WindowPreparer
from imutility.predictor.runtime.prepare import PreparationError, prepared_stream
from worker_killers import AlwaysDies, DieOn


@pytest.fixture
def mixed_folder(tmp_path):
    """12 JPEGs of several sizes with a truncated file, a non-image, and an image that kills a worker."""
    src = tmp_path / "mixed"
    src.mkdir()
    for i in range(12):
        (src / f"{i:02d}.jpg").write_bytes(JPEG(10 + 7 * i)(natural_image(96 + 8 * i, 80, seed=i)).data)
    (src / "05b_truncated.jpg").write_bytes((src / "05.jpg").read_bytes()[:300])
    (src / "07b_text.jpg").write_text("not an image")
    natural_image(77, 55, seed=99).save(src / "09b_killer.png")
    return src


def test_workers_give_the_same_scores_in_the_same_order(tiny_predictor, mixed_folder):
    p = Predictor.load(tiny_predictor)
    files = sorted(mixed_folder.iterdir())
    files = [f for f in files if "killer" not in f.name]
    here = list(p.predict_paths(files, batch_size=4))
    there = list(p.predict_paths(files, batch_size=4, workers=2))
    assert [f for f, _, _ in here] == [f for f, _, _ in there] == files
    errors = {f.name: e for f, _, e in there if e is not None}
    assert set(errors) == {"05b_truncated.jpg", "07b_text.jpg"}
    assert "truncated" in errors["05b_truncated.jpg"] and "identify" in errors["07b_text.jpg"]
    a = np.array([s for _, s, e in here if e is None])
    b = np.array([s for _, s, e in there if e is None])
    assert len(a) == 12 and np.allclose(a, b, atol=1e-6)
    assert np.allclose(a, p([load_image(f) for f in files if f.name[2:3] == "."]), atol=1e-6)


@pytest.mark.parametrize("chunk", [1, 3])
def test_a_worker_that_dies_costs_only_its_own_file(mixed_folder, chunk):
    """Whichever chunks are in flight when the pool breaks, only the file that killed it is reported (and with
    chunk 3 its chunk-mates are still prepared); the run goes on to the end. Deterministic: the orphans of a broken
    pool are always prepared again one file at a time, so the culprit is named whatever the timing."""
    second = mixed_folder / "03b_killer.png"  # two killers, in different chunks
    natural_image(77, 55, seed=98).save(second)
    files = sorted(mixed_folder.iterdir())
    preparer = DieOn(WindowPreparer(InputSpec(size=32)), (77, 55))
    out = list(prepared_stream([(f.name, f) for f in files], preparer, workers=2, chunk=chunk))
    assert [k for k, _, _ in out] == [f.name for f in files]
    died = [k for k, _, e in out if e is not None and "worker died on this file" in e]
    assert died == ["03b_killer.png", "09b_killer.png"]
    assert sum(t is not None for _, t, _ in out) == 12 and all(t.shape == (1, 32, 32, 3) for _, t, _ in out
                                                                if t is not None)
    other = {k: e for k, _, e in out if e is not None and k not in died}
    assert set(other) == {"05b_truncated.jpg", "07b_text.jpg"}


def test_workers_that_cannot_run_at_all_stop_the_run(mixed_folder):
    with pytest.raises(PreparationError, match="cannot run"):
        list(prepared_stream([(f.name, f) for f in sorted(mixed_folder.iterdir())], AlwaysDies(), workers=1, chunk=1))


def test_ten_thousand_files_with_bad_ones_in_worker_processes(tmp_path):
    """Every file answered once, in order; the bad ones (1 %) reported; nothing holds the whole folder."""
    from PIL import Image

    src = tmp_path / "many"
    src.mkdir()
    rng = np.random.default_rng(0)
    good = Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8))
    good.save(src / "proto.png")
    proto = (src / "proto.png").read_bytes()
    (src / "proto.png").unlink()
    names = []
    for i in range(10_000):
        name = f"{i:05d}.png"
        (src / name).write_bytes(proto if i % 100 else proto[:40])
        names.append(name)
    out = list(prepared_stream(((n, src / n) for n in names), WindowPreparer(InputSpec(size=8)), workers=2,
                               chunk=64))
    assert [k for k, _, _ in out] == names
    bad = [k for k, _, e in out if e is not None]
    assert bad == names[::100]
    assert all(np.array_equal(t[0], np.asarray(good)) for _, t, e in out if e is None)


def test_cli_predict_and_filter_with_workers(tiny_predictor, mixed_folder, tmp_path, capsys):
    (mixed_folder / "09b_killer.png").unlink()
    assert main(["predict", str(mixed_folder), "--model", str(tiny_predictor), "--no-progress"]) == EXIT_SKIPPED
    here = capsys.readouterr().out
    assert main(["predict", str(mixed_folder), "--model", str(tiny_predictor), "-j", "2", "--batch-size", "3",
                 "--no-progress"]) == EXIT_SKIPPED
    cap = capsys.readouterr()
    a, b = ([json.loads(x) for x in out.splitlines()] for out in (here, cap.out))
    assert [x["path"] for x in a] == [x["path"] for x in b] and len(a) == 12
    assert np.allclose([x["p_useful"] for x in a], [x["p_useful"] for x in b], atol=1e-5)
    assert "05b_truncated.jpg" in cap.err and "07b_text.jpg" in cap.err
    assert main(["predict", str(mixed_folder), "--model", str(tiny_predictor), "-j", "-1"]) == 2

    rc = main(["filter", str(mixed_folder), "--out", str(tmp_path / "kept"), "--min-utility", "0.5",
               "--model", str(tiny_predictor), "-j", "2", "--no-progress"])
    assert rc == EXIT_SKIPPED
    import pandas as pd

    table = pd.read_csv(tmp_path / "kept" / "filter.csv").set_index("path")
    assert len(table) == 14 and table["decision"].str.startswith("unreadable").sum() == 2
    kept = sorted(table.index[table["decision"] == "kept"])
    assert sorted(p.name for p in (tmp_path / "kept").glob("*.jpg")) == kept
    by_path = {os.path.basename(x["path"]): x["p_useful"] for x in a}
    assert kept == sorted(k for k, v in by_path.items() if v >= 0.5)
    for k in kept:
        assert (tmp_path / "kept" / k).read_bytes() == (mixed_folder / k).read_bytes()


def test_reduced_precision_is_for_a_gpu(tiny_predictor, mixed_folder):
    with pytest.raises(ValueError, match="CUDA"):
        Predictor.load(tiny_predictor, precision="bf16")
    with pytest.raises(ValueError, match="precision must be"):
        Predictor.load(tiny_predictor, precision="int4")
    assert main(["predict", str(mixed_folder), "--model", str(tiny_predictor), "--precision", "bf16"]) == 2


def test_an_unusable_device_is_one_line(tiny_predictor, mixed_folder, tmp_path, capsys):
    """This machine's CUDA (none on CI) or a device name torch does not know: one line, exit 1, no traceback."""
    import torch

    device = "cuda" if not torch.cuda.is_available() else "nosuchdevice"
    for command in (["predict", str(mixed_folder)], ["compress", str(mixed_folder), str(tmp_path / "out"),
                                                     "--min-utility", "0.5"]):
        assert main([*command, "--model", str(tiny_predictor), "--device", device]) == 1
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "cannot be used here" in err[0], err
    assert not (tmp_path / "out").exists()  # refused before any work
