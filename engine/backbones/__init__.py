"""Frozen VGG feature extractors behind one interface: `load_backbone(name)(image, taps)`.

Each weight source lives in its own module (hed, vgg, adain) with `find`, `load` and the
architecture `SPEC`; this module is the registry the methods and `nst info` use.
"""

from __future__ import annotations

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
    "source_of",
]

_SOURCES = {module.NAME: module for module in (hed, vgg, adain)}
BACKBONES: tuple[str, ...] = settings.BY_NAME["backbone"].choices  # declared with Gatys' settings
DEFAULT_BACKBONE: str = settings.BY_NAME["backbone"].default


def source_of(name: str) -> ModuleType:
    """The module of the backbone called `name`: its architecture (SPEC), input transform and files."""
    if name not in _SOURCES:
        raise UserError("bad-option", f"unknown backbone {name!r}; choose one of: {', '.join(BACKBONES)}")
    return _SOURCES[name]


def load_backbone(name: str, pooling: str = "max", device: torch.device | str = "cpu") -> Backbone:
    """The named backbone with its pretrained weights, frozen and in eval mode on `device`."""
    source = source_of(name)
    check_pooling(pooling)
    return source.load(pooling).freeze(device)


def find_backbones() -> dict[str, str | None]:
    """Backbone name -> path of its weights file, or None where it is not installed (for `nst info`)."""
    found = {}
    for name in BACKBONES:
        path = _SOURCES[name].find()
        found[name] = str(path) if path else None
    return found
