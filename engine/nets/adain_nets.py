"""AdaIN's encoder (normalised VGG-19 up to relu4_1) and decoder, as naoto0804/pytorch-AdaIN saves them,
and the encoder of a decoder trained here (`nst train adain`): any engine backbone up to relu4_1.

Upstream: naoto0804/pytorch-AdaIN net.py (`vgg` and `decoder` Sequentials), test.py (the encoder is
the first 31 layers of `vgg`; RGB 0..1 goes straight in). Both files are plain Sequential state
dicts ("0.weight", ...). They load into upstream-shaped layer lists, which are then compiled into a
`ConvStack`: the same maths with each upsampling conv run at the lower resolution (sub-pixel form)
and the 1x1 colour stem folded into the first 3x3 conv.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from engine.backbones import Backbone, load_backbone
from engine.backbones.adain import ARCH as ENCODER_ARCH
from engine.backbones.adain import SPEC as VGG_NORMALISED
from engine.backbones.base import build_vgg
from engine.nets.ops import UpsampleConv3x3, frozen, reflect_conv, winograd_wanted
from engine.nets.state import load_strict, read_state_dict

ENCODER_LAYERS = 31  # vgg[:31] ends at relu4_1
ENCODER_TAP = "relu4_1"
DECODER_ARCH = "pytorch-AdaIN decoder"


def decoder_layers() -> nn.Sequential:
    """The upstream decoder layer for layer: relu4_1 features (512 channels) back to RGB."""
    layers: list[nn.Module] = []
    # (in, out) per 3x3 conv; "up" is a nearest 2x upsampling before the next conv.
    plan = [
        (512, 256), "up", (256, 256), (256, 256), (256, 256), (256, 128),
        "up", (128, 128), (128, 64), "up", (64, 64), (64, 3),
    ]  # fmt: skip
    for step in plan:
        if step == "up":
            layers.append(nn.Upsample(scale_factor=2, mode="nearest"))
            continue
        layers += [nn.ReflectionPad2d(1), nn.Conv2d(*step, 3), nn.ReLU()]
    return nn.Sequential(*layers[:-1])  # the last conv has no ReLU


class ConvStack(nn.Module):
    """A chain of reflection-padded 3x3 convs with ReLUs, max pools and nearest upsamplings.

    Built from an upstream-style Sequential; `plan` holds one (op, conv index, relu) per step.
    """

    def __init__(self, layers: nn.Sequential) -> None:
        super().__init__()
        convs: list[nn.Module] = []
        plan: list[tuple[str, int, bool]] = []
        stem: nn.Conv2d | None = None
        upsample = False
        for layer in layers:
            if isinstance(layer, nn.Conv2d) and layer.kernel_size == (1, 1):
                stem = layer  # vgg_normalised's colour transform, folded into the next conv
            elif isinstance(layer, nn.Conv2d):
                if stem is not None:
                    _fold_pointwise(stem, layer)
                    stem = None
                convs.append(UpsampleConv3x3(layer) if upsample else layer)
                plan.append(("upconv" if upsample else "conv", len(convs) - 1, False))
                upsample = False
            elif isinstance(layer, nn.ReLU):
                op, index, _ = plan[-1]
                plan[-1] = (op, index, True)
            elif isinstance(layer, nn.MaxPool2d):
                plan.append(("pool", -1, False))
            elif isinstance(layer, nn.Upsample):
                upsample = True
            elif not isinstance(layer, nn.ReflectionPad2d):
                raise TypeError(f"ConvStack cannot run {type(layer).__name__}")
        self.convs = nn.ModuleList(convs)
        self.plan = tuple(plan)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for op, index, relu in self.plan:
            if op == "pool":
                x = F.max_pool2d(x, 2, 2, ceil_mode=True)
                continue
            layer = self.convs[index]
            x = layer(x) if op == "upconv" else reflect_conv(x, layer, nnpack=winograd_wanted(layer))
            if relu:
                x = x.relu_()
        return x


def _fold_pointwise(pointwise: nn.Conv2d, conv: nn.Conv2d) -> None:
    """conv(pad(P x + c)) == conv'(pad(x)): reflection padding commutes with a per-pixel affine map."""
    with torch.no_grad():
        conv.bias.add_(torch.einsum("omhw,m->o", conv.weight, pointwise.bias))
        conv.weight.data = torch.einsum("omhw,mi->oihw", conv.weight, pointwise.weight[:, :, 0, 0])


def load_encoder(path: Path, device: torch.device) -> ConvStack:
    """vgg_normalised.pth (all 53 upstream layers are checked), cut at relu4_1."""
    with torch.device("meta"):
        layers, _ = build_vgg(VGG_NORMALISED)
    layers.to_empty(device="cpu")
    load_strict(layers, read_state_dict(path, ENCODER_ARCH), path, ENCODER_ARCH)
    return frozen(ConvStack(layers[:ENCODER_LAYERS]), device)


def load_decoder(path: Path, device: torch.device) -> ConvStack:
    """decoder.pth from pytorch-AdaIN's release (or one trained with its train.py)."""
    with torch.device("meta"):
        layers = decoder_layers()
    layers.to_empty(device="cpu")
    load_strict(layers, read_state_dict(path, DECODER_ARCH), path, DECODER_ARCH)
    return frozen(ConvStack(layers), device)


class BackboneEncoder(nn.Module):
    """A backbone's relu4_1 features: the encoder of a decoder trained by `nst train adain`.

    It runs in whatever precision the caller's autocast says and returns float32."""

    def __init__(self, backbone: Backbone) -> None:
        super().__init__()
        self.backbone = backbone

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(x, (ENCODER_TAP,))[ENCODER_TAP]


def load_backbone_encoder(name: str, device: torch.device) -> BackboneEncoder:
    return BackboneEncoder(load_backbone(name, device=device))
