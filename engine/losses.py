"""Losses for optimisation-based style transfer.

Every content and style term is a *relative* squared error, normalised by the energy of its target.
Each layer then starts near the same magnitude whatever its depth, channel count or the image size,
so per-layer weights mean what they say and one `strength` knob behaves the same at every scale of
a coarse-to-fine run.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

_EPS = 1e-8


def gram(features: torch.Tensor, shift: float = 0.0) -> torch.Tensor:
    """Channel co-activations averaged over positions: (N, C, H, W) -> (N, C, C).

    `shift` adds a constant to the activations first (Novak & Nikulin 2016): ReLU features are
    sparse, and shifting them makes the Gram matrix carry more information about where they are zero.
    """
    n, c, h, w = features.shape
    flat = features.reshape(n, c, h * w)
    if shift:
        flat = flat + shift
    return torch.bmm(flat, flat.transpose(1, 2)) / (h * w)


@dataclass
class Target:
    """A fixed target and its precomputed normaliser, so the hot loop never recomputes either."""

    value: torch.Tensor
    norm: torch.Tensor

    @classmethod
    def of(cls, value: torch.Tensor) -> Target:
        value = value.detach()
        return cls(value=value, norm=value.pow(2).mean() + _EPS)

    def loss(self, current: torch.Tensor) -> torch.Tensor:
        return (current - self.value).pow(2).mean() / self.norm


def total_variation(image: torch.Tensor) -> torch.Tensor:
    """Mean squared difference between neighbouring pixels; suppresses high-frequency noise."""
    dy = image[..., 1:, :] - image[..., :-1, :]
    dx = image[..., :, 1:] - image[..., :, :-1]
    return dy.pow(2).mean() + dx.pow(2).mean()
