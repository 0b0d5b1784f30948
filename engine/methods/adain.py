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
from typing import Any

import numpy as np
import torch

from engine import images, params, weights
from engine.colors import luminance_transfer, match_color_histogram
from engine.errors import UserError
from engine.methods.base import PreparedJob, Progress, RunContext
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

    def parse_params(self, raw: dict[str, Any]) -> dict[str, Any]:
        params.reject_unknown(raw, PARAMS)
        preserve = raw.get("preserve_colors", False)
        if preserve is True:
            preserve = "luminance"
        if preserve not in (False, "luminance", "histogram"):
            raise UserError(
                "bad-option", "setting 'preserve_colors' must be false, true, 'luminance' or 'histogram'"
            )
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
            target = torch.zeros(2, content_feat.shape[1], device=ctx.device)
            for style, entry in zip(styles, job.styles, strict=True):
                ctx.cancel.raise_if_cancelled()
                stats = ctx.cache.get(
                    ("adain", "style-stats", _digest(style), p["style_size"], device, p["precision"]),
                    lambda style=style: _style_stats(encoder, style, p["style_size"], ctx.device),
                )
                target += stats * (entry.weight / total)
            feat = adain(content_feat, target[0], target[1], p["alpha"])
            result = to_image(decoder(feat)[..., :height, :width].clamp_(0.0, 1.0))
        result = images.resize(result, job.content.shape[:2])
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


def _style_stats(
    encoder: ConvStack, style: np.ndarray, style_size: int, device: torch.device
) -> torch.Tensor:
    """(2, C): the mean and std of the style's relu4_1 features, at upstream's style size."""
    if style_size:
        scale = style_size / min(style.shape[:2])
        style = images.resize(style, (round(style.shape[0] * scale), round(style.shape[1] * scale)))
    mean, std = mean_std(encoder(pad_to_multiple(to_tensor(style, device), 1)))
    return torch.stack([mean, std])


def _digest(image: np.ndarray) -> str:
    """Identifies a style by its pixels, so the same painting sent twice hits the cache."""
    digest = hashlib.blake2b(np.ascontiguousarray(image).data, digest_size=16)
    digest.update(repr(image.shape).encode())
    return digest.hexdigest()


METHOD = AdaINMethod()
