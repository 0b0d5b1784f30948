"""The fastest correct compute path on this machine, chosen by measuring it, and remembered.

Which kernels win depends on the CPU (AVX2 or AVX-512, bf16 units or not), its core count and the torch
release, and a CPU's name does not predict it: on a Zen 4 EPYC, VGG19's passes ran fastest in bf16 at 256 px
and through NNPACK's Winograd kernel at 512 px (bench/gatys.py); on a Xeon with AMX, NNPACK tied with oneDNN
and bf16 was 2.4x faster. So the first time a workload runs on a machine, or at `nst tune`, the engine times
each candidate path on a small fixed workload and keeps the times in the data folder, keyed by the machine and
the torch version. `nst info` shows the choice and the times behind it. The same record keeps what finished
jobs took per unit of work, so that an engine's first estimate of a job's time is this machine's, not a
table's. The `precision` setting and the NST_PRECISION environment variable (a path's name) override the
choice; a path whose private torch functions are missing is never a candidate.

Candidates are measured where they are exact enough: bf16 keeps the image, the targets and the loss in fp32
(only the network's passes run in bf16), and tests/test_precision.py holds each path to a stated tolerance
against fp32. torch.compile is not a candidate: it came within 18% of these eager paths either way, after 10
to 90 s of compilation per image size (bench/compile.py).
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import functools
import json
import math
import os
import platform
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

from engine.errors import UserError
from engine.nets.ops import nnpack_usable
from nst_common.endpoints import data_dir

PRECISION_ENV = "NST_PRECISION"
CACHE_NAME = "compute-paths.json"
REPEATS = 2  # timed runs per candidate after one warm-up; the minimum counts
WIN_MARGIN = 1.05  # a reduced-precision path must beat fp32 by this much to be chosen
RATES = "job-rates"  # the record of what finished jobs took per unit of work (engine/planner.py)


@dataclasses.dataclass(frozen=True)
class ComputePath:
    """How a network's passes run: number format, memory layout, and the conv kernel."""

    name: str
    dtype: torch.dtype = torch.float32  # bfloat16: the passes run under autocast
    channels_last: bool = True
    winograd: bool = False  # the backbone's 3x3 convs through NNPACK (engine/backbones/winograd.py)

    @property
    def layout(self) -> torch.memory_format:
        return torch.channels_last if self.channels_last else torch.contiguous_format

    @contextlib.contextmanager
    def autocast(self, device: torch.device) -> Iterator[None]:
        if self.dtype == torch.float32:
            yield
        else:
            with torch.autocast(device.type, dtype=self.dtype):
                yield


FP32 = ComputePath("fp32")
WINOGRAD = ComputePath("fp32-winograd", channels_last=False, winograd=True)
BF16 = ComputePath("bf16", dtype=torch.bfloat16)
FP16 = ComputePath("fp16", dtype=torch.float16)
BY_NAME = {p.name: p for p in (FP32, WINOGRAD, BF16, FP16)}
# Workloads whose time goes into stacks of frozen 3x3 convs that the Winograd path runs through
# NNPACK: Gatys' evaluations and the loss network of a training step (a backbone's passes and input
# gradients), and AdaIN's encoder and decoder. (Johnson's and CycleGAN's residual blocks take NNPACK
# in fp32 anyway.)
WINOGRAD_WORKLOADS = ("gatys/", "train-", "adain")


def candidates(workload: str) -> tuple[ComputePath, ...]:
    """The paths worth timing for a workload ("gatys/<backbone>" or a feed-forward method's name)."""
    if workload.startswith(WINOGRAD_WORKLOADS):  # NCHW only where NNPACK wants it: oneDNN is faster
        return (FP32, WINOGRAD, BF16) if nnpack_usable() else (FP32, BF16)  # in channels_last
    return (FP32, BF16)


# CPU features that decide which compute paths can win, beyond torch's capability name (AVX512
# covers CPUs with and without bf16 units and AMX).
UNITS = ("avx512_bf16", "amx_bf16", "avx512_fp16")


def machine() -> dict[str, Any]:
    """What the choice depends on, and what every benchmark figure names."""
    cpu, flags = _cpuinfo()
    return {
        "cpu": cpu,
        "capability": torch.backends.cpu.get_cpu_capability(),
        "units": [unit for unit in UNITS if unit in flags],
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
    }


def describe(m: dict[str, Any]) -> str:
    """`machine()` in one line, as every benchmark and `nst info` print it. The units are the
    CPU's, whether or not the kernels torch runs (the capability) use them."""
    units = f" (CPU units: {', '.join(m['units'])})" if m.get("units") else ""
    return f"{m['cpu']}, {m['capability']}{units}, {m['threads']} threads, torch {m['torch']}"


@functools.cache
def _cpuinfo() -> tuple[str, set[str]]:
    """The CPU's model name, with its x86 family and model numbers (cloud machines often report
    only "AMD EPYC", for several generations), and its feature flags: the first core's, read once."""
    fields: dict[str, str] = {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if not line.strip():
                break  # the end of the first core's block
            key, _, value = line.partition(":")
            fields.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    name = fields.get("model name") or platform.processor() or platform.machine()
    if "cpu family" in fields and "model" in fields:
        name += f" (family {fields['cpu family']}, model {fields['model']})"
    return name, set(fields.get("flags", "").split())


def _key() -> str:
    m = machine()
    return f"{m['cpu']} | {m['capability']} | {m['threads']} threads | torch {m['torch']}"


def override() -> ComputePath | None:
    """The path NST_PRECISION asks for (a path's name: fp32, bf16, ...), if set."""
    wanted = os.environ.get(PRECISION_ENV, "").strip().lower()
    if not wanted or wanted == "auto":
        return None
    if wanted not in BY_NAME:
        raise UserError("bad-option", f"{PRECISION_ENV}={wanted!r}: choose one of auto, {', '.join(BY_NAME)}")
    return BY_NAME[wanted]


Workload = Callable[[ComputePath, int], None]

_lock = threading.Lock()  # one measurement at a time: two would time each other
_file_lock = threading.Lock()  # one change to the cache file at a time: none lost to another
_memory: dict[str, dict[str, Any]] = {}


def cache_file() -> Path:
    return data_dir() / CACHE_NAME


def load() -> dict[str, Any]:
    """This machine's measurements: {workload: {"sides": {side: {path: seconds}}, ...}}, and under
    RATES its job rates."""
    mine = _every().get(_key())
    return mine if isinstance(mine, dict) else {}


def _every() -> dict[str, Any]:
    try:
        every = json.loads(cache_file().read_text())
    except (OSError, ValueError):
        return {}
    return every if isinstance(every, dict) else {}


def _write(every: dict[str, Any]) -> None:
    """The whole file replaced at once: a reader never sees half of it."""
    path = cache_file()
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temp.write_text(json.dumps(every, indent=1, sort_keys=True))
    os.replace(temp, path)


def _save(name: str, record: dict[str, Any]) -> None:
    with _file_lock:
        every = _every()
        every.setdefault(_key(), {})[name] = record
        _write(every)


def rates() -> dict[str, float]:
    """Seconds per unit of work that finished jobs measured on this machine, by "device/method"."""
    found = load().get(RATES)
    if not isinstance(found, dict):
        return {}
    return {k: float(v) for k, v in found.items() if isinstance(v, (int, float)) and v > 0}


def save_rates(measured: dict[str, float]) -> None:
    """Replace the machine's job rates: the next engine's first estimates start from them."""
    _save(RATES, dict(measured))


def measure(workload: str, run: Workload, sides: tuple[int, ...]) -> dict[str, Any]:
    """Time every candidate of `workload` at each side, interleaved, and remember the result."""
    with _lock:
        times: dict[str, dict[str, list[float]]] = {
            str(s): {p.name: [] for p in candidates(workload)} for s in sides
        }
        for side in sides:
            for path in candidates(workload):
                run(path, side)  # warm-up: kernels chosen, memory touched
            for _ in range(REPEATS):
                for path in candidates(workload):
                    start = time.perf_counter()
                    run(path, side)
                    times[str(side)][path.name].append(time.perf_counter() - start)
        record = {
            "sides": {s: {name: min(v) for name, v in ts.items()} for s, ts in times.items()},
            "measured": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "machine": machine(),
        }
        _memory[workload] = record
        _save(workload, record)
        return record


def forget() -> None:
    """Drop what was measured on this machine, so that the next jobs (or `nst tune`) measure again."""
    _memory.clear()
    with _file_lock:
        every = _every()
        if every.pop(_key(), None) is not None:
            _write(every)


def fastest(record: dict[str, Any], pixels: int) -> ComputePath:
    """The fastest path at the measured side nearest to `pixels` (on a log scale)."""
    sides = record["sides"]
    side = min(sides, key=lambda s: abs(math.log(int(s) ** 2 / max(pixels, 1))))
    seconds = {name: t for name, t in sides[side].items() if name in BY_NAME}
    best = min(seconds, key=seconds.__getitem__)
    if BY_NAME[best].dtype != torch.float32:
        fp32_best = min((t for n, t in seconds.items() if BY_NAME[n].dtype == torch.float32), default=None)
        if fp32_best is not None and seconds[best] * WIN_MARGIN > fp32_best:
            best = min((n for n in seconds if BY_NAME[n].dtype == torch.float32), key=seconds.__getitem__)
    return BY_NAME[best]


def recorded(workload: str) -> dict[str, Any] | None:
    """What was measured for `workload` on this machine, from this process or the data folder."""
    if workload not in _memory:
        found = load().get(workload)
        if not isinstance(found, dict) or "sides" not in found:
            return None
        _memory[workload] = found
    return _memory[workload]


MEASURING = "measuring this machine's fastest compute path (once)"


def choose(
    workload: str,
    device: torch.device,
    pixels: int,
    run: Workload,
    sides: tuple[int, ...],
    precision: str = "auto",
    on_measure: Callable[[], None] | None = None,
) -> ComputePath:
    """The path for one job: what the user asked for (the `precision` setting, else NST_PRECISION),
    else on the CPU the measured fastest (measured once per machine), on a GPU bf16 autocast in
    channels_last where it has bf16, else fp32. `on_measure` is told before a measurement starts
    (it takes seconds: the user hears why the job waits)."""
    if precision != "auto":
        return BY_NAME[precision]
    forced = override()
    if forced is not None:
        return forced
    if device.type == "cuda":
        return BF16 if torch.cuda.is_bf16_supported() else FP32
    if device.type != "cpu":
        return FP32
    record = recorded(workload)
    if record is None:
        if on_measure is not None:
            on_measure()
        record = measure(workload, run, sides)
    return fastest(record, pixels)


def summary() -> dict[str, Any]:
    """For `nst info`: per workload, the measured seconds and what each measured side picks."""
    out: dict[str, Any] = {}
    for workload, record in load().items():
        if not isinstance(record, dict) or "sides" not in record:
            continue
        out[workload] = {
            "measured": record.get("measured"),
            "sides": {
                side: {"chosen": fastest(record, int(side) ** 2).name, "seconds": seconds}
                for side, seconds in record["sides"].items()
            },
        }
    return out
