"""pixels.py: buffers to RawImages and back, and what a mask covers, run with the host Python."""

from __future__ import annotations

import struct

import pytest
from pixels import pixels_from_raw, raw_from_pixels, selection_coverage

from nst_common.messages import RawImage


def floats(*values: float) -> bytes:
    return struct.pack(f"<{len(values)}f", *values)


def test_pixels_round_trip_f32() -> None:
    data = floats(0.0, 0.25, 0.5, 1.0, 0.1, 0.2, 0.3, 0.4)
    raw = raw_from_pixels(data, 2, 1, 4)
    assert (raw.width, raw.height, raw.channels, raw.dtype) == (2, 1, 4, "f32")
    assert pixels_from_raw(raw, 2, 1, 4) == data


def test_pixels_from_integer_results_are_scaled() -> None:
    u8 = RawImage(2, 1, 1, "u8", bytes([0, 255]))
    assert struct.unpack("<2f", pixels_from_raw(u8, 2, 1, 1)) == (0.0, 1.0)
    u16 = RawImage(1, 1, 1, "u16", struct.pack("<H", 65535))
    assert struct.unpack("<f", pixels_from_raw(u16, 1, 1, 1)) == (1.0,)


def test_pixel_size_mismatches_are_errors() -> None:
    with pytest.raises(ValueError, match="expected 16 bytes"):
        raw_from_pixels(b"\0" * 12, 2, 2, 1)
    with pytest.raises(ValueError, match="expected 2x2x3"):
        pixels_from_raw(RawImage(2, 2, 4, "f32", b"\0" * 64), 2, 2, 3)


def test_selection_coverage() -> None:
    def mask(*v: float) -> RawImage:
        return RawImage(len(v), 1, 1, "f32", floats(*v))

    assert selection_coverage(mask(0.0, 0.0)) == "none"
    assert selection_coverage(mask(1.0, 1.0)) == "full"
    assert selection_coverage(mask(0.0, 0.4, 1.0)) == "partial"
