"""AdaIN (Huang & Belongie 2017): arbitrary styles in one forward pass.

The content's relu4_1 features take each channel's mean and standard deviation from the style's,
and a trained decoder turns them back into an image. Follows naoto0804/pytorch-AdaIN test.py
(style_transfer, calc_mean_std in function.py), with three changes that keep its output:
- AdaIN is affine in the style statistics, so interpolating several styles mixes their (mean, std)
  and runs one AdaIN, where upstream encodes the content once per style and mixes N feature maps;
- the alpha blend and the normalisation fold into one per-channel scale and shift;
- a style's statistics are cached (keyed by its pixels), so re-running with new content or alpha
  skips the style's encoder pass.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from engine import images, masks, params, weights
from engine.colors import luminance_transfer, match_color_histogram
from engine.errors import UserError
from engine.methods.base import Guide, PreparedJob, Progress, RunContext, Style
from engine.nets.adain_nets import ConvStack, load_decoder, load_encoder
from engine.nets.inference import (
    MIN_SIDE,
    pad_to_multiple,
    parse_common,
    precision_scope,
    to_image,
    to_tensor,
    work_size,
)

PARAMS = ("alpha", "size", "style_size", "precision", "preserve_colors")
DEFAULT_STYLE_SIZE = 512  # upstream test.py: the style's shorter side is resized to 512
EPS = 1e-5  # upstream calc_mean_std: added to the (unbiased) variance


class AdaINMethod:
    name = "adain"
    needs_style = True
    guided = True
    models = ()

    def weight_ids(self, model: str | None) -> tuple[str, ...]:
        return ("adain_vgg", "adain_decoder")

    def parse_params(self, raw: dict[str, Any]) -> dict[str, Any]:
        params.reject_unknown(raw, PARAMS)
        preserve = params.preserve_colors(raw, ("luminance", "histogram"))
        style_size = params.integer(raw, "style_size", DEFAULT_STYLE_SIZE, 0, images.MAX_SIDE)
        if 0 < style_size < MIN_SIDE:
            raise UserError("bad-option", f"setting 'style_size' must be 0 (keep) or at least {MIN_SIDE}")
        return {
            "alpha": params.number(raw, "alpha", 1.0, 0.0, 1.0),
            "style_size": style_size,
            "preserve_colors": preserve,
            **parse_common(raw),
        }

    def run(self, job: PreparedJob, ctx: RunContext) -> np.ndarray:
        p = job.params
        device = str(ctx.device)
        ctx.progress(Progress(0.05, "load", "loading the AdaIN encoder and decoder"))
        encoder = ctx.cache.get(
            ("adain", "encoder", device), lambda: load_encoder(weights.require("adain_vgg"), ctx.device)
        )
        decoder = ctx.cache.get(
            ("adain", "decoder", device), lambda: load_decoder(weights.require("adain_decoder"), ctx.device)
        )
        content = images.resize(job.content, work_size(job.content, p["size"]))
        height, width = content.shape[:2]
        styles = [s.image for s in job.styles]
        if p["preserve_colors"] == "histogram":  # upstream's --preserve_color recolours the style (coral)
            styles = [match_color_histogram(s, content) for s in styles]
        total = sum(s.weight for s in job.styles)

        ctx.cancel.raise_if_cancelled()
        ctx.progress(Progress(0.2, "stylize", "stylising"))
        with precision_scope(ctx.device, p["precision"]):
            content_feat = encoder(pad_to_multiple(to_tensor(content, ctx.device), 8))

            def stats_of(style: np.ndarray, mask: np.ndarray | None = None) -> torch.Tensor:
                ctx.cancel.raise_if_cancelled()
                key = (_digest(style), None if mask is None else _digest(mask), p["style_size"])
                return ctx.cache.get(
                    ("adain", "style-stats", *key, device, p["precision"]),
                    lambda: _style_stats(encoder, style, p["style_size"], ctx.device, mask),
                )

            if job.guides:
                feat = _guided_adain(
                    content_feat, content.shape[:2], job.guides, styles, job.styles, stats_of, p
                )
            else:
                target = torch.zeros(2, content_feat.shape[1], device=ctx.device)
                for style, entry in zip(styles, job.styles, strict=True):
                    target += stats_of(style) * (entry.weight / total)
                feat = adain(content_feat, target[0], target[1], p["alpha"])
            result = to_image(decoder(feat)[..., :height, :width].clamp_(0.0, 1.0))
        result = images.resize(result, job.content.shape[:2])
        if job.guides:  # the decoder only approximates the content: unstyled pixels keep the original
            result = masks.blend(result, job.content, job.guides)
        if p["preserve_colors"] == "luminance":
            result = luminance_transfer(result, job.content)
        return result


def mean_std(feat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and sqrt(unbiased variance + EPS) of one feature map, in float32."""
    var, mean = torch.var_mean(feat[0].float(), dim=(1, 2))
    return mean, (var + EPS).sqrt()


def adain(
    content_feat: torch.Tensor, style_mean: torch.Tensor, style_std: torch.Tensor, alpha: float
) -> torch.Tensor:
    """alpha * AdaIN(content, style) + (1 - alpha) * content, as one per-channel scale and shift."""
    mean, std = mean_std(content_feat)
    ratio = style_std / std
    scale = alpha * ratio + (1.0 - alpha)
    shift = alpha * (style_mean - mean * ratio)
    dtype = content_feat.dtype
    return torch.addcmul(shift.to(dtype)[:, None, None], content_feat, scale.to(dtype)[:, None, None])


def _guided_adain(
    content_feat: torch.Tensor,
    work: tuple[int, int],
    guides: list[Guide],
    styles: list[np.ndarray],
    entries: list[Style],
    stats_of: Callable[..., torch.Tensor],
    p: dict[str, Any],
) -> torch.Tensor:
    """AdaIN per guide: each soft region's own feature statistics take its styles' (or, under
    semantic maps, the styles' same-label) statistics; the results mix by the masks at relu4_1
    resolution, and what no guide covers keeps the content's features."""
    padded = pad_to_multiple(torch.zeros(1, 1, *work), 8).shape[-2:]
    size, device = content_feat.shape[-2:], content_feat.device
    feat_masks = []
    for guide in guides:  # pad like the content, then average down to the feature grid
        full = torch.zeros(1, 1, *padded)
        full[..., : work[0], : work[1]] = torch.from_numpy(images.resize(guide.mask[..., None], work)[..., 0])
        feat_masks.append(masks.layer_mask(full, size, device))
    total = torch.stack(feat_masks).sum(dim=0)
    out = content_feat.float() * (1.0 - total.clamp(max=1.0))
    for guide, mask in zip(guides, feat_masks, strict=True):
        share = sum(s.weight for s in guide.sources)
        target = sum(stats_of(styles[s.index], s.mask) * (s.weight / share) for s in guide.sources)
        mean, std = masks.masked_mean_std(content_feat, mask)
        ratio = target[1] / std
        scale = p["alpha"] * ratio + (1.0 - p["alpha"])
        shift = p["alpha"] * (target[0] - mean * ratio)
        styled = content_feat.float() * scale[:, None, None] + shift[:, None, None]
        out = out + styled * (mask / total.clamp(min=1.0))
    return out.to(content_feat.dtype)


def _style_stats(
    encoder: ConvStack,
    style: np.ndarray,
    style_size: int,
    device: torch.device,
    mask: np.ndarray | None = None,
) -> torch.Tensor:
    """(2, C): the mean and std of the style's relu4_1 features (within `mask`), at upstream's style size."""
    if style_size:
        scale = style_size / min(style.shape[:2])
        style = images.resize(style, (round(style.shape[0] * scale), round(style.shape[1] * scale)))
    feat = encoder(pad_to_multiple(to_tensor(style, device), 1))
    if mask is None:
        mean, std = mean_std(feat)
    else:
        mean, std = masks.masked_mean_std(feat, masks.layer_mask(mask, feat.shape[-2:], device))
    return torch.stack([mean, std])


def _digest(image: np.ndarray) -> str:
    """Identifies a style by its pixels, so the same painting sent twice hits the cache."""
    digest = hashlib.blake2b(np.ascontiguousarray(image).data, digest_size=16)
    digest.update(repr(image.shape).encode())
    return digest.hexdigest()


METHOD = AdaINMethod()
