"""Large images within a memory bound: time and peak RSS of whole jobs through the pipeline.

Each part runs in its own process, so that its peak resident memory (ru_maxrss) is its own: an
8192x8192 RGB u8 layer through Johnson and through AdaIN, and a 4096x4096 one through Gatys with
the balanced preset, each as the plug-in would send it (a u8 RawImage through `run_job`) with the
job's `memory` setting at the bound. Weights are fixed-seed random ones in the upstream layouts
(bench/zoo.py), installed into a private NST_HOME; the content is bench/zoo.py's synthetic pattern,
made band by band so that making it costs no memory of note.

    .venv/bin/python bench/large.py                       # johnson and adain at 8192 px, 3 GiB
    .venv/bin/python bench/large.py --parts gatys         # gatys balanced at 4096 px
    .venv/bin/python bench/large.py --parts johnson --side 2048 --memory 1024
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

PARTS = ("johnson", "adain", "gatys")
DEFAULT_SIDE = {"johnson": 8192, "adain": 8192, "gatys": 4096}
SETTINGS = {"johnson": {"model": "candy"}, "adain": {}, "gatys": {"preset": "balanced"}}


def _zoo():
    spec = importlib.util.spec_from_file_location("bench_zoo", ROOT / "bench" / "zoo.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _install_weights(part: str, folder: Path) -> None:
    """The fixed-seed models of bench/zoo.py, saved as upstream saves them, through the weights manager."""
    import torch

    from engine import weights

    zoo = _zoo()
    if part == "johnson":
        states = {"johnson_candy": zoo.johnson_state_dict(zoo.johnson_model())}
    elif part == "adain":
        vgg, decoder = zoo.adain_models()
        states = {"adain_vgg": vgg.state_dict(), "adain_decoder": decoder.state_dict()}
    else:
        return  # Gatys' default backbone ships with the engine
    for weight_id, state in states.items():
        torch.save(state, folder / f"{weight_id}.pth")
        weights.import_file(weight_id, folder / f"{weight_id}.pth")


def synthetic_u8(side: int, seed: int = 1) -> bytearray:
    """bench/zoo.py's synthetic image (gradients, stripes, noise) as RGB u8 bytes, 256 rows at a time."""
    import numpy as np

    rng = np.random.default_rng(seed)
    freq, phase = rng.uniform(3, 12, size=3), rng.uniform(0, 6.3, size=3)
    data = bytearray(side * side * 3)
    out = np.frombuffer(data, np.uint8).reshape(side, side, 3)
    xx = np.arange(side, dtype=np.float32)[None, :] / side
    for top in range(0, side, 256):
        yy = np.arange(top, min(top + 256, side), dtype=np.float32)[:, None] / side
        for c in range(3):
            wave = np.sin(freq[c] * (xx + 0.7 * yy) * 6.28 + phase[c]) * (0.6 + 0.4 * yy)
            band = 0.5 + 0.35 * wave + rng.normal(0, 0.03, wave.shape).astype(np.float32)
            out[top : top + len(yy), :, c] = (band.clip(0, 1) * 255 + 0.5).astype(np.uint8)
    return data


def run_part(part: str, side: int, memory_mb: int) -> dict:
    """One job in this process; returns its figures (call it in a fresh process: RSS is per process)."""
    import numpy as np

    from engine.compute import allocator
    from engine.compute.cache import ModelCache
    from engine.errors import CancelToken
    from engine.imaging import images
    from engine.pipeline import run_job
    from nst_common.messages import RawImage, StyleRef, StylizeJob

    allocator.configure()  # as `nst serve` and `nst stylize` do
    folder = Path(os.environ["NST_HOME"])
    _install_weights(part, folder)
    content = RawImage(side, side, 3, "u8", synthetic_u8(side))
    styles = []
    if part != "johnson":
        style = _zoo().synthetic_image(512, 512, seed=2)
        styles = [StyleRef(image=images.to_raw(style, "u8"))]
    params = {**SETTINGS[part], "device": "cpu", "memory": memory_mb}
    if part == "gatys":
        params["size"] = side
    plan: list[str] = []
    last = [0.0]
    started = time.perf_counter()

    def progress(p) -> None:
        if p.stage == "plan":
            plan.append(p.message)
        if p.stage == "plan" or time.monotonic() - last[0] > 30:
            last[0] = time.monotonic()
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
            elapsed = time.perf_counter() - started
            print(
                f"  [{part}] {elapsed:7.0f}s {p.fraction:4.0%} peak {peak:.2f} GiB  {p.message}",
                file=sys.stderr,
                flush=True,
            )

    result = run_job(StylizeJob(part, params, content, styles), progress, CancelToken(), ModelCache())
    seconds = time.perf_counter() - started
    out = np.frombuffer(result.data, np.uint8)[:: 997 * 3]  # a sample: the result is not blank
    return {
        "part": part,
        "side": side,
        "seconds": round(seconds, 1),
        "peak_rss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 3),
        "output_std": round(float(out.std()), 2),
        "plan": plan,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--parts", nargs="+", choices=PARTS, default=["johnson", "adain"])
    parser.add_argument("--side", type=int, help="image side in px (default: 8192, gatys 4096)")
    parser.add_argument(
        "--memory", type=int, default=3072, help="the jobs' memory bound in MiB (default 3072)"
    )
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(run_part(args.child, args.side, args.memory)))
        return
    rows = []
    for part in args.parts:
        side = args.side or DEFAULT_SIDE[part]
        with tempfile.TemporaryDirectory() as home:
            command = [
                sys.executable,
                __file__,
                "--child",
                part,
                "--side",
                str(side),
                "--memory",
                str(args.memory),
            ]
            env = {**os.environ, "NST_HOME": home}
            done = subprocess.run(command, env=env, stdout=subprocess.PIPE, text=True, check=False)
        if done.returncode:
            rows.append({"part": part, "side": side, "error": f"exit status {done.returncode}"})
        else:
            rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
    print(f"{'part':8} {'size':>11} {'time':>9} {'peak RSS':>10}  bound {args.memory / 1024:.1f} GiB")
    for row in rows:
        size = f"{row['side']}x{row['side']}"
        if "error" in row:
            print(f"{row['part']:8} {size:>11}  failed: {row['error']}")
            continue
        within = "yes" if row["peak_rss_gib"] * 1024 <= args.memory else "NO"
        figures = f"{row['seconds']:>8.1f}s {row['peak_rss_gib']:>6.2f} GiB"
        print(f"{row['part']:8} {size:>11} {figures}  within: {within}")
        for line in row["plan"]:
            print(f"{'':8} {line}")
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
