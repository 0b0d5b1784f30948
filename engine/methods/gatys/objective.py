"""Gatys' objective for one scale: content, style and total-variation terms against targets
computed once, before the optimiser's first step.

Over the whole image (`Objective`, which also matches regions and semantic maps through guides), or
tile by tile (tiles.py `TiledObjective`) when the scale is larger than the plan's tile; `for_scale`
builds the one a scale needs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from engine.backbones import Backbone
from engine.compute.tune import FP32, ComputePath
from engine.imaging import masks
from engine.methods.base import Guide
from engine.methods.gatys import tiles
from engine.methods.gatys.losses import Target, gram, masked_gram, total_variation

KEEP_WEIGHT = 100.0  # the unstyled remainder's pixel term, relative to the style's total weight


def for_scale(
    backbone: Backbone,
    p: dict[str, Any],
    content: torch.Tensor,
    styles: list[torch.Tensor],
    style_weights: np.ndarray,
    guides: list[Guide],
    path: ComputePath = FP32,
    tile: int | None = None,
    on_tile: tiles.TileDone | None = None,
) -> Objective | tiles.TiledObjective:
    """The objective of one scale, its passes along `path`: tile by tile when `tile` is set
    (tiles.tile_side_for), else over the whole image. Regions and semantic maps (`guides`) always
    run in one pass."""
    if tile is None or guides:
        return Objective(backbone, p, content, styles, style_weights, guides, path)
    content_layers, style_layers = _layers(p)
    taps = tuple(dict.fromkeys([*content_layers, *style_layers]))
    strides = {name: 2 ** (int(name[4]) - 1) for name in taps}  # reluB_L: pooled B-1 times
    features = _Features(backbone, path)
    tiler = tiles.Tiler(features, strides, tile, on_tile)
    shift = p["activation_shift"]
    targets: dict[str, torch.Tensor] = {}  # the style Grams, summed tile by tile: no full-size activations
    for style, weight in zip(styles, style_weights, strict=True):
        for name, g in tiler.grams(style, tuple(style_layers), shift).items():
            targets[name] = targets.get(name, 0) + g * float(weight)
    return tiles.TiledObjective(tiler, content, content_layers, style_layers, targets, shift, p["tv_weight"])


class Objective:
    """The weighted loss of one scale over the whole image, with every target computed once up front."""

    def __init__(
        self,
        backbone: Backbone,
        p: dict[str, Any],
        content: torch.Tensor,
        styles: list[torch.Tensor],
        style_weights: np.ndarray,
        guides: list[Guide],
        path: ComputePath = FP32,
    ) -> None:
        self.shift = p["activation_shift"]
        self.content_layers, self.style_layers = _layers(p)
        self.tv_weight = p["tv_weight"]
        self.taps = tuple(dict.fromkeys([*self.content_layers, *self.style_layers]))
        self._features = _Features(backbone, path)
        with torch.no_grad():
            feats = self.features(content)
            self.content_targets = {name: Target.of(feats[name]) for name in self.content_layers}
            style_feats = [self.features(style) for style in styles]
            if not guides:
                grams: dict[str, torch.Tensor] = {}
                for one, weight in zip(style_feats, style_weights, strict=True):
                    for name in self.style_layers:
                        g = gram(one[name], self.shift) * float(weight)
                        grams[name] = grams[name] + g if name in grams else g
                self.style_targets = {name: Target.of(g) for name, g in grams.items()}
            # Spatial control: each guide's region, at every style layer's resolution, matches its own
            # target Gram; what no guide covers gets no style term and keeps the content.
            self.guide_targets = [self._guide_targets(g, feats, style_feats) for g in guides]
            self.keep = self._keep(guides, content, p) if guides else None

    def _guide_targets(
        self, guide: Guide, feats: dict[str, torch.Tensor], style_feats: list[dict[str, torch.Tensor]]
    ) -> dict[str, tuple[torch.Tensor, Target]]:
        """Layer -> (the guide's content mask at that layer, its target Gram)."""
        total = sum(s.weight for s in guide.sources)
        out = {}
        for name in self.style_layers:
            target = 0.0
            for source in guide.sources:
                f = style_feats[source.index][name]
                if source.mask is None:
                    g = gram(f, self.shift)
                else:
                    own = masks.layer_mask(source.mask, f.shape[-2:], f.device)
                    g = masked_gram(f, own, self.shift)
                target = target + g * (source.weight / total)
            mask = masks.layer_mask(guide.mask, feats[name].shape[-2:], feats[name].device)
            out[name] = (mask, Target.of(target))
        return out

    def _keep(self, guides: list[Guide], content: torch.Tensor, p: dict[str, Any]) -> _Keep | None:
        """What no guide covers keeps the content. The content term alone lets deep layers' wide
        receptive fields (and Adam's per-pixel step sizes) drag the style across the edge, so the
        remainder also gets a pixel term, as strong as the style and soft where the masks are."""
        remainder = 1.0 - masks.layer_mask(masks.coverage(guides), content.shape[-2:], content.device)
        if remainder.max() <= masks.EMPTY:
            return None
        norm = (remainder.mean() * content.pow(2).mean()).clamp_min(1e-8)
        return _Keep(remainder, content.detach(), KEEP_WEIGHT * p["style_weight"] * p["strength"] / norm)

    def _style_loss(self, feats: dict[str, torch.Tensor]) -> torch.Tensor:
        layers = self.style_layers
        if not self.guide_targets:
            return sum(w * self.style_targets[n].loss(gram(feats[n], self.shift)) for n, w in layers.items())
        return sum(
            layers[n] * target.loss(masked_gram(feats[n], mask, self.shift))
            for guide in self.guide_targets
            for n, (mask, target) in guide.items()
        )

    def features(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        return self._features(image, self.taps)

    def __call__(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return (total loss, style loss); the style part is what the stall check watches."""
        feats = self.features(image)
        content = sum(w * self.content_targets[n].loss(feats[n]) for n, w in self.content_layers.items())
        style = self._style_loss(feats)
        total = content + style
        if self.keep is not None:
            total = total + self.keep.weight * (self.keep.mask * (image - self.keep.content).pow(2)).mean()
        if self.tv_weight:
            total = total + self.tv_weight * total_variation(image)
        return total, style


@dataclass
class _Keep:
    """The content the unstyled remainder keeps, and how strongly."""

    mask: torch.Tensor  # 1x1xHxW: 1 where no guide styles the image
    content: torch.Tensor
    weight: torch.Tensor


class _Features:
    """The backbone's taps of an image along one compute path (engine/compute/tune.py), image and
    weights in the path's memory layout (else every conv re-lays out its weights on every call)."""

    def __init__(self, backbone: Backbone, path: ComputePath) -> None:
        self.path = path
        self.backbone = backbone.to(memory_format=path.layout)

    def __call__(self, image: torch.Tensor, taps: tuple[str, ...]) -> dict[str, torch.Tensor]:
        return self.backbone(image.contiguous(memory_format=self.path.layout), taps, self.path)


def _layers(p: dict[str, Any]) -> tuple[dict[str, float], dict[str, float]]:
    """The content and style layers with their weights, each set normalised to its term's weight."""
    content = _normalised(p["content_layers"], p["content_weight"])
    return content, _normalised(p["style_layers"], p["style_weight"] * p["strength"])


def _normalised(layers: dict[str, float], scale: float) -> dict[str, float]:
    total = sum(layers.values()) or 1.0
    return {name: scale * w / total for name, w in layers.items() if w > 0}
