"""`vgg19`: torchvision's ImageNet VGG19 (IMAGENET1K_V1), the classic Gatys backbone.

The file is the weights manager's `vgg19` entry: installed by `nst models pull vgg19` (or
`nst models import vgg19 FILE`), checked against the published prefix and the pinned sha256.
torch's hub cache is never read behind the manager's back; a copy torchvision downloaded there is
installed with `nst models import`.
"""

from __future__ import annotations

from pathlib import Path

import torch

from engine import weights
from engine.backbones.base import VGG19, Backbone, InputTransform, VggSpec, load_state
from engine.nets.state import read_state_dict

NAME = "vgg19"
WEIGHTS_ID = "vgg19"
SPEC = VggSpec(VGG19)
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)


def transform() -> InputTransform:
    return InputTransform(MEAN, [1 / s for s in STD], bgr=False)


def find() -> Path | None:
    """The installed file when it is within its size limit and matches its sha256, else None."""
    return weights.path_for(WEIGHTS_ID)


def load(pooling: str) -> Backbone:
    manifest = weights.load_manifest()
    cached = Path(torch.hub.get_dir()) / "checkpoints" / manifest.entry(WEIGHTS_ID).file
    path = weights.require(
        WEIGHTS_ID,
        manifest,
        hint=f"if torchvision has downloaded it already: nst models import {WEIGHTS_ID} {cached}; "
        f"or use the default backbone vgg16-hed instead of {NAME}",
    )
    state = read_state_dict(path)  # torch.load(weights_only=True)
    features = {k.removeprefix("features."): v for k, v in state.items() if k.startswith("features.")}
    backbone = Backbone(NAME, SPEC, pooling, transform())
    load_state(backbone, features, path)
    return backbone
