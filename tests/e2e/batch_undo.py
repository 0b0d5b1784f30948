# Runs inside gimp-3.0 (the GUI, under Xvfb) in the trixie chroot; the test prepends ARGS_PATH.
# GIMP 3's PDB has no "undo" procedure, so this presses Ctrl+Z in the image window with xdotool
# (real X input, as a user would) and checks that one undo removes every result layer.
import sys
import traceback

sys.path.insert(0, E2E_DIR)  # noqa: F821 - prepended by the test
from batch_prelude import (
    Gimp,
    Gio,
    fill,
    finish,
    focus,
    image_window,
    layer_state,
    load_args,
    transfer,
    undo_once,
)

ARGS = load_args(ARGS_PATH)  # noqa: F821 - prepended by the test
findings = {}


try:
    image = Gimp.Image.new(48, 32, Gimp.ImageBaseType.RGB)
    layers = []
    for name, shade in (("Base", 0.2), ("Top", 0.7)):
        layer = Gimp.Layer.new(image, name, 48, 32, Gimp.ImageType.RGB_IMAGE, 100.0, Gimp.LayerMode.NORMAL)
        image.insert_layer(layer, None, 0)
        fill(
            layer,
            3,
            "R'G'B' float",
            lambda x, y, c, shade=shade: ((x * 5 + y * 3 + c * 7) % 16) / 16.0 * shade,
        )
        layers.append(layer)
    image.undo_enable()
    image.clean_all()
    display = Gimp.Display.new(image)
    findings["before"] = layer_state(image)

    findings["status"], _ = transfer(
        image, layers, style_file=Gio.File.new_for_path(ARGS["style"]), preset="draft", size=48, iterations=2
    )
    findings["after_run"] = [entry["name"] for entry in layer_state(image)]
    Gimp.displays_flush()

    # The image window's title names the image; focus it and press Ctrl+Z once.
    findings["windows"] = windows = image_window()
    focus(windows[0])
    undo_once(image, len(findings["after_run"]))
    findings["after_undo"] = layer_state(image)
except Exception:
    findings["exception"] = traceback.format_exc()

finish(ARGS["out"], findings, image)
