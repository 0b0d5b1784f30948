"""The settings of a training run, each declared once with its default, range and help:
`nst train` derives its options from them, and a checkpoint stores them."""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from typing import Any, ClassVar

from engine.errors import UserError
from nst_common import settings as declared

BACKBONES: tuple[str, ...] = declared.BY_NAME["backbone"].choices
# The stylising precisions but fp16, whose training would need loss scaling, which the loop lacks.
PRECISIONS = tuple(c for c in declared.BY_NAME["precision"].choices if c != "fp16")
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,39}")


def _setting(default: Any, help: str, lo: float | None = None, hi: float | None = None) -> Any:
    return field(default=default, metadata={"help": help, "range": (lo, hi)})


@dataclass(frozen=True)
class Settings:
    """The settings every training run has, with their defaults; each method's class below sets its
    own defaults and adds its own, and `nst train METHOD` is derived from that class."""

    SIZE_MULTIPLE: ClassVar[int] = 4  # the network's stride: crops must divide by it
    CROP_ZOOM: ClassVar[float] = 1.0  # crops of pictures scaled to this times the crop (photos.py)

    steps: int = _setting(2000, "optimiser steps, each on one batch of photos", 1, 10_000_000)
    batch: int = _setting(4, "photos per step (all processes together under torchrun)", 1, 256)
    size: int = _setting(256, "side of the square photo crops", 64, 2048)
    lr: float = _setting(1e-3, "Adam's learning rate", 1e-6, 1.0)
    content_weight: float = _setting(1.0, "weight of the content loss (a relative error)", 0, 1e6)
    style_weight: float = _setting(10.0, "weight of the style loss (a relative error)", 0, 1e6)
    backbone: str = _setting(
        declared.BY_NAME["backbone"].default, "the loss network: " + ", ".join(BACKBONES)
    )
    seed: int = _setting(0, "seeds the network's start and the photo order", 0, 2**31 - 1)
    precision: str = _setting("auto", "auto (measured fastest here), " + ", ".join(PRECISIONS[1:]))
    checkpoint_minutes: float = _setting(5.0, "minutes between checkpoints", 0.01, 1440)
    validate_every: int = _setting(250, "steps between validation pictures (0: only at the end)", 0, 10**7)


@dataclass(frozen=True)
class JohnsonSettings(Settings):
    """pytorch/examples' fast_neural_style training, content at relu2_2 and Grams at four taps."""

    style_size: int = _setting(512, "long side the painting is read at", 64, 4096)
    tv_weight: float = _setting(0.0, "weight of the total-variation smoothing", 0, 1e6)


@dataclass(frozen=True)
class AdaINSettings(Settings):
    """naoto0804/pytorch-AdaIN's train.py: batch 8, Adam at 1e-4 decaying as lr / (1 + decay * step),
    style weight 10. Upstream ran 160,000 steps on a GPU; the default here is a first usable decoder."""

    SIZE_MULTIPLE: ClassVar[int] = 8  # the encoder pools three times
    CROP_ZOOM: ClassVar[float] = 2.0  # upstream: 256 px crops anywhere in pictures scaled to 512

    steps: int = _setting(20_000, "optimiser steps, each on one batch of photos and paintings", 1, 10_000_000)
    batch: int = _setting(8, "photo and painting pairs per step (all processes together)", 1, 256)
    lr: float = _setting(1e-4, "Adam's learning rate at the start", 1e-6, 1.0)
    lr_decay: float = _setting(5e-5, "the rate falls as lr / (1 + lr_decay * step)", 0, 1.0)
    validate_every: int = _setting(1000, "steps between validation pictures (0: only at the end)", 0, 10**7)


# Settings a resumed run may change: they decide how long and how often, not what is learnt.
RESUMABLE_CHANGES = ("steps", "checkpoint_minutes", "validate_every")


def check(settings: Settings) -> None:
    """Each setting within its range, named as the command line names it."""
    for f in dataclasses.fields(settings):
        value = getattr(settings, f.name)
        lo, hi = f.metadata["range"]
        option = "--" + f.name.replace("_", "-")
        if lo is not None and not lo <= value <= hi:
            raise UserError("bad-option", f"{option} {value} is out of range: {lo:g} to {hi:g}")
    if settings.size % settings.SIZE_MULTIPLE:
        raise UserError(
            "bad-option",
            f"--size {settings.size} must be a multiple of {settings.SIZE_MULTIPLE} (the network's stride)",
        )
    if settings.backbone not in BACKBONES:
        raise UserError(
            "bad-option", f"--backbone {settings.backbone!r}: choose one of {', '.join(BACKBONES)}"
        )
    if settings.precision not in PRECISIONS:
        choices = ", ".join(PRECISIONS)
        raise UserError("bad-option", f"--precision {settings.precision!r}: choose one of {choices}")


def check_name(name: str) -> str:
    """A model name that is safe as a file name and a setting value."""
    if not NAME.fullmatch(name):
        raise UserError(
            "bad-option",
            f"model name {name!r}: use 1 to 40 letters, digits, - and _, starting with a letter or digit",
        )
    return name
