"""Johnson et al.'s feed-forward style network, laid out as pytorch/examples saves it.

Upstream: pytorch/examples fast_neural_style/neural_style/transformer_net.py (the architecture)
and neural_style.py stylize() (input scaled to 0..255, stale InstanceNorm keys dropped, output
clamped to 0..255). Attribute names match upstream so its state dicts load without renaming.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from engine.errors import BadCheckpoint, UserError
from engine.nets.ops import (
    UpsampleConv3x3,
    channels_last,
    frozen,
    instance_norm_,
    nnpack_layout,
    reflect_conv,
)
from engine.nets.space_to_depth import SpaceToDepthConv
from engine.nets.state import load_strict, read_state_dict, without_norm_stats

ARCH = "fast-neural-style TransformerNet"
HEAD_BLOCK = 4  # the 3-channel head runs on 4x4 blocks of pixels (engine/nets/space_to_depth.py)


class _ConvLayer(nn.Module):
    """Holds one conv under the upstream name `conv2d`; padding is done by `reflect_conv`."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1) -> None:
        super().__init__()
        self.conv2d = nn.Conv2d(in_channels, out_channels, kernel_size, stride)


def _norm(channels: int) -> nn.InstanceNorm2d:
    return nn.InstanceNorm2d(channels, affine=True)  # a parameter holder; instance_norm_() does the work


def _norm_relu(x: torch.Tensor, norm: nn.InstanceNorm2d, relu: bool = True) -> torch.Tensor:
    return instance_norm_(x, norm.weight, norm.bias, relu=relu)


class _ResidualBlock(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = _ConvLayer(channels, channels, 3)
        self.in1 = _norm(channels)
        self.conv2 = _ConvLayer(channels, channels, 3)
        self.in2 = _norm(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = _norm_relu(reflect_conv(x, self.conv1.conv2d, nnpack=True), self.in1)
        return _norm_relu(reflect_conv(y, self.conv2.conv2d, nnpack=True), self.in2, relu=False).add_(x)


class TransformerNet(nn.Module):
    """RGB 0..1 in, RGB 0..1 out, once `prepare` has run (the loader does it)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = _ConvLayer(3, 32, 9)
        self.in1 = _norm(32)
        self.conv2 = _ConvLayer(32, 64, 3, stride=2)
        self.in2 = _norm(64)
        self.conv3 = _ConvLayer(64, 128, 3, stride=2)
        self.in3 = _norm(128)
        self.res1, self.res2, self.res3, self.res4, self.res5 = (_ResidualBlock(128) for _ in range(5))
        self.deconv1 = _ConvLayer(128, 64, 3)  # upstream: nearest 2x upsampling, then this conv
        self.in4 = _norm(64)
        self.deconv2 = _ConvLayer(64, 32, 3)
        self.in5 = _norm(32)
        self.deconv3 = _ConvLayer(32, 3, 9)

    def prepare(self) -> None:
        """After loading: absorb upstream's 0..255 pixel range into the first and last convs (exact:
        both are linear), build the sub-pixel forms of the two upsampling convs and the blocked form
        of the 3-channel head."""
        with torch.no_grad():
            self.conv1.conv2d.weight.mul_(255.0)
            self.deconv3.conv2d.weight.div_(255.0)
            self.deconv3.conv2d.bias.div_(255.0)
        self.up1 = UpsampleConv3x3(self.deconv1.conv2d)
        self.up2 = UpsampleConv3x3(self.deconv2.conv2d)
        self.head = SpaceToDepthConv(self.deconv3.conv2d, factor=HEAD_BLOCK)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = _norm_relu(reflect_conv(x, self.conv1.conv2d), self.in1)
        y = _norm_relu(reflect_conv(y, self.conv2.conv2d), self.in2)
        y = _norm_relu(reflect_conv(y, self.conv3.conv2d), self.in3)
        y = nnpack_layout(y)
        for block in (self.res1, self.res2, self.res3, self.res4, self.res5):
            y = block(y)
        y = channels_last(y)
        y = _norm_relu(self.up1(y), self.in4)
        y = _norm_relu(self.up2(y), self.in5)
        return self.head(y).clamp_(0.0, 1.0)


def read_state(path: Path, mix: Sequence[float] | None = None) -> dict[str, torch.Tensor]:
    """The state of the one-style network a pytorch/examples fast-neural-style checkpoint holds.

    A network of several styles (conditional instance norm, Dumoulin et al. 2017: `nst train
    johnson` with several paintings) holds each norm's scale and shift once per style, as rows;
    `mix` weighs the rows (default: the first style alone) into the one-style network it runs as.
    """
    state = without_norm_stats(read_state_dict(path, ARCH))
    styles = {v.shape[0] for k, v in state.items() if k.endswith((".weight", ".bias")) and v.dim() == 2}
    if len(styles) > 1:
        counts = " and ".join(map(str, sorted(styles)))
        raise BadCheckpoint(path, ARCH, f"its norms hold {counts} styles", readable=True)
    if mix is not None and styles != {len(mix)}:
        held = f"{next(iter(styles))} styles" if styles else "one style"
        raise UserError("bad-option", f"{path} holds {held}, not the {len(mix)} of the mix")
    if styles:
        weights = torch.tensor(mix if mix is not None else [1.0] + [0.0] * (styles.pop() - 1))
        state = {k: weights @ v if v.dim() == 2 else v for k, v in state.items()}
    return state


def load_transformer_net(
    path: Path, device: torch.device, mix: Sequence[float] | None = None
) -> TransformerNet:
    """A pytorch/examples fast-neural-style checkpoint (e.g. saved_models/candy.pth), ready to run;
    `mix` as `read_state` takes it."""
    net = TransformerNet()
    load_strict(net, read_state(path, mix), path, ARCH)
    net.prepare()
    return frozen(net, device, nchw=(net.res1, net.res2, net.res3, net.res4, net.res5))
