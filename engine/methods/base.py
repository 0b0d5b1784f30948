"""The one small interface every style-transfer method implements.

A method receives plain numpy images (already decoded, RGB, float32 in 0..1) and a context that
gives it a device, a progress callback, a cancel token and the model cache. It returns an RGB image;
alpha, grey, dtype and selection blending are the pipeline's job, not the method's.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import torch

from engine.compute import allocator, devices
from engine.compute.cache import ModelCache
from engine.errors import CancelToken

if TYPE_CHECKING:
    from engine.planner import Plan


@dataclass
class Progress:
    fraction: float  # 0..1 over the whole job
    stage: str  # short machine-friendly stage name, e.g. "optimise"
    message: str  # one line for a person
    preview: np.ndarray | None = None  # small HxWx3 float32 RGB, optional
    scale: int = 0  # 1-based scale of a coarse-to-fine run (0 when not applicable)
    step: int = 0
    total: int = 0  # steps at this scale
    loss: float | None = None
    eta_s: float | None = None  # seconds left, when known (engine/estimate.py fills it in)


ProgressFn = Callable[[Progress], None]


@dataclass
class Style:
    image: np.ndarray  # HxWx3 float32 RGB 0..1
    weight: float = 1.0


@dataclass
class StyleSource:
    """One style's share of a guide: which style, how much, and (semantic maps) where in it."""

    index: int  # into PreparedJob.styles
    weight: float  # relative; each guide's weights are normalised by the method
    mask: np.ndarray | None = None  # HxW float32 0..1 over that style image; None: all of it


@dataclass
class Guide:
    """A soft region of the content and the style statistics it takes (regions, semantic labels)."""

    mask: np.ndarray  # HxW float32 0..1 over the content
    sources: list[StyleSource]


@dataclass
class PreparedJob:
    content: np.ndarray  # HxWx3 float32 RGB 0..1, alpha already split off
    styles: list[Style]
    params: dict[str, Any]  # validated by the method's `parse_params`
    masks: dict[str, np.ndarray] = field(default_factory=dict)  # name -> HxW float32 0..1
    # Empty: every style over the whole content. Otherwise only the guides' regions are styled and
    # the rest (1 - the sum of their masks) keeps the content.
    guides: list[Guide] = field(default_factory=list)


@dataclass
class RunContext:
    device: torch.device
    progress: ProgressFn
    cancel: CancelToken
    cache: ModelCache
    plan: Plan | None = None  # how to fit the job in memory (engine/planner.py); None: one pass
    release_above: int | None = field(init=False, default=None)

    def __post_init__(self) -> None:
        plan = self.plan
        if self.device.type == "cpu" and plan is not None and plan.tile and plan.need:
            self.release_above = devices.used_memory(self.device) + plan.need

    def tile_done(self, every_tile: bool = False) -> None:
        """After each tile: keep host memory to the plan.

        glibc keeps freed heap memory for the next pass (engine/compute/allocator.py), and the holes that
        image-sized arrays leave between tiles are only partly reused: a 2048 px Gatys job held 1.8
        GiB of heap for 0.9 GiB in use, Johnson at 8192 px went 0.2 GiB past its plan. Once the
        process is above what the plan counted on, the free pages go back after each tile (the next
        tile's pages then fault in again, up to 15% of a feed-forward tile's time, so not before
        that). `every_tile`: on the CPU, after every tile, for tiles that take seconds (Gatys).
        """
        above = self.release_above is not None and devices.used_memory(self.device) > self.release_above
        if above or (every_tile and self.device.type == "cpu"):
            allocator.release()


@dataclass(frozen=True)
class Footprint:
    """What one pass of a method costs in memory, for the planner to fit jobs to the device."""

    work: tuple[int, int]  # (height, width) the method runs at, for this content and these settings
    bytes_per_pixel: float  # peak working memory of one pass on the device, per pixel of its input
    fixed_bytes: int  # weights and whatever else does not grow with the image
    halo: int = 0  # context a tile needs on each side, in px; 0: the method does not tile
    align: int = 1  # tile offsets and sides must be multiples of this (the net's total stride)
    shared_norms: bool = True  # tiles replay norm statistics measured first (False: Gatys's global Grams)


class Method(Protocol):
    """One method; its label, settings and whether it takes style images are declared in
    nst_common/settings.py, and its module (or package) is engine/methods/<name> with a METHOD."""

    name: str
    models: tuple[str, ...]  # the trained models to choose from (Johnson, AdaIN, CycleGAN); empty otherwise

    def weight_ids(self, model: str | None) -> tuple[str, ...]:
        """The weights (manifest ids) it needs to run, with `model` where it has models."""

    def parse_params(self, raw: dict[str, Any]) -> dict[str, Any]:
        """Validate and complete the settings (engine.params.parse, then checks of its own)."""

    def run(self, job: PreparedJob, ctx: RunContext) -> np.ndarray:
        """Return the stylised HxWx3 float32 RGB image, same height and width as the content."""

    # Optional: `def footprint(self, params: dict[str, Any], size: tuple[int, int]) -> Footprint`,
    # the memory one pass at content size `size` (h, w) takes. Without it the planner cannot
    # estimate, and the job runs as one pass; with a halo, the planner may split it into tiles.
