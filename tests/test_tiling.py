"""Tiled inference: the tile grid, its feathered weights, shared norm statistics, and the
seam test: a tiled run against an untiled run of the same job, through the real pipeline and nets
(fixed-seed random weights in the upstream layouts, as in tests/test_zoo.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
import torch

from engine import methods, planner, weights
from engine.compute.cache import ModelCache
from engine.errors import CancelToken
from engine.imaging import images
from engine.methods.base import PreparedJob, RunContext
from engine.methods.johnson import METHOD as JOHNSON
from engine.nets import tiling
from engine.nets.resnet_generator import load_resnet_generator
from engine.nets.transformer_net import load_transformer_net
from engine.pipeline import run_job
from nst_common.messages import StyleRef, StylizeJob

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory, zoo: ModuleType) -> Iterator[Path]:
    """A private NST_HOME with bench/zoo.py's fixed-seed Johnson, AdaIN and CycleGAN installed."""
    vgg, decoder = zoo.adain_models()
    states = {
        "johnson_candy": zoo.johnson_state_dict(zoo.johnson_model()),
        "adain_vgg": vgg.state_dict(),
        "adain_decoder": decoder.state_dict(),
        "cyclegan_style_monet": zoo.cyclegan_model().state_dict(),
    }
    with pytest.MonkeyPatch.context() as mp:
        path = tmp_path_factory.mktemp("home")
        mp.setenv("NST_HOME", str(path))
        for weight_id, state in states.items():
            torch.save(state, path / f"{weight_id}.pth")
            weights.import_file(weight_id, path / f"{weight_id}.pth")
        yield path


# --- the grid ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("length", "tile", "halo", "align"),
    [(1000, 300, 60, 4), (385, 256, 72, 8), (301, 300, 60, 4), (90, 300, 60, 4)],
)
def test_spans_cover_the_axis_and_their_weights_sum_to_one(
    length: int, tile: int, halo: int, align: int
) -> None:
    spans = tiling.spans(length, tile, halo, planner.FEATHER, align)
    total = np.zeros(length)
    for i, span in enumerate(spans):
        assert span.start % align == 0 and span.stop - span.start <= tile
        assert (span.weights >= 0).all()
        total[span.start : span.stop] += span.weights
        valid = span.valid
        if i:  # inner edges: the halo carries no weight, so reflect padding never reaches the result
            assert valid.start >= halo and (span.weights[:halo] == 0).all()
        if i < len(spans) - 1:
            assert span.stop - span.start - valid.stop >= halo
    assert spans[0].start == 0 and spans[-1].stop == length
    assert np.abs(total - 1.0).max() < 1e-6
    if len(spans) > 1:  # neighbours blend over a ramp, not a hard cut
        assert 0.0 < spans[0].weights[spans[0].valid][-1] < 0.5


def test_grid_weights_sum_to_one_in_two_dimensions() -> None:
    tiles = tiling.grid(500, 700, 256, 60, planner.FEATHER, 4)
    total = np.zeros((500, 700))
    for tile in tiles:
        total[tile.region] += tile.rows.weights[:, None] * tile.cols.weights[None, :]
    assert len(tiles) > 4 and np.abs(total - 1.0).max() < 1e-6


def test_a_tile_smaller_than_its_halos_is_refused() -> None:
    with pytest.raises(ValueError, match="at least"):
        tiling.spans(1000, 128, 60, planner.FEATHER, 4)


def test_statistics_crops_are_the_image_when_it_fits_else_spread_over_it() -> None:
    assert tiling.sample_crops(300, 400, 300 * 400, 256, 8) == [(slice(0, 300), slice(0, 400))]
    crops = tiling.sample_crops(2000, 3000, 12 * 256 * 256, 256, 8)
    assert 9 <= len(crops) <= 12
    for rows, cols in crops:
        assert rows.start % 8 == 0 and cols.start % 8 == 0
        assert rows.stop - rows.start == 256 and rows.stop <= 2000 and cols.stop <= 3000
    assert len({r.start for r, _ in crops}) * len({c.start for _, c in crops}) == len(crops)  # a grid
    assert min(r.start for r, _ in crops) < 2000 / 3 and max(r.stop for r, _ in crops) > 2000 * 2 / 3
    assert min(c.start for _, c in crops) < 3000 / 4 and max(c.stop for _, c in crops) > 3000 * 3 / 4


def test_replayed_norms_must_follow_the_recorded_net(tmp_path: Path, zoo: ModuleType) -> None:
    torch.save(zoo.johnson_state_dict(zoo.johnson_model()), tmp_path / "j.pth")
    torch.save(zoo.cyclegan_model().state_dict(), tmp_path / "c.pth")
    johnson = load_transformer_net(tmp_path / "j.pth", CPU)
    cyclegan = load_resnet_generator(tmp_path / "c.pth", CPU)
    x = torch.rand(1, 3, 32, 32)
    norms = tiling.SharedNorms()
    with torch.inference_mode():
        with norms.recording():
            expected = johnson(x.clone())
        assert len(norms) == 15  # every InstanceNorm of TransformerNet, in call order
        with norms.replaying():
            assert torch.allclose(johnson(x.clone()), expected, atol=1e-5)  # same image: same result
        with pytest.raises(RuntimeError, match="recorded"), norms.replaying():
            cyclegan(x.clone())


# --- seams ---------------------------------------------------------------------------------------


def _run(zoo: ModuleType, method: str, content: np.ndarray, **settings) -> tuple[np.ndarray, list[str]]:
    messages: list[str] = []
    styles = (
        [StyleRef(image=images.to_raw(zoo.synthetic_image(96, 96, seed=2), "f32"))]
        if method == "adain"
        else []
    )
    job = StylizeJob(method, {"device": "cpu", **settings}, images.to_raw(content, "f32"), styles)
    result = run_job(job, lambda p: messages.append(p.message), CancelToken(), ModelCache())
    return images.from_raw(result), messages


def _border_energy_ratio(image: np.ndarray, tiles: list[tiling.Tile]) -> float:
    """Mean squared gradient across tile borders (where tiles blend, and 2 px either side) over
    the mean elsewhere: a seam is a step, which shows up as extra gradient energy along it. The
    untiled result's own ratio at the same places says how much of it is the picture's."""
    height, width = image.shape[:2]
    rows, cols = np.zeros(height, bool), np.zeros(width, bool)
    for tile in tiles:
        for span, mask in ((tile.rows, rows), (tile.cols, cols)):
            partial = np.flatnonzero((span.weights > 0) & (span.weights < 1)) + span.start
            for edge in partial:
                mask[max(0, edge - 2) : edge + 3] = True
    across_cols = np.square(np.diff(image, axis=1)).sum(axis=2)  # steps between columns
    across_rows = np.square(np.diff(image, axis=0)).sum(axis=2)
    near = np.concatenate([across_cols[:, cols[1:]].ravel(), across_rows[rows[1:], :].ravel()])
    far = np.concatenate([across_cols[:, ~cols[1:]].ravel(), across_rows[~rows[1:], :].ravel()])
    return float(near.mean() / far.mean())


@pytest.mark.parametrize(
    ("method", "size", "tile"),
    [("johnson", (320, 384), 256), ("adain", (256, 320), 256), ("cyclegan", (288, 288), 256)],
)
def test_a_tiled_run_matches_the_untiled_run(
    method: str, size: tuple[int, int], tile: int, home: Path, zoo: ModuleType
) -> None:
    content = zoo.synthetic_image(*size, seed=1)
    whole, messages = _run(zoo, method, content)
    assert any("in one pass" in m for m in messages)
    tiled, messages = _run(zoo, method, content, tile=tile)
    plan = next(m for m in messages if m.startswith("plan:"))
    assert "tiles of" in plan and "statistics from the whole image" in plan
    diff = np.abs(tiled - whole)
    print(f"\n{method} {size[1]}x{size[0]} in tiles of {tile}: mean abs diff {diff.mean() * 255:.5f}/255, "
          f"max {diff.max() * 255:.4f}/255")  # fmt: skip
    assert whole.std() > 0.02  # the nets do something: a blank result would match trivially
    assert diff.mean() <= 2 / 255 and diff.max() <= 8 / 255
    chosen = methods.get(method)
    tiles = planner.plan(chosen, chosen.parse_params({"tile": tile}), size, CPU).tiles()
    ratio, reference = _border_energy_ratio(tiled, tiles), _border_energy_ratio(whole, tiles)
    print(f"gradient energy along tile borders / elsewhere: tiled {ratio:.3f}, untiled {reference:.3f}")
    assert ratio <= 1.1 * reference  # the content's own edges may lie there: tiling adds no energy


def test_with_sampled_statistics_the_result_does_not_depend_on_the_tiles(home: Path, zoo: ModuleType) -> None:
    """When the whole image is too large for the statistics pass, the tiles share the statistics of
    crops. The result moves from the untiled one (random nets are sensitive to it), but every tile
    moves alike: two different tile grids give the same picture, which a seam (a tile normalised
    on its own, a halo too thin) would not. Feathering smears a seam over 32 px, so the gradient
    energy along the borders barely shows one; the comparison of two grids does."""
    content = zoo.synthetic_image(384, 512, seed=3)
    fp = JOHNSON.footprint(JOHNSON.parse_params({}), content.shape[:2])
    sample = 110_000  # pixels: less than the image (196608), so one 256 px crop
    budget = fp.fixed_bytes + planner.OUTPUT_BYTES_PER_PIXEL * 384 * 512 + int(fp.bytes_per_pixel * sample)
    results, plans = [], []
    for tile in (256, 320):
        plan = planner.Plan("johnson", CPU, (384, 512), tile, fp, budget, budget)
        assert (
            plan.stats_crops() == [(slice(64, 320), slice(128, 384))]
            and "1 crops of 256 px" in plan.describe()
        )
        ctx = RunContext(CPU, lambda _: None, CancelToken(), ModelCache(), plan)
        results.append(JOHNSON.run(PreparedJob(content, [], JOHNSON.parse_params({})), ctx))
        plans.append(plan)
    one_pass = RunContext(CPU, lambda _: None, CancelToken(), ModelCache())
    whole = JOHNSON.run(PreparedJob(content, [], JOHNSON.parse_params({})), one_pass)
    grids = np.abs(results[0] - results[1])
    moved = np.abs(results[0] - whole).mean()
    ratio = _border_energy_ratio(results[0], plans[0].tiles())
    reference = _border_energy_ratio(whole, plans[0].tiles())
    print(f"\nsampled statistics: tiles of 256 vs 320 px: mean abs diff {grids.mean() * 255:.5f}/255, max "
          f"{grids.max() * 255:.4f}/255; {moved * 255:.2f}/255 from the untiled run; gradient energy along "
          f"tile borders / elsewhere {ratio:.3f} (untiled {reference:.3f})")  # fmt: skip
    assert grids.mean() <= 0.05 / 255 and grids.max() <= 2 / 255
    assert ratio <= 1.1 * reference
    assert moved > 1e-4  # the sample's statistics really were used
