"""Gatys' optimisation of one scale's image, and its progress across scales.

L-BFGS with a strong-Wolfe line search on a loss over the whole image; Adam when L-BFGS stalls or
meets NaN; projected gradient descent with an adaptive step on a loss evaluated in tiles, where
neither optimiser's state fits. Every evaluated image stays displayable (0..1), the best one seen is
handed back, and a scale that does not lower the loss is reported to the user.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from engine.errors import UserError
from engine.imaging import images
from engine.methods.base import Progress, RunContext
from engine.methods.gatys.presets import scale_cost
from engine.methods.gatys.tiles import Step, TiledObjective, TileDone

PREVIEW_SIDE = 256
PREVIEW_EVERY_S = 2.0
TILE_REPORT_EVERY_S = 1.0
# L-BFGS keeps up to HISTORY pairs of image-sized vectors, within HISTORY_BYTES: a long history
# converges in fewer iterations (100 pairs: 99 instead of 122 at 256 px in bench/gatys.py).
HISTORY = 100
HISTORY_BYTES = 512 << 20
LINE_SEARCH_TRIALS = 25  # evaluations one strong-Wolfe search may spend beyond the budget
DESCENT_REJECTIONS = 6  # rejected steps in a row (a 4096-fold smaller step) before descent gives up

# A loss over the whole image: (total, its style part), differentiable with respect to the image.
Loss = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


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


class Optimiser:
    """Optimisation state across scales: progress accounting, previews, stall recovery."""

    def __init__(self, p: dict[str, Any], ctx: RunContext, sides: list[int], iterations: list[int]) -> None:
        self.p = p
        self.ctx = ctx
        self.sides = sides
        self.iterations = iterations
        costs = [scale_cost(side * side, its) for side, its in zip(sides, iterations, strict=True)]
        self.total_cost = float(sum(costs))
        self.cost_before = [float(sum(costs[:i])) for i in range(len(costs))]
        self.last_preview = 0.0
        self.last_tile_report = 0.0
        self.step_at = dict.fromkeys(range(len(sides)), 0)  # scale -> the last step reported

    def optimise_scale(
        self, index: int, image: torch.Tensor, objective: Loss | TiledObjective
    ) -> torch.Tensor:
        """Scale `index`'s iterations from `image`: projected descent on a loss evaluated in tiles,
        else L-BFGS (Adam where it stalls) or Adam, as the settings say; the result is in 0..1."""
        steps = self.iterations[index]
        if isinstance(objective, TiledObjective):
            result, (start_loss, start_style), loss = self._descent(index, image.detach(), objective, steps)
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
        self, index: int, start: torch.Tensor, objective: Loss, steps: int
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
        self, index: int, x: torch.Tensor, objective: TiledObjective, steps: int
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
            step = Step(grad, size)
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
        self, index: int, start: torch.Tensor, objective: Loss, steps: int
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

    def tile_progress(self, index: int) -> TileDone:
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
        scale = scale_cost(self.sides[index] ** 2, self.iterations[index])
        done = self.cost_before[index] + scale * step / steps
        return min(done / self.total_cost, 1.0)


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
