"""SIFID, the Single Image Fréchet Inception Distance (Shaham, Dekel and Michaeli, SinGAN, ICCV 2019):
the Fréchet distance between Gaussians fitted to the feature vectors of two single pictures, one per
location, at one Inception-v3 layer.

It is computed as the authors' SIFID/sifid_score.py computes it: torchvision's ImageNet Inception v3
(IMAGENET1K_V1, the `inception_v3` weights here), its layers up to Conv2d_4a_3x3 (192 channels, the
input of the second max pooling), pictures in [-1, 1] at the size they are given. It anchors
engine/score.py's numbers to a published one, and runs only where its weights are installed
(`nst models pull inception_v3`): the score itself never needs a download.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from torch import nn
from torchvision.models import inception_v3

from engine import weights
from engine.errors import UserError
from engine.nets.state import load_strict, read_state_dict

WEIGHTS_ID = "inception_v3"
ARCH = "torchvision Inception v3"
# The layers' receptive field: a feature location sees 23 x 23 pixels, and a picture needs 19 on
# each side for one location, 23 on one side for two.
MIN_SIDE, SHORT_SIDE = 23, 19
LAYERS = ("Conv2d_1a_3x3", "Conv2d_2a_3x3", "Conv2d_2b_3x3", "maxpool1", "Conv2d_3b_1x1", "Conv2d_4a_3x3")


def installed() -> bool:
    return weights.path_for(WEIGHTS_ID) is not None


def inception() -> nn.Module:
    """The whole network torchvision's file holds (its auxiliary classifier included), untrained."""
    return inception_v3(weights=None, aux_logits=True, init_weights=False)


def load_features() -> nn.Module:
    """Inception v3 up to Conv2d_4a_3x3, from the checked file; the whole network's state is loaded
    strictly, so a file in another layout is refused rather than half read."""

    def read(path: Path) -> nn.Module:
        net = inception()
        load_strict(net, read_state_dict(path, ARCH), path, ARCH)
        return nn.Sequential(*(getattr(net, name) for name in LAYERS)).eval()

    return weights.load_with(WEIGHTS_ID, read)


class SIFID:
    """SIFID of pictures against one reference picture (the painting), whose statistics are
    computed once. A picture with fewer than two feature locations (under MIN_SIDE pixels on its
    long side, or under 19 on its short side) has no covariance to fit, and gets None."""

    def __init__(self, reference: torch.Tensor, features: nn.Module | None = None) -> None:
        self.features = features or load_features()
        self._reference = self.statistics(reference)

    @torch.no_grad()
    def statistics(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
        """The mean and covariance (float64) of the feature vectors of a (1, 3, H, W) picture in
        0..1, or None when it is too small for two of them."""
        if min(image.shape[-2:]) < SHORT_SIDE or max(image.shape[-2:]) < MIN_SIDE:
            return None
        out = self.features(image * 2 - 1)[0].flatten(1).double()  # (192, locations)
        return out.mean(1), torch.cov(out)

    def __call__(self, image: torch.Tensor) -> float | None:
        own = self.statistics(image)
        if own is None or self._reference is None:
            return None
        return frechet_distance(*own, *self._reference)


def frechet_distance(mu1: torch.Tensor, cov1: torch.Tensor, mu2: torch.Tensor, cov2: torch.Tensor) -> float:
    """|mu1 - mu2|^2 + tr(C1 + C2 - 2 (C1 C2)^1/2). The trace of the square root is taken from the
    eigenvalues of C1^1/2 C2 C1^1/2, which has those of C1 C2 and is symmetric: no general matrix
    square root, and no complex round-off to discard. Round-off below zero, as for a picture
    against itself, reads 0; a distance that is no number is an error, never a perfect 0."""
    values, vectors = torch.linalg.eigh(cov1)
    root = vectors @ torch.diag(values.clamp_min(0).sqrt()) @ vectors.T
    product = torch.linalg.eigvalsh(root @ cov2 @ root).clamp_min(0).sqrt().sum()
    distance = float((mu1 - mu2).square().sum() + cov1.trace() + cov2.trace() - 2 * product)
    if not math.isfinite(distance):
        raise UserError(
            "bad-weights", f"SIFID came out as {distance}: check the {WEIGHTS_ID} weights (nst models verify)"
        )
    return max(0.0, distance)
