"""How long a job has left: a first estimate from the plan, refined from the measured rate.

The pipeline wraps the progress callback of every job in a `Tracker`. A `Progress` that arrives
with `eta_s` set is an estimate made from the work itself (the plan's, engine/planner.py
`estimate_seconds`: method, pixels, iterations and scales, device) and restarts the tracking; every
other one gets `eta_s` filled in. Early on that is the first estimate scaled to the work left;
as the job goes on, the rate measured since the work started moving takes over, fully once
CONFIDENT_AFTER of the work is done. It counts once it has been measured for MIN_MEASURED_S, or
sooner where CONFIDENT_AFTER of the work went by in MIN_STEPS reports or more (a short job on a
fast machine); a single jump of a milestone is no rate. The rate's clock starts at the first report
of progress, not at the estimate: loading a model or computing targets takes seconds in which no
fraction moves, and counting them would make the first steps look slow. The value shown counts down
in real time and moves towards each new figure over SMOOTHING_S, so it neither jumps with each step
nor stands still; a figure that corrects it by more than LARGE_CORRECTION times (a first estimate
far off on this machine) replaces it at once, since a short job would end before the glide did.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable

from engine.methods.base import Progress, ProgressFn

CONFIDENT_AFTER = 0.15  # share of the work after which the measured rate alone counts
MIN_MEASURED_S = 1.0  # the measured rate counts after this long, or CONFIDENT_AFTER of the work
MIN_STEPS = 3  # ... done in this many reports at least: one milestone (a model loaded) is no rate
SMOOTHING_S = 1.5  # time constant over which the shown figure follows a new one
LARGE_CORRECTION = 1.5  # a new figure this many times above or below the shown one replaces it


class Tracker:
    """A progress callback that fills in `Progress.eta_s` and passes every report on."""

    def __init__(self, progress: ProgressFn, clock: Callable[[], float] = time.monotonic) -> None:
        self._progress = progress
        self._clock = clock
        self._last_fraction = 0.0
        self._restart(clock(), 0.0, None)

    def __call__(self, p: Progress) -> None:
        now = self._clock()
        if p.eta_s is not None:
            self._restart(now, p.fraction, max(0.0, float(p.eta_s)))
        else:
            if p.fraction < self._last_fraction:  # the work started over (a retry with a smaller plan)
                self._restart(now, p.fraction, None)
            eta = self._estimate(now, p.fraction)
            if eta is not None:
                p = dataclasses.replace(p, eta_s=eta)
        self._last_fraction = p.fraction
        self._progress(p)

    def _restart(self, now: float, fraction: float, prior: float | None) -> None:
        self._prior = prior  # seconds left at the restart, as estimated from the work
        self._start_fraction = self._advanced = min(fraction, 0.999)
        self._moving: tuple[float, float] | None = None  # (time, fraction) of the first progress
        self._steps = 0  # reports that advanced the fraction since then
        self._target, self._target_at = prior, now  # the latest figure and when it was made
        self._shown, self._shown_at = prior, now

    def _estimate(self, now: float, fraction: float) -> float | None:
        if fraction >= 1.0:
            return 0.0
        if fraction > self._advanced:
            self._advanced = fraction
            self._steps += self._moving is not None
            self._moving = self._moving or (now, fraction)
            self._target, self._target_at = self._figure(now, fraction), now
        elif self._target is not None and self._target > now - self._target_at:
            pass  # no progress since the last figure: it counts down (a step may take a while)
        else:  # it ran out with no progress since: the rate up to now, slower with every second
            self._target, self._target_at = self._figure(now, fraction), now
        if self._target is None:
            return None
        target = self._target - (now - self._target_at)
        dt = max(0.0, now - self._shown_at)
        counted_down = target if self._shown is None else max(0.0, self._shown - dt)
        if max(target, counted_down) > LARGE_CORRECTION * max(min(target, counted_down), 1e-9):
            shown = target
        else:
            shown = counted_down + (1.0 - math.exp(-dt / SMOOTHING_S)) * (target - counted_down)
        self._shown, self._shown_at = shown, now
        return max(0.0, shown)

    def _figure(self, now: float, fraction: float) -> float | None:
        """Seconds left at `fraction`: the first estimate scaled to the work left, and the measured
        rate, which counts fully once CONFIDENT_AFTER of the work has been done at it."""
        span = 1.0 - self._start_fraction
        left = max(0.0, 1.0 - fraction)
        from_prior = None if self._prior is None else self._prior * left / span
        if self._moving is None:
            return from_prior
        since, base = self._moving
        weight = min(1.0, (fraction - base) / (CONFIDENT_AFTER * span))
        early = weight < 1.0 or self._steps < MIN_STEPS
        if fraction <= base or (now - since < MIN_MEASURED_S and early):
            return from_prior
        measured = (now - since) * left / (fraction - base)
        if from_prior is None:
            return measured
        return weight * measured + (1.0 - weight) * from_prior
