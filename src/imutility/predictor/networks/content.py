"""The content-aware predictor's network: a pretrained classifier kept whole, read over the whole image, a small head.

Why: a predictor fine-tuned end to end on ~1,300 binary labels keeps the blockiness and loses the
recognition (docs/predictor.md). Here the backbone is a pretrained ImageNet classifier whose weights
are NOT trained: for each tile of the image it gives its pooled features and what its own softmax says
(max probability, entropy, margin, log-sum-exp, max logit). A small head, trained on those, scores each
tile; the image's score pools the tile scores (a learned mix of their mean and their minimum), so a
region damaged anywhere in the image counts, not only the centre.

Tiles: the image is resized (bilinear) so that its SHORTER side is ``size`` (the scale at which
ImageNet classifiers see a photo), then cut into ``size`` x ``size`` windows evenly spaced along the
longer side, as many as cover it (at most ``max_tiles``; :class:`imutility.predictor.geometry.TileSpec`). A square
image is one tile. Pixel values follow the backbone's declared preprocessing in the zoo (one preprocessing system
for labelers and predictors). The pooling at inference is the card's
(:class:`imutility.predictor.geometry.TilePooling`); :class:`TilePool` is the same map, trainable.
"""

from __future__ import annotations

import torch
from torch import nn

#: what the classifier's own softmax says about a tile, appended to its pooled features
CONFIDENCE_FEATURES = ("max_prob", "entropy", "margin", "logsumexp", "max_logit")


def confidence_features(logits: torch.Tensor) -> torch.Tensor:
    """(N, 5): :data:`CONFIDENCE_FEATURES` of a batch of classifier logits."""
    logp = logits.float().log_softmax(1)
    p = logp.exp()
    top2 = p.topk(2, dim=1).values
    entropy = -(p * logp).sum(1)
    return torch.stack([top2[:, 0], entropy, top2[:, 0] - top2[:, 1], logits.float().logsumexp(1),
                        logits.float().max(1).values], dim=1)


class RecognitionFeatures(nn.Module):
    """A pretrained classifier, frozen: tile -> its confidence features, with its pooled features in front
    when ``pooled`` (``features="pooled"``)."""

    def __init__(self, backbone: nn.Module, pooled_and_logits, pooled: bool = False):
        super().__init__()
        self.backbone = backbone.eval()
        self.pooled_and_logits = pooled_and_logits
        self.pooled = pooled
        for p in self.backbone.parameters():
            p.requires_grad_(False)

    def train(self, mode: bool = True):  # the backbone stays in eval mode (frozen BatchNorm statistics)
        super().train(mode)
        self.backbone.eval()
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled, logits = self.pooled_and_logits(self.backbone, x)
        conf = confidence_features(logits)
        return torch.cat([pooled.float(), conf], dim=1) if self.pooled else conf


class UtilityHead(nn.Module):
    """Standardised features -> one logit of P(useful) per tile; an MLP with one hidden layer."""

    def __init__(self, n_features: int, hidden: int = 256, dropout: float = 0.2):
        super().__init__()
        self.register_buffer("mean", torch.zeros(n_features))
        self.register_buffer("std", torch.ones(n_features))
        self.net = nn.Sequential(nn.Dropout(dropout), nn.Linear(n_features, hidden), nn.GELU(), nn.Dropout(dropout),
                                 nn.Linear(hidden, 1))

    def set_standardisation(self, features: torch.Tensor) -> None:
        self.mean.copy_(features.mean(0))
        self.std.copy_(features.std(0).clamp_min(1e-6))

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        return self.net((f - self.mean) / self.std).squeeze(1)


class TilePool(nn.Module):
    """Image logit from its tiles' logits: ``a * mean + b * min + c`` (learned; starts as the mean)."""

    def __init__(self):
        super().__init__()
        self.weights = nn.Parameter(torch.tensor([1.0, 0.0]))
        self.bias = nn.Parameter(torch.zeros(()))

    def calibrate(self, scale: float, shift: float) -> None:
        """Fold a Platt scaling ``scale * logit + shift`` into the pooling (it stays one affine map)."""
        with torch.no_grad():
            self.weights.mul_(scale)
            self.bias.mul_(scale).add_(shift)

    def forward(self, tile_logits: torch.Tensor, image_index: torch.Tensor, n_images: int) -> torch.Tensor:
        ones = torch.ones_like(tile_logits)
        count = torch.zeros(n_images, dtype=tile_logits.dtype, device=tile_logits.device).index_add_(
            0, image_index, ones)
        mean = torch.zeros_like(count).index_add_(0, image_index, tile_logits) / count.clamp_min(1)
        low = torch.full_like(count, float("inf")).scatter_reduce(0, image_index, tile_logits, "amin")
        return self.weights[0] * mean + self.weights[1] * low + self.bias


class ContentModel(nn.Module):
    """Frozen recognition features + head (per tile). Pooling over tiles is :class:`TilePool`."""

    def __init__(self, features: RecognitionFeatures, head: UtilityHead, pool: TilePool):
        super().__init__()
        self.features, self.head, self.pool = features, head, pool

    def tile_logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Per-tile logits (the exported graph); :meth:`image_logits` pools them."""
        return self.tile_logits(x)

    def image_logits(self, tile_logits: torch.Tensor, image_index: torch.Tensor, n_images: int) -> torch.Tensor:
        return self.pool(tile_logits, image_index, n_images)


# ------------------------------------------------------------------------------------------ building and running
def build_recognition(backbone: str, pooled: bool, models=None, device: str = "cpu"):
    """(frozen :class:`RecognitionFeatures`, the zoo's declared preprocessing, the weights note) of a backbone."""
    from imutility import zoo
    from imutility.predictor.networks.backbones import get_recognition_backbone

    rb = get_recognition_backbone(backbone)
    labeler = zoo.get_labeler(backbone, runtime="torch", models=models)  # weights found and hash-checked
    return (RecognitionFeatures(labeler.model, rb.pooled_and_logits, pooled).to(device),
            zoo.get_spec(backbone).preprocess, weights_note(backbone))


def weights_note(backbone: str) -> str:
    """What a content predictor's card says of its frozen backbone's weights."""
    from imutility import zoo

    return f"{backbone} ImageNet weights (zoo entry, SHA-256 {zoo.get_spec(backbone).weights.sha256[:16]}...), frozen"


def n_features(backbone: str, pooled: bool) -> int:
    from imutility.predictor.networks.backbones import get_recognition_backbone

    return len(CONFIDENCE_FEATURES) + (get_recognition_backbone(backbone).n_pooled if pooled else 0)
