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
import itertools
import json
import statistics
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from engine import compare  # noqa: E402
from engine.compute import tune  # noqa: E402
from engine.imaging import images  # noqa: E402
from engine.methods.gatys import objective, tiles  # noqa: E402
from engine.methods.gatys.losses import Target  # noqa: E402
from engine.methods.gatys.presets import PRESETS  # noqa: E402

IMAGES = ROOT.parent / "shared" / "images"
PAIRS = (
    ("golden_gate.jpg", "woman_with_hat_matisse.jpg"),
    ("sailboat.jpg", "la_muse.jpg"),
    ("chicago.jpg", "the_resevoir_at_poitiers.jpg"),
)
# Candidates from Novak and Nikulin ("Improving the Neural Algorithm of Artistic Style", 2016): the
# activation shift before the Gram matrices, style taken from every convolution layer with weights
# that halve layer by layer with depth, and the chain of correlations between neighbouring style
# layers in place of each layer's own Gram matrix (`chained_correlations` below).
ALL_LAYERS = ("relu1_1", "relu1_2", "relu2_1", "relu2_2", "relu3_1", "relu3_2", "relu3_3",
              "relu4_1", "relu4_2", "relu4_3", "relu5_1", "relu5_2", "relu5_3")  # fmt: skip
# Candidate schedules: a variant's "schedule" replaces fields of the preset (engine/methods/gatys/
# presets.py) for its runs, as a changed default would; the rest are settings.
VARIANTS: dict[str, dict[str, Any]] = {
    "defaults": {},
    "shift -1": {"activation_shift": -1.0},
    "all layers, halving": {"style_layers": {n: 2.0**-i for i, n in enumerate(ALL_LAYERS)}},
    "chained": {"trial": "chained"},
    "chained, all layers, halving": {
        "trial": "chained",
        "style_layers": {n: 2.0**-i for i, n in enumerate(ALL_LAYERS)},
    },
    "coarse iterations 40": {"schedule": {"coarse_iterations": 40}},
    "coarse iterations 120": {"schedule": {"coarse_iterations": 120}},
    "coarsest 128 px": {"schedule": {"coarsest": 128}},
    "finer floor 15": {"schedule": {"min_iterations": 15}},
}
DEFAULT_VARIANTS = ("defaults", "coarse iterations 40", "coarse iterations 120", "coarsest 128 px",
                    "finer floor 15")  # fmt: skip


@contextlib.contextmanager
def chained_correlations() -> Iterator[None]:
    """Style as Novak and Nikulin's chain: for each pair of neighbouring style layers (a, b), the
    correlations of a's channels with b's, a pooled to b's size, F_a F_b^T / (H W), in place of
    each layer's own Gram matrix. The pair takes layer a's weight, rescaled so that the style's
    total weight is unchanged. A trial, patched into the real objective for the runs inside: it
    becomes a setting of the engine only if it wins. Whole-image objectives without regions only:
    a tiled or guided run fails rather than silently running the defaults."""
    init, style_loss = objective.Objective.__init__, objective.Objective._style_loss

    def chained(feats: dict[str, Any], layers: dict[str, float], shift: float) -> dict[tuple[str, str], Any]:
        names = list(layers)
        out = {}
        for a, b in itertools.pairwise(names):
            fa, fb = feats[a] + shift, feats[b] + shift
            if fa.shape[-2:] != fb.shape[-2:]:
                fa = F.adaptive_avg_pool2d(fa, fb.shape[-2:])
            n, _, h, w = fb.shape
            flat_a, flat_b = fa.reshape(n, fa.shape[1], -1), fb.reshape(n, fb.shape[1], -1)
            out[(a, b)] = torch.bmm(flat_a, flat_b.transpose(1, 2)) / (h * w)
        return out

    def chained_init(self: Any, backbone: Any, p: dict[str, Any], content: Any, styles: list[Any],
                     style_weights: Any, guides: list[Any], *rest: Any) -> None:  # fmt: skip
        if guides:
            raise RuntimeError("the chained-correlation trial runs without regions")
        init(self, backbone, p, content, styles, style_weights, guides, *rest)
        targets: dict[tuple[str, str], Any] = {}
        with torch.no_grad():
            for style, weight in zip(styles, style_weights, strict=True):
                for pair, g in chained(self.features(style), self.style_layers, self.shift).items():
                    targets[pair] = targets.get(pair, 0) + g * float(weight)
        self.style_targets = {pair: Target.of(g) for pair, g in targets.items()}
        total = sum(self.style_layers.values())
        firsts = sum(self.style_layers[a] for a, _ in targets)
        self.pair_weights = {(a, b): self.style_layers[a] * total / firsts for a, b in targets}

    def chained_loss(self: Any, feats: dict[str, Any]) -> Any:
        grams = chained(feats, self.style_layers, self.shift)
        return sum(w * self.style_targets[pair].loss(grams[pair]) for pair, w in self.pair_weights.items())

    def no_tiles(*_: Any, **__: Any) -> None:
        raise RuntimeError("the chained-correlation trial runs untiled; use a smaller --size")

    objective.Objective.__init__, objective.Objective._style_loss = chained_init, chained_loss
    tiled, tiles.TiledObjective.__init__ = tiles.TiledObjective.__init__, no_tiles
    try:
        yield
    finally:
        objective.Objective.__init__, objective.Objective._style_loss = init, style_loss
        tiles.TiledObjective.__init__ = tiled


TRIALS = {"chained": chained_correlations}


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
            settings = {k: v for k, v in VARIANTS[variant].items() if k not in ("schedule", "trial")}
            run = compare.Run("gatys", {"preset": preset, **settings}, f"{preset}, {variant}")
            trial = TRIALS.get(VARIANTS[variant].get("trial", ""), contextlib.nullcontext)
            with schedule(preset, VARIANTS[variant].get("schedule", {})), trial():
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
