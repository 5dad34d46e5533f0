"""The folder jobs (distort, compress, filter) and what they share (imutility.jobs.folder): only regular files are
read (a FIFO or a link to /dev/zero is reported, never a hang or an endless read), a name that cannot become an
output is reported and skipped, a pristine replacement never overwrites a kept image, a deleted source's output
does not outlive it, compress memory is bounded by pixels, and bad settings are usage errors."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import natural_image
from imutility.cli import EXIT_SKIPPED, EXIT_USAGE, main
from imutility.rate import compress, compress_many

ROOT = Path(__file__).resolve().parents[1]


def rows_of(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def quality_scorer(images):
    """A cheap monotone stand-in for a predictor: the file size of a PNG re-encode says how much detail is left."""
    import io

    import numpy as np

    out = []
    for im in images:
        buf = io.BytesIO()
        im.save(buf, "PNG")
        out.append(min(1.0, len(buf.getvalue()) / (im.width * im.height * 1.6)))
    return np.asarray(out)


@pytest.fixture
def special_folder(tmp_path):
    """Two photos, a FIFO named b.jpg and a symbolic link c.jpg to /dev/zero."""
    src = tmp_path / "special"
    src.mkdir()
    natural_image(120, 90, seed=1).save(src / "a.png")
    natural_image(110, 80, seed=2).save(src / "d.png")
    os.mkfifo(src / "b.jpg")
    os.symlink("/dev/zero", src / "c.jpg")
    return src


def _cli(args: list[str], timeout: float = 240) -> subprocess.CompletedProcess:
    """The command in its own process, with a deadline: a hang fails the test instead of stopping the suite."""
    return subprocess.run([sys.executable, "-m", "imutility", *args], capture_output=True, text=True, timeout=timeout,
                          cwd=ROOT)


@pytest.mark.parametrize("job", ["distort", "compress", "filter"])
def test_fifos_and_devices_are_reported_not_read(special_folder, tmp_path, tiny_predictor, job):
    out = tmp_path / "out"
    args = {"distort": ["distort", str(special_folder), str(out), "-d", "jpeg:q=20", "-j", "1"],
            "compress": ["compress", str(special_folder), str(out), "--min-utility", "0.5", "--model",
                         str(tiny_predictor)],
            "filter": ["filter", str(special_folder), "--out", str(out), "--min-utility", "0", "--model",
                       str(tiny_predictor)]}[job]
    res = _cli([*args, "--no-progress"])
    assert res.returncode == EXIT_SKIPPED, res.stderr
    assert "b.jpg" in res.stderr and "FIFO" in res.stderr and "c.jpg" in res.stderr
    if job == "filter":
        table = {r["path"]: r["decision"] for r in rows_of(out / "filter.csv")}
        assert "FIFO" in table["b.jpg"] and "character device" in table["c.jpg"]
        assert table["a.png"] == table["d.png"] == "kept"
    else:
        errors = {r["source"]: r["reason"] for r in rows_of(out / "errors.csv")}
        assert "FIFO" in errors["b.jpg"] and "character device" in errors["c.jpg"]
        assert {r["source"] for r in rows_of(out / "manifest.csv")} == {"a.png", "d.png"}


LONG = "x" * 248 + ".png"  # a legal 252-byte name; with ".jpg" appended, 256 bytes: no file system takes it


@pytest.fixture
def long_named(tmp_path):
    src = tmp_path / "long"
    src.mkdir()
    natural_image(120, 90, seed=3).save(src / LONG)
    natural_image(100, 90, seed=4).save(src / "ok.png")
    return src


def test_a_name_that_cannot_become_an_output_is_skipped_not_fatal(long_named, tmp_path, tiny_predictor, capsys):
    for _ in range(2):  # and a rerun is the same, not stuck
        out = tmp_path / "d"
        assert main(["distort", str(long_named), str(out), "-d", "jpeg:q=20", "-j", "1", "--no-progress"]) == 3
        assert [r["source"] for r in rows_of(out / "manifest.csv")] == ["ok.png"]
        assert "over the file system's 255" in rows_of(out / "errors.csv")[0]["reason"]
        out = tmp_path / "c"
        assert main(["compress", str(long_named), str(out), "--min-utility", "0.5", "--model", str(tiny_predictor),
                     "--no-progress"]) == 3
        assert [r["source"] for r in rows_of(out / "manifest.csv")] == ["ok.png"]
        assert LONG in capsys.readouterr().err
    # filter keeps a file under its own name: 252 bytes is fine (the temporary name is kept short)
    out = tmp_path / "f"
    assert main(["filter", str(long_named), "--out", str(out), "--min-utility", "0", "--model", str(tiny_predictor),
                 "--no-progress"]) == 0
    assert (out / LONG).is_file() and not list(out.glob(".*.tmp"))


def test_label_skips_a_name_too_long_for_its_images(long_named, tmp_path):
    from imutility.distort import parse_distortion
    from imutility.labelling.chunks import prepare_chunk
    from imutility.tasks import Source

    sources = [Source(key=p.name, path=str(p), target=None) for p in sorted(long_named.iterdir())]
    d = parse_distortion("jpeg:q=20")
    chunk = prepare_chunk(sources, {d.spec: d}, seed=0)
    assert [s.key for s in chunk.sources] == ["ok.png"]
    assert chunk.errors[0]["k"] == LONG and "255" in chunk.errors[0]["error"]


def test_replacing_with_pristine_never_overwrites_a_kept_image(tmp_path, tiny_predictor):
    """a.jpg is filtered out and its pristine twin is a.png; SRC also has a.png, which is kept: both survive."""
    from imutility.distort import JPEG
    from imutility.jobs.filter import filter_folder
    from imutility.predictor import Predictor

    src, pristine, out = tmp_path / "src", tmp_path / "pristine", tmp_path / "out"
    src.mkdir()
    pristine.mkdir()
    img = natural_image(120, 90, seed=5)
    (src / "a.jpg").write_bytes(JPEG(2)(img).data)
    img.save(src / "a.png")
    img.save(pristine / "a.png")
    p = Predictor.load(tiny_predictor)
    scores = dict((k, s) for k, s, _ in p.predict_stream([(n, (src / n).read_bytes()) for n in ("a.jpg", "a.png")]))
    threshold = (scores["a.jpg"] + scores["a.png"]) / 2
    assert scores["a.jpg"] < threshold <= scores["a.png"]
    filter_folder(src, out, p, min_utility=threshold, replace_with_pristine=pristine)
    table = {r["path"]: r for r in rows_of(out / "filter.csv")}
    assert table["a.png"]["decision"] == "kept" and table["a.png"]["output"] == "a.png"
    assert table["a.jpg"]["decision"] == "replaced with pristine" and table["a.jpg"]["output"] == "a.jpg.png"
    assert (out / "a.png").read_bytes() == (src / "a.png").read_bytes()
    assert (out / "a.jpg.png").read_bytes() == (pristine / "a.png").read_bytes()


def test_a_deleted_source_takes_its_output_with_it(tmp_path, tiny_predictor):
    src, out = tmp_path / "src", tmp_path / "out"
    src.mkdir()
    for i in range(3):
        natural_image(100, 80, seed=i).save(src / f"{i}.png")
    args = ["compress", str(src), str(out), "--min-utility", "0.5", "--model", str(tiny_predictor), "--no-progress"]
    assert main(args) == 0 and (out / "1.png.jpg").is_file()
    (src / "1.png").unlink()
    assert main(args) == 0
    assert not (out / "1.png.jpg").exists()
    assert [r["source"] for r in rows_of(out / "manifest.csv")] == ["0.png", "2.png"]
    d = tmp_path / "d"
    assert main(["distort", str(src), str(d), "-d", "jpeg:q=20", "-j", "1", "--no-progress"]) == 0
    (src / "2.png").unlink()
    assert main(["distort", str(src), str(d), "-d", "jpeg:q=20", "-j", "1", "--no-progress"]) == 0
    assert sorted(p.name for p in (d / "jpeg_q20").iterdir()) == ["0.png.jpg"]


def test_compress_memory_is_bounded_by_pixels_not_image_count():
    """With a pixel budget for two images, the scorer never sees more than two at once whatever batch_size says,
    a larger image still goes through on its own, and the results are compress()'s."""
    images = [natural_image(100, 100, seed=i) for i in range(5)] + [natural_image(200, 200, seed=9)]
    seen: list[int] = []

    def counting(ims):
        seen.append(len(ims))
        return quality_scorer(ims)

    got = dict(compress_many(enumerate(images), 0.7, lambda _im: counting, max_quality=60, batch_size=32,
                             max_open_pixels=25_000))
    assert max(seen) == 2
    assert [got[i].quality for i in range(6)] == [compress(im, 0.7, quality_scorer, max_quality=60).quality
                                                  for im in images]


def test_bad_compress_settings_are_usage_errors(tmp_path, capsys):
    src = tmp_path / "src"
    src.mkdir()
    natural_image(60, 40).save(src / "a.png")
    assert main(["compress", str(src), str(tmp_path / "o"), "--min-utility", "nan"]) == EXIT_USAGE
    assert main(["compress", str(src), str(tmp_path / "o"), "--min-utility", "0.5", "--min-quality", "60",
                 "--max-quality", "20"]) == EXIT_USAGE
    assert main(["compress", str(src), str(tmp_path / "o"), "--min-utility", "0.5", "--codec", "jpeg",
                 "--min-quality", "0"]) == EXIT_USAGE
    assert "--min-quality" in capsys.readouterr().err
