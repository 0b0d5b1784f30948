"""Gatys' quality presets and the coarse-to-fine schedule they set: the sizes a run goes through,
the iterations at each, and what that work costs (for progress and the planner's time estimate).

Kept apart from the optimisation so that the method's cost and the optimiser's progress read the
same schedule.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

MIN_SCALE = 16
# What a scale costs, for progress and the time estimate (GatysMethod.cost): evaluations beyond one per
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


def scale_cost(pixels: int, iterations: int) -> float:
    """A scale's work in pixel-evaluations (a square's pixels stand in for the scale's in progress)."""
    return float((pixels + EVALUATION_PIXELS) * (iterations + EXTRA_EVALUATIONS))
