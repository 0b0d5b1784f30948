"""Gatys's loss and gradient computed tile by tile, so memory grows with the tile, not the image.

A Gram matrix is a sum over positions, so the whole image's style statistics are the sum of its
tiles' (each tile counting only the positions it owns). The loss is a function of those global
Grams, so its gradient with respect to one tile's features is (dL/dG) F / N: a small C x C matrix,
the same for every tile, times the tile's own features. Each evaluation therefore makes two passes:
the first sums the Grams without building a graph, the second back-propagates every tile with the
global dL/dG held fixed. Content and total-variation terms are local. With a halo wider than the
backbone's receptive field, every owned feature is computed exactly as over the whole image, and the
gradients summed over the tiles are the whole image's gradient: style never drifts between tiles
(Galerne et al. 2023, "Scaling Painting Style Transfer", make the same split).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch

from engine.losses import gram

HALO = 96  # px of context per side: the receptive field of relu5_1 reaches 66 px (VGG16), 90 (VGG19)
ALIGN = 16  # the backbone's total stride: tiles start on pooling-grid boundaries

Features = Callable[[torch.Tensor, tuple[str, ...]], dict[str, torch.Tensor]]


@dataclass(frozen=True)
class Window:
    """One tile: the rows/columns it owns, and the wider window (owned plus halo) it reads."""

    own: tuple[slice, slice]
    read: tuple[slice, slice]

    def owned_at(self, stride: int) -> tuple[slice, slice]:
        """The owned positions in the coordinates of the tile's features at `stride`."""
        return tuple(  # type: ignore[return-value]
            slice((o.start - r.start) // stride, -(-(o.stop - r.start) // stride))
            for o, r in zip(self.own, self.read, strict=True)
        )


def windows(height: int, width: int, tile: int) -> list[Window]:
    """Owned blocks of `tile - 2 * HALO` px (a multiple of ALIGN) covering the image once."""
    core = max(ALIGN, (tile - 2 * HALO) // ALIGN * ALIGN)

    def spans(length: int) -> Iterator[tuple[slice, slice]]:
        for start in range(0, length, core):
            stop = min(start + core, length)
            yield slice(start, stop), slice(max(0, start - HALO), min(length, stop + HALO))

    return [
        Window((rows, cols), (rows_read, cols_read))
        for rows, rows_read in spans(height)
        for cols, cols_read in spans(width)
    ]


def tile_side_for(height: int, width: int, tile: int | None) -> int | None:
    """`tile` when the image is larger than it, else None (one pass)."""
    return tile if tile is not None and max(height, width) > tile else None


class TiledGrams:
    """Global Gram matrices of an image too large for one pass, summed tile by tile."""

    def __init__(self, features: Features, strides: dict[str, int], tile: int, shift: float) -> None:
        self.features = features
        self.strides = strides
        self.tile = tile
        self.shift = shift

    def owned(self, feats: dict[str, torch.Tensor], name: str, window: Window) -> torch.Tensor:
        return feats[name][(..., *window.owned_at(self.strides[name]))]

    def __call__(
        self, image: torch.Tensor, layers: tuple[str, ...]
    ) -> tuple[dict[str, torch.Tensor], dict[str, int]]:
        """(layer -> the whole image's Gram, layer -> its number of feature positions)."""
        sums: dict[str, torch.Tensor] = {}
        counts = dict.fromkeys(layers, 0)
        with torch.no_grad():
            for window in windows(*image.shape[-2:], self.tile):
                feats = self.features(image[(..., *window.read)], layers)
                for name in layers:
                    owned = self.owned(feats, name, window)
                    positions = owned.shape[-2] * owned.shape[-1]
                    partial = gram(owned, self.shift) * positions
                    sums[name] = sums[name] + partial if name in sums else partial
                    counts[name] += positions
        return {name: sums[name] / counts[name] for name in layers}, counts


@dataclass
class TiledTerms:
    """What one tiled evaluation needs besides the image: the weighted targets and the layers."""

    content: torch.Tensor  # the content image at this scale
    content_layers: dict[str, tuple[float, torch.Tensor]]  # layer -> (weight, target energy)
    style_layers: dict[str, tuple[float, torch.Tensor, torch.Tensor]]  # layer -> (weight, Gram, energy)
    tv_weight: float


def evaluate(grams: TiledGrams, terms: TiledTerms, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(total loss, style loss) of `image`, as `engine.methods.gatys._Objective` defines them.

    The total carries the exact gradient for `image` (a leaf that requires grad, or call under
    no_grad): its value is the loss and its graph is the one product image * gradient, so the
    caller's backward() holds nothing larger than the image.
    """
    taps = tuple(dict.fromkeys([*terms.content_layers, *terms.style_layers]))
    current, positions = grams(image.detach(), taps)
    style = image.new_zeros(())
    d_gram: dict[str, torch.Tensor] = {}
    for name, (weight, target, energy) in terms.style_layers.items():
        diff = current[name] - target
        style = style + weight * diff.pow(2).mean() / energy
        d_gram[name] = weight * 2 * diff / (diff.numel() * energy)  # d style / d Gram
    want_grad = torch.is_grad_enabled() and image.requires_grad
    content, grad = _local_pass(grams, terms, image.detach(), d_gram, positions, want_grad)
    total = content + style
    if terms.tv_weight:
        total = total + _total_variation_(image.detach(), terms.tv_weight, grad)
    if grad is None:
        return total, style
    return _Precomputed.apply(image, total, grad), style


class _Precomputed(torch.autograd.Function):
    """A loss whose gradient is already known: backward hands it over without any temporaries."""

    @staticmethod
    def forward(ctx: Any, image: torch.Tensor, value: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
        ctx.grad = grad
        return value.clone()

    @staticmethod
    def backward(ctx: Any, upstream: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        return ctx.grad * upstream if float(upstream) != 1.0 else ctx.grad, None, None


def _total_variation_(image: torch.Tensor, weight: float, grad: torch.Tensor | None) -> torch.Tensor:
    """`weight * losses.total_variation(image)`, adding its gradient into `grad` in place."""
    value = image.new_zeros(())
    for dim in (-2, -1):
        length = image.shape[dim]
        diff = image.narrow(dim, 1, length - 1) - image.narrow(dim, 0, length - 1)
        value = value + weight * diff.pow(2).mean()
        if grad is not None:
            diff.mul_(2 * weight / diff.numel())
            grad.narrow(dim, 1, length - 1).add_(diff)
            grad.narrow(dim, 0, length - 1).sub_(diff)
        del diff
    return value


def _local_pass(
    grams: TiledGrams,
    terms: TiledTerms,
    image: torch.Tensor,
    d_gram: dict[str, torch.Tensor],
    positions: dict[str, int],
    want_grad: bool,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The content loss and, when asked, the gradient of content + style loss, tile by tile.

    Each tile's surrogate is its share of the loss with the global dL/dG held fixed: back-propagated,
    it gives exactly that tile's part of the whole image's gradient.
    """
    taps = tuple(dict.fromkeys([*terms.content_layers, *terms.style_layers])) if want_grad else ()
    taps = taps or tuple(terms.content_layers)
    content = image.new_zeros(())
    grad = torch.zeros_like(image) if want_grad else None
    for window in windows(*image.shape[-2:], grams.tile):
        with torch.no_grad():
            targets = grams.features(terms.content[(..., *window.read)], tuple(terms.content_layers))
        with torch.enable_grad():
            piece = image[(..., *window.read)].clone().requires_grad_(want_grad)
            feats = grams.features(piece, taps)
            surrogate = piece.new_zeros(())
            for name, (weight, energy) in terms.content_layers.items():
                owned = grams.owned(feats, name, window)
                error = (owned - grams.owned(targets, name, window)).pow(2).sum()
                surrogate = surrogate + weight * error / (positions[name] * owned.shape[1] * energy)
            content = content + surrogate.detach()
            if want_grad:
                for name, d in d_gram.items():
                    owned = grams.owned(feats, name, window)
                    share = owned.shape[-2] * owned.shape[-1] / positions[name]
                    surrogate = surrogate + (d * gram(owned, grams.shift)).sum() * share
                surrogate.backward()
                grad[(..., *window.read)] += piece.grad  # type: ignore[index]
        del feats, piece, surrogate, targets
    return content, grad
