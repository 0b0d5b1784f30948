# Runs inside gimp-console-3.0 in the trixie chroot; the test prepends ARGS_PATH. Covers what the
# main e2e does not: a grey image with alpha at 32-bit float linear precision, a feathered
# selection, output in place, and a layer group (refused with a message).
import json
import sys
import traceback

sys.path.insert(0, E2E_DIR)  # noqa: F821 - prepended by the test
from batch_prelude import Gimp, Gio, fill, load_args, pixels, transfer

ARGS = load_args(ARGS_PATH)  # noqa: F821 - prepended by the test
W, H = 40, 30
findings = {}


def run(image, drawables, **props):
    return transfer(
        image,
        drawables,
        style_file=Gio.File.new_for_path(ARGS["style"]),
        preset="draft",
        iterations=3,
        **props,
    )


try:
    image = Gimp.Image.new_with_precision(W, H, Gimp.ImageBaseType.GRAY, Gimp.Precision.FLOAT_LINEAR)
    layer = Gimp.Layer.new(image, "Grey", W, H, Gimp.ImageType.GRAYA_IMAGE, 100.0, Gimp.LayerMode.NORMAL)
    image.insert_layer(layer, None, 0)
    fill(
        layer,
        2,
        "Y'A float",
        lambda x, y, c: ((x * 7 + y * 3) % 20) / 19.0 if c == 0 else 0.5 + 0.5 * (x < W // 2),
    )
    group = Gimp.GroupLayer.new(image, "Group")
    image.insert_layer(group, None, 0)
    findings["before"] = list(pixels(layer, "Y'A float"))

    findings["group"] = run(image, [group])
    findings["layers_after_group"] = [item.get_name() for item in image.get_layers()]

    image.select_ellipse(Gimp.ChannelOps.REPLACE, 10, 7, 20, 16)
    Gimp.Selection.feather(image, 6.0)
    findings["selection"] = list(pixels(image.get_selection(), "Y float"))
    findings["in_place"] = run(image, [layer], output="in-place")
    findings["after"] = list(pixels(layer, "Y'A float"))
    findings["layers_after"] = [item.get_name() for item in image.get_layers()]
    findings["precision"] = image.get_precision().value_nick
    findings["type"] = layer.type().value_nick
    parasite = layer.get_parasite("neural-style-settings")
    findings["parasite"] = json.loads(bytes(parasite.get_data())) if parasite else None
except Exception:
    findings["exception"] = traceback.format_exc()

with open(ARGS["out"], "w") as f:
    json.dump(findings, f)
