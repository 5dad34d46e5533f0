"""Inputs of the utility predictor. Compression artifacts live in pixels, so the default geometry
takes crops at NATIVE resolution (no resampling that would smooth the 8x8 blocks away); whole-image
resizing is kept as the comparison. Augmentation is limited to crops and flips: never a re-encode."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image

from imutility.images import load_image
from imutility.predictor.geometry import InputSpec, window


def to_tensor(img: Image.Image, spec: InputSpec, rng: np.random.Generator | None = None,
              flip: bool = False) -> torch.Tensor:
    """The (random or central) window of an image, flipped or not, as the network's normalised CHW input."""
    img = window(img, spec, rng)
    if flip:
        img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    return torch.from_numpy(spec.values.normalise(np.asarray(img)))


class UtilityImages(torch.utils.data.Dataset):
    """(image, target) pairs from a labels table: target is the class (binary) or the utility (continuous)."""

    def __init__(self, paths: Sequence[str], targets: Sequence[float], spec: InputSpec, train: bool, seed: int = 0):
        self.paths, self.targets, self.spec, self.train, self.seed = list(paths), list(targets), spec, train, seed
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        rng = np.random.default_rng([self.seed, self.epoch, i]) if self.train else None
        flip = bool(rng.integers(0, 2)) if rng is not None else False
        x = to_tensor(load_image(self.paths[i]), self.spec, rng, flip)
        return x, torch.tensor(self.targets[i])
