"""Round-trip overhead of the socket protocol for large layers, model time excluded.

The engine runs in a child process (as it does for GIMP) with a runner that hands the content
straight back, so what is timed is: the plug-in's client sending the layer in chunks, the server
checking the header and receiving the chunks into one buffer, queueing the job, and the result
coming back the same way. Cases: a 4096x4096 RGBA layer in u8 and in f32, and an 8192x8192 RGB u8
layer. Also shown: how much the engine's peak resident memory grew over the run (VmHWM), which
with chunking should be about one copy of the largest layer.

    .venv/bin/python bench/transport.py [--side 4096] [--big-side 8192] [--repeat 5] [--chunk 16M]

Prints one line per case, then one JSON line. Target: under 0.5 s for 4096x4096 RGBA u8.
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


def _serve(path: str, chunk: int) -> None:
    """The child: a real engine server whose runner returns the content unchanged."""
    from engine.service.server import Server, ServerConfig
    from nst_common.endpoints import Endpoint
    from nst_common.framing import Limits

    def echo(job: Any, progress: Any, cancel: Any, cache: Any) -> Any:
        return job.content

    limits = Limits(max_payload=chunk, chunk_size=chunk)  # the client sends chunks of max_payload too
    config = ServerConfig(Endpoint("unix", path=path), limits=limits, idle_timeout=0)
    Server(config, echo, lambda: {"methods": {"echo": {}}}, lambda job: "cpu").serve_forever()


def _kib(pid: int, field: str) -> int:
    """A VmRSS/VmHWM figure of a process, in KiB (0 where /proc is missing)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def _measure(cases: list[tuple[int, int, str]], repeat: int, chunk: int) -> dict[str, Any]:
    import client

    from nst_common import messages

    folder = tempfile.mkdtemp(prefix="nst-bench-", dir="/tmp")
    path = os.path.join(folder, "engine.sock")
    child = subprocess.Popen([sys.executable, __file__, "--serve", path, "--chunk", str(chunk)])
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
        rss_before = _kib(child.pid, "VmRSS")
        out: dict[str, Any] = {"repeat": repeat, "chunk_mib": chunk / (1 << 20), "cases": []}
        largest = 0
        for side, channels, dtype in cases:
            size = side * side * channels * messages.DTYPE_SIZES[dtype]
            largest = max(largest, size)
            data = os.urandom(size)
            job = messages.StylizeJob("echo", {}, messages.RawImage(side, side, channels, dtype, data))
            times = []
            for _ in range(repeat):
                start = time.perf_counter()
                result = engine.stylize(job, lambda f, m: None, lambda: False)
                times.append(time.perf_counter() - start)
                if result.data[-4096:] != data[-4096:] or len(result.data) != len(data):
                    raise SystemExit(
                        f"{side}x{side}x{channels} {dtype}: the result differs from what was sent"
                    )
                del result
            del job, data
            mib = size / (1 << 20)
            best, median = min(times), statistics.median(times)
            name = f"{side}x{side} {'RGBA' if channels == 4 else 'RGB'} {dtype}"
            print(
                f"{name:>20}: {mib:5.0f} MiB each way, round trip median {median:.3f} s "
                f"(best {best:.3f} s, {2 * mib / median:6.0f} MiB/s)",
                flush=True,
            )
            out["cases"].append(
                {"case": name, "mib": round(mib), "median_s": round(median, 4), "best_s": round(best, 4)}
            )
        grew = (_kib(child.pid, "VmHWM") - rss_before) / 1024
        if rss_before:
            print(
                f"engine peak RSS grew by {grew:.0f} MiB over the run "
                f"({grew / (largest / (1 << 20)):.2f} x the largest layer, {largest >> 20} MiB)"
            )
            out["engine_peak_growth_mib"] = round(grew)
        first = out["cases"][0]
        out["target_u8_s"] = TARGET_U8_S
        out["u8_within_target"] = first["median_s"] < TARGET_U8_S
        return out
    finally:
        child.terminate()
        child.wait(10)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--side", type=int, default=4096, help="RGBA u8 and f32 layers this wide and high")
    parser.add_argument("--big-side", type=int, default=8192, help="an RGB u8 layer this size too; 0: none")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--chunk", type=int, default=16 << 20, help="bytes per chunk, both ways")
    parser.add_argument("--serve", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        _serve(args.serve, args.chunk)
        return 0
    cases = [(args.side, 4, "u8"), (args.side, 4, "f32")] + (
        [(args.big_side, 3, "u8")] if args.big_side else []
    )
    result = _measure(cases, args.repeat, args.chunk)
    print(json.dumps({"bench": "transport", **result}))
    return 0 if result["u8_within_target"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
