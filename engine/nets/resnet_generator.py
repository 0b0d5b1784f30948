"""CycleGAN's ResnetGenerator (resnet_9blocks, instance norm, no dropout), as upstream saves it.

Upstream: junyanz/pytorch-CycleGAN-and-pix2pix models/networks.py (ResnetGenerator, ResnetBlock,
get_norm_layer) and test.py (inputs normalised to -1..1, outputs tanh). The layer list mirrors
upstream's `self.model` Sequential index for index, so its keys ("model.1.weight", ...) load as is.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from engine.nets.ops import channels_last, frozen, instance_norm_, nnpack_layout, reflect_conv
from engine.nets.space_to_depth import SpaceToDepthConv
from engine.nets.state import load_strict, read_state_dict, without_norm_stats

ARCH = "CycleGAN resnet_9blocks generator"


def _norm(channels: int) -> nn.InstanceNorm2d:
    return nn.InstanceNorm2d(channels)  # upstream: affine=False, no running stats; no parameters


class _ResnetBlock(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.conv_block = nn.Sequential(
            nn.ReflectionPad2d(1), nn.Conv2d(dim, dim, 3), _norm(dim), nn.ReLU(True),
            nn.ReflectionPad2d(1), nn.Conv2d(dim, dim, 3), _norm(dim),
        )  # fmt: skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = instance_norm_(reflect_conv(x, self.conv_block[1], nnpack=True), relu=True)
        return instance_norm_(reflect_conv(y, self.conv_block[5], nnpack=True)).add_(x)


class ResnetGenerator(nn.Module):
    """RGB 0..1 in, RGB 0..1 out, once `fold_pixel_range` has run (the loader does it)."""

    def __init__(self, n_blocks: int = 9, ngf: int = 64) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.ReflectionPad2d(3), nn.Conv2d(3, ngf, 7), _norm(ngf), nn.ReLU(True)]
        for mult in (1, 2):
            layers += [
                nn.Conv2d(ngf * mult, ngf * mult * 2, 3, stride=2, padding=1),
                _norm(ngf * mult * 2),
                nn.ReLU(True),
            ]
        layers += [_ResnetBlock(ngf * 4) for _ in range(n_blocks)]
        for mult in (4, 2):
            layers += [
                nn.ConvTranspose2d(ngf * mult, ngf * mult // 2, 3, stride=2, padding=1, output_padding=1),
                _norm(ngf * mult // 2),
                nn.ReLU(True),
            ]
        layers += [nn.ReflectionPad2d(3), nn.Conv2d(ngf, 3, 7), nn.Tanh()]
        self.model = nn.Sequential(*layers)
        self._convs = [m for m in layers if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))]
        self._blocks = [m for m in layers if isinstance(m, _ResnetBlock)]

    def fold_pixel_range(self) -> None:
        """Absorb upstream's -1..1 input and tanh output into the first and last convs.

        conv(2x - 1) is a conv with weights 2W and bias b - sum(W) (reflection padding commutes
        with the affine map), and (tanh(z) + 1) / 2 == sigmoid(2z).
        """
        first, last = self._convs[0], self._convs[-1]
        with torch.no_grad():
            first.bias.sub_(first.weight.sum(dim=(1, 2, 3)))
            first.weight.mul_(2.0)
            last.weight.mul_(2.0)
            last.bias.mul_(2.0)
        self.head = SpaceToDepthConv(last, factor=2)  # the 3-channel 7x7 conv, blocked (faster on CPU)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        stem, down1, down2, up1, up2, _ = self._convs
        y = instance_norm_(reflect_conv(x, stem), relu=True)
        y = instance_norm_(down1(y), relu=True)
        y = instance_norm_(down2(y), relu=True)
        y = nnpack_layout(y)
        for block in self._blocks:
            y = block(y)
        y = channels_last(y)
        y = instance_norm_(up1(y), relu=True)
        y = instance_norm_(up2(y), relu=True)
        return self.head(y).sigmoid_()


def read_state(path: Path) -> dict[str, torch.Tensor]:
    """The generator's state in a junyanz checkpoint, less the norm statistics older releases carry."""
    return without_norm_stats(read_state_dict(path, ARCH))


def load_resnet_generator(path: Path, device: torch.device) -> ResnetGenerator:
    """A CycleGAN generator checkpoint (e.g. style_monet.pth / latest_net_G_A.pth), ready to run."""
    net = ResnetGenerator()
    load_strict(net, read_state(path), path, ARCH)
    net.fold_pixel_range()
    return frozen(net, device, nchw=net._blocks)
