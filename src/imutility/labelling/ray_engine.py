"""Labelling on a Ray cluster: the same chunks as in one process, as a Ray Data pipeline.

::

    chunks of sources -> prepare (read, augment, distort: Ray tasks)
                      -> labeler 1 (a pool of actors, each holding the network) -> ... -> labeler N
                      -> this process: files written into OUT, records journalled, as chunks finish

One row of the pipeline is one chunk, so every labeler sees exactly the batches the in-process engine
gives it (:func:`~imutility.labelling.chunks.label_chunk` on :func:`~imutility.labelling.chunks.prepare_chunk`'s
images) and the table is the same. OUT is written only by this (the driver) process; the workers read the
sources and the weight files, so on a cluster both must be at the same path on every machine (a shared
file system), and imutility installed there. Resumption is the local rule: only unfinished chunks enter
the pipeline, and a chunk counts as done once its lines are journalled here. A worker that dies (killed,
out of memory, a lost machine) is replaced by Ray and its chunk run again (actors are restarted and their
tasks retried, :attr:`RayEngine.max_retries` times).

``pip install 'imutility[ray]'``; ``imutility label ... --engine ray [--address ray://HOST:10001]``.
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from imutility.distort import Distortion
from imutility.errors import ImutilityError
from imutility.labelling.chunks import Chunk, ChunkResult, label_chunk, prepare_chunk
from imutility.tasks import Source


class RayEngineError(ImutilityError, RuntimeError):
    """Ray is missing, the cluster cannot be reached, or a labeler cannot be sent to it."""


@dataclass(frozen=True)
class RayEngine:
    """Where and how wide the pipeline runs.

    ``address``: a running cluster (``"auto"``, ``"ray://head:10001"``, ``"HOST:6379"``); None starts a local
    Ray instance for this run and stops it after. ``actors``: actors per labeler (each holds one copy of the
    network); ``cpus_per_actor`` / ``gpus_per_actor``: what each reserves (a labeler built for a CUDA device
    reserves one GPU unless told); ``num_cpus``: the local instance's logical CPUs (None: every core, and at least
    one more than the actors reserve, so that the preparing tasks always have a CPU: actors hold theirs for the
    whole run, and a cluster whose actors would take every CPU is refused rather than left waiting)."""

    address: str | None = None
    actors: int = 1
    cpus_per_actor: float = 1.0
    gpus_per_actor: float | None = None
    num_cpus: int | None = None
    max_retries: int = 3

    def run(self, todo: Sequence[Sequence[Source]], need: Sequence[Sequence[str]], distortions: dict[str, Distortion],
            labelers: Sequence, out: Path, seed: int) -> Iterator[ChunkResult]:
        """The engine protocol of :class:`~imutility.labelling.chunks.LocalEngine`; results come as chunks finish
        (in any order)."""
        if not todo:
            return
        recipes = []
        for lab in labelers:
            if getattr(lab, "recipe", None) is None:
                raise RayEngineError(f"{lab.name}: the Ray engine rebuilds each labeler in its workers, so it needs "
                                     "labelers made by imutility.zoo.get_labeler (or a registered spec)")
            recipes.append(lab.recipe)
        ray, data = _import_ray()
        reserved = len(recipes) * self.actors * self.cpus_per_actor
        started = self._connect(ray, reserved)
        import logging

        data_log = logging.getLogger("ray.data")
        level = data_log.level
        data_log.setLevel(logging.ERROR)  # its per-dataset execution notes; the run reports its own progress
        try:
            cpus = ray.cluster_resources().get("CPU", 0)
            if cpus < reserved + 1:
                raise RayEngineError(f"the labeler actors would reserve {reserved:g} of the cluster's {cpus:g} CPUs, "
                                     "leaving none to read and distort the images: use fewer actors or "
                                     "cpus_per_actor, or a larger cluster")
            rows = [{"i": i, "sources": json.dumps([s.as_json() for s in c]), "need": json.dumps(list(need[i]))}
                    for i, c in enumerate(todo)]
            ds = data.from_items(rows, override_num_blocks=len(rows))
            with warnings.catch_warnings():
                # bounded retries are set through the extra remote arguments, which Ray 2.60 deprecates with no
                # named replacement yet (its default, retrying forever, would hang a run on a chunk that kills
                # every worker); the extra pins ray below 2.64, which removes them
                warnings.filterwarnings("ignore", message=".*ray_remote_args.*deprecated")
                ds = ds.map(_prepare_row, fn_kwargs={"distortions": distortions, "seed": seed}, num_cpus=1,
                            max_retries=self.max_retries)
                for recipe in recipes:
                    gpus = self.gpus_per_actor if self.gpus_per_actor is not None else \
                        (1.0 if str(recipe.device).startswith("cuda") else 0.0)
                    ds = ds.map(_LabelerActor, fn_constructor_kwargs={"recipe": recipe,
                                                                      "threads": self.cpus_per_actor},
                                compute=data.ActorPoolStrategy(size=self.actors), num_cpus=self.cpus_per_actor,
                                num_gpus=gpus, max_restarts=self.max_retries, max_task_retries=self.max_retries)
            for row in ds.iter_rows():
                yield _result(row, todo[row["i"]], [r.spec.name for r in recipes])
        except ImutilityError:
            raise
        except Exception as e:  # noqa: BLE001 - Ray wraps a worker's failure in its own types: one clear line
            raise RayEngineError(f"the Ray pipeline failed: {type(e).__name__}: {str(e).splitlines()[0]}") from e
        finally:
            data_log.setLevel(level)
            if started:
                ray.shutdown()

    def _connect(self, ray, reserved: float) -> bool:
        """Join ``address`` (or the Ray session this process already has), else start a local instance; True when
        this run started Ray (and so stops it)."""
        if ray.is_initialized():
            return False
        import logging

        try:
            if self.address is not None:
                _check_reachable(self.address)
                ray.init(address=self.address, logging_level=logging.WARNING, log_to_driver=False)
            else:
                import math

                cpus = self.num_cpus or max(os.cpu_count() or 1, math.ceil(reserved) + 1)
                ray.init(num_cpus=cpus, include_dashboard=False, logging_level=logging.WARNING, log_to_driver=False,
                         _node_ip_address="127.0.0.1")
        except Exception as e:  # noqa: BLE001 - ConnectionError, RuntimeError, ...: one clear line
            raise RayEngineError(f"cannot start or reach Ray{f' at {self.address}' if self.address else ''}: "
                                 f"{str(e).splitlines()[0] if str(e) else type(e).__name__}") from e
        from ray.data import DataContext

        DataContext.get_current().enable_progress_bars = False  # the run shows its own
        return True


def _check_reachable(address: str, timeout: float = 10.0) -> None:
    """A ``HOST:PORT`` or ``ray://HOST:PORT`` address must answer as Ray does: Ray itself would keep retrying for
    minutes before saying it cannot, whether nothing listens there or another kind of server does (``auto`` is
    Ray's to resolve). Both Ray's GCS and its client server speak gRPC, so the probe opens an HTTP/2 connection
    (the client preface and an empty SETTINGS frame) and wants the server's SETTINGS frame back within
    ``timeout``: an HTTP/1 server, a database or a silent port fail it in seconds."""
    import socket

    hostport = address.removeprefix("ray://")
    host, sep, port = hostport.rpartition(":")
    if not sep or not port.isdigit():
        return
    try:
        conn = socket.create_connection((host.strip("[]"), int(port)), timeout=timeout)
    except OSError as e:
        raise ConnectionError(f"nothing answers at {hostport} ({e.strerror or e})") from e
    with conn:
        try:
            conn.sendall(_H2_PREFACE + _H2_EMPTY_SETTINGS)
            head = b""
            while len(head) < 9:
                chunk = conn.recv(9 - len(head))
                if not chunk:
                    break
                head += chunk
        except OSError as e:
            head = b""
            if not isinstance(e, TimeoutError):
                raise ConnectionError(f"{hostport} does not answer as a Ray cluster ({e.strerror or e})") from e
    if len(head) < 9 or head[3] != 0x4:  # frame type 4: SETTINGS
        raise ConnectionError(f"{hostport} answers, but not as a Ray cluster (no gRPC/HTTP2 reply): is that the "
                              "head's GCS port (6379) or its client port (ray://HOST:10001)?")


#: what an HTTP/2 client sends first (RFC 9113, 3.4), then an empty SETTINGS frame (length 0, type 4, no flags,
#: stream 0)
_H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
_H2_EMPTY_SETTINGS = b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"


def _import_ray():
    try:
        import ray
        import ray.data
    except ImportError as e:
        raise RayEngineError("the Ray engine needs Ray Data: pip install 'imutility[ray]'") from e
    return ray, ray.data


# ----------------------------------------------------------------------------- what runs in the workers
# A chunk travels as one row: JSON strings for the sources and records (Arrow-native, the journals' own form), the
# images as one flat uint8 array and their shapes, the distorted files' bytes as uint8 arrays.

def _pack_images(images: Sequence[Image.Image]) -> dict:
    arrays = [np.asarray(im.convert("RGB")) for im in images]
    flat = np.concatenate([a.ravel() for a in arrays]) if arrays else np.zeros(0, np.uint8)
    return {"pixels": flat, "shapes": json.dumps([list(a.shape) for a in arrays])}


def _unpack_images(row: dict) -> list[Image.Image]:
    out, at = [], 0
    pixels = np.asarray(row["pixels"], dtype=np.uint8)
    for shape in json.loads(row["shapes"]):
        n = int(np.prod(shape))
        out.append(Image.fromarray(pixels[at:at + n].reshape(shape), "RGB"))
        at += n
    return out


def _prepare_row(row: dict, distortions: dict[str, Distortion], seed: int) -> dict:
    sources = [Source.from_json(s) for s in json.loads(row["sources"])]
    chunk = prepare_chunk(sources, distortions, seed)
    return {"i": row["i"], "sources": row["sources"], "need": row["need"], **_pack_images(chunk.images),
            "ok": json.dumps([s.key for s in chunk.sources]), "items": json.dumps(chunk.items),
            "file_paths": json.dumps([rel for rel, _ in chunk.files]),
            "file_data": [np.frombuffer(data, dtype=np.uint8) for _, data in chunk.files],
            "meta": json.dumps(chunk.meta), "errors": json.dumps(chunk.errors)}


class _LabelerActor:
    """One labeler's network, built once per actor from its recipe; adds ``rec:<name>`` to each chunk it needs."""

    def __init__(self, recipe, threads: float):
        os.environ["IMUTILITY_THREADS"] = str(max(1, int(threads)))  # its share of the machine, not every core
        from imutility import zoo

        self.labeler = zoo.rebuild(recipe)
        self.name = recipe.spec.name

    def __call__(self, row: dict) -> dict:
        row = dict(row)
        row[f"rec:{self.name}"] = ""  # every row has every column (one schema across blocks); "" = not run here
        if self.name in json.loads(row["need"]):
            sources = [Source.from_json(s) for s in json.loads(row["sources"])]
            ok = set(json.loads(row["ok"]))
            chunk = Chunk([s for s in sources if s.key in ok], _unpack_images(row),
                          [tuple(it) for it in json.loads(row["items"])], [], [], [])
            recs, n_failed = label_chunk(self.labeler, chunk, {s.key: s.target for s in sources})
            row[f"rec:{self.name}"] = json.dumps({"records": recs, "failed": n_failed}, default=str)
        return row


def _result(row: dict, sources: Sequence[Source], names: Sequence[str]) -> ChunkResult:
    files = [(rel, np.asarray(data, dtype=np.uint8).tobytes())
             for rel, data in zip(json.loads(row["file_paths"]), row["file_data"], strict=True)]
    records = {}
    for name in names:
        value = row.get(f"rec:{name}")
        if value:
            done = json.loads(value)
            records[name] = (done["records"], done["failed"])
    return ChunkResult(list(sources), files, json.loads(row["meta"]), json.loads(row["errors"]), records)
