"""Gatys et al. optimisation-based style transfer, coarse to fine: the method as the pipeline sees it.

The image itself is optimised so that its deep features match the content's and its feature Gram
matrices match the style's. Work starts at a small size, where style patterns form quickly, and each
result seeds the next, larger scale. The parts live beside this module: presets.py (the scales and
their iterations), objective.py and losses.py (what is minimised), tiles.py (the same loss tile by
tile, for images too large for one pass), optimiser.py (L-BFGS, Adam where it stalls, descent in
tiles). This module holds what the planner and the pipeline ask of a method: its settings, its
memory footprint, its cost, and the run from content to result.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import torch

from engine import params
from engine.backbones import Backbone, load_backbone
from engine.compute import allocator, tune
from engine.errors import UserError
from engine.imaging import images
from engine.imaging.colors import luminance_transfer, match_color_histogram
from engine.methods.base import Footprint, PreparedJob, Progress, RunContext
from engine.methods.gatys import tiles
from engine.methods.gatys.objective import for_scale
from engine.methods.gatys.optimiser import HISTORY, HISTORY_BYTES, Optimiser
from engine.methods.gatys.presets import PRESETS, scale_cost, scales

# Per pixel of a tile, the heap above what the image holds through loss, gradient and trial passes
# (bench/gatys_memory.py, vgg16-hed on the CPU, glibc as `nst` sets it): 3620 at 384 px, 3340 at 512,
# 2820 at 640, 3310 at 768 (with 2000 here, a 2048 px job planned tiles of 768 px for 2.14 GiB and
# peaked at 3.24 GiB, as 3310 predicts). Fragmentation between tiles goes back (Optimiser.tile_progress).
EVAL_BYTES_PER_PIXEL = 3650
# The sides at which the backbone's compute paths are timed, once per machine (engine/compute/tune.py):
# NNPACK's Winograd kernel pays only on large passes, so one small and one large side.
TUNE_SIDES = (256, 512)
# Held for the whole image however it is tiled: image and gradient (12 B each), the content features
# kept in half precision (16), and during set-up the scale's content and style (12 each). A pass over
# the whole image adds L-BFGS's or Adam's state, the best image and the start (ONE_PASS_BYTES_PER_PIXEL).
WHOLE_IMAGE_BYTES_PER_PIXEL = 4 * 12 + 16
ONE_PASS_BYTES_PER_PIXEL = 3 * 12
BACKBONE_BYTES = 64 << 20


class GatysMethod:
    """What the planner and the pipeline ask of Gatys (engine/methods/base.py `Method`)."""

    name = "gatys"
    models = ()

    def weight_ids(self, model: str | None) -> tuple[str, ...]:
        return ()  # the default backbone ships with the engine; others are checked when chosen

    def parse_params(self, raw: dict[str, Any]) -> dict[str, Any]:
        p = params.parse(self.name, raw)
        if p["init"] not in ("content", "noise") and not Path(p["init"]).is_file():
            raise UserError(
                "bad-option", f"setting 'init' must be content, noise or an image file; got {p['init']!r}"
            )
        return p

    def footprint(self, p: dict[str, Any], size: tuple[int, int]) -> Footprint:
        """The finest scale's memory: per pixel of a pass, one evaluation's activations (and what a
        pass over the whole image adds); plus what the whole image holds, whatever the tiles."""
        height, width = size
        long_side = p["size"] or min(max(height, width), PRESETS[p["preset"]].default_size)
        work = images.fit_long_side(height, width, long_side)
        pixels = work[0] * work[1]
        history = min(HISTORY_BYTES, HISTORY * 2 * 12 * pixels)  # one pass only: tiles use plain descent
        return Footprint(
            work, EVAL_BYTES_PER_PIXEL + ONE_PASS_BYTES_PER_PIXEL + history / pixels,
            BACKBONE_BYTES + WHOLE_IMAGE_BYTES_PER_PIXEL * pixels,
            tiles.HALO, tiles.ALIGN, shared_norms=False,
        )  # fmt: skip

    def cost(self, p: dict[str, Any], size: tuple[int, int]) -> float:
        """The work, in pixel-evaluations, for the planner's time estimate (engine/planner.py)."""
        if p["strength"] == 0 or p["style_weight"] == 0:
            return 0.0
        sides, iterations = scales(p, *size)
        pixels = [math.prod(images.fit_long_side(*size, side)) for side in sides]
        return float(sum(scale_cost(n, its) for n, its in zip(pixels, iterations, strict=True)))

    def run(self, job: PreparedJob, ctx: RunContext) -> np.ndarray:
        p = job.params
        if p["strength"] == 0 or p["style_weight"] == 0:
            return job.content  # asked for no style at all: nothing to optimise
        torch.manual_seed(p["seed"])
        backbone = ctx.cache.get(
            ("backbone", p["backbone"], p["pooling"], str(ctx.device)),
            lambda: load_backbone(p["backbone"], p["pooling"], ctx.device),
        )
        content = job.content
        styles = [s.image for s in job.styles]
        if p["preserve_colors"] == "histogram":
            styles = [match_color_histogram(s, content) for s in styles]
        weights = np.array([s.weight for s in job.styles], dtype=np.float64)
        weights = weights / weights.sum()

        height, width = content.shape[:2]
        sides, iterations = scales(p, height, width)
        run = Optimiser(p, ctx, sides, iterations)
        image: torch.Tensor | None = None
        for index, side in enumerate(sides):
            size = images.fit_long_side(height, width, side)
            content_t = images.to_tensor(images.resize(content, size), ctx.device)
            style_ts = [
                images.to_tensor(
                    images.at_long_side(s, round(side * p["style_scale"])),
                    ctx.device,
                )
                for s in styles
            ]
            tile = tiles.tile_side_for(*size, ctx.plan.tile if ctx.plan else p["tile"])
            on_tile = run.tile_progress(index) if tile else None
            path = compute_path(backbone, p, ctx, math.prod(size) if tile is None else tile * tile)
            objective = for_scale(backbone, p, content_t, style_ts, weights, job.guides, path, tile, on_tile)
            if image is None:
                image = _initial_image(p["init"], content_t)
            else:
                image = images.resize_tensor(image, size).clamp_(0, 1)
            # Tiled objectives keep only what they need of the inputs; a reduced-precision scale
            # keeps them for its retry in fp32.
            retry = (content_t, style_ts) if path.dtype != torch.float32 else None
            del content_t, style_ts
            try:
                start = image
                image = run.optimise_scale(index, start, objective)
            except UserError as exc:
                if exc.code != "no-progress" or retry is None:
                    raise
                # Reduced precision's gradient was too coarse for this scale: the scale again in fp32.
                del objective
                path = tune.FP32
                objective = for_scale(backbone, p, *retry, weights, job.guides, path, tile, on_tile)
                image = run.optimise_scale(index, start, objective)
            del objective, retry, start
            if ctx.device.type == "cpu":  # this scale's L-BFGS history and passes: the next one is larger
                allocator.release()

        result = images.to_numpy(image)
        result = images.resize(result, (height, width))
        if p["preserve_colors"] == "luminance":
            result = luminance_transfer(result, content)
        return result


def compute_path(backbone: Backbone, p: dict[str, Any], ctx: RunContext, pixels: int) -> tune.ComputePath:
    """How this scale's backbone passes run: the `precision` setting, else the path measured
    fastest on this machine for a pass of `pixels` (timed once per machine on this backbone)."""
    taps = tuple(dict.fromkeys([*p["content_layers"], *p["style_layers"]]))

    def workload(path: tune.ComputePath, side: int) -> None:
        features = backbone.to(memory_format=path.layout)
        image = torch.rand(1, 3, side, side, device=ctx.device).contiguous(memory_format=path.layout)
        image.requires_grad_(True)
        sum(f.square().mean() for f in features(image, taps, path).values()).backward()

    def measuring() -> None:
        ctx.progress(Progress(0.0, "tune", tune.MEASURING))

    name = f"gatys/{backbone.name}"
    return tune.choose(name, ctx.device, pixels, workload, TUNE_SIDES, p["precision"], measuring)


def _initial_image(init: str, content: torch.Tensor) -> torch.Tensor:
    if init == "content":
        return content.clone()
    if init == "noise":
        return torch.rand(content.shape, device=content.device, dtype=content.dtype)
    picture, _ = images.split_alpha(images.load_image(init))
    return images.to_tensor(images.resize(picture, tuple(content.shape[-2:])), content.device)


METHOD = GatysMethod()
