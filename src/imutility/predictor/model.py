"""Loading and running a trained utility predictor, in PyTorch or ONNX Runtime.

A predictor is a folder (or its ``card.json``) holding ``model.pt`` (a state dict, loaded with
``weights_only=True``) and the card that says how it was made and how it wants its input. The
package ships one: ``Predictor.load("default")``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator, Sequence
from importlib import resources
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from imutility.images import ImageLoadError, load_image
from imutility.predictor.backbones import create_backbone
from imutility.predictor.data import InputSpec, to_tensor
from imutility.predictor.train import CARD_FORMAT

#: Predictors shipped inside the package, by name.
BUILTIN = {"default": "default-classification", "default-classification": "default-classification"}


class PredictorLoadError(RuntimeError):
    """A predictor that cannot be used: missing, corrupt, wrong hash, or made for another task."""


def builtin_dir(name: str) -> Path:
    return Path(str(resources.files("imutility").joinpath("resources", "predictors", BUILTIN[name])))


class Predictor:
    """P(useful) (binary predictors) or predicted utility (continuous ones) from the distorted image alone."""

    def __init__(self, model: torch.nn.Module, card: dict, source: Path, device: str = "cpu"):
        self.model = model.eval().to(device)
        self.card = card
        self.source = source
        self.device = torch.device(device)
        self.input = InputSpec(**card["input"])
        self.mode = card["target"]["mode"]
        self._session = None

    # ------------------------------------------------------------------ loading
    @classmethod
    def load(cls, path_or_name: str | os.PathLike = "default", task: str | None = None, verify: bool = True,
             device: str = "cpu") -> Predictor:
        """From a folder, a ``card.json`` or a built-in name; ``task`` refuses a predictor made for the other task."""
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
        if card.get("format") != CARD_FORMAT:
            raise PredictorLoadError(f"{card_path}: not an imutility predictor card (format {card.get('format')!r})")
        if task is not None and card.get("task") != task:
            raise PredictorLoadError(f"{folder} was trained on {card.get('task')} utility labels, not {task}; "
                                     f"pass task=None to use it across tasks deliberately")
        weights = folder / card.get("weights_file", "model.pt")
        if not weights.is_file():
            raise PredictorLoadError(f"{weights} is missing")
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
        n_out = 2 if card["target"]["mode"] == "binary" else 1
        model, _ = create_backbone(card["backbone"], n_out, pretrained=False)
        try:
            model.load_state_dict(state)
        except (RuntimeError, TypeError) as e:
            raise PredictorLoadError(f"{weights} does not fit a {card['backbone']} predictor: {e}") from e
        return cls(model, card, folder, device)

    # ------------------------------------------------------------------ inference
    @property
    def task(self) -> str:
        return self.card["task"]

    def batch(self, images: Sequence[Image.Image | np.ndarray]) -> torch.Tensor:
        from imutility.images import to_rgb
        from imutility.zoo.preprocess import as_pil

        return torch.stack([to_tensor(to_rgb(as_pil(im)), self.input) for im in images])

    def __call__(self, images: Sequence[Image.Image | np.ndarray], batch_size: int = 32) -> np.ndarray:
        """Scores for a batch of images of any size and mode."""
        out = []
        for i in range(0, len(images), batch_size):
            x = self.batch(images[i:i + batch_size])
            out.append(self._run(x))
        return np.concatenate(out) if out else np.zeros(0, dtype=np.float32)

    @torch.inference_mode()
    def _run(self, x: torch.Tensor) -> np.ndarray:
        if self._session is not None:
            logits = self._session.run(None, {"input": x.numpy()})[0]
            logits = torch.from_numpy(logits)
        else:
            logits = self.model(x.to(self.device)).float().cpu()
        return (logits.softmax(1)[:, 1] if self.mode == "binary" else logits[:, 0]).numpy().astype(np.float32)

    def predict_paths(self, paths: Iterable[str | os.PathLike], batch_size: int = 32
                      ) -> Iterator[tuple[Path, float | None, str | None]]:
        """(path, score, None) per readable file, (path, None, reason) per unreadable one; batched."""
        buf: list[tuple[Path, Image.Image]] = []

        def flush():
            scores = self([im for _, im in buf])
            for (p, _), s in zip(buf, scores, strict=True):
                yield p, float(s), None
            buf.clear()

        for p in paths:
            try:
                buf.append((Path(p), load_image(p)))
            except ImageLoadError as e:
                yield Path(p), None, e.reason
            if len(buf) >= batch_size:
                yield from flush()
        if buf:
            yield from flush()

    # ------------------------------------------------------------------ ONNX
    def export_onnx(self, path: str | os.PathLike) -> Path:
        from imutility.zoo.backends.onnx_export import export_onnx

        path = Path(path)
        s = self.input.size
        export_onnx(self.model.cpu().eval(), torch.zeros(1, 3, s, s), path)
        self.model.to(self.device)
        return path

    def use_onnx_runtime(self, onnx_path: str | os.PathLike | None = None) -> Predictor:
        """Run inference through ONNX Runtime (exported once into the cache when no file is given)."""
        from imutility.zoo.backends.onnx_export import ort_session
        from imutility.zoo.weights import cache_dir

        if onnx_path is None:
            onnx_path = cache_dir() / "onnx" / f"predictor-{self.card['weights_sha256'][:16]}.onnx"
            if not Path(onnx_path).exists():
                self.export_onnx(onnx_path)
        self._session = ort_session(onnx_path)
        return self
