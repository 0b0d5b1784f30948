# Runs inside gimp-3.0 (the GUI, under Xvfb) in the trixie chroot; the test prepends ARGS_PATH.
# GIMP 3's PDB has no "undo" procedure, so this presses Ctrl+Z in the image window with xdotool
# (real X input, as a user would) and checks that one undo removes every result layer.
import json
import subprocess
import sys
import time
import traceback
from array import array

sys.path.insert(0, E2E_DIR)  # noqa: F821 - prepended by the test
from batch_prelude import Gegl, Gimp, Gio, load_args

ARGS = load_args(ARGS_PATH)  # noqa: F821 - prepended by the test
findings = {}


def state(image):
    out = []
    for layer in image.get_layers():
        w, h = layer.get_width(), layer.get_height()
        data = layer.get_buffer().get(
            Gegl.Rectangle.new(0, 0, w, h), 1.0, "R'G'B'A float", Gegl.AbyssPolicy.CLAMP
        )
        values = array("f")
        values.frombytes(bytes(data))
        out.append({"name": layer.get_name(), "pixels": list(values)})
    return out


def xdotool(*args):
    return subprocess.run(["xdotool", *args], capture_output=True, text=True, timeout=20).stdout.split()


try:
    image = Gimp.Image.new(48, 32, Gimp.ImageBaseType.RGB)
    layers = []
    for name, shade in (("Base", 0.2), ("Top", 0.7)):
        layer = Gimp.Layer.new(image, name, 48, 32, Gimp.ImageType.RGB_IMAGE, 100.0, Gimp.LayerMode.NORMAL)
        image.insert_layer(layer, None, 0)
        values = array(
            "f",
            (
                ((x * 5 + y * 3 + c * 7) % 16) / 16.0 * shade
                for y in range(32)
                for x in range(48)
                for c in range(3)
            ),
        )
        buf = layer.get_buffer()
        buf.set(Gegl.Rectangle.new(0, 0, 48, 32), "R'G'B' float", values.tobytes())
        buf.flush()
        layers.append(layer)
    image.undo_enable()
    image.clean_all()
    display = Gimp.Display.new(image)
    findings["before"] = state(image)

    proc = Gimp.get_pdb().lookup_procedure("plug-in-neural-style-transfer")
    config = proc.create_config()
    config.set_property("run-mode", Gimp.RunMode.NONINTERACTIVE)
    config.set_property("image", image)
    config.set_core_object_array("drawables", layers)
    config.set_property("style-file", Gio.File.new_for_path(ARGS["style"]))
    config.set_property("preset", "draft")
    config.set_property("size", 48)
    config.set_property("iterations", 2)
    result = proc.run(config)
    findings["status"] = result.index(0).value_nick
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
