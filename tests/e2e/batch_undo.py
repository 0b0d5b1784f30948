# Runs inside gimp-3.0 (the GUI, under Xvfb) in the trixie chroot; the test prepends ARGS_PATH.
# GIMP 3's PDB has no "undo" procedure, so this presses Ctrl+Z in the image window with xdotool
# (real X input, as a user would) and checks that one undo removes every result layer.
import json
import subprocess
import sys
import time
import traceback

sys.path.insert(0, E2E_DIR)  # noqa: F821 - prepended by the test
from batch_prelude import Gimp, Gio, fill, load_args, pixels, transfer

ARGS = load_args(ARGS_PATH)  # noqa: F821 - prepended by the test
findings = {}


def state(image):
    return [
        {"name": layer.get_name(), "pixels": list(pixels(layer, "R'G'B'A float"))}
        for layer in image.get_layers()
    ]


def xdotool(*args):
    return subprocess.run(["xdotool", *args], capture_output=True, text=True, timeout=20).stdout.split()


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
    findings["before"] = state(image)

    findings["status"], _ = transfer(
        image, layers, style_file=Gio.File.new_for_path(ARGS["style"]), preset="draft", size=48, iterations=2
    )
    findings["after_run"] = [entry["name"] for entry in state(image)]
    Gimp.displays_flush()

    # The image window's title names the image; focus it and press Ctrl+Z once.
    windows = []
    for _ in range(30):
        windows = xdotool("search", "--onlyvisible", "--name", r"\[Untitled\]")
        if windows:
            break
        time.sleep(1)
    findings["windows"] = windows
    xdotool("windowfocus", "--sync", windows[0])
    time.sleep(1)
    xdotool("key", "--clearmodifiers", "ctrl+z")
    for _ in range(30):
        if len(image.get_layers()) != len(findings["after_run"]):
            break
        time.sleep(0.5)
    time.sleep(1)
    findings["after_undo"] = state(image)
except Exception:
    findings["exception"] = traceback.format_exc()

with open(ARGS["out"], "w") as f:
    json.dump(findings, f)
image.clean_all()
quit_proc = Gimp.get_pdb().lookup_procedure("gimp-quit")
quit_config = quit_proc.create_config()
quit_config.set_property("force", True)
quit_proc.run(quit_config)
