"""AdaIN (Huang & Belongie 2017): arbitrary styles in one forward pass.

The content's relu4_1 features take each channel's mean and standard deviation from the style's,
and a trained decoder turns them back into an image. Follows naoto0804/pytorch-AdaIN test.py
(style_transfer, calc_mean_std in function.py), with three changes that keep its output:
- AdaIN is affine in the style statistics, so interpolating several styles mixes their (mean, std)
  and runs one AdaIN, where upstream encodes the content once per style and mixes N feature maps;
- the alpha blend and the normalisation fold into one per-channel scale and shift;
- a style's statistics are cached (keyed by its pixels), so re-running with new content or alpha
  skips the style's encoder pass.

The models are the published decoder with its VGG-19 encoder, and the decoders trained here by
`nst train adain` (engine/training/adain.py), each with the backbone its provenance names as encoder.
"""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np
import torch

from engine import params, weights
from engine.backbones import source_of
from engine.errors import UserError
from engine.imaging import images, masks
from engine.imaging.colors import match_color_histogram
from engine.methods.base import Footprint, PreparedJob, Progress, RunContext, StyleSource
from engine.nets import tiling
from engine.nets.adain_nets import load_backbone_encoder, load_decoder, load_encoder
from engine.nets.inference import (
    MIN_SIDE,
    NetCost,
    compute_path,
    finish,
    pad_to_multiple,
    precision_scope,
    stats_batch,
    tile_progress,
    to_image,
    to_tensor,
    work_size,
)

EPS = 1e-5  # upstream calc_mean_std: added to the (unbiased) variance
# The encoder pools three times, so sides and tile offsets are multiples of 8. Receptive-field
# radius 67 px: encoder convs 2 + 4 + 16 + 8 and pools 1 + 2 + 4 px, decoder convs 8 + 16 + 4 + 2 px.
# Per pixel, a tile's encoder and decoder passes raised the heap by 1150 (512 px), 1500 (768) and 1330
# (1024) bytes with glibc set up as `nst` sets it (engine/compute/allocator.py): what the decoder frees is
# not where the encoder's next tile wants it. With 850 an 8192 px job passed 3.1 GiB.
COST = NetCost(multiple=8, halo=72, bytes_per_pixel=1650, fixed_bytes=30 << 20)


PUBLISHED = "published"  # the model of naoto0804's decoder and its VGG-19 encoder
PREFIX = "adain_"  # a decoder trained here is the weights adain_<model>


def _decoder_id(model: str) -> str:
    return "adain_decoder" if model == PUBLISHED else PREFIX + model


class AdaINMethod:
    name = "adain"

    @property
    def models(self) -> tuple[str, ...]:
        """The published decoder, then those trained here (read from the manifest in use)."""
        entries = weights.load_manifest().entries.values()
        return (PUBLISHED, *(e.id[len(PREFIX) :] for e in entries if e.method == self.name and e.trained))

    def weight_ids(self, model: str | None) -> tuple[str, ...]:
        if model in (None, PUBLISHED):
            return ("adain_vgg", _decoder_id(PUBLISHED))
        return (_decoder_id(model), source_of(self._encoder_of(model)).WEIGHTS_ID)

    def _encoder_of(self, model: str) -> str:
        """The backbone a decoder trained here was trained for."""
        return str(weights.load_manifest().entry(PREFIX + model).trained["backbone"])

    def parse_params(self, raw: dict[str, Any]) -> dict[str, Any]:
        p = params.parse(self.name, raw)
        if 0 < p["style_size"] < MIN_SIDE:
            raise UserError("bad-option", f"setting 'style_size' must be 0 (keep) or at least {MIN_SIDE}")
        models = self.models
        if p["model"] is None:  # the first installed one, as the setting's help says
            installed = (m for m in models if all(weights.path_for(w) for w in self.weight_ids(m)))
            p["model"] = next(installed, PUBLISHED)
        elif p["model"] not in models:
            raise UserError(
                "bad-option", f"unknown adain model {p['model']!r}; choose one of: {', '.join(models)}"
            )
        return p

    def _nets(
        self, model: str, backbone: str | None, ctx: RunContext
    ) -> tuple[torch.nn.Module, torch.nn.Module]:
        """The encoder and decoder of `model` (its encoder `backbone`, None for the published pair),
        loaded once per engine."""
        device = str(ctx.device)
        if backbone is None:
            encoder = ctx.cache.get(
                ("adain", "encoder", PUBLISHED, device),
                lambda: weights.load_with("adain_vgg", lambda path: load_encoder(path, ctx.device)),
            )
        else:
            encoder = ctx.cache.get(
                ("adain", "encoder", backbone, device), lambda: load_backbone_encoder(backbone, ctx.device)
            )
        decoder = ctx.cache.get(
            ("adain", "decoder", model, device),
            lambda: weights.load_with(_decoder_id(model), lambda path: load_decoder(path, ctx.device)),
        )
        return encoder, decoder

    def footprint(self, p: dict[str, Any], size: tuple[int, int]) -> Footprint:
        return COST.footprint(work_size(size, p["size"]))

    def run(self, job: PreparedJob, ctx: RunContext) -> np.ndarray:
        p = job.params
        device = str(ctx.device)
        ctx.progress(Progress(0.05, "load", f"loading the AdaIN encoder and decoder ({p['model']})"))
        # The encoder a decoder trained here was trained for (None: the published pair's own).
        backbone = None if p["model"] == PUBLISHED else self._encoder_of(p["model"])
        encoder, decoder = self._nets(p["model"], backbone, ctx)
        content = images.resize(job.content, work_size(job.content.shape[:2], p["size"]))
        styles = [s.image for s in job.styles]
        if p["preserve_colors"] == "histogram":  # upstream's --preserve_color recolours the style (coral)
            styles = [match_color_histogram(s, content) for s in styles]

        ctx.cancel.raise_if_cancelled()
        ctx.progress(Progress(0.2, "stylize", "stylising"))
        workload = "adain" if backbone is None else f"adain/{backbone}"
        path = compute_path(
            workload, lambda x: decoder(encoder(x)), ctx, p, content.shape[0] * content.shape[1]
        )
        with precision_scope(ctx.device, path):

            def stats_of(index: int, mask: np.ndarray | None) -> torch.Tensor:
                ctx.cancel.raise_if_cancelled()
                key = (_digest(styles[index]), None if mask is None else _digest(mask), p["style_size"])
                return ctx.cache.get(
                    ("adain", "style-stats", p["model"], *key, device, path.name),
                    lambda: _style_stats(encoder, styles[index], p["style_size"], ctx.device, mask),
                )

            def mix(sources: list[StyleSource]) -> torch.Tensor:
                share = sum(s.weight for s in sources)
                return sum(stats_of(s.index, s.mask) * (s.weight / share) for s in sources)

            if job.guides:  # regions and semantic maps: each soft region takes its own styles
                targets = [mix(g.sources) for g in job.guides]
                regions = [images.resize(g.mask[..., None], content.shape[:2])[..., 0] for g in job.guides]
            else:
                targets = [mix([StyleSource(i, s.weight) for i, s in enumerate(job.styles)])]
                regions = []
            transfer = _Transfer(encoder, decoder, targets, p["strength"], ctx.device)
            tiles = ctx.plan.tiles() if ctx.plan is not None else []
            if not tiles:
                result = transfer(content, regions)
            else:  # every tile takes the content statistics of the image, or of a sample of it
                crops = ctx.plan.stats_crops()
                sample = [np.concatenate([r[crop] for crop in crops]) for r in regions]
                stats = transfer.content_stats(stats_batch(content, ctx, 8), sample)

                def one_tile(pixels: np.ndarray, tile: tiling.Tile) -> np.ndarray:
                    rows, cols = (
                        slice(tile.rows.start, tile.rows.stop),
                        slice(tile.cols.start, tile.cols.stop),
                    )
                    return transfer(pixels, [r[rows, cols] for r in regions], stats)

                on_tile = tile_progress(ctx, len(tiles), 0.25, 0.95)
                result = tiling.run_tiled(one_tile, content, tiles, on_tile)
        result = images.resize(result, job.content.shape[:2])
        if job.guides:  # the decoder only approximates the content: unstyled pixels keep the original
            result = masks.blend(result, job.content, job.guides)
        return finish(result, job.content, 1.0, p["preserve_colors"] == "luminance")


Stats = list[tuple[torch.Tensor, torch.Tensor]]  # (mean, std) of the content features, per region


def mean_std(feat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and sqrt(unbiased variance + EPS) of one feature map, in float32."""
    var, mean = torch.var_mean(feat[0].float(), dim=(1, 2))
    return mean, (var + EPS).sqrt()


def adain(
    content_feat: torch.Tensor,
    style_mean: torch.Tensor,
    style_std: torch.Tensor,
    alpha: float,
    content_stats: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> torch.Tensor:
    """alpha * AdaIN(content, style) + (1 - alpha) * content, as one per-channel scale and shift.

    `content_stats` (mean, std) replace the features' own, e.g. the whole image's for a tile.
    """
    scale, shift = _affine(content_stats or mean_std(content_feat), style_mean, style_std, alpha)
    dtype = content_feat.dtype
    return torch.addcmul(shift.to(dtype)[:, None, None], content_feat, scale.to(dtype)[:, None, None])


def _affine(
    content: tuple[torch.Tensor, torch.Tensor],
    style_mean: torch.Tensor,
    style_std: torch.Tensor,
    alpha: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """AdaIN towards the style's (mean, std), with the alpha blend, as one per-channel (scale, shift)
    of the content features, whose own statistics are `content`."""
    ratio = style_std / content[1]
    return alpha * ratio + (1.0 - alpha), alpha * (style_mean - content[0] * ratio)


class _Transfer:
    """Encode, AdaIN, decode one image or tile, with the content statistics given from outside, so
    that every tile of an image can take the same (whole-image) statistics.

    With regions (guides), each soft region's content statistics take its styles' (or, under
    semantic maps, the styles' same-label) statistics; the results mix by the masks at relu4_1
    resolution, and what no region covers keeps the content's features.
    """

    def __init__(
        self,
        encoder: torch.nn.Module,
        decoder: torch.nn.Module,
        targets: list[torch.Tensor],
        alpha: float,
        device: torch.device,
    ) -> None:
        self.encoder, self.decoder = encoder, decoder
        self.targets, self.alpha, self.device = targets, alpha, device

    def content_stats(self, content: torch.Tensor, regions: list[np.ndarray]) -> Stats:
        """(mean, std) of the content's relu4_1 features: over the whole image (or a batch of crops
        of it, stacked in `regions` along the rows), or per region."""
        return self._stats(self.encoder(content), regions)

    def _stats(self, feat: torch.Tensor, regions: list[np.ndarray]) -> Stats:
        if feat.shape[0] > 1:  # a batch of crops: one sample, one feature map
            feat = torch.cat(feat.unbind(), dim=1)[None]
        if not regions:
            return [mean_std(feat)]
        return [masks.masked_mean_std(feat, m) for m in self._feature_masks(regions, feat)]

    def __call__(
        self, content: np.ndarray, regions: list[np.ndarray], stats: Stats | None = None
    ) -> np.ndarray:
        """The stylised image (or tile): with the content statistics `stats`, else its own."""
        height, width = content.shape[:2]
        feat = self.encoder(pad_to_multiple(to_tensor(content, self.device), 8))
        return to_image(
            self.decoder(self.transform(feat, regions, stats))[..., :height, :width].clamp_(0.0, 1.0)
        )

    def transform(
        self, feat: torch.Tensor, regions: list[np.ndarray], stats: Stats | None = None
    ) -> torch.Tensor:
        """AdaIN on the content's relu4_1 features (`regions`: HxW masks at the padded input's size)."""
        if stats is None:
            stats = self._stats(feat, regions)
        if not regions:
            target = self.targets[0]
            return adain(feat, target[0], target[1], self.alpha, stats[0])
        return self._guided(feat, self._feature_masks(regions, feat), stats)

    def _feature_masks(self, regions: list[np.ndarray], feat: torch.Tensor) -> list[torch.Tensor]:
        """Each HxW region padded like the content, then averaged down to the feature grid."""
        height, width = regions[0].shape
        padded = pad_to_multiple(torch.zeros(1, 1, height, width), 8).shape[-2:]
        out = []
        for region in regions:
            full = torch.zeros(1, 1, *padded)
            full[..., :height, :width] = torch.from_numpy(np.ascontiguousarray(region))
            out.append(masks.layer_mask(full, feat.shape[-2:], self.device))
        return out

    def _guided(self, feat: torch.Tensor, feat_masks: list[torch.Tensor], stats: Stats) -> torch.Tensor:
        total = torch.stack(feat_masks).sum(dim=0)
        out = feat.float() * (1.0 - total.clamp(max=1.0))
        for mask, content, target in zip(feat_masks, stats, self.targets, strict=True):
            scale, shift = _affine(content, target[0], target[1], self.alpha)
            styled = feat.float() * scale[:, None, None] + shift[:, None, None]
            out = out + styled * (mask / total.clamp(min=1.0))
        return out.to(feat.dtype)


def _style_stats(
    encoder: torch.nn.Module,
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
