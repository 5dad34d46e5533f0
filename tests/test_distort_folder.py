"""The folder job: bad files reported and skipped, parallel, resumable after kill -9, atomic outputs."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import natural_image
from imutility.cli import EXIT_SKIPPED, main
from imutility.distort import get_preset, parse_distortion
from imutility.jobs.distort import RunMismatchError, distort_folder
from imutility.paths import output_relpath


def read_csv(p: Path) -> list[dict]:
    with open(p, newline="") as f:
        return list(csv.DictReader(f))


def test_mixed_folder_processes_good_and_lists_bad(bad_folder, tmp_path, capsys):
    src = bad_folder["good0"].parent
    out = tmp_path / "out"
    rc = main(["distort", str(src), str(out), "-d", "jpeg:q=10", "-d", "jpeg:q=50", "--no-progress", "-j", "2"])
    assert rc == EXIT_SKIPPED
    rows = read_csv(out / "manifest.csv")
    good = {"good0.jpg", "good1.jpg", "good2.jpg", "cmyk.jpg", "deep.png", "alpha.png"}
    assert {r["source"] for r in rows} == good
    assert len(rows) == 2 * len(good)
    for r in rows:
        assert (out / r["path"]).stat().st_size == int(r["bytes"]) > 0
    errors = {r["source"]: r["reason"] for r in read_csv(out / "errors.csv")}
    assert set(errors) == {"truncated.jpg", "empty.jpg", "notes.jpg"}
    err = capsys.readouterr().err
    assert "skipped notes.jpg" in err and "errors.csv" in err


def test_rerun_keeps_outputs_and_does_no_work(bad_folder, tmp_path):
    src = bad_folder["good0"].parent
    out = tmp_path / "out"
    first = distort_folder(src, out, [parse_distortion("jpeg:q=10")], progress=False, workers=1)
    manifest = read_csv(out / "manifest.csv")
    stamp = {p: p.stat().st_mtime_ns for p in out.rglob("*.jpg")}
    second = distort_folder(src, out, [parse_distortion("jpeg:q=10")], progress=False, workers=1)
    assert second.n_resumed == first.n_sources - len(first.errors)
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*.jpg")} == stamp
    assert read_csv(out / "manifest.csv") == manifest
    assert second.n_images == first.n_images


def test_changed_settings_refuse_to_mix(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    natural_image().save(src / "a.png")
    distort_folder(src, tmp_path / "o", [parse_distortion("jpeg:q=10")], progress=False, workers=1)
    with pytest.raises(RunMismatchError, match="distortions"):
        distort_folder(src, tmp_path / "o", [parse_distortion("jpeg:q=20")], progress=False, workers=1)
    rc = main(["distort", str(src), str(tmp_path / "o"), "-d", "jpeg:q=20", "--no-progress"])
    assert rc == 1


def test_same_stem_sources_never_share_an_output(tmp_path):
    """x.jpg + x.JPG, y.jpg + y_jpg.png, a.jpg + a.png: each source keeps its own output file."""
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    names = ["a.png", "a.jpg", "sub/a.png", "x.jpg", "x.JPG", "y.jpg", "y_jpg.png", "y.jpg.png"]
    for i, n in enumerate(names):
        natural_image(seed=i).save(src / n, format="PNG" if n.endswith("png") else "JPEG")
    rep = distort_folder(src, tmp_path / "o", [parse_distortion("jpeg:q=10")], progress=False, workers=1)
    rows = read_csv(rep.manifest)
    assert sorted(r["source"] for r in rows) == sorted(names)
    assert len({r["path"] for r in rows}) == len(names)
    assert {r["source"]: r["path"] for r in rows}["x.JPG"] == "jpeg_q10/x.JPG.jpg"
    # every output is the distortion of ITS source: decode both and compare (different seeds, different photos)
    for r in rows:
        out = np.asarray(Image.open(tmp_path / "o" / r["path"]).convert("RGB"), dtype=float)
        mine = np.asarray(Image.open(src / r["source"]).convert("RGB"), dtype=float)
        others = [np.asarray(Image.open(src / n).convert("RGB"), dtype=float) for n in names if n != r["source"]]
        err = np.abs(out - mine).mean()
        assert all(err < np.abs(out - o).mean() for o in others), r


def test_output_paths_stay_inside_out():
    assert output_relpath("a/b.png", ".jpg") == "a/b.png.jpg"
    for hostile in ("/etc/passwd.png", "../../x.jpg", "a/../../x.jpg", "C:\\Users\\x.jpg", "./a/./b.jpg", ""):
        rel = output_relpath(hostile, ".jpg")
        assert not rel.startswith("/") and ".." not in rel.split("/") and "\\" not in rel, rel
    assert output_relpath("../x.jpg", ".jpg") != output_relpath("__/x.jpg", ".jpg")
    assert output_relpath("x.jpg", ".jpg") != output_relpath("./x.jpg", ".jpg")


def test_noise_outputs_do_not_depend_on_worker_count(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for i in range(6):
        natural_image(seed=i).save(src / f"{i}.png")
    d = [parse_distortion("noise:sigma=10")]
    distort_folder(src, tmp_path / "a", d, seed=3, progress=False, workers=1)
    distort_folder(src, tmp_path / "b", d, seed=3, progress=False, workers=2)
    for p in sorted((tmp_path / "a").rglob("*.png")):
        assert p.read_bytes() == (tmp_path / "b" / p.relative_to(tmp_path / "a")).read_bytes()


def test_single_file_source(tmp_path):
    p = tmp_path / "one.png"
    natural_image().save(p)
    rep = distort_folder(p, tmp_path / "o", get_preset("paper-jpeg9").distortions, progress=False, workers=1)
    assert rep.n_images == 9


def test_kill_dash_9_then_resume_equals_uninterrupted_run(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for i in range(40):
        natural_image(640, 480, seed=i).save(src / f"img{i:02d}.png")
    args = ["-d", "jpeg:q=5", "-d", "webp:q=10", "-d", "noise:sigma=10", "--no-progress", "-j", "1"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    out = tmp_path / "interrupted"
    proc = subprocess.Popen([sys.executable, "-m", "imutility", "distort", str(src), str(out), *args], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    journal = out / ".imutility" / "journal.jsonl"
    deadline = time.time() + 60
    while time.time() < deadline:
        if journal.exists() and journal.read_text().count("\n") >= 5:
            break
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done_before = journal.read_text().count("\n")
    assert 5 <= done_before < 40, "the run finished before it could be killed; make it longer"
    assert not (out / "manifest.csv").exists()

    assert main(["distort", str(src), str(out), *args]) == 0
    ref = tmp_path / "reference"
    assert main(["distort", str(src), str(ref), *args]) == 0
    assert read_csv(out / "manifest.csv") == read_csv(ref / "manifest.csv")
    for r in read_csv(ref / "manifest.csv"):
        assert (out / r["path"]).read_bytes() == (ref / r["path"]).read_bytes()
    assert not list(out.rglob("*.tmp"))


def test_outputs_get_the_usual_file_mode(tmp_path):
    from imutility import atomic

    atomic.write_text(tmp_path / "a.txt", "x")
    mask = os.umask(0)
    os.umask(mask)
    assert (tmp_path / "a.txt").stat().st_mode & 0o777 == 0o666 & ~mask


def test_resume_redoes_a_source_whose_content_changed(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    natural_image(seed=1).save(src / "a.png")
    natural_image(seed=2).save(src / "b.png")
    d = [parse_distortion("jpeg:q=10")]
    distort_folder(src, tmp_path / "o", d, progress=False, workers=1)
    before = (tmp_path / "o" / "jpeg_q10" / "a.png.jpg").read_bytes()
    st = (src / "a.png").stat()
    natural_image(seed=9).save(src / "a.png")
    os.utime(src / "a.png", ns=(st.st_atime_ns, st.st_mtime_ns))  # same mtime: content must decide
    rep = distort_folder(src, tmp_path / "o", d, progress=False, workers=1)
    assert rep.n_resumed == 1  # b.png only
    assert (tmp_path / "o" / "jpeg_q10" / "a.png.jpg").read_bytes() != before


def test_unlisted_entries_are_reported_not_silently_skipped(tmp_path, capsys):
    src = tmp_path / "src"
    (src / "real").mkdir(parents=True)
    natural_image().save(src / "real" / "a.png")
    (src / "photo.avif").write_bytes(b"\x00\x00\x00\x1cftypavif")
    (src / "loop").symlink_to(src, target_is_directory=True)  # a link loop: must not run forever
    (src / "elsewhere").symlink_to(src / "real", target_is_directory=True)
    (src / "dangling.jpg").symlink_to(tmp_path / "gone.jpg")
    rc = main(["distort", str(src), str(tmp_path / "o"), "-d", "jpeg:q=10", "--no-progress", "-j", "1"])
    assert rc == EXIT_SKIPPED
    err = capsys.readouterr().err
    assert "photo.avif: .avif images are not supported" in err
    assert "loop: symbolic link to a folder: not followed" in err and "elsewhere: symbolic link" in err
    assert "dangling.jpg: broken symbolic link" in err
    rows = read_csv(tmp_path / "o" / "manifest.csv")
    assert [r["source"] for r in rows] == ["real/a.png"]
    assert {r["source"] for r in read_csv(tmp_path / "o" / "errors.csv")} == {"photo.avif", "loop", "elsewhere",
                                                                            "dangling.jpg"}


def test_resume_removes_what_a_killed_write_left(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    natural_image().save(src / "a.png")
    d = [parse_distortion("jpeg:q=10")]
    distort_folder(src, tmp_path / "o", d, progress=False, workers=1)
    stale = tmp_path / "o" / "jpeg_q10" / ".a.png.jpg.4ztpk1bd.tmp"  # the name a kill -9 mid-write leaves
    stale.write_bytes(b"half")
    keep = tmp_path / "o" / "jpeg_q10" / "notes.tmp"  # not ours: kept
    keep.write_text("x")
    distort_folder(src, tmp_path / "o", d, progress=False, workers=1)
    assert not stale.exists() and keep.exists()
