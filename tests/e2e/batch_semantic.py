# Runs inside gimp-console-3.0 (python-fu-eval), in the trixie chroot. The test prepends
# ARGS_PATH = "...json" to this text. A photo whose label map marks its top "A" and bottom "B";
# a style file whose top is blue and bottom red, with a label map (a layer of a second image)
# marking its top "B" and bottom "A". The result's rows go to ARGS["out"].
import json
import sys
import traceback
from array import array

sys.path.insert(0, E2E_DIR)  # noqa: F821 - prepended by the test
from batch_prelude import Gegl, Gimp, Gio, load_args

ARGS = load_args(ARGS_PATH)  # noqa: F821 - prepended by the test
W, H, S = 48, 48, 48
A, B = (1.0, 1.0, 0.0), (0.0, 1.0, 1.0)
findings = {}


def fill(drawable, pattern):
    w, h = drawable.get_width(), drawable.get_height()
    values = array("f", (pattern(x, y, c) for y in range(h) for x in range(w) for c in range(3)))
    buf = drawable.get_buffer()
    buf.set(Gegl.Rectangle.new(0, 0, w, h), "R'G'B' float", values.tobytes())
    buf.flush()
    drawable.update(0, 0, w, h)


def rgb_layer(image, name, w, h):
    layer = Gimp.Layer.new(image, name, w, h, Gimp.ImageType.RGB_IMAGE, 100.0, Gimp.LayerMode.NORMAL)
    image.insert_layer(layer, None, 0)
    return layer


try:
    image = Gimp.Image.new(W, H, Gimp.ImageBaseType.RGB)
    photo = rgb_layer(image, "Photo", W, H)
    fill(photo, lambda x, y, c: 0.4 + 0.2 * ((x // 6 + y // 6) % 2) - 0.05 * c)
    labels = rgb_layer(image, "Labels", W, H)
    fill(labels, lambda x, y, c: (A if y < H // 2 else B)[c])
    style_image = Gimp.Image.new(S, S, Gimp.ImageBaseType.RGB)
    style_labels = rgb_layer(style_image, "Style labels", S, S)
    fill(style_labels, lambda x, y, c: (B if y < S // 2 else A)[c])

    proc = Gimp.get_pdb().lookup_procedure("plug-in-neural-style-transfer")
    config = proc.create_config()
    config.set_property("run-mode", Gimp.RunMode.NONINTERACTIVE)
    config.set_property("image", image)
    config.set_core_object_array("drawables", [photo])
    config.set_property("method", "gatys")
    config.set_property("style-file", Gio.File.new_for_path(ARGS["style"]))
    config.set_property("content-map", labels)
    config.set_property("style-map", style_labels)
    config.set_property("preset", "draft")
    config.set_property("iterations", 20)
    config.set_property("strength", 10.0)
    result = proc.run(config)
    status = result.index(0)
    findings["status"] = status.value_nick
    findings["error"] = (
        result.index(1) if status != Gimp.PDBStatusType.SUCCESS and result.length() > 1 else ""
    )
    out = image.get_layers()[image.get_item_position(photo) - 1]
    findings["name"] = out.get_name()
    data = out.get_buffer().get(Gegl.Rectangle.new(0, 0, W, H), 1.0, "R'G'B' float", Gegl.AbyssPolicy.CLAMP)
    values = array("f")
    values.frombytes(bytes(data))
    findings["result"] = list(values)
    findings["width"] = W
except Exception:
    findings["exception"] = traceback.format_exc()

with open(ARGS["out"], "w") as f:
    json.dump(findings, f)
