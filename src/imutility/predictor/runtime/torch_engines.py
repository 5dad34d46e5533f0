"""The PyTorch engines (CPU or GPU): the fine-tuned network, and the content model (frozen backbone + head).

They give the engine contract's raw outputs (:mod:`imutility.predictor.runtime.engine`) from ``model.pt``
(``weights_only``); the score head is the card's, as for every engine. On a GPU they also take images decoded
there (nvJPEG), resize and tile them there (:meth:`ContentEngine.outputs_from_tensors`).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from imutility.predictor.card import PredictorCard, PredictorLoadError
from imutility.predictor.geometry import WindowPreparer
from imutility.predictor.placement import CUDA_PRECISIONS

#: ``precision`` names -> the autocast dtype on a CUDA device (``fp32``: none, the reference numbers)
PRECISIONS = dict(zip(CUDA_PRECISIONS, (None, torch.bfloat16, torch.float16), strict=True))


class _Network:
    """Where and how an engine's network runs: the device, and on a GPU autocast and fixed batch shapes."""

    runtime = "torch"
    autocast: torch.dtype | None = None
    #: on a GPU the batch is padded to a multiple of this: each new input shape costs cuDNN a kernel choice (and
    #: can cost seconds), while tile batches vary in size; measured on an H200 (docs/performance.md)
    shape_step: int = 64
    #: a single exported ONNX graph run in place of the network (:meth:`Predictor.use_onnx_runtime` with a file:
    #: what a deployment of that file computes)
    session = None

    def to(self, device) -> None:
        self.model.to(torch.device(device))

    def forward(self, module, x: torch.Tensor, device) -> torch.Tensor:
        """``module(x)`` on ``device`` as float32, in inference mode (autocast when a precision is set)."""
        device = torch.device(device)
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

    def run(self, x: np.ndarray, device) -> np.ndarray:
        """The network (or the exported graph in its place) on normalised input."""
        if self.session is not None:
            return self.session.run(None, {"input": x})[0]
        return self.forward(self.model, torch.from_numpy(x), device).cpu().numpy()


class FinetuneEngine(_Network):
    """One crop (or the resized image) through a fine-tuned backbone: its logits per image."""

    def __init__(self, card: PredictorCard, state: dict, where: Path):
        from imutility.predictor.networks.backbones import create_backbone

        self.card = card
        model, _ = create_backbone(card.backbone, 2 if card.binary else 1, pretrained=False)
        try:
            model.load_state_dict(state)
        except (RuntimeError, TypeError) as e:
            raise PredictorLoadError(f"{where} does not fit a {card.backbone} predictor: {e}") from e
        self.model = model.eval()

    def preparer(self) -> WindowPreparer:
        return WindowPreparer(self.card.window)

    def outputs(self, windows: Sequence[np.ndarray], device) -> np.ndarray:
        return self.run(self.card.values.normalise(np.concatenate(windows)), device)

    def graph(self) -> torch.nn.Module:
        return self.model


class ContentEngine(_Network):
    """Tiles over the whole image through a frozen classifier and the trained head: one logit per tile."""

    def __init__(self, card: PredictorCard, state: dict, where: Path, models=None):
        from imutility import zoo
        from imutility.predictor.networks.content import ContentModel, TilePool, UtilityHead, build_recognition

        parts = card.content
        declared = zoo.get_spec(card.backbone).weights.sha256
        if declared != parts.backbone_sha256:
            raise PredictorLoadError(f"{where}: trained on {card.backbone} weights {parts.backbone_sha256}, but this "
                                     f"installation declares {declared}")
        try:
            feats, _, _ = build_recognition(card.backbone, parts.features == "pooled", models=models)
        except Exception as e:  # noqa: BLE001 - missing package or weights: one clear error
            raise PredictorLoadError(f"{where}: its backbone {card.backbone} cannot be built here: {e}") from e
        head = UtilityHead(parts.n_features, parts.hidden, parts.dropout)
        pool = TilePool()
        try:
            head.load_state_dict({k[5:]: v for k, v in state.items() if k.startswith("head.")})
            pool.load_state_dict({k[5:]: v for k, v in state.items() if k.startswith("pool.")})
        except (RuntimeError, TypeError) as e:
            raise PredictorLoadError(f"{where} does not fit a content predictor on {card.backbone}: {e}") from e
        trained = tuple(float(v) for v in (*pool.weights.detach(), pool.bias.detach()))
        declared_pool = (parts.pooling.mean_weight, parts.pooling.min_weight, parts.pooling.bias)
        if not np.allclose(trained, declared_pool, rtol=1e-6, atol=1e-7):
            raise PredictorLoadError(f"{where}: the card's pool {declared_pool} is not the one trained in its weights "
                                     f"{trained} (an edited card?)")
        self.card = card
        self.model = ContentModel(feats, head, pool).eval()

    def preparer(self):
        return self.card.tiles  # a TileSpec is its own picklable preparer: image -> uint8 tiles (k, S, S, 3)

    def outputs(self, stacks: Sequence[np.ndarray], device, batch_size: int = 64) -> np.ndarray:
        tiles = np.concatenate(stacks)
        return np.concatenate([self.run(self.card.values.normalise(tiles[i:i + batch_size]), device)
                               for i in range(0, len(tiles), batch_size)]).reshape(-1)

    def graph(self) -> torch.nn.Module:
        return self.model  # per-tile logits; the pooling is the card's

    @torch.inference_mode()
    def outputs_from_tensors(self, images: list[torch.Tensor], device) -> tuple[np.ndarray, np.ndarray]:
        """(tile logits, owner) of decoded images already on ``device`` (uint8 CHW RGB, e.g. from nvJPEG): resized
        and tiled there (bilinear with antialiasing: within about 1e-2 of Pillow's resize), then the network."""
        import torch.nn.functional as F

        values, size = self.card.values, self.card.tiles.size
        tiles, owner = [], []
        for i, img in enumerate(images):
            (rw, rh), starts = self.card.tiles.boxes(int(img.shape[2]), int(img.shape[1]))
            x = img[None].float()
            if (rw, rh) != (img.shape[2], img.shape[1]):
                x = F.interpolate(x, size=(rh, rw), mode="bilinear", antialias=True, align_corners=False)
            x = x.round().clamp(0, 255)  # what an 8-bit resized image holds
            for left, top in starts:
                tiles.append(x[0, :, top:top + size, left:left + size])
                owner.append(i)
        x = torch.stack(tiles)
        if values.channels == "BGR":
            x = x.flip(1)
        m, sd = (torch.tensor(v, dtype=torch.float32, device=x.device).view(1, 3, 1, 1)
                 for v in (values.mean, values.std))
        logits = self.forward(self.model.tile_logits, (x * values.scale - m) / sd, device)  # Values.normalise's map
        return logits.cpu().numpy().reshape(-1), np.asarray(owner)


ENGINES = {"finetune": FinetuneEngine, "content": ContentEngine}


def check_device(device: str) -> None:
    """Refuse a device PyTorch cannot use here (no CUDA, no driver, a bad name) in one line
    (:class:`~imutility.predictor.card.PredictorLoadError`: the machine's doing, not the arguments')."""
    try:
        torch.empty(0, device=device)
    except (RuntimeError, AssertionError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise PredictorLoadError(f"device {device!r} cannot be used here: {first}") from e


def torch_engine(card: PredictorCard, folder: Path, models=None, precision: str = "fp32"):
    """The PyTorch engine of a card's architecture over its weights file (``weights_only``)."""
    weights = folder / card.weights_file
    try:
        state = torch.load(weights, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - torch raises many types for a damaged file
        raise PredictorLoadError(f"{weights}: corrupt checkpoint ({type(e).__name__}: {e})") from e
    if not isinstance(state, dict):
        raise PredictorLoadError(f"{weights}: not a state dict")
    if card.architecture == "content":
        engine = ContentEngine(card, state, weights, models)
    else:
        engine = FinetuneEngine(card, state, weights)
    engine.autocast = PRECISIONS.get(precision)
    return engine
