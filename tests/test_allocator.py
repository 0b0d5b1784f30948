"""engine.compute.allocator: after configure(), a worker thread re-allocating a big tensor faults in no pages;
release() hands freed heap pages back."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# In a fresh process (the settings are process-wide): a worker thread, as the job runner uses, runs
# a chain of 128 MiB tensors like a forward pass, twelve times; prints the page faults of the last.
# The heap settles after a few passes (five here, one more in CI), as freed blocks merge.
PROBE = """
import resource, sys, threading
sys.path.insert(0, {root!r})
if {configure}:
    from engine.compute import allocator
    assert allocator.configure() and allocator.configure()  # idempotent
import torch

def job(out):
    for _ in range(12):
        before = resource.getrusage(resource.RUSAGE_THREAD).ru_minflt
        x = torch.ones(32 << 20)
        for _ in range(3):
            x = x * 2
        out.append(resource.getrusage(resource.RUSAGE_THREAD).ru_minflt - before)

torch.set_num_threads(1)
out = []
worker = threading.Thread(target=job, args=(out,))
worker.start()
worker.join()
print(out[-1])
"""


def _probe(code: str) -> int:
    """The last number `code` prints, run in a fresh process (the settings are process-wide)."""
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return int(done.stdout.strip().splitlines()[-1])


def _last_pass_faults(configure: bool) -> int:
    return _probe(PROBE.format(root=str(ROOT), configure=configure))


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc settings")
def test_configured_worker_thread_reuses_freed_tensor_memory() -> None:
    pages = (128 << 20) // 4096
    assert _last_pass_faults(configure=False) > pages // 2  # the default maps every block afresh
    assert _last_pass_faults(configure=True) < pages // 100


# Configured, freed heap blocks stay resident (that is the point); release() hands them back.
RELEASE_PROBE = """
import sys
sys.path.insert(0, {root!r})
from engine.compute import allocator
assert allocator.configure()
import torch

def resident() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096

blocks = [torch.ones(16 << 20) for _ in range(12)]  # 64 MiB each, from the heap
keep = blocks[-1]  # the top block stays in use, so trimming the top alone could not shrink the heap
del blocks
held = resident()
assert allocator.release()
print(held - resident())
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc settings")
def test_release_returns_freed_heap_pages_below_a_live_block() -> None:
    released = _probe(RELEASE_PROBE.format(root=str(ROOT)))
    assert released > 600 << 20  # 11 freed blocks of 64 MiB, about 704 MiB


# RunContext.tile_done: with no plan to keep to, a tile keeps its pages, unless the method asks for
# a release after every tile (Gatys on the CPU, whose tiles take seconds).
TILE_DONE_PROBE = RELEASE_PROBE.replace(
    "held = resident()\nassert allocator.release()\nprint(held - resident())",
    """from engine.compute.cache import ModelCache
from engine.errors import CancelToken
from engine.methods.base import RunContext

ctx = RunContext(torch.device("cpu"), lambda p: None, CancelToken(), ModelCache())
held = resident()
ctx.tile_done()
assert held - resident() < 16 << 20, "released with no plan and no every_tile"
ctx.tile_done(every_tile=True)
print(held - resident())""",
)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc settings")
def test_tile_done_every_tile_hands_freed_heap_pages_back_on_the_cpu() -> None:
    assert "RunContext" in TILE_DONE_PROBE  # the replacement above found its place
    released = _probe(TILE_DONE_PROBE.format(root=str(ROOT)))
    assert released > 600 << 20
