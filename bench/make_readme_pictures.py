"""Make the README's pictures: docs/regions.png and docs/semantic.png (regions and semantic maps),
and docs/compare.png with docs/compare-plot.png (`nst compare` of the four methods).

Every input is drawn here (a synthetic landscape and two synthetic paintings), so the pictures may
ship with the project. The fast methods run fixed-seed random weights in their upstream layouts
(bench/zoo.py), installed into a temporary NST_HOME, and the sheet says so. Runs on the CPU in a
few minutes:

    .venv/bin/python bench/make_readme_pictures.py [--side 128] [--iterations 120]
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

import numpy as np

from engine import compare
from engine.compute.cache import ModelCache
from engine.errors import CancelToken
from engine.imaging import images
from engine.pipeline import run_job
from nst_common.messages import StyleRef, StylizeJob

DOCS = Path(__file__).resolve().parents[1] / "docs"
WARM = [(0.9, 0.35, 0.1), (0.95, 0.75, 0.2), (0.5, 0.1, 0.1)]
SKY, HILL, SUN = (0.55, 0.75, 0.95), (0.35, 0.6, 0.3), (1.0, 0.9, 0.5)


def landscape(side: int) -> tuple[np.ndarray, np.ndarray]:
    """A sky over rolling hills with a sun, and its label map (sky, hills, sun)."""
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:side, 0:side].astype(np.float32) / side
    horizon = 0.55 + 0.08 * np.sin(x * 7) + 0.05 * np.sin(x * 17 + 1)
    labels = np.where(y > horizon, 1, 0)
    labels[(x - 0.7) ** 2 + (y - 0.25) ** 2 < 0.012] = 2
    sky = np.stack([0.5 + 0.3 * y, 0.7 + 0.2 * y, 0.95 - 0.1 * y], axis=2)
    hills = np.stack([0.25 + 0.2 * y, 0.45 + 0.2 * (1 - y), 0.2 + 0 * y], axis=2)
    photo = np.where((labels == 1)[..., None], hills, sky)
    photo[labels == 2] = [1.0, 0.92, 0.6]
    photo += rng.normal(0, 0.02, photo.shape)
    palette = np.array([SKY, HILL, SUN], np.float32)
    return photo.clip(0, 1).astype(np.float32), palette[labels]


def strokes(side: int, colours: list[tuple[float, float, float]], angle: float, seed: int) -> np.ndarray:
    """A 'painting': bands of strokes in a few colours at an angle, with brush noise."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:side, 0:side].astype(np.float32)
    wave = np.sin((x * np.cos(angle) + y * np.sin(angle)) * 0.35 + 2 * np.sin(y * 0.05 + seed))
    index = np.clip(((wave + 1) / 2 * len(colours)).astype(int), 0, len(colours) - 1)
    img = np.array(colours, np.float32)[index] + rng.normal(0, 0.05, (side, side, 3))
    return img.clip(0, 1).astype(np.float32)


def stylize(content: np.ndarray, styles: list[StyleRef], params: dict, **extra: object) -> np.ndarray:
    job = StylizeJob("gatys", params, images.to_raw(content, "f32"), styles, **extra)
    return images.from_raw(run_job(job, lambda p: None, CancelToken(), ModelCache()))


def row(tiles: list[np.ndarray], gap: int = 4) -> np.ndarray:
    """Tiles side by side on white."""
    side = tiles[0].shape[0]
    out = np.ones((side, len(tiles) * (side + gap) - gap, 3), np.float32)
    for i, tile in enumerate(tiles):
        tile = np.repeat(tile[..., None], 3, axis=2) if tile.ndim == 2 else tile
        out[:, i * (side + gap) : i * (side + gap) + side] = tile
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--side", type=int, default=128)
    parser.add_argument("--iterations", type=int, default=120)
    parser.add_argument("--parts", nargs="+", choices=("maps", "compare"), default=["maps", "compare"])
    args = parser.parse_args()
    side = args.side
    params = {
        "preset": "draft", "size": side, "optimizer": "adam", "learning_rate": 0.03,
        "iterations": args.iterations, "strength": 5.0, "seed": 0,
    }  # fmt: skip
    photo, label_map = landscape(side)
    warm = strokes(side, WARM, 0.6, seed=1)
    cool = strokes(side, [(0.1, 0.2, 0.6), (0.2, 0.6, 0.8), (0.9, 0.95, 1.0)], -0.9, seed=2)
    if "compare" in args.parts:
        compare_sheet(landscape(2 * side)[0], strokes(2 * side, WARM, 0.6, seed=1))
    if "maps" not in args.parts:
        return

    # Regions: the left half takes the warm painting, a disc on the right the cool one; the rest is kept.
    y, x = np.mgrid[0:side, 0:side].astype(np.float32) / side
    left = (x < 0.45).astype(np.float32)
    disc = ((x - 0.75) ** 2 + (y - 0.6) ** 2 < 0.03).astype(np.float32)
    styles = [StyleRef(image=images.to_raw(s, "f32")) for s in (warm, cool)]
    wire = {"a": images.to_raw(left[..., None], "f32"), "b": images.to_raw(disc[..., None], "f32")}
    regions = [{"mask": "a", "style": 0}, {"mask": "b", "style": 1}]
    result = stylize(photo, styles, {**params, "regions": regions}, masks=wire)
    legend = np.full((side, side, 3), 0.15, np.float32)  # which region takes which style
    legend[left > 0] = warm.reshape(-1, 3).mean(axis=0)
    legend[disc > 0] = cool.reshape(-1, 3).mean(axis=0)
    images.save_image(DOCS / "regions.png", row([photo, legend, warm, cool, result]))

    # Semantic maps: a painting whose top is warm and labelled "sky", whose bottom is cool and labelled
    # "hills". The content's sky takes the warm strokes and its hills the cool ones, against their own
    # colours, which a run without maps (last tile) mixes instead.
    painting = np.where((y < 0.5)[..., None], warm, cool)
    painting_map = np.where((y < 0.5)[..., None], np.array(SKY), np.array(HILL)).astype(np.float32)
    ref = StyleRef(image=images.to_raw(painting, "f32"), map=images.to_raw(painting_map, "u8"))
    result = stylize(photo, [ref], params, content_map=images.to_raw(label_map, "u8"))
    plain = stylize(photo, [StyleRef(image=images.to_raw(painting, "f32"))], params)
    images.save_image(DOCS / "semantic.png", row([painting, painting_map, photo, label_map, result, plain]))
    print(f"wrote {DOCS / 'regions.png'} and {DOCS / 'semantic.png'}")


def compare_sheet(photo: np.ndarray, painting: np.ndarray) -> None:
    """Gatys' quick presets and the three fast methods, each labelled, timed and scored."""
    from zoo import save_weights  # bench/zoo.py: the fixed-seed random weights, in upstream layouts

    random = "random weights"
    runs = [
        compare.Run("gatys", {"preset": "draft"}, "Gatys, draft"),
        compare.Run("gatys", {"preset": "balanced"}, "Gatys, balanced"),
        compare.Run("adain", {}, f"AdaIN, {random}"),
        compare.Run("johnson", {"model": "candy"}, f"Johnson, {random}"),
        compare.Run("cyclegan", {"model": "style_monet"}, f"CycleGAN, {random}"),
    ]
    with tempfile.TemporaryDirectory() as home:
        os.environ["NST_HOME"] = home
        save_weights(Path(home))
        for name, picture in (("photo", photo), ("painting", painting)):
            images.save_image(Path(home) / f"{name}.png", picture)
        result = compare.run_all(f"{home}/photo.png", f"{home}/painting.png", runs, None, print)
    images.save_image(DOCS / "compare.png", compare.contact_sheet(result))
    plot = compare.plot(result.entries)
    if plot is not None:
        images.save_image(DOCS / "compare-plot.png", plot)
    print(f"wrote {DOCS / 'compare.png'} and {DOCS / 'compare-plot.png'}")


if __name__ == "__main__":
    main()
