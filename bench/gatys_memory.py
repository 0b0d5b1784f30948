"""Working memory of one Gatys step optimised in tiles, per tile side: what the planner must count on.

For each tile side, a fresh process builds the tiled objective of the balanced preset on a synthetic
image three windows wide (so that a full-size interior window exists), then measures the peak resident
memory (VmHWM, reset through /proc/self/clear_refs) above what it held before the first pass, through
loss, gradient and trial passes as the descent runs them, less the image-sized gradient. Divided by the tile's
pixels, that is the figure `EVAL_BYTES_PER_PIXEL` in engine/methods/gatys/__init__.py must cover.

    .venv/bin/python bench/gatys_memory.py                  # tiles of 384, 512, 768 and 1024 px
    .venv/bin/python bench/gatys_memory.py --tiles 512 640
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
from functools import partial
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
MIB = 1 << 20


def _resident() -> tuple[int, int]:
    """(current, peak) resident bytes of this process."""
    status = Path("/proc/self/status").read_text()
    now, peak = (int(re.search(rf"{key}:\s+(\d+) kB", status).group(1)) << 10 for key in ("VmRSS", "VmHWM"))
    return now, peak


def _reset_peak() -> int:
    Path("/proc/self/clear_refs").write_text("5")
    return _resident()[0]


def measure(tile: int) -> dict:
    """One tile side in this process (call it in a fresh one: the peak is per process)."""
    import numpy as np
    import torch

    from engine.backbones import load_backbone
    from engine.compute import allocator
    from engine.imaging import images
    from engine.methods import gatys
    from engine.methods.gatys import objective, tiles

    allocator.configure()  # as `nst` does: the figures include glibc's behaviour
    p = gatys.METHOD.parse_params({"preset": "balanced"})
    backbone = load_backbone(p["backbone"], p["pooling"], torch.device("cpu"))
    side = 2 * tile - 2 * tiles.HALO  # three windows a side, the middle one full
    content = images.to_tensor(_synthetic(side, 1), torch.device("cpu"))
    style = images.to_tensor(_synthetic(512, 2), torch.device("cpu"))
    tiled = objective.for_scale(backbone, p, content, [style], np.ones(1), [], tile=tile)
    image = content.clone()
    del content, style
    allocator.release()
    figures = {"tile": tile, "image_side": side, "windows": len(tiled.windows)}

    base = _resident()[0]  # image, content features, targets: what the planner counts per image pixel
    gradient_bytes = image.numel() * image.element_size()
    worst = 0

    def measured(name: str, run, beside: int = 0):
        """Run one pass; its peak above `base`, less `beside` bytes of image-sized tensors."""
        nonlocal worst
        _reset_peak()
        out = run()
        above = _resident()[1] - base - beside
        worst = max(worst, above)
        figures[f"{name}_peak_mib"] = above / MIB
        return out

    evaluation = measured("loss", partial(tiled.loss, image))
    grad = measured("gradient", partial(tiled.gradient, image, evaluation), gradient_bytes)
    step = tiles.Step(grad, 1e-3)
    measured("trial", partial(tiled.loss, image, step), gradient_bytes)
    del grad, step
    measured("loss_again", partial(tiled.loss, image))
    measured("gradient_again", partial(tiled.gradient, image, evaluation), gradient_bytes)
    figures["bytes_per_tile_pixel"] = round(worst / tile**2)
    return {k: round(v, 1) if isinstance(v, float) else v for k, v in figures.items()}


def _synthetic(side: int, seed: int):
    import importlib.util

    spec = importlib.util.spec_from_file_location("bench_zoo", ROOT / "bench" / "zoo.py")
    zoo = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(zoo)
    return zoo.synthetic_image(side, side, seed=seed)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tiles", nargs="+", type=int, default=[384, 512, 768, 1024])
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(args.child)))
        return
    rows = []
    for tile in args.tiles:
        command = [sys.executable, __file__, "--child", str(tile)]
        done = subprocess.run(command, stdout=subprocess.PIPE, text=True, check=True)
        rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
        row = rows[-1]
        print(
            f"tile {tile:5} px: "
            + ", ".join(f"{k[:-9]} {v:.0f}" for k, v in row.items() if k.endswith("_peak_mib"))
            + f" MiB above the held state -> {row['bytes_per_tile_pixel']} B per tile pixel",
            file=sys.stderr,
        )
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
