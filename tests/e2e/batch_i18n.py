# Runs inside gimp-console-3.0 (python-fu-eval) in the trixie chroot, with LANGUAGE set to the test
# catalog's language; the test prepends E2E_DIR and ARGS_PATH. Reads what GIMP registered for the
# transfer (an argument's label, the menu label) and runs it without a style, for its message.
import json
import sys
import traceback

sys.path.insert(0, E2E_DIR)  # noqa: F821 - prepended by the test
from batch_prelude import Gimp, load_args, transfer

ARGS = load_args(ARGS_PATH)  # noqa: F821 - prepended by the test
findings = {}
try:
    proc = Gimp.get_pdb().lookup_procedure("plug-in-neural-style-transfer")
    findings["masks_label"] = proc.find_argument("layer-mask").get_nick()
    findings["quality_label"] = proc.find_argument("preset").get_nick()
    findings["menu_label"] = proc.get_menu_label()
    image = Gimp.Image.new(32, 32, Gimp.ImageBaseType.RGB)
    layer = Gimp.Layer.new(image, "Photo", 32, 32, Gimp.ImageType.RGB_IMAGE, 100.0, Gimp.LayerMode.NORMAL)
    image.insert_layer(layer, None, 0)
    findings["no_style"] = transfer(image, [layer], method="gatys")
except Exception:
    findings["exception"] = traceback.format_exc()

with open(ARGS["out"], "w") as f:
    json.dump(findings, f)
