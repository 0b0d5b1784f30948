"""Clients that attack the engine, on real sockets against a real in-process server.

Slow handshakes, uploads that declare a large image and stall, clients that stop reading, paths
that probe the engine's machine, text that tries to forge log lines, and at the end all of them at
once beside a well-behaved client, who must still be answered within a second and get its job
done. The servers use short timeouts, so the whole suite takes seconds.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from helpers import is_final, noise, session

from engine.errors import CancelToken
from engine.imaging import images
from engine.methods.base import Progress
from engine.service.server import Server
from nst_common import framing, messages
from nst_common.endpoints import Endpoint
from nst_common.framing import ConnectionClosed, ProtocolError, read_message, send_message
from nst_common.messages import RawImage, StyleRef, StylizeJob, job_message
from nst_common.session import CLIENT_LIMITS, open_session

TOKEN = "hostile-suite-token"
LAYER = 4096 * 4096 * 4  # a 4096x4096 RGBA u8 layer: 64 MiB
TINY = {"preset": "draft", "size": 16, "seed": 0, "device": "cpu", "iterations": 1, "optimizer": "adam"}


def _runner(job: StylizeJob, progress: Any, cancel: CancelToken, cache: Any) -> RawImage:
    """echo: the content back; big: a 32 MiB result; slow: runs until cancelled; brief: the content
    back after 2.5 s; first-style: the first style's pixels, read from its file as the pipeline
    reads one; anything else: the pipeline."""
    if job.method == "echo":
        return job.content
    if job.method == "big":
        return RawImage(4096, 2048, 4, "u8", bytes(32 << 20))
    if job.method == "slow":
        while True:
            cancel.raise_if_cancelled()
            progress(Progress(0.5, "optimise", "working"))
            time.sleep(0.02)
    if job.method == "brief":
        time.sleep(2.5)
        return job.content
    if job.method == "first-style":
        ref = job.styles[0]
        picture = images.load_image(ref.path) if ref.image is None else images.from_raw(ref.image)
        return images.to_raw(picture, "u8")
    from engine import pipeline

    return pipeline.run_job(job, progress, cancel, cache)


def _tcp_server(make_server: Callable[..., Server], **config: Any) -> Server:
    config.setdefault("stall_timeout", 1.0)
    config.setdefault("hello_timeout", 1.0)
    return make_server(
        runner=_runner,
        capabilities=lambda: {"methods": {"echo": {}}},
        endpoint=Endpoint("tcp", host="127.0.0.1", port=0),
        token=TOKEN,
        **config,
    )


def _next(sock: socket.socket, timeout: float = 10.0) -> dict[str, Any]:
    """The next message's header (its blobs read and dropped)."""
    deadline = time.monotonic() + timeout

    def on_idle() -> None:
        if time.monotonic() > deadline:
            raise TimeoutError(f"nothing from the engine within {timeout} s")

    return read_message(sock, CLIENT_LIMITS, 5.0, on_idle).header


def _until(
    sock: socket.socket, done: Callable[[dict[str, Any]], bool], timeout: float = 10.0
) -> list[dict[str, Any]]:
    end = time.monotonic() + timeout
    out = []
    while True:
        out.append(_next(sock, max(0.05, end - time.monotonic())))
        if done(out[-1]):
            return out


def _submit(sock: socket.socket, job: StylizeJob, ref: Any = None) -> None:
    header, blobs = job_message(job)
    if ref is not None:
        header["ref"] = ref
    send_message(sock, header, blobs, 5.0)


def _raw_frame(header: dict[str, Any], payload_len: int = 0) -> bytes:
    text = json.dumps(header).encode()  # json escapes a lone surrogate as \ud800, as a peer may send it
    return framing.PREFIX.pack(framing.MAGIC, len(text), payload_len) + text


def _upload_header(ref: Any) -> bytes:
    """A chunked `stylize` declaring a 64 MiB content, whose chunks never come."""
    content = {"width": 4096, "height": 4096, "channels": 4, "dtype": "u8", "blob": 0}
    header = {
        "type": "stylize",
        "ref": ref,
        "method": "echo",
        "params": {"device": "cpu"},
        "content": content,
    }
    return _raw_frame(dict(header, blobs=[LAYER], chunked=True))


def _rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


needs_proc = pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads VmRSS from /proc")


# --- Slow handshakes -----------------------------------------------------------------------------


def _dribble(server: Server, pause: float, stop: threading.Event | None = None) -> socket.socket:
    """Connect and start sending a hello one byte per `pause` seconds, from a thread."""
    sock = server.address.connect(2.0)
    frame = framing.encode_header(
        {"type": "hello", "protocol": messages.PROTOCOL_VERSION, "token": TOKEN}, []
    )

    def run() -> None:
        with contextlib.suppress(OSError):
            for byte in frame:
                if stop is not None and stop.is_set():
                    return
                sock.send(bytes([byte]))
                time.sleep(pause)

    threading.Thread(target=run, daemon=True).start()
    return sock


def test_a_handshake_sent_a_byte_at_a_time_is_cut_off_at_its_deadline(
    make_server: Callable[..., Server],
) -> None:
    server = _tcp_server(make_server, hello_timeout=0.5, stall_timeout=5.0)
    start = time.monotonic()
    with _dribble(server, 0.05) as sock:  # the whole hello would take 3 s
        reply = _next(sock, 5.0)
        took = time.monotonic() - start
    assert reply["type"] == "error" and reply["code"] == "timeout", reply
    assert "hello" in reply["message"] and took < 1.5, (reply, took)


def test_slow_handshakes_cannot_take_the_places_of_clients_with_the_token(
    make_server: Callable[..., Server],
) -> None:
    server = _tcp_server(
        make_server, hello_timeout=30.0, stall_timeout=30.0, max_connections=4, max_handshakes=4
    )
    stop = threading.Event()
    slow = [_dribble(server, 0.5, stop) for _ in range(12)]  # three times the pool, each there for 30 s
    try:
        time.sleep(0.3)
        for _ in range(3):  # each time the oldest slow one makes room
            start = time.monotonic()
            sock, hello = open_session(server.address, TOKEN, timeout=5.0)
            sock.close()
            assert hello["type"] == "hello" and time.monotonic() - start < 1.0
        # Clients with the token have their own places: four, and a fifth is told so.
        held = [session(server) for _ in range(4)]
        with pytest.raises(ProtocolError) as info:
            open_session(server.address, TOKEN, timeout=5.0)
        assert info.value.code == "busy"
        held.pop().close()
        time.sleep(0.3)
        session(server).close()
        for sock in held:
            sock.close()
    finally:
        stop.set()
        for sock in slow:
            sock.close()


def test_connections_left_idle_make_room_for_a_new_client(make_server: Callable[..., Server]) -> None:
    """A client that leaks connections fills every place; once they have been idle for
    `stall_timeout` with no job, the idlest one gives its place to a new client and is told why.
    A connection with a job running keeps its place however quiet it is."""
    server = _tcp_server(make_server, stall_timeout=2.0, max_connections=2)
    working, idle = session(server), session(server)
    newcomers: list[socket.socket] = []
    try:
        _submit(working, StylizeJob("slow", {"device": "cpu"}, noise(8, 8, 4)), ref="job")
        assert _until(working, lambda h: h.get("ref") == "job")[-1]["type"] == "accepted"
        with pytest.raises(ProtocolError) as info:  # both places taken, neither idle long enough
            open_session(server.address, TOKEN, timeout=5.0)
        assert info.value.code == "busy"
        time.sleep(2.4)
        newcomers.append(session(server))  # takes the idle one's place at once
        told = _until(idle, lambda h: h["type"] == "error")[-1]
        assert told["code"] == "idle" and "make room" in told["message"], told
        with pytest.raises(ConnectionClosed):
            _next(idle, 2.0)
        with pytest.raises(ProtocolError) as info:  # the newcomer is fresh, the job still runs
            open_session(server.address, TOKEN, timeout=5.0)
        assert info.value.code == "busy"
        assert _next(working)["type"] == "progress"
        time.sleep(2.4)
        newcomers.append(session(server))  # now the first newcomer is the idle one
        assert _until(newcomers[0], lambda h: h["type"] == "error")[-1]["code"] == "idle"
        assert [j["state"] for j in server.jobs.snapshot()] == ["running"]
    finally:
        for sock in (working, idle, *newcomers):
            sock.close()


def test_a_job_that_just_ended_keeps_its_connections_place(make_server: Callable[..., Server]) -> None:
    """The request was sent long ago, but the job's end is news for its client: the connection
    counts as idle only `stall_timeout` after its result, never while the result is on its way."""
    server = _tcp_server(make_server, stall_timeout=2.0, max_connections=1)
    client = session(server)
    later: socket.socket | None = None
    try:
        _submit(client, StylizeJob("brief", {"device": "cpu"}, noise(8, 8, 4)), ref="job")
        assert _until(client, lambda h: is_final(h))[-1]["type"] == "result"  # 2.5 s after the request
        with pytest.raises(ProtocolError) as info:
            open_session(server.address, TOKEN, timeout=5.0)
        assert info.value.code == "busy"
        time.sleep(2.4)
        later = session(server)
        assert _until(client, lambda h: h["type"] == "error")[-1]["code"] == "idle"
    finally:
        for sock in (client, later):
            if sock is not None:
                sock.close()


# --- Memory --------------------------------------------------------------------------------------


@needs_proc
def test_stalled_uploads_share_one_budget_and_cost_no_memory(make_server: Callable[..., Server]) -> None:
    """Four clients declare a 64 MiB layer each and send none of it: two fit the 150 MiB budget of
    images being received and are dropped when they stall; the other two are told `busy` at once.
    The engine's memory does not grow by what they declared."""
    limits = framing.Limits(max_message=256 << 20)
    server = _tcp_server(make_server, limits=limits, max_images=150 << 20, stall_timeout=1.5)
    socks = [session(server) for _ in range(4)]
    try:
        before = _rss_mib()
        for i, sock in enumerate(socks):
            sock.sendall(_upload_header(ref=i))
            time.sleep(0.1)
        grown = _rss_mib() - before
        print(f"engine RSS grew {grown:.1f} MiB for four stalled uploads declaring 256 MiB")
        for sock in socks[2:]:
            reply = _next(sock, 1.0)
            assert (reply["code"], reply["type"]) == ("busy", "error") and "at most 150.0 MiB" in reply[
                "message"
            ]
        assert grown < 32, f"{grown:.0f} MiB"
        for sock in socks[:2]:
            assert _next(sock, 5.0)["code"] == "timeout"
        assert server.images.used == 0
        with session(server) as sock:  # the budget is free again
            _submit(sock, StylizeJob("echo", {"device": "cpu"}, noise(64, 32, 4)))
            assert _until(sock, is_final)[-1]["type"] == "result"
    finally:
        for sock in socks:
            sock.close()


def test_an_upload_that_trickles_gives_its_share_to_a_client_that_waits(
    make_server: Callable[..., Server],
) -> None:
    """A client declares a 64 MiB layer and sends a byte every 0.3 s: never stalled, yet far below
    the engine's minimum rate. Once its grace (the stall timeout) is over and another client's job
    needs the room, it is dropped with `too-slow`, and the other job runs."""
    server = _tcp_server(make_server, limits=framing.Limits(max_message=128 << 20), max_images=80 << 20)
    stop = threading.Event()
    trickler = session(server)
    try:
        trickler.sendall(_upload_header("t") + _raw_frame({"type": "chunk", "blob": 0, "offset": 0}, 1 << 20))

        def trickle() -> None:
            with contextlib.suppress(OSError):
                while not stop.wait(0.3):
                    trickler.send(b"x")

        threading.Thread(target=trickle, daemon=True).start()
        time.sleep(0.5)
        with session(server) as other:  # within the grace: the trickler keeps its share
            _submit(other, StylizeJob("echo", {"device": "cpu"}, noise(2560, 2048, 4)), ref="early")
            assert _next(other, 5.0)["code"] == "busy"
        time.sleep(1.0)
        with session(server) as other:
            start = time.monotonic()
            _submit(other, StylizeJob("echo", {"device": "cpu"}, noise(2560, 2048, 4)), ref="late")
            events = _until(other, is_final)
            assert events[0]["type"] == "accepted" and events[-1]["type"] == "result", events
            assert time.monotonic() - start < 5.0
        dropped = _until(trickler, lambda h: h["type"] == "error")[-1]
        assert dropped["code"] == "too-slow" and "MiB/s" in dropped["message"], dropped
        assert server.images.used == 0
    finally:
        stop.set()
        trickler.close()


def test_queued_jobs_hold_their_images_until_they_end(make_server: Callable[..., Server]) -> None:
    """What clients can make the engine hold counts queued and running jobs too, across connections."""
    server = _tcp_server(make_server, max_images=10 << 20)
    layer = noise(1024, 1024, 4)  # 4 MiB
    with session(server) as first, session(server) as second:
        _submit(first, StylizeJob("slow", {"device": "cpu"}, layer), ref="running")
        running = _until(first, lambda h: h.get("ref") == "running")[-1]
        _submit(second, StylizeJob("slow", {"device": "cpu"}, layer), ref="queued")
        assert _until(second, lambda h: h.get("ref") == "queued")[-1]["type"] == "accepted"
        for sock in (first, second):
            _submit(sock, StylizeJob("echo", {"device": "cpu"}, layer), ref="third")
            refused = _until(sock, lambda h: h.get("ref") == "third")[-1]
            assert refused["code"] == "busy" and "8.0 MiB" in refused["message"], refused
        send_message(first, {"type": "cancel", "job": running["job"]})
        _until(first, lambda h: h.get("job") == running["job"] and h["type"] == "error")
        _submit(first, StylizeJob("echo", {"device": "cpu"}, layer), ref="room")
        assert _until(first, lambda h: h.get("ref") == "room")[-1]["type"] == "accepted"
    deadline = time.monotonic() + 5
    while server.images.used and time.monotonic() < deadline:  # the queued job is cancelled on leaving
        time.sleep(0.05)
    assert server.images.used == 0


def test_one_connection_may_queue_only_so_many_jobs(make_server: Callable[..., Server]) -> None:
    server = _tcp_server(make_server, max_jobs_per_connection=3)
    with session(server) as sock:
        for i in range(5):
            _submit(sock, StylizeJob("slow", {"device": "cpu"}, noise(8, 8, 4)), ref=i)
        replies = _until(sock, lambda h: h.get("ref") == 4)
        answers = {h["ref"]: h for h in replies if "ref" in h}
        assert [answers[i]["type"] for i in range(5)] == ["accepted"] * 3 + ["error"] * 2
        assert answers[3]["code"] == "busy" and "3 jobs" in answers[3]["message"]
        assert len(server.jobs.snapshot()) == 3


# --- A client that stops reading -----------------------------------------------------------------


def test_a_client_that_stops_reading_holds_up_no_one_else(make_server: Callable[..., Server]) -> None:
    server = _tcp_server(make_server, stall_timeout=5.0)
    with session(server) as stuck, session(server) as other:
        _submit(stuck, StylizeJob("big", {"device": "cpu"}, noise(8, 8, 4)))  # a 32 MiB result, never read
        time.sleep(0.5)
        start = time.monotonic()
        _submit(other, StylizeJob("echo", {"device": "cpu"}, noise(64, 32, 4)))
        events = _until(other, is_final)
        took = time.monotonic() - start
        assert events[-1]["type"] == "result" and took < 1.0, (events[-1], took)
        # The stuck client's own reader still answers, and its result is kept for it.
        send_message(stuck, {"type": "jobs", "ref": "j"})
        stuck.settimeout(5.0)
        headers = []
        while not headers or headers[-1].get("ref") != "j":
            headers.append(read_message(stuck, CLIENT_LIMITS, 5.0).header)
        assert any(h["type"] == "result" for h in headers)


# --- Paths ---------------------------------------------------------------------------------------


@pytest.fixture
def secret(tmp_path: Path) -> Path:
    """A private picture of the engine's user, somewhere on its machine."""
    path = tmp_path / "private" / "secret.png"
    path.parent.mkdir()
    images.save_image(path, np.full((6, 5, 3), 0.25, np.float32))
    path.chmod(0o600)
    return path


def _path_job(path: str, method: str = "first-style", **params: Any) -> StylizeJob:
    return StylizeJob(method, {"device": "cpu", **params}, noise(5, 6, 3), [StyleRef(path=path)])


def _answer(sock: socket.socket, job: StylizeJob) -> dict[str, Any]:
    _submit(sock, job, ref="p")
    return _until(sock, lambda h: (h.get("ref") == "p" and h["type"] == "error") or is_final(h))[-1]


def test_over_tcp_no_path_reaches_the_file_system(make_server: Callable[..., Server], secret: Path) -> None:
    server = _tcp_server(make_server)
    missing = str(secret.with_name("missing.png"))
    with session(server) as sock:
        answers = {
            "file": _answer(sock, _path_job(str(secret))),
            "missing": _answer(sock, _path_job(missing)),
            "folder": _answer(sock, _path_job(str(secret.parent))),
            "init": _answer(sock, StylizeJob("echo", {"device": "cpu", "init": str(secret)}, noise(5, 6, 3))),
        }
        for what, reply in answers.items():
            assert (reply["type"], reply["code"]) == ("error", "path-refused"), (what, reply)
        # The answer is the same whether the file exists or not.
        assert answers["file"]["message"].replace(str(secret), "P") == answers["missing"]["message"].replace(
            missing, "P"
        )
        # `init` content and noise name no file: still fine.
        _submit(sock, StylizeJob("echo", {"device": "cpu", "init": "noise"}, noise(5, 6, 3)))
        assert _until(sock, is_final)[-1]["type"] == "result"
    assert server.hello_reply()["paths"] == "none"


def test_over_tcp_only_files_in_the_styles_folder_are_read(
    make_server: Callable[..., Server], secret: Path, tmp_path: Path
) -> None:
    styles = tmp_path / "styles"
    styles.mkdir()
    images.save_image(styles / "candy.png", np.full((4, 4, 3), 0.5, np.float32))
    (styles / "link.png").symlink_to(secret)  # a link out of the folder is out
    (styles / "notes.txt").write_text("not a picture")
    server = _tcp_server(make_server, styles_dir=styles)
    with session(server) as sock:
        result = _answer(sock, _path_job("candy.png"))
        assert result["type"] == "result" and (result["image"]["width"], result["image"]["height"]) == (4, 4)
        probes = [str(secret), "../private/secret.png", "link.png", "missing.png", str(styles)]
        messages = set()
        for probe in probes:
            reply = _answer(sock, _path_job(probe))
            assert (reply["type"], reply["code"]) == ("error", "path-refused"), (probe, reply)
            messages.add(reply["message"].replace(repr(probe), "P"))
        assert len(messages) == 1, messages  # nothing tells one probe from another
        for init in ("a\x00b", "link.png", str(secret)):
            reply = _answer(sock, StylizeJob("echo", {"device": "cpu", "init": init}, noise(5, 6, 3)))
            assert (reply["type"], reply["code"]) == ("error", "path-refused"), (init, reply)
        reply = _answer(sock, _path_job("notes.txt"))  # inside the folder: the reader's own error
        assert reply["code"] == "bad-input" and "secret" not in reply["message"]
        assert server.hello_reply()["paths"] == "styles-dir"


def test_on_the_unix_socket_the_user_may_name_any_file(
    make_server: Callable[..., Server], secret: Path
) -> None:
    server = make_server(runner=_runner, capabilities=lambda: {"methods": {}})
    sock, hello = open_session(server.address, None)
    with sock:
        assert hello["paths"] == "any"
        result = _answer(sock, _path_job(str(secret)))
        assert result["type"] == "result" and (result["image"]["width"], result["image"]["height"]) == (5, 6)


# --- The log -------------------------------------------------------------------------------------


@pytest.fixture
def engine_log(tmp_path: Path) -> Iterator[Path]:
    """The engine's log file as `nst serve` sets it up, for this process, with a common umask."""
    from engine.cli import serve

    root = logging.getLogger()
    level, handlers = root.level, list(root.handlers)
    umask = os.umask(0o022)
    path = tmp_path / "data" / "engine.log"
    try:
        serve._setup_logging(path)
        yield path
    finally:
        for handler in root.handlers:
            if handler not in handlers:
                root.removeHandler(handler)
                handler.close()
        root.setLevel(level)
        os.umask(umask)


FORGED = "2099-01-01 00:00:00,000 1 nst-conn-1 WARNING forged"


def test_client_text_cannot_forge_log_lines_and_the_log_is_private(
    make_server: Callable[..., Server], engine_log: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    server = _tcp_server(make_server)
    with session(server) as sock:
        _submit(sock, StylizeJob(f"x\n{FORGED}", {"device": "cpu"}, noise(5, 6, 3)), ref=1)
        assert _until(sock, is_final)[-1]["type"] == "error"
        send_message(sock, {"type": f"y\r\n{FORGED}"})
        assert _next(sock)["code"] == "unknown-type"
    time.sleep(0.2)
    assert caplog.records and all("\n" not in r.getMessage() for r in caplog.records)
    text = engine_log.read_text()
    assert "job 1 queued" in text and not any(line.startswith("2099") for line in text.splitlines())
    assert engine_log.stat().st_mode & 0o777 == 0o600


def test_a_token_that_is_not_utf8_is_just_unauthorized(
    make_server: Callable[..., Server], caplog: pytest.LogCaptureFixture
) -> None:
    server = _tcp_server(make_server)
    for token in ("\ud800", "a\udfffb", 12, None):
        with server.address.connect(2.0) as sock:
            sock.sendall(_raw_frame({"type": "hello", "protocol": messages.PROTOCOL_VERSION, "token": token}))
            assert _next(sock)["code"] == "unauthorized", token
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]


# --- All at once ---------------------------------------------------------------------------------


@needs_proc
def test_a_well_behaved_client_is_served_while_all_of_them_attack(
    make_server: Callable[..., Server], secret: Path, tmp_path: Path
) -> None:
    import torch

    threads_before = torch.get_num_threads()
    torch.set_num_threads(1)
    styles = tmp_path / "styles"
    styles.mkdir()
    server = _tcp_server(
        make_server,
        hello_timeout=1.0,
        stall_timeout=1.0,
        max_handshakes=8,
        max_jobs_per_connection=2,
        limits=framing.Limits(max_message=256 << 20),
        max_images=160 << 20,  # the two stalled uploads (128 MiB) leave room for small jobs
        styles_dir=styles,
    )
    good = StylizeJob("gatys", TINY, noise(20, 14, 4), [StyleRef(image=noise(12, 12, 3, 1))])
    with session(server) as sock:  # once before: the model is loaded, so what grows below is the attack's
        _submit(sock, good)
        assert _until(sock, is_final, 60)[-1]["type"] == "result"

    stop = threading.Event()
    problems: list[str] = []
    counts = dict.fromkeys(("slow", "upload", "stuck", "probe", "inject", "flood"), 0)

    def attacker(name: str, body: Callable[[], None]) -> threading.Thread:
        def run() -> None:
            while not stop.is_set():
                try:
                    body()
                    counts[name] += 1
                except (OSError, ConnectionClosed, ProtocolError, TimeoutError):
                    counts[name] += 1  # dropped by the engine: what should happen to most of them
                except AssertionError as exc:
                    problems.append(f"{name}: {exc}")
                    return

        thread = threading.Thread(target=run, name=f"attacker-{name}", daemon=True)
        thread.start()
        return thread

    def slow() -> None:
        with _dribble(server, 0.2, stop) as sock:
            sock.settimeout(3.0)
            while sock.recv(4096):
                pass

    def upload() -> None:
        with session(server) as sock:
            sock.sendall(_upload_header("u"))
            _until(sock, lambda h: h["type"] == "error", 5.0)

    def stuck() -> None:
        with session(server) as sock:
            _submit(sock, StylizeJob("big", {"device": "cpu"}, noise(8, 8, 4)))
            stop.wait(3.0)

    def probe() -> None:
        with session(server) as sock:
            for path in (str(secret), "/etc/passwd", "../private/secret.png", "/nonexistent.png"):
                reply = _answer(sock, _path_job(path))
                assert reply.get("code") == "path-refused", reply

    def inject() -> None:
        with session(server) as sock:
            _submit(sock, StylizeJob(f"m\n{FORGED}", {"device": "cpu"}, noise(4, 4, 3)), ref=1)
            _until(sock, is_final)
        with server.address.connect(2.0) as sock:
            sock.sendall(
                _raw_frame({"type": "hello", "protocol": messages.PROTOCOL_VERSION, "token": "\ud800"})
            )
            assert _next(sock)["code"] == "unauthorized"

    def flood() -> None:
        with session(server) as sock:
            for i in range(4):
                _submit(sock, StylizeJob("slow", {"device": "cpu"}, noise(8, 8, 4)), ref=i)
            replies = _until(sock, lambda h: h.get("ref") == 3)
            assert sum(h["type"] == "accepted" for h in replies) <= 2

    before = _rss_mib()
    slow_threads = [attacker("slow", slow) for _ in range(16)]
    others = [attacker(name, body) for name, body in (
        ("upload", upload), ("upload", upload), ("stuck", stuck), ("probe", probe), ("inject", inject),
    )]  # fmt: skip
    time.sleep(1.0)
    hello_times, job_times = [], []
    flooder = None
    try:
        for _ in range(3):
            start = time.monotonic()
            sock, hello = open_session(server.address, TOKEN, timeout=5.0)
            hello_times.append(time.monotonic() - start)
            with sock:
                assert hello["type"] == "hello"
                start = time.monotonic()
                _submit(sock, good)
                assert _until(sock, is_final, 30)[-1]["type"] == "result"
                job_times.append(time.monotonic() - start)
            time.sleep(0.3)
        flooder = attacker("flood", flood)
        time.sleep(0.5)
        grown = _rss_mib() - before
    finally:
        stop.set()
        for thread in [*slow_threads, *others, *([flooder] if flooder else [])]:
            thread.join(10)
        torch.set_num_threads(threads_before)
    print(
        f"\nengine RSS grew {grown:.1f} MiB under attack; hello answered in "
        f"{', '.join(f'{t * 1000:.0f}' for t in hello_times)} ms; the job took "
        f"{', '.join(f'{t:.2f}' for t in job_times)} s; attacks made: {counts}"
    )
    assert not problems, problems
    assert max(hello_times) < 1.0, hello_times
    assert all(counts[name] for name in counts), counts
    assert grown < 160, f"{grown:.0f} MiB"
