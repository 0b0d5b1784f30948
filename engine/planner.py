"""Fitting a job to the memory of its device: one pass, or tiles of a size that fit.

Before a job runs, the method's footprint (engine/methods/base.py `Footprint`) and the image size
give an estimate of the peak memory; the planner compares it with what the device has free (or the
`memory` setting allows) and picks the largest tile that fits. When memory runs out anyway, the
pipeline asks `shrink` for the next smaller tile, and in the end for the CPU. `estimate_seconds`
says how long a plan should take, before it runs (engine/estimate.py refines that as it runs).
"""

from __future__ import annotations

import contextlib
import math
import threading
from dataclasses import dataclass, replace
from typing import Any

import torch

from engine.compute import devices, tune
from engine.errors import UserError
from engine.methods.base import Footprint, Method
from engine.nets import tiling

TILE_SIDES = (4096, 3072, 2048, 1536, 1024, 768, 512, 384, 256)  # tried largest first
STATS_PIXELS = 4 << 20  # most pixels the pass that measures norm statistics for tiles looks at
STATS_CROP = 256  # side of the full-resolution crops it looks at when the whole image is too large
FEATHER = 32  # px over which neighbouring tiles blend
HEADROOM = 0.8  # share of the free memory a plan may count on: allocator slack, other processes
OUTPUT_BYTES_PER_PIXEL = 12  # the float32 RGB result, held in host memory for the whole job
GIB = 1024**3
# Seconds per unit of work on two CPU threads (a unit: one pixel-evaluation of a method's `cost`, else
# one pixel of its pass). Gatys's is measured: `balanced` at 1024 px on a busy 2-core EPYC, 18M units
# in 138 s (59 s on a quiet one), some 210 GFLOP/s for 1.6 MFLOP per pixel-evaluation. The
# feed-forward methods' are their nets' work per pixel at that rate (about 0.25, 1 and 1.5 MFLOP for
# Johnson, AdaIN and CycleGAN), so rough. Other thread counts scale by CPU_SCALING; GPUs are rough guesses
# (GPU_SPEEDUP over those two threads). A finished job replaces the guess for its device type and
# method with what it measured (`learn`), kept with the machine's compute paths (engine/compute/tune.py),
# so only the first job of a kind on a machine relies on these.
CPU_SECONDS = {"gatys": 7.5e-6, "johnson": 1.2e-6, "adain": 5e-6, "cyclegan": 7e-6}
CPU_THREADS, CPU_SCALING = 2, 0.8  # seconds scale by (CPU_THREADS / threads) ** CPU_SCALING
GPU_SPEEDUP = {"cuda": 40.0, "mps": 8.0}
START_SECONDS = 1.0  # a job's fixed start: loading weights (cached after the first job), targets
_learned_lock = threading.Lock()  # one read-modify-write of the learned rates at a time


@dataclass(frozen=True)
class Plan:
    """How a job runs: on which device, at what size, in one pass or in tiles."""

    method: str
    device: torch.device
    work: tuple[int, int]  # (height, width) of the pass(es)
    tile: int | None  # tile side in px, halo included; None: one pass over the whole image
    footprint: Footprint | None  # None: the method gives no estimate
    budget: int  # bytes the job may use on the device
    need: int | None  # estimated peak bytes

    @property
    def stats_pixels(self) -> int:
        """Pixels of the statistics pass: as many as the budget allows (at least a tile's), up to
        STATS_PIXELS; when that covers the work size, the statistics are exactly the image's."""
        fp = self.footprint
        if fp is None or self.tile is None:
            return self.work[0] * self.work[1]
        room = self.budget - _fixed_need(self.device, fp)
        return min(STATS_PIXELS, max(self.tile**2, int(room / fp.bytes_per_pixel)))

    def stats_crops(self) -> list[tuple[slice, slice]]:
        """Where the statistics pass looks (engine/nets/tiling.py `sample_crops`)."""
        align = self.footprint.align if self.footprint is not None else 1
        return tiling.sample_crops(*self.work, self.stats_pixels, STATS_CROP, align)

    def tiles(self) -> list[tiling.Tile]:
        fp = self.footprint
        if self.tile is None or fp is None:
            return []
        return tiling.grid(*self.work, self.tile, fp.halo, FEATHER, fp.align)

    def describe(self) -> str:
        height, width = self.work
        where = f"{self.method} on {self.device.type}: {width}x{height} px"
        if self.tile is None:
            how = "in one pass"
        elif not self.footprint.shared_norms:
            how = f"in tiles of {self.tile} px (halo {self.footprint.halo} px), global statistics"
        else:
            crops = self.stats_crops()
            sample = (
                "the whole image"
                if len(crops) == 1 and crops[0][0].stop == height and crops[0][1].stop == width
                else f"{len(crops)} crops of {STATS_CROP} px"
            )
            how = (
                f"in {len(self.tiles())} tiles of {self.tile} px (halo {self.footprint.halo} px), "
                f"norm statistics from {sample}"
            )
        if self.need is None:
            return f"{self.method} on {self.device.type}: one pass (no memory estimate for this method)"
        need, budget = self.need / GIB, self.budget / GIB
        return f"{where} {how}; estimated peak {need:.2f} GiB of {budget:.2f} GiB available"


def plan(
    method: Method,
    params: dict[str, Any],
    size: tuple[int, int],
    device: torch.device,
    memory_limit: int | None = None,
) -> Plan:
    """The plan for running `method` with parsed `params` on content of `size` (h, w).

    `params["tile"]`, when a method takes it, forces a tile side; `memory_limit` (bytes, for the
    whole process) caps what the device's free memory would allow.
    """
    budget = _budget(device, memory_limit)
    hook = getattr(method, "footprint", None)
    fp: Footprint | None = hook(params, size) if hook is not None else None
    if fp is None:
        return Plan(method.name, device, size, None, None, budget, None)
    forced = params.get("tile")
    if forced is not None:
        return _with_tile(method.name, device, fp, budget, _checked_tile(forced, fp))
    fitted = _fit(method.name, device, fp, budget)
    if fitted is not None:
        return fitted
    if device.type != "cpu":
        return plan(method, params, size, torch.device("cpu"), memory_limit)
    smallest = _with_tile(method.name, device, fp, budget, _tile_sides(fp)[-1])
    raise UserError(
        "out-of-memory",
        f"{method.name} at {fp.work[1]}x{fp.work[0]} px needs about {smallest.need / GIB:.2f} GiB even in "
        f"tiles of {smallest.tile} px, and {budget / GIB:.2f} GiB is available: free memory or use a "
        "smaller --size",
    )


def estimate_seconds(
    method: Method, params: dict[str, Any], size: tuple[int, int], plan: Plan
) -> float | None:
    """How long running `method` under `plan` should take, before it starts; None when there is
    no rate for this method and device. `size` is the content's (h, w)."""
    units = _units(method, params, size, plan)
    rate = _rate(method.name, plan.device)
    return None if rate is None else START_SECONDS + units * rate


def learn(method: Method, params: dict[str, Any], size: tuple[int, int], plan: Plan, seconds: float) -> None:
    """Remember the rate a finished run measured, for the next estimate on this device type, in
    this engine and the next. A data folder that cannot be written loses only the estimate."""
    units = _units(method, params, size, plan)
    if units <= 0 or seconds <= 2 * START_SECONDS:  # too short to tell the rate from the start
        return
    key = _rate_key(method.name, plan.device)
    rate = (seconds - START_SECONDS) / units
    with _learned_lock:
        learned = tune.rates()
        before = learned.get(key)
        learned[key] = rate if before is None else (before + rate) / 2
        with contextlib.suppress(OSError):
            tune.save_rates(learned)


def _units(method: Method, params: dict[str, Any], size: tuple[int, int], plan: Plan) -> float:
    hook = getattr(method, "cost", None)
    return float(hook(params, size)) if hook is not None else float(plan.work[0] * plan.work[1])


def _rate_key(name: str, device: torch.device) -> str:
    return f"{device.type}/{name}"


def _rate(name: str, device: torch.device) -> float | None:
    learned = tune.rates().get(_rate_key(name, device))
    if learned is not None:
        return learned
    base = CPU_SECONDS.get(name)
    if base is None:
        return None
    if device.type == "cpu":
        return base * (CPU_THREADS / max(1, torch.get_num_threads())) ** CPU_SCALING
    speedup = GPU_SPEEDUP.get(device.type)
    return None if speedup is None else base / speedup


def shrink(current: Plan, memory_limit: int | None = None) -> Plan | None:
    """The plan to retry with after running out of memory, else None.

    The estimate was too low, so the retry counts on half the memory the failed passes were to
    take (smaller tiles, and a smaller statistics sample); below the smallest tile, the CPU.
    """
    fp = current.footprint
    if fp is not None and fp.halo and current.need is not None:
        passes = current.need - _fixed_need(current.device, fp)
        halved = _fit(current.method, current.device, fp, current.need - passes // 2)
        if halved is not None and halved.tile is not None:
            return halved
    if current.device.type == "cpu":
        return None
    cpu = torch.device("cpu")
    budget = _budget(cpu, memory_limit)
    if fp is None:
        return replace(current, device=cpu, budget=budget)
    return _fit(current.method, cpu, fp, budget) or _with_tile(current.method, cpu, fp, budget, current.tile)


def _fit(name: str, device: torch.device, fp: Footprint, budget: int) -> Plan | None:
    """One pass if it fits (or the method cannot tile), else the largest tile that fits, else None."""
    whole = _with_tile(name, device, fp, budget, None)
    if whole.need <= budget or not fp.halo:
        return whole
    for side in _tile_sides(fp):
        candidate = _with_tile(name, device, fp, budget, side)
        if candidate.need <= budget:
            return candidate
    return None


def _with_tile(name: str, device: torch.device, fp: Footprint, budget: int, tile: int | None) -> Plan:
    height, width = fp.work
    if tile is not None and tile >= max(height, width):
        tile = None  # one tile covers the image: that is one pass
    pixels = height * width if tile is None else tile * tile
    need = _fixed_need(device, fp) + math.ceil(fp.bytes_per_pixel * pixels)
    return Plan(name, device, fp.work, tile, fp, budget, need)


def _fixed_need(device: torch.device, fp: Footprint) -> int:
    """What a job holds on the device besides its passes: the weights, and on the CPU the result."""
    output = OUTPUT_BYTES_PER_PIXEL * fp.work[0] * fp.work[1] if device.type == "cpu" else 0
    return fp.fixed_bytes + output


def _tile_sides(fp: Footprint) -> list[int]:
    smallest = tiling.min_tile(fp.halo, FEATHER, fp.align)
    return [side for side in TILE_SIDES if side >= smallest and side % fp.align == 0]


def _checked_tile(tile: int, fp: Footprint) -> int:
    if not fp.halo:
        raise UserError("bad-option", "setting 'tile': this method does not run in tiles")
    smallest = tiling.min_tile(fp.halo, FEATHER, fp.align)
    if tile < smallest:
        raise UserError(
            "bad-option", f"setting 'tile' must be at least {smallest} px for this method, got {tile}"
        )
    return tile - tile % fp.align


def _budget(device: torch.device, memory_limit: int | None) -> int:
    """Bytes the job may still allocate: a share of the free memory, capped by `memory_limit`
    minus what this process already holds."""
    budget = int(devices.free_memory(device) * HEADROOM)
    if memory_limit is not None:
        budget = min(budget, memory_limit - devices.used_memory(device))
    return max(0, budget)
