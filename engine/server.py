"""The engine's socket server: a reader thread per connection, jobs on the queue's workers.

Every request is validated by `engine.protocol` before anything else sees it; every handler is
wrapped so that no request can stop the server. Internal errors reach the client as an `error`
event with code "internal"; the traceback goes only to the log.
"""

from __future__ import annotations

import contextlib
import hmac
import itertools
import json
import logging
import math
import os
import socket
import stat
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from engine import __version__, weights
from engine.cache import ModelCache
from engine.errors import CancelToken, UserError
from engine.jobs import Job, JobQueue, Runner, Task
from engine.methods.base import Progress, ProgressFn
from nst_common.protocol import (
    PROTOCOL_VERSION,
    ConnectionClosed,
    Endpoint,
    Limits,
    Message,
    ProtocolError,
    RawImage,
    Rejected,
    StylizeJob,
    check_job,
    image_header,
    parse_job,
    read_message,
    send_message,
)

log = logging.getLogger(__name__)

PREVIEW_SIDE = 256
PULL_QUEUE = "download"  # pulls wait in their own queue: never behind a device's jobs, nor before them
MAX_PULL_WEIGHTS = 8  # weight ids one `pull` may name
MAX_WEIGHT_ID = 128  # characters of one id; the manifest's are far shorter
# Optional requests beyond stylize, cancel, jobs, hello and shutdown, listed in `hello`.
REQUESTS = ("pull",)
# Nobody gets memory before the token check.
HELLO_LIMITS = Limits(max_header=64 << 10, max_payload=0, max_message=0)


@dataclass
class ServerConfig:
    endpoint: Endpoint
    limits: Limits = field(default_factory=Limits)
    token: str | None = None  # required for TCP
    idle_timeout: float = 1800.0  # seconds without jobs or requests before the engine exits; 0: never
    stall_timeout: float = 30.0  # a peer silent this long inside a frame is dropped
    hello_timeout: float = 10.0  # a connection must say hello this soon
    poll: float = 0.1  # how often blocked threads look up to check for shutdown
    slots_per_device: int = 1
    max_connections: int = 64


class Server:
    """Listens on one endpoint and serves until `shutdown`, a `shutdown` request, or idleness."""

    def __init__(
        self,
        config: ServerConfig,
        runner: Runner,
        capabilities: Callable[[], dict[str, Any]],
        device_of: Callable[[StylizeJob], str],
        cache: ModelCache | None = None,
    ) -> None:
        self.config = config
        self._capabilities = capabilities
        self.cache = cache or ModelCache()
        self.jobs = JobQueue(runner, self.cache, device_of, config.slots_per_device)
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._connections: dict[Connection, threading.Thread] = {}
        self._ids = itertools.count(1)
        self._listener: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self.last_activity = time.monotonic()
        self.address = config.endpoint

    # --- Life cycle ------------------------------------------------------------------------------

    def bind(self) -> None:
        """Open the listening socket; refuses to replace a live engine's socket."""
        ep = self.config.endpoint
        if ep.kind == "tcp":
            if not self.config.token:
                raise UserError("no-token", "TCP needs a token file; `nst token` creates one.")
            family = socket.AF_INET6 if ":" in ep.host else socket.AF_INET
            self._listener = socket.create_server((ep.host, ep.port), family=family, backlog=64)
            host, port = self._listener.getsockname()[:2]
            self.address = Endpoint("tcp", host=host, port=port)
        else:
            path = Path(ep.path)
            prepare_private_dir(path.parent)
            if path.exists() or path.is_symlink():
                if _answers(ep):
                    raise UserError("already-running", f"An engine is already listening on {ep}.")
                log.info("removing stale socket %s", path)
                path.unlink()
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                sock.bind(str(path))
                os.chmod(path, 0o600)
                sock.listen(64)
            except BaseException:
                sock.close()
                raise
            self._listener = sock
        self._listener.settimeout(self.config.poll)
        log.info("engine %s (protocol %d) listening on %s", __version__, PROTOCOL_VERSION, self.address)

    def serve_forever(self) -> None:
        if self._listener is None:
            self.bind()
        assert self._listener is not None
        try:
            while not self._stop.is_set():
                if self._idle_for() > self.config.idle_timeout > 0:
                    log.info("idle for %.0f s: shutting down", self.config.idle_timeout)
                    break
                try:
                    sock, _ = self._listener.accept()
                except TimeoutError:
                    continue
                except OSError:
                    if self._stop.is_set():
                        break
                    log.exception("accept failed")
                    time.sleep(self.config.poll)
                    continue
                try:
                    self._start_connection(sock)
                except Exception:  # e.g. no thread to spare: drop this client, keep serving
                    log.exception("could not serve a connection")
                    sock.close()
        finally:
            self._teardown()

    def start(self) -> Server:
        """Serve from a background thread (used in-process by tests and benchmarks)."""
        if self._listener is None:
            self.bind()
        self._thread = threading.Thread(target=self.serve_forever, name="nst-server", daemon=True)
        self._thread.start()
        return self

    def shutdown(self, wait: bool = True) -> None:
        self._stop.set()
        if wait and self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join()

    def touch(self) -> None:
        self.last_activity = time.monotonic()

    def _idle_for(self) -> float:
        if not self.jobs.idle:
            return 0.0
        return time.monotonic() - max(self.last_activity, self.jobs.last_activity)

    def _start_connection(self, sock: socket.socket) -> None:
        with self._lock:
            if len(self._connections) >= self.config.max_connections:
                log.warning("too many connections; refusing one")
                sock.close()
                return
            conn = Connection(self, sock, next(self._ids))
            thread = threading.Thread(target=conn.run, name=f"nst-conn-{conn.number}", daemon=True)
            self._connections[conn] = thread
        try:
            thread.start()
        except BaseException:
            self.forget(conn)
            raise

    def forget(self, conn: Connection) -> None:
        with self._lock:
            self._connections.pop(conn, None)

    def _teardown(self) -> None:
        self._stop.set()
        log.info("shutting down")
        assert self._listener is not None
        self._listener.close()
        ep = self.config.endpoint
        if ep.kind == "unix":
            with contextlib.suppress(OSError):
                os.unlink(ep.path)
        self.jobs.close()
        with self._lock:
            items = list(self._connections.items())
        for conn, _ in items:
            conn.close()
        for _, thread in items:
            thread.join(5.0)
        log.info("stopped")

    # --- Requests --------------------------------------------------------------------------------

    def hello_reply(self) -> dict[str, Any]:
        try:
            caps = self._capabilities()
        except Exception as exc:
            log.exception("capabilities() failed")
            caps = {"error": f"{type(exc).__name__}: {exc}"}
        limits = self.config.limits
        return {
            "type": "hello",
            "protocol": PROTOCOL_VERSION,
            "engine": __version__,
            "pid": os.getpid(),
            "capabilities": caps,
            "requests": list(REQUESTS),
            "limits": {
                "max_header": limits.max_header,
                "max_payload": limits.max_payload,
                "max_message": limits.max_message,
                "max_side": limits.max_side,
                "max_pull_weights": MAX_PULL_WEIGHTS,
            },
        }

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()


class _Stop(Exception):
    """The server is stopping; the connection's reader leaves quietly."""


class Connection:
    """One client: its reader thread handles requests; job workers write events through `send`."""

    def __init__(self, server: Server, sock: socket.socket, number: int) -> None:
        self.server = server
        self.sock = sock
        self.number = number
        self.send_lock = threading.Lock()
        self.closed = False
        self.authenticated = False
        self.opened = time.monotonic()
        sock.settimeout(server.config.poll)

    # --- Writing ---------------------------------------------------------------------------------

    def send(self, header: dict[str, Any], blobs: list[Any] | None = None) -> bool:
        with self.send_lock:
            return self._send_locked(header, blobs)

    def _send_locked(self, header: dict[str, Any], blobs: list[Any] | None = None) -> bool:
        if self.closed:
            return False
        try:
            config = self.server.config
            send_message(self.sock, header, blobs or [], config.stall_timeout, config.limits.chunk_size)
            return True
        except (ConnectionClosed, TimeoutError, OSError) as exc:
            log.info("connection %d: cannot write (%s); dropping it", self.number, exc)
            self.close()
            return False

    def close(self) -> None:
        """Mark closed and wake the reader; the reader thread releases the socket."""
        self.closed = True
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)

    # JobListener

    def on_progress(self, job: Job, progress: Progress, with_preview: bool) -> None:
        header: dict[str, Any] = {
            "type": "progress",
            "job": job.id,
            "fraction": min(1.0, max(0.0, float(progress.fraction))),
            "stage": str(progress.stage),
            "message": str(progress.message),
        }
        if progress.eta_s is not None and math.isfinite(progress.eta_s):
            header["eta_s"] = round(max(0.0, float(progress.eta_s)), 1)
        blobs: list[Any] = []
        if with_preview and progress.preview is not None:
            header["preview"] = image_header(preview_image(progress.preview), blobs)
        self.send(header, blobs)

    def on_result(self, job: Job, image: RawImage) -> None:
        if job.kind == "pull":  # the task's result: what is installed now
            self.send({"type": "pulled", "job": job.id, "weights": image})
            return
        blobs: list[Any] = []
        self.send({"type": "result", "job": job.id, "image": image_header(image, blobs)}, blobs)

    def on_error(self, job: Job, code: str, message: str) -> None:
        self.send({"type": "error", "job": job.id, "code": code, "message": message})

    # --- Reading ---------------------------------------------------------------------------------

    def run(self) -> None:
        try:
            self._serve()
        except (ConnectionClosed, _Stop):
            pass
        except ProtocolError as exc:
            log.info("connection %d: %s: %s", self.number, exc.code, exc.message)
            self.send({"type": "error", "code": exc.code, "message": exc.message})
        except Exception as exc:
            log.exception("connection %d: internal error", self.number)
            message = f"Internal error ({type(exc).__name__}); the engine log has the details."
            self.send({"type": "error", "code": "internal", "message": message})
        finally:
            self.server.jobs.cancel_owner(self, "Cancelled: the client disconnected.")
            self.close()
            with self.send_lock:  # no worker may be writing to the fd when it is released
                self.sock.close()
            self.server.forget(self)

    def _on_idle(self) -> None:
        if self.server.stopping or self.closed:
            raise _Stop()
        if not self.authenticated and time.monotonic() - self.opened > self.server.config.hello_timeout:
            raise ProtocolError("timeout", "No hello within the time allowed.")

    def _serve(self) -> None:
        cfg = self.server.config
        while True:
            limits = cfg.limits if self.authenticated else HELLO_LIMITS
            try:
                message = read_message(self.sock, limits, cfg.stall_timeout, self._on_idle, self._check)
            except Rejected as exc:  # refused before its images were allocated; the stream is intact
                self.server.touch()
                error = {"type": "error", "code": exc.code, "message": exc.message}
                self.send(_with_ref(error, _ref(exc.header)))
                exc.skip()
                continue
            self.server.touch()
            if not self.authenticated:
                self._handshake(message.header)
                continue
            ref = _ref(message.header)
            try:
                if not isinstance(message.header.get("type"), str):
                    raise ProtocolError("bad-request", "The header has no `type`.")
                self._dispatch(message, ref)
            except (ProtocolError, UserError) as exc:
                self.send(_with_ref({"type": "error", "code": exc.code, "message": exc.message}, ref))
            del message  # a job holds its own images; waiting for the next message must not hold them too

    def _check(self, header: dict[str, Any], sizes: list[int]) -> None:
        """Runs before a message's images are allocated: only a valid `stylize` gets memory."""
        if not self.authenticated:
            return  # HELLO_LIMITS allow no payload at all
        if header.get("type") == "stylize":
            check_job(header, sizes, self.server.config.limits)
        elif any(sizes):
            raise ProtocolError("bad-request", "Only `stylize` requests carry images.")

    def _handshake(self, header: dict[str, Any]) -> None:
        if header.get("type") != "hello":
            raise ProtocolError("hello-required", "The first message must be `hello`.")
        version = header.get("protocol")
        if version != PROTOCOL_VERSION:
            self.send(
                {
                    "type": "error",
                    "code": "protocol-mismatch",
                    "protocol": PROTOCOL_VERSION,
                    "message": f"The engine speaks protocol {PROTOCOL_VERSION}, the client {version!r}.",
                }
            )
            raise ConnectionClosed("protocol mismatch")
        if self.server.config.endpoint.kind == "tcp":
            token = header.get("token")
            expected = self.server.config.token or ""
            if not isinstance(token, str) or not hmac.compare_digest(token.encode(), expected.encode()):
                log.warning("connection %d: wrong or missing token", self.number)
                raise ProtocolError("unauthorized", "The engine refused the token.")
        self.authenticated = True
        self.send(_with_ref(self.server.hello_reply(), _ref(header)))

    def _dispatch(self, message: Message, ref: Any) -> None:
        h = message.header
        kind = h["type"]
        if kind == "stylize":
            spec = parse_job(message, self.server.config.limits)
            # Hold the write lock so `accepted` goes out before the worker's first progress event.
            with self.send_lock:
                job, position = self.server.jobs.submit(spec, self, self)
                self._send_locked(_with_ref({"type": "accepted", "job": job.id, "position": position}, ref))
        elif kind == "pull":
            ids = pull_ids(h)
            if self.server.jobs.count(self, "pull"):
                raise UserError("busy", "This connection already has a download queued or running.")
            with self.send_lock:
                job, position = self.server.jobs.submit_task("pull", PULL_QUEUE, pull_task(ids), self, self)
                self._send_locked(_with_ref({"type": "accepted", "job": job.id, "position": position}, ref))
        elif kind == "cancel":
            job_id = h.get("job")
            if not isinstance(job_id, str) or not self.server.jobs.cancel(job_id):
                raise ProtocolError("unknown-job", f"No queued or running job {job_id!r}.")
            self.send(_with_ref({"type": "ok"}, ref))
        elif kind == "jobs":
            self.send(_with_ref({"type": "jobs", "jobs": self.server.jobs.snapshot()}, ref))
        elif kind == "hello":
            self.send(_with_ref(self.server.hello_reply(), ref))
        elif kind == "shutdown":
            log.info("connection %d asked the engine to shut down", self.number)
            self.send(_with_ref({"type": "ok"}, ref))
            self.server.shutdown(wait=False)
        else:
            raise ProtocolError("unknown-type", f"Unknown message type {kind[:64]!r}.")


def _ref(header: dict[str, Any]) -> Any:
    """The client's request reference, echoed in the reply when it is a small int or string."""
    ref = header.get("ref")
    if (isinstance(ref, int) and not isinstance(ref, bool) and abs(ref) < 2**53) or (
        isinstance(ref, str) and len(ref) <= 64
    ):
        return ref
    return None


def _with_ref(header: dict[str, Any], ref: Any) -> dict[str, Any]:
    if ref is not None:
        header["ref"] = ref
    return header


def pull_ids(header: dict[str, Any]) -> list[str]:
    """The weight ids a `pull` names: 1 to MAX_PULL_WEIGHTS ids of the manifest's downloadable
    entries, on every transport. Only ids: where a file goes and where it comes from are the
    manifest's, never the client's."""
    ids = header.get("weights")
    if (
        not isinstance(ids, list)
        or not 1 <= len(ids) <= MAX_PULL_WEIGHTS
        or not all(isinstance(i, str) and 0 < len(i) <= MAX_WEIGHT_ID for i in ids)
    ):
        raise ProtocolError(
            "bad-request",
            f"`weights` must be a list of 1 to {MAX_PULL_WEIGHTS} weight ids (`nst models list`).",
        )
    manifest = weights.load_manifest()
    for weight_id in ids:
        manifest.downloadable(weight_id)
    return list(dict.fromkeys(ids))


_PULL_LOCK = threading.Lock()  # one download at a time in this process: two would share a .part file


def pull_task(ids: list[str]) -> Task:
    """Download and verify `ids` as `nst models pull` does (engine.weights.pull), reporting the
    bytes as progress; the result lists them, installed."""

    def run(progress: ProgressFn, cancel: CancelToken) -> list[dict[str, Any]]:
        with _PULL_LOCK:
            manifest = weights.load_manifest()
            for index, weight_id in enumerate(ids):

                def on_bytes(label: str, done: int, total: int | None, index: int = index) -> None:
                    share = min(1.0, done / total) if total else 0.0
                    shown = f"{100 * done // total}% of {_mib(total)}" if total else _mib(done)
                    progress(
                        Progress((index + share) / len(ids), "download", f"Downloading {label}: {shown}")
                    )

                progress(Progress(index / len(ids), "download", f"Downloading {weight_id}"))
                weights.pull([weight_id], progress=on_bytes, manifest=manifest)
                progress(Progress((index + 1) / len(ids), "verify", f"{weight_id}: verified and installed"))
        return [{"id": weight_id, "installed": True} for weight_id in ids]

    return run


def _mib(size: int) -> str:
    return f"{size / (1 << 20):.1f} MiB"


def preview_image(preview: Any) -> RawImage:
    """A small u8 RGB RawImage from a method's preview (HxWx3 float 0..1 array, or a RawImage)."""
    if isinstance(preview, RawImage):
        return preview
    arr = np.asarray(preview, dtype=np.float32)
    if arr.ndim == 2:
        arr = arr[:, :, None]
    step = max(1, -(-max(arr.shape[:2]) // PREVIEW_SIDE))
    arr = np.nan_to_num(arr[::step, ::step], nan=0.0)
    u8 = np.ascontiguousarray((np.clip(arr, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8))
    return RawImage(u8.shape[1], u8.shape[0], u8.shape[2], "u8", u8.tobytes())


def prepare_private_dir(path: Path) -> None:
    """Create the socket's directory 0700 and refuse one that another user owns or can enter."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    if sys.platform == "win32":
        return
    st = path.stat()
    if st.st_uid != os.geteuid():
        raise UserError("unsafe-runtime-dir", f"{path} belongs to another user; set NST_RUNTIME_DIR.")
    if stat.S_IMODE(st.st_mode) != 0o700:
        os.chmod(path, 0o700)


def device_of(spec: StylizeJob) -> str:
    """The queue a job waits in: its resolved device. Unknown names are refused here, so a client
    cannot make the engine start a worker thread per made-up device name."""
    from engine.devices import resolve_device

    name = spec.params.get("device", "auto")
    if not isinstance(name, str):
        raise UserError("bad-option", "setting 'device' must be a string such as auto, cpu or cuda")
    return str(resolve_device(name))


class EngineLock:
    """One engine per user: an exclusive lock on a file in the runtime dir, released when the process
    dies. The file also records the pid and endpoint, so `nst ping` finds a non-default endpoint."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None

    def acquire(self, endpoint: Endpoint) -> bool:
        prepare_private_dir(self.path.parent)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            if sys.platform == "win32":
                import msvcrt

                msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
            else:
                import fcntl

                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            return False
        self._fd = fd
        self.record(endpoint)
        return True

    def record(self, endpoint: Endpoint) -> None:
        """Write who holds the lock: `nst ping` and friends find a non-default endpoint there."""
        assert self._fd is not None
        os.ftruncate(self._fd, 0)
        os.lseek(self._fd, 0, os.SEEK_SET)
        os.write(self._fd, json.dumps({"pid": os.getpid(), "endpoint": str(endpoint)}).encode())

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def _answers(ep: Endpoint) -> bool:
    try:
        ep.connect(timeout=1.0).close()
        return True
    except OSError:
        return False
