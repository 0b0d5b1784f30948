"""glibc malloc settings for a process that frees and re-allocates the same big tensors every pass.

By default glibc serves each block over its dynamic mmap threshold (at most 32 MiB) with a fresh
mmap and unmaps it on free, and threads other than the main one get their own arenas, whose heaps
cannot hold a block over 64 MiB at all. A 1024 px forward pass allocates tens of activations of
16-128 MiB: every one is unmapped when freed and its pages fault in again, about 400,000 page
faults per Johnson pass, 15-20% of its CPU time, and more wall time when two threads' faults contend.
"""

from __future__ import annotations

import ctypes
import functools
import os
import sys

# mallopt() parameter numbers from glibc's malloc.h.
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_M_ARENA_MAX = -8

MMAP_THRESHOLD = 256 << 20  # blocks bigger than this still come from, and go back to, the OS
TRIM_THRESHOLD = 1 << 30  # free memory at the top of the heap kept for the next pass, at most

_configured = False


def configure() -> bool:
    """Make glibc keep freed tensor memory for reuse; True where it applied (Linux with glibc).

    Every thread allocates from the main heap (one arena), blocks up to MMAP_THRESHOLD come from that
    heap, and up to TRIM_THRESHOLD of free memory at its top stays mapped. The trade-off: after a job
    the process stays at about that job's peak memory (free blocks inside the heap are reused, not
    returned), where the default returns most of it; in exchange the next pass at the same size
    faults in no pages (after a few passes: torch's aligned allocations reuse a freed block only
    once it has merged with its neighbours). Memory is bounded by the largest job's peak, and
    single blocks bigger than MMAP_THRESHOLD (huge images) are not held. Call it once at start-up,
    before other threads allocate: threads that already have an arena keep it. Elsewhere (musl,
    macOS, Windows) it does nothing.
    """
    global _configured
    if _configured:
        return True
    mallopt = _glibc_mallopt()
    if mallopt is None:
        return False
    settings = ((_M_ARENA_MAX, 1), (_M_MMAP_THRESHOLD, MMAP_THRESHOLD), (_M_TRIM_THRESHOLD, TRIM_THRESHOLD))
    _configured = all(mallopt(param, value) == 1 for param, value in settings)
    return _configured


def release() -> bool:
    """Hand the heap's free pages back to the OS now; True where that happened (glibc).

    For long passes over a large image in tiles: big image-sized tensors made and freed between
    passes leave holes that the next tile's activations only partly reuse, and resident memory then
    grows well past what is in use (a 2048 px Gatys job: 1.8 GiB of heap for 0.9 GiB in use). After
    a pass of minutes, re-faulting one tile's pages costs milliseconds.
    """
    glibc = _glibc()
    if glibc is None:
        return False
    glibc.malloc_trim.argtypes = (ctypes.c_size_t,)
    glibc.malloc_trim(0)
    return True


def _glibc_mallopt() -> ctypes._CFuncPtr | None:
    """glibc's mallopt, or None where the C library is not glibc."""
    glibc = _glibc()
    if glibc is None:
        return None
    mallopt = glibc.mallopt
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    return mallopt


@functools.cache
def _glibc() -> ctypes.CDLL | None:
    """The C library, where it is glibc."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        if not (os.confstr("CS_GNU_LIBC_VERSION") or "").startswith("glibc"):
            return None
        glibc = ctypes.CDLL(None)
    except (ValueError, OSError):  # musl: no such confstr name
        return None
    return glibc if all(hasattr(glibc, name) for name in ("mallopt", "malloc_trim")) else None
