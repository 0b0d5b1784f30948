"""Frozen VGG feature extractors behind one interface: `load_backbone(name)(image, taps)`.

Each weight source lives in its own module (hed, vgg, adain) with `find`, `load` and the
architecture `SPEC`; this module is the registry the methods and `nst info` use.
"""

from __future__ import annotations

import math
from types import ModuleType

import torch

from engine.backbones import adain, hed, vgg
from engine.backbones.base import Backbone, VggSpec, build_vgg, check_pooling
from engine.errors import UserError
from nst_common import settings

__all__ = [
    "BACKBONES",
    "DEFAULT_BACKBONE",
    "Backbone",
    "VggSpec",
    "build_vgg",
    "find_backbones",
    "load_backbone",
    "random_backbone",
]

_SOURCES = {module.NAME: module for module in (hed, vgg, adain)}
BACKBONES: tuple[str, ...] = settings.BY_NAME["backbone"].choices  # declared with Gatys' settings
DEFAULT_BACKBONE: str = settings.BY_NAME["backbone"].default


def _source(name: str) -> ModuleType:
    if name not in _SOURCES:
        raise UserError("bad-option", f"unknown backbone {name!r}; choose one of: {', '.join(BACKBONES)}")
    return _SOURCES[name]


def load_backbone(name: str, pooling: str = "max", device: torch.device | str = "cpu") -> Backbone:
    """The named backbone with its pretrained weights, frozen and in eval mode on `device`."""
    source = _source(name)
    check_pooling(pooling)
    return source.load(pooling).freeze(device)


def find_backbones() -> dict[str, str | None]:
    """Backbone name -> path of its weights file, or None where it is not installed (for `nst info`)."""
    found = {}
    for name in BACKBONES:
        path = _SOURCES[name].find()
        found[name] = str(path) if path else None
    return found


def random_backbone(
    name: str, seed: int = 0, pooling: str = "max", device: torch.device | str = "cpu"
) -> Backbone:
    """The named backbone's architecture and input transform with seeded random weights.

    For benchmarks and tests that need realistic cost and activation scale without weight files:
    He-normal kernels keep activations from vanishing or exploding through 16 layers.
    """
    source = _source(name)
    check_pooling(pooling)
    backbone = Backbone(name, source.SPEC, pooling, source.transform())
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for conv in backbone.layers:
            if isinstance(conv, torch.nn.Conv2d):
                fan_in = conv.weight[0].numel()
                conv.weight.copy_(torch.randn(conv.weight.shape, generator=generator) * math.sqrt(2 / fan_in))
                conv.bias.copy_(torch.randn(conv.bias.shape, generator=generator) * 0.01)
    return backbone.freeze(device)
