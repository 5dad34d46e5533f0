"""Loading and running a trained utility predictor: :class:`Predictor`.

A predictor is a folder (or its ``card.json``) holding the card (:mod:`imutility.predictor.card`), ``model.pt``
(a state dict, loaded with ``weights_only=True``) and ``onnx.json`` naming the ONNX graphs that score without
PyTorch (:mod:`imutility.predictor.runtime.sidecar`). The package ships ``default-classification`` (what
``"default"`` means) and ``default-detection`` (both content-aware), ``confidence-classification`` (absolute
recognisability) and ``finetune-classification`` (the 0.1 default, kept for comparison):
:func:`imutility.list_predictors`.

:meth:`Predictor.load` decides where the predictor runs once (:func:`imutility.predictor.placement.resolve`, the
same rule as the CLI's) and builds its engine once (:func:`imutility.predictor.runtime.engine.build_engine`);
every score then goes through the engine contract and the card's score head. Loading never writes anything: a
folder without ONNX graphs runs on PyTorch, or is refused with the command that makes them. Torch-free at import.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from imutility.predictor.builtin import BUILTIN, predictor_folder
from imutility.predictor.card import PredictorCard, PredictorLoadError, read_card
from imutility.predictor.placement import Placement, resolve
from imutility.predictor.runtime.engine import Engine, build_engine, score

__all__ = ["BUILTIN", "Predictor", "PredictorLoadError"]


ImageLike = str | os.PathLike | bytes | Image.Image | np.ndarray


def _single(images) -> bool:
    """Whether ``images`` is one image (a path, encoded bytes, a PIL image, an HxW or HxWx3 uint8 array)."""
    return isinstance(images, str | os.PathLike | bytes | bytearray | Image.Image) or (
        isinstance(images, np.ndarray) and images.ndim in (2, 3))


def _rgb(image) -> Image.Image:
    """An 8-bit RGB PIL image from a path, encoded bytes, a PIL image or an array (uint8 HxW or HxWx3)."""
    from imutility.images import load_image, to_rgb
    from imutility.zoo.preprocess import as_pil

    if isinstance(image, str | os.PathLike | bytes | bytearray):
        return load_image(bytes(image) if isinstance(image, bytearray) else image)
    return to_rgb(as_pil(image))


class Predictor:
    """P(useful) (binary predictors) or predicted utility (continuous ones) from the distorted image alone."""

    def __init__(self, engine: Engine, source: Path, placement: Placement):
        self.engine = engine
        self.source = Path(source)
        self.placement = placement
        self.engine.to(self.device)

    # ------------------------------------------------------------------ loading
    @classmethod
    def load(cls, path_or_name: str | os.PathLike = "default", task: str | None = None, verify: bool = True,
             device: str = "cpu", models: str | os.PathLike | None = None, precision: str = "fp32",
             runtime: str | None = "auto") -> Predictor:
        """From a folder, a ``card.json`` or a built-in name; ``task`` refuses a predictor made for the other task.

        ``runtime``: ``"auto"`` (ONNX Runtime on the CPU, PyTorch on a GPU: what ``imutility predict`` runs),
        ``"onnx"`` or ``"torch"``; ``precision``: ``fp32``, ``bf16``/``fp16`` (autocast on a CUDA device: scores
        within about 1e-2 of fp32) or ``int8`` (the CPU: a content predictor's quantized backbone, faster, single
        scores move: docs/performance.md). See :mod:`imutility.predictor.placement`."""
        from imutility.predictor.runtime.sidecar import read_sidecar

        folder = predictor_folder(path_or_name)
        if not (folder / "card.json").is_file() and str(path_or_name) not in BUILTIN:
            raise PredictorLoadError(f"no predictor at {path_or_name}: {folder / 'card.json'} not found "
                                     f"(built-in names: {', '.join(BUILTIN)})")
        card = read_card(folder)
        if task is not None and card.task != task:
            raise PredictorLoadError(f"{folder} was trained on {card.task} utility labels, not {task}; "
                                     f"pass task=None to use it across tasks deliberately")
        side = read_sidecar(folder) if runtime != "torch" else None
        placement = resolve(device, runtime, precision, has_graphs=side is not None and side.fits(card))
        if verify:  # the card's weights, whichever runtime: a corrupt folder is refused, not half-used
            cls._verify_weights(folder, card)
        if placement.runtime == "torch":
            from imutility.predictor.runtime.torch_engines import check_device

            check_device(placement.device)
        engine = build_engine(card, folder, placement.runtime, placement.precision, models, side)
        return cls(engine, folder, placement)

    @staticmethod
    def _verify_weights(folder: Path, card: PredictorCard) -> None:
        from imutility.zoo.weights import file_sha256

        weights = folder / card.weights_file
        digest = file_sha256(weights)
        if digest != card.weights_sha256:
            raise PredictorLoadError(f"{weights}: SHA-256 {digest[:16]}... differs from the card's "
                                     f"{card.weights_sha256[:16]}...: corrupt or not this card's file")

    # ------------------------------------------------------------------ what it is
    @property
    def card(self) -> PredictorCard:
        return self.engine.card

    @property
    def device(self) -> str:
        return self.placement.device

    @property
    def precision(self) -> str:
        return self.placement.precision

    @property
    def runtime(self) -> str:
        return self.engine.runtime

    @property
    def task(self) -> str:
        return self.card.task

    @property
    def mode(self) -> str:
        return self.card.mode

    @property
    def architecture(self) -> str:
        return self.card.architecture

    @property
    def score_name(self) -> str:
        """What a score is called in every output (``predict``'s lines, ``filter.csv``, the server's answers):
        ``p_useful`` for binary predictors, ``utility`` for continuous ones."""
        return self.card.score_name

    @property
    def identity(self) -> str:
        """What makes two runs of this predictor give the same scores: its name or folder, its weights and its
        precision (a resumable job refuses to mix two)."""
        return f"predictor:{self.card.name or self.source}:{self.card.weights_sha256[:16]}:{self.precision}"

    # ------------------------------------------------------------------ inference
    def __call__(self, images: ImageLike | Sequence[ImageLike], batch_size: int = 32) -> float | np.ndarray:
        """The score of one image (a float), or of each image of a sequence (a float64 array). An image is a file
        path, encoded bytes, a PIL image or a uint8 array (HxW or HxWx3), of any size and mode; an unreadable
        file raises :class:`~imutility.images.ImageLoadError` (:meth:`predict_paths` reports and skips instead)."""
        if _single(images):
            return float(self([images], batch_size)[0])
        images = list(images)
        prep = self.engine.preparer()
        out = [score(self.engine, [prep(_rgb(im)) for im in images[i:i + batch_size]], self.device)
               for i in range(0, len(images), batch_size)]
        return np.concatenate(out) if out else np.zeros(0, dtype=np.float64)

    def scores_prepared(self, prepared: Sequence[np.ndarray]) -> np.ndarray:
        """Scores of images already prepared by ``engine.preparer()`` (the server's batcher, decoding workers)."""
        return score(self.engine, prepared, self.device)

    def predict_stream(self, items: Iterable[tuple[Any, str | os.PathLike | bytes]], batch_size: int = 32,
                       workers: int = 0, progress: Callable[[int], object] | None = None,
                       max_pixels: int | None = None) -> Iterator[tuple[Any, float | None, str | None]]:
        """``(key, score, None)`` or ``(key, None, reason)`` for each ``(key, path or encoded bytes)``, in order.

        Decoding and preparation run here (``workers=0``) or in ``workers`` processes beside the network
        (:mod:`imutility.predictor.runtime.prepare`); the network sees batches of ``batch_size`` readable images.
        ``progress(n)`` is called as results are given out."""
        from imutility.predictor.runtime.prepare import prepared_stream

        buf: list[tuple[Any, np.ndarray | None, str | None]] = []

        def flush():
            good = [t for _, t, e in buf if e is None]
            scores = iter(self.scores_prepared(good))
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
        decoded here or in ``workers`` processes (see :meth:`predict_stream`). On a GPU with a content predictor,
        JPEGs are decoded in batches there (:meth:`predict_files`)."""
        if self.device != "cpu" and hasattr(self.engine, "outputs_from_tensors"):
            yield from self.predict_files(paths, max(batch_size, 1), progress=progress)
            return
        yield from self.predict_stream(((Path(p), p) for p in paths), batch_size, workers, progress)

    def predict_files(self, paths: Iterable[str | os.PathLike], batch_size: int = 64, threads: int = 8,
                      progress: Callable[[int], object] | None = None
                      ) -> Iterator[tuple[Path, float | None, str | None]]:
        """Like :meth:`predict_paths`, with JPEG files decoded in batches by the device's decoder (nvJPEG on a GPU,
        ``torchvision.io.decode_jpeg``) and resized and tiled there; other formats, and a JPEG the decoder
        refuses, take the Pillow path, so one corrupt file never loses its batch; results come in the order of
        ``paths``. Content predictors on PyTorch only (others take :meth:`predict_stream`)."""
        from concurrent.futures import ThreadPoolExecutor

        if not hasattr(self.engine, "outputs_from_tensors"):
            yield from self.predict_stream(((Path(p), p) for p in paths), batch_size, 0, progress)
            return

        import torch
        from torchvision.io import ImageReadMode, decode_jpeg

        from imutility.images import ImageLoadError, read_file

        def read(p):
            try:
                return Path(p), read_file(p), None
            except ImageLoadError as e:
                return Path(p), None, e.reason

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
            by_i: dict[int, float] = {}
            if good:
                logits, owner = self.engine.outputs_from_tensors([decoded[i] for i in good], self.device)
                by_i = dict(zip(good, self.card.head(logits, owner, len(good)), strict=True))
            rest = [(batch[i][0], batch[i][1]) for i in range(len(batch)) if i not in by_i]  # other formats, refused
            fallback = {k: (s, e) for k, s, e in self.predict_stream(rest, batch_size)} if rest else {}
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

    # ------------------------------------------------------------------ deployment
    def deploy_spec(self) -> dict:
        """Everything a deployment needs besides the ONNX graph, as plain data (the ``imutility.deploy`` metadata
        of exported files, :func:`imutility.predictor.deployment.deploy_spec`). The file itself:
        :func:`imutility.predictor.artefacts.deploy.export_onnx` (``imutility export --onnx``)."""
        from imutility.predictor.deployment import deploy_spec

        return deploy_spec(self.card)

    def use_onnx_runtime(self, onnx_path: str | os.PathLike | None = None) -> Predictor:
        """Run inference through ONNX Runtime on the CPU. Without a file: the ONNX engine over the folder's graphs
        (which must exist: ``imutility export --graphs``). With a file of ``imutility export --onnx``
        (:func:`imutility.predictor.artefacts.deploy.export_onnx`): that one graph in place of this PyTorch
        engine's network (what a deployment of the file computes)."""
        from imutility.predictor.runtime.sidecar import fitting_sidecar, make_graphs_command

        if onnx_path is None:
            if self.runtime == "onnx":
                return self
            side = fitting_sidecar(self.source, self.card)
            if side is None:
                raise PredictorLoadError(f"{self.source} has no ONNX graphs for its card: "
                                         f"{make_graphs_command(self.source)}")
            self.placement = resolve("cpu", "onnx", "fp32")
            self.engine = build_engine(self.card, self.source, "onnx", "fp32", sidecar=side)
            return self
        if self.runtime != "torch":
            raise PredictorLoadError("a single exported graph runs in place of a PyTorch engine's network: load with "
                                     "runtime='torch'")
        from imutility.zoo.backends.ort import ort_session

        self.engine.session = ort_session(onnx_path)
        return self
