"""settings.py (and model_choice.py's reading of the engine's offer), run with the host Python."""

from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "plugin" / "neural_style"))

from model_choice import describe_methods, method_models
from settings import (
    Settings,
    SettingsError,
    check_layer,
    check_style_files,
    paths_to_bytes,
    regions,
    result_layer_name,
    settings_from_bytes,
    settings_to_bytes,
    validate,
    with_paths,
)

HELLO = {
    "type": "hello",
    "capabilities": {
        "methods": {
            "gatys": {"needs_style": True, "has_models": False},
            "adain": {
                "needs_style": True,
                "has_models": True,
                "models": [
                    {"id": "published", "installed": False, "weights": ["adain_vgg", "adain_decoder"]},
                    {"id": "mine", "installed": True, "weights": ["adain_mine", "hed"]},
                ],
            },
            "johnson": {
                "needs_style": False,
                "has_models": True,
                "models": [
                    {"id": "mosaic", "installed": True},
                    {"id": "candy", "installed": True},
                    {"id": "udnie", "installed": False},
                ],
            },
            "cyclegan": {
                "needs_style": False,
                "has_models": True,
                "models": [{"id": "style_monet", "installed": False}],
            },
        }
    },
}
AVAILABLE = method_models(HELLO)


def test_method_models_reads_has_models_and_models() -> None:
    assert AVAILABLE == {"gatys": None, "adain": ["mine"], "johnson": ["mosaic", "candy"], "cyclegan": []}
    text = describe_methods(AVAILABLE)
    assert "johnson: models mosaic, candy" in text and "adain: models mine" in text
    assert "cyclegan: no models installed yet (choose one to download it)" in text


def test_validate_accepts_a_gatys_run_and_fills_the_default_model() -> None:
    s = validate(Settings.of(method="gatys", style_file="/s.png"), AVAILABLE)
    assert s.method == "gatys"
    assert validate(Settings.of(method="johnson"), AVAILABLE).get("model") == "mosaic"
    assert validate(Settings.of(method="adain", style_file="/s.png"), AVAILABLE).get("model") == "mine"
    # GIMP hands an unset text argument over as None
    unset = Settings.of(method="adain", style_file="/s", model=None)
    assert validate(unset, AVAILABLE).get("model") == "mine"


def test_a_model_that_is_not_installed_names_the_weights_to_pull() -> None:
    """AdaIN's published model is two files: the message names both, as the engine lists them."""
    pulls = {
        m: {x["id"]: x.get("weights", []) for x in i.get("models", [])}
        for m, i in HELLO["capabilities"]["methods"].items()
    }
    adain = Settings.of(method="adain", style_file="/s.png", model="published")
    with pytest.raises(SettingsError, match="nst models pull adain_vgg adain_decoder"):
        validate(adain, AVAILABLE, None, pulls)
    with pytest.raises(SettingsError, match="nst models pull johnson_udnie"):
        validate(Settings.of(method="johnson", model="udnie"), AVAILABLE, None, pulls)


@pytest.mark.parametrize(
    ("settings", "fragment"),
    [
        (Settings.of(method="gatys"), "needs a style"),
        (Settings.of(method="johnson", model="udnie"), "'udnie' is not installed"),
        (Settings.of(method="nope", style_file="/s"), "“Method” cannot be 'nope'"),
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
        validate(settings, AVAILABLE)


def test_validate_rejects_a_method_the_engine_lacks() -> None:
    with pytest.raises(SettingsError, match="does not offer"):
        validate(Settings.of(method="adain", style_file="/s"), {"gatys": None})


def test_check_layer_refuses_groups_and_in_place_text() -> None:
    with pytest.raises(SettingsError, match="layer group"):
        check_layer("G", is_group=True, is_text=False, settings=Settings.of())
    with pytest.raises(SettingsError, match="text layer"):
        check_layer("T", is_group=False, is_text=True, settings=Settings.of(output="in-place"))
    check_layer("T", is_group=False, is_text=True, settings=Settings.of(output="new-layer"))


def test_result_layer_names() -> None:
    s = Settings.of(method="gatys", style_file="/art/starry night.jpg")
    assert result_layer_name("Background", s) == "Background (starry night, gatys)"
    two = replace(s, style2_layer="Waves", style2_weight=0.3)
    assert result_layer_name("B", two) == "B (starry night + Waves, gatys)"
    assert result_layer_name("B", Settings.of(method="johnson", model="candy")) == "B (candy, johnson)"


def test_settings_round_trip_through_parasite_bytes() -> None:
    s = Settings.of(method="adain", style_layer="Paint", strength=0.5, preset="best", only_selection=False)
    back, tattoo = settings_from_bytes(settings_to_bytes(s, 42))
    assert (back, tattoo) == (s, 42)


def test_settings_from_bytes_drops_unknown_and_mistyped_keys() -> None:
    data = b'{"version": 1, "source_tattoo": 7, "settings": {"method": "adain", "strength": 2,'
    data += b' "size": "big", "future": 1}}'
    s, tattoo = settings_from_bytes(data)
    assert (s.method, s.get("strength"), s.get("size"), tattoo) == ("adain", 2.0, 0, 7)


@pytest.mark.parametrize("data", [b"not json", b'{"version": 99, "settings": {}}', b"[]"])
def test_settings_from_bytes_rejects_garbage(data: bytes) -> None:
    with pytest.raises(SettingsError):
        settings_from_bytes(data)


def test_regions_mode_needs_a_mask_and_a_style_per_region_in_use() -> None:
    mode = {"layer_mask": "regions"}
    for bad, fragment in [
        (Settings.of(**mode), "at least one region"),
        (
            Settings.of(**mode, region2_source="channel", region2_style_file="/a.png"),
            "no “Channel” is chosen",
        ),
        (Settings.of(**mode, region1_source="layer-mask"), "Region 1 needs a style"),
        (
            Settings.of(**mode, region3_source="lasso", region3_style_file="/a.png"),
            "Region 3's “Mask” cannot be 'lasso'",
        ),
        (Settings.of(method="johnson", **mode, region1_source="layer-mask"), "Gatys or AdaIN"),
        (
            Settings.of(
                **mode,
                region1_source="layer-mask",
                region1_style_file="/a",
                content_map="L",
                style_map="S",
            ),
            "“Regions”",
        ),
    ]:
        with pytest.raises(SettingsError, match=fragment):
            validate(bad, AVAILABLE)
    # The first style is not needed: each region brings its own; an unused row is ignored.
    s = validate(
        Settings.of(**mode, region2_source="channel", region2_channel="Sky", region2_style_layer="Paint",
                 region4_style_file="/unused.png"),
        AVAILABLE,
    )  # fmt: skip
    assert [(r.number, r.channel, r.style) for r in regions(s)] == [(2, "Sky", ("", "Paint"))]
    assert regions(replace(s, layer_mask="confine")) == []


def test_saved_settings_name_style_files_and_their_paths_last_while_the_image_is_open() -> None:
    s = Settings.of(style_file="/home/me/paintings/starry.jpg", region2_style_file="/home/me/b.png")
    saved = settings_to_bytes(s, 3)
    assert b"/home/me" not in saved
    back, _ = settings_from_bytes(saved)
    assert (back.style_file, back.region2_style_file) == ("starry.jpg", "b.png")
    assert with_paths(back, paths_to_bytes(s)) == s
    moved = with_paths(back, paths_to_bytes(replace(s, style_file="/x/other.jpg")))
    assert moved.style_file == "starry.jpg"  # a path to another file is not taken for this one

    remembered = replace(s, remember_paths=True)
    assert settings_from_bytes(settings_to_bytes(remembered, 3))[0] == remembered


def test_a_style_file_the_run_cannot_read_is_named_with_its_field(tmp_path: Path) -> None:
    """Only the files the run reads count: a layer wins over its file, a second style counts with a
    weight or a split, a region only when in use."""
    painting = tmp_path / "painting.png"
    painting.write_bytes(b"pixels")
    gone = str(tmp_path / "gone.jpg")
    for settings, fragments in [
        (
            Settings.of(style_file=gone),
            [f"The style file {gone} does not exist", "“Style file”", "“Style layer”"],
        ),
        (Settings.of(style_file=str(tmp_path)), [f"{tmp_path} is a folder"]),
        (
            Settings.of(style_file=str(painting), style2_file=gone, style2_weight=0.5),
            [f"The second style file {gone} does not exist", "“Second style file”"],
        ),
        (
            Settings.of(layer_mask="regions", region2_source="layer-mask", region2_style_file=gone),
            [f"Region 2's style file {gone} does not exist", "its “Style layer”"],
        ),
    ]:
        with pytest.raises(SettingsError) as err:
            check_style_files(validate(settings, AVAILABLE))
        for fragment in fragments:
            assert fragment in str(err.value)
    for fine in [
        Settings.of(style_file=str(painting)),
        Settings.of(style_file=gone, style_layer="Paint"),  # the layer is the style
        Settings.of(style_file=str(painting), style2_file=gone),  # weight 0: not read
        Settings.of(method="johnson", style_file=gone),
        Settings.of(
            layer_mask="regions",
            region1_source="layer-mask",
            region1_style_file=str(painting),
            region3_style_file=gone,
        ),
    ]:
        check_style_files(validate(fine, AVAILABLE))
