"""Loading and running a trained utility predictor, in PyTorch or ONNX Runtime.

A predictor is a folder (or its ``card.json``) holding ``model.pt`` (a state dict, loaded with
``weights_only=True``), the card that says how it was made and how it wants its input, and ``onnx.json``
naming the ONNX graphs that score without PyTorch. The package ships ``default-classification`` (what
``"default"`` means) and ``default-detection`` (both content-aware), ``confidence-classification`` (absolute
recognisability) and ``finetune-classification`` (the 0.1 default, kept for comparison); each card says how
it was made, measured and where it fails.

The card's ``architecture`` and the ``runtime`` are dispatched once, at load, to an engine:

- ``runtime="torch"`` (:mod:`.torch_engines`, CPU or GPU): ``finetune``, a backbone trained end to end that
  sees one native-resolution crop (or the resized image), the paper's way; ``content``, a frozen pretrained
  classifier read over tiles covering the whole image and a small head (:mod:`imutility.predictor.content`;
  ``model.pt`` holds only the head, the backbone's weights are the zoo's, hash-checked against the card);
- ``runtime="onnx"`` (:mod:`.onnx_engine`, CPU, no PyTorch: what the lean install runs): the same
  computation over the folder's ONNX graphs.

This module imports no torch: a lean install loads and runs predictors through it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from imutility.predictor.common import CARD_FORMAT, CPU_PRECISIONS, CUDA_PRECISIONS, PRECISION_NAMES, PredictorLoadError

#: Predictors shipped inside the package, by name.
BUILTIN = {"default": "default-classification", "default-classification": "default-classification",
           "default-detection": "default-detection", "confidence-classification": "confidence-classification",
           "finetune-classification": "finetune-classification"}


__all__ = ["BUILTIN", "DEPLOY_FORMAT", "PRECISION_NAMES", "RUNTIMES", "SCORE_NAMES", "Predictor", "PredictorLoadError",
           "builtin_dir", "torch_available"]


def builtin_dir(name: str) -> Path:
    return Path(str(resources.files("imutility").joinpath("resources", "predictors", BUILTIN[name])))


def _as_images(images) -> list:
    """One image (PIL or HWC array) or a sequence of them, as a list."""
    if isinstance(images, Image.Image) or (isinstance(images, np.ndarray) and images.ndim in (2, 3)
                                           and images.dtype == np.uint8):
        return [images]
    return list(images)


#: the version of :meth:`Predictor.deploy_spec`'s layout (the ``imutility.deploy`` metadata of exported files)
DEPLOY_FORMAT = "imutility-deploy/1"

#: the name of a predictor's score, by target mode
SCORE_NAMES = {"binary": "p_useful", "continuous": "utility"}

#: where a predictor runs: PyTorch (CPU or GPU), or ONNX Runtime on the CPU (no PyTorch needed)
RUNTIMES = ("torch", "onnx")


def torch_available() -> bool:
    """Whether PyTorch can be imported here (the lean install has none)."""
    import importlib.util

    return importlib.util.find_spec("torch") is not None


def _read_card(path_or_name: str | os.PathLike, task: str | None) -> tuple[dict, Path, Path]:
    """(card, folder, weights file) of a predictor folder, card file or built-in name, with the card checked."""
    name = str(path_or_name)
    folder = builtin_dir(name) if name in BUILTIN else Path(path_or_name)
    card_path = folder if folder.suffix == ".json" else folder / "card.json"
    folder = card_path.parent
    if not card_path.is_file():
        raise PredictorLoadError(f"no predictor at {path_or_name}: {card_path} not found"
                                 + (f" (built-in names: {', '.join(BUILTIN)})" if name not in BUILTIN else ""))
    try:
        card = json.loads(card_path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise PredictorLoadError(f"{card_path}: unreadable model card ({e})") from e
    if not isinstance(card, dict) or card.get("format") != CARD_FORMAT:
        fmt = card.get("format") if isinstance(card, dict) else type(card).__name__
        raise PredictorLoadError(f"{card_path}: not an imutility predictor card (format {fmt!r})")
    if task is not None and card.get("task") != task:
        raise PredictorLoadError(f"{folder} was trained on {card.get('task')} utility labels, not {task}; "
                                 f"pass task=None to use it across tasks deliberately")
    weights = folder / str(card.get("weights_file", "model.pt"))
    if not weights.is_file() or not weights.resolve().is_relative_to(folder.resolve()):
        raise PredictorLoadError(f"{weights} is missing (weights_file must name a file in the predictor folder)")
    return card, folder, weights


class Predictor:
    """P(useful) (binary predictors) or predicted utility (continuous ones) from the distorted image alone."""

    def __init__(self, engine, card: dict, source: Path, device: str = "cpu"):
        self.engine = engine
        self.card = card
        self.source = source
        self.device = str(device)
        self.engine.to(self.device)
        self.mode = card["target"]["mode"]

    # ------------------------------------------------------------------ loading
    @classmethod
    def load(cls, path_or_name: str | os.PathLike = "default", task: str | None = None, verify: bool = True,
             device: str = "cpu", models: str | os.PathLike | None = None, precision: str = "fp32",
             runtime: str | None = None) -> Predictor:
        """From a folder, a ``card.json`` or a built-in name; ``task`` refuses a predictor made for the other task.

        ``runtime``: ``"torch"`` (CPU or GPU), ``"onnx"`` (ONNX Runtime on the CPU, the graphs named by the folder's
        ``onnx.json``: no PyTorch needed, :mod:`imutility.predictor.onnx_engine`), or None: PyTorch where it is
        installed, else ONNX Runtime. ``precision`` ``bf16`` or ``fp16`` (CUDA) runs the network under
        autocast: faster, and scores that differ from the fp32 ones by up to about 1e-2
        (``benchmarks/bench_throughput.py``); ``int8`` (CPU, ONNX Runtime, content predictors with an int8 features
        graph: :mod:`imutility.predictor.quantize`) runs the quantized backbone: a 1.8x faster network on a 2-core
        CPU with int8 dot products (VNNI), the same within-level AUROC, and single scores that move by 0.03 on
        average (docs/performance.md)."""
        if precision not in PRECISION_NAMES:
            raise ValueError(f"precision must be one of {', '.join(PRECISION_NAMES)}, got {precision!r}")
        on_cuda = str(device).startswith("cuda")
        if on_cuda and precision not in CUDA_PRECISIONS:
            raise ValueError(f"precision {precision} is for the CPU (ONNX Runtime), not {device}; on CUDA: "
                             f"{', '.join(CUDA_PRECISIONS)}")
        if not on_cuda and precision not in CPU_PRECISIONS:
            raise ValueError(f"precision {precision} is for a CUDA device, not {device}; on the CPU: "
                             f"{', '.join(CPU_PRECISIONS)}")
        if precision in CPU_PRECISIONS and precision != "fp32":
            if runtime == "torch":
                raise ValueError(f"precision {precision} runs on ONNX Runtime: runtime='onnx' (or None)")
            runtime = "onnx"
        runtime = runtime or ("torch" if torch_available() else "onnx")
        if runtime not in RUNTIMES:
            raise ValueError(f"runtime must be one of {', '.join(RUNTIMES)}, got {runtime!r}")
        if runtime == "onnx" and str(device) != "cpu":
            raise ValueError(f"the ONNX runtime runs on the CPU; device {device} needs runtime='torch'")
        card, folder, weights = _read_card(path_or_name, task)
        if runtime == "onnx":
            from imutility.predictor.onnx_engine import fits, onnx_engine, read_sidecar

            side = read_sidecar(folder)
            if fits(side, card):
                return cls(onnx_engine(card, folder, side, precision), card, folder, device)
            if not torch_available():
                raise PredictorLoadError(f"{folder} has no ONNX graphs for its card ({folder / 'onnx.json'}) and "
                                         "PyTorch, which makes them, is not installed: pip install 'imutility[train]' "
                                         "once, or use a predictor trained by imutility >= 0.3")
            if precision != "fp32":
                raise PredictorLoadError(f"{folder} has no ONNX graphs for its card, so no {precision} ones: "
                                         f"imutility export --model {folder} --graphs, then --int8")
            return cls.load(folder, task, verify, device, models, precision, "torch").use_onnx_runtime()
        if not torch_available():
            raise PredictorLoadError("runtime 'torch' needs PyTorch: pip install 'imutility[train]' (or use "
                                     "runtime='onnx' on the CPU)")
        if verify:
            from imutility.zoo.weights import file_sha256

            digest = file_sha256(weights)
            if digest != card.get("weights_sha256"):
                raise PredictorLoadError(f"{weights}: SHA-256 {digest[:16]}... differs from the card's "
                                         f"{str(card.get('weights_sha256'))[:16]}...: corrupt or not this card's file")
        from imutility.predictor.torch_engines import check_device, load_torch_engine

        check_device(str(device))
        return cls(load_torch_engine(card, weights, folder / "card.json", models, precision), card, folder, device)

    # ------------------------------------------------------------------ inference
    @property
    def task(self) -> str:
        return self.card["task"]

    @property
    def score_name(self) -> str:
        """What a score is called in every output (``predict``'s lines, ``filter.csv``, the server's answers):
        ``p_useful`` for binary predictors, ``utility`` for continuous ones."""
        return SCORE_NAMES[self.mode]

    @property
    def architecture(self) -> str:
        return self.card.get("architecture", "finetune")

    def __call__(self, images: Image.Image | np.ndarray | Sequence[Image.Image | np.ndarray],
                 batch_size: int = 32) -> np.ndarray:
        """Scores for one image or a sequence of images of any size and mode (float64, one per image)."""
        from imutility.images import to_rgb
        from imutility.zoo.preprocess import as_pil

        images = _as_images(images)
        prep = self.engine.preparer()
        out = [self.engine.scores_prepared([prep(to_rgb(as_pil(im))) for im in images[i:i + batch_size]], self.device)
               for i in range(0, len(images), batch_size)]
        return np.concatenate(out) if out else np.zeros(0, dtype=np.float64)

    def predict_stream(self, items: Iterable[tuple[Any, str | os.PathLike | bytes]], batch_size: int = 32,
                       workers: int = 0, progress: Callable[[int], object] | None = None,
                       max_pixels: int | None = None) -> Iterator[tuple[Any, float | None, str | None]]:
        """``(key, score, None)`` or ``(key, None, reason)`` for each ``(key, path or encoded bytes)``, in order.

        Decoding and preparation run here (``workers=0``) or in ``workers`` processes beside the network
        (:mod:`imutility.predictor.prepare`); the network sees batches of ``batch_size`` readable images.
        ``progress(n)`` is called as results are given out."""
        from imutility.predictor.prepare import prepared_stream

        buf: list[tuple[Any, np.ndarray | None, str | None]] = []

        def flush():
            good = [t for _, t, e in buf if e is None]
            scores = iter(self.engine.scores_prepared(good, self.device) if good else ())
            for key, _, err in buf:
                yield (key, None, err) if err is not None else (key, float(next(scores)), None)
            if progress is not None:
                progress(len(buf))
            buf.clear()

        n_good = 0
        for prepared in prepared_stream(items, self.engine.preparer(), workers, max(1, min(8, batch_size)),
                                        max_pixels):
            buf.append(prepared)
            n_good += prepared[2] is None
            if n_good >= batch_size:
                yield from flush()
                n_good = 0
        if buf:
            yield from flush()

    def predict_paths(self, paths: Iterable[str | os.PathLike], batch_size: int = 32, workers: int = 0,
                      progress: Callable[[int], object] | None = None
                      ) -> Iterator[tuple[Path, float | None, str | None]]:
        """(path, score, None) per readable file, (path, None, reason) per unreadable one, in order; batched,
        decoded here or in ``workers`` processes (see :meth:`predict_stream`)."""
        yield from self.predict_stream(((Path(p), p) for p in paths), batch_size, workers, progress)

    def predict_files(self, paths: Iterable[str | os.PathLike], batch_size: int = 64, threads: int = 8,
                      progress: Callable[[int], object] | None = None
                      ) -> Iterator[tuple[Path, float | None, str | None]]:
        """Like :meth:`predict_paths`, with JPEG files decoded in batches by the device's decoder (nvJPEG on a GPU,
        ``torchvision.io.decode_jpeg``) and resized and tiled there; other formats, and a JPEG the decoder
        refuses, take the Pillow path, so one corrupt file never loses its batch; results come in the order of
        ``paths``. Content predictors only (a fine-tuned one falls back to :meth:`predict_paths`)."""
        from concurrent.futures import ThreadPoolExecutor

        if not hasattr(self.engine, "scores_from_tensors"):
            yield from self.predict_paths(paths, batch_size, progress=progress)
            return

        import torch
        from torchvision.io import ImageReadMode, decode_jpeg

        def read(p):
            try:
                return Path(p), Path(p).read_bytes(), None
            except OSError as e:
                return Path(p), None, f"cannot read: {e.strerror or e}"

        def decode(data: bytes):
            t = torch.frombuffer(bytearray(data), dtype=torch.uint8)
            return decode_jpeg(t, mode=ImageReadMode.RGB, device=self.device, apply_exif_orientation=True)

        def flush(batch):
            # a JPEG that does not end in its EOI marker is truncated, which the GPU decoder may not notice:
            # such files (and a complete one with trailing bytes) take the Pillow path, which judges them
            jpeg = [i for i, (_, b) in enumerate(batch) if b[:3] == b"\xff\xd8\xff" and b[-2:] == b"\xff\xd9"]
            decoded: dict[int, torch.Tensor] = {}
            try:
                tensors = [torch.frombuffer(bytearray(batch[i][1]), dtype=torch.uint8) for i in jpeg]
                out = decode_jpeg(tensors, mode=ImageReadMode.RGB, device=self.device, apply_exif_orientation=True) \
                    if tensors else []
                decoded = dict(zip(jpeg, out, strict=True))
            except RuntimeError:  # a bad file in the batch: decode one by one; the refused ones go to Pillow
                for i in jpeg:
                    try:
                        decoded[i] = decode(batch[i][1])
                    except RuntimeError:
                        pass
            good = sorted(decoded)
            scores = self.engine.scores_from_tensors([decoded[i] for i in good], self.device) if good else []
            by_i = dict(zip(good, scores, strict=True))
            rest = [batch[i][0] for i in range(len(batch)) if i not in by_i]  # other formats, refused JPEGs
            fallback = {p: (s, e) for p, s, e in self.predict_paths(rest, batch_size)} if rest else {}
            for i, (p, _) in enumerate(batch):
                if i in by_i:
                    yield p, float(by_i[i]), None
                else:
                    yield p, *fallback[p]
            if progress is not None:
                progress(len(batch))

        batch: list[tuple[Path, bytes]] = []
        with ThreadPoolExecutor(max(1, threads)) as pool:
            for p, data, err in pool.map(read, paths):
                if err is not None:
                    if batch:
                        yield from flush(batch)
                        batch = []
                    yield p, None, err
                    if progress is not None:
                        progress(1)
                    continue
                batch.append((p, data))
                if len(batch) >= batch_size:
                    yield from flush(batch)
                    batch = []
            if batch:
                yield from flush(batch)

    # ------------------------------------------------------------------ ONNX
    def deploy_spec(self) -> dict:
        """Everything a deployment needs besides the ONNX graph, as plain data (stored in the exported file's
        metadata as ``imutility.deploy``): how to cut the image, the input's values, how the outputs become the
        score; docs/deploy.md scores images from it with only onnxruntime, numpy and Pillow."""
        return {"format": DEPLOY_FORMAT, "score_name": self.score_name, "task": self.task,
                "decode": "8-bit RGB, EXIF orientation applied (Pillow: ImageOps.exif_transpose, convert('RGB'))",
                **self.engine.deploy()}

    def export_onnx(self, path: str | os.PathLike) -> Path:
        """The network as ONNX (dynamic batch): for ``content`` predictors the per-TILE graph. The file's
        metadata holds the card (``imutility.card``) and :meth:`deploy_spec` (``imutility.deploy``)."""
        import torch

        from imutility.zoo.backends.onnx_export import export_onnx

        if not hasattr(self.engine, "graph"):
            raise PredictorLoadError("exporting needs the PyTorch engine: load with runtime='torch'")
        path = Path(path)
        s = self.engine.size
        export_onnx(self.engine.graph().cpu().eval(), torch.zeros(1, 3, s, s), path, metadata={
            "imutility.card": json.dumps(self.card), "imutility.deploy": json.dumps(self.deploy_spec())})
        self.engine.to(self.device)
        return path

    def use_onnx_runtime(self, onnx_path: str | os.PathLike | None = None) -> Predictor:
        """Run inference through ONNX Runtime on the CPU. Without a file: the torch-free engine over the folder's
        graphs (``onnx.json``; written into the cache first for a folder made without them,
        :func:`imutility.predictor.onnx_files.ensure_onnx_files`). With a file from :meth:`export_onnx`: that one
        graph, run by this PyTorch engine's preparation and pooling (what a deployment runs)."""
        from imutility.predictor.onnx_engine import onnx_engine, read_sidecar

        if onnx_path is None:
            if self.device != "cpu":
                raise ValueError(f"ONNX Runtime runs on the CPU; this predictor is on {self.device}")
            if hasattr(self.engine, "graph"):  # a PyTorch engine: find or make the graphs
                from imutility.predictor.onnx_files import ensure_onnx_files

                folder = ensure_onnx_files(self)
                self.engine = onnx_engine(self.card, folder, read_sidecar(folder))
            return self
        from imutility.zoo.backends.ort import ort_session

        if not hasattr(self.engine, "graph"):
            raise PredictorLoadError("a single exported graph runs on the PyTorch engine's preparation: load with "
                                     "runtime='torch'")
        self.engine.session = ort_session(onnx_path)
        return self
