"""Would torch.compile make the engine faster on this machine? The engine's passes as users run
them (eager, on the compute path that engine/compute/tune.py measures fastest here) against the
same work compiled by torch.compile (inductor), in fp32 and under bf16 autocast.

Two workloads, each at the given sides:
- gatys: one loss+gradient evaluation of the Gatys objective (random VGG19). Compiled: the PyTorch
  tutorial's loss model (bench/reference_gatys.py), the plain modules that inductor can trace;
- johnson: one Johnson forward pass (random weights). Compiled: pytorch/examples' TransformerNet.
Each compiled variant reports its first call (tracing and code generation, paid again for every
new image size until dynamic shapes kick in) and its steady time. The engine's own modules are
compiled too where dynamo traces them; where it does not, the line says why.

    .venv/bin/python bench/compile.py                 # 256 and 512 px: ~6 min on 2 CPU cores
    .venv/bin/python bench/compile.py --sides 64 --reps 1
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT / "tests"))

import reference_gatys as ref  # noqa: E402
import zoo  # noqa: E402
from gatys import reference_for  # noqa: E402
from helpers import random_backbone  # noqa: E402

from engine.backbones import vgg  # noqa: E402
from engine.compute import allocator, tune  # noqa: E402
from engine.compute.cache import ModelCache  # noqa: E402
from engine.errors import CancelToken  # noqa: E402
from engine.imaging import images  # noqa: E402
from engine.methods import gatys  # noqa: E402
from engine.methods.base import RunContext  # noqa: E402
from engine.methods.gatys.objective import Objective  # noqa: E402
from engine.nets.transformer_net import TransformerNet  # noqa: E402

BF16 = {"fp32": False, "bf16": True}


def steady(fn: Callable[[], Any], reps: int) -> float:
    """Median seconds of `reps` calls after one warm-up."""
    fn()
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def first_and_steady(fn: Callable[[], Any], reps: int) -> dict[str, Any]:
    """A compiled call's first time (compilation included) and its steady time, or why it failed."""
    start = time.perf_counter()
    try:
        fn()
    except Exception as error:  # a bench reports what inductor refuses, and goes on
        return {"error": str(error).strip().splitlines()[0][:160]}
    return {"first_s": time.perf_counter() - start, "s": steady(fn, reps)}


def gatys_step(side: int, reps: int) -> dict[str, Any]:
    backbone = random_backbone("vgg19", 0)
    content, style = (images.to_tensor(zoo.synthetic_image(side, side, seed)) for seed in (1, 2))
    p = gatys.METHOD.parse_params({"backbone": "vgg19"})
    ctx = RunContext(torch.device("cpu"), lambda _: None, CancelToken(), ModelCache())
    path = gatys.compute_path(backbone, p, ctx, side * side)
    x = content.clone().requires_grad_(True)
    objective = Objective(backbone, p, content, [style], np.ones(1), [], path)

    def engine_step(objective: Callable[[torch.Tensor], Any]) -> Callable[[], None]:
        def step() -> None:
            x.grad = None
            total, _ = objective(x)
            total.backward()

        return step

    out: dict[str, Any] = {"engine path": path.name, "engine s": steady(engine_step(objective), reps)}
    out["engine compiled"] = first_and_steady(engine_step(torch.compile(objective)), reps)
    for precision, bf16 in BF16.items():
        reference = reference_for(backbone, "vgg19", ref.Normalization(vgg.MEAN, vgg.STD), content, style)
        reference.model = torch.compile(reference.model)

        def closure(reference: ref.Reference = reference, bf16: bool = bf16) -> None:
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                reference.closure()

        out[f"tutorial compiled {precision}"] = first_and_steady(closure, reps)
    return out


def johnson_forward(side: int, reps: int) -> dict[str, Any]:
    run = zoo.our_runner("johnson", torch.device("cpu"), "auto")  # as users run it, weights installed
    content = zoo.synthetic_image(side, side, seed=1)
    out: dict[str, Any] = {"engine s": steady(lambda: run(content), reps)}
    x = torch.from_numpy(content).permute(2, 0, 1)[None].mul(255).contiguous()
    engine_net = TransformerNet().eval()
    engine_net.prepare()
    compiled_engine = torch.compile(engine_net)
    upstream = torch.compile(zoo.johnson_model().eval())
    for precision, bf16 in BF16.items():
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            out[f"engine compiled {precision}"] = first_and_steady(lambda: compiled_engine(x), reps)
            out[f"upstream compiled {precision}"] = first_and_steady(lambda: upstream(x), reps)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sides", type=int, nargs="+", default=[256, 512])
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    allocator.configure()
    machine = tune.machine()
    print(tune.describe(machine))
    result: dict[str, Any] = {"machine": machine, "gatys": {}, "johnson": {}}
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["NST_HOME"] = str(Path(tmp) / "home")  # the fixed-seed weights, installed there
        zoo.save_weights(Path(tmp))
        for side in args.sides:
            for name, bench in (("gatys", gatys_step), ("johnson", johnson_forward)):
                figures = bench(side, args.reps)
                result[name][str(side)] = figures
                print(f"\n{name} at {side} px")
                base = figures["engine s"]
                for label, value in figures.items():
                    if isinstance(value, dict) and "s" in value:
                        ratio = base / value["s"]
                        print(f"  {label:26} {value['s']:7.3f} s  ({ratio:.2f}x the engine's)  "
                              f"first call {value['first_s']:.1f} s")  # fmt: skip
                    elif isinstance(value, dict):
                        print(f"  {label:26} fails: {value['error']}")
                    elif isinstance(value, float):
                        print(f"  {label:26} {value:7.3f} s")
                    else:
                        print(f"  {label:26} {value}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
