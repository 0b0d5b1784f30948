"""The settings contract across the socket: whatever the plug-in's own validation accepts, the
engine accepts, for every method and every value that matters.

The variants come from the declaration itself (nst_common/settings.py): each dialog setting at the
bounds of its procedure argument and of each method's range, each choice, each installed model, then
masks, a split mask, regions, two styles, label maps and a selection. Each is validated by the
plug-in's `settings.validate` against the real engine's `hello`, built by `job.build_job`, and sent
by the plug-in's `EngineClient` over a real Unix socket to a real server. That server's runner is
the pipeline's own preparation (settings, images, styles, masks, guides and the plan, everything
before the method computes): running 100 000 Gatys iterations per variant would prove nothing more
about the contract. One job per method then runs in full with the dialog's defaults.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from client import EngineClient, EngineError
from job import build_job, region_masks, style_weights
from model_choice import method_models
from settings import DIALOG_SETTINGS, STYLELESS_METHODS, Settings, SettingsError, dialog_value, validate

from engine import pipeline
from engine.service.server import Server
from nst_common import settings as declared
from nst_common.messages import RawImage

W, H = 24, 20
NO_CONFIG = "/nonexistent/engine.json"


def _raw(channels: int, seed: int, width: int = W, height: int = H) -> RawImage:
    rng = np.random.default_rng(seed)
    pixels = rng.random((height, width, channels), dtype=np.float32)
    return RawImage(width, height, channels, "f32", pixels.tobytes())


def _mask(left: bool) -> RawImage:
    """Half the layer, white on the left or the right."""
    mask = np.zeros((H, W, 1), np.float32)
    mask[:, : W // 2] = 1.0
    return RawImage(W, H, 1, "f32", (mask if left else 1.0 - mask).tobytes())


def _labels() -> RawImage:
    """Two colour labels, top and bottom."""
    picture = np.zeros((H, W, 3), np.uint8)
    picture[: H // 2] = (255, 0, 0)
    picture[H // 2 :] = (0, 0, 255)
    return RawImage(W, H, 3, "u8", picture.tobytes())


def _values(row: declared.Setting, method: str, models: list[str]) -> list[Any]:
    """The dialog values of one setting worth sending: both bounds of the procedure argument and
    of the method's own range, the middle, each choice, each installed model."""
    if row.kind == "model":
        return list(models)
    if row.kind == "choice":
        return list(row.widest().choices)
    if row.kind == "bool":
        return [False, True]
    wide, own = row.widest(), row.for_method(method)
    bounds = {wide.lo, wide.hi, own.lo, own.hi, dialog_value(row, row.default)}
    values = sorted(b for b in bounds if b is not None)
    if row.kind == "float":
        values.append((values[0] + values[-1]) / 2)
    return values


def _variants(method: str, models: list[str]) -> Iterator[tuple[str, dict[str, Any], str]]:
    """(name, Settings.of fields, shape of the layer) for one method."""
    needs_style = declared.method(method).needs_style
    style = {"style_file": "STYLE"} if needs_style else {}
    yield "defaults", style, "plain"
    for row in DIALOG_SETTINGS:
        if method not in row.methods:
            continue
        for value in _values(row, method, models or []):
            yield f"{row.name}={value}", {**style, row.name: value}, "plain"
    yield "layer mask", style, "mask"
    yield "selection", style, "selection"
    yield "grey with alpha", style, "grey"
    if needs_style:
        two = {**style, "style2_layer": "Second", "style2_weight": 0.5}
        yield "two styles", two, "plain"
        yield "split", {**two, "layer_mask": "split"}, "mask"
        regions = {
            "layer_mask": "regions",
            "region1_source": "channel",
            "region1_channel": "Left",
            "region1_style_file": "STYLE",
            "region2_source": "layer-mask-inverse",
            "region2_style_layer": "Second",
        }
        yield "regions", regions, "mask"
        yield "label maps", {**style, "content_map": "Labels", "style_map": "Style labels"}, "plain"
        yield (
            "label maps, strictness 0",
            {**style, "content_map": "L", "style_map": "S", "map_weight": 0.0},
            "plain",
        )


def _job(settings: Settings, shape: str, style_file: Path) -> Any:
    """The job the plug-in builds for one layer of `shape`, as host.py does."""
    content = _raw(2, 1) if shape == "grey" else _raw(4 if shape == "mask" else 3, 1)
    if settings.method in STYLELESS_METHODS:
        styles: list[tuple[Any, float]] = []
    elif settings.layer_mask == "regions":
        styles = [(str(style_file), 1.0), (_raw(3, 3, 16, 16), 1.0)]
    else:
        w1, w2 = style_weights(settings)
        styles = [(str(style_file), w1)] + ([(_raw(3, 3, 16, 16), w2)] if w2 > 0 else [])
    layer_mask = _mask(left=True) if shape == "mask" else None
    masks = (
        region_masks(settings, "Photo", layer_mask, {1: _mask(left=True)})
        if settings.layer_mask == "regions"
        else None
    )
    maps = (_labels(), _labels()) if settings.content_map else None
    selection = _mask(left=False) if shape == "selection" else None
    return build_job(settings, content, styles, selection, layer_mask, maps, masks)


def _prepare_only(job: Any, progress: Any, cancel: Any, cache: Any) -> RawImage:
    """The pipeline up to the method's compute: every check the engine makes of a job."""
    pipeline.prepare(job)
    return job.content


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory, zoo: Any) -> dict[str, str]:
    """An engine home with the upstream-layout models imported through `nst models import`."""
    import torch

    folder = tmp_path_factory.mktemp("weights")
    env = {"NST_HOME": str(folder / "home")}
    vgg, decoder = zoo.adain_models()
    files = {
        "johnson_candy": zoo.johnson_state_dict(zoo.johnson_model()),
        "adain_vgg": vgg.state_dict(),
        "adain_decoder": decoder.state_dict(),
        "cyclegan_style_monet": zoo.cyclegan_model().state_dict(),
    }
    for weight_id, state in files.items():
        torch.save(state, folder / f"{weight_id}.pth")
    for weight_id in files:
        done = subprocess.run(
            [sys.executable, "-m", "engine", "models", "import", weight_id, str(folder / f"{weight_id}.pth")],
            env={**__import__("os").environ, **env},
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, done.stderr
    return env


@pytest.fixture
def engine_home(installed: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    for key, value in installed.items():
        monkeypatch.setenv(key, value)


@pytest.fixture
def style_file(tmp_path: Path) -> Path:
    from PIL import Image

    path = tmp_path / "style.png"
    rng = np.random.default_rng(5)
    # The size of the layers, so that the label maps fit it too.
    Image.fromarray(rng.integers(0, 256, (H, W, 3), dtype=np.uint8)).save(path)
    return path


def _client(server: Server) -> tuple[EngineClient, dict[str, list[str] | None], list[str]]:
    client = EngineClient(NO_CONFIG, endpoint=str(server.address))
    hello = client.hello()
    return client, method_models(hello), hello["devices"]


@pytest.mark.parametrize("method", declared.METHOD_NAMES)
def test_what_the_plugin_accepts_the_engine_accepts(
    method: str, engine_home: None, make_server: Callable[..., Server], style_file: Path
) -> None:
    client, available, devices = _client(make_server(runner=_prepare_only))
    accepted, refused = [], []
    for name, fields, shape in _variants(method, available[method]):
        values = {k: str(style_file) if v == "STYLE" else v for k, v in fields.items()}
        try:
            settings = validate(Settings.of(method=method, **values), available, devices)
        except SettingsError as exc:  # the plug-in says what to change; nothing reaches the engine
            refused.append((name, str(exc)))
            continue
        try:
            client.stylize(_job(settings, shape, style_file), lambda *_: None, lambda: False)
        except EngineError as exc:
            pytest.fail(f"{method}, {name}: the plug-in accepted it but the engine refused: {exc.message}")
        accepted.append(name)
    # The plug-in refuses only what the declaration or the engine's hello rules out.
    for name, why in refused:
        assert any(word in why for word in ("must be", "no cuda device", "no mps device")), (name, why)
    assert "defaults" in accepted and len(accepted) >= 8, accepted


@pytest.mark.parametrize("method", declared.METHOD_NAMES)
def test_every_method_runs_with_the_dialogs_defaults(
    method: str, engine_home: None, make_server: Callable[..., Server], style_file: Path
) -> None:
    """The real pipeline, the plug-in's own Settings() defaults (Gatys kept short)."""
    client, available, devices = _client(make_server())
    extra = {"size": 32, "iterations": 2} if method == "gatys" else {}
    style = {} if method in STYLELESS_METHODS else {"style_file": str(style_file)}
    settings = validate(Settings.of(method=method, **style, **extra), available, devices)
    job = _job(settings, "plain", style_file)
    result = client.stylize(job, lambda *_: None, lambda: False)
    assert (result.width, result.height, result.channels) == (W, H, 3)
    before = np.frombuffer(job.content.data, np.float32)
    after = np.frombuffer(result.data, np.float32) if result.dtype == "f32" else None
    assert after is not None and not np.allclose(before, after, atol=1e-3), "the result is the content"


def test_the_declaration_matches_the_engine() -> None:
    """Where the engine keeps its own table (presets, backbones, the smallest Gatys tile), the
    declaration lists the same."""
    from engine.backbones import BACKBONES
    from engine.methods.gatys import presets, tiles

    assert declared.BY_NAME["preset"].choices == tuple(presets.PRESETS)
    assert declared.BY_NAME["backbone"].choices == BACKBONES
    assert declared.BY_NAME["tile"].for_method("gatys").lo == 2 * tiles.HALO + tiles.ALIGN
    for row in declared.SETTINGS:
        assert row.methods and set(row.methods) <= set(declared.METHOD_NAMES), row.name
        assert row.default is None or declared.check_value(row, row.default) == row.default, row.name


def test_nst_stylize_help_says_each_numbers_range_where_methods_differ() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "engine", "stylize", "--help"], capture_output=True, text=True, timeout=60
    )
    text = " ".join(done.stdout.split())
    for option, values in (
        ("--strength", "(0 to 1; gatys 0 to 10)"),
        ("--tile", "(16 to 16384; gatys 176 to 16384)"),
        ("--seed", "(0 to 2147483647)"),
        ("--style-scale", "(0.05 to 8)"),
    ):
        after = text.split(f"{option} {option[2:].upper().replace('-', '_')} ")[1]
        assert values in after.split(" --")[0], (option, after[:200])
