"""SpaceToDepthConv computes exactly ReflectionPad2d + conv, for any image size and block factor
(float64), and in float32 from channels_last, the layout the nets hand it."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from engine.nets.space_to_depth import SpaceToDepthConv


@pytest.mark.parametrize(
    ("cin", "cout", "kernel", "factor", "height", "width"),
    [
        (32, 3, 9, 4, 36, 44),
        (64, 3, 7, 2, 20, 28),
        (8, 3, 7, 4, 22, 30),
        (5, 2, 3, 2, 17, 9),
        (4, 3, 5, 3, 13, 11),
    ],
)
def test_matches_reflect_padded_conv(
    cin: int, cout: int, kernel: int, factor: int, height: int, width: int
) -> None:
    torch.manual_seed(kernel * factor)
    conv = torch.nn.Conv2d(cin, cout, kernel).double()
    x = torch.randn(1, cin, height, width, dtype=torch.float64)
    expected = conv(F.pad(x, (kernel // 2,) * 4, mode="reflect"))
    with torch.no_grad():
        got = SpaceToDepthConv(conv, factor)(x)
    assert got.shape == expected.shape
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-12)


def test_float32_matches_reflect_padded_conv() -> None:
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(32, 3, 9).requires_grad_(False)
    x = torch.randn(1, 32, 36, 44).contiguous(memory_format=torch.channels_last)
    expected = conv.double()(F.pad(x.double(), (4,) * 4, mode="reflect"))
    got = SpaceToDepthConv(conv.float(), 4)(x)
    assert got.shape == expected.shape
    assert (got.double() - expected).abs().max() < 1e-5 * expected.abs().max()
