"""`vgg19-normalised`: the encoder of AdaIN (naoto0804/pytorch-AdaIN's vgg_normalised.pth).

Its leading 1x1 conv does the preprocessing, so RGB 0..1 goes straight in. Reflection padding and
ceil-mode pooling match upstream, which its decoder was trained against. The file is the weights
manager's `adain_vgg` entry, checked against the sha256 pinned at its first download or import.
"""

from __future__ import annotations

from pathlib import Path

from torch import nn

from engine import weights
from engine.backbones.base import VGG19, Backbone, VggSpec
from engine.nets.state import load_strict, read_state_dict

NAME = "vgg19-normalised"
WEIGHTS_ID = "adain_vgg"
ARCH = "pytorch-AdaIN vgg_normalised"
SPEC = VggSpec(VGG19, reflect_pad=True, ceil_mode=True, stem=True)


def transform() -> nn.Module:
    return nn.Identity()


def find() -> Path | None:
    """The installed file when it is within its size limit and matches its pin, else None."""
    return weights.path_for(WEIGHTS_ID)


def load(pooling: str) -> Backbone:
    def read(path: Path) -> Backbone:
        backbone = Backbone(NAME, SPEC, pooling, transform())
        load_strict(backbone.layers, read_state_dict(path, ARCH), path, ARCH)  # weights_only=True
        return backbone

    return weights.load_with(
        WEIGHTS_ID, read, hint=f"or use the default backbone vgg16-hed instead of {NAME}"
    )
