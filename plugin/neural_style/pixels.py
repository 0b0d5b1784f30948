"""Pixels between GEGL buffers and the protocol's RawImage, and what a mask covers: standard library
only (no numpy in GIMP's Python), so the tests run it with the host Python.

host.py reads and writes buffers in these Babl formats; GEGL converts to and from whatever
precision the drawable has.
"""

from __future__ import annotations

import sys
from array import array

from nst_common.messages import RawImage

# Non-linear (') float with straight alpha, as the protocol wants, by channel count.
BABL_FORMATS = {1: "Y' float", 2: "Y'A float", 3: "R'G'B' float", 4: "R'G'B'A float"}
# Masks and the selection in linear "Y": grey values keep their meaning as blend amounts.
MASK_FORMAT = "Y float"


def _floats(data: bytes | bytearray | memoryview) -> array:
    values = array("f")
    values.frombytes(bytes(data))
    if sys.byteorder == "big":  # the protocol is little-endian
        values.byteswap()
    return values


def _to_bytes(values: array) -> bytes:
    if sys.byteorder == "big":
        values = array(values.typecode, values)
        values.byteswap()
    return values.tobytes()


def raw_from_pixels(data: bytes, width: int, height: int, channels: int) -> RawImage:
    """Wrap float pixels read from a Gegl buffer in BABL_FORMATS[channels]."""
    expected = width * height * channels * 4
    if len(data) != expected:
        raise ValueError(f"expected {expected} bytes of {width}x{height}x{channels} float, got {len(data)}")
    if sys.byteorder == "big":
        data = _to_bytes(_floats(data))
    return RawImage(width, height, channels, "f32", bytes(data))


def pixels_from_raw(image: RawImage, width: int, height: int, channels: int) -> bytes:
    """Float pixels for a Gegl buffer in BABL_FORMATS[channels] from the engine's result."""
    if (image.width, image.height, image.channels) != (width, height, channels):
        raise ValueError(
            f"the engine returned {image.width}x{image.height}x{image.channels}, "
            f"expected {width}x{height}x{channels}"
        )
    if image.dtype == "f32":
        values = _floats(image.data)
    elif image.dtype in ("u8", "u16"):
        ints = array("B" if image.dtype == "u8" else "H")
        ints.frombytes(bytes(image.data))
        if image.dtype == "u16" and sys.byteorder == "big":
            ints.byteswap()
        scale = 1.0 / (255.0 if image.dtype == "u8" else 65535.0)
        values = array("f", (v * scale for v in ints))
    else:
        raise ValueError(f"unknown dtype {image.dtype!r}")
    if len(values) != width * height * channels:
        raise ValueError("the engine's result has the wrong number of pixels")
    return values.tobytes()  # native order, which is what Gegl wants


def selection_coverage(mask: RawImage) -> str:
    """'none', 'full' or 'partial': whether the selection misses, covers or cuts the layer."""
    values = _floats(mask.data)
    if not values:
        return "none"
    lo, hi = min(values), max(values)
    if hi <= 0.0:
        return "none"
    if lo >= 1.0:
        return "full"
    return "partial"


def inverse(mask: RawImage) -> RawImage:
    """1 - mask: a mask's black part as white, for the second style of a split or a region."""
    inverse = array("f", (1.0 - v for v in _floats(mask.data)))
    return RawImage(mask.width, mask.height, 1, "f32", _to_bytes(inverse))
