"""Gatys's loss and gradient computed tile by tile, so memory grows with the tile, not the image.

A Gram matrix is a sum over positions, so the whole image's style statistics are the sum of its
tiles' (each tile counting only the positions it owns). The loss is a function of those global
Grams, so its gradient with respect to one tile's features is (dL/dG + dL/dG^T) F / N: a small
C x C matrix, the same for every tile, times the tile's own features. An evaluation is therefore
two passes: `loss` sums the Grams (and the content and total-variation terms, which are local)
without building a graph, and `gradient` back-propagates every tile with the global dL/dG fixed.
An optimiser that only needs the loss of a trial step pays the first pass alone. The content
image's features are computed once per scale and kept (owned positions only, in half precision).
With a halo at least the backbone's receptive radius, every owned feature is computed exactly as
over the whole image, and the gradients summed over the tiles are the whole image's gradient:
style never drifts between tiles (Galerne et al. 2023, "Scaling Painting Style Transfer", make
the same split).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch

from engine.methods.gatys.losses import gram

HALO = 80  # px of context per side: relu5_1's receptive radius is 66 px in VGG16, 78 in VGG19
ALIGN = 16  # the backbone's total stride: tiles start on pooling-grid boundaries

Features = Callable[[torch.Tensor, tuple[str, ...]], dict[str, torch.Tensor]]
TileDone = Callable[[int, int], None]  # (tiles done, tiles in the pass): may raise to cancel


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


class Tiler:
    """The backbone's features of one image, window by window, each cut to the positions it owns."""

    def __init__(
        self, features: Features, strides: dict[str, int], tile: int, on_tile: TileDone | None = None
    ) -> None:
        self.features = features
        self.strides = strides
        self.tile = tile
        self.on_tile = on_tile  # a pass over a large image takes minutes: progress and cancel per tile

    def done(self, count: int, total: int) -> None:
        if self.on_tile is not None:
            self.on_tile(count, total)

    def owned(self, feats: dict[str, torch.Tensor], name: str, window: Window) -> torch.Tensor:
        return feats[name][(..., *window.owned_at(self.strides[name]))]

    def grams(self, image: torch.Tensor, layers: tuple[str, ...], shift: float) -> dict[str, torch.Tensor]:
        """Layer -> the whole image's Gram matrix, summed tile by tile."""
        sums: dict[str, torch.Tensor] = {}
        counts = dict.fromkeys(layers, 0)
        tiles = windows(*image.shape[-2:], self.tile)
        with torch.no_grad():
            for count, window in enumerate(tiles, start=1):
                feats = self.features(image[(..., *window.read)], layers)
                for name in layers:
                    owned = self.owned(feats, name, window)
                    positions = owned.shape[-2] * owned.shape[-1]
                    if not positions:  # floor pooling drops an image's last rows: none owned here
                        continue
                    partial = gram(owned, shift) * positions
                    sums[name] = sums[name] + partial if name in sums else partial
                    counts[name] += positions
                self.done(count, len(tiles))
        return {name: sums[name] / counts[name] for name in layers}


@dataclass
class Evaluation:
    """One image's loss from the first pass, with what the gradient pass needs of it."""

    total: torch.Tensor  # content + style + total variation, no graph
    style: torch.Tensor
    d_gram: dict[str, torch.Tensor]  # layer -> d style / d Gram, at this image's global Grams


class TiledObjective:
    """Content, style and total-variation loss of images of one size, evaluated in tiles.

    `content_layers`/`style_layers` map layer names to weights; `style_grams` are the blended target
    Grams (computed with `shift`). Terms are normalised as objective.py `Objective`'s.
    """

    def __init__(
        self,
        tiler: Tiler,
        content: torch.Tensor,
        content_layers: dict[str, float],
        style_layers: dict[str, float],
        style_grams: dict[str, torch.Tensor],
        shift: float,
        tv_weight: float,
    ) -> None:
        self.tiler = tiler
        self.shape = content.shape
        self.windows = windows(*content.shape[-2:], tiler.tile)
        self.content_layers = content_layers
        self.shift = shift
        self.tv_weight = tv_weight
        self.taps = tuple(dict.fromkeys([*content_layers, *style_layers]))
        self.style_targets = {
            n: (w, style_grams[n], style_grams[n].pow(2).mean() + 1e-8) for n, w in style_layers.items()
        }
        self.content_cache: list[dict[str, _Half]] = []
        squares = dict.fromkeys(content_layers, 0.0)
        self.counts = dict.fromkeys(self.taps, 0)  # feature values per layer (positions x channels)
        with torch.no_grad():
            for count, window in enumerate(self.windows, start=1):
                feats = tiler.features(content[(..., *window.read)], self.taps)
                kept = {}
                for name in self.taps:
                    owned = tiler.owned(feats, name, window)
                    self.counts[name] += owned.numel()
                    if name in content_layers:
                        squares[name] += float(owned.pow(2).sum())
                        kept[name] = _Half.of(owned)
                self.content_cache.append(kept)
                del feats
                tiler.done(count, len(self.windows))
        self.content_energy = {n: squares[n] / self.counts[n] + 1e-8 for n in content_layers}

    def loss(self, image: torch.Tensor, step: Step | None = None) -> Evaluation:
        """The first pass: global Grams, content and total-variation terms; no graph is kept.

        With `step`, the loss of the trial point `step.apply(image)`, made window by window: a
        trial needs no image-sized tensor of its own (192 MiB at 4096 px).
        """
        image = image.detach()
        sums: dict[str, torch.Tensor] = {}
        content = image.new_zeros(())
        with torch.no_grad():
            for count, (window, kept) in enumerate(zip(self.windows, self.content_cache, strict=True), 1):
                piece = image[(..., *window.read)] if step is None else step.apply(image, window.read)
                feats = self.tiler.features(piece, self.taps)
                del piece
                for name in self.taps:
                    owned = self.tiler.owned(feats, name, window)
                    if name in self.style_targets and owned.numel():
                        partial = gram(owned, self.shift) * (owned.shape[-2] * owned.shape[-1])
                        sums[name] = sums[name] + partial if name in sums else partial
                    if name in kept:
                        error = (owned - kept[name].value()).pow(2).sum()
                        weight = self.content_layers[name]
                        content = content + weight * error / (self.counts[name] * self.content_energy[name])
                del feats
                self.tiler.done(count, len(self.windows))
        style = image.new_zeros(())
        d_gram: dict[str, torch.Tensor] = {}
        for name, (weight, target, energy) in self.style_targets.items():
            positions = self.counts[name] // target.shape[-1]
            diff = sums[name] / positions - target
            style = style + weight * diff.pow(2).mean() / energy
            d_gram[name] = weight * 2 * diff / (diff.numel() * energy)
        total = content + style
        if self.tv_weight:
            total = total + _total_variation_(image, self.tv_weight, None, step)
        return Evaluation(total, style, d_gram)

    def gradient(self, image: torch.Tensor, evaluation: Evaluation) -> torch.Tensor:
        """The second pass: d total / d image, each tile back-propagating its features' share.

        With dL/dG fixed, the style gradient of a tile's owned features is (D + D^T)(F + shift) / N
        and the content gradient 2 w (F - T) / (count * energy). Each is added to its tap's gradient
        when backward reaches that tap, so no Gram or loss graph is built and no tap's gradient
        exists before backward needs it.
        """
        grad = torch.zeros_like(image)
        for count, (window, kept) in enumerate(zip(self.windows, self.content_cache, strict=True), 1):
            piece = image.detach()[(..., *window.read)].clone().requires_grad_(True)
            with torch.enable_grad():
                feats = self.tiler.features(piece, self.taps)
            *shallower, deepest = feats  # the backbone returns its taps in forward order
            for name in shallower:
                feats[name].register_hook(self._adder(name, feats[name].detach(), window, kept, evaluation))
            root = feats[deepest]
            torch.autograd.backward(
                root, self._adder(deepest, root.detach(), window, kept, evaluation)(torch.zeros_like(root))
            )
            grad[(..., *window.read)] += piece.grad
            del feats, root, piece
            self.tiler.done(count, len(self.windows))
        if self.tv_weight:
            _total_variation_(image.detach(), self.tv_weight, grad)
        return grad

    def _adder(
        self,
        name: str,
        tap: torch.Tensor,
        window: Window,
        kept: dict[str, _Half],
        evaluation: Evaluation,
    ) -> Callable[[torch.Tensor], torch.Tensor]:
        """A gradient hook for `tap` (detached: a hook that held its own tensor would be a reference
        cycle, keeping every tile's activations until the garbage collector ran): what flows back
        from deeper layers plus this layer's own terms."""

        def add(upstream: torch.Tensor) -> torch.Tensor:
            where = window.owned_at(self.tiler.strides[name])
            owned = tap[(..., *where)]
            total = upstream.clone()
            own_part = total[(..., *where)]
            if name in evaluation.d_gram:
                d = evaluation.d_gram[name]
                n, c, h, w = owned.shape
                flat = owned.reshape(n, c, h * w)
                if self.shift:
                    flat = flat + self.shift
                own_part += (torch.bmm(d + d.transpose(1, 2), flat) / (self.counts[name] // c)).view(
                    n, c, h, w
                )
            if name in kept:
                scale = 2 * self.content_layers[name] / (self.counts[name] * self.content_energy[name])
                own_part += (owned - kept[name].value()) * scale
            return total

        return add


@dataclass
class _Half:
    """Features kept in half precision, scaled so that their largest value cannot overflow it."""

    data: torch.Tensor
    scale: float

    @classmethod
    def of(cls, features: torch.Tensor) -> _Half:
        scale = max(float(features.abs().max()), 1e-30) / 2**14
        return cls((features / scale).to(torch.float16), scale)

    def value(self) -> torch.Tensor:
        return self.data.float() * self.scale


@dataclass(frozen=True)
class Step:
    """A trial point, image - size * direction projected into 0..1, computed where it is read."""

    direction: torch.Tensor
    size: float

    def apply(self, image: torch.Tensor, where: tuple[int | slice, ...] = ()) -> torch.Tensor:
        """The trial's pixels at `where` (trailing indices), or of the whole image."""
        return torch.add(image[(..., *where)], self.direction[(..., *where)], alpha=-self.size).clamp_(0, 1)

    def take(self, image: torch.Tensor) -> None:
        """Move `image` to the trial point in place: exactly the values `apply` gave."""
        image.add_(self.direction, alpha=-self.size).clamp_(0, 1)


def _total_variation_(
    image: torch.Tensor, weight: float, grad: torch.Tensor | None, step: Step | None = None
) -> torch.Tensor:
    """`weight * losses.total_variation(image)` (at `step`'s trial point if given), adding its
    gradient into `grad` in place.

    Plane by plane, so that the differences take a third of an image (64 MiB at 4096 px), not all of it.
    """
    value = image.new_zeros(())
    for dim in (-2, -1):
        length = image.shape[dim]
        count = image.numel() // length * (length - 1)  # differences along `dim` in the whole image
        for plane in range(image.shape[-3]):
            where = (plane, slice(None), slice(None))
            pixels = image[(..., *where)] if step is None else step.apply(image, where)
            diff = pixels.narrow(dim, 1, length - 1) - pixels.narrow(dim, 0, length - 1)
            del pixels
            flat = diff.view(-1)  # a dot product: no squared copy
            value = value + weight * torch.dot(flat, flat) / count
            if grad is not None:
                diff.mul_(2 * weight / count)
                target = grad.select(-3, plane)
                target.narrow(dim, 1, length - 1).add_(diff)
                target.narrow(dim, 0, length - 1).sub_(diff)
            del diff
    return value
