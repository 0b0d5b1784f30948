"""3x3 convolutions through NNPACK's Winograd kernel, forward and backward: the backbones' frozen
ones, and the residual blocks of a Johnson network being trained.

Gatys spends three quarters of an evaluation in the backbone's 3x3 convolutions: the forward pass,
and the backward pass's gradient with respect to the input. NNPACK's Winograd F(6x6, 3x3) needs
2.25x fewer multiplications than oneDNN's direct convolution, and the input gradient of a stride-1
convolution is itself a convolution, of the output gradient with the kernel transposed (in and out
channels swapped) and rotated by 180 degrees, so both directions run through the same kernel. A
weight being trained gets its gradient from torch's own convolution backward. The sums are the
same in another order: the results differ from oneDNN's by about 1e-5 relative.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from engine.nets.ops import WINOGRAD_MIN_CHANNELS, nnpack_applies

# Below 64x64 positions NNPACK loses to oneDNN (measured on an AVX-512 CPU, 64-512 channels: 1.2-4x
# slower at 16x16 and 32x32, 1.6-2.5x faster from 64x64 up at 128 channels and more): its cost per
# call of transforming the kernel no longer pays for itself. Whether a whole pass gains is measured
# per machine (engine/compute/tune.py), not decided here.
MIN_PIXELS = 64 * 64


def available(x: torch.Tensor) -> bool:
    """NNPACK runs on `x` (float32 on a CPU it supports), its private torch entry points exist,
    and `torch.backends.nnpack.flags` allows it."""
    return nnpack_applies(x)


def applies(conv: nn.Conv2d, x: torch.Tensor) -> bool:
    """A square stride-1 conv from at least WINOGRAD_MIN_CHANNELS channels, on input of at least
    MIN_PIXELS positions."""
    return (
        x.shape[-2] * x.shape[-1] >= MIN_PIXELS
        and conv.in_channels >= WINOGRAD_MIN_CHANNELS
        and conv.stride == (1, 1)
        and conv.dilation == (1, 1)
        and conv.groups == 1
        and conv.kernel_size[0] == conv.kernel_size[1] > 1
        and conv.padding[0] == conv.padding[1]
        and conv.padding_mode == "zeros"
    )


def conv(conv: nn.Conv2d, x: torch.Tensor, rotated: torch.Tensor | None = None) -> torch.Tensor:
    """`conv(x)` through NNPACK. `rotated` is `rotated_kernel(conv)`, which the caller keeps while
    the weights are frozen; for weights being trained it is made here, from this step's weights."""
    kernel = rotated_kernel(conv) if rotated is None else rotated
    return _Conv.apply(x.contiguous(), conv.weight, conv.bias, kernel, conv.padding[0])


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
        ctx.rotated, ctx.padding = rotated, padding
        if ctx.needs_input_grad[1]:  # a weight being trained
            ctx.save_for_backward(x, weight)
        return _nnpack(x, weight.contiguous(), bias, padding)

    @staticmethod
    def backward(
        ctx: Any, grad: torch.Tensor
    ) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None, None, None]:
        grad = grad.contiguous()
        grad_input = grad_weight = grad_bias = None
        if ctx.needs_input_grad[0]:
            grad_input = _nnpack(grad, ctx.rotated, None, ctx.rotated.shape[-1] - 1 - ctx.padding)
        if ctx.needs_input_grad[1]:
            x, weight = ctx.saved_tensors
            grad_weight = torch.nn.grad.conv2d_weight(x, weight.shape, grad, padding=ctx.padding)
        if ctx.needs_input_grad[2]:
            grad_bias = grad.sum((0, 2, 3))
        return grad_input, grad_weight, grad_bias, None, None


def _nnpack(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, padding: int) -> torch.Tensor:
    """One photo at a time: NNPACK's batch algorithm takes 1.5-1.7x as long as its one-image
    algorithm run on each photo (4 photos, 128 channels at 64x64, AVX-512 and AVX2 code alike)."""
    pads = [padding, padding]
    if len(x) == 1:
        return torch._nnpack_spatial_convolution(x, weight, bias, pads)
    return torch.cat([torch._nnpack_spatial_convolution(one, weight, bias, pads) for one in x.split(1)])
