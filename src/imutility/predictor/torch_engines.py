"""The PyTorch engines of a predictor: the fine-tuned network, and the content model (frozen backbone + head).

:meth:`imutility.predictor.Predictor.load` dispatches a card's ``architecture`` here once (``runtime="torch"``);
the torch-free engines of the lean install are :mod:`imutility.predictor.onnx_engine`'s.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from imutility.predictor.common import CUDA_PRECISIONS, PredictorLoadError
from imutility.predictor.data import normalise_window
from imutility.predictor.geometry import InputSpec, TileSpec, WindowPreparer

#: ``precision`` names -> the autocast dtype on a CUDA device (``fp32``: none, the reference numbers)
PRECISIONS = dict(zip(CUDA_PRECISIONS, (None, torch.bfloat16, torch.float16), strict=True))


class _Network:
    """Where and how an engine's network runs: the device, and on a GPU autocast and fixed batch shapes."""

    autocast: torch.dtype | None = None
    #: on a GPU the batch is padded to a multiple of this: each new input shape costs cuDNN a kernel choice (and
    #: can cost seconds), while tile batches vary in size; measured on an H200 (docs/performance.md)
    shape_step: int = 64

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


class FinetuneEngine(_Network):
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


class ContentEngine(_Network):
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


ENGINES = {"finetune": FinetuneEngine, "content": ContentEngine}


def check_device(device: str) -> None:
    """Refuse a device PyTorch cannot use here (no CUDA, no driver, a bad name) in one line
    (:class:`~imutility.predictor.common.PredictorLoadError`: the machine's doing, not the arguments')."""
    try:
        torch.empty(0, device=device)
    except (RuntimeError, AssertionError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise PredictorLoadError(f"device {device!r} cannot be used here: {first}") from e


def load_torch_engine(card: dict, weights: Path, card_path: Path, models=None, precision: str = "fp32"):
    """The PyTorch engine of a card's ``architecture`` over its ``model.pt`` (``weights_only``)."""
    try:
        state = torch.load(weights, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - torch raises many types for a damaged file
        raise PredictorLoadError(f"{weights}: corrupt checkpoint ({type(e).__name__}: {e})") from e
    arch = card.get("architecture", "finetune")
    if arch not in ENGINES:
        raise PredictorLoadError(f"{card_path}: unknown architecture {arch!r} ({', '.join(ENGINES)})")
    try:
        engine = ContentEngine(card, state, weights, models) if arch == "content" else FinetuneEngine(card, state,
                                                                                                        weights)
    except (KeyError, TypeError, ValueError) as e:
        raise PredictorLoadError(f"{card_path}: incomplete or invalid card ({type(e).__name__}: {e})") from e
    engine.autocast = PRECISIONS[precision]
    return engine
