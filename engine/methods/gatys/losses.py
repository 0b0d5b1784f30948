"""Gatys' loss terms: Gram matrices (of the whole image or of a soft region), relative errors, total
variation.

Every content and style term is a *relative* squared error, normalised by the energy of its target.
Each layer then starts near the same magnitude whatever its depth, channel count or the image size,
so per-layer weights mean what they say and one `strength` knob behaves the same at every scale of
a coarse-to-fine run.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

_EPS = 1e-8
_MASS_EPS = 1e-5  # floor of a mask's sum (its area in pixels): an empty region divides by no zero


def gram(features: torch.Tensor, shift: float = 0.0) -> torch.Tensor:
    """Channel co-activations averaged over positions: (N, C, H, W) -> (N, C, C).

    `shift` adds a constant to the activations first (Novak & Nikulin 2016): ReLU features are
    sparse, and shifting them makes the Gram matrix carry more information about where they are zero.
    """
    return _Gram.apply(features, shift)


class _Gram(torch.autograd.Function):
    """F F^T / (H W) with a one-matmul backward in the features' own memory layout.

    Autograd's bmm(F, F^T) backward does two matmuls and adds their results; on channels_last
    features that add, and the tap's gradient sum after it, mix layouts and cost more than the
    matmuls. Here dF = (dG + dG^T) F / (H W), written in the layout of F.
    """

    @staticmethod
    def forward(ctx: Any, features: torch.Tensor, shift: float) -> torch.Tensor:
        n, c, h, w = features.shape
        flat = features.reshape(n, c, h * w)
        if shift:
            flat = flat + shift
        ctx.save_for_backward(flat)
        ctx.shape = features.shape
        return torch.bmm(flat, flat.transpose(1, 2)) / (h * w)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        (flat,) = ctx.saved_tensors
        sym = (grad + grad.transpose(1, 2)) / flat.shape[2]
        if flat.stride(1) == 1:  # channels_last: (N, HW, C) is the contiguous view
            out = torch.bmm(flat.transpose(1, 2), sym).transpose(1, 2)
        else:
            out = torch.bmm(sym, flat)
        return out.reshape(ctx.shape), None


def masked_gram(features: torch.Tensor, mask: torch.Tensor, shift: float = 0.0) -> torch.Tensor:
    """The Gram matrix of a soft region: sum_p m_p F_p F_p^T / sum_p m_p, shape (N, C, C).

    A pixel half inside a region counts half towards its statistics, so a soft edge gets a blend
    of both regions' gradients rather than a hard switch.
    """
    height, width = features.shape[-2:]
    shifted = features + shift if shift else features
    return gram(shifted * mask.sqrt()) * (height * width / mask.sum().clamp_min(_MASS_EPS))


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
