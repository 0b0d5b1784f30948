"""What the feed-forward methods share around a forward pass: settings, precision, padding,
numpy <-> tensor without copies, the work size, tiles, and the whole method for single-model nets."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from engine import params, weights
from engine.compute import tune
from engine.errors import UserError
from engine.imaging import images
from engine.imaging.colors import luminance_transfer
from engine.methods.base import Footprint, PreparedJob, Progress, RunContext
from engine.nets import ops, tiling
from nst_common import settings

MIN_SIDE = settings.MIN_SIDE  # the deepest reflection pads need at least 2 pixels at 1/8 scale


@dataclass(frozen=True)
class NetCost:
    """What a feed-forward net costs and needs, for the planner."""

    multiple: int  # the net's total down-sampling: sides (and tile offsets) must divide by it
    halo: int  # receptive-field radius in px, rounded up to `multiple`: a tile's thrown-away context
    bytes_per_pixel: float  # peak float32 working memory of one pass, per input pixel: measured on
    # the CPU (peak RSS over a 512 and a 1024 px pass), with about 10% to spare
    fixed_bytes: int  # the weights

    def footprint(self, work: tuple[int, int]) -> Footprint:
        return Footprint(work, self.bytes_per_pixel, self.fixed_bytes, self.halo, self.multiple)


# The sides at which the nets' compute paths are timed, once per machine (engine/compute/tune.py).
TUNE_SIDES = (256, 512)


@contextlib.contextmanager
def precision_scope(device: torch.device, path: tune.ComputePath) -> Iterator[None]:
    """Inference mode, plus autocast where `path` runs in reduced precision, and NNPACK's Winograd
    kernel in the nets that take it where `path` asks for it."""
    with torch.inference_mode(), path.autocast(device), ops.winograd(path.winograd):
        yield


def compute_path(
    workload: str, net: Callable[[torch.Tensor], Any], ctx: RunContext, p: Mapping[str, Any], pixels: int
) -> tune.ComputePath:
    """The `precision` setting's path, else the one measured fastest here for `net` (a method's
    whole forward pass on a 1x3xSxS image; timed once per machine and method)."""

    def workload_run(path: tune.ComputePath, side: int) -> None:
        with precision_scope(ctx.device, path):
            net(torch.rand(1, 3, side, side, device=ctx.device))

    def measuring() -> None:
        ctx.progress(Progress(0.1, "tune", tune.MEASURING))

    return tune.choose(workload, ctx.device, pixels, workload_run, TUNE_SIDES, p["precision"], measuring)


def to_tensor(image: np.ndarray, device: torch.device) -> torch.Tensor:
    """HxWx3 float32 to 1x3xHxW; an HWC array already is channels_last memory, so no copy on CPU."""
    return torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32)).permute(2, 0, 1)[None].to(device)


def to_image(tensor: torch.Tensor) -> np.ndarray:
    """1x3xHxW in 0..1 (any dtype, any device) to HxWx3 float32 numpy."""
    return np.ascontiguousarray(tensor[0].permute(1, 2, 0).float().cpu().numpy())


def pad_to_multiple(x: torch.Tensor, multiple: int) -> torch.Tensor:
    """Pad bottom and right (reflecting, or repeating where the image is too thin to reflect) so
    both sides are multiples of `multiple` and at least MIN_SIDE; crop the result back after."""
    height, width = x.shape[-2:]
    pad_h = max(math.ceil(height / multiple) * multiple, MIN_SIDE) - height
    pad_w = max(math.ceil(width / multiple) * multiple, MIN_SIDE) - width
    if not pad_h and not pad_w:
        return x
    mode = "reflect" if pad_h < height and pad_w < width else "replicate"
    return F.pad(x, (0, pad_w, 0, pad_h), mode=mode)


def work_size(size: tuple[int, int], long_side: int | None) -> tuple[int, int]:
    """(height, width) to run at: the content's `size`, or scaled to the requested long side."""
    return size if long_side is None else images.fit_long_side(*size, long_side)


def run_net(
    net: Callable[[torch.Tensor], torch.Tensor], image: np.ndarray, device: torch.device, multiple: int
) -> np.ndarray:
    """One forward pass over an HxWx3 image (padded to the net's multiple, cropped back)."""
    height, width = image.shape[:2]
    return to_image(net(pad_to_multiple(to_tensor(image, device), multiple))[..., :height, :width])


def stylize_feedforward(
    workload: str,
    net: Callable[[torch.Tensor], torch.Tensor],
    content: np.ndarray,
    ctx: RunContext,
    p: Mapping[str, Any],
    multiple: int,
) -> np.ndarray:
    """Run an image-to-image net at the work size and return a result the size of `content`, along
    the compute path `precision` or this machine's measurements choose for `workload`.

    `p` holds size, precision, strength (blend towards the content) and preserve_colors. When the
    plan says tiles, the instance norms of every tile take the statistics of one pass over the
    image or a sample of it (engine/nets/tiling.py), so that all tiles are normalised alike.
    """
    work = images.resize(content, work_size(content.shape[:2], p["size"]))
    tiles = ctx.plan.tiles() if ctx.plan is not None else []
    path = compute_path(
        workload, lambda x: net(pad_to_multiple(x, multiple)), ctx, p, work.shape[0] * work.shape[1]
    )
    with precision_scope(ctx.device, path):
        if not tiles:
            result = run_net(net, work, ctx.device, multiple)
        else:
            norms = tiling.SharedNorms()
            with norms.recording():
                net(stats_batch(work, ctx, multiple))

            def one_tile(pixels: np.ndarray, _: tiling.Tile) -> np.ndarray:
                with norms.replaying():
                    return run_net(net, pixels, ctx.device, multiple)

            result = tiling.run_tiled(one_tile, work, tiles, tile_progress(ctx, len(tiles), 0.15, 0.95))
    result = images.resize(result, content.shape[:2])
    return finish(result, content, p["strength"], p["preserve_colors"] == "luminance")


def stats_batch(work: np.ndarray, ctx: RunContext, multiple: int) -> torch.Tensor:
    """The plan's statistics sample of `work` (the image, or crops of it) as one padded batch."""
    crops = [to_tensor(work[crop], ctx.device) for crop in ctx.plan.stats_crops()]
    return pad_to_multiple(torch.cat(crops), multiple)


def tile_progress(ctx: RunContext, count: int, start: float, end: float) -> Callable[[int], None]:
    """A tiled run's `on_tile`: a progress message per tile, a chance to cancel, and memory kept to
    the plan (RunContext.tile_done)."""

    def report(index: int) -> None:
        ctx.cancel.raise_if_cancelled()
        ctx.tile_done()
        fraction = start + (end - start) * index / count
        message = f"stylising tile {index + 1} of {count}"
        ctx.progress(Progress(fraction, "stylize", message, step=index + 1, total=count))

    return report


def finish(result: np.ndarray, content: np.ndarray, strength: float, luminance: bool) -> np.ndarray:
    """The blend towards the content (strength < 1) and luminance transfer (preserve_colors), in
    place and a band of rows at a time: no full-size temporaries."""
    for rows in images.bands(result.shape[0]):
        if strength < 1.0:
            band = result[rows]
            band -= content[rows]
            band *= strength
            band += content[rows]
        if luminance:
            result[rows] = luminance_transfer(result[rows], content[rows])
    return result.astype(np.float32, copy=False)


class SingleModelMethod:
    """A method whose style lives in a choice of trained image-to-image models (Johnson, CycleGAN).

    Its settings are declared in nst_common/settings.py; strength blends towards the content. Its
    models are the manifest's entries of the method (weights `<name>_<model>`, weights/manifest.toml).
    """

    def __init__(
        self,
        name: str,
        loader: Callable[[Path, torch.device], torch.nn.Module],
        cost: NetCost,
    ) -> None:
        self.name = name
        self._loader = loader
        self._cost = cost

    @property
    def models(self) -> tuple[str, ...]:
        """The models to choose from, read from the manifest in use (NST_MANIFEST can change it)."""
        return weights.load_manifest().models(self.name)

    def weight_ids(self, model: str | None) -> tuple[str, ...]:
        return (f"{self.name}_{model}",) if model else ()

    def parse_params(self, raw: dict[str, Any]) -> dict[str, Any]:
        p = params.parse(self.name, raw)
        models = self.models
        if not models:
            raise UserError("missing-weights", f"the weights manifest lists no {self.name} models")
        if p["model"] is None:  # the first installed one, as the setting's help says
            installed = (m for m in models if weights.path_for(self.weight_ids(m)[0]) is not None)
            p["model"] = next(installed, models[0])
        elif p["model"] not in models:
            raise UserError(
                "bad-option",
                f"unknown {self.name} model {p['model']!r}; choose one of: {', '.join(models)}",
            )
        self.settle(p)
        return p

    def settle(self, p: dict[str, Any]) -> None:
        """Check and complete the settings that depend on the chosen model (none here)."""

    def net_key(self, p: Mapping[str, Any]) -> tuple[Any, ...]:
        """What makes one loaded network differ from another: the model (and what `load` reads)."""
        return (self.name, p["model"])

    def load(self, path: Path, p: Mapping[str, Any], device: torch.device) -> torch.nn.Module:
        return self._loader(path, device)

    def footprint(self, p: dict[str, Any], size: tuple[int, int]) -> Footprint:
        return self._cost.footprint(work_size(size, p["size"]))

    def run(self, job: PreparedJob, ctx: RunContext) -> np.ndarray:
        model = job.params["model"]
        ctx.progress(Progress(0.05, "load", f"loading the {self.name} model {model}"))
        net = ctx.cache.get(
            (*self.net_key(job.params), str(ctx.device)),
            lambda: weights.load_with(
                self.weight_ids(model)[0], lambda path: self.load(path, job.params, ctx.device)
            ),
        )
        ctx.cancel.raise_if_cancelled()
        ctx.progress(Progress(0.1, "stylize", "stylising"))
        return stylize_feedforward(self.name, net, job.content, ctx, job.params, self._cost.multiple)
