"""`vgg19-normalised`: the encoder of AdaIN (naoto0804/pytorch-AdaIN's vgg_normalised.pth).

Its leading 1x1 conv does the preprocessing, so RGB 0..1 goes straight in. Reflection padding and
ceil-mode pooling match upstream, which its decoder was trained against.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from engine.backbones.base import VGG19, Backbone, VggSpec, load_state
from engine.errors import UserError
from engine.paths import weights_dir

NAME = "vgg19-normalised"
FILE = "vgg_normalised.pth"
URL = f"https://github.com/naoto0804/pytorch-AdaIN/releases/download/v0.0.0/{FILE}"
SPEC = VggSpec(VGG19, reflect_pad=True, ceil_mode=True, stem=True)


def transform() -> nn.Module:
    return nn.Identity()


def find() -> Path | None:
    path = weights_dir() / FILE
    return path if path.is_file() else None


def load(pooling: str) -> Backbone:
    path = find()
    if path is None:
        raise UserError(
            "missing-weights",
            f"backbone {NAME} needs {FILE}; download {URL} into {weights_dir()}, "
            "or use the default backbone vgg16-hed",
        )
    backbone = Backbone(NAME, SPEC, pooling, transform())
    load_state(backbone, torch.load(path, map_location="cpu", weights_only=True), path)
    return backbone
