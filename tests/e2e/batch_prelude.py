"""What every GIMP batch script of the e2e suite shares; imported inside GIMP's Python in the chroot.

The harness prepends `E2E_DIR` and `ARGS_PATH` to each script; the script puts E2E_DIR on sys.path
and imports from here.
"""

import json
from array import array

import gi

gi.require_version("Gimp", "3.0")
gi.require_version("Gegl", "0.4")
from gi.repository import Gegl, Gimp, Gio  # noqa: E402

__all__ = ["Gegl", "Gimp", "Gio", "fill", "load_args", "pixels"]


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
