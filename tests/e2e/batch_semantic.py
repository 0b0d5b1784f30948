# Runs inside gimp-console-3.0 (python-fu-eval), in the trixie chroot. The test prepends
# ARGS_PATH = "...json" to this text. A photo whose label map marks its top "A" and bottom "B";
# a style file whose top is blue and bottom red, with a label map (a layer of a second image)
# marking its top "B" and bottom "A". The result's rows go to ARGS["out"].
import json
import sys
import traceback

sys.path.insert(0, E2E_DIR)  # noqa: F821 - prepended by the test
from batch_prelude import Gimp, Gio, fill, load_args, pixels, transfer

ARGS = load_args(ARGS_PATH)  # noqa: F821 - prepended by the test
W, H, S = 48, 48, 48
A, B = (1.0, 1.0, 0.0), (0.0, 1.0, 1.0)
findings = {}


def rgb_layer(image, name, w, h):
    layer = Gimp.Layer.new(image, name, w, h, Gimp.ImageType.RGB_IMAGE, 100.0, Gimp.LayerMode.NORMAL)
    image.insert_layer(layer, None, 0)
    return layer


try:
    image = Gimp.Image.new(W, H, Gimp.ImageBaseType.RGB)
    photo = rgb_layer(image, "Photo", W, H)
    fill(photo, 3, "R'G'B' float", lambda x, y, c: 0.4 + 0.2 * ((x // 6 + y // 6) % 2) - 0.05 * c)
    labels = rgb_layer(image, "Labels", W, H)
    fill(labels, 3, "R'G'B' float", lambda x, y, c: (A if y < H // 2 else B)[c])
    style_image = Gimp.Image.new(S, S, Gimp.ImageBaseType.RGB)
    style_labels = rgb_layer(style_image, "Style labels", S, S)
    fill(style_labels, 3, "R'G'B' float", lambda x, y, c: (B if y < S // 2 else A)[c])

    findings["status"], findings["error"] = transfer(
        image,
        [photo],
        method="gatys",
        style_file=Gio.File.new_for_path(ARGS["style"]),
        content_map=labels,
        style_map=style_labels,
        preset="draft",
        iterations=20,
        strength=10.0,
    )
    out = image.get_layers()[image.get_item_position(photo) - 1]
    findings["name"] = out.get_name()
    findings["result"] = list(pixels(out, "R'G'B' float"))
    findings["width"] = W
except Exception:
    findings["exception"] = traceback.format_exc()

with open(ARGS["out"], "w") as f:
    json.dump(findings, f)
