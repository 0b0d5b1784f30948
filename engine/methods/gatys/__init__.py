"""Gatys et al. optimisation-based style transfer, coarse to fine.

The image itself is optimised so that its deep features match the content's and its feature Gram
matrices match the style's. Work starts at a small size, where style patterns form quickly, and each
result seeds the next, larger scale. L-BFGS with a strong-Wolfe line search is the default; a step
that fails to lower the loss (the classic stall that hands back the content unchanged) or that
produces NaN switches the scale to Adam, and a run that still makes no progress is reported.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from engine import params
from engine.backbones import Backbone, load_backbone
from engine.compute import allocator
from engine.errors import UserError
from engine.imaging import images, masks
from engine.imaging.colors import luminance_transfer, match_color_histogram
from engine.methods.base import Footprint, Guide, PreparedJob, Progress, RunContext
from engine.methods.gatys import tiles as gatys_tiles
from engine.methods.gatys.losses import Target, gram, masked_gram, total_variation

MIN_SCALE = 16
PREVIEW_SIDE = 256
PREVIEW_EVERY_S = 2.0
TILE_REPORT_EVERY_S = 1.0
# L-BFGS keeps up to HISTORY pairs of image-sized vectors, within HISTORY_BYTES: a long history
# converges in fewer iterations (100 pairs: 99 instead of 122 at 256 px in bench/gatys.py).
HISTORY = 100
HISTORY_BYTES = 512 << 20
# Per pixel of a tile, the heap above what the image holds through loss, gradient and trial passes
# (bench/gatys_memory.py, vgg16-hed on the CPU, glibc as `nst` sets it): 3620 at 384 px, 3340 at 512,
# 2820 at 640, 3310 at 768 (with 2000 here, a 2048 px job planned tiles of 768 px for 2.14 GiB and
# peaked at 3.24 GiB, as 3310 predicts). Fragmentation between tiles goes back (_Run.tile_progress).
EVAL_BYTES_PER_PIXEL = 3650
# Held for the whole image however it is tiled: image and gradient (12 B each), the content features
# kept in half precision (16), and during set-up the scale's content and style (12 each). A pass over
# the whole image adds L-BFGS's or Adam's state, the best image and the start (ONE_PASS_BYTES_PER_PIXEL).
WHOLE_IMAGE_BYTES_PER_PIXEL = 4 * 12 + 16
ONE_PASS_BYTES_PER_PIXEL = 3 * 12
BACKBONE_BYTES = 64 << 20
LINE_SEARCH_TRIALS = 25  # evaluations one strong-Wolfe search may spend beyond the budget
DESCENT_REJECTIONS = 6  # rejected steps in a row (a 4096-fold smaller step) before descent gives up
KEEP_WEIGHT = 100.0  # the unstyled remainder's pixel term, relative to the style's total weight
# What a scale costs, for progress and the time estimate (`cost`): evaluations beyond one per
# iteration, its targets' passes and the line search's extra trials (`balanced` at 1024 px took 85, 27
# and 11 evaluations for 80, 20 and 5 iterations), and per evaluation a fixed part worth this many
# pixels (an evaluation took 0.25 s at 128 px, 5.1 s at 1024x683: 7.1 us per pixel plus 0.13 s).
EXTRA_EVALUATIONS = 6
EVALUATION_PIXELS = 16384


@dataclass(frozen=True)
class Preset:
    """How much work each quality level does; nobody should need to know iteration counts."""

    default_size: int  # long side when the user gives none (and the content is larger)
    coarsest: int  # long side of the first scale
    scale_step: float  # ratio between successive scales
    coarse_iterations: int  # L-BFGS iterations at the coarsest scale
    min_iterations: int  # the floor for the finer scales

    def iterations(self, sides: list[int]) -> list[int]:
        """Iterations per scale: each finer scale gets about the compute of the coarsest one.

        Style patterns form at the coarse scale; finer scales start from its upsampled result and
        only refine, so spending equal time per scale keeps the finest, most expensive one short.
        """
        share = [(sides[0] / side) ** 2 for side in sides]
        return [max(self.min_iterations, round(self.coarse_iterations * s)) for s in share]


PRESETS = {
    # name: Preset(default_size, coarsest, scale_step, coarse_iterations, min_iterations)
    "draft": Preset(512, 256, 2.0, 60, 5),
    "balanced": Preset(1024, 256, 2.0, 80, 5),
    "best": Preset(2048, 256, 2**0.5, 250, 15),
}


def schedule(long_side: int, preset: Preset, scales: int | None = None) -> list[int]:
    """Long sides of the scales, coarse to fine, ending exactly at `long_side`.

    The preset's coarsest size decides the count unless `scales` asks for a number explicitly;
    no scale goes below MIN_SCALE pixels.
    """
    sides = [long_side]
    while True:
        smaller = round(sides[-1] / preset.scale_step)
        wanted = len(sides) < scales if scales else smaller >= preset.coarsest * 0.99
        if not wanted or smaller < MIN_SCALE:
            return sides[::-1]
        sides.append(smaller)


def scales(p: dict[str, Any], height: int, width: int) -> tuple[list[int], list[int]]:
    """The long side of each scale and its iterations, for content of this size."""
    preset = PRESETS[p["preset"]]
    long_side = p["size"] or min(max(height, width), preset.default_size)
    sides = schedule(long_side, preset, p["scales"])
    return sides, [p["iterations"]] * len(sides) if p["iterations"] else preset.iterations(sides)


class GatysMethod:
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
            gatys_tiles.HALO, gatys_tiles.ALIGN, shared_norms=False,
        )  # fmt: skip

    def cost(self, p: dict[str, Any], size: tuple[int, int]) -> float:
        """The work, in pixel-evaluations, for the planner's time estimate (engine/planner.py)."""
        if p["strength"] == 0 or p["style_weight"] == 0:
            return 0.0
        sides, iterations = scales(p, *size)
        pixels = [math.prod(images.fit_long_side(*size, side)) for side in sides]
        return float(sum(_scale_cost(n, its) for n, its in zip(pixels, iterations, strict=True)))

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
        run = _Run(p, ctx, sides, iterations)
        image: torch.Tensor | None = None
        for index, side in enumerate(sides):
            size = images.fit_long_side(height, width, side)
            content_t = images.to_tensor(images.resize(content, size), ctx.device)
            style_ts = [
                images.to_tensor(
                    images.resize(s, images.fit_long_side(*s.shape[:2], round(side * p["style_scale"]))),
                    ctx.device,
                )
                for s in styles
            ]
            tile = gatys_tiles.tile_side_for(*size, ctx.plan.tile if ctx.plan else p["tile"])
            on_tile = run.tile_progress(index) if tile else None
            objective = _Objective(backbone, p, content_t, style_ts, weights, job.guides, tile, on_tile)
            if image is None:
                image = _initial_image(p["init"], content_t)
            else:
                image = images.resize_tensor(image, size).clamp_(0, 1)
            del content_t, style_ts  # tiled objectives keep only what they need of them
            image = run.optimise_scale(index, image, objective)
            del objective
            if ctx.device.type == "cpu":  # this scale's L-BFGS history and passes: the next one is larger
                allocator.release()

        result = images.to_numpy(image)
        result = images.resize(result, (height, width))
        if p["preserve_colors"] == "luminance":
            result = luminance_transfer(result, content)
        return result


def _initial_image(init: str, content: torch.Tensor) -> torch.Tensor:
    if init == "content":
        return content.clone()
    if init == "noise":
        return torch.rand(content.shape, device=content.device, dtype=content.dtype)
    picture, _ = images.split_alpha(images.load_image(init))
    return images.to_tensor(images.resize(picture, tuple(content.shape[-2:])), content.device)


class _Objective:
    """The weighted loss for one scale, with every target computed once up front."""

    def __init__(
        self,
        backbone: Backbone,
        p: dict[str, Any],
        content: torch.Tensor,
        styles: list[torch.Tensor],
        style_weights: np.ndarray,
        guides: list[Guide],
        tile: int | None = None,
        on_tile: gatys_tiles.TileDone | None = None,
    ) -> None:
        self.shift = p["activation_shift"]
        self.content_layers = _normalised(p["content_layers"], p["content_weight"])
        self.style_layers = _normalised(p["style_layers"], p["style_weight"] * p["strength"])
        self.tv_weight = p["tv_weight"]
        self.taps = tuple(dict.fromkeys([*self.content_layers, *self.style_layers]))
        self.tile = None if guides else tile  # regions and semantic maps run in one pass
        # Input and weights in one layout, or every conv re-lays out its weights on every call.
        one_pass = content if self.tile is None else content[..., : self.tile, : self.tile]
        self.layout = backbone.memory_format(one_pass)
        self.backbone = backbone.to(memory_format=self.layout)
        if self.tile is not None:
            self._tiled(content, styles, style_weights, on_tile)
            return
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

    def _tiled(
        self,
        content: torch.Tensor,
        styles: list[torch.Tensor],
        style_weights: np.ndarray,
        on_tile: gatys_tiles.TileDone | None,
    ) -> None:
        """Targets summed tile by tile (engine/methods/gatys/tiles.py): no full-size activations."""
        strides = {name: 2 ** (int(name[4]) - 1) for name in self.taps}  # reluB_L: pooled B-1 times
        tiler = gatys_tiles.Tiler(self._features, strides, self.tile, on_tile)
        targets: dict[str, torch.Tensor] = {}
        for style, weight in zip(styles, style_weights, strict=True):
            for name, g in tiler.grams(style, tuple(self.style_layers), self.shift).items():
                targets[name] = targets.get(name, 0) + g * float(weight)
        self.tiled = gatys_tiles.TiledObjective(
            tiler, content, self.content_layers, self.style_layers, targets, self.shift, self.tv_weight
        )

    def _features(self, image: torch.Tensor, taps: tuple[str, ...]) -> dict[str, torch.Tensor]:
        # Tiles keep to the convs their memory estimate was measured with (winograd.mode).
        square = self.tile is None
        return self.backbone(image.contiguous(memory_format=self.layout), taps, square=square)

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
        if self.tile is not None:
            return self.tiled(image)
        feats = self.features(image)
        content = sum(w * self.content_targets[n].loss(feats[n]) for n, w in self.content_layers.items())
        style = self._style_loss(feats)
        total = content + style
        if self.keep is not None:
            total = total + self.keep.weight * (self.keep.mask * (image - self.keep.content).pow(2)).mean()
        if self.tv_weight:
            total = total + self.tv_weight * total_variation(image)
        return total, style


class _NonFinite(Exception):
    """The loss became NaN or infinite: stop this optimiser and keep the best image seen."""


class _Best:
    """The lowest-loss image an optimiser has evaluated, so a bad last trial is never handed back."""

    def __init__(self, image: torch.Tensor) -> None:
        self.image = image
        self.loss = float("inf")

    def offer(self, loss: float, image: torch.Tensor) -> None:
        if np.isfinite(loss) and loss < self.loss:
            self.loss, self.image = loss, image.detach().clone()


@dataclass
class _Keep:
    mask: torch.Tensor  # 1x1xHxW: 1 where no guide styles the image
    content: torch.Tensor
    weight: torch.Tensor


def _normalised(layers: dict[str, float], scale: float) -> dict[str, float]:
    total = sum(layers.values()) or 1.0
    return {name: scale * w / total for name, w in layers.items() if w > 0}


class _Run:
    """Optimisation state across scales: progress accounting, previews, stall recovery."""

    def __init__(self, p: dict[str, Any], ctx: RunContext, sides: list[int], iterations: list[int]) -> None:
        self.p = p
        self.ctx = ctx
        self.sides = sides
        self.iterations = iterations
        costs = [_scale_cost(side * side, its) for side, its in zip(sides, iterations, strict=True)]
        self.total_cost = float(sum(costs))
        self.cost_before = [float(sum(costs[:i])) for i in range(len(costs))]
        self.last_preview = 0.0
        self.last_tile_report = 0.0
        self.step_at = dict.fromkeys(range(len(sides)), 0)  # scale -> the last step reported

    def optimise_scale(self, index: int, image: torch.Tensor, objective: _Objective) -> torch.Tensor:
        steps = self.iterations[index]
        if getattr(objective, "tile", None) is not None:  # tests hand in plain functions too
            result, (start_loss, start_style), loss = self._descent(
                index, image.detach(), objective.tiled, steps
            )
            self._check_progress(index, start_loss, start_style, loss)
            return result.clamp_(0, 1)
        start = image.detach().clone()
        if self.p["optimizer"] == "lbfgs":
            result, loss, done, (start_loss, start_style) = self._lbfgs(index, start, objective, steps)
            if done < steps or not _made_progress(start_loss, loss):
                self._report(index, done, steps, loss, "L-BFGS stalled; continuing with Adam")
                remaining = steps - done if done < steps else steps
                adam_result, adam_loss = self._adam(index, result, objective, remaining)
                if adam_loss < loss:
                    result, loss = adam_result, adam_loss
        else:
            with torch.no_grad():
                start_loss, start_style = (float(v) for v in objective(start))
            result, loss = self._adam(index, start, objective, steps)
        self._check_progress(index, start_loss, start_style, loss)
        return result.detach().clamp(0, 1)

    def _check_progress(self, index: int, start_loss: float, start_style: float, loss: float) -> None:
        if not _made_progress(start_loss, loss):
            raise UserError(
                "no-progress",
                f"the optimisation did not lower the loss at {self.sides[index]} px (loss {start_loss:.4g}, "
                f"style part {start_style:.4g}); try a higher strength or another style image",
            )

    def _lbfgs(
        self, index: int, start: torch.Tensor, objective: _Objective, steps: int
    ) -> tuple[torch.Tensor, float, int, tuple[float, float]]:
        """Run L-BFGS; return (best image, its loss, iterations done, (start loss, its style part)).

        One `step()` call runs all the iterations, so every evaluation is either an iteration's
        start or a line-search trial, never a repeat of the point the last search accepted (one
        `step()` per iteration evaluates each accepted point twice). `max_eval` must be given:
        torch derives the line search's budget from it, and its default for few iterations leaves
        the search no trial at all, so an overshooting first trial is rejected and the image never
        moves. An iteration that does not move the image ends `step()` early: that is the classic
        stall, where the quasi-Newton direction stopped being a descent direction. The history is
        dropped once (a steepest-descent restart); a second stall hands back early so the caller can
        continue with Adam. NaN also hands back early, with the best image seen.

        Every evaluation first projects the image into 0..1. Unconstrained, the optimum of shallow
        style layers lies far outside the displayable range (pixels at -0.5 and 1.5), and the clamped
        result then scores no better than after a fifth of the iterations. The gradient handed to
        L-BFGS is the projected one (`_drop_outward`). Every point a line search accepts was one
        of its trials, so the best image is always among those evaluated: no evaluation of the start
        (the first one is) or of the end is needed besides.
        """
        x = start.clone().requires_grad_(True)
        best = _Best(start)
        first = [float("nan")] * 2  # the start's loss and style part, from the first evaluation
        done = 0
        history = max(3, min(HISTORY, HISTORY_BYTES // (2 * x.numel() * x.element_size())))
        for _attempt in range(2):
            optimiser = torch.optim.LBFGS(
                [x], lr=1.0, max_iter=steps - done, max_eval=2 * (steps - done) + LINE_SEARCH_TRIALS,
                history_size=history, line_search_fn="strong_wolfe", tolerance_grad=0.0, tolerance_change=0.0,
            )  # fmt: skip

            def closure(optimiser: torch.optim.LBFGS = optimiser, before: int = done) -> torch.Tensor:
                self.ctx.cancel.raise_if_cancelled()
                with torch.no_grad():
                    x.clamp_(0, 1)  # projected: the loss is that of an image the user can get
                optimiser.zero_grad(set_to_none=True)
                total, style = objective(x)
                loss = float(total.detach())
                if np.isnan(first[0]):
                    first[:] = loss, float(torch.as_tensor(style).detach())
                if not np.isfinite(loss):
                    raise _NonFinite
                best.offer(loss, x)
                total.backward()
                _drop_outward(x)
                step = min(before + optimiser.state[x].get("n_iter", 0) + 1, steps)
                self._report(index, step, steps, best.loss, None, best.image)
                return total.detach()

            try:
                optimiser.step(closure)
            except _NonFinite:
                return best.image, best.loss, done + optimiser.state[x].get("n_iter", 0), (first[0], first[1])
            done += optimiser.state[x]["n_iter"]
            if done >= steps:
                break
        return best.image, best.loss, done, (first[0], first[1])

    def _descent(
        self, index: int, x: torch.Tensor, objective: gatys_tiles.TiledObjective, steps: int
    ) -> tuple[torch.Tensor, tuple[float, float], float]:
        """Projected gradient descent with an adaptive step, for images optimised in tiles; returns
        (image, (start loss, its style part), final loss).

        L-BFGS's history and Adam's moments would be the largest things in memory there, and the
        few iterations a fine scale gets are too few for Adam, whose first steps move every pixel by
        the learning rate whatever its gradient and raise the loss. Here a step is kept only if it
        lowers the loss (its size then doubles; a rejected one quarters it), so every kept iteration
        refines the upsampled result. A trial costs one forward pass over the tiles; only a kept
        one pays for its gradient. Two image-sized tensors are in memory, the image and its gradient:
        a trial is made tile by tile where the pass reads it, and a kept one is taken in place (the
        caller's start image is that image).
        """
        self.ctx.cancel.raise_if_cancelled()
        now = objective.loss(x)
        loss, start = float(now.total), (float(now.total), float(now.style))
        if not np.isfinite(loss):
            return x, start, loss
        grad = objective.gradient(x, now)
        size = self.p["learning_rate"] / max(float(grad.abs().max()), 1e-12)
        done = rejected = 0
        while done < steps and rejected < DESCENT_REJECTIONS:
            self.ctx.cancel.raise_if_cancelled()
            step = gatys_tiles.Step(grad, size)
            now = objective.loss(x, step)
            if np.isfinite(float(now.total)) and float(now.total) < loss:
                step.take(x)
                loss, size = float(now.total), size * 2
                done, rejected = done + 1, 0
                self._report(index, done, steps, loss, None, x)
                del step, grad  # before the next gradient is made: the pass needs their room
                if done < steps:
                    self.ctx.cancel.raise_if_cancelled()
                    grad = objective.gradient(x, now)
            else:
                size, rejected = size / 4, rejected + 1
        return x, start, loss

    def _adam(
        self, index: int, start: torch.Tensor, objective: _Objective, steps: int
    ) -> tuple[torch.Tensor, float]:
        x = start.clone().requires_grad_(True)
        optimiser = torch.optim.Adam([x], lr=self.p["learning_rate"], betas=(0.9, 0.99))
        loss = float("inf")
        for step in range(steps):
            self.ctx.cancel.raise_if_cancelled()
            optimiser.zero_grad(set_to_none=True)
            total, _ = objective(x)
            total.backward()
            optimiser.step()
            with torch.no_grad():
                x.clamp_(0, 1)
            loss = float(total.detach())
            self._report(index, step + 1, steps, loss, None, x)
        with torch.no_grad():
            loss = float(objective(x)[0])
        return x.detach(), loss

    def tile_progress(self, index: int) -> gatys_tiles.TileDone:
        """Per tile of a scale optimised in tiles: cancel within a tile, memory kept to the plan,
        and a message every second.

        On the CPU the heap's free pages go back after every tile, not only above the plan:
        image-sized tensors made between passes (the gradient) leave holes that a tile's
        activations only partly reuse, and a Gatys tile takes seconds, so faulting its pages in
        again costs little next to a process that grows past its bound.
        """

        def done(count: int, total: int) -> None:
            self.ctx.cancel.raise_if_cancelled()
            self.ctx.tile_done(every_tile=True)
            now = time.monotonic()
            if now - self.last_tile_report < TILE_REPORT_EVERY_S and count < total:
                return
            self.last_tile_report = now
            step, steps = self.step_at[index], self.iterations[index]
            message = f"{self._scale_name(index)}, step {step}/{steps}: tile {count}/{total}"
            fraction = self._fraction(index, step, steps)
            self.ctx.progress(Progress(fraction, "optimise", message, None, index + 1, step, steps))

        return done

    def _report(
        self,
        index: int,
        step: int,
        steps: int,
        loss: float,
        note: str | None,
        image: torch.Tensor | None = None,
    ) -> None:
        self.step_at[index] = step
        message = note or f"{self._scale_name(index)}, step {step}/{steps}, loss {loss:.4g}"
        preview = None
        now = time.monotonic()
        if image is not None and now - self.last_preview >= PREVIEW_EVERY_S:
            self.last_preview = now
            preview = _preview(image)
        fraction = self._fraction(index, step, steps)
        self.ctx.progress(Progress(fraction, "optimise", message, preview, index + 1, step, steps, loss))

    def _scale_name(self, index: int) -> str:
        return f"scale {index + 1}/{len(self.sides)} ({self.sides[index]} px)"

    def _fraction(self, index: int, step: int, steps: int) -> float:
        """Share of the job done: scales weigh by pixels times evaluations (`cost`)."""
        scale = _scale_cost(self.sides[index] ** 2, self.iterations[index])
        done = self.cost_before[index] + scale * step / steps
        return min(done / self.total_cost, 1.0)


def _scale_cost(pixels: int, iterations: int) -> float:
    """A scale's work in pixel-evaluations (a square's pixels stand in for the scale's in progress)."""
    return float((pixels + EVALUATION_PIXELS) * (iterations + EXTRA_EVALUATIONS))


def _drop_outward(x: torch.Tensor) -> None:
    """Zero the gradient of pixels at 0 or 1 that it would push further out.

    The next evaluation clamps them back, so such a component promises a decrease that no step can
    deliver; left in, it skews L-BFGS's line search and its curvature pairs (bench/gatys.py: 86
    instead of 89 iterations at 256 px to the reference's loss).
    """
    with torch.no_grad():
        grad = x.grad
        grad.masked_fill_(((x <= 0) & (grad > 0)) | ((x >= 1) & (grad < 0)), 0.0)


def _made_progress(start: float, end: float) -> bool:
    return bool(np.isfinite(end)) and end < start * 0.999


def _preview(image: torch.Tensor) -> np.ndarray:
    with torch.no_grad():
        size = images.fit_long_side(*image.shape[-2:], min(PREVIEW_SIDE, max(image.shape[-2:])))
        # resized first: a clamped copy of a 4096 px image would be 192 MiB for a 256 px preview
        return images.to_numpy(images.resize_tensor(image.detach(), size).clamp(0, 1))


METHOD = GatysMethod()
