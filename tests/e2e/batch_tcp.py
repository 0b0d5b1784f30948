# Runs inside gimp-console-3.0 in the trixie chroot; the test prepends E2E_DIR and ARGS_PATH. One
# Gatys run with a style file, against an engine reached over TCP, which takes no file paths.
import json
import sys
import traceback

sys.path.insert(0, E2E_DIR)  # noqa: F821 - prepended by the test
from batch_prelude import Gimp, Gio, fill, load_args, transfer

ARGS = load_args(ARGS_PATH)  # noqa: F821 - prepended by the test
findings = {}
try:
    image = Gimp.Image.new(40, 32, Gimp.ImageBaseType.RGB)
    layer = Gimp.Layer.new(image, "Photo", 40, 32, Gimp.ImageType.RGB_IMAGE, 100.0, Gimp.LayerMode.NORMAL)
    image.insert_layer(layer, None, 0)
    fill(layer, 3, "R'G'B' float", lambda x, y, c: ((x * (c + 2) + y * 3) % 32) / 31.0)
    status, error = transfer(
        image,
        [layer],
        method="gatys",
        style_file=Gio.File.new_for_path(ARGS["style"]),
        preset="draft",
        iterations=2,
        seed=3,
    )
    findings.update(status=status, error=error, layers=[item.get_name() for item in image.get_layers()])
except Exception:
    findings["exception"] = traceback.format_exc()

with open(ARGS["out"], "w") as f:
    json.dump(findings, f)
