"""A longer `nst train johnson` on the photos in ../shared/images/content with one of its paintings,
with every default but the step count, and the README's picture of it: docs/training.png, the
network's validation pictures (the held-out photo, stylised) at a few steps along the way.

Only the network's outputs go into the picture, not the photos or the painting.

    .venv/bin/python bench/train_long.py                 # 500 steps: about 20 min on 2 CPU cores
    .venv/bin/python bench/train_long.py --steps 40 --out /tmp/training.png
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
import time
from pathlib import Path

from PIL import Image, ImageDraw

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from engine.compute import allocator, tune  # noqa: E402
from engine.training import johnson, loop  # noqa: E402

IMAGES = ROOT.parent / "shared" / "images"
STYLE = IMAGES / "style" / "woman_with_hat_matisse.jpg"
THUMB = 256  # width of each validation picture in the strip
LABEL = 22  # height of the label band under each


def strip(pictures: list[tuple[str, Path]], out: Path) -> None:
    """The validation pictures side by side, each labelled with its step."""
    tiles = []
    for label, path in pictures:
        with Image.open(path) as picture:
            tile = picture.convert("RGB")
            tile = tile.resize((THUMB, round(tile.height * THUMB / tile.width)), Image.Resampling.LANCZOS)
        tiles.append((label, tile))
    height = max(tile.height for _, tile in tiles)
    sheet = Image.new("RGB", (len(tiles) * (THUMB + 4) - 4, height + LABEL), "white")
    draw = ImageDraw.Draw(sheet)
    for i, (label, tile) in enumerate(tiles):
        sheet.paste(tile, (i * (THUMB + 4), 0))
        draw.text((i * (THUMB + 4) + 4, height + 4), label, fill="black")
    sheet.save(out, optimize=True)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=500)
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "training.png")
    args = parser.parse_args()
    allocator.configure()
    machine = tune.machine()
    print(tune.describe(machine))
    shown = sorted({0, args.steps // 10, args.steps // 4, args.steps // 2, args.steps})
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["NST_HOME"] = tmp
        every = math.gcd(*shown[1:])  # a validation picture at each shown step, and few others
        job = loop.Job(
            "johnson",
            "long",
            styles=[STYLE],
            content_dir=IMAGES / "content",
            overrides={"steps": args.steps, "validate_every": every},
        )
        last = [0.0]

        def report(p: loop.Progress) -> None:
            if time.monotonic() - last[0] > 30 or p.step == p.steps:
                last[0] = time.monotonic()
                terms = ", ".join(f"{k} {v:.3f}" for k, v in p.terms.items())
                print(f"step {p.step}/{p.steps}: {terms}; {p.photos_per_s:.2f} photos/s", flush=True)

        started = time.monotonic()
        loop.train(johnson, job, report)
        minutes = (time.monotonic() - started) / 60
        folder = job.folder / "validation"
        strip([(f"step {s}", folder / f"step-{s:07d}.png") for s in shown], args.out)
    print(f"{args.steps} steps in {minutes:.1f} min; wrote {args.out}")


if __name__ == "__main__":
    main()
