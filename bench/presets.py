"""Gatys' presets by the quality score (engine/score.py): each preset, with its defaults and with each
candidate change to them, on photo and painting pairs from ../shared/images, run as `nst compare`
runs them (the real pipeline, the measured compute path), timed and scored.

    .venv/bin/python bench/presets.py                        # 3 pairs, draft and balanced, 512 px
    .venv/bin/python bench/presets.py --presets best --size 256 --variants defaults
    .venv/bin/python bench/presets.py --sheets out/          # also each pair's contact sheet

A candidate becomes a default only if it scores better on style without costing edges or time, on
every pair, and looks better on the sheets. The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import statistics
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from engine import compare  # noqa: E402
from engine.compute import tune  # noqa: E402
from engine.imaging import images  # noqa: E402
from engine.methods.gatys.presets import PRESETS  # noqa: E402

IMAGES = ROOT.parent / "shared" / "images"
PAIRS = (
    ("golden_gate.jpg", "woman_with_hat_matisse.jpg"),
    ("sailboat.jpg", "la_muse.jpg"),
    ("chicago.jpg", "the_resevoir_at_poitiers.jpg"),
)
# Candidates from Novak and Nikulin ("Improving the Neural Algorithm of Artistic Style", 2016): the
# activation shift before the Gram matrices, and style taken from every convolution layer with
# weights that halve layer by layer with depth.
ALL_LAYERS = ("relu1_1", "relu1_2", "relu2_1", "relu2_2", "relu3_1", "relu3_2", "relu3_3",
              "relu4_1", "relu4_2", "relu4_3", "relu5_1", "relu5_2", "relu5_3")  # fmt: skip
# Candidate schedules: a variant's "schedule" replaces fields of the preset (engine/methods/gatys/
# presets.py) for its runs, as a changed default would; the rest are settings.
VARIANTS: dict[str, dict[str, Any]] = {
    "defaults": {},
    "shift -1": {"activation_shift": -1.0},
    "all layers, halving": {"style_layers": {n: 2.0**-i for i, n in enumerate(ALL_LAYERS)}},
    "coarse iterations 40": {"schedule": {"coarse_iterations": 40}},
    "coarse iterations 120": {"schedule": {"coarse_iterations": 120}},
    "coarsest 128 px": {"schedule": {"coarsest": 128}},
    "finer floor 15": {"schedule": {"min_iterations": 15}},
}
DEFAULT_VARIANTS = ("defaults", "coarse iterations 40", "coarse iterations 120", "coarsest 128 px",
                    "finer floor 15")  # fmt: skip


@contextlib.contextmanager
def schedule(preset: str, changes: dict[str, Any]) -> Iterator[None]:
    """The preset with `changes`, for the runs inside."""
    before = PRESETS[preset]
    PRESETS[preset] = dataclasses.replace(before, **changes)
    try:
        yield
    finally:
        PRESETS[preset] = before


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--presets", nargs="+", default=["draft", "balanced"])
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(DEFAULT_VARIANTS))
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--pairs", type=int, default=len(PAIRS), help="how many of the pairs to run")
    parser.add_argument("--sheets", type=Path, help="write each pair's contact sheet into this folder")
    args = parser.parse_args()
    machine = tune.machine()
    print(tune.describe(machine))
    cases = [(preset, variant) for preset in args.presets for variant in args.variants]
    rows: dict[str, list[dict[str, Any]]] = {f"{p}, {v}": [] for p, v in cases}
    for content, style in PAIRS[: args.pairs]:
        paths = (IMAGES / "content" / content, IMAGES / "style" / style)
        entries = []
        for preset, variant in cases:
            settings = {k: v for k, v in VARIANTS[variant].items() if k != "schedule"}
            run = compare.Run("gatys", {"preset": preset, **settings}, f"{preset}, {variant}")
            with schedule(preset, VARIANTS[variant].get("schedule", {})):
                result = compare.run_all(*map(str, paths), [run], args.size, print)
            entries += result.entries
            for entry in result.entries:
                rows[entry.run.label].append({"pair": [content, style], "seconds": entry.seconds,
                                              **entry.score.as_dict()})  # fmt: skip
        if args.sheets:
            args.sheets.mkdir(parents=True, exist_ok=True)
            sheet = compare.contact_sheet(dataclasses.replace(result, entries=entries))
            images.save_image(args.sheets / f"{Path(content).stem}.png", sheet)
    print(f"\nmeans over {args.pairs} pairs at {args.size} px (style, content, colour: lower is closer)")
    print(f"  {'run':32} {'seconds':>8} {'style':>6} {'content':>8} {'colour':>7} {'edges':>6}")
    for label, each in rows.items():
        means = {
            key: statistics.mean(r[key] for r in each)
            for key in ("seconds", "style", "content", "colour", "edges")
        }
        print(f"  {label:32} {means['seconds']:8.1f} {means['style']:6.3f} {means['content']:8.2f} "
              f"{means['colour']:7.3f} {means['edges']:6.3f}")  # fmt: skip
    print(json.dumps({"machine": machine, "size": args.size, "runs": rows}))


if __name__ == "__main__":
    main()
