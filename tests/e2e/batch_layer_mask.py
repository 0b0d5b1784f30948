# Runs inside gimp-console-3.0 (python-fu-eval), in the trixie chroot. The test prepends
# ARGS_PATH = "...json" to this text. One layer whose mask is white on the left, black on the right
# with a soft band between; the plug-in runs with its default "confine to the layer mask", then
# "split" with a second style; the source's and the results' pixels and the mask go to ARGS["out"].
import json
import sys
import traceback

sys.path.insert(0, E2E_DIR)  # noqa: F821 - prepended by the test
from batch_prelude import Gimp, Gio, fill, load_args, pixels

ARGS = load_args(ARGS_PATH)  # noqa: F821 - prepended by the test
W, H = 64, 48
findings = {}


try:
    image = Gimp.Image.new(W, H, Gimp.ImageBaseType.RGB)
    layer = Gimp.Layer.new(image, "Photo", W, H, Gimp.ImageType.RGB_IMAGE, 100.0, Gimp.LayerMode.NORMAL)
    image.insert_layer(layer, None, 0)
    fill(
        layer, 3, "R'G'B' float", lambda x, y, c: 0.3 + 0.4 * x / W if c == 0 else 0.5 + 0.3 * y / H - 0.1 * c
    )
    mask = layer.create_mask(Gimp.AddMaskType.WHITE)
    layer.add_mask(mask)
    fill(mask, 1, "Y float", lambda x, y, c: min(1.0, max(0.0, (36 - x) / 8)))  # 1 up to x=28, 0 from 36

    proc = Gimp.get_pdb().lookup_procedure("plug-in-neural-style-transfer")
    config = proc.create_config()
    config.set_property("run-mode", Gimp.RunMode.NONINTERACTIVE)
    config.set_property("image", image)
    config.set_core_object_array("drawables", [layer])
    config.set_property("method", "gatys")
    config.set_property("style-file", Gio.File.new_for_path(ARGS["style"]))
    config.set_property("preset", "draft")
    config.set_property("iterations", 10)
    config.set_property("strength", 5.0)
    result = proc.run(config)
    status = result.index(0)
    findings["status"] = status.value_nick
    findings["error"] = (
        result.index(1) if status != Gimp.PDBStatusType.SUCCESS and result.length() > 1 else ""
    )
    findings["layers"] = [item.get_name() for item in image.get_layers()]
    findings["source"] = list(pixels(layer, "R'G'B' float"))
    findings["result"] = list(pixels(image.get_layers()[0], "R'G'B' float"))
    findings["mask"] = list(pixels(mask, "Y float"))
    findings["width"] = W

    # Split: white takes the first style, black the second.
    config.set_property("layer-mask", "split")
    config.set_property("style2-file", Gio.File.new_for_path(ARGS["style2"]))
    result = proc.run(config)
    status = result.index(0)
    findings["split_status"] = status.value_nick
    findings["split_error"] = (
        result.index(1) if status != Gimp.PDBStatusType.SUCCESS and result.length() > 1 else ""
    )
    split = image.get_layers()[image.get_item_position(layer) - 1]
    findings["split_name"] = split.get_name()
    findings["split"] = list(pixels(split, "R'G'B' float"))
except Exception:
    findings["exception"] = traceback.format_exc()

with open(ARGS["out"], "w") as f:
    json.dump(findings, f)
