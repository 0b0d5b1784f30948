"""The backbones' frozen 3x3 convolutions through NNPACK's Winograd kernel, forward and backward.

Gatys spends three quarters of an evaluation in the backbone's 3x3 convolutions: the forward pass,
and the backward pass's gradient with respect to the input (the weights are frozen, so no weight
gradient is ever computed). NNPACK's Winograd F(6x6, 3x3) needs 2.25x fewer multiplications than
oneDNN's direct convolution, and the input gradient of a stride-1 convolution is itself a
convolution, of the output gradient with the kernel transposed (in and out channels swapped) and
rotated by 180 degrees, so both directions run through the same kernel. The sums are the same in
another order: the results differ from oneDNN's by about 1e-5 relative.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from torch import nn

from engine.nets.ops import nnpack_applies

# Below 64x64 positions NNPACK loses to oneDNN (measured on this AVX-512 CPU, 64-512 channels: 1.2-4x
# slower at 16x16 and 32x32, 1.6-2.5x faster from 64x64 up at 128 channels and more): its cost per
# call of transforming the kernel no longer pays for itself.
MIN_PIXELS = 64 * 64


# From this size every conv on at least MIN_PIXELS positions runs on NNPACK, the whole pass in its
# NCHW layout. Below it, hand-overs between NNPACK's thread pool and torch's cost more than Winograd
# saves on an AVX-512 CPU (a vgg16-hed evaluation: 1.5x slower at 128 px, even at 256, 1.2x faster
# at 512).
MIN_IMAGE_PIXELS = 512 * 512

# Where oneDNN has only AVX2 (half AVX-512's width; NNPACK's kernels are AVX2 either way), Winograd
# pays earlier, for some convs: from 256x256 px, those that keep their channel count on at most
# 128x128 positions, while the pass stays in oneDNN's channels_last layout. A vgg16-hed evaluation at
# 256 px on an AVX2-only EPYC, interleaved medians of two runs: 0.80 and 0.74 s against 0.92 and
# 0.84 s on oneDNN alone; with every conv from 64x64 positions up on NNPACK, 0.86 s against 0.92.
MIN_SQUARE_IMAGE_PIXELS = 256 * 256
MAX_SQUARE_PIXELS = 128 * 128
SQUARE_CAPABILITIES = ("AVX2",)  # torch.backends.cpu.get_cpu_capability() values

Mode = Literal["all", "square"]


def available(x: torch.Tensor) -> bool:
    """NNPACK runs on `x` (float32 on a CPU it supports) and `torch.backends.nnpack.flags` allows it."""
    return nnpack_applies(x) and torch._C._get_nnpack_enabled()


def mode(image: torch.Tensor, square: bool = False) -> Mode | None:
    """Which convs of a backbone pass over `image` run on NNPACK: "all" that `applies`, only the
    "square" ones (same channels in and out, at most MAX_SQUARE_PIXELS) where the caller allows
    them, or None.

    "square" adds layout copies between NNPACK and oneDNN. Passes whose memory is planned (Gatys
    tiles) do not ask for it and keep to what their estimate was measured with: bench/gatys_memory.py
    at 384 px gave 3700-4400 bytes per tile pixel either way, too noisy to tell the two apart.
    """
    pixels = image.shape[-2] * image.shape[-1]
    if pixels < min(MIN_IMAGE_PIXELS, MIN_SQUARE_IMAGE_PIXELS) or not available(image):
        return None
    if pixels >= MIN_IMAGE_PIXELS:
        return "all"
    return "square" if square and torch.backends.cpu.get_cpu_capability() in SQUARE_CAPABILITIES else None


def applies(conv: nn.Conv2d, x: torch.Tensor, mode: Mode) -> bool:
    """A frozen square stride-1 conv on input of at least MIN_PIXELS, and in "square" mode one that
    keeps its channel count on at most MAX_SQUARE_PIXELS (the caller got `mode` for the image)."""
    positions = x.shape[-2] * x.shape[-1]
    if mode == "square" and (conv.in_channels != conv.out_channels or positions > MAX_SQUARE_PIXELS):
        return False
    return (
        positions >= MIN_PIXELS
        and conv.stride == (1, 1)
        and conv.dilation == (1, 1)
        and conv.groups == 1
        and conv.kernel_size[0] == conv.kernel_size[1] > 1
        and conv.padding[0] == conv.padding[1]
        and conv.padding_mode == "zeros"
        and not conv.weight.requires_grad
    )


def conv(conv: nn.Conv2d, x: torch.Tensor, rotated: torch.Tensor) -> torch.Tensor:
    """`conv(x)` through NNPACK; `rotated` is `rotated_kernel(conv)`, kept by the caller."""
    return _Conv.apply(x.contiguous(), conv.weight, conv.bias, rotated, conv.padding[0])


def rotated_kernel(conv: nn.Conv2d) -> torch.Tensor:
    """The kernel of the input gradient: in and out channels swapped, rotated by 180 degrees."""
    return conv.weight.detach().transpose(0, 1).flip(2, 3).contiguous()


class _Conv(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx: Any,
        x: torch.Tensor,
        weight: torch.Tensor,
        bias: torch.Tensor | None,
        rotated: torch.Tensor,
        padding: int,
    ) -> torch.Tensor:
        ctx.rotated = rotated
        ctx.back_padding = weight.shape[-1] - 1 - padding
        return torch._nnpack_spatial_convolution(x, weight.contiguous(), bias, [padding, padding])

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, None, None, None, None]:
        if not ctx.needs_input_grad[0]:
            return None, None, None, None, None
        pad = ctx.back_padding
        grad_input = torch._nnpack_spatial_convolution(grad.contiguous(), ctx.rotated, None, [pad, pad])
        return grad_input, None, None, None, None
