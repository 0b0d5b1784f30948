# Runs inside gimp-console-3.0 in the trixie chroot; the test prepends ARGS_PATH. Covers what the
# main e2e does not: a grey image with alpha at 32-bit float linear precision, a feathered
# selection, output in place, and a layer group (refused with a message).
import json
import sys
import traceback
from array import array

sys.path.insert(0, E2E_DIR)  # noqa: F821 - prepended by the test
from batch_prelude import Gegl, Gimp, Gio, load_args

ARGS = load_args(ARGS_PATH)  # noqa: F821 - prepended by the test
W, H = 40, 30
findings = {}


def grey(layer):
    data = layer.get_buffer().get(Gegl.Rectangle.new(0, 0, W, H), 1.0, "Y'A float", Gegl.AbyssPolicy.CLAMP)
    values = array("f")
    values.frombytes(bytes(data))
    return list(values)


def run(image, drawables, **props):
    proc = Gimp.get_pdb().lookup_procedure("plug-in-neural-style-transfer")
    config = proc.create_config()
    config.set_property("run-mode", Gimp.RunMode.NONINTERACTIVE)
    config.set_property("image", image)
    config.set_core_object_array("drawables", drawables)
    config.set_property("style-file", Gio.File.new_for_path(ARGS["style"]))
    config.set_property("preset", "draft")
    config.set_property("iterations", 3)
    for key, value in props.items():
        config.set_property(key.replace("_", "-"), value)
    result = proc.run(config)
    status = result.index(0)
    error = result.index(1) if status != Gimp.PDBStatusType.SUCCESS and result.length() > 1 else ""
    return status.value_nick, error


try:
    image = Gimp.Image.new_with_precision(W, H, Gimp.ImageBaseType.GRAY, Gimp.Precision.FLOAT_LINEAR)
    layer = Gimp.Layer.new(image, "Grey", W, H, Gimp.ImageType.GRAYA_IMAGE, 100.0, Gimp.LayerMode.NORMAL)
    image.insert_layer(layer, None, 0)
    values = array("f")
    for y in range(H):
        for x in range(W):
            values.extend((((x * 7 + y * 3) % 20) / 19.0, 0.5 + 0.5 * (x < W // 2)))
    buf = layer.get_buffer()
    buf.set(Gegl.Rectangle.new(0, 0, W, H), "Y'A float", values.tobytes())
    buf.flush()
    group = Gimp.GroupLayer.new(image, "Group")
    image.insert_layer(group, None, 0)
    findings["before"] = grey(layer)

    findings["group"] = run(image, [group])
    findings["layers_after_group"] = [item.get_name() for item in image.get_layers()]

    image.select_ellipse(Gimp.ChannelOps.REPLACE, 10, 7, 20, 16)
    Gimp.Selection.feather(image, 6.0)
    sel = (
        image.get_selection()
        .get_buffer()
        .get(Gegl.Rectangle.new(0, 0, W, H), 1.0, "Y float", Gegl.AbyssPolicy.NONE)
    )
    mask = array("f")
    mask.frombytes(bytes(sel))
    findings["selection"] = list(mask)
    findings["in_place"] = run(image, [layer], output="in-place")
    findings["after"] = grey(layer)
    findings["layers_after"] = [item.get_name() for item in image.get_layers()]
    findings["precision"] = image.get_precision().value_nick
    findings["type"] = layer.type().value_nick
    parasite = layer.get_parasite("neural-style-settings")
    findings["parasite"] = json.loads(bytes(parasite.get_data())) if parasite else None
except Exception:
    findings["exception"] = traceback.format_exc()

with open(ARGS["out"], "w") as f:
    json.dump(findings, f)
