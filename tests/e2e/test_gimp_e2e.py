"""End to end in real GIMP 3: the plug-in, run by gimp-console in a Debian trixie chroot, talks to
a real engine running outside the chroot through a Unix socket in a bind-mounted directory.

The chroot is built on first use by tools/gimp3-chroot.sh (needs root, debootstrap and network
to the Debian mirror; about a minute and a half).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from gimp_harness import HERE, install_plugin, run_gimp_batch, running_engine, write_style
from helpers import write_catalog

pytestmark = pytest.mark.gimp


def region_diff(src: dict, res: dict, sel: list[int]) -> tuple[float, float]:
    """Largest colour change inside and outside the selection, in image coordinates."""
    (ox, oy), (w, _h) = src["offsets"], src["size"]
    sx, sy, sw, sh = sel
    inside = outside = 0.0
    for i in range(0, len(src["pixels"]), 4):
        x, y = ox + (i // 4) % w, oy + (i // 4) // w
        d = max(abs(a - b) for a, b in zip(src["pixels"][i : i + 3], res["pixels"][i : i + 3], strict=True))
        if sx <= x < sx + sw and sy <= y < sy + sh:
            inside = max(inside, d)
        else:
            outside = max(outside, d)
    return inside, outside


def test_transfer_on_two_layers_with_mask_and_selection(gimp_chroot: Path, work: Path, engine: Path) -> None:
    style = work / "style.png"
    write_style(style)
    broken = work / "broken-style.png"
    broken.write_bytes(b"this is not an image")
    plugin_dir = install_plugin(work, {"python": "/nonexistent/python", "endpoint": f"unix:{engine}"})
    findings = run_gimp_batch(
        work,
        HERE / "batch_transfer.py",
        {
            "style": str(style),
            "broken_style": str(broken),
            "engine_json": str(plugin_dir / "engine.json"),
            "dead_socket": str(work / "run" / "nobody.sock"),
        },
    )
    before = findings["before"]
    assert [layer["name"] for layer in before] == ["Top", "Base"]
    steps = {step["name"]: step for step in findings["steps"]}

    # The engine rejects the job: an execution error that says why, and the image is unchanged.
    failed = steps["engine-fails"]
    assert failed["status"] == "execution-error", (failed["error"], findings["gimp_output"])
    assert "broken-style.png" in failed["error"], failed["error"]
    assert failed["after"] == before

    # Success: a result right above each source, same geometry, mask copied, sources untouched.
    ok = steps["success"]
    assert ok["status"] == "success", ok["error"]
    after = ok["after"]
    assert [layer["name"] for layer in after] == [
        "Top (style, gatys)",
        "Top",
        "Base (style, gatys)",
        "Base",
    ]
    assert after[1] == before[0] and after[3] == before[1]
    for result, source in ((after[0], before[0]), (after[2], before[1])):
        assert result["offsets"] == source["offsets"] and result["size"] == source["size"]
        assert result["mask"] == source["mask"]
        inside, outside = region_diff(source, result, findings["selection"])
        assert inside > 0.02, f"{result['name']}: nothing changed inside the selection"
        assert outside < 1e-3, f"{result['name']}: pixels outside the selection changed by {outside}"
    assert after[0]["mask"] is not None and min(after[0]["mask"]) == 0.0
    parasites = ok["parasites"]
    saved = parasites[0]["settings"]
    assert saved["engine"]["preset"] == "draft" and saved["engine"]["size"] == 64
    assert saved["style_file"] == "style.png"  # the file name only: the XCF may travel
    assert parasites[1] is None and parasites[3] is None

    # Re-run from the top result: the same settings, a fresh result right above its source.
    rerun = steps["rerun"]
    assert rerun["status"] == "success", rerun["error"]
    fresh = rerun["after"][1]
    assert fresh["name"] == "Top (style, gatys) #1"  # GIMP makes layer names unique
    assert rerun["after"][:1] + rerun["after"][2:] == after
    assert fresh["offsets"] == before[0]["offsets"] and fresh["mask"] == before[0]["mask"]

    # No engine: an execution error with a message, and nothing changes.
    gone = steps["engine-unreachable"]
    assert gone["status"] == "execution-error"
    assert "engine" in gone["error"].lower(), gone["error"]
    assert gone["after"] == rerun["after"]


def test_one_undo_removes_all_results(gimp_chroot: Path, work: Path, engine: Path) -> None:
    """GIMP's PDB cannot undo, so this runs the GUI under Xvfb and presses Ctrl+Z (xdotool)."""
    style = work / "style.png"
    write_style(style)
    install_plugin(work, {"python": "/nonexistent/python", "endpoint": f"unix:{engine}"})
    findings = run_gimp_batch(work, HERE / "batch_undo.py", {"style": str(style)}, gui=True)
    assert findings["status"] == "success"
    assert findings["after_run"] == ["Top (style, gatys)", "Top", "Base (style, gatys)", "Base"]
    assert findings["windows"], "no image window found"
    assert findings["after_undo"] == findings["before"]


def test_grey_float_image_in_place_with_feathered_selection_and_a_group(
    gimp_chroot: Path, work: Path, engine: Path
) -> None:
    style = work / "style.png"
    write_style(style)
    install_plugin(work, {"python": "/nonexistent/python", "endpoint": f"unix:{engine}"})
    findings = run_gimp_batch(work, HERE / "batch_kinds.py", {"style": str(style)})

    status, error = findings["group"]
    assert status == "execution-error" and "layer group" in error, error
    assert findings["layers_after_group"] == ["Group", "Grey"]

    status, error = findings["in_place"]
    assert status == "success", error
    assert findings["layers_after"] == ["Group", "Grey"]
    assert (findings["precision"], findings["type"]) == ("float-linear", "graya-image")
    assert findings["parasite"]["settings"]["output"] == "in-place"
    before, after, sel = findings["before"], findings["after"], findings["selection"]
    assert any(0.05 < s < 0.95 for s in sel), "the feathered selection has no soft edge"
    change = [abs(after[2 * i] - before[2 * i]) for i in range(len(sel))]
    alpha_kept = all(abs(after[2 * i + 1] - before[2 * i + 1]) < 1e-5 for i in range(len(sel)))
    assert alpha_kept
    assert max(c for c, s in zip(change, sel, strict=True) if s == 0.0) < 1e-4
    assert max(c for c, s in zip(change, sel, strict=True) if s > 0.9) > 0.02
    # Feathered edges blend (result = s*styled + (1-s)*content, all in 0..1): soft pixels change,
    # but never by more than their selection value.
    assert max(c for c, s in zip(change, sel, strict=True) if 0.0 < s < 0.5) > 0.0
    assert all(c <= s + 1e-4 for c, s in zip(change, sel, strict=True))


def test_a_layer_mask_confines_the_style(gimp_chroot: Path, work: Path, engine: Path) -> None:
    style = work / "style.png"
    write_style(style)
    install_plugin(work, {"python": "/nonexistent/python", "endpoint": f"unix:{engine}"})
    from PIL import Image

    style2 = work / "style2.png"
    stripes = Image.new("RGB", (48, 48))
    stripes.putdata(
        [(20, 40, 200) if (x + y) % 6 < 3 else (200, 220, 255) for y in range(48) for x in range(48)]
    )
    stripes.save(style2)
    findings = run_gimp_batch(
        work, HERE / "batch_layer_mask.py", {"style": str(style), "style2": str(style2)}
    )
    assert findings["status"] == "success", findings["error"]
    assert findings["layers"] == ["Photo (style, gatys)", "Photo"]
    source, result, mask = findings["source"], findings["result"], findings["mask"]
    change = [
        max(abs(a - b) for a, b in zip(source[3 * i : 3 * i + 3], result[3 * i : 3 * i + 3], strict=True))
        for i in range(len(mask))
    ]
    white = [c for c, m in zip(change, mask, strict=True) if m == 1.0]
    black = [c for c, m in zip(change, mask, strict=True) if m == 0.0]
    assert white and black, "the mask has no white or no black part"
    assert sum(white) / len(white) > 0.05, "nothing was styled where the mask is white"
    # Gatys keeps the content inside its loss, not by pasting, and on a 64 px image its deepest
    # layers see the whole picture: black is unchanged within a tolerance (measured: mean 0.012,
    # worst 0.075 next to the soft band), far below the styled side.
    width = findings["width"]
    columns = [round(max(change[x::width]), 3) for x in range(width)]
    assert sum(black) / len(black) < 0.025 and max(black) < 0.12, f"largest change per column: {columns}"
    assert sum(black) / len(black) < 0.2 * sum(white) / len(white)

    # Split: the black part is no longer kept but takes the second style.
    assert findings["split_status"] == "success", findings["split_error"]
    assert findings["split_name"].startswith("Photo (style + style2, gatys)")
    split = findings["split"]
    moved = [
        max(abs(a - b) for a, b in zip(source[3 * i : 3 * i + 3], split[3 * i : 3 * i + 3], strict=True))
        for i in range(len(mask))
    ]
    black_moved = [c for c, m in zip(moved, mask, strict=True) if m == 0.0]
    assert sum(black_moved) / len(black_moved) > 0.05, "the black part did not take the second style"


def test_semantic_maps_from_label_layers(gimp_chroot: Path, work: Path, engine: Path) -> None:
    from PIL import Image

    style = work / "style.png"  # blue strokes on top, red below
    picture = Image.new("RGB", (48, 48))
    blue, red = ((20, 40, 200), (150, 180, 255)), ((200, 30, 20), (255, 150, 120))
    picture.putdata([(blue if y < 24 else red)[(x + y) % 6 < 3] for y in range(48) for x in range(48)])
    picture.save(style)
    install_plugin(work, {"python": "/nonexistent/python", "endpoint": f"unix:{engine}"})
    findings = run_gimp_batch(work, HERE / "batch_semantic.py", {"style": str(style)})
    assert findings["status"] == "success", findings["error"]
    assert findings["name"] == "Photo (style, gatys)"
    result, width = findings["result"], findings["width"]

    def red_minus_blue(rows: range) -> float:
        pixels = [result[3 * (y * width + x) : 3 * (y * width + x) + 3] for y in rows for x in range(width)]
        return sum(p[0] - p[2] for p in pixels) / len(pixels)

    # The content's top is labelled like the style's red bottom, so it turns redder than its bottom.
    top, bottom = red_minus_blue(range(0, 20)), red_minus_blue(range(28, 48))
    assert top > bottom + 0.1, (top, bottom)


def test_regions_from_channels_and_from_the_layer_mask(gimp_chroot: Path, work: Path, engine: Path) -> None:
    from PIL import Image

    red = work / "red.png"  # near-flat red; the blue style is a layer the script paints
    shades = [(220, 40, 25) if (x + y) % 6 < 3 else (130, 25, 15) for y in range(48) for x in range(48)]
    picture = Image.new("RGB", (48, 48))
    picture.putdata(shades)
    picture.save(red)
    install_plugin(work, {"python": "/nonexistent/python", "endpoint": f"unix:{engine}"})
    # Two Gatys runs of 20 iterations: about 140 s on a busy 2-core machine, hence the longer limit.
    findings = run_gimp_batch(work, HERE / "batch_regions.py", {"red": str(red)}, timeout=420)
    width = findings["width"]

    def mean_colour(picture: list[float], columns: range) -> list[float]:
        rows = len(picture) // (3 * width)
        pixels = [
            picture[3 * (y * width + x) : 3 * (y * width + x) + 3] for y in range(rows) for x in columns
        ]
        return [sum(p[c] for p in pixels) / len(pixels) for c in range(3)]

    red_mean = [sum(p[c] for p in shades) / len(shades) / 255 for c in range(3)]
    blue_mean = [0.08, 0.16, 0.68]  # the script's blue layer: (0.1, 0.2, 0.85) at full and 0.6 shade
    for run in ("channels", "layer_mask"):
        status, error, out = findings[run]
        assert status == "success", (run, error, findings["gimp_output"])
        assert out["name"].startswith("Photo (red + Blue, gatys)"), out["name"]
        # The photo is grey, about as far from either style; each half (4 px clear of the split at
        # the layer's x=32) must end up clearly nearer its own style's colour than the other's.
        # Measured with 20 iterations: about 0.5 of the distance to the other style.
        for columns, own, other in (
            (range(0, 28), red_mean, blue_mean),
            (range(36, width), blue_mean, red_mean),
        ):
            colour = mean_colour(out["pixels"], columns)
            to_own = sum(abs(a - b) for a, b in zip(colour, own, strict=True))
            to_other = sum(abs(a - b) for a, b in zip(colour, other, strict=True))
            assert to_own < 0.75 * to_other, (run, columns, colour, to_own, to_other)

    status, error, out = findings["empty"]
    assert status == "execution-error" and out is None, (status, error)
    assert "Region 1 (channel “Empty”) selects nothing over “Photo”" in error, error
    assert findings["empty_unchanged"]


def test_a_style_file_reaches_an_engine_over_tcp_as_pixels(gimp_chroot: Path, work: Path) -> None:
    """An engine reached over TCP (a remote GPU, or Windows' default) reads no client paths: the
    plug-in decodes the style file with GIMP and sends its pixels."""
    style = work / "style.png"
    write_style(style)
    home = work / "home"
    env = {**os.environ, "NST_HOME": str(home)}
    subprocess.run([sys.executable, "-m", "engine", "token"], env=env, capture_output=True, check=True)
    token = (home / "token").read_text().strip()
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with running_engine(work, home, listen=f"tcp:127.0.0.1:{port}") as endpoint:
        install_plugin(work, {"python": "/nonexistent/python", "endpoint": endpoint, "token": token})
        findings = run_gimp_batch(work, HERE / "batch_tcp.py", {"style": str(style)})
    assert findings["status"] == "success", findings["error"]
    assert findings["layers"] == ["Photo (style, gatys)", "Photo"]


def test_a_catalog_translates_what_gimp_shows_of_the_plug_in(
    gimp_chroot: Path, work: Path, engine: Path
) -> None:
    """GIMP started with LANGUAGE=xx and a catalog for "xx" in the installed plug-in's locale/
    folder: the labels GIMP registered (the plug-in's own and the settings declaration's), the
    menu label and the plug-in's messages come in that language."""
    plugin_dir = install_plugin(work, {"python": "/nonexistent/python", "endpoint": f"unix:{engine}"})
    write_catalog(
        plugin_dir / "locale" / "xx" / "LC_MESSAGES" / "neural_style.mo",
        {
            "_Masks": "_Maskoj",
            "_Quality": "_Kvalito",
            "Neural Style Transfer…": "Neŭrala stilo…",
            "{method} needs a style: choose a “Style file” or a “Style layer”.": "{method} bezonas stilon.",
        },
    )
    findings = run_gimp_batch(work, HERE / "batch_i18n.py", {}, gimp_env={"LANGUAGE": "xx"})
    assert (findings["masks_label"], findings["quality_label"]) == ("_Maskoj", "_Kvalito")
    assert findings["menu_label"] == "Neŭrala stilo…"
    assert findings["no_style"] == ["execution-error", "gatys bezonas stilon."]


def test_a_missing_style_file_is_named_with_what_to_do(gimp_chroot: Path, work: Path, engine: Path) -> None:
    """A script passes a style file that does not exist. GIMP would refuse a missing file for an
    OPEN file argument itself ("value ... for argument 'style-file' ... out of range", naming
    neither the file nor the fix); the plug-in's arguments take any file, so its own check answers,
    for the first style, the second and a region's, before the image is touched."""
    style = work / "style.png"
    write_style(style)
    missing = work / "paintings" / "starry.jpg"
    install_plugin(work, {"python": "/nonexistent/python", "endpoint": f"unix:{engine}"})
    findings = run_gimp_batch(
        work, HERE / "batch_missing_style.py", {"style": str(style), "missing": str(missing)}
    )
    expected = {
        "first": f"The style file {missing} does not exist: choose another painting as the “Style file”",
        "second": f"The second style file {missing} does not exist: choose another painting as the “Second",
        "region": f"Region 1's style file {missing} does not exist: choose another painting as its “Style",
    }
    for case, message in expected.items():
        got = findings[case]
        assert (got["status"], got["unchanged"]) == ("execution-error", True), (case, got)
        assert got["error"].startswith(message), (case, got["error"])
