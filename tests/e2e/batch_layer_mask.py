# Runs inside gimp-console-3.0 (python-fu-eval), in the trixie chroot. The test prepends
# ARGS_PATH = "...json" to this text. One layer whose mask is white on the left, black on the right
# with a soft band between; the plug-in runs with its default "confine to the layer mask", then
# "split" with a second style; the source's and the results' pixels and the mask go to ARGS["out"].
import json
import sys
import traceback

sys.path.insert(0, E2E_DIR)  # noqa: F821 - prepended by the test
from batch_prelude import Gimp, Gio, configure, fill, load_args, pixels, procedure_config, run_procedure

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

    proc, config = procedure_config(
        image,
        [layer],
        method="gatys",
        style_file=Gio.File.new_for_path(ARGS["style"]),
        preset="draft",
        iterations=10,
        strength=5.0,
    )
    findings["status"], findings["error"] = run_procedure(proc, config)
    findings["layers"] = [item.get_name() for item in image.get_layers()]
    findings["source"] = list(pixels(layer, "R'G'B' float"))
    findings["result"] = list(pixels(image.get_layers()[0], "R'G'B' float"))
    findings["mask"] = list(pixels(mask, "Y float"))
    findings["width"] = W

    # Split: white takes the first style, black the second.
    configure(config, layer_mask="split", style2_file=Gio.File.new_for_path(ARGS["style2"]))
    findings["split_status"], findings["split_error"] = run_procedure(proc, config)
    split = image.get_layers()[image.get_item_position(layer) - 1]
    findings["split_name"] = split.get_name()
    findings["split"] = list(pixels(split, "R'G'B' float"))
except Exception:
    findings["exception"] = traceback.format_exc()

with open(ARGS["out"], "w") as f:
    json.dump(findings, f)
