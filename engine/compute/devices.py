"""Choosing the compute device (`auto` prefers CUDA, then Apple's MPS, then the CPU) and how much
memory it has left."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from engine.errors import UserError
from nst_common import settings

DEVICE_CHOICES: tuple[str, ...] = settings.BY_NAME["device"].choices


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


def gpu_name(device: torch.device) -> str | None:
    """The GPU's name and CUDA version, as benchmark figures name their machine; None for the CPU."""
    if device.type != "cuda":
        return None
    return f"{torch.cuda.get_device_name(device)}, CUDA {torch.version.cuda}"


def synchronize(device: torch.device) -> None:
    """Wait for the work queued on `device`: a GPU's clock reads only what has finished."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def free_memory(device: torch.device) -> int:
    """Bytes a job could still allocate on `device` now: the GPU's free memory, or for the CPU (and
    MPS, which shares it) the system's available memory, capped by the container's (cgroup) limit."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    available = _meminfo("MemAvailable")
    if available is None:
        available = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    cgroup = _cgroup_room()
    return available if cgroup is None else min(available, cgroup)


def used_memory(device: torch.device) -> int:
    """Bytes this process already holds on `device` (resident memory for the CPU and MPS)."""
    if device.type == "cuda":
        return torch.cuda.memory_reserved(device)
    try:
        resident_pages = int(Path("/proc/self/statm").read_text().split()[1])
    except (OSError, IndexError, ValueError):
        return 0  # not Linux: the budget is then the free memory alone
    return resident_pages * os.sysconf("SC_PAGE_SIZE")


def _meminfo(key: str) -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith(f"{key}:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    return None


def _cgroup_room() -> int | None:
    """What the cgroup v2 memory limit still allows, when there is one."""
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        current = int(Path("/sys/fs/cgroup/memory.current").read_text())
    except (OSError, ValueError):
        return None
    return None if limit == "max" else max(0, int(limit) - current)
