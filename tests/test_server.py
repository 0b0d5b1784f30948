"""The engine server on real sockets with the real pipeline (tiny Gatys jobs on the CPU)."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import stat
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from helpers import is_final, noise, session

from engine.errors import UserError
from engine.methods.base import Progress
from engine.service.server import Server, acquire_lock, preview_image
from nst_common import engine_lock, framing, messages
from nst_common.endpoints import Endpoint
from nst_common.engine_lock import EngineLock
from nst_common.framing import ConnectionClosed, ProtocolError, read_message, send_message
from nst_common.messages import RawImage, StyleRef, StylizeJob, job_message
from nst_common.session import CLIENT_LIMITS, open_session

TINY = {"preset": "draft", "size": 16, "seed": 0, "device": "cpu", "iterations": 1, "optimizer": "adam"}
LONG = {"preset": "draft", "size": 64, "seed": 0, "device": "cpu", "iterations": 100000}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _job(params: dict[str, Any], seed: int = 0, selection: bool = False) -> StylizeJob:
    content = noise(20, 14, 4, seed)
    sel = RawImage(20, 14, 1, "u8", bytes(20 * 14)) if selection else None
    return StylizeJob("gatys", dict(params), content, [StyleRef(image=noise(12, 12, 3, seed + 1))], sel)


def _events(sock: socket.socket, until: Callable[[dict[str, Any]], bool], timeout: float = 30.0) -> list:
    """Read messages until one satisfies `until`; returns them all (header, blobs)."""
    deadline = time.monotonic() + timeout
    out = []

    def on_idle() -> None:
        if time.monotonic() > deadline:
            raise AssertionError(f"no final event within {timeout} s; got {[h for h, _ in out]}")

    while True:
        msg = read_message(sock, CLIENT_LIMITS, 5.0, on_idle)
        out.append((msg.header, msg.blobs))
        if until(msg.header):
            return out


def test_hello_then_a_real_gatys_job_and_the_model_stays_cached(make_server: Callable[..., Server]) -> None:
    server = make_server()
    sock, hello = open_session(server.address, None)
    with sock:
        assert hello["protocol"] == messages.PROTOCOL_VERSION and hello["pid"] == os.getpid()
        assert "gatys" in hello["capabilities"]["methods"] and "cpu" in hello["capabilities"]["devices"]
        for seed in (1, 2):
            header, blobs = job_message(_job(TINY, seed))
            send_message(sock, dict(header, ref=seed), blobs)
            events = _events(sock, is_final)
            first, last = events[0][0], events[-1][0]
            assert first == {"type": "accepted", "job": first["job"], "position": 0, "ref": seed, "blobs": []}
            assert last["type"] == "result", last
            assert any(h["type"] == "progress" and h["job"] == first["job"] for h, _ in events)
            for h, blobs in events:
                if "preview" in h:
                    preview = messages.parse_image(h["preview"], blobs, CLIENT_LIMITS, "preview")
                    assert (preview.channels, preview.dtype) == (3, "u8") and preview.width <= 256
            image = messages.parse_image(last["image"], events[-1][1], CLIENT_LIMITS, "image")
            assert (image.width, image.height, image.channels, image.dtype) == (20, 14, 4, "u8")
            alpha = np.frombuffer(image.data, np.uint8).reshape(14, 20, 4)[..., 3]
            sent = np.frombuffer(_job(TINY, seed).content.data, np.uint8).reshape(14, 20, 4)[..., 3]
            assert np.array_equal(alpha, sent)
    assert server.cache.loads == 1


def test_previews_are_small_u8() -> None:
    big = np.linspace(0, 1, 600 * 400 * 3, dtype=np.float32).reshape(600, 400, 3)
    big[0, 0] = [np.nan, -1.0, 2.0]
    image = preview_image(big)
    assert (image.width, image.height, image.channels, image.dtype) == (134, 200, 3, "u8")
    pixels = np.frombuffer(image.data, np.uint8).reshape(200, 134, 3)
    assert pixels[0, 0].tolist() == [0, 0, 255]  # NaN and out-of-range values clipped
    assert pixels[-1, -1, -1] == round(float(big[597, 399, 2]) * 255)  # every third pixel


def test_user_errors_keep_the_connection(make_server: Callable[..., Server]) -> None:
    server = make_server()
    with session(server) as sock:
        for params, code in (
            (dict(TINY, preset="nope"), "bad-option"),
            (dict(TINY, device="tpu"), "bad-option"),
        ):
            header, blobs = job_message(_job(params))
            send_message(sock, header, blobs)
            last = _events(sock, lambda h: h["type"] == "error")[-1][0]
            assert last["code"] == code and last["message"]
        send_message(sock, {"type": "nonsense", "ref": "r1"})
        assert _events(sock, lambda h: True)[0][0] == {
            "type": "error",
            "code": "unknown-type",
            "message": "Unknown message type 'nonsense'.",
            "ref": "r1",
            "blobs": [],
        }
        send_message(sock, {"type": "jobs"})
        assert _events(sock, lambda h: True)[0][0]["jobs"] == []


def test_settings_are_checked_before_a_job_waits_in_the_queue(make_server: Callable[..., Server]) -> None:
    """A job the pipeline would refuse is refused at once, with its ref, not after the jobs ahead."""
    server = make_server()
    with session(server) as sock:
        header, blobs = job_message(_job(LONG))
        send_message(sock, dict(header, ref="long"), blobs)
        running = _events(sock, lambda h: h["type"] == "progress")[0][0]
        style = [StyleRef(image=noise(12, 12, 3, 1))]
        refused = {
            "strength": StylizeJob("adain", {"strength": 2}, noise(20, 14, 4, 0), style),
            "method setting": StylizeJob("johnson", {"content_weight": 1}, noise(20, 14, 4, 0)),
            "device": _job(dict(TINY, device="tpu")),
            "preset": _job(dict(TINY, preset="nope")),
        }
        for ref, job in refused.items():
            asked = time.monotonic()
            header, blobs = job_message(job)
            send_message(sock, dict(header, ref=ref), blobs)
            reply = _events(sock, lambda h, ref=ref: h.get("ref") == ref)[-1][0]
            assert reply["type"] == "error" and reply["code"] == "bad-option", reply
            assert time.monotonic() - asked < 5
        assert [j["job"] for j in server.jobs.snapshot()] == [running["job"]]
        send_message(sock, {"type": "cancel", "job": running["job"]})


def test_an_internal_error_is_reported_without_its_traceback(make_server: Callable[..., Server]) -> None:
    def broken(*_: Any) -> RawImage:
        raise RuntimeError("boom in the method")

    server = make_server(runner=broken)
    with session(server) as sock:
        for _ in range(2):  # and the server is still fine afterwards
            header, blobs = job_message(_job(TINY))
            send_message(sock, header, blobs)
            last = _events(sock, is_final)[-1][0]
            assert last["code"] == "internal" and "boom in the method" in last["message"]
            assert "Traceback" not in last["message"]


def _wait_until_running(sock: socket.socket) -> str:
    """The job id, once its optimisation (not just set-up) has reported progress."""
    events = _events(sock, lambda h: h["type"] == "progress" and h["stage"] not in ("start", "prepare"))
    return events[0][0]["job"]


def test_cancel_running_and_queued_gatys_jobs(make_server: Callable[..., Server]) -> None:
    server = make_server()
    with session(server) as a, session(server) as b:
        header, blobs = job_message(_job(LONG))
        send_message(a, header, blobs)
        running = _wait_until_running(a)
        header, blobs = job_message(_job(TINY))
        send_message(b, header, blobs)
        accepted = _events(b, lambda h: True)[0][0]
        assert accepted["type"] == "accepted" and accepted["position"] == 1

        send_message(b, {"type": "jobs", "ref": 1})
        jobs = _events(b, lambda h: h["type"] == "jobs")[-1][0]["jobs"]
        assert [(j["job"], j["state"], j["position"]) for j in jobs] == [
            (running, "running", 0),
            (accepted["job"], "queued", 1),
        ]

        send_message(b, {"type": "cancel", "job": accepted["job"], "ref": 2})
        replies = [h for h, _ in _events(b, lambda h: h["type"] == "ok")]
        assert {"type": "error", "job": accepted["job"], "code": "cancelled"}.items() <= replies[-2].items()

        start = time.monotonic()
        send_message(b, {"type": "cancel", "job": running})
        last = _events(a, is_final)[-1][0]
        assert last["type"] == "error" and last["code"] == "cancelled"
        assert time.monotonic() - start < 2.0  # LONG alone runs for minutes: this is the next step's end

        send_message(b, {"type": "cancel", "job": running, "ref": 3})
        assert _events(b, lambda h: h.get("ref") == 3)[-1][0]["code"] == "unknown-job"

        # The engine is free at once for the next job.
        header, blobs = job_message(_job(TINY))
        send_message(a, header, blobs)
        events = _events(a, is_final)
        assert events[0][0]["position"] == 0 and events[-1][0]["type"] == "result"


def test_a_disconnecting_client_cancels_its_jobs(make_server: Callable[..., Server]) -> None:
    server = make_server()
    sock = session(server)
    header, blobs = job_message(_job(LONG))
    send_message(sock, header, blobs)
    _wait_until_running(sock)
    assert not server.jobs.idle
    sock.close()
    deadline = time.monotonic() + 2.0
    while not server.jobs.idle:
        assert time.monotonic() < deadline, "the job outlived its client"
        time.sleep(0.02)


def test_progress_at_least_twice_a_second(make_server: Callable[..., Server]) -> None:
    server = make_server()
    with session(server) as sock:
        header, blobs = job_message(_job(dict(LONG, size=96)))
        send_message(sock, header, blobs)
        job = _wait_until_running(sock)
        times = []
        for _ in range(6):
            msg = read_message(sock, CLIENT_LIMITS, 5.0)
            assert msg.header["type"] == "progress"
            times.append(time.monotonic())
        send_message(sock, {"type": "cancel", "job": job})
        assert max(np.diff(times)) < 0.5


def test_stalled_and_silent_clients_are_dropped(make_server: Callable[..., Server]) -> None:
    server = make_server(stall_timeout=0.3, hello_timeout=0.3)
    with server.address.connect(1.0) as silent:
        silent.settimeout(3.0)
        msg = read_message(silent, CLIENT_LIMITS)
        assert msg.header["code"] == "timeout"
        assert silent.recv(1) == b""
    with session(server) as stalled:
        stalled.sendall(framing.encode_header({"type": "jobs"}, [])[:9])
        stalled.settimeout(3.0)
        assert read_message(stalled, CLIENT_LIMITS).header["code"] == "timeout"
    with session(server) as idle:  # between frames a client may wait as long as it likes
        time.sleep(0.6)
        send_message(idle, {"type": "jobs"})
        assert _events(idle, lambda h: True)[0][0]["type"] == "jobs"


def test_hello_is_required_and_protocol_checked(make_server: Callable[..., Server]) -> None:
    server = make_server()
    with server.address.connect(1.0) as sock:
        send_message(sock, {"type": "jobs"})
        sock.settimeout(3.0)
        assert read_message(sock, CLIENT_LIMITS).header["code"] == "hello-required"
    with server.address.connect(1.0) as sock:  # no payload before the handshake
        sock.sendall(framing.PREFIX.pack(framing.MAGIC, 2, 1 << 20) + b"{}")
        sock.settimeout(3.0)
        assert read_message(sock, CLIENT_LIMITS).header["code"] == "too-large"
    with server.address.connect(1.0) as sock:
        send_message(sock, {"type": "hello", "protocol": 99})
        sock.settimeout(3.0)
        reply = read_message(sock, CLIENT_LIMITS).header
        assert reply["code"] == "protocol-mismatch" and reply["protocol"] == messages.PROTOCOL_VERSION


def test_tcp_needs_the_token(make_server: Callable[..., Server]) -> None:
    threads = threading.active_count()
    with pytest.raises(UserError):
        make_server(endpoint=Endpoint("tcp", host="127.0.0.1", port=0))
    assert threading.active_count() == threads  # a server that never started left nothing running
    server = make_server(endpoint=Endpoint("tcp", host="127.0.0.1", port=0), token="s3cret")
    for wrong in (None, "", "s3cre", "s3cret2"):
        with pytest.raises(ProtocolError) as info:
            open_session(server.address, wrong)
        assert info.value.code == "unauthorized"
    sock, hello = open_session(server.address, "s3cret")
    sock.close()
    assert hello["type"] == "hello"


def test_unix_socket_is_private_and_a_stale_one_is_replaced(
    make_server: Callable[..., Server], short_dir: Path
) -> None:
    path = short_dir / "run" / "engine.sock"
    path.parent.mkdir(mode=0o755)
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(path))
    stale.close()  # the file stays, nobody listens: what a killed engine leaves behind
    server = make_server(endpoint=Endpoint("unix", path=str(path)))
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o755  # the user's folder: left as it was
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and os.listdir(path.parent) == ["engine.sock"]
    with pytest.raises(UserError) as info:
        make_server(endpoint=Endpoint("unix", path=str(path)))
    assert info.value.code == "already-running"
    server.shutdown()
    assert not path.exists()


def test_listening_on_a_path_never_destroys_what_is_there(
    make_server: Callable[..., Server], short_dir: Path
) -> None:
    """Only a stale socket of this user is replaced: a file, a link (to a file or to a stale socket)
    or a folder at the path stays as it was, and the engine says why it will not listen there."""
    mine = short_dir / "notes.txt"
    mine.write_text("the user's own file")
    stale = short_dir / "stale.sock"
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(stale))
    sock.close()
    cases: dict[str, Callable[[Path], None]] = {
        "file": lambda p: p.write_text("keep me"),
        "link to a file": lambda p: p.symlink_to(mine),
        "link to a stale socket": lambda p: p.symlink_to(stale),
        "folder": lambda p: p.mkdir(),
    }
    for name, make in cases.items():
        path = short_dir / f"{len(name)}.sock"
        make(path)
        before = os.lstat(path)
        with pytest.raises(UserError) as info:
            make_server(endpoint=Endpoint("unix", path=str(path)))
        assert info.value.code == "path-in-use" and "not a socket" in info.value.message, name
        after = os.lstat(path)
        assert (after.st_ino, after.st_mode) == (before.st_ino, before.st_mode), name
    assert mine.read_text() == "the user's own file" and stat.S_ISSOCK(os.lstat(stale).st_mode)


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX modes")
def test_a_socket_folder_is_never_chmodded_and_one_others_may_write_to_is_refused(
    make_server: Callable[..., Server], short_dir: Path
) -> None:
    shared = short_dir / "shared"
    shared.mkdir()
    shared.chmod(0o777)  # anyone may replace a socket here
    with pytest.raises(UserError) as info:
        make_server(endpoint=Endpoint("unix", path=str(shared / "e.sock")))
    assert info.value.code == "unsafe-runtime-dir" and "Other users may write" in info.value.message
    assert stat.S_IMODE(shared.stat().st_mode) == 0o777 and not os.listdir(shared)

    sticky = short_dir / "tmp"
    sticky.mkdir()
    sticky.chmod(0o1777)  # like /tmp: nobody can remove another's entry
    server = make_server(endpoint=Endpoint("unix", path=str(sticky / "e.sock")))
    assert stat.S_IMODE(sticky.stat().st_mode) == 0o1777
    assert stat.S_IMODE((sticky / "e.sock").stat().st_mode) == 0o600 and os.listdir(sticky) == ["e.sock"]
    session(server).close()

    fresh = short_dir / "new" / "run"  # created by the engine: private
    make_server(endpoint=Endpoint("unix", path=str(fresh / "e.sock")))
    assert stat.S_IMODE(fresh.stat().st_mode) == 0o700


def test_the_lock_file_is_never_followed_through_a_link(short_dir: Path) -> None:
    mine = short_dir / "notes.txt"
    mine.write_text("the user's own file")
    (short_dir / "engine.lock").symlink_to(mine)
    with pytest.raises(UserError):
        acquire_lock(EngineLock(short_dir / "engine.lock"), Endpoint("unix", path="/x.sock"))
    assert mine.read_text() == "the user's own file"


def test_one_engine_per_user_lock(short_dir: Path) -> None:
    ep = Endpoint("unix", path="/x.sock")
    env = {"NST_RUNTIME_DIR": str(short_dir)}
    first, second = EngineLock(engine_lock.lock_path(env)), EngineLock(engine_lock.lock_path(env))
    assert not engine_lock.is_held(env) and engine_lock.holder(env) == {}
    assert acquire_lock(first, ep)
    assert not acquire_lock(second, ep)
    assert engine_lock.is_held(env)
    assert engine_lock.holder(env) == {"pid": os.getpid(), "endpoint": "unix:/x.sock"}
    first.release()
    assert not engine_lock.is_held(env)  # the file stays; the lock went with its holder
    assert acquire_lock(second, ep)
    second.release()


def test_idle_timeout_and_shutdown_request(make_server: Callable[..., Server]) -> None:
    idle = make_server(idle_timeout=0.5)
    assert idle._thread is not None
    idle._thread.join(5.0)
    assert not idle._thread.is_alive() and not Path(idle.address.path).exists()

    server = make_server()
    with session(server) as sock:
        send_message(sock, {"type": "shutdown", "ref": 9})
        assert _events(sock, lambda h: True)[0][0] == {"type": "ok", "ref": 9, "blobs": []}
    assert server._thread is not None
    server._thread.join(5.0)
    assert not server._thread.is_alive()


def _threads_and_fds() -> tuple[set[int], int]:
    return {t.ident for t in threading.enumerate()}, len(os.listdir("/proc/self/fd"))


@pytest.mark.slow  # 160 real Gatys jobs: 15-45 s on two shared cores
@pytest.mark.skipif(not Path("/proc/self/fd").exists(), reason="counts file descriptors through /proc")
def test_load_8_clients_x_20_jobs_all_correct_and_nothing_leaks(make_server: Callable[..., Server]) -> None:
    import client as plugin_client

    threads_before, fds_before = _threads_and_fds()
    server = make_server(slots_per_device=2)  # two cores: two tiny jobs at a time
    failures: list[str] = []

    def one_client(n: int) -> None:
        engine = plugin_client.EngineClient("/nonexistent/engine.json", endpoint=str(server.address))
        for i in range(20):
            seed = 1000 * n + i
            # With an empty selection the pipeline must hand back the content exactly: any mix-up
            # between the 160 jobs, or any corruption in transit, shows.
            job = _job(TINY, seed, selection=True)
            try:
                result = engine.stylize(job, lambda f, m: None, lambda: False)
            except plugin_client.EngineError as exc:
                failures.append(f"client {n} job {i}: {exc.code}: {exc}")
                continue
            if bytes(result.data) != job.content.data:
                failures.append(f"client {n} job {i}: wrong pixels")

    workers = [threading.Thread(target=one_client, args=(n,)) for n in range(8)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(300)
    assert failures == []
    server.shutdown()
    threads_after, fds_after = _threads_and_fds()
    assert threads_after == threads_before
    assert fds_after == fds_before


def _valid_frames() -> Iterator[bytes]:
    """Seeds for the frame-level fuzzer."""
    header, blobs = job_message(_job(TINY))
    header["method"] = "no-such-method"  # whatever gets through validation fails fast
    yield framing.encode_header(header, blobs) + b"".join(bytes(b) for b in blobs)
    yield b"".join(
        _stream_frames(StylizeJob("no-such-method", {}, noise(32, 16, 4, 0)))
    )  # 2 KiB in 1 KiB chunks
    for h in (
        {"type": "jobs"},
        {"type": "cancel", "job": "1"},
        {"type": "hello", "protocol": messages.PROTOCOL_VERSION},
    ):
        yield framing.encode_header(h, [])


def _pick(rng: np.random.Generator, values: list[Any]) -> Any:
    return values[int(rng.integers(len(values)))]


def _mutate_frame(frame: bytes, rng: np.random.Generator) -> bytes:
    kind = rng.integers(8)
    data = bytearray(frame)
    if kind == 0:  # truncated
        return bytes(data[: rng.integers(1, len(data))])
    if kind == 1:  # huge or odd declared header size
        data[4:8] = _pick(rng, [0, 1, 2**31, 2**32 - 1, int(rng.integers(2**20, 2**32))]).to_bytes(4, "big")
    elif kind == 2:  # huge or odd declared payload size
        data[8:16] = _pick(rng, [0, 1, 2**40, 2**64 - 1, int(rng.integers(0, 2**63))]).to_bytes(8, "big")
    elif kind == 3:  # flipped bytes anywhere
        for pos in rng.integers(0, len(data), rng.integers(1, 8)):
            data[pos] = rng.integers(256)
    elif kind == 4:  # bytes flipped inside the JSON header only
        end = 16 + int.from_bytes(data[4:8], "big")
        for pos in rng.integers(16, end, rng.integers(1, 4)):
            data[pos] = _pick(rng, list(b'{}[]",:0e-.\\ntfx\x00\xff'))
    elif kind == 5:  # random bytes
        return rng.bytes(int(rng.integers(1, 600)))
    elif kind == 6:  # a valid frame followed by garbage
        return frame + rng.bytes(int(rng.integers(1, 40)))
    else:  # wrong magic
        data[0:4] = rng.bytes(4)
    return bytes(data)


ODD_VALUES: list[Any] = [None, True, False, -1, 0, 1, 2**64, -(2**63), 0.5, 1e308, "", "x", "u8", "a" * 5000,
                         [], [1], {}, {"a": 1}, [[[[[[[[[[[1]]]]]]]]]]]]  # fmt: skip


def _mutate_fields(header: dict[str, Any], rng: np.random.Generator) -> dict[str, Any]:
    """Replace, delete or add a field somewhere in a (copied) header."""
    import copy

    out = copy.deepcopy(header)
    target: Any = out
    for _ in range(int(rng.integers(1, 4))):
        keys = list(target) if isinstance(target, dict) else list(range(len(target)))
        if not keys:
            break
        key = keys[int(rng.integers(len(keys)))]
        if not isinstance(target[key], (dict, list)) or rng.random() < 0.4:
            choice = rng.integers(3)
            if choice == 0 and isinstance(target, dict):
                del target[key]
            elif choice == 1 and isinstance(target, dict):
                target[f"k{rng.integers(9)}"] = _pick(rng, ODD_VALUES)
            else:
                target[key] = _pick(rng, ODD_VALUES)
            break
        target = target[key]
    return out


def _collect_until_end(sock: socket.socket, out: list[Any]) -> None:
    try:
        out.extend(h for h, _ in _events(sock, lambda h: h.get("ref") == "end"))
    except Exception as exc:  # the main thread's assertion reports it
        out.append(exc)


def test_fuzz_10000_malformed_frames_then_a_valid_job(make_server: Callable[..., Server]) -> None:
    """Framing-level damage closes the connection; field-level damage gets an error and the
    connection lives on. Either way the server must never fail internally, and must still work."""
    server = make_server(limits=framing.Limits(max_payload=1 << 16, max_side=64), stall_timeout=0.5)
    rng = np.random.default_rng(1234)
    seeds = list(_valid_frames())
    sent = 0
    allowed = {"error", "accepted", "progress", "result", "ok", "jobs", "hello"}
    seen: set[str] = set()

    def check(headers: list[dict[str, Any]]) -> None:
        for h in headers:
            assert h["type"] in allowed, h
            assert h.get("code") != "internal", h
            seen.add(h.get("code", h["type"]))

    def drain(sock: socket.socket) -> list[dict[str, Any]]:
        sock.shutdown(socket.SHUT_WR)
        sock.settimeout(5.0)
        headers = []
        while True:
            try:
                headers.append(read_message(sock, CLIENT_LIMITS, 5.0).header)
            except (ConnectionClosed, ProtocolError):
                return headers

    # 1. Damaged frames, one per connection: after hello, or instead of it.
    for i in range(4000):
        frame = _mutate_frame(_pick(rng, seeds), rng)
        with server.address.connect(2.0) as sock:
            if i % 4:
                send_message(sock, {"type": "hello", "protocol": messages.PROTOCOL_VERSION})
            sock.sendall(frame)
            sent += 1
            check(drain(sock))

    # 2. Well-framed requests with damaged fields, many per connection, each answered.
    job_header, job_blobs = job_message(_job(TINY))
    job_header["method"] = "no-such-method"  # whatever gets through validation fails fast
    requests = [
        job_header,
        {"type": "cancel", "job": "1"},
        {"type": "jobs"},
        {"type": "hello", "protocol": messages.PROTOCOL_VERSION},
    ]
    for _ in range(65):
        with session(server) as sock:
            # Read while writing: a client that stops reading is (rightly) dropped as stalled.
            replies: list[Any] = []
            reader = threading.Thread(target=_collect_until_end, args=(sock, replies))
            reader.start()
            for i in range(100):
                header = _mutate_fields(requests[i % len(requests)], rng)
                blobs = job_blobs if header.get("type") == "stylize" or rng.random() < 0.2 else []
                if blobs and rng.random() < 0.3:
                    blobs = [b[: len(b) - 1] for b in blobs]
                send_message(sock, header, blobs)
                sent += 1
            send_message(sock, {"type": "jobs", "ref": "end"})
            reader.join(30)
            assert replies and isinstance(replies[-1], dict) and replies[-1].get("ref") == "end", replies[-1:]
            check(replies)

    assert sent >= 10000
    assert {"bad-frame", "too-large", "bad-request", "hello-required", "unknown-type"} <= seen, seen

    # The same server still serves a real job correctly.
    with session(server) as sock:
        header, blobs = job_message(_job(TINY, 7, selection=True))
        send_message(sock, header, blobs)
        last, last_blobs = _events(sock, is_final)[-1]
        assert last["type"] == "result"
        assert bytes(last_blobs[0]) == _job(TINY, 7).content.data


# --- Chunked messages ----------------------------------------------------------------------------

STREAM_LIMITS = framing.Limits(max_payload=1024, max_message=64 << 10, max_side=256, chunk_size=1024)


def _echo(job: StylizeJob, progress: Any, cancel: Any, cache: Any) -> RawImage:
    """A runner that hands the content straight back: what is tested is the transport."""
    return job.content


def _echo_server(make_server: Callable[..., Server], **config: Any) -> Server:
    config.setdefault("limits", STREAM_LIMITS)
    return make_server(runner=_echo, capabilities=lambda: {"methods": {"echo": {}}}, **config)


def _stream_job(seed: int = 0, side: int = 64) -> StylizeJob:
    """A 64x32 RGBA u8 content (8 KiB, eight 1 KiB chunks) with a selection and a style image."""
    content = noise(side, side // 2, 4, seed)
    selection = RawImage(side, side // 2, 1, "u8", bytes(range(256)) * (side * side // 2 // 256))
    return StylizeJob("echo", {"device": "cpu"}, content, [StyleRef(image=noise(16, 8, 3, seed))], selection)


def _stream_frames(job: StylizeJob, chunk: int = 1024, ref: Any = None) -> list[bytes]:
    """The frames of a chunked `stylize`: its header frame, then one frame per chunk (with its bytes)."""
    header, blobs = job_message(job)
    if ref is not None:
        header["ref"] = ref
    frames = [framing.encode_header(header, blobs, chunked=True)]
    for index, blob in enumerate(blobs):
        data = bytes(blob)
        for offset in range(0, len(data), chunk):
            piece = data[offset : offset + chunk]
            frames.append(framing.encode_chunk(index, offset, len(piece)) + piece)
    return frames


def test_a_job_larger_than_a_chunk_streams_both_ways(make_server: Callable[..., Server]) -> None:
    server = _echo_server(make_server)
    with session(server) as sock:
        job = _stream_job(1)
        header, blobs = job_message(job)
        sent: list[int] = []
        send_message(sock, dict(header, ref=1), blobs, 5.0, 1000, lambda n, total: sent.append(n))
        assert len(sent) == 1 + 9 + 3 and sent[-1] == 384 + 8192 + 2048  # style, content, selection
        received: list[tuple[int, int]] = []
        deadline = time.monotonic() + 30
        while True:
            msg = read_message(sock, STREAM_LIMITS, 5.0, on_chunk=lambda n, t: received.append((n, t)))
            assert time.monotonic() < deadline and msg.header["type"] != "error", msg.header
            if msg.header["type"] == "result":
                break
        assert msg.header["chunked"] is True and received[-1] == (8192, 8192) and len(received) == 8
        image = messages.parse_image(msg.header["image"], msg.blobs, STREAM_LIMITS, "image")
        assert (image.width, image.height, image.channels) == (64, 32, 4) and image.data == job.content.data


def _stream_cases() -> list[tuple[str, Callable[[list[bytes]], list[bytes]], str]]:
    def reorder(f: list[bytes]) -> list[bytes]:
        return [f[0], f[2], f[1], *f[3:]]

    def overlap(f: list[bytes]) -> list[bytes]:
        return [*f[:3], f[2], *f[3:]]

    def gap(f: list[bytes]) -> list[bytes]:
        return [f[0], f[1], *f[3:]]

    def ends_early(f: list[bytes]) -> list[bytes]:
        return [*f[:4], framing.encode_header({"type": "jobs"}, [])]

    def too_many(f: list[bytes]) -> list[bytes]:
        return [*f, framing.encode_chunk(0, 8192, 4) + b"more"]

    def too_long(f: list[bytes]) -> list[bytes]:
        return [f[0], framing.encode_chunk(0, 0, 8193) + bytes(8193)]  # and over max_payload

    def past_the_blob(f: list[bytes]) -> list[bytes]:
        return [*f[:8], framing.encode_chunk(0, 7168, 1000) + bytes(1000)]  # 24 bytes too many

    def too_large_in_all(f: list[bytes]) -> list[bytes]:
        return [framing.encode_header({"type": "stylize", "ref": 1}, [bytes(65537)], chunked=True), *f[1:]]

    return [
        ("chunks out of order", reorder, "bad-frame"),
        ("a chunk sent twice (overlap)", overlap, "bad-frame"),
        ("a chunk missing", gap, "bad-frame"),
        ("the message ends early", ends_early, "bad-frame"),
        ("too many chunks", too_many, "bad-frame"),
        ("a chunk over max_payload", too_long, "too-large"),
        ("a chunk past its blob's end", past_the_blob, "bad-frame"),
        ("over max_message before any allocation", too_large_in_all, "too-large"),
    ]


@pytest.mark.parametrize(("case", "mutate", "code"), _stream_cases(), ids=[c[0] for c in _stream_cases()])
def test_a_broken_chunk_stream_is_refused_and_others_are_served(
    make_server: Callable[..., Server], case: str, mutate: Callable[[list[bytes]], list[bytes]], code: str
) -> None:
    server = _echo_server(make_server)
    with session(server) as other, session(server) as sock:
        with contextlib.suppress(OSError):  # the server may hang up before it has read everything
            sock.sendall(b"".join(mutate(_stream_frames(_stream_job()))))
        events = _events(sock, lambda h: h["type"] == "error" and "job" not in h, timeout=10)
        error = events[-1][0]
        assert error["code"] == code and "ref" not in error, (case, error)
        sock.settimeout(3.0)
        with pytest.raises((ConnectionClosed, ProtocolError, OSError)):  # the stream was broken: closed
            for _ in range(10):  # the job of a complete message may still report before the close
                late = read_message(sock, CLIENT_LIMITS, 3.0).header
                assert late["type"] in ("progress", "result") or late.get("code") == "cancelled", late
        # A client that was connected all along is served as if nothing happened.
        job = _stream_job(5)
        header, blobs = job_message(job)
        send_message(other, header, blobs, 5.0, 1024)
        last, last_blobs = _events(other, is_final)[-1]
        assert last["type"] == "result" and bytes(last_blobs[0]) == job.content.data


def test_a_client_stalling_mid_stream_times_out_while_another_is_served(
    make_server: Callable[..., Server],
) -> None:
    server = _echo_server(make_server, stall_timeout=0.5)
    with session(server) as stalled, session(server) as other:
        frames = _stream_frames(_stream_job())
        stalled.sendall(b"".join(frames[:3]))
        started = time.monotonic()
        job = _stream_job(2)
        header, blobs = job_message(job)
        send_message(other, header, blobs, 5.0, 1024)
        assert _events(other, is_final)[-1][0]["type"] == "result"
        stalled.settimeout(5.0)
        error = read_message(stalled, CLIENT_LIMITS, 5.0).header
        assert error["code"] == "timeout" and 0.5 <= time.monotonic() - started < 3.0
        assert "middle of a message" in error["message"]


def test_a_refused_streamed_job_is_skipped_and_the_connection_goes_on(
    make_server: Callable[..., Server],
) -> None:
    server = _echo_server(make_server)
    wide = StylizeJob("echo", {"device": "cpu"}, noise(512, 4, 4, 0))  # over max_side, within max_message
    with session(server) as sock:
        for bad, why in ((wide, "width"), (StylizeJob("echo", [], _stream_job().content), "params")):  # type: ignore[arg-type]
            header, blobs = job_message(bad)
            send_message(sock, dict(header, ref="bad"), blobs, 5.0, 1024)
            error = _events(sock, lambda h: True)[0][0]
            assert (error["type"], error["code"], error["ref"]) == ("error", "bad-request", "bad"), error
            assert why in error["message"]
        send_message(sock, {"type": "jobs"}, [bytes(3000)], 5.0, 1024)  # images where none go
        error = _events(sock, lambda h: True)[0][0]
        assert error["code"] == "bad-request" and "Only `stylize`" in error["message"]
        job = _stream_job(3)
        header, blobs = job_message(job)
        send_message(sock, header, blobs, 5.0, 1024)
        last, last_blobs = _events(sock, is_final)[-1]
        assert last["type"] == "result" and bytes(last_blobs[0]) == job.content.data


def _mutate_stream(frames: list[bytes], rng: np.random.Generator) -> bytes:
    """Damage a chunked message at the level of its frames."""
    f = list(frames)
    kind = int(rng.integers(10))
    i = int(rng.integers(1, len(f)))
    if kind == 0:  # a frame dropped
        del f[i]
    elif kind == 1:  # a frame repeated
        f.insert(i, f[i])
    elif kind == 2:  # two frames swapped
        j = int(rng.integers(1, len(f)))
        f[i], f[j] = f[j], f[i]
    elif kind == 3:  # a chunk's blob or offset changed (its declared size and bytes kept)
        payload = f[i][16 + int.from_bytes(f[i][4:8], "big") :]
        blob = _pick(rng, [0, 1, 2, 3, 64, -1, 2**63])
        offset = _pick(rng, [0, 1, 1023, 1024, 8191, 8192, 2**40, -5])
        f[i] = framing.encode_chunk(blob, offset, len(payload)) + payload
    elif kind == 4:  # a chunk's declared size changed
        frame = bytearray(f[i])
        frame[8:16] = _pick(rng, [0, 1, 1023, 1025, 2**20, 2**64 - 1]).to_bytes(8, "big")
        f[i] = bytes(frame)
    elif kind == 5:  # a chunk's payload cut short or padded
        f[i] = (
            f[i][: -int(rng.integers(1, 50))]
            if rng.random() < 0.5
            else f[i] + rng.bytes(int(rng.integers(1, 50)))
        )
    elif kind == 6:  # bytes flipped in a chunk's header
        frame = bytearray(f[i])
        for pos in rng.integers(16, 16 + int.from_bytes(frame[4:8], "big"), int(rng.integers(1, 4))):
            frame[pos] = _pick(rng, list(b'{}[]",:0-.9tfx\x00\xff'))
        f[i] = bytes(frame)
    elif kind == 7:  # the header frame's `blobs` or `chunked` damaged
        f[0] = _pick(
            rng, [f[0].replace(b'"chunked":true', b'"chunked":false'), f[0].replace(b"8192", b"8193")]
        )
    elif kind == 8:  # another message inside the stream
        f.insert(i, framing.encode_header(_pick(rng, [{"type": "jobs"}, {"type": "chunk"}]), []))
    else:  # cut off anywhere
        return b"".join(f)[: int(rng.integers(1, sum(map(len, f))))]
    return b"".join(f)


def test_fuzz_chunk_streams(make_server: Callable[..., Server]) -> None:
    """1000 damaged chunk streams: each gets at most an error (never `internal`) or is cut off, and
    the server still serves a streamed job correctly afterwards."""
    server = _echo_server(make_server, stall_timeout=0.5)
    rng = np.random.default_rng(4321)
    frames = _stream_frames(_stream_job(), ref="r")
    seen: set[str] = set()
    for _ in range(1000):
        stream = _mutate_stream(frames, rng)
        with session(server) as sock:
            with contextlib.suppress(OSError):
                sock.sendall(stream)
                sock.shutdown(socket.SHUT_WR)
            while True:
                try:
                    h = read_message(sock, CLIENT_LIMITS, 5.0).header
                except (ConnectionClosed, ProtocolError):
                    break
                assert h["type"] in {"error", "accepted", "progress", "result", "jobs"}, h
                assert h.get("code") != "internal", h
                seen.add(h.get("code", h["type"]))
    assert {"bad-frame", "too-large", "bad-request", "result"} <= seen, seen
    with session(server) as sock:
        job = _stream_job(9)
        header, blobs = job_message(job)
        send_message(sock, header, blobs, 5.0, 1024)
        last, last_blobs = _events(sock, is_final)[-1]
        assert last["type"] == "result" and bytes(last_blobs[0]) == job.content.data


def test_an_image_over_max_side_is_refused_before_its_memory_is_allocated(
    make_server: Callable[..., Server],
) -> None:
    """A 16 TiB content within a (silly) max_message: an engine that allocated before checking the
    header would fail with out-of-memory; this one answers bad-request and keeps the connection."""
    server = _echo_server(make_server, limits=framing.Limits(max_message=1 << 46, max_side=256))
    content = {"width": 1 << 22, "height": 1 << 20, "channels": 4, "dtype": "u8", "blob": 0}
    header = {
        "type": "stylize",
        "ref": 7,
        "method": "echo",
        "params": {},
        "content": content,
        "blobs": [1 << 44],
    }
    with session(server) as sock:
        sock.sendall(_raw_header(dict(header, chunked=True)))
        error = _events(sock, lambda h: True)[0][0]
        assert (error["code"], error["ref"]) == ("bad-request", 7) and "content.width" in error["message"]


def _raw_header(header: dict[str, Any]) -> bytes:
    text = json.dumps(header).encode()
    return framing.PREFIX.pack(framing.MAGIC, len(text), 0) + text


def test_the_engine_holds_one_layer_at_a_time(
    make_server: Callable[..., Server], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Three 32 MiB jobs on one connection, the results read and thrown away in small pieces: the
    traced peak is one job's pixels in the engine (and small change). An engine that kept the last
    job's pixels while it waits for the next one (a reader or worker holding on to them) shows 2x.
    Messages are received into bytearrays here, which tracemalloc sees (memory maps it does not)."""
    import tracemalloc

    monkeypatch.setattr(framing, "LAZY_BUFFER", 1 << 62)

    size = 32 << 20
    server = _echo_server(make_server, limits=framing.Limits(max_payload=1 << 20, chunk_size=1 << 20))
    job = StylizeJob(
        "echo", {"device": "cpu"}, RawImage(4096, 2048, 4, "u8", bytearray(os.urandom(1 << 20)) * 32)
    )
    header, blobs = job_message(job)

    def discard(h: dict[str, Any], sizes: list[int]) -> None:
        if h["type"] == "result":
            raise ProtocolError("bad-request", "read it into nothing")

    with session(server) as sock:
        tracemalloc.start()
        try:
            for _ in range(3):
                send_message(sock, header, blobs, 5.0, 1 << 20)
                while True:
                    try:
                        h = read_message(sock, CLIENT_LIMITS, 5.0, check=discard).header
                        assert h["type"] in ("accepted", "progress"), h
                    except framing.Rejected as exc:
                        exc.skip()
                        break
                time.sleep(0.1)  # the worker drops its reference a moment after the last byte went out
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    print(f"traced peak {peak / size:.3f} x the layer")
    assert peak < size + (4 << 20), f"peak {peak >> 20} MiB for a {size >> 20} MiB layer"


def test_a_slow_readers_coalesced_progress_keeps_the_latest_preview(
    make_server: Callable[..., Server],
) -> None:
    """A client that reads slower than progress comes gets the latest event, and with it the latest
    picture: a newer event without a preview must not throw away the queued one that had it."""
    server = make_server()
    with session(server) as sock:
        deadline = time.monotonic() + 5
        while not [c for c in server._connections if c.authenticated]:
            assert time.monotonic() < deadline, "the engine never saw the session"
            time.sleep(0.01)
        conn = next(c for c in server._connections if c.authenticated)
        blobs: list[Any] = []
        picture = preview_image(np.full((4, 6, 3), 0.5, np.float32))
        with conn.outbox.hold():  # the writer cannot take the first event before the second replaces it
            with_picture = {
                "type": "progress",
                "job": "7",
                "fraction": 0.1,
                "stage": "optimise",
                "message": "",
            }
            with_picture["preview"] = messages.image_header(picture, blobs)
            conn.outbox.event(with_picture, blobs, progress_of="7")
            later = {"type": "progress", "job": "7", "fraction": 0.2, "stage": "optimise", "message": ""}
            conn.outbox.event(later, [], progress_of="7")
        message = read_message(sock, CLIENT_LIMITS, 10.0)
        assert message.header["fraction"] == 0.2 and message.header["preview"]["width"] == 6
        assert bytes(message.blobs[message.header["preview"]["blob"]]) == bytes(picture.data)


def test_a_preview_right_after_the_plan_reaches_the_client(make_server: Callable[..., Server]) -> None:
    """Progress is throttled, but a due preview never is: a short job may send no other one."""

    def quick(job: StylizeJob, progress: Any, cancel: Any, cache: Any) -> RawImage:
        progress(Progress(0.05, "plan", "the plan"))
        progress(Progress(0.5, "optimise", "step 1", preview=np.full((6, 8, 3), 0.25, np.float32)))
        return job.content

    server = make_server(runner=quick)
    with session(server) as sock:
        header, blobs = job_message(_job(TINY))
        send_message(sock, header, blobs)
        events = _events(sock, is_final)
    previews = [h["preview"] for h, _ in events if h["type"] == "progress" and "preview" in h]
    assert previews and (previews[0]["width"], previews[0]["height"]) == (8, 6), [h for h, _ in events]
