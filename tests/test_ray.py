"""The Ray engine on a local Ray instance (loopback only, started and stopped here): the same table as the
in-process engine, bad files reported and skipped, finished chunks not redone, and a labeler worker killed
mid-run replaced without losing or doubling a chunk."""

from __future__ import annotations

import os
import shutil
import signal
import threading
import time
from pathlib import Path

import pandas as pd
import pytest

from conftest import require_shared
from imutility import zoo
from imutility.datasets import ClassificationDataset
from imutility.distort import parse_distortion
from imutility.labelling import run_labelling, sources_from_classification

ray = pytest.importorskip("ray")
from imutility.labelling.ray_engine import RayEngine, RayEngineError  # noqa: E402

LEVELS = [parse_distortion(s) for s in ("jpeg:q=3", "jpeg:q=10", "jpeg:q=50")]
NAMES = ("mobilenet_v2", "mobilenet_v1_075")


@pytest.fixture(scope="module")
def ray_local():
    """One local Ray instance for the module (its start costs seconds), bound to loopback; 3 logical CPUs: the two
    labelers' actors hold one each, the preparing tasks take the third."""
    import logging

    ray.init(num_cpus=3, include_dashboard=False, logging_level=logging.WARNING, log_to_driver=False,
             _node_ip_address="127.0.0.1")
    from ray.data import DataContext

    DataContext.get_current().enable_progress_bars = False
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def labelers():
    require_shared("models")
    return [zoo.get_labeler(n) for n in NAMES]


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    """24 ImageNet sample photos and one corrupt file, in a private folder."""
    src = require_shared("data", "imagenet-sample")
    d = tmp_path_factory.mktemp("photos")
    for p in sorted(src.iterdir())[::41][:24]:
        shutil.copy(p, d / p.name)
    (d / "n01440764_corrupt.JPEG").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    return d


def run(photos: Path, out: Path, labelers, engine=None, limit: int | None = None):
    sources = sources_from_classification(ClassificationDataset.from_folder(photos))
    errors = []
    report = run_labelling("classification", sources[:limit], LEVELS, labelers, out, chunk_size=3, progress=False,
                           on_error=lambda k, r: errors.append(k), engine=engine)
    return report, errors


def journal_lines(out: Path, name: str) -> int:
    return len((out / "cache" / f"{name}.jsonl").read_text().splitlines())


def test_an_unreachable_cluster_is_one_clear_error(labelers, photos, tmp_path):
    assert not ray.is_initialized()  # first in this module: before the shared instance starts
    with pytest.raises(RayEngineError, match="cannot start or reach Ray at 127.0.0.1:1"):
        run(photos, tmp_path / "out", labelers, RayEngine(address="127.0.0.1:1"))


def test_another_kind_of_server_at_the_address_is_refused_in_seconds(labelers, photos, tmp_path):
    """An HTTP/1 server answers at the address: the probe says so at once (Ray would retry for minutes)."""
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class Quiet(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

    with ThreadingHTTPServer(("127.0.0.1", 0), Quiet) as http:
        threading.Thread(target=http.serve_forever, daemon=True).start()
        t0 = time.monotonic()
        with pytest.raises(RayEngineError, match="not as a Ray cluster"):
            run(photos, tmp_path / "out", labelers, RayEngine(address=f"127.0.0.1:{http.server_address[1]}"))
        assert time.monotonic() - t0 < 15
        http.shutdown()


def test_the_probe_accepts_a_real_ray_cluster(ray_local):
    from imutility.labelling.ray_engine import _check_reachable

    _check_reachable(ray.get_runtime_context().gcs_address)  # the GCS speaks gRPC: no error


def test_the_ray_engine_gives_the_local_engines_table(ray_local, labelers, photos, tmp_path):
    local, local_errors = run(photos, tmp_path / "local", labelers)
    remote, remote_errors = run(photos, tmp_path / "ray", labelers, RayEngine(actors=1))
    assert remote.n_rows == local.n_rows == 24 * 3
    assert remote_errors == local_errors == ["n01440764_corrupt.JPEG"]
    assert [k for k, _ in remote.errors] == ["n01440764_corrupt.JPEG"]
    a, b = pd.read_parquet(local.table), pd.read_parquet(remote.table)
    pd.testing.assert_frame_equal(a, b, check_exact=True)
    for rel in a["path"]:  # the distorted files, byte for byte
        assert (tmp_path / "ray" / rel).read_bytes() == (tmp_path / "local" / rel).read_bytes()
    assert (tmp_path / "ray" / "counts.csv").read_text() == (tmp_path / "local" / "counts.csv").read_text()


def test_finished_chunks_are_not_redone(ray_local, labelers, photos, tmp_path):
    out = tmp_path / "out"
    run(photos, out, labelers, limit=12)  # the first 4 chunks, in this process
    assert journal_lines(out, NAMES[0]) == 4
    report, _ = run(photos, out, labelers, RayEngine())  # the 5 others (9 chunks of 3 in all) on Ray
    assert journal_lines(out, NAMES[0]) == 9 and report.n_rows == 24 * 3
    run(photos, out, labelers, RayEngine())  # nothing left: no line added
    assert journal_lines(out, NAMES[0]) == 9


def test_a_killed_labeler_worker_is_replaced(ray_local, labelers, photos, tmp_path):
    """SIGKILL one labeler actor's process while chunks are in flight: Ray restarts it and reruns its chunk; the
    table equals an undisturbed run's, and no chunk is journalled twice."""
    import psutil

    reference, _ = run(photos, tmp_path / "reference", labelers)
    out = tmp_path / "out"
    killed: list[int] = []
    done_at_kill: list[int] = []

    def kill_one_worker():
        deadline = time.monotonic() + 120
        journal = out / "cache" / f"{NAMES[1]}.jsonl"
        while time.monotonic() < deadline and not killed:
            if journal.exists() and journal.read_text().count("\n") >= 1:  # the pipeline is flowing
                for proc in psutil.process_iter(["pid", "cmdline"]):
                    cmd = " ".join(proc.info["cmdline"] or [])
                    if "_LabelerActor" in cmd and proc.info["pid"] != os.getpid():
                        os.kill(proc.info["pid"], signal.SIGKILL)
                        killed.append(proc.info["pid"])
                        done_at_kill.append(journal.read_text().count("\n"))
                        return
            time.sleep(0.05)

    killer = threading.Thread(target=kill_one_worker, daemon=True)
    killer.start()
    report, errors = run(photos, out, labelers, RayEngine(actors=1))
    killer.join(timeout=5)
    assert killed, "no labeler worker was found to kill"
    assert done_at_kill[0] < 9, "the worker was killed after the last chunk: nothing was left to rerun"
    assert errors == ["n01440764_corrupt.JPEG"]
    pd.testing.assert_frame_equal(pd.read_parquet(report.table), pd.read_parquet(reference.table), check_exact=True)
    assert journal_lines(out, NAMES[0]) == journal_lines(out, NAMES[1]) == 9


def test_labelers_not_made_by_the_zoo_are_refused(ray_local, labelers, photos, tmp_path):
    class Wrapped:
        def __init__(self, inner):
            self.inner, self.name, self.task, self.spec = inner, "wrapped", inner.task, inner.spec

        def __call__(self, images):
            return self.inner(images)

    with pytest.raises(RayEngineError, match="zoo.get_labeler"):
        run(photos, tmp_path / "out", [Wrapped(labelers[0])], RayEngine())
