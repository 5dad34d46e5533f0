"""The deploy spec: everything a deployment of a predictor needs besides its ONNX graph, as plain data derived from
the card (how to cut the image, the input's values, how the outputs become the score: the card's score head).
It travels in every exported file's metadata (``imutility.deploy``); the 60-line script in docs/deploy.md scores
images from it with only onnxruntime, numpy and Pillow, equal to ``imutility predict`` (tested). Torch-free."""

from __future__ import annotations

from imutility.predictor.card import PredictorCard

#: the version of :func:`deploy_spec`'s layout (the ``imutility.deploy`` metadata of exported files)
DEPLOY_FORMAT = "imutility-deploy/1"


def _input(card: PredictorCard) -> dict:
    v = card.values
    return {"name": "input", "layout": "NCHW", "dtype": "float32", "channels": v.channels, "scale": v.scale,
            "mean": list(v.mean), "std": list(v.std), "rule": "x = (pixel * scale - mean) / std, per channel"}


def _prepare(card: PredictorCard) -> dict:
    if card.tiles is not None:
        t = card.tiles
        return {"kind": "tiles", "size": t.size, "max_tiles": t.max_tiles, "resample": "bilinear", "min_sliver": 0.15,
                "rule": "scale so the shorter side is size (round(side * size / shorter), at least size); along the "
                        "longer side L: n = min(max_tiles, max(1, ceil(L / size - min_sliver))) size x size tiles "
                        "starting at round(i * (L - size) / (n - 1)), or one centred at (L - size) // 2"}
    i = card.window
    if i.geometry == "crop":
        return {"kind": "crop", "size": i.size, "pad_rgb": [128, 128, 128],
                "rule": "the central size x size window at native resolution; an image smaller than that is first "
                        "centred on a grey (pad_rgb) canvas of max(width, size) x max(height, size)"}
    return {"kind": "resize", "size": i.size, "resample": "bilinear", "rule": "the whole image resized to size x size"}


def deploy_spec(card: PredictorCard) -> dict:
    """Everything a deployment needs besides the ONNX graph (see the module doc)."""
    return {"format": DEPLOY_FORMAT, "score_name": card.score_name, "task": card.task,
            "decode": "8-bit RGB, EXIF orientation applied (Pillow: ImageOps.exif_transpose, convert('RGB'))",
            "prepare": _prepare(card), "input": _input(card),
            "output": {"name": "logits", "per": "tile" if card.tiles is not None else "image"},
            **card.head.describe()}


def probe_image():
    """A fixed random 451 x 300 RGB image: what every artefact's parity check scores."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 256, (300, 451, 3), dtype=np.uint8))
