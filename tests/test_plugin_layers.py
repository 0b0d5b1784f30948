"""layers.py, the plug-in's GIMP-free half, run with the host Python."""

from __future__ import annotations

import struct
import sys
from dataclasses import replace
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "plugin" / "neural_style"))

import layers
from layers import Settings, SettingsError

from nst_common.messages import RawImage, job_message

HELLO = {
    "type": "hello",
    "capabilities": {
        "methods": {
            "gatys": {"needs_style": True},
            "adain": {"needs_style": True},
            "johnson": {
                "needs_style": False,
                "models": [
                    {"id": "mosaic", "installed": True},
                    {"id": "candy", "installed": True},
                    {"id": "udnie", "installed": False},
                ],
            },
            "cyclegan": {"needs_style": False, "models": [{"id": "style_monet", "installed": False}]},
        }
    },
}
AVAILABLE = layers.method_models(HELLO)


def floats(*values: float) -> bytes:
    return struct.pack(f"<{len(values)}f", *values)


def test_method_models_reads_needs_style_and_models() -> None:
    assert AVAILABLE == {"gatys": None, "adain": None, "johnson": ["mosaic", "candy"], "cyclegan": []}
    text = layers.describe_methods(AVAILABLE)
    assert "johnson: models mosaic, candy" in text
    assert "cyclegan: no models installed yet (choose one to download it)" in text


def test_validate_accepts_a_gatys_run_and_fills_the_default_model() -> None:
    s = layers.validate(Settings.of(method="gatys", style_file="/s.png"), AVAILABLE)
    assert s.method == "gatys"
    assert layers.validate(Settings.of(method="johnson"), AVAILABLE).get("model") == "mosaic"


@pytest.mark.parametrize(
    ("settings", "fragment"),
    [
        (Settings.of(method="gatys"), "needs a style"),
        (Settings.of(method="johnson", model="udnie"), "'udnie' is not installed"),
        (Settings.of(method="nope", style_file="/s"), "Unknown method"),
        (Settings.of(style_file="/s", preset="ultra"), "Quality: setting 'preset' must be one of"),
        (Settings.of(style_file="/s", style2_weight=0.5), "no second style"),
        (
            Settings.of(style_file="/s", strength=-0.5),
            "Strength: setting 'strength' must be between 0 and 10",
        ),
        (Settings.of(method="johnson", strength=2.0), "setting 'strength' must be between 0 and 1"),
        (Settings.of(method="johnson", preserve_colors="histogram"), "must be one of none, luminance;"),
        (Settings.of(style_file="/s", size=8), "Work size: setting 'size' must be between 16"),
        (Settings.of(style_file="/s", iterations=-1), "Iterations"),
    ],
)
def test_validate_rejects_with_an_actionable_message(settings: Settings, fragment: str) -> None:
    with pytest.raises(SettingsError, match=fragment):
        layers.validate(settings, AVAILABLE)


def test_validate_rejects_a_method_the_engine_lacks() -> None:
    with pytest.raises(SettingsError, match="does not offer"):
        layers.validate(Settings.of(method="adain", style_file="/s"), {"gatys": None})


def test_check_layer_refuses_groups_and_in_place_text() -> None:
    with pytest.raises(SettingsError, match="layer group"):
        layers.check_layer("G", is_group=True, is_text=False, settings=Settings.of())
    with pytest.raises(SettingsError, match="text layer"):
        layers.check_layer("T", is_group=False, is_text=True, settings=Settings.of(output="in-place"))
    layers.check_layer("T", is_group=False, is_text=True, settings=Settings.of(output="new-layer"))


def test_result_layer_names() -> None:
    s = Settings.of(method="gatys", style_file="/art/starry night.jpg")
    assert layers.result_layer_name("Background", s) == "Background (starry night, gatys)"
    two = replace(s, style2_layer="Waves", style2_weight=0.3)
    assert layers.result_layer_name("B", two) == "B (starry night + Waves, gatys)"
    assert layers.result_layer_name("B", Settings.of(method="johnson", model="candy")) == "B (candy, johnson)"


def test_settings_round_trip_through_parasite_bytes() -> None:
    s = Settings.of(method="adain", style_layer="Paint", strength=0.5, preset="best", only_selection=False)
    back, tattoo = layers.settings_from_bytes(layers.settings_to_bytes(s, 42))
    assert (back, tattoo) == (s, 42)


def test_settings_from_bytes_drops_unknown_and_mistyped_keys() -> None:
    data = b'{"version": 1, "source_tattoo": 7, "settings": {"method": "adain", "strength": 2,'
    data += b' "size": "big", "future": 1}}'
    s, tattoo = layers.settings_from_bytes(data)
    assert (s.method, s.get("strength"), s.get("size"), tattoo) == ("adain", 2.0, 0, 7)


@pytest.mark.parametrize("data", [b"not json", b'{"version": 99, "settings": {}}', b"[]"])
def test_settings_from_bytes_rejects_garbage(data: bytes) -> None:
    with pytest.raises(SettingsError):
        layers.settings_from_bytes(data)


def test_pixels_round_trip_f32() -> None:
    data = floats(0.0, 0.25, 0.5, 1.0, 0.1, 0.2, 0.3, 0.4)
    raw = layers.raw_from_pixels(data, 2, 1, 4)
    assert (raw.width, raw.height, raw.channels, raw.dtype) == (2, 1, 4, "f32")
    assert layers.pixels_from_raw(raw, 2, 1, 4) == data


def test_pixels_from_integer_results_are_scaled() -> None:
    u8 = RawImage(2, 1, 1, "u8", bytes([0, 255]))
    assert struct.unpack("<2f", layers.pixels_from_raw(u8, 2, 1, 1)) == (0.0, 1.0)
    u16 = RawImage(1, 1, 1, "u16", struct.pack("<H", 65535))
    assert struct.unpack("<f", layers.pixels_from_raw(u16, 1, 1, 1)) == (1.0,)


def test_pixel_size_mismatches_are_errors() -> None:
    with pytest.raises(ValueError, match="expected 16 bytes"):
        layers.raw_from_pixels(b"\0" * 12, 2, 2, 1)
    with pytest.raises(ValueError, match="expected 2x2x3"):
        layers.pixels_from_raw(RawImage(2, 2, 4, "f32", b"\0" * 64), 2, 2, 3)


def test_selection_coverage() -> None:
    def mask(*v: float) -> RawImage:
        return RawImage(len(v), 1, 1, "f32", floats(*v))

    assert layers.selection_coverage(mask(0.0, 0.0)) == "none"
    assert layers.selection_coverage(mask(1.0, 1.0)) == "full"
    assert layers.selection_coverage(mask(0.0, 0.4, 1.0)) == "partial"


def test_build_job_sends_file_and_layer_styles_and_the_selection() -> None:
    s = layers.validate(
        Settings.of(style_file="/a.png", style2_layer="L", style2_weight=0.25, size=64, preset="draft"),
        AVAILABLE,
    )
    content = RawImage(2, 1, 3, "f32", floats(*[0.5] * 6))
    style_pixels = RawImage(1, 1, 3, "f32", floats(1, 0, 0))
    sel = RawImage(2, 1, 1, "f32", floats(1.0, 0.0))
    w1, w2 = layers.style_weights(s)
    job = layers.build_job(s, content, [("/a.png", w1), (style_pixels, w2)], sel)
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
    from nst_common.framing import Limits, Message
    from nst_common.messages import parse_job

    s = layers.validate(Settings.of(style_file="/a.png"), AVAILABLE)
    content = RawImage(2, 1, 3, "f32", floats(*[0.5] * 6))
    mask = RawImage(2, 1, 1, "f32", floats(1.0, 0.25))
    header, blobs = job_message(layers.build_job(s, content, [("/a.png", 1.0)], None, mask))
    assert header["params"]["regions"] == [{"mask": layers.LAYER_MASK}]
    job = parse_job(Message(header, [memoryview(b) for b in blobs]), Limits())  # the engine's wire checks
    assert bytes(job.masks[layers.LAYER_MASK].data) == floats(1.0, 0.25)
    plain, _ = job_message(layers.build_job(s, content, [("/a.png", 1.0)], None))
    assert "regions" not in plain["params"] and "masks" not in plain
    assert Settings.of().layer_mask == "confine"  # by default a masked layer is styled only where it shows


def test_split_by_the_layer_mask_gives_black_to_the_second_style() -> None:
    from nst_common.framing import Limits, Message
    from nst_common.messages import parse_job

    with pytest.raises(SettingsError, match="second style"):
        layers.validate(Settings.of(style_file="/a.png", layer_mask="split"), AVAILABLE)
    s = layers.validate(Settings.of(style_file="/a.png", style2_file="/b.png", layer_mask="split"), AVAILABLE)
    assert layers.style_weights(s) == (1.0, 1.0)
    content = RawImage(2, 1, 3, "f32", floats(*[0.5] * 6))
    styles = [("/a.png", 1.0), ("/b.png", 1.0)]
    header, blobs = job_message(
        layers.build_job(s, content, styles, None, RawImage(2, 1, 1, "f32", floats(1.0, 0.25)))
    )
    assert header["params"]["regions"] == [
        {"mask": layers.LAYER_MASK, "style": 0},
        {"mask": layers.LAYER_MASK_INVERSE, "style": 1},
    ]
    job = parse_job(Message(header, [memoryview(b) for b in blobs]), Limits())
    assert bytes(job.masks[layers.LAYER_MASK_INVERSE].data) == floats(0.0, 0.75)
    white, _ = job_message(
        layers.build_job(s, content, styles, None, RawImage(2, 1, 1, "f32", floats(1.0, 1.0)))
    )
    assert white["params"]["regions"] == [{"mask": layers.LAYER_MASK, "style": 0}]  # no empty region


def test_semantic_maps_travel_with_the_content_and_the_first_style() -> None:
    from nst_common.framing import Limits, Message
    from nst_common.messages import parse_job

    for bad, fragment in [
        (Settings.of(style_file="/a.png", content_map="Labels"), "two label-map layers"),
        (Settings.of(method="johnson", content_map="L", style_map="S"), "Gatys or AdaIN"),
        (Settings.of(style_file="/a.png", content_map="L", style_map="S", map_weight=2.0), "strictness"),
    ]:
        with pytest.raises(SettingsError, match=fragment):
            layers.validate(bad, AVAILABLE)
    s = layers.validate(
        Settings.of(style_file="/a.png", content_map="L", style_map="S", map_weight=0.5), AVAILABLE
    )
    content = RawImage(2, 1, 3, "f32", floats(*[0.5] * 6))
    content_map = RawImage(2, 1, 3, "f32", floats(1, 0, 0, 0, 0, 1))
    style = RawImage(1, 1, 3, "f32", floats(0, 1, 0))
    style_map = RawImage(1, 1, 3, "f32", floats(0, 0, 1))
    job = layers.build_job(s, content, [(style, 1.0)], None, None, (content_map, style_map))
    header, blobs = job_message(job)
    assert header["params"]["map_weight"] == 0.5 and "regions" not in header["params"]
    got = parse_job(Message(header, [memoryview(b) for b in blobs]), Limits())
    assert got.content_map is not None and bytes(got.content_map.data) == content_map.data
    assert got.styles[0].map is not None and bytes(got.styles[0].map.data) == style_map.data


def test_regions_mode_needs_a_mask_and_a_style_per_region_in_use() -> None:
    regions = {"layer_mask": "regions"}
    for bad, fragment in [
        (Settings.of(**regions), "at least one region"),
        (
            Settings.of(**regions, region2_source="channel", region2_style_file="/a.png"),
            "no channel is chosen",
        ),
        (Settings.of(**regions, region1_source="layer-mask"), "Region 1 needs a style"),
        (Settings.of(**regions, region3_source="lasso", region3_style_file="/a.png"), "Unknown mask 'lasso'"),
        (Settings.of(method="johnson", **regions, region1_source="layer-mask"), "Gatys or AdaIN"),
        (
            Settings.of(
                **regions,
                region1_source="layer-mask",
                region1_style_file="/a",
                content_map="L",
                style_map="S",
            ),
            "regions",
        ),
    ]:
        with pytest.raises(SettingsError, match=fragment):
            layers.validate(bad, AVAILABLE)
    # The first style is not needed: each region brings its own; an unused row is ignored.
    s = layers.validate(
        Settings.of(**regions, region2_source="channel", region2_channel="Sky", region2_style_layer="Paint",
                 region4_style_file="/unused.png"),
        AVAILABLE,
    )  # fmt: skip
    assert [(r.number, r.channel, r.style) for r in layers.regions(s)] == [(2, "Sky", ("", "Paint"))]
    assert layers.regions(replace(s, layer_mask="confine")) == []


def test_region_masks_come_from_channels_or_the_layer_mask_and_must_select_something() -> None:
    s = layers.validate(
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
    got = layers.region_masks(s, "Photo", layer_mask, {1: channel})
    assert {n: bytes(m.data) for n, m in got.items()} == {
        1: floats(1.0, 0.0),
        2: floats(0.75, 0.0),
        3: floats(0.25, 1.0),
    }
    with pytest.raises(SettingsError, match="“Photo” has no mask"):
        layers.region_masks(s, "Photo", None, {1: channel})
    with pytest.raises(SettingsError, match="Region 1 \\(channel “Left”\\) selects nothing over “Photo”"):
        layers.region_masks(s, "Photo", layer_mask, {1: RawImage(2, 1, 1, "f32", floats(0.0, 0.0))})
    white = RawImage(2, 1, 1, "f32", floats(1.0, 1.0))
    with pytest.raises(SettingsError, match="Region 2 \\(the layer mask inverted\\) selects nothing"):
        layers.region_masks(s, "Photo", white, {1: channel})


def test_regions_become_the_jobs_masks_each_with_its_own_style() -> None:
    from nst_common.framing import Limits, Message
    from nst_common.messages import parse_job

    s = layers.validate(
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
    assert layers.result_layer_name("Photo", s) == "Photo (red + Blue, gatys)"
    content = RawImage(2, 1, 3, "f32", floats(*[0.5] * 6))
    blue = RawImage(1, 1, 3, "f32", floats(0, 0, 1))
    masks = {1: RawImage(2, 1, 1, "f32", floats(1.0, 0.0)), 3: RawImage(2, 1, 1, "f32", floats(0.0, 1.0))}
    job = layers.build_job(s, content, [("/art/red.png", 1.0), (blue, 1.0)], None, None, None, masks)
    header, blobs = job_message(job)
    assert header["params"]["regions"] == [{"mask": "region-1", "style": 0}, {"mask": "region-3", "style": 1}]
    got = parse_job(Message(header, [memoryview(b) for b in blobs]), Limits())  # the engine's wire checks
    assert bytes(got.masks["region-3"].data) == floats(0.0, 1.0)
    assert [st.path for st in got.styles] == ["/art/red.png", None]
    back, _ = layers.settings_from_bytes(layers.settings_to_bytes(s, 1))
    back = layers.with_paths(back, layers.paths_to_bytes(s))
    assert back == s  # regions survive the parasite, so a re-run finds its channels again by name


def test_saved_settings_name_style_files_and_the_session_keeps_their_paths() -> None:
    s = Settings.of(style_file="/home/me/paintings/starry.jpg", region2_style_file="/home/me/b.png")
    saved = layers.settings_to_bytes(s, 3)
    assert b"/home/me" not in saved
    back, _ = layers.settings_from_bytes(saved)
    assert (back.style_file, back.region2_style_file) == ("starry.jpg", "b.png")
    assert layers.with_paths(back, layers.paths_to_bytes(s)) == s
    moved = layers.with_paths(back, layers.paths_to_bytes(replace(s, style_file="/x/other.jpg")))
    assert moved.style_file == "starry.jpg"  # a path to another file is not taken for this one

    remembered = replace(s, remember_paths=True)
    assert layers.settings_from_bytes(layers.settings_to_bytes(remembered, 3))[0] == remembered
