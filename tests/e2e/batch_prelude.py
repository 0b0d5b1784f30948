"""What every GIMP batch script of the e2e suite (and tools/screenshot-dialog.sh's) shares: imports,
arguments, pixel read and fill, configuring and running the plug-in's procedures, driving the GUI
with xdotool (find the image window, focus it, press Ctrl+Z) and quitting GIMP. Imported inside
GIMP's Python in the chroot.

The harness prepends `E2E_DIR` and `ARGS_PATH` to each script; the script puts E2E_DIR on sys.path
and imports from here.
"""

import json
import subprocess
import time
from array import array

import gi

gi.require_version("Gimp", "3.0")
gi.require_version("Gegl", "0.4")
from gi.repository import Gegl, Gimp, Gio  # noqa: E402

__all__ = [
    "Gegl",
    "Gimp",
    "Gio",
    "configure",
    "fill",
    "finish",
    "focus",
    "image_window",
    "layer_state",
    "load_args",
    "pixels",
    "press_ok",
    "pressed",
    "procedure_config",
    "quit_gimp",
    "run_procedure",
    "transfer",
    "undo_once",
    "xdotool",
]

TRANSFER = "plug-in-neural-style-transfer"


def load_args(path):
    with open(path) as f:
        return json.load(f)


def pixels(drawable, fmt):
    w, h = drawable.get_width(), drawable.get_height()
    data = drawable.get_buffer().get(Gegl.Rectangle.new(0, 0, w, h), 1.0, fmt, Gegl.AbyssPolicy.CLAMP)
    values = array("f")
    values.frombytes(bytes(data))
    return values


def fill(drawable, channels, fmt, pattern):
    w, h = drawable.get_width(), drawable.get_height()
    values = array("f", (pattern(x, y, c) for y in range(h) for x in range(w) for c in range(channels)))
    buf = drawable.get_buffer()
    buf.set(Gegl.Rectangle.new(0, 0, w, h), fmt, values.tobytes())
    buf.flush()
    drawable.update(0, 0, w, h)


def configure(config, **props):
    """Set procedure arguments, named with underscores for the dashes."""
    for key, value in props.items():
        config.set_property(key.replace("_", "-"), value)


def procedure_config(image, drawables, procedure=TRANSFER, **props):
    """The procedure and a config of it for `drawables` of `image`, run non-interactively unless
    `props` names another run_mode."""
    proc = Gimp.get_pdb().lookup_procedure(procedure)
    config = proc.create_config()
    configure(config, run_mode=props.pop("run_mode", Gimp.RunMode.NONINTERACTIVE), image=image)
    config.set_core_object_array("drawables", drawables)
    configure(config, **props)
    return proc, config


def run_procedure(proc, config):
    """Run; (the status's nick, the error message or "")."""
    result = proc.run(config)
    status = result.index(0)
    # On failure GIMP 3 puts the message in the second return value (the PDB's last error reads
    # "success" from a batch script).
    error = result.index(1) if status != Gimp.PDBStatusType.SUCCESS and result.length() > 1 else ""
    return status.value_nick, error


def transfer(image, drawables, **props):
    """Run the transfer non-interactively on `drawables` with `props`; (status nick, error)."""
    return run_procedure(*procedure_config(image, drawables, **props))


def layer_state(image):
    """Every layer of `image`, top first: its name and its pixels as RGBA floats."""
    return [
        {"name": layer.get_name(), "pixels": list(pixels(layer, "R'G'B'A float"))}
        for layer in image.get_layers()
    ]


def xdotool(*args):
    """Run xdotool (real X input, as a user would); its output split into words."""
    return subprocess.run(["xdotool", *args], capture_output=True, text=True, timeout=20).stdout.split()


# OK is a procedure dialog's last button: its middle sits this far from the window's bottom right
# corner (GIMP 3.0.4's default theme; measured on tools/screenshot-dialog.sh's picture).
_PRESS_OK = r"""
for _ in $(seq 240); do
    id=$(xdotool search --onlyvisible --name "^$1\$" 2>/dev/null | head -1)
    if [ -n "$id" ]; then
        sleep 2
        eval "$(xdotool getwindowgeometry --shell "$id")"
        xdotool mousemove $((X + WIDTH - 68)) $((Y + HEIGHT - 42)) click 1
        exit 0
    fi
    sleep 0.5
done
exit 1
"""


def press_ok(title):
    """A helper process that waits (up to 2 minutes) for the dialog called `title` and clicks its
    OK button, as a user would; it exits 0 once it has clicked."""
    return subprocess.Popen(["sh", "-c", _PRESS_OK, "press_ok", title])


def pressed(presser):
    """Whether the `press_ok` helper clicked (waiting up to 30 s for it to end)."""
    try:
        return presser.wait(30) == 0
    except subprocess.TimeoutExpired:
        presser.kill()
        return False


def image_window():
    """The ids of the visible windows of an untitled image (their titles name the image), waiting
    up to 30 s for one to show; empty if none did."""
    windows = []
    for _ in range(30):
        windows = xdotool("search", "--onlyvisible", "--name", r"\[Untitled\]")
        if windows:
            break
        time.sleep(1)
    return windows


def focus(window):
    """Give `window` the keyboard focus and let it settle."""
    xdotool("windowfocus", "--sync", window)
    time.sleep(1)


def undo_once(image, count_before, tries=30):
    """Press Ctrl+Z in the focused window; wait until `image`'s layer count is no longer
    `count_before` (or `tries` half-seconds), then a second more."""
    xdotool("key", "--clearmodifiers", "ctrl+z")
    for _ in range(tries):
        if len(image.get_layers()) != count_before:
            break
        time.sleep(0.5)
    time.sleep(1)


def finish(out, findings, image):
    """A GUI batch's end: the findings written to `out`, the image marked clean, GIMP quit."""
    with open(out, "w") as f:
        json.dump(findings, f)
    image.clean_all()
    quit_gimp()


def quit_gimp():
    """Quit GIMP without asking about unsaved images."""
    quit_proc = Gimp.get_pdb().lookup_procedure("gimp-quit")
    quit_config = quit_proc.create_config()
    quit_config.set_property("force", True)
    quit_proc.run(quit_config)
