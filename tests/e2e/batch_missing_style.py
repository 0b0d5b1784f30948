# Runs inside gimp-console-3.0 (python-fu-eval) in the trixie chroot; the test prepends E2E_DIR
# and ARGS_PATH. Calls the transfer as a script would, with a style file that does not exist: as
# the first style, as the second style and as a region's style. Records each run's status and
# message, and whether the image stayed as it was.
import json
import sys
import traceback

sys.path.insert(0, E2E_DIR)  # noqa: F821 - prepended by the test
from batch_prelude import Gimp, Gio, fill, layer_state, load_args, transfer

ARGS = load_args(ARGS_PATH)  # noqa: F821 - prepended by the test
findings = {}
try:
    image = Gimp.Image.new(32, 24, Gimp.ImageBaseType.RGB)
    layer = Gimp.Layer.new(image, "Photo", 32, 24, Gimp.ImageType.RGB_IMAGE, 100.0, Gimp.LayerMode.NORMAL)
    image.insert_layer(layer, None, 0)
    fill(layer, 3, "R'G'B' float", lambda x, y, c: ((x * 5 + y * 3 + c * 7) % 16) / 16.0)
    layer.add_mask(layer.create_mask(Gimp.AddMaskType.WHITE))
    before = layer_state(image)
    missing = Gio.File.new_for_path(ARGS["missing"])
    painting = Gio.File.new_for_path(ARGS["style"])
    common = {"method": "gatys", "preset": "draft", "size": 32, "iterations": 1}
    cases = {
        "first": {"style_file": missing},
        "second": {"style_file": painting, "style2_file": missing, "style2_weight": 0.5},
        "region": {"layer_mask": "regions", "region1_source": "layer-mask", "region1_style_file": missing},
    }
    for name, props in cases.items():
        status, error = transfer(image, [layer], **common, **props)
        findings[name] = {"status": status, "error": error, "unchanged": layer_state(image) == before}
except Exception:
    findings["exception"] = traceback.format_exc()

with open(ARGS["out"], "w") as f:
    json.dump(findings, f)
