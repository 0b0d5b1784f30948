# Runs inside gimp-console-3.0 (python-fu-eval), in the trixie chroot. The test prepends
# ARGS_PATH = "...json" to this text. It builds a two-layer image, runs the plug-in three times
# (engine failure, success, engine unreachable) and writes what it saw to ARGS["out"] as JSON.
import json
import sys
import traceback

sys.path.insert(0, E2E_DIR)  # noqa: F821 - prepended by the test
from batch_prelude import Gimp, Gio, fill, load_args, pixels, procedure_config, run_procedure, transfer

ARGS = load_args(ARGS_PATH)  # noqa: F821 - prepended by the test
W, H = 64, 48
SEL = (16, 12, 24, 20)  # x, y, w, h of the rectangular selection, image coordinates
TOP_OFFSET, TOP_SIZE = (10, 8), (40, 30)
findings = {"steps": []}


def snapshot(image):
    """Names, geometry and pixels of every layer, to compare before and after a call."""
    out = []
    for layer in image.get_layers():
        _, ox, oy = layer.get_offsets()
        mask = layer.get_mask()
        out.append(
            {
                "name": layer.get_name(),
                "offsets": [ox, oy],
                "size": [layer.get_width(), layer.get_height()],
                "pixels": list(pixels(layer, "R'G'B'A float")),
                "mask": list(pixels(mask, "Y float")) if mask else None,
            }
        )
    return out


def run_transfer(image, drawables, style_path):
    return transfer(
        image,
        drawables,
        method="gatys",
        style_file=Gio.File.new_for_path(style_path),
        preset="draft",
        size=64,
        iterations=3,  # a few steps change the pixels; the preset's take minutes
        only_selection=True,
    )


def write_engine_config(config):
    with open(ARGS["engine_json"], "w") as f:
        json.dump(config, f)


try:
    image = Gimp.Image.new(W, H, Gimp.ImageBaseType.RGB)
    base = Gimp.Layer.new(image, "Base", W, H, Gimp.ImageType.RGB_IMAGE, 100.0, Gimp.LayerMode.NORMAL)
    image.insert_layer(base, None, 0)
    fill(base, 3, "R'G'B' float", lambda x, y, c: ((x * (c + 1) * 7 + y * (3 - c) * 5) % 64) / 63.0)
    top = Gimp.Layer.new(image, "Top", *TOP_SIZE, Gimp.ImageType.RGBA_IMAGE, 100.0, Gimp.LayerMode.NORMAL)
    image.insert_layer(top, None, 0)
    top.set_offsets(*TOP_OFFSET)
    fill(top, 4, "R'G'B'A float", lambda x, y, c: 1.0 if c == 3 else ((x + y) % 8 < 4) * 0.8 + 0.1 * c)
    mask = top.create_mask(Gimp.AddMaskType.WHITE)
    top.add_mask(mask)
    fill(mask, 1, "Y float", lambda x, y, c: 0.0 if x < 10 else 1.0)
    image.select_rectangle(Gimp.ChannelOps.REPLACE, *SEL)
    findings["selection"] = list(SEL)
    before = snapshot(image)
    findings["before"] = before

    # 1. The engine answers but the job fails: the style file is not an image. (A missing file is
    # the plug-in's own refusal: test_a_missing_style_file_is_named_with_what_to_do.)
    status, error = run_transfer(image, [base, top], ARGS["broken_style"])
    findings["steps"].append(
        {"name": "engine-fails", "status": status, "error": error, "after": snapshot(image)}
    )

    # 2. A real run on both layers.
    status, error = run_transfer(image, [base, top], ARGS["style"])
    after = snapshot(image)
    results = []
    for layer in image.get_layers():
        parasite = layer.get_parasite("neural-style-settings")
        results.append(json.loads(bytes(parasite.get_data())) if parasite else None)
    findings["steps"].append(
        {"name": "success", "status": status, "error": error, "after": after, "parasites": results}
    )

    # 3. Re-run from the top result layer: its parasite's settings, applied to its source again.
    status, error = run_procedure(
        *procedure_config(image, [image.get_layers()[0]], procedure="plug-in-neural-style-rerun")
    )
    findings["steps"].append({"name": "rerun", "status": status, "error": error, "after": snapshot(image)})

    # 4. No engine at all: an endpoint nobody listens on, and a python that cannot start one.
    write_engine_config({"python": "/nonexistent/python", "endpoint": "unix:" + ARGS["dead_socket"]})
    status, error = run_transfer(image, [base, top], ARGS["style"])
    findings["steps"].append(
        {"name": "engine-unreachable", "status": status, "error": error, "after": snapshot(image)}
    )
except Exception:
    findings["exception"] = traceback.format_exc()

with open(ARGS["out"], "w") as f:
    json.dump(findings, f)
