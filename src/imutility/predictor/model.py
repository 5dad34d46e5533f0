"""Loading and running a trained utility predictor, in PyTorch or ONNX Runtime.

A predictor is a folder (or its ``card.json``) holding ``model.pt`` (a state dict, loaded with
``weights_only=True``) and the card that says how it was made and how it wants its input. The
package ships ``default-classification`` (what ``"default"`` means) and ``default-detection`` (both
content-aware), ``confidence-classification`` (absolute recognisability) and ``finetune-classification``
(the 0.1 default, kept for comparison); each card says how it was made, measured and where it fails.

The card's ``architecture`` is dispatched once, at load, to an engine:

- ``finetune``: a backbone trained end to end; it sees one native-resolution crop (or the resized
  image), the paper's way and the project's first predictors;
- ``content``: a frozen pretrained classifier read over tiles covering the whole image, and a small
  head (:mod:`imutility.predictor.content`); ``model.pt`` holds only the head, the backbone's weights
  are the zoo's (hash-checked against the card).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from imutility.errors import ImutilityError
from imutility.predictor.common import CARD_FORMAT
from imutility.predictor.data import normalise_window
from imutility.predictor.geometry import InputSpec, TileSpec, WindowPreparer

#: Predictors shipped inside the package, by name.
BUILTIN = {"default": "default-classification", "default-classification": "default-classification",
           "default-detection": "default-detection", "confidence-classification": "confidence-classification",
           "finetune-classification": "finetune-classification"}


class PredictorLoadError(ImutilityError, RuntimeError):
    """A predictor that cannot be used: missing, corrupt, wrong hash, or made for another task."""


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

#: ``precision`` names -> the autocast dtype on a CUDA device (``fp32``: none, the reference numbers)
PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


class _Network:
    """Where and how an engine's network runs: the device, and on a GPU autocast and fixed batch shapes."""

    autocast: torch.dtype | None = None
    #: on a GPU the batch is padded to a multiple of this: each new input shape costs cuDNN a kernel choice (and
    #: can cost seconds), while tile batches vary in size; measured on an H200 (docs/performance.md)
    shape_step: int = 64

    def to(self, device: torch.device) -> None:
        self.model.to(device)

    def forward(self, module, x: torch.Tensor, device: torch.device) -> torch.Tensor:
        """``module(x)`` on ``device`` as float32, in inference mode (autocast when a precision is set)."""
        x = x.to(device)
        with torch.inference_mode():
            if device.type != "cuda":
                return module(x).float()
            n = x.shape[0]
            pad = -n % self.shape_step
            if pad:
                x = torch.cat([x, x.new_zeros((pad, *x.shape[1:]))])
            with torch.autocast("cuda", dtype=self.autocast or torch.float32, enabled=self.autocast is not None):
                return module(x)[:n].float()


class _FinetuneEngine(_Network):
    """One crop (or the resized image) through a fine-tuned backbone."""

    def __init__(self, card: dict, state: dict, where: Path):
        from imutility.predictor.backbones import create_backbone

        self.input = InputSpec(**card["input"])
        self.binary = card["target"]["mode"] == "binary"
        model, _ = create_backbone(card["backbone"], 2 if self.binary else 1, pretrained=False)
        try:
            model.load_state_dict(state)
        except (RuntimeError, TypeError) as e:
            raise PredictorLoadError(f"{where} does not fit a {card['backbone']} predictor: {e}") from e
        self.model = model.eval()
        self.session = None
        self.graph_key = f"finetune|{card['weights_sha256']}|{json.dumps(card['input'], sort_keys=True)}"
        self.size = self.input.size

    def preparer(self) -> WindowPreparer:
        return WindowPreparer(self.input)

    def scores_prepared(self, windows: list[np.ndarray], device: torch.device) -> np.ndarray:
        x = normalise_window(np.concatenate(windows), self.input)
        if self.session is not None:
            out = torch.from_numpy(self.session.run(None, {"input": x.numpy()})[0])
        else:
            out = self.forward(self.model, x, device).cpu()
        return (out.softmax(1)[:, 1] if self.binary else out[:, 0]).numpy().astype(np.float64)

    def graph(self) -> torch.nn.Module:
        return self.model

    def deploy(self) -> dict:
        """How to use the exported graph without imutility (see :data:`DEPLOY_FORMAT`)."""
        i = self.input
        prepare = ({"kind": "crop", "size": i.size, "pad_rgb": [128, 128, 128],
                    "rule": "the central size x size window at native resolution; an image smaller than that is first "
                            "centred on a grey (pad_rgb) canvas of max(width, size) x max(height, size)"}
                   if i.geometry == "crop" else
                   {"kind": "resize", "size": i.size, "resample": "bilinear", "rule": "the whole image resized to "
                                                                                      "size x size"})
        return {"prepare": prepare, "input": _deploy_input(i.channels, i.scale, i.mean, i.std),
                "output": {"name": "logits", "per": "image"},
                "score": ({"link": "softmax", "column": 1} if self.binary else {"link": "identity", "column": 0})}


def _deploy_input(channels: str, scale: float, mean, std) -> dict:
    return {"name": "input", "layout": "NCHW", "dtype": "float32", "channels": channels, "scale": scale,
            "mean": list(mean), "std": list(std), "rule": "x = (pixel * scale - mean) / std, per channel"}


class _ContentEngine(_Network):
    """Tiles over the whole image through a frozen classifier and the trained head, then tile pooling."""

    def __init__(self, card: dict, state: dict, where: Path, models=None):
        from imutility import zoo
        from imutility.predictor.content import ContentModel, TilePool, UtilityHead, build_recognition

        declared = zoo.get_spec(card["backbone"]).weights.sha256
        if declared != card.get("backbone_sha256"):
            raise PredictorLoadError(f"{where}: trained on {card['backbone']} weights {card.get('backbone_sha256')}, "
                                     f"but this installation declares {declared}")
        try:
            feats, pre, _ = build_recognition(card["backbone"], card["features"] == "pooled", models=models)
        except Exception as e:  # noqa: BLE001 - missing package or weights: one clear error
            raise PredictorLoadError(f"{where}: its backbone {card['backbone']} cannot be built here: {e}") from e
        head = UtilityHead(card["head"]["n_features"], card["head"]["hidden"], card["head"]["dropout"])
        pool = TilePool()
        try:
            head.load_state_dict({k[5:]: v for k, v in state.items() if k.startswith("head.")})
            pool.load_state_dict({k[5:]: v for k, v in state.items() if k.startswith("pool.")})
        except (RuntimeError, TypeError) as e:
            raise PredictorLoadError(f"{where} does not fit a content predictor on {card['backbone']}: {e}") from e
        self.model = ContentModel(feats, head, pool).eval()
        self.tiles = TileSpec(**card["input"]["tiles"])
        self.pre = pre
        self.binary = card["target"]["mode"] == "binary"
        self.session = None
        self.size = self.tiles.size
        self.graph_key = (f"content|{card['weights_sha256']}|{card['backbone']}|{declared}|{card['features']}|"
                          f"{json.dumps(card['input'], sort_keys=True)}")

    def preparer(self):
        return self.tiles  # a TileSpec is its own picklable preparer: image -> uint8 tiles (k, S, S, 3)

    def scores_prepared(self, stacks: list[np.ndarray], device: torch.device, batch_size: int = 64) -> np.ndarray:
        from imutility.predictor.content import normalise, pool_numpy

        pre = self.pre
        owner = np.repeat(np.arange(len(stacks)), [len(t) for t in stacks])
        tiles = np.concatenate(stacks)
        logits = []
        for i in range(0, len(tiles), batch_size):
            x = normalise(tiles[i:i + batch_size], pre.channels, pre.scale, pre.mean, pre.std)
            if self.session is not None:
                logits.append(self.session.run(None, {"input": x.numpy()})[0])
            else:
                logits.append(self.forward(self.model, x, device).cpu().numpy())
        z = pool_numpy(np.concatenate(logits), owner, len(stacks), self.model.pool)
        return 1 / (1 + np.exp(-z)) if self.binary else z

    def graph(self) -> torch.nn.Module:
        return self.model  # per-tile logits; the pooling is in the card (and in ``pool.*`` of model.pt)

    def deploy(self) -> dict:
        """How to use the exported per-tile graph without imutility (see :data:`DEPLOY_FORMAT`)."""
        t, pre, pool = self.tiles, self.pre, self.model.pool
        return {"prepare": {"kind": "tiles", "size": t.size, "max_tiles": t.max_tiles, "resample": "bilinear",
                            "min_sliver": 0.15,
                            "rule": "scale so the shorter side is size (round(side * size / shorter), at least size); "
                                    "along the longer side L: n = min(max_tiles, max(1, ceil(L / size - min_sliver))) "
                                    "size x size tiles starting at round(i * (L - size) / (n - 1)), or one centred "
                                    "at (L - size) // 2"},
                "input": _deploy_input(pre.channels, pre.scale, pre.mean, pre.std),
                "output": {"name": "logits", "per": "tile"},
                "pool": {"mean": pool.weights[0].item(), "min": pool.weights[1].item(), "bias": pool.bias.item(),
                         "rule": "z = mean * mean(tile logits) + min * min(tile logits) + bias"},
                "score": {"link": "sigmoid" if self.binary else "identity"}}

    @torch.inference_mode()
    def scores_from_tensors(self, images: list[torch.Tensor], device: torch.device) -> np.ndarray:
        """Scores of decoded images already on ``device`` (uint8 CHW RGB, e.g. from nvJPEG): resized and tiled
        there (bilinear with antialiasing: within about 1e-2 of Pillow's resize), then the network."""
        import torch.nn.functional as F

        pre, size = self.pre, self.tiles.size
        tiles, owner = [], []
        for i, img in enumerate(images):
            (rw, rh), starts = self.tiles.boxes(int(img.shape[2]), int(img.shape[1]))
            x = img[None].float()
            if (rw, rh) != (img.shape[2], img.shape[1]):
                x = F.interpolate(x, size=(rh, rw), mode="bilinear", antialias=True, align_corners=False)
            x = x.round().clamp(0, 255)  # what an 8-bit resized image holds
            for left, top in starts:
                tiles.append(x[0, :, top:top + size, left:left + size])
                owner.append(i)
        x = torch.stack(tiles)
        if pre.channels == "BGR":
            x = x.flip(1)
        m = torch.tensor(pre.mean, dtype=torch.float32, device=x.device).view(1, 3, 1, 1)
        sd = torch.tensor(pre.std, dtype=torch.float32, device=x.device).view(1, 3, 1, 1)
        logits = self.forward(self.model.tile_logits, (x * pre.scale - m) / sd, device)
        z = self.model.pool(logits, torch.tensor(owner, device=logits.device), len(images)).float().cpu().numpy()
        return 1 / (1 + np.exp(-z)) if self.binary else z


class Predictor:
    """P(useful) (binary predictors) or predicted utility (continuous ones) from the distorted image alone."""

    def __init__(self, engine, card: dict, source: Path, device: str = "cpu"):
        self.engine = engine
        self.card = card
        self.source = source
        self.device = torch.device(device)
        self.engine.to(self.device)
        self.mode = card["target"]["mode"]

    # ------------------------------------------------------------------ loading
    @classmethod
    def load(cls, path_or_name: str | os.PathLike = "default", task: str | None = None, verify: bool = True,
             device: str = "cpu", models: str | os.PathLike | None = None, precision: str = "fp32") -> Predictor:
        """From a folder, a ``card.json`` or a built-in name; ``task`` refuses a predictor made for the other task.
        ``precision`` (``bf16``, ``fp16``; CUDA only) runs the network under autocast: faster, and scores that
        differ from the fp32 ones by up to about 1e-2 (measured in ``benchmarks/bench_throughput.py``)."""
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
        if PRECISIONS[precision] is not None and torch.device(device).type != "cuda":
            raise ValueError(f"precision {precision} is for a CUDA device (got device {device}); use fp32")
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
        if verify:
            from imutility.zoo.weights import file_sha256

            digest = file_sha256(weights)
            if digest != card.get("weights_sha256"):
                raise PredictorLoadError(f"{weights}: SHA-256 {digest[:16]}... differs from the card's "
                                         f"{str(card.get('weights_sha256'))[:16]}...: corrupt or not this card's file")
        try:
            state = torch.load(weights, map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001 - torch raises many types for a damaged file
            raise PredictorLoadError(f"{weights}: corrupt checkpoint ({type(e).__name__}: {e})") from e
        try:
            arch = card.get("architecture", "finetune")
            if arch == "content":
                engine = _ContentEngine(card, state, weights, models)
            elif arch == "finetune":
                engine = _FinetuneEngine(card, state, weights)
            else:
                raise PredictorLoadError(f"{card_path}: unknown architecture {arch!r} (finetune, content)")
        except (KeyError, TypeError, ValueError) as e:
            raise PredictorLoadError(f"{card_path}: incomplete or invalid card ({type(e).__name__}: {e})") from e
        engine.autocast = PRECISIONS[precision]
        return cls(engine, card, folder, device)

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

        from torchvision.io import ImageReadMode, decode_jpeg

        if not hasattr(self.engine, "scores_from_tensors"):
            yield from self.predict_paths(paths, batch_size, progress=progress)
            return

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
        from imutility.zoo.backends.onnx_export import export_onnx

        path = Path(path)
        s = self.engine.size
        export_onnx(self.engine.graph().cpu().eval(), torch.zeros(1, 3, s, s), path, metadata={
            "imutility.card": json.dumps(self.card), "imutility.deploy": json.dumps(self.deploy_spec())})
        self.engine.to(self.device)
        return path

    def use_onnx_runtime(self, onnx_path: str | os.PathLike | None = None) -> Predictor:
        """Run inference through ONNX Runtime (exported once into the cache when no file is given; the cache
        is keyed by everything that shapes the graph: weights, backbone, input spec)."""
        import hashlib

        from imutility.zoo.backends.onnx_export import ort_session
        from imutility.zoo.weights import cache_dir

        if onnx_path is None:
            tag = hashlib.sha256(f"{self.engine.graph_key}|torch{torch.__version__.split('+')[0]}".encode())
            onnx_path = cache_dir() / "onnx" / f"predictor-{tag.hexdigest()[:20]}.onnx"
            if not Path(onnx_path).exists():
                self.export_onnx(onnx_path)
        self.engine.session = ort_session(onnx_path)
        return self
