"""Round-trip overhead of the socket protocol for one 4096x4096 RGBA layer, model time excluded.

The engine runs in a child process (as it does for GIMP) with a runner that hands the content
straight back, so what is timed is: the plug-in's client framing and sending the layer, the server
reading and validating it, queueing the job, and the result coming back the same way.

    .venv/bin/python bench/transport.py [--side 4096] [--repeat 5]

Prints one line per dtype, then one JSON line. Target: under 0.5 s for u8.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "plugin" / "neural_style")]

TARGET_U8_S = 0.5


def _serve(path: str) -> None:
    """The child: a real engine server whose runner returns the content unchanged."""
    from engine.protocol import Endpoint, Limits
    from engine.server import Server, ServerConfig

    def echo(job: Any, progress: Any, cancel: Any, cache: Any) -> Any:
        return job.content

    config = ServerConfig(Endpoint("unix", path=path), limits=Limits(max_payload=2 << 30), idle_timeout=0)
    Server(config, echo, lambda: {"methods": {"echo": {}}}, lambda job: "cpu").serve_forever()


def _measure(side: int, repeat: int) -> dict[str, Any]:
    import client
    import protocol

    folder = tempfile.mkdtemp(prefix="nst-bench-", dir="/tmp")
    path = os.path.join(folder, "engine.sock")
    child = subprocess.Popen([sys.executable, __file__, "--serve", path])
    try:
        engine = client.EngineClient("/nonexistent/engine.json", endpoint=f"unix:{path}")
        deadline = time.monotonic() + 60
        while True:
            try:
                engine.hello()
                break
            except client.EngineError:
                if time.monotonic() > deadline or child.poll() is not None:
                    raise
                time.sleep(0.1)
        out: dict[str, Any] = {"side": side, "repeat": repeat}
        for dtype, size in (("u8", 1), ("f32", 4)):
            data = os.urandom(side * side * 4 * size)
            job = protocol.StylizeJob("echo", {}, protocol.RawImage(side, side, 4, dtype, data))
            times = []
            for _ in range(repeat):
                start = time.perf_counter()
                result = engine.stylize(job, lambda f, m: None, lambda: False)
                times.append(time.perf_counter() - start)
                if result.data[-4096:] != data[-4096:] or len(result.data) != len(data):
                    raise SystemExit(f"{dtype}: the result differs from what was sent")
                del result
            mib = len(data) / (1 << 20)
            best, median = min(times), statistics.median(times)
            print(
                f"{side}x{side} RGBA {dtype:>3}: {mib:5.0f} MiB each way, round trip median {median:.3f} s "
                f"(best {best:.3f} s, {2 * mib / median:6.0f} MiB/s)"
            )
            out[f"{dtype}_median_s"] = round(median, 4)
            out[f"{dtype}_best_s"] = round(best, 4)
            out[f"{dtype}_mib"] = round(mib)
        out["target_u8_s"] = TARGET_U8_S
        out["u8_within_target"] = out["u8_median_s"] < TARGET_U8_S
        return out
    finally:
        child.terminate()
        child.wait(10)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--side", type=int, default=4096)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--serve", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        _serve(args.serve)
        return 0
    result = _measure(args.side, args.repeat)
    print(json.dumps({"bench": "transport", **result}))
    return 0 if result["u8_within_target"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
