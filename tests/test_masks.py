"""Regions and semantic maps: mask arithmetic by hand, then real Gatys runs through the
whole pipeline (wire masks, the `regions` setting, label maps) measured from the outside."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch

from engine.backbones import load_backbone
from engine.compute.cache import ModelCache
from engine.errors import CancelToken, UserError
from engine.imaging import images, masks
from engine.methods import adain
from engine.methods.base import Guide, StyleSource
from engine.methods.gatys.losses import Target, gram, masked_gram
from engine.pipeline import run_job
from nst_common.messages import StyleRef, StylizeJob

SIDE = 48
RED, BLUE = np.array([0.85, 0.15, 0.1]), np.array([0.1, 0.2, 0.85])


def photo(side: int = SIDE) -> np.ndarray:
    """A 'photo' with structure but no strong colour: a grey-green gradient, a light disc, a dark bar.

    Gatys stalls on a perfectly flat image, so it has shapes (and faint grain) for features to hold.
    """
    rng = np.random.default_rng(7)
    y, x = np.mgrid[0:side, 0:side].astype(np.float32) / side
    img = np.stack([0.3 + 0.3 * x, 0.4 + 0.2 * y, 0.35 + 0.1 * x * y], axis=2)
    img[(x - 0.3) ** 2 + (y - 0.5) ** 2 < 0.04] = [0.9, 0.9, 0.8]
    img[(y > 0.2) & (y < 0.3) & (x > 0.55)] = [0.1, 0.12, 0.15]
    img += rng.normal(0, 0.03, img.shape)
    return img.clip(0, 1).astype(np.float32)


def painting(colour: np.ndarray, side: int = SIDE, seed: int = 0) -> np.ndarray:
    """Diagonal strokes of `colour` and its darker shade, with noise: a strong, simple style."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:side, 0:side].astype(np.float32)
    stripes = (np.sin((x + y) * 0.7) > 0)[..., None]
    img = np.where(stripes, colour, colour * 0.45) + rng.normal(0, 0.06, (side, side, 3))
    return img.clip(0, 1).astype(np.float32)


def stylize(
    content: np.ndarray,
    styles: list[np.ndarray],
    wire_masks: dict[str, np.ndarray] | None = None,
    style_maps: list[np.ndarray] | None = None,
    content_map: np.ndarray | None = None,
    method: str = "gatys",
    **settings: Any,
) -> np.ndarray:
    """One job through run_job, images as the plug-in would send them."""
    params = {
        "preset": "draft",
        "size": SIDE,
        "optimizer": "adam",  # at 48 px Adam gets there in a fraction of L-BFGS's evaluations
        "learning_rate": 0.05,
        "iterations": 60,
        "strength": 10.0,
        "seed": 0,
        **settings,
    }
    refs = [
        StyleRef(
            image=images.to_raw(s, "f32"),
            map=None if style_maps is None else images.to_raw(style_maps[i], "u8"),
        )
        for i, s in enumerate(styles)
    ]
    job = StylizeJob(
        method,
        params,
        images.to_raw(content, "f32"),
        refs,
        masks={k: images.to_raw(m[..., None], "f32") for k, m in (wire_masks or {}).items()},
        content_map=None if content_map is None else images.to_raw(content_map, "u8"),
    )
    return images.from_raw(run_job(job, lambda p: None, CancelToken(), ModelCache()))


def half(side: int = SIDE) -> np.ndarray:
    """1 on the left half, 0 on the right."""
    mask = np.zeros((side, side), np.float32)
    mask[:, : side // 2] = 1.0
    return mask


def style_distance(image: np.ndarray, style: np.ndarray) -> float:
    """Gram loss on shallow layers of an image crop, computed without the engine's mask code."""
    backbone = load_backbone("vgg16-hed")
    layers = ["relu1_1", "relu2_1", "relu3_1"]
    with torch.no_grad():
        mine = backbone(images.to_tensor(np.ascontiguousarray(image)), layers)
        theirs = backbone(images.to_tensor(style), layers)
    return sum(Target.of(gram(theirs[n])).loss(gram(mine[n])).item() for n in layers)


# --- Mask arithmetic -----------------------------------------------------------------------------


def test_masked_gram_of_a_binary_mask_is_the_gram_of_that_region() -> None:
    features = torch.rand(1, 4, 6, 6, generator=torch.Generator().manual_seed(0))
    mask = torch.zeros(1, 1, 6, 6)
    mask[..., :, :2] = 1.0
    assert torch.allclose(masked_gram(features, mask), gram(features[..., :2].contiguous()), atol=1e-6)
    # A soft mask weights positions: 0.5 everywhere is the plain Gram (weights normalise away).
    assert torch.allclose(masked_gram(features, torch.full_like(mask, 0.5)), gram(features), atol=1e-6)


def test_layer_masks_average_areas_so_soft_edges_stay_soft() -> None:
    mask = np.zeros((8, 8), np.float32)
    mask[:, :3] = 1.0  # the edge falls inside the second cell of a 4-wide grid
    small = masks.layer_mask(mask, (4, 4), "cpu")[0, 0]
    assert torch.allclose(small[0], torch.tensor([1.0, 0.5, 0.0, 0.0]))
    assert small.mean().item() == pytest.approx(mask.mean())


def test_label_maps_share_one_palette_and_absorb_antialiased_edges() -> None:
    a = np.zeros((10, 10, 3), np.float32)
    a[:5] = [1, 0, 0]
    a[5:] = [0, 0, 1]
    a[5, :] = [0.6, 0, 0.4]  # an antialiased edge row, nearer red
    b = np.zeros((4, 4, 3), np.float32)
    b[:, :2] = [0, 0, 1]
    b[:, 2:] = [1, 0, 0]
    la, lb = masks.label_maps([a, b])
    assert la[0, 0] == lb[0, 3] and la[9, 0] == lb[0, 0] and la[0, 0] != la[9, 0]
    assert la[5, 0] == la[0, 0]
    strict = masks.label_masks(la, 2, 1.0)
    assert np.array_equal(strict[int(la[0, 0])], (la == la[0, 0]).astype(np.float32))
    loose = masks.label_masks(la, 2, 0.0)
    assert np.allclose(loose[0], 0.5) and np.allclose(loose[1], 0.5)


def test_feathered_blend_has_no_seam_and_no_halo() -> None:
    content, result = np.zeros((32, 32, 3), np.float32), np.ones((32, 32, 3), np.float32)
    guides = masks.region_guides([(half(32), 0)], [1.0])
    out = masks.blend(result, content, guides)[..., 0]
    assert np.allclose(out[:, :10], 1.0) and np.allclose(out[:, 22:], 0.0)
    row = out[16]
    assert np.all(np.diff(row) <= 1e-6) and row.min() >= 0 and row.max() <= 1  # monotone: no halo
    assert 0.3 < row[16] < 0.7 and np.abs(np.diff(row)).max() < 0.5  # a ramp, not a step


def test_guided_adain_gives_each_region_its_own_statistics() -> None:
    gen = torch.Generator().manual_seed(1)
    content_feat = torch.rand(1, 3, 4, 8, generator=gen) * 2
    targets = {0: torch.tensor([[1.0, -2.0, 3.0], [0.5, 2.0, 0.1]]), 1: torch.tensor([[5.0] * 3, [1.0] * 3])}
    guides = [Guide(half(32)[:16], [StyleSource(0, 1.0)]), Guide(1 - half(32)[:16], [StyleSource(1, 1.0)])]
    transfer = adain._Transfer(None, None, [targets[0], targets[1]], 1.0, torch.device("cpu"))
    out = transfer.transform(content_feat, [g.mask for g in guides])
    for index, cols in ((0, slice(0, 4)), (1, slice(4, 8))):
        region = out[0, :, :, cols].reshape(3, -1)
        assert torch.allclose(region.mean(dim=1), targets[index][0], atol=1e-4)
        assert torch.allclose(region.std(dim=1, unbiased=True), targets[index][1], atol=1e-2)


# --- Real Gatys runs through the pipeline --------------------------------------------------------


def test_gatys_half_masked_styles_inside_and_keeps_the_content_outside() -> None:
    content, style = photo(), painting(RED)
    result = stylize(content, [style], {"left": half()}, regions=[{"mask": "left"}], iterations=80)
    inside, outside = slice(0, SIDE // 2 - 4), slice(SIDE // 2 + 4, SIDE)  # away from the soft edge
    colour = lambda img, cols: img[:, cols].reshape(-1, 3).mean(axis=0)  # noqa: E731
    before = np.abs(colour(content, inside) - colour(style, slice(None))).sum()
    after = np.abs(colour(result, inside) - colour(style, slice(None))).sum()
    assert after < 0.5 * before, f"inside colour distance only went from {before:.3f} to {after:.3f}"
    gram_before = style_distance(content[:, inside], style)
    gram_after = style_distance(result[:, inside], style)
    assert gram_after < 0.3 * gram_before, f"inside Gram loss only went {gram_before:.3g} -> {gram_after:.3g}"
    inside_change = np.abs(result[:, inside] - content[:, inside]).mean()
    outside_change = np.abs(result[:, outside] - content[:, outside]).mean()
    assert outside_change < 0.03 and outside_change < 0.15 * inside_change


def test_two_regions_take_two_styles() -> None:
    content, red, blue = photo(), painting(RED, seed=1), painting(BLUE, seed=2)
    result = stylize(
        content,
        [red, blue],
        {"a": half(), "b": 1.0 - half()},
        regions=[{"mask": "a", "style": 0}, {"mask": "b", "style": 1}],
    )
    for cols, own, other in ((slice(0, 20), red, blue), (slice(28, SIDE), blue, red)):
        mean = result[:, cols].reshape(-1, 3).mean(axis=0)
        to_own = np.abs(mean - own.reshape(-1, 3).mean(axis=0)).sum()
        to_other = np.abs(mean - other.reshape(-1, 3).mean(axis=0)).sum()
        assert to_own < 0.5 * to_other, (
            f"region {cols}: {to_own:.3f} to its own style, {to_other:.3f} to the other"
        )


def test_semantic_maps_match_label_to_label() -> None:
    # The style is blue on top and red below; its map labels the top "B" and the bottom "A". The
    # content's map labels its top "A", so the content's top must take the style's red bottom.
    style = np.concatenate([painting(BLUE)[: SIDE // 2], painting(RED, seed=3)[: SIDE // 2]])
    label_a, label_b = [1.0, 1.0, 0.0], [0.0, 1.0, 1.0]
    style_map = np.zeros((SIDE, SIDE, 3), np.float32)
    style_map[: SIDE // 2], style_map[SIDE // 2 :] = label_b, label_a
    content_map = style_map[::-1].copy()  # content top: A, bottom: B
    result = stylize(photo(), [style], style_maps=[style_map], content_map=content_map)
    top, bottom = result[: SIDE // 2 - 4].reshape(-1, 3), result[SIDE // 2 + 4 :].reshape(-1, 3)
    assert top[:, 0].mean() > top[:, 2].mean() + 0.2, f"top should be red, mean {top.mean(axis=0)}"
    assert bottom[:, 2].mean() > bottom[:, 0].mean() + 0.2, (
        f"bottom should be blue, mean {bottom.mean(axis=0)}"
    )


def test_a_region_covering_everything_is_the_plain_run() -> None:
    # Same Gram targets, same losses, no remainder: spatial control reduces to the classic objective.
    content, style = photo(32), painting(RED, 32)
    plain = stylize(content, [style], size=32, iterations=3)
    everywhere = {"all": np.ones((32, 32), np.float32)}
    guided = stylize(content, [style], everywhere, regions=[{"mask": "all"}], size=32, iterations=3)
    assert np.abs(plain - content).mean() > 0.005 and np.allclose(guided, plain, atol=1e-4)


def edge_profile(result: np.ndarray, content: np.ndarray) -> np.ndarray:
    """Mean absolute change from the content per column, for an edge running down the middle."""
    return np.abs(result - content).mean(axis=(0, 2))


def test_gatys_region_edge_has_no_halo() -> None:
    # The left half is styled, the right keeps the photo. Deep layers see across the edge, so a
    # keep term that gave way near the edge would let the style leak into a band just outside it:
    # the change 4-16 px outside must be as small as far outside, not a ring around the region.
    # Measured: band 0.004, far 0.003, inside 0.30. With the keep term taken away within 12 px of
    # the edge by hand (a halo): band 0.155, far 0.003. Blurring the keep mask (sigma 8 px) did not
    # make one (band 0.003): half a keep weight still holds the pixels.
    content, edge = photo(), SIDE // 2
    result = stylize(content, [painting(RED)], {"left": half()}, regions=[{"mask": "left"}], iterations=40)
    change = edge_profile(result, content)
    inside, band, far = (
        change[: edge - 4].mean(),
        change[edge + 4 : edge + 16].mean(),
        change[edge + 16 :].mean(),
    )
    profile = np.round(change, 3).tolist()
    assert inside > 0.1, f"the region was not styled: {profile}"
    assert band < 0.01 and band < far + 0.005, f"halo: band {band:.4f}, far {far:.4f}; per column {profile}"


def test_gatys_abutting_regions_meet_without_a_seam() -> None:
    # Red left, blue right. Along the red-blue axis each column's mean colour must pass from one
    # side's value to the other's without leaving that range, its distance off the axis must stay
    # at the sides' level, and the texture energy along the edge must neither spike (a seam line)
    # nor vanish (the photo showing through). Measured (band; left, right sides):
    # along 0.29..1.10 (1.03, 0.28), off 0.30 (0.31, 0.35), energy 0.12 (0.095, 0.10). With a 6 px
    # gap left between the regions by hand: energy 0.022 (0.12, 0.115), off 0.44 (0.35, 0.37).
    content, edge = photo(), SIDE // 2
    red, blue = painting(RED, seed=1), painting(BLUE, seed=2)
    result = stylize(
        content,
        [red, blue],
        {"a": half(), "b": 1.0 - half()},
        regions=[{"mask": "a", "style": 0}, {"mask": "b", "style": 1}],
        iterations=40,
    )
    red_mean, blue_mean = red.reshape(-1, 3).mean(axis=0), blue.reshape(-1, 3).mean(axis=0)
    axis = red_mean - blue_mean
    columns = result.mean(axis=0) - blue_mean  # per column mean colour, relative to blue
    along = columns @ axis / (axis @ axis)  # 1 = red's mean colour, 0 = blue's
    off = np.linalg.norm(columns - along[:, None] * axis, axis=1)
    energy = np.square(np.diff(result, axis=0)).sum(axis=2).mean(axis=0)  # texture along the edge
    left, right, band = slice(4, edge - 6), slice(edge + 6, SIDE - 4), slice(edge - 4, edge + 4)
    low, high = sorted((along[left].mean(), along[right].mean()))
    sides = {
        name: (values[left].mean(), values[right].mean())
        for name, values in (("off", off), ("energy", energy))
    }
    report = {
        name: np.round(values, 3).tolist()
        for name, values in (("along", along), ("off", off), ("energy", energy))
    }
    assert high - low > 0.4, f"the two regions did not take two styles: {report}"
    assert low - 0.15 < along[band].min() and along[band].max() < high + 0.15, f"seam colour: {report}"
    assert off[band].mean() < 1.2 * max(sides["off"]), f"seam off the axis: {report}"
    assert 0.6 * min(sides["energy"]) < energy[band].mean() < 1.5 * max(sides["energy"]), (
        f"seam texture: {report}"
    )


# --- Validation ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("regions", "wire_masks", "code"),
    [
        ([{"mask": "a", "style": 1}], {"a": half()}, "bad-option"),  # more regions' styles than styles
        ([{"mask": "zz"}], {"a": half()}, "bad-option"),  # no such mask
        ([{"mask": "a", "colour": 1}], {"a": half()}, "bad-option"),
        ([{"mask": "a", "style": True}], {"a": half()}, "bad-option"),
        ({"mask": "a"}, {"a": half()}, "bad-option"),
        ([{"mask": "a"}], {"a": np.zeros((SIDE, SIDE), np.float32)}, "bad-input"),  # empty mask
    ],
)
def test_bad_regions_are_refused_before_any_work(regions: Any, wire_masks: dict, code: str) -> None:
    with pytest.raises(UserError) as err:
        stylize(photo(), [painting(RED)], wire_masks, regions=regions, iterations=1)
    assert err.value.code == code


def test_maps_must_come_in_pairs_and_not_with_regions() -> None:
    label = np.zeros((SIDE, SIDE, 3), np.float32)
    with pytest.raises(UserError, match="content map"):
        stylize(photo(), [painting(RED)], style_maps=[label], iterations=1)
    with pytest.raises(UserError, match="needs a map"):
        stylize(photo(), [painting(RED)], content_map=label, iterations=1)
    with pytest.raises(UserError, match="not both"):
        stylize(
            photo(), [painting(RED)], {"a": half()}, [label], label, regions=[{"mask": "a"}], iterations=1
        )
    with pytest.raises(UserError, match="size"):
        stylize(photo(), [painting(RED)], style_maps=[label[:10]], content_map=label, iterations=1)


# --- CLI -----------------------------------------------------------------------------------------


def test_cli_mask_region_and_map_flags(tmp_path, capsys) -> None:
    from engine.cli import main

    paths = {}
    for name, picture in {
        "content": photo(32),
        "style": painting(RED, 32),
        "other": painting(BLUE, 32),
        "mask": np.repeat(half(32)[..., None], 3, axis=2),
        "map": np.zeros((32, 32, 3), np.float32),
    }.items():
        paths[name] = str(tmp_path / f"{name}.png")
        images.save_image(paths[name], picture)
    out = str(tmp_path / "out.png")
    common = ["stylize", paths["content"], "-o", out, "--size", "32", "--iterations", "30", "--seed", "0"]
    common += ["--optimizer", "adam", "--set", "learning_rate=0.05", "--strength", "10", "--force"]
    assert main([*common, "-s", paths["style"], "--mask", paths["mask"]]) == 0
    result, content = images.load_image(out), images.load_image(paths["content"])
    assert (
        np.abs(result[:, 20:] - content[:, 20:]).mean()
        < 0.03
        < np.abs(result[:, :12] - content[:, :12]).mean()
    )

    region = f"{paths['mask']}={paths['other']}"
    assert main([*common, "-s", paths["style"], "--region", region]) == 0  # region styles join -s ones
    for bad, message in [
        (["--region", paths["mask"]], "MASK=STYLE"),
        (["-s", paths["style"], "--mask", paths["mask"], "--region", region], "not both"),
        (["-s", paths["style"], "--style-map", paths["map"], "--style-map", paths["map"]], "one --style-map"),
        (["-s", paths["style"], "--content-map", paths["map"]], "needs a map"),
    ]:
        assert main([*common, *bad]) == 2
        assert message in capsys.readouterr().err
