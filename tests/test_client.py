"""The plug-in's client against real engines: started detached by the client, killed with SIGKILL."""

from __future__ import annotations

import json
import os
import signal
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import client as plugin_client
import numpy as np
import pytest
from client import EngineClient, EngineError

from engine.service.server import Server
from nst_common import endpoints, messages, session
from nst_common.endpoints import Endpoint

TINY = {"preset": "draft", "size": 16, "seed": 0, "device": "cpu", "iterations": 1, "optimizer": "adam"}
LONG = {"preset": "draft", "size": 64, "seed": 0, "device": "cpu", "iterations": 100000}
NO_CONFIG = "/nonexistent/engine.json"  # no config: connect only, never start an engine


def _job(params: dict[str, Any], seed: int = 0, selection: bool = False) -> Any:
    """A job built from the plug-in's copy of the message schema, as GIMP would."""
    rng = np.random.default_rng(seed)
    P = messages
    content = P.RawImage(20, 14, 4, "u8", rng.integers(0, 256, (14, 20, 4), dtype=np.uint8).tobytes())
    style = P.RawImage(12, 12, 3, "u8", rng.integers(0, 256, (12, 12, 3), dtype=np.uint8).tobytes())
    sel = P.RawImage(20, 14, 1, "u8", bytes(20 * 14)) if selection else None
    return P.StylizeJob("gatys", dict(params), content, [P.StyleRef(image=style)], sel)


class Progress:
    """Records progress and says when the optimisation (not just set-up) is under way."""

    def __init__(self) -> None:
        self.calls: list[tuple[float, str]] = []
        self.running = threading.Event()

    def __call__(self, fraction: float, message: str) -> None:
        self.calls.append((fraction, message))
        if "step" in message:
            self.running.set()


def _run_in_thread(fn: Callable[[], Any]) -> tuple[threading.Thread, dict[str, Any]]:
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["result"] = fn()
        except BaseException as exc:
            box["error"] = exc
        box["at"] = time.monotonic()

    thread = threading.Thread(target=target)
    thread.start()
    return thread, box


def test_starts_the_engine_runs_jobs_cancels_and_survives_a_kill(engine_config: Path) -> None:
    engine = EngineClient(engine_config)
    start = time.monotonic()  # cancelling while the engine starts does not wait for it
    with pytest.raises(EngineError) as info:
        engine.stylize(_job(TINY), Progress(), lambda: time.monotonic() - start > 0.3)
    assert info.value.code == "cancelled" and time.monotonic() - start < 1.5

    caps = engine.hello()  # starts a second engine, which loses the race for the lock and exits
    assert "gatys" in caps["methods"]
    first_pid = engine.last_hello["pid"]
    assert first_pid != os.getpid() and os.getsid(first_pid) == first_pid  # its own session

    job = _job(TINY, 1, selection=True)
    progress = Progress()
    result = engine.stylize(job, progress, lambda: False)
    assert bytes(result.data) == job.content.data
    assert progress.calls and all(0.0 <= f <= 1.0 for f, _ in progress.calls)

    # Cancel a running job: prompt, and the engine is free for the next job.
    progress, cancel = Progress(), threading.Event()
    thread, box = _run_in_thread(lambda: engine.stylize(_job(LONG), progress, cancel.is_set))
    assert progress.running.wait(30)
    cancel.set()
    asked = time.monotonic()
    thread.join(10)
    assert isinstance(box.get("error"), EngineError) and box["error"].code == "cancelled"
    assert box["at"] - asked < 1.0
    assert engine.stylize(_job(TINY, 2), Progress(), lambda: False).width == 20

    # SIGKILL mid-job: a clear error within a second, then the next call starts a new engine.
    progress = Progress()
    thread, box = _run_in_thread(lambda: engine.stylize(_job(LONG), progress, lambda: False))
    assert progress.running.wait(30)
    os.kill(first_pid, signal.SIGKILL)
    killed = time.monotonic()
    thread.join(10)
    error = box.get("error")
    assert isinstance(error, EngineError) and error.code == "engine-died", box
    assert box["at"] - killed < 1.0
    assert "stopped unexpectedly" in error.message and "next run" in error.message
    assert str(endpoints.log_path(engine.env)) in error.message

    job = _job(TINY, 3, selection=True)
    assert bytes(engine.stylize(job, Progress(), lambda: False).data) == job.content.data
    assert engine.last_hello["pid"] != first_pid


def test_a_protocol_mismatch_says_what_to_do(
    make_server: Callable[..., Server], monkeypatch: pytest.MonkeyPatch
) -> None:
    server = make_server()
    ours = messages.PROTOCOL_VERSION
    monkeypatch.setattr(session, "PROTOCOL_VERSION", ours + 1)  # a newer plug-in, an older engine
    with pytest.raises(EngineError) as info:
        EngineClient(NO_CONFIG, endpoint=str(server.address)).hello()
    assert info.value.code == "protocol-mismatch"
    assert f"protocol {ours} " in info.value.message and "install.py" in info.value.message


def test_a_wrong_token_says_where_the_token_goes(
    make_server: Callable[..., Server], tmp_path: Path, nst_env: dict[str, str]
) -> None:
    server = make_server(endpoint=Endpoint("tcp", host="127.0.0.1", port=0), token="right")
    home = Path(nst_env["NST_HOME"])
    home.mkdir()
    (home / "token").write_text("wrong\n")
    with pytest.raises(EngineError) as info:
        EngineClient(NO_CONFIG, endpoint=str(server.address)).hello()
    assert info.value.code == "unauthorized" and str(home / "token") in info.value.message
    (home / "token").write_text("right\n")
    assert "gatys" in EngineClient(NO_CONFIG, endpoint=str(server.address)).hello()["methods"]


def test_no_engine_and_no_config(nst_env: dict[str, str], tmp_path: Path) -> None:
    with pytest.raises(EngineError) as info:
        EngineClient(tmp_path / "missing.json").hello()
    assert info.value.code == "engine-not-configured" and "install.py" in info.value.message

    config = tmp_path / "engine.json"
    config.write_text(json.dumps({"python": "/bin/sh", "env": {}, "version": "0"}))
    with pytest.raises(EngineError) as info:
        EngineClient(config, endpoint="tcp:192.0.2.1:9", connect_timeout=0.3).hello()
    assert info.value.code == "engine-unreachable" and "docs/remote.md" in info.value.message

    # A loopback TCP endpoint named in engine.json may be an SSH tunnel's end (docs/remote.md):
    # nothing is started there, or the jobs would run here unasked and the tunnel lose its port.
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    config.write_text(
        json.dumps({"python": "/bin/sh", "env": {}, "version": "0", "endpoint": f"tcp:127.0.0.1:{port}"})
    )
    with pytest.raises(EngineError) as info:
        EngineClient(config, connect_timeout=0.3).hello()
    assert info.value.code == "engine-unreachable" and "docs/remote.md" in info.value.message

    config.write_text(json.dumps({"python": "/bin/sh", "env": {}, "version": "0"}))
    with pytest.raises(EngineError) as info:  # sh does not know `-m engine`: it exits at once
        EngineClient(config).hello()
    assert info.value.code == "engine-failed-to-start" and "engine.out" in info.value.message

    config.write_text("{not json")
    with pytest.raises(EngineError) as info:
        EngineClient(config)
    assert info.value.code == "bad-config"


def test_too_large_for_the_engine_is_refused_before_sending(make_server: Callable[..., Server]) -> None:
    from nst_common.framing import Limits

    server = make_server(limits=Limits(max_message=1000))
    with pytest.raises(EngineError) as info:
        EngineClient(NO_CONFIG, endpoint=str(server.address)).stylize(_job(TINY), Progress(), lambda: False)
    assert info.value.code == "too-large" and "--max-message" in info.value.message


def test_the_plug_in_uses_only_the_standard_library_and_gimps_own_modules() -> None:
    """GIMP's Python has no numpy or torch: each plug-in module imports the standard library,
    nst_common and the plug-in's own modules; only host.py and dialog.py import GIMP's gi."""
    import ast
    import sys

    folder = Path(plugin_client.__file__).parent
    own = {source.stem for source in folder.glob("*.py")}
    for source in folder.glob("*.py"):
        tree = ast.parse(source.read_text())
        imported = {
            (node.module if isinstance(node, ast.ImportFrom) else alias.name).split(".")[0]
            for node in ast.walk(tree)
            if isinstance(node, (ast.Import, ast.ImportFrom))
            for alias in node.names
        }
        allowed = set(sys.stdlib_module_names) | {"__future__", "nst_common"} | own
        if source.stem in ("host", "dialog"):
            allowed.add("gi")
        assert imported <= allowed, (source.name, imported - allowed)


# --- Large layers in chunks ----------------------------------------------------------------------


def _echo_server(make_server: Callable[..., Server], calls: list[int] | None = None, **limits: Any) -> Server:
    """A real server whose runner hands the content back: what is tested is the transport."""
    from nst_common.framing import Limits

    def echo(job: Any, progress: Any, cancel: Any, cache: Any) -> Any:
        if calls is not None:
            calls.append(1)
        return job.content

    return make_server(runner=echo, capabilities=lambda: {"methods": {"echo": {}}}, limits=Limits(**limits))


def _layer(width: int, height: int, channels: int = 4, dtype: str = "u8", data: Any = None) -> Any:
    P = messages
    size = width * height * channels * P.DTYPE_SIZES[dtype]
    content = P.RawImage(width, height, channels, dtype, os.urandom(size) if data is None else data)
    return P.StylizeJob("echo", {"device": "cpu"}, content)


def test_a_layer_larger_than_a_chunk_goes_and_comes_back_in_chunks(
    make_server: Callable[..., Server],
) -> None:
    server = _echo_server(make_server, max_payload=4096, chunk_size=4096)
    job = _layer(64, 48, 4, "u16")  # 24 KiB: six 4 KiB chunks each way, each over max_payload alone
    progress = Progress()
    result = EngineClient(NO_CONFIG, endpoint=str(server.address)).stylize(job, progress, lambda: False)
    assert (result.width, result.height, result.channels, result.dtype) == (64, 48, 4, "u16")
    assert bytes(result.data) == job.content.data
    sending = [m for f, m in progress.calls if m.startswith("Sending")]
    receiving = [m for f, m in progress.calls if m.startswith("Receiving")]
    assert len(sending) == 6 and sending[-1].startswith("Sending the image to the engine (100%")
    assert len(receiving) == 6 and receiving[-1].startswith("Receiving the result (100%")
    assert all(f == 0.0 for f, m in progress.calls if m.startswith("Sending"))


def test_client_and_engine_each_hold_one_copy_of_a_64_mib_layer(make_server: Callable[..., Server]) -> None:
    """Plug-in client and engine in one process, 1 MiB chunks: the traced peak over two jobs (the
    layer itself was allocated before tracing started) is the engine's received copy plus the
    client's received result, and small change: one copy per side, no more."""
    import tracemalloc

    size = 64 << 20
    server = _echo_server(make_server, max_payload=1 << 20, chunk_size=1 << 20)
    job = _layer(4096, 4096, 4, "u8", bytearray(os.urandom(1 << 20)) * 64)
    engine = EngineClient(NO_CONFIG, endpoint=str(server.address))
    engine.hello()
    tracemalloc.start()
    try:
        for _ in range(2):  # the second job shows whether the engine let go of the first one's pixels
            result = engine.stylize(job, lambda f, m: None, lambda: False)
            assert result.data == job.content.data
            del result
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    print(f"traced peak {peak / size:.3f} x the layer ({peak >> 20} MiB)")
    assert peak < 2 * size + (4 << 20), f"peak {peak >> 20} MiB for a {size >> 20} MiB layer"


def test_cancelling_during_the_upload_queues_nothing(make_server: Callable[..., Server]) -> None:
    calls: list[int] = []
    server = _echo_server(make_server, calls, max_payload=4096, chunk_size=4096)
    job = _layer(256, 256)  # 256 KiB: 64 chunks
    progress = Progress()

    def cancelled() -> bool:
        return any(m.startswith("Sending") for _, m in progress.calls)

    engine = EngineClient(NO_CONFIG, endpoint=str(server.address))
    with pytest.raises(EngineError) as info:
        engine.stylize(job, progress, cancelled)
    assert info.value.code == "cancelled"
    assert len([m for _, m in progress.calls if m.startswith("Sending")]) == 1  # stopped after one chunk
    assert engine.stylize(job, Progress(), lambda: False).data == job.content.data  # still serving
    assert calls == [1]  # the cancelled upload never became a job


def test_a_job_the_engine_refuses_mid_upload_is_reported_as_refused(
    make_server: Callable[..., Server], monkeypatch: pytest.MonkeyPatch
) -> None:
    server = _echo_server(make_server, max_payload=4096, max_side=1000)
    progress = Progress()
    engine = EngineClient(NO_CONFIG, endpoint=str(server.address))
    with pytest.raises(EngineError) as info:  # 16 MiB in 4096 chunks; the engine answers after the header
        engine.stylize(_layer(2048, 2048), progress, lambda: False)
    assert info.value.code == "bad-request" and "width" in info.value.message
    sent = [m for _, m in progress.calls if m.startswith("Sending")]
    assert not sent or "(100%" not in sent[-1], sent[-1]  # the client stopped sending when it heard

    # An engine that does not announce its max_message (so the client cannot check first) closes
    # the connection in the middle of the upload: the client says why, not "engine-died".
    server = _echo_server(make_server, max_payload=1 << 16, max_message=1 << 20)
    announced = server.hello_reply

    def without_max_message() -> dict[str, Any]:
        reply = announced()
        del reply["limits"]["max_message"]
        return reply

    monkeypatch.setattr(server, "hello_reply", without_max_message)
    with pytest.raises(EngineError) as info:
        EngineClient(NO_CONFIG, endpoint=str(server.address)).stylize(
            _layer(1024, 1024), Progress(), lambda: False
        )
    assert info.value.code == "too-large" and "limit 1048576" in info.value.message


def test_previews_and_the_time_left_reach_the_caller(make_server: Callable[..., Server]) -> None:
    """A real Gatys job on a real server: the engine's previews reach `on_preview` as small RGB
    images of the work, and the progress text starts with the time left once the engine knows it."""
    server = make_server()
    engine = EngineClient(NO_CONFIG, endpoint=str(server.address))
    previews: list[messages.RawImage] = []
    progress = Progress()
    job = _job({"preset": "draft", "size": 64, "seed": 0, "device": "cpu", "iterations": 30})
    result = engine.stylize(job, progress, lambda: False, previews.append)
    assert (result.width, result.height) == (20, 14)

    assert previews, [m for _, m in progress.calls]
    for preview in previews:  # the work's size: 64 px on the long side, the content's aspect
        assert (preview.width, preview.height, preview.channels, preview.dtype) == (64, 45, 3, "u8")
        assert len(bytes(preview.data)) == 64 * 45 * 3
    assert np.frombuffer(bytes(previews[-1].data), np.uint8).std() > 5  # a picture, not a blank

    steps = [m for _, m in progress.calls if "step" in m]
    assert steps and all(m.split(" — ", 1)[0].endswith(" left") for m in steps), steps
