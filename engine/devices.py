"""Choosing the compute device: `auto` prefers CUDA, then Apple's MPS, then the CPU."""

from __future__ import annotations

import torch

from engine.errors import UserError

DEVICE_CHOICES = ("auto", "cpu", "cuda", "mps")


def available_devices() -> list[str]:
    found = ["cpu"]
    if torch.cuda.is_available():
        found.insert(0, "cuda")
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        found.insert(0, "mps")
    return found


def resolve_device(name: str) -> torch.device:
    if name not in DEVICE_CHOICES:
        raise UserError("bad-option", f"unknown device {name!r}; choose one of: {', '.join(DEVICE_CHOICES)}")
    found = available_devices()
    if name == "auto":
        for preferred in ("cuda", "mps", "cpu"):
            if preferred in found:
                return torch.device(preferred)
    if name not in found:
        raise UserError("no-device", f"device {name!r} is not available here; available: {', '.join(found)}")
    return torch.device(name)
