# Runs inside GIMP 3 in the trixie chroot; the test prepends E2E_DIR and ARGS_PATH. Two modes:
#
# "cases" (gimp-console): for each entry of ARGS["cases"] build a fresh image of the named kind
# (rgb, rgba, grey, layer-mask, selection, two-layers, style-layer), run the transfer procedure
# non-interactively on its source layer(s) with the entry's props, and record every layer (name,
# geometry, pixels in the layer's own channels, mask, parasite) before and after, the selection,
# the status and the error.
#
# "undo" (the GUI under Xvfb): one two-layer image in a display; for each entry of ARGS["runs"] run
# the transfer on both layers, then press Ctrl+Z once in the image window (xdotool, real X input:
# the PDB cannot undo) and record the layers after the run and after the undo.
import json
import sys
import time
import traceback

sys.path.insert(0, E2E_DIR)  # noqa: F821 - prepended by the test
from batch_prelude import (
    Gimp,
    Gio,
    fill,
    focus,
    image_window,
    load_args,
    pixels,
    quit_gimp,
    transfer,
    undo_once,
)

ARGS = load_args(ARGS_PATH)  # noqa: F821 - prepended by the test
W, H = ARGS.get("size", (40, 32))
FORMATS = {1: "Y' float", 2: "Y'A float", 3: "R'G'B' float", 4: "R'G'B'A float"}
TYPES = {
    1: Gimp.ImageType.GRAY_IMAGE,
    2: Gimp.ImageType.GRAYA_IMAGE,
    3: Gimp.ImageType.RGB_IMAGE,
    4: Gimp.ImageType.RGBA_IMAGE,
}
SELECTION = (8, 6, 20, 16)  # x, y, w, h of the rectangle of the "selection" case, image coordinates
findings = {"cases": [], "runs": []}


def pattern_a(x, y, c):
    """Diagonal ramps that differ per channel: structure at several scales."""
    return ((x * (c + 1) * 7 + y * (3 - c) * 5) % 64) / 63.0


def pattern_b(x, y, c):
    """Blocks of two shades, tinted per channel."""
    return 0.15 + 0.7 * (((x // 5) + (y // 4)) % 2) * (0.5 + 0.25 * c)


def pattern_paint(x, y, c):
    """A style: saturated diagonal stripes."""
    return (0.9, 0.2, 0.1)[c] if (x + 2 * y) % 9 < 4 else (0.1, 0.3, 0.9)[c]


def channels_of(layer):
    return (3 if layer.is_rgb() else 1) + (1 if layer.has_alpha() else 0)


def add_layer(image, name, channels, size, offsets, colour, alpha=None):
    """A layer of `channels` on top of the stack, filled with `colour`(x, y, c) and `alpha`(x, y)."""
    w, h = size
    layer = Gimp.Layer.new(image, name, w, h, TYPES[channels], 100.0, Gimp.LayerMode.NORMAL)
    image.insert_layer(layer, None, 0)
    layer.set_offsets(*offsets)
    colours = channels - (1 if channels in (2, 4) else 0)

    def value(x, y, c):
        return alpha(x, y) if c == colours else colour(x, y, c)

    fill(layer, channels, FORMATS[channels], value)
    return layer


def snapshot(image):
    """Every layer, top first: name, geometry, pixels in its own channels, mask, parasite."""
    out = []
    for layer in image.get_layers():
        _, ox, oy = layer.get_offsets()
        mask = layer.get_mask()
        parasite = layer.get_parasite("neural-style-settings")
        channels = channels_of(layer)
        out.append(
            {
                "name": layer.get_name(),
                "offsets": [ox, oy],
                "size": [layer.get_width(), layer.get_height()],
                "channels": channels,
                "pixels": list(pixels(layer, FORMATS[channels])),
                "mask": list(pixels(mask, "Y float")) if mask else None,
                "parasite": json.loads(bytes(parasite.get_data())) if parasite else None,
            }
        )
    return out


def build(kind):
    """A fresh image of `kind`: (image, the layers to stylize, extra procedure props)."""
    base = Gimp.ImageBaseType.GRAY if kind == "grey" else Gimp.ImageBaseType.RGB
    image = Gimp.Image.new(W, H, base)
    if kind == "rgb":  # a layer above the source, so "right above it" is not just "on top"
        photo = add_layer(image, "Photo", 3, (W, H), (0, 0), pattern_a)
        add_layer(image, "Above", 3, (10, 8), (1, 1), pattern_b)
        return image, [photo], {}
    if kind == "rgba":  # an offset layer with alpha from 0 (transparent) to 1, over a background
        add_layer(image, "Background", 3, (W, H), (0, 0), pattern_b)
        cutout = add_layer(
            image,
            "Cutout",
            4,
            (W - 6, H - 6),
            (3, 2),
            pattern_a,
            lambda x, y: min(1.0, max(0.0, (x - 3) / 20)),
        )
        return image, [cutout], {}
    if kind == "grey":
        return image, [add_layer(image, "Grey", 1, (W, H), (0, 0), pattern_a)], {}
    if kind == "layer-mask":  # white up to x=16, black from x=24, a soft band between
        layer = add_layer(image, "Masked", 3, (W, H), (0, 0), pattern_a)
        mask = layer.create_mask(Gimp.AddMaskType.WHITE)
        layer.add_mask(mask)
        fill(mask, 1, "Y float", lambda x, y, c: min(1.0, max(0.0, (24 - x) / 8)))
        return image, [layer], {}
    if kind == "selection":
        layer = add_layer(image, "Photo", 3, (W, H), (0, 0), pattern_a)
        image.select_rectangle(Gimp.ChannelOps.REPLACE, *SELECTION)
        return image, [layer], {}
    if kind == "two-layers":
        left = add_layer(image, "Left", 3, (W, H), (0, 0), pattern_a)
        right = add_layer(
            image, "Right", 4, (W - 10, H - 8), (6, 5), pattern_b, lambda x, y: 0.25 + 0.75 * (y % 2)
        )
        return image, [left, right], {}
    if kind == "style-layer":  # the style is another layer of the same image
        photo = add_layer(image, "Photo", 3, (W, H), (0, 0), pattern_a)
        paint = add_layer(image, "Paint", 3, (24, 24), (W - 24, 0), pattern_paint)
        return image, [photo], {"style_layer": paint}
    raise ValueError(f"unknown case {kind!r}")


def props_of(entry):
    """The entry's procedure props, file paths as Gio files."""
    props = {}
    for key, value in entry.get("props", {}).items():
        props[key] = Gio.File.new_for_path(value) if key.endswith("_file") else value
    return props


def run_case(entry):
    image, sources, extra = build(entry["case"])
    record = {"id": entry["id"], "case": entry["case"], "sources": [s.get_name() for s in sources]}
    selection = None if Gimp.Selection.is_empty(image) else image.get_selection()
    record["selection"] = (
        [list(pixels(selection, "Y float")), list(SELECTION)] if selection is not None else None
    )
    record["before"] = snapshot(image)
    started = time.monotonic()
    record["status"], record["error"] = transfer(image, sources, **{**props_of(entry), **extra})
    record["seconds"] = time.monotonic() - started
    record["after"] = snapshot(image)
    image.delete()
    return record


def run_undo():
    image = Gimp.Image.new(W, H, Gimp.ImageBaseType.RGB)
    layers = [
        add_layer(image, "Base", 3, (W, H), (0, 0), pattern_a),
        add_layer(image, "Top", 3, (W - 8, H - 8), (4, 4), pattern_b),
    ]
    image.undo_enable()
    image.clean_all()
    Gimp.Display.new(image)
    Gimp.displays_flush()
    findings["before"] = [layer["name"] for layer in snapshot(image)]
    findings["windows"] = windows = image_window()
    for entry in ARGS["runs"]:
        before = snapshot(image)
        record = {"id": entry["id"]}
        record["status"], record["error"] = transfer(image, layers, **props_of(entry))
        record["after_run"] = [layer["name"] for layer in snapshot(image)]
        Gimp.displays_flush()
        focus(windows[0])
        undo_once(image, len(record["after_run"]))
        record["restored"] = snapshot(image) == before
        record["after_undo"] = [layer["name"] for layer in snapshot(image)]
        findings["runs"].append(record)
    image.clean_all()


try:
    if ARGS["mode"] == "undo":
        run_undo()
    else:
        for entry in ARGS["cases"]:
            findings["cases"].append(run_case(entry))
except Exception:
    findings["exception"] = traceback.format_exc()

with open(ARGS["out"], "w") as f:
    json.dump(findings, f)
if ARGS["mode"] == "undo":
    quit_gimp()
