"""What every GIMP batch script of the e2e suite (and tools/screenshot-dialog.sh's) shares: imports,
arguments, pixel read and fill, and configuring and running the plug-in's procedures. Imported
inside GIMP's Python in the chroot.

The harness prepends `E2E_DIR` and `ARGS_PATH` to each script; the script puts E2E_DIR on sys.path
and imports from here.
"""

import json
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
    "load_args",
    "pixels",
    "procedure_config",
    "run_procedure",
    "transfer",
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
