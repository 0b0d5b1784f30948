"""`vgg19`: torchvision's ImageNet VGG19 (IMAGENET1K_V1), the classic Gatys backbone.

The file is the weights manager's `vgg19` entry: installed by `nst models pull vgg19` (or
`nst models import vgg19 FILE`), checked against the published prefix and the pinned sha256.
torch's hub cache is never read behind the manager's back; a copy torchvision downloaded there is
installed with `nst models import`.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from engine import weights
from engine.backbones.base import VGG19, Backbone, InputTransform, VggSpec
from engine.nets.state import load_strict, read_state_dict

NAME = "vgg19"
WEIGHTS_ID = "vgg19"
ARCH = "torchvision VGG19"
SPEC = VggSpec(VGG19)
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)


def transform() -> InputTransform:
    return InputTransform(MEAN, [1 / s for s in STD], bgr=False)


def find() -> Path | None:
    """The installed file when it is within its size limit and matches its sha256, else None."""
    return weights.path_for(WEIGHTS_ID)


def named_as_torchvision(layers: nn.Module) -> nn.Module:
    """`layers` under torchvision's names (`features.0.weight`, ...), so that loading needs no
    renaming and a message names a file's keys as the file has them."""
    return nn.ModuleDict({"features": layers})


def read_features(path: Path, arch: str = ARCH) -> dict[str, torch.Tensor]:
    """The `features.*` tensors of a torchvision VGG checkpoint: the classifier is never used."""
    return {k: v for k, v in read_state_dict(path, arch).items() if k.startswith("features.")}


def load(pooling: str) -> Backbone:
    manifest = weights.load_manifest()
    cached = Path(torch.hub.get_dir()) / "checkpoints" / manifest.entry(WEIGHTS_ID).file

    def read(path: Path) -> Backbone:
        backbone = Backbone(NAME, SPEC, pooling, transform())
        load_strict(named_as_torchvision(backbone.layers), read_features(path), path, ARCH)
        return backbone

    return weights.load_with(
        WEIGHTS_ID,
        read,
        manifest,
        hint=f"if torchvision has downloaded it already: nst models import {WEIGHTS_ID} {cached}; "
        f"or use the default backbone vgg16-hed instead of {NAME}",
    )
