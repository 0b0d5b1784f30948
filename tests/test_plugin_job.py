"""job.py: one layer's StylizeJob from validated settings, checked against the protocol's own
parsing, run with the host Python."""

from __future__ import annotations

import struct

import pytest
from job import LAYER_MASK, LAYER_MASK_INVERSE, build_job, region_masks, style_weights
from settings import (
    Settings,
    SettingsError,
    paths_to_bytes,
    result_layer_name,
    settings_from_bytes,
    settings_to_bytes,
    validate,
    with_paths,
)

from nst_common.framing import Limits, Message
from nst_common.messages import RawImage, job_message, parse_job

# What a `hello` with two style methods and Johnson's mosaic and candy installed offers.
AVAILABLE: dict[str, list[str] | None] = {
    "gatys": None,
    "adain": None,
    "johnson": ["mosaic", "candy"],
    "cyclegan": [],
}


def floats(*values: float) -> bytes:
    return struct.pack(f"<{len(values)}f", *values)


def test_build_job_sends_file_and_layer_styles_and_the_selection() -> None:
    s = validate(
        Settings.of(style_file="/a.png", style2_layer="L", style2_weight=0.25, size=64, preset="draft"),
        AVAILABLE,
    )
    content = RawImage(2, 1, 3, "f32", floats(*[0.5] * 6))
    style_pixels = RawImage(1, 1, 3, "f32", floats(1, 0, 0))
    sel = RawImage(2, 1, 1, "f32", floats(1.0, 0.0))
    w1, w2 = style_weights(s)
    job = build_job(s, content, [("/a.png", w1), (style_pixels, w2)], sel)
    header, blobs = job_message(job)
    assert header["method"] == "gatys"
    assert header["params"]["size"] == 64 and header["params"]["preset"] == "draft"
    assert "model" not in header["params"] and "iterations" not in header["params"]
    assert s.with_engine(iterations=3).engine_params()["iterations"] == 3
    assert "iterations" not in Settings.of(method="adain", iterations=3).engine_params()
    assert header["styles"][0] == {"weight": 0.75, "path": "/a.png"}
    assert header["styles"][1]["weight"] == 0.25 and "image" in header["styles"][1]
    assert header["selection"]["channels"] == 1
    assert len(blobs) == 3


def test_a_layer_mask_becomes_the_jobs_one_region() -> None:
    s = validate(Settings.of(style_file="/a.png"), AVAILABLE)
    content = RawImage(2, 1, 3, "f32", floats(*[0.5] * 6))
    mask = RawImage(2, 1, 1, "f32", floats(1.0, 0.25))
    header, blobs = job_message(build_job(s, content, [("/a.png", 1.0)], None, mask))
    assert header["params"]["regions"] == [{"mask": LAYER_MASK}]
    job = parse_job(Message(header, [memoryview(b) for b in blobs]), Limits())  # the engine's wire checks
    assert bytes(job.masks[LAYER_MASK].data) == floats(1.0, 0.25)
    plain, _ = job_message(build_job(s, content, [("/a.png", 1.0)], None))
    assert "regions" not in plain["params"] and "masks" not in plain
    assert Settings.of().layer_mask == "confine"  # by default a masked layer is styled only where it shows


def test_split_by_the_layer_mask_gives_black_to_the_second_style() -> None:
    with pytest.raises(SettingsError, match="second style"):
        validate(Settings.of(style_file="/a.png", layer_mask="split"), AVAILABLE)
    s = validate(Settings.of(style_file="/a.png", style2_file="/b.png", layer_mask="split"), AVAILABLE)
    assert style_weights(s) == (1.0, 1.0)
    content = RawImage(2, 1, 3, "f32", floats(*[0.5] * 6))
    styles = [("/a.png", 1.0), ("/b.png", 1.0)]
    header, blobs = job_message(
        build_job(s, content, styles, None, RawImage(2, 1, 1, "f32", floats(1.0, 0.25)))
    )
    assert header["params"]["regions"] == [
        {"mask": LAYER_MASK, "style": 0},
        {"mask": LAYER_MASK_INVERSE, "style": 1},
    ]
    job = parse_job(Message(header, [memoryview(b) for b in blobs]), Limits())
    assert bytes(job.masks[LAYER_MASK_INVERSE].data) == floats(0.0, 0.75)
    white, _ = job_message(build_job(s, content, styles, None, RawImage(2, 1, 1, "f32", floats(1.0, 1.0))))
    assert white["params"]["regions"] == [{"mask": LAYER_MASK, "style": 0}]  # no empty region


def test_semantic_maps_travel_with_the_content_and_the_first_style() -> None:
    for bad, fragment in [
        (
            Settings.of(style_file="/a.png", content_map="Labels"),
            "both label maps: a “Content label map” and a “Style label map”",
        ),
        (Settings.of(method="johnson", content_map="L", style_map="S"), "Gatys or AdaIN"),
        (Settings.of(style_file="/a.png", content_map="L", style_map="S", map_weight=2.0), "strictness"),
    ]:
        with pytest.raises(SettingsError, match=fragment):
            validate(bad, AVAILABLE)
    s = validate(Settings.of(style_file="/a.png", content_map="L", style_map="S", map_weight=0.5), AVAILABLE)
    content = RawImage(2, 1, 3, "f32", floats(*[0.5] * 6))
    content_map = RawImage(2, 1, 3, "f32", floats(1, 0, 0, 0, 0, 1))
    style = RawImage(1, 1, 3, "f32", floats(0, 1, 0))
    style_map = RawImage(1, 1, 3, "f32", floats(0, 0, 1))
    job = build_job(s, content, [(style, 1.0)], None, None, (content_map, style_map))
    header, blobs = job_message(job)
    assert header["params"]["map_weight"] == 0.5 and "regions" not in header["params"]
    got = parse_job(Message(header, [memoryview(b) for b in blobs]), Limits())
    assert got.content_map is not None and bytes(got.content_map.data) == content_map.data
    assert got.styles[0].map is not None and bytes(got.styles[0].map.data) == style_map.data


def test_region_masks_come_from_channels_or_the_layer_mask_and_must_select_something() -> None:
    s = validate(
        Settings.of(
            layer_mask="regions",
            region1_source="channel",
            region1_channel="Left",
            region1_style_file="/red.png",
            region2_source="layer-mask-inverse",
            region2_style_file="/blue.png",
            region3_source="layer-mask",
            region3_style_file="/red.png",
        ),
        AVAILABLE,
    )
    channel = RawImage(2, 1, 1, "f32", floats(1.0, 0.0))
    layer_mask = RawImage(2, 1, 1, "f32", floats(0.25, 1.0))
    got = region_masks(s, "Photo", layer_mask, {1: channel})
    assert {n: bytes(m.data) for n, m in got.items()} == {
        1: floats(1.0, 0.0),
        2: floats(0.75, 0.0),
        3: floats(0.25, 1.0),
    }
    with pytest.raises(SettingsError, match="“Photo” has no mask"):
        region_masks(s, "Photo", None, {1: channel})
    with pytest.raises(SettingsError, match="Region 1 \\(channel “Left”\\) selects nothing over “Photo”"):
        region_masks(s, "Photo", layer_mask, {1: RawImage(2, 1, 1, "f32", floats(0.0, 0.0))})
    white = RawImage(2, 1, 1, "f32", floats(1.0, 1.0))
    with pytest.raises(SettingsError, match="Region 2 \\(the layer mask inverted\\) selects nothing"):
        region_masks(s, "Photo", white, {1: channel})


def test_regions_become_the_jobs_masks_each_with_its_own_style() -> None:
    s = validate(
        Settings.of(
            layer_mask="regions",
            region1_source="channel",
            region1_channel="Left",
            region1_style_file="/art/red.png",
            region3_source="channel",
            region3_channel="Right",
            region3_style_layer="Blue",
            region3_style_file="/ignored.png",  # a layer wins over the file
            size=64,
        ),
        AVAILABLE,
    )
    assert result_layer_name("Photo", s) == "Photo (red + Blue, gatys)"
    content = RawImage(2, 1, 3, "f32", floats(*[0.5] * 6))
    blue = RawImage(1, 1, 3, "f32", floats(0, 0, 1))
    masks = {1: RawImage(2, 1, 1, "f32", floats(1.0, 0.0)), 3: RawImage(2, 1, 1, "f32", floats(0.0, 1.0))}
    job = build_job(s, content, [("/art/red.png", 1.0), (blue, 1.0)], None, None, None, masks)
    header, blobs = job_message(job)
    assert header["params"]["regions"] == [{"mask": "region-1", "style": 0}, {"mask": "region-3", "style": 1}]
    got = parse_job(Message(header, [memoryview(b) for b in blobs]), Limits())  # the engine's wire checks
    assert bytes(got.masks["region-3"].data) == floats(0.0, 1.0)
    assert [st.path for st in got.styles] == ["/art/red.png", None]
    back, _ = settings_from_bytes(settings_to_bytes(s, 1))
    back = with_paths(back, paths_to_bytes(s))
    assert back == s  # regions survive the parasite, so a re-run finds its channels again by name
