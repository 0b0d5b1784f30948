"""Running an image-to-image net over an image in overlapping tiles, without seams.

Two things make tiles disagree, and each has its cure here:
- a tile's border sees reflect padding where the whole image has more pixels: each tile reads a
  halo of context (at least the net's receptive-field radius) that is computed and thrown away;
- instance norm over a tile uses that tile's statistics, so tiles in a sky and in a forest get
  different normalisations: `SharedNorms` records every norm's statistics once, on a pass over the
  whole image or, when that does not fit, over a batch of full-resolution crops spread evenly over
  it (`sample_crops`), and replays them in every tile, in the nets' fixed call order.
What is left (rounding, the downscaled statistics) is hidden by blending neighbouring tiles with
feathered weights that sum to one everywhere.
"""

from __future__ import annotations

import contextlib
import contextvars
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import torch


@dataclass(frozen=True)
class Span:
    """One tile along one axis: the input [start, stop) and each input position's blend weight
    (zero in the halo; the weights of all spans on an axis sum to one at every position)."""

    start: int
    stop: int
    weights: np.ndarray  # float32, length stop - start

    @property
    def valid(self) -> slice:
        """The positions, relative to `start`, that carry weight: the rest is halo."""
        nonzero = np.flatnonzero(self.weights)
        return slice(int(nonzero[0]), int(nonzero[-1]) + 1)


@dataclass(frozen=True)
class Tile:
    rows: Span
    cols: Span

    @property
    def region(self) -> tuple[slice, slice]:
        """Where the tile's input lies in the image, for indexing HxW(xC) arrays."""
        return slice(self.rows.start, self.rows.stop), slice(self.cols.start, self.cols.stop)


def min_tile(halo: int, feather: int, align: int) -> int:
    """The smallest tile side that still moves forward by `align` after both halos and the feather."""
    return _round_up(2 * halo + feather + align, align)


def spans(length: int, tile: int, halo: int, feather: int, align: int) -> list[Span]:
    """Tiles of side `tile` along an axis of `length`, starting on multiples of `align`.

    Neighbours overlap by 2 * halo + at least `feather`, so their valid parts (input minus halo,
    except at the image's own edges) overlap by at least `feather`, where the weights ramp linearly
    from one to the other. The last span ends at `length` and is shorter (less work) but still
    longer than its halo and feather; a net pads it at the bottom/right as it pads the whole image.
    """
    smallest = min_tile(halo, feather, align)
    if tile % align or tile < smallest:
        raise ValueError(f"tile {tile} must be a multiple of {align} and at least {smallest}")
    if length <= tile:
        return [Span(0, length, np.ones(length, np.float32))]
    step = tile - 2 * halo - feather
    step -= step % align
    count = math.ceil((length - tile) / step) + 1
    bounds = [(i * step, min(i * step + tile, length)) for i in range(count)]
    last = count - 1
    valid = [(a + (halo if i else 0), b - (halo if i < last else 0)) for i, (a, b) in enumerate(bounds)]
    raw = np.zeros((count, length), np.float64)
    for i, (v0, v1) in enumerate(valid):
        ramp_in = valid[i - 1][1] - v0 if i else 0  # overlap with the previous tile's valid part
        ramp_out = v1 - valid[i + 1][0] if i < last else 0
        x = np.arange(v0, v1) + 0.5
        w = np.ones(v1 - v0)
        if ramp_in > 0:
            w = np.minimum(w, (x - v0) / ramp_in)
        if ramp_out > 0:
            w = np.minimum(w, (v1 - x) / ramp_out)
        raw[i, v0:v1] = w
    total = raw.sum(axis=0)
    return [
        Span(start, stop, (raw[i, start:stop] / total[start:stop]).astype(np.float32))
        for i, (start, stop) in enumerate(bounds)
    ]


def grid(height: int, width: int, tile: int, halo: int, feather: int, align: int) -> list[Tile]:
    """All tiles of an image, row by row; weights are separable, so they sum to one in 2-D too."""
    return [
        Tile(rows, cols)
        for rows in spans(height, tile, halo, feather, align)
        for cols in spans(width, tile, halo, feather, align)
    ]


def run_tiled(
    fn: Callable[[np.ndarray, Tile], np.ndarray],
    content: np.ndarray,
    tiles: list[Tile],
    on_tile: Callable[[int], None] = lambda _: None,
) -> np.ndarray:
    """sum over tiles of weight * fn(tile of content), written into one preallocated output.

    `fn` maps an hxwx3 float32 tile (and where it is) to an hxwx3 float32 result; `on_tile(i)` runs
    before tile i (progress, cancel). Only each tile's valid part is read back: the halo costs
    compute only.
    """
    out = np.zeros(content.shape, np.float32)  # calloc: pages appear as tiles first touch them
    for index, tile in enumerate(tiles):
        on_tile(index)
        r, c = tile.rows, tile.cols
        result = fn(content[tile.region], tile)
        rv, cv = r.valid, c.valid
        weight = r.weights[rv, None, None] * c.weights[None, cv, None]
        target = out[r.start + rv.start : r.start + rv.stop, c.start + cv.start : c.start + cv.stop]
        target += result[rv, cv] * weight
    return out


def sample_crops(height: int, width: int, pixels: int, side: int, align: int) -> list[tuple[slice, slice]]:
    """Where to measure an image's statistics with about `pixels` pixels: the whole image if it
    fits, else equal crops of `side` px, each centred in a cell of an even grid over it.

    Crops keep the full resolution, and with it the fine texture whose variance a downscaled copy
    loses (on random-weight nets, statistics of a 2x-downscaled pass moved the result 14/255 on
    average, crops covering a quarter of the image 4.6/255; a third, 3/255).
    """
    if height * width <= pixels:
        return [(slice(0, height), slice(0, width))]
    crop_h, crop_w = min(side, height), min(side, width)
    count = max(1, pixels // (crop_h * crop_w))
    cols = max(1, min(count, round(math.sqrt(count * width / height))))
    rows = max(1, count // cols)

    def starts(n: int, length: int, crop: int) -> list[int]:  # centred in n equal cells
        return [
            _round_down(min(max(0, round((i + 0.5) * length / n - crop / 2)), length - crop), align)
            for i in range(n)
        ]

    return [
        (slice(y, y + crop_h), slice(x, x + crop_w))
        for y in starts(rows, height, crop_h)
        for x in starts(cols, width, crop_w)
    ]


class SharedNorms:
    """Instance-norm statistics shared by all tiles of one image.

    Inside `recording()`, each `instance_norm_` call (engine/nets/ops.py) computes its input's
    per-channel mean and biased variance and appends them; inside `replaying()`, the calls take
    them back in the same order. A net makes the same calls in the same order for any input size,
    so one pass over the image (or a batch of crops of it) gives every tile the same normalisation.
    """

    def __init__(self) -> None:
        self._stats: list[tuple[torch.Tensor, torch.Tensor]] = []
        self._replaying = False
        self._next = 0

    def __len__(self) -> int:
        return len(self._stats)

    @contextlib.contextmanager
    def recording(self) -> Iterator[None]:
        self._stats.clear()
        self._replaying = False
        with _activated(self):
            yield

    @contextlib.contextmanager
    def replaying(self) -> Iterator[None]:
        """One forward pass of the recorded net; it must use every recorded norm exactly once."""
        self._replaying, self._next = True, 0
        with _activated(self):
            yield
        if self._next != len(self._stats):
            raise RuntimeError(f"a tile used {self._next} of {len(self._stats)} recorded norms")

    def stats(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean, variance) per channel for this call, in float32: measured or replayed."""
        if not self._replaying:
            var, mean = torch.var_mean(x.float(), dim=(0, 2, 3), correction=0)
            self._stats.append((mean, var))
            return mean, var
        if self._next >= len(self._stats) or self._stats[self._next][0].shape[0] != x.shape[1]:
            raise RuntimeError("a tile's norms do not follow the recorded pass")
        self._next += 1
        return self._stats[self._next - 1]


_ACTIVE: contextvars.ContextVar[SharedNorms | None] = contextvars.ContextVar("shared_norms", default=None)


@contextlib.contextmanager
def _activated(norms: SharedNorms) -> Iterator[None]:
    token = _ACTIVE.set(norms)
    try:
        yield
    finally:
        _ACTIVE.reset(token)


def active_norms() -> SharedNorms | None:
    """The statistics the instance norms of the current forward pass share, if any."""
    return _ACTIVE.get()


def _round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


def _round_down(value: int, multiple: int) -> int:
    return value - value % multiple
