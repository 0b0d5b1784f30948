"""The pipeline around every method: alpha, grey, bit depth, selection, and what `hello` reports."""

from __future__ import annotations

from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
import torch

from engine import weights
from engine.compute.cache import ModelCache
from engine.errors import CancelToken, UserError
from engine.imaging import images
from engine.pipeline import capabilities, run_job
from nst_common.messages import RawImage, StyleRef, StylizeJob

GATYS_FAST = {"preset": "draft", "iterations": 3, "device": "cpu"}


def raw(pixels: np.ndarray, dtype: str) -> RawImage:
    return images.to_raw(pixels, dtype)


def stripes(height: int, width: int, channels: int) -> np.ndarray:
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    base = 0.5 + 0.4 * np.sin(x * 0.7)[..., None] * np.cos(y * 0.3)[..., None]
    return np.repeat(base, channels, axis=2).astype(np.float32)


def run(job: StylizeJob) -> RawImage:
    return run_job(job, lambda p: None, CancelToken(), ModelCache())


def style_ref() -> StyleRef:
    rng = np.random.default_rng(0)
    return StyleRef(image=raw(rng.random((24, 24, 3), dtype=np.float32), "u8"))


@pytest.mark.parametrize(("channels", "dtype"), [(1, "u16"), (2, "u8"), (3, "f32"), (4, "u16")])
def test_result_has_the_content_format_and_keeps_alpha(channels: int, dtype: str) -> None:
    pixels = stripes(20, 28, channels)
    if channels in (2, 4):
        pixels[..., -1] = np.linspace(0, 1, 28, dtype=np.float32)[None, :]
    content = raw(pixels, dtype)
    result = run(StylizeJob("gatys", GATYS_FAST, content, [style_ref()]))
    assert (result.width, result.height, result.channels, result.dtype) == (28, 20, channels, dtype)
    out = images.from_raw(result)
    if channels in (2, 4):
        assert np.array_equal(out[..., -1], images.from_raw(content)[..., -1])
    assert np.abs(out - images.from_raw(content)).max() > 0.02  # the colour did change


def test_outside_the_selection_the_bytes_are_exactly_the_content() -> None:
    content = raw(stripes(24, 24, 3), "u8")
    selection = np.zeros((24, 24, 1), np.float32)
    selection[6:18, 6:18] = 1.0
    job = StylizeJob("gatys", GATYS_FAST, content, [style_ref()], selection=raw(selection, "f32"))
    out = np.frombuffer(run(job).data, np.uint8).reshape(24, 24, 3)
    original = np.frombuffer(content.data, np.uint8).reshape(24, 24, 3)
    outside = selection[..., 0] == 0
    assert np.array_equal(out[outside], original[outside])
    assert np.abs(out[~outside].astype(int) - original[~outside]).mean() > 3


def test_bad_jobs_are_user_errors() -> None:
    content = raw(stripes(16, 16, 3), "u8")
    with pytest.raises(UserError, match="needs at least one style"):
        run(StylizeJob("gatys", GATYS_FAST, content, []))
    with pytest.raises(UserError, match="unknown method"):
        run(StylizeJob("nope", {}, content, [style_ref()]))
    with pytest.raises(UserError, match="image not found"):
        run(StylizeJob("gatys", GATYS_FAST, content, [StyleRef(path="/no/such/style.jpg")]))
    with pytest.raises(UserError, match="device"):
        run(StylizeJob("gatys", {**GATYS_FAST, "device": "tpu"}, content, [style_ref()]))


def test_hello_lists_a_model_only_once_its_weights_are_installed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, zoo: ModuleType
) -> None:
    monkeypatch.setenv("NST_HOME", str(tmp_path / "home"))
    before = capabilities()["methods"]
    assert before["gatys"]["ready"] is True
    johnson = before["johnson"]
    assert (johnson["needs_style"], johnson["guided"], johnson["ready"]) == (False, False, False)
    assert before["gatys"]["has_models"] is False and "models" not in before["gatys"]
    assert not any(m["installed"] for m in johnson["models"])
    adain = before["adain"]
    assert (adain["needs_style"], adain["has_models"], adain["ready"]) == (True, True, False)
    published = ("published", ["adain_vgg", "adain_decoder"])
    assert [(m["id"], m["weights"]) for m in adain["models"]] == [published]

    file = tmp_path / "candy.pth"
    torch.save(zoo.johnson_state_dict(zoo.johnson_model()), file)  # no published checksum: pinned on import
    weights.import_file("johnson_candy", file)
    after = capabilities()["methods"]["johnson"]
    assert [m["id"] for m in after["models"] if m["installed"]] == ["candy"] and after["ready"] is True


@pytest.mark.parametrize("dtype", ["u8", "u16", "f32"])
@pytest.mark.parametrize("channels", [1, 2, 3, 4])
def test_band_wise_conversion_equals_the_whole_image_conversion(channels: int, dtype: str) -> None:
    """Large layers are decoded and encoded a band of rows at a time (no full-size temporaries):
    the bytes must be those of converting the whole image at once."""
    rng = np.random.default_rng(channels)
    height = 2 * images.BAND_ROWS + 17  # three bands, the last one short
    pixels = rng.random((height, 5, channels), dtype=np.float32)
    pixels[0, 0] = 1.0  # the top of the range survives the band-wise scaling
    raw_in = raw(pixels, dtype)
    whole = images.from_raw(raw_in)
    rgb, alpha = images.rgb_from_raw(raw_in)
    expected_rgb, expected_alpha = images.split_alpha(whole)
    assert np.array_equal(rgb, expected_rgb) and rgb.dtype == np.float32
    assert (alpha is None) == (expected_alpha is None)
    if alpha is not None:
        assert np.array_equal(alpha, expected_alpha)
    out = images.rgb_to_raw(rgb, alpha, channels, dtype)
    if dtype == "f32" and channels < 3:  # grey goes back through luma weights that sum to 1 +- 1 ulp
        assert np.abs(images.from_raw(out) - whole).max() < 1e-6
    else:
        assert bytes(out.data) == bytes(raw_in.data)  # decoding then encoding gives the bytes back
    assert (out.width, out.height, out.channels, out.dtype) == (5, height, channels, dtype)
