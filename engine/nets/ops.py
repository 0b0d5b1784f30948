"""Inference building blocks shared by the feed-forward networks, tuned for CPU: channels_last for
oneDNN, NCHW around NNPACK.

Each one computes exactly what the upstream module chain computes, in fewer memory passes.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterable, Iterator
from typing import TypeVar

import torch
import torch.nn.functional as F
from torch import nn

from engine.nets import tiling

M = TypeVar("M", bound=nn.Module)
# Where the `fp32-winograd` compute path runs a whole stack of 3x3 convs through NNPACK (AdaIN's
# encoder and decoder, the backbones, the residual blocks being trained), the convs from at least
# this many channels: below it the Winograd transforms cost more than they save (AdaIN at 512 px on
# AVX2 code: 2.7 s from 64 channels up, 2.8 s with the 3-channel stem too, 4.0 s with none; VGG's
# first conv at 512x512, forward and input gradient: 41 ms in NNPACK, 33 ms in oneDNN).
WINOGRAD_MIN_CHANNELS = 64
_winograd = contextvars.ContextVar("winograd", default=False)


@contextlib.contextmanager
def winograd(on: bool) -> Iterator[None]:
    """Within: `winograd_wanted()` says `on`, for this thread (the compute path's choice, passed to
    the nets that run it without a parameter through every call)."""
    token = _winograd.set(on)
    try:
        yield
    finally:
        _winograd.reset(token)


def winograd_wanted(conv: nn.Conv2d) -> bool:
    """Whether the compute path wants `conv` (a 3x3 stride-1 conv) through NNPACK."""
    return _winograd.get() and conv.in_channels >= WINOGRAD_MIN_CHANNELS


def instance_norm_(
    x: torch.Tensor, weight: torch.Tensor | None = None, bias: torch.Tensor | None = None, relu: bool = False
) -> torch.Tensor:
    """InstanceNorm2d (eps 1e-5, biased variance), then optionally ReLU, over `x`, in place where
    that is faster; use the returned tensor.

    On the CPU in float32: NCHW (the layout of NNPACK's layers) goes through group norm with one
    group per channel, one pass for the statistics and one for the affine map, 3x faster than batch
    norm's NCHW kernel and exact to 1e-6. channels_last goes through training-mode batch norm,
    whose channels_last kernel the instance_norm path lacks (2-5x), with its out= form writing over
    the input: no fresh pages to fault in for big activations. (Group norm's channels_last kernel
    takes the variance as E[x^2] - E[x]^2, 1e-2 off for activations with a large mean.) The caller
    must own `x` (a conv output); tests/test_zoo.py checks both stay exact.

    Under `tiling.SharedNorms` (tiled inference) the statistics are the image's, not `x`'s.
    """
    shared = tiling.active_norms()
    if shared is not None:
        mean, var = shared.stats(x)
        scale = torch.rsqrt(var + 1e-5)
        if weight is not None:
            scale = scale * weight.float()
        shift = -mean * scale if bias is None else bias.float() - mean * scale
        y = x.mul_(scale.to(x.dtype)[:, None, None]).add_(shift.to(x.dtype)[:, None, None])
    elif x.device.type == "cpu" and x.dtype == torch.float32 and x.is_contiguous():
        y = F.group_norm(x, x.shape[1], weight, bias, eps=1e-5)
    elif x.shape[0] != 1:
        y = F.instance_norm(x, weight=weight, bias=bias, eps=1e-5)
    elif x.device.type == "cpu" and x.dtype == torch.float32:
        mean, invstd = torch.empty(2, x.shape[1]).unbind()
        torch.ops.aten.native_batch_norm.out(
            x, weight, bias, None, None, True, 0.0, 1e-5, out=x, save_mean=mean, save_invstd=invstd
        )
        y = x
    else:
        y = F.batch_norm(x, None, None, weight, bias, training=True, eps=1e-5)
    return y.relu_() if relu else y


def reflect_conv(x: torch.Tensor, conv: nn.Conv2d, nnpack: bool = False) -> torch.Tensor:
    """ReflectionPad2d(k // 2) then `conv` (which has padding 0), as the upstream nets chain them.

    With `nnpack` (a 3x3 stride-1 conv), where `nnpack_applies`, the conv runs in NNPACK on NCHW: its
    Winograd kernel needs 2.25x fewer multiplications than oneDNN's direct conv, 1.5x faster at 128
    channels and 3x at 256 on this AVX-512 CPU; the sums are the same in another order (1e-5
    relative). Its workspace holds the transforms of the whole input and output, about 3.5x the
    output's size; the nets' NetCost counts it.
    """
    if nnpack:
        x = nnpack_layout(x)
    pad = conv.kernel_size[0] // 2
    if pad:
        x = F.pad(x, (pad, pad, pad, pad), mode="reflect")
    if nnpack and nnpack_applies(x):
        return torch._nnpack_spatial_convolution(x, conv.weight, conv.bias, [0, 0])
    return conv(x)


def nnpack_applies(x: torch.Tensor) -> bool:
    """Float32 on the CPU outside autocast, on a CPU that NNPACK supports (AVX2, NEON), with
    torch's private NNPACK entry points present and allowed."""
    return (
        x.device.type == "cpu"
        and x.dtype == torch.float32
        and not torch.is_autocast_enabled("cpu")
        and nnpack_usable()
    )


def nnpack_usable() -> bool:
    """NNPACK's private torch entry points exist, work here and are allowed: a torch release may
    drop them, and then every path falls back to torch's own convolutions."""
    try:
        return bool(
            hasattr(torch, "_nnpack_spatial_convolution")
            and torch._nnpack_available()  # also initialises NNPACK, once
            and torch._C._get_nnpack_enabled()
        )
    except (AttributeError, RuntimeError):
        return False


def nnpack_layout(x: torch.Tensor) -> torch.Tensor:
    """`x` in NCHW where `nnpack_applies`, as it is elsewhere."""
    return nchw(x) if nnpack_applies(x) else x


def nchw(x: torch.Tensor) -> torch.Tensor:
    """`x` contiguous (NCHW). From channels_last, one image is a 2-D transpose, for which PyTorch
    has a blocked kernel: 1.5-5x faster than .contiguous()'s generic copy."""
    if x.is_contiguous() or x.shape[0] != 1:
        return x.contiguous()
    _, channels, height, width = x.shape
    return x.permute(0, 2, 3, 1).reshape(height * width, channels).t().contiguous().view(x.shape)


def channels_last(x: torch.Tensor) -> torch.Tensor:
    """`x` in channels_last; from NCHW, as in `nchw`, a 2-D transpose (up to 3x faster)."""
    if x.is_contiguous(memory_format=torch.channels_last) or x.shape[0] != 1 or not x.is_contiguous():
        return x.contiguous(memory_format=torch.channels_last)
    _, channels, height, width = x.shape
    rows = x.view(channels, height * width).t().contiguous()
    return rows.view(1, height, width, channels).permute(0, 3, 1, 2)


class UpsampleConv3x3(nn.Module):
    """Nearest 2x upsampling, ReflectionPad2d(1), then a 3x3 conv: computed on the small image.

    Each output pixel of the upsampled conv sees only a 2x2 block of input pixels, so the 3x3
    kernel collapses into four 2x2 kernels, one per output phase (row parity a, column parity b),
    and 4 instead of 9 taps per output pixel are computed (2.25x fewer multiply-adds). Reflecting
    the upsampled image by one pixel repeats its edge rows, which is a replicate pad of the input.
    """

    def __init__(self, conv: nn.Conv2d) -> None:
        super().__init__()
        self.out_channels = conv.out_channels
        self.register_buffer("weight", upsample_kernel(conv.weight.detach()))
        bias = conv.bias.detach() if conv.bias is not None else torch.zeros(conv.out_channels)
        self.register_buffer("bias", bias.repeat(4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, _, height, width = x.shape
        z = _phases(x, self.weight, self.bias)
        out = z.new_empty(n, height, 2, width, 2, self.out_channels)
        for a in (0, 1):
            for b in (0, 1):
                out[:, :, a, :, b] = z[:, a : a + height, b : b + width, 2 * a + b]
        return out.view(n, 2 * height, 2 * width, self.out_channels).permute(0, 3, 1, 2)


def upsample_kernel(weight: torch.Tensor) -> torch.Tensor:
    """A 3x3 (out, in) kernel as UpsampleConv3x3's (4 * out, in, 2, 2), phase-major."""
    return torch.cat([phase_kernel(weight, a, b) for a in (0, 1) for b in (0, 1)])


def upsample_conv3x3(x: torch.Tensor, conv: nn.Conv2d) -> torch.Tensor:
    """`UpsampleConv3x3(conv)(x)` with gradients for `conv`'s weights, for training: the phase
    kernels made from this step's weights, and the phases gathered by stacking, which autograd
    runs without the in-place copies. Johnson's two upsampling layers, batch 4 at 256 px, forward
    and backward in channels_last: 1.2-2.1x faster than upsampling first, on AVX-512 and AVX2 code."""
    out, (height, width) = conv.out_channels, x.shape[-2:]
    bias = None if conv.bias is None else conv.bias.repeat(4)
    z = _phases(x, upsample_kernel(conv.weight), bias)
    rows = [torch.stack([z[:, a : a + height, b : b + width, 2 * a + b] for b in (0, 1)], 3) for a in (0, 1)]
    return torch.stack(rows, 2).reshape(len(x), 2 * height, 2 * width, out).permute(0, 3, 1, 2)


def _phases(x: torch.Tensor, kernel: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """All four phases' outputs, (N, H + 1, W + 1, 4, out): phase (a, b) of output pixel (i, j) is
    at [:, i + a, j + b, 2a + b], the 2x2 conv there of the replicate-padded input."""
    z = F.conv2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), kernel, bias)
    return z.permute(0, 2, 3, 1).unflatten(3, (4, kernel.shape[0] // 4))


def phase_kernel(weight: torch.Tensor, a: int, b: int) -> torch.Tensor:
    """The 2x2 kernel that a 3x3 `weight` becomes for output phase (row parity a, column parity b)."""
    return _collapse(_collapse(weight, a, dim=2), b, dim=3)


def _collapse(kernel: torch.Tensor, parity: int, dim: int) -> torch.Tensor:
    """Fold a 3-tap axis of `kernel` into the 2 input pixels it reaches after 2x nearest upsampling.

    Even outputs read input offsets (-1, 0) with taps (k0, k1 + k2); odd ones (0, +1) with (k0 + k1, k2).
    """
    k0, k1, k2 = kernel.unbind(dim)
    return torch.stack([k0, k1 + k2] if parity == 0 else [k0 + k1, k2], dim)


def frozen(module: M, device: torch.device, nchw: Iterable[nn.Module] = ()) -> M:
    """Eval mode, no gradients, channels_last on `device`: how every network is handed out. The
    `nchw` parts (NNPACK's layers) keep NCHW weights, which NNPACK would otherwise copy every call."""
    module.eval().requires_grad_(False)
    module.to(device=device, memory_format=torch.channels_last)
    for part in nchw:
        part.to(memory_format=torch.contiguous_format)
    return module
