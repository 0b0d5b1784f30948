"""The engine's socket server: a reader and a writer thread per connection, jobs on the queue's workers.

Every request is validated by `nst_common.framing` and `nst_common.messages` before anything else sees
it; every handler is wrapped so that no request can stop the server. Internal errors reach the client as
an `error` event with code "internal"; the traceback goes only to the log.

Against hostile or broken clients: a connection has `hello_timeout` seconds from accept for its whole
handshake, and handshakes have a pool of their own (`max_handshakes`, the oldest dropped when it is
full), so clients without the token cannot take the places of those with it (`max_connections`), and
a connection left idle gives its place up to a new client when all are taken. The
images of jobs count against one budget across connections from the moment their header is read until
the job ends (`max_images`: being received, queued or running); they arrive into memory the OS backs as
they come, and an upload slower than `min_rate` gives its share up to a client that waits for it. A
connection may have `max_jobs_per_connection` jobs at once. Workers never write to a socket: each
connection's writer thread does, from a queue in which progress is coalesced, so a client that stops
reading holds up no one else. Over TCP no path a client names reaches the file system outside the styles
folder (engine/service/files.py). Client text goes to the log through %r, never raw.
"""

from __future__ import annotations

import contextlib
import hmac
import itertools
import logging
import math
import os
import socket
import stat
import sys
import tempfile
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from engine import __version__, weights
from engine.compute.cache import ModelCache
from engine.errors import CancelToken, UserError
from engine.methods.base import Progress, ProgressFn
from engine.service import training
from engine.service.files import LOCAL, FileAccess, confined
from engine.service.jobs import Job, JobQueue, Runner, Task
from engine.service.training import Trainings
from nst_common.endpoints import Endpoint
from nst_common.engine_lock import EngineLock
from nst_common.framing import (
    ConnectionClosed,
    Limits,
    Message,
    ProtocolError,
    Rejected,
    read_message,
    send_message,
)
from nst_common.messages import (
    PROTOCOL_VERSION,
    RawImage,
    StylizeJob,
    check_job,
    image_header,
    parse_job,
    pending,
)

log = logging.getLogger(__name__)

PREVIEW_SIDE = 256
PULL_QUEUE = "download"  # pulls wait in their own queue: never behind a device's jobs, nor before them
MAX_PULL_WEIGHTS = 8  # weight ids one `pull` may name
MAX_WEIGHT_ID = 128  # characters of one id; the manifest's are far shorter
# Optional requests beyond stylize, cancel, jobs, hello and shutdown, listed in `hello`.
REQUESTS = ("pull", "train")
# Nobody gets memory before the token check.
HELLO_LIMITS = Limits(max_header=64 << 10, max_payload=0, max_message=0)
MAX_QUEUED_REPLIES = 32  # replies waiting for a client that does not read before its reader waits too


@dataclass
class ServerConfig:
    endpoint: Endpoint
    limits: Limits = field(default_factory=Limits)
    token: str | None = None  # required for TCP
    idle_timeout: float = 1800.0  # seconds without jobs or requests before the engine exits; 0: never
    stall_timeout: float = 30.0  # a peer silent this long inside a frame is dropped
    hello_timeout: float = 10.0  # a connection must have finished its handshake this long after accept
    poll: float = 0.1  # how often blocked threads look up to check for shutdown
    slots_per_device: int = 1
    max_connections: int = 64  # connections past the handshake
    max_handshakes: int = 16  # connections still in their handshake; when full, the oldest is dropped
    max_images: int | None = None  # bytes of jobs' images held, all connections together; None: max_message
    min_rate: int = 1 << 20  # bytes/s an upload must average after stall_timeout to keep its share when
    # another client waits for room: 4 GiB (max_message) in about an hour
    max_jobs_per_connection: int = 8  # stylize jobs one connection may have queued or running
    styles_dir: Path | None = None  # the one folder TCP clients may name style (and init) files in

    @property
    def images_limit(self) -> int:
        return self.limits.max_message if self.max_images is None else self.max_images


class Server:
    """Listens on one endpoint and serves until `shutdown`, a `shutdown` request, or idleness."""

    def __init__(
        self,
        config: ServerConfig,
        runner: Runner,
        capabilities: Callable[[], dict[str, Any]],
        queue_of: Callable[[StylizeJob], str],
        cache: ModelCache | None = None,
    ) -> None:
        self.config = config
        self._capabilities = capabilities
        self.cache = cache or ModelCache()
        self.jobs = JobQueue(runner, self.cache, queue_of, config.slots_per_device)
        self.training = Trainings(self.jobs)
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._connections: dict[Connection, threading.Thread] = {}
        self._ids = itertools.count(1)
        self._listener: socket.socket | None = None
        self._socket_id: tuple[int, int] | None = None  # (st_dev, st_ino) of the Unix socket bound
        self._thread: threading.Thread | None = None
        self.last_activity = time.monotonic()
        self.address = config.endpoint
        self.images = Budget(config.images_limit, config.min_rate, config.stall_timeout)
        self.files = LOCAL if config.endpoint.kind == "unix" else confined(config.styles_dir)

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
            self._listener = self._bind_unix(Path(ep.path))
        self._listener.settimeout(self.config.poll)
        log.info("engine %s (protocol %d) listening on %s", __version__, PROTOCOL_VERSION, self.address)

    def _bind_unix(self, path: Path) -> socket.socket:
        """Listen at `path`, a socket only this user can connect to. What is already there is
        removed only when it is a socket (not followed, if a link) of this user that no engine
        answers on; the folder is created 0700 when missing and otherwise left as it is."""
        private = prepare_private_dir(path.parent)
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            st = None
        if st is not None:
            if not stat.S_ISSOCK(st.st_mode):
                raise UserError(
                    "path-in-use",
                    f"{path} exists and is not a socket; the engine leaves it alone: listen elsewhere.",
                )
            if _answers(self.config.endpoint):
                raise UserError(
                    "already-running", f"An engine is already listening on {self.config.endpoint}."
                )
            if sys.platform != "win32" and st.st_uid != os.geteuid():
                raise UserError("path-in-use", f"{path} is another user's socket: listen elsewhere.")
            log.info("removing stale socket %r", str(path))
            path.unlink()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            if private:
                sock.bind(str(path))
                os.chmod(path, 0o600)
            else:  # others may look into the folder: the socket is 0600 before it appears there
                scratch = Path(tempfile.mkdtemp(prefix=".n", dir=path.parent))
                try:
                    sock.bind(str(scratch / "s"))
                    os.chmod(scratch / "s", 0o600)
                    try:
                        os.link(scratch / "s", path)  # never replaces what appeared meanwhile
                    except FileExistsError:
                        raise
                    except OSError:  # no hard links to sockets here: the folder is the engine's own or sticky
                        os.rename(scratch / "s", path)
                finally:
                    with contextlib.suppress(OSError):
                        os.unlink(scratch / "s")
                    with contextlib.suppress(OSError):
                        os.rmdir(scratch)
            st = os.lstat(path)
            self._socket_id = (st.st_dev, st.st_ino)
            sock.listen(64)
        except FileExistsError:
            sock.close()
            raise UserError(
                "path-in-use", f"{path} appeared while the engine was starting: listen elsewhere."
            ) from None
        except OSError as exc:
            sock.close()
            raise UserError("cannot-listen", f"Cannot listen on {path}: {exc.strerror or exc}.") from None
        except BaseException:
            sock.close()
            raise
        return sock

    def serve_forever(self) -> None:
        if self._listener is None:
            self.bind()
        assert self._listener is not None
        try:
            self.training.resume_pending()  # the runs an engine stopped, or died, in the middle of
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
        cfg = self.config
        with self._lock:
            waiting = [c for c in self._connections if not c.authenticated and not c.closed]
            if len(waiting) >= cfg.max_handshakes:  # a new client beats one that has been slow so far
                oldest = min(waiting, key=lambda c: c.opened)
                log.info("connection %d: dropped unauthenticated, to make room for a new one", oldest.number)
                oldest.close()
            # Dropped ones leave within a poll; past this many threads a new connection waits its turn.
            if len(self._connections) >= cfg.max_connections + 2 * cfg.max_handshakes:
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

    def admit(self, conn: Connection) -> bool:
        """Count `conn` as authenticated. Where `max_connections` already are, the connection idle
        longest gives up its place, if one has been idle for `stall_timeout` s (Connection.yield_place):
        a client that leaks connections cannot lock the others out."""
        while not conn.closed:
            with self._lock:
                served = [c for c in self._connections if c.served()]
                if len(served) < self.config.max_connections:
                    conn.authenticated = True
                    return True
            if not any(c.yield_place() for c in sorted(served, key=lambda c: c.active_at)):
                return False
        return False

    def _teardown(self) -> None:
        self._stop.set()
        log.info("shutting down")
        assert self._listener is not None
        self._listener.close()
        ep = self.config.endpoint
        if ep.kind == "unix":  # only the socket this engine bound, not what may have replaced it
            with contextlib.suppress(OSError):
                st = os.lstat(ep.path)
                if (st.st_dev, st.st_ino) == self._socket_id:
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
            "paths": self.files.paths,
            "limits": {
                "max_header": limits.max_header,
                "max_payload": limits.max_payload,
                "max_message": limits.max_message,
                "max_side": limits.max_side,
                "max_pull_weights": MAX_PULL_WEIGHTS,
                "max_jobs": self.config.max_jobs_per_connection,
            },
        }

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()


class _Stop(Exception):
    """The server is stopping; the connection's reader leaves quietly."""


class Budget:
    """Bytes of jobs' images the engine holds, across all connections: taken when a request's header
    is read, given back when its job ends (or the request fails). A request that would go over the
    limit is refused with `busy`, unless uploads holding part of it are too slow to keep it: those
    are dropped, so a client that trickles its bytes cannot lock the others out."""

    def __init__(self, limit: int, min_rate: float, grace: float) -> None:
        self.limit = limit
        self.min_rate = min_rate  # bytes/s
        self.grace = grace  # seconds an upload may take before its rate counts
        self.used = 0
        self._uploads: set[Connection] = set()  # connections whose reservation is still arriving
        self._cond = threading.Condition()

    def take(self, n: int, conn: Connection, wait: float = 2.0) -> bool:
        """Reserve `n` bytes for `conn`'s upload; False when they do not fit, even after slow uploads
        have been dropped and `wait` seconds given for their bytes to come back."""
        with self._cond:
            if self.used + n > self.limit:
                now = time.monotonic()
                slow = [c for c in self._uploads if c is not conn and c.upload_too_slow(now, self)]
                for c in slow:
                    c.drop(
                        "too-slow",
                        f"Dropped: this upload came at {_mib(c.upload_rate(now))}/s, below the "
                        f"{_mib(self.min_rate)}/s the engine needs while other clients wait for room.",
                    )
                if not slow or not self._cond.wait_for(lambda: self.used + n <= self.limit, wait):
                    return False
            self.used += n
            self._uploads.add(conn)
            return True

    def arrived(self, conn: Connection) -> None:
        """`conn`'s upload is complete (or gone): its rate no longer matters."""
        with self._cond:
            self._uploads.discard(conn)

    def give(self, n: int) -> None:
        with self._cond:
            self.used -= n
            self._cond.notify_all()


@dataclass(eq=False)
class _Outgoing:
    header: dict[str, Any]
    blobs: list[Any]
    job: str | None = None  # a progress event's job: a newer one for the job replaces it while queued
    reply: bool = False  # from the connection's own reader: counts against MAX_QUEUED_REPLIES


class Outbox:
    """What goes out on one connection, written by its own thread. Job workers and the heartbeat
    only queue events here and never wait for the client: a job's progress is coalesced (a client
    that reads slowly gets the latest, with the latest preview still queued), its result or error is kept.
    Replies to requests wait while MAX_QUEUED_REPLIES are queued, which holds up only this
    connection's own reader."""

    def __init__(self, conn: Connection) -> None:
        self._conn = conn
        self._cond = threading.Condition()  # reentrant: `hold` then `put`
        self._items: deque[_Outgoing] = deque()
        self._progress: dict[str, _Outgoing] = {}
        self._replies = 0
        self._writing = False  # a message taken from the queue is being written
        self._finishing = False  # the reader is done: write what is queued, then leave
        self._thread = threading.Thread(target=self._run, name=f"nst-write-{conn.number}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    @contextlib.contextmanager
    def hold(self) -> Iterator[None]:
        """Nothing else is queued meanwhile (so `accepted` goes before the job's first progress)."""
        with self._cond:
            yield

    def reply(self, header: dict[str, Any], blobs: list[Any] | None = None, wait: bool = True) -> None:
        with self._cond:
            while wait and self._replies >= MAX_QUEUED_REPLIES and self._open():
                self._cond.wait(self._conn.server.config.poll)
            self._put(_Outgoing(header, blobs or [], reply=True))

    def event(
        self, header: dict[str, Any], blobs: list[Any] | None = None, progress_of: str | None = None
    ) -> None:
        """A job's event; `progress_of` (its id) marks a progress event, which may be replaced."""
        with self._cond:
            queued = self._progress.get(progress_of) if progress_of is not None else None
            if queued is not None:
                if "preview" in queued.header and "preview" not in header:  # keep the latest picture
                    header = {**header, "preview": queued.header["preview"]}
                    blobs = queued.blobs
                queued.header, queued.blobs = header, blobs or []
                return
            item = _Outgoing(header, blobs or [], job=progress_of)
            if self._put(item) and progress_of is not None:
                self._progress[progress_of] = item

    def _open(self) -> bool:
        return not self._conn.closed and not self._finishing

    def _put(self, item: _Outgoing) -> bool:
        if not self._open():
            return False
        self._items.append(item)
        self._replies += item.reply
        self._cond.notify_all()
        return True

    def finish(self, timeout: float) -> None:
        """Take nothing more; wait up to `timeout` s for what is queued to go out."""
        with self._cond:
            self._finishing = True
            self._cond.notify_all()
        if self._thread.ident is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)

    def drain(self, timeout: float) -> None:
        """Wait up to `timeout` s until everything queued so far has been written."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while (self._items or self._writing) and not self._conn.closed and time.monotonic() < deadline:
                self._cond.wait(self._conn.server.config.poll)

    def empty(self) -> bool:
        """Nothing queued and nothing being written."""
        with self._cond:
            return not self._items and not self._writing

    def wake(self) -> None:
        with self._cond:
            self._cond.notify_all()

    def _run(self) -> None:
        conn = self._conn
        while True:
            with self._cond:
                while not self._items and not conn.closed and not self._finishing:
                    self._cond.wait()
                if conn.closed or not self._items:
                    self._items.clear()  # a result nobody will read: let its pixels go
                    self._progress.clear()
                    self._cond.notify_all()
                    return
                item = self._items.popleft()
                if item.job is not None and self._progress.get(item.job) is item:
                    del self._progress[item.job]
                self._replies -= item.reply
                self._writing = True
                self._cond.notify_all()
            ok = conn.write(item.header, item.blobs)
            del item
            with self._cond:
                self._writing = False
                self._cond.notify_all()
            if not ok:
                self.wake()


class Connection:
    """One client: its reader thread handles requests and its outbox's thread writes; job workers
    queue events in the outbox."""

    def __init__(self, server: Server, sock: socket.socket, number: int) -> None:
        self.server = server
        self.sock = sock
        self.number = number
        self.closed = False
        self.authenticated = False
        self.opened = time.monotonic()
        self.deadline = self.opened + server.config.hello_timeout  # for the whole handshake
        self.active_at = self.opened  # when the handling of its last message or its last job ended
        self._activity = threading.Lock()  # held while a message is handled; yield_place waits for none
        self.files: FileAccess = server.files
        self.outbox = Outbox(self)
        self._reserved = 0  # bytes of the message being received (or just read), from server.images
        self._upload_started = 0.0
        self._received = 0  # bytes of it received so far, counted at each chunk
        # Its jobs that have not ended (their events are still to come), with the bytes from
        # server.images each holds (0 for a task)
        self._held: dict[str, int] = {}
        self._held_lock = threading.Lock()  # a job's bytes are recorded before it can end
        self.dropped: tuple[str, str] | None = None  # (code, message) when the engine dropped this client
        sock.settimeout(server.config.poll)

    # --- Writing ---------------------------------------------------------------------------------

    def send(self, header: dict[str, Any], blobs: list[Any] | None = None) -> None:
        """Queue a reply (from the reader thread)."""
        self.outbox.reply(header, blobs)

    def write(self, header: dict[str, Any], blobs: list[Any]) -> bool:
        """Write one message now (the outbox's thread only)."""
        if self.closed:
            return False
        try:
            config = self.server.config
            send_message(self.sock, header, blobs, config.stall_timeout, config.limits.chunk_size)
            return True
        except (ConnectionClosed, TimeoutError, OSError) as exc:
            log.info("connection %d: cannot write (%s); dropping it", self.number, exc)
            self.close()
            return False

    def drop(self, code: str, message: str) -> None:
        """Stop reading this client (its reader leaves, the writer sends `message` as an error)."""
        log.warning("connection %d: %s: %r", self.number, code, message)
        self.dropped = (code, message)
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RD)

    def served(self) -> bool:
        """Past the handshake and not on its way out."""
        return self.authenticated and not self.closed and self.dropped is None

    def yield_place(self) -> bool:
        """Drop this connection if it is idle: nothing from it or for it for `stall_timeout` s (no
        message, no job ending), no message being handled, no job of its queued or running (a
        training it follows included), nothing waiting to be written to it."""
        if not self._activity.acquire(blocking=False):
            return False  # a message of its is being handled
        try:
            with self._held_lock:  # with _release's: a job that ends now counts as activity
                quiet = time.monotonic() - self.active_at
                waiting = bool(self._held)
            if not self.served() or quiet < self.server.config.stall_timeout or waiting or self._reserved:
                return False
            if not self.outbox.empty():
                return False
            self.drop(
                "idle",
                f"Closed after {quiet:.0f} s without a request, to make room for another client; "
                "connect again when needed.",
            )
            return True
        finally:
            self._activity.release()

    def upload_rate(self, now: float) -> float:
        """Bytes per second of the upload in progress."""
        return self._received / max(now - self._upload_started, 1e-6)

    def upload_too_slow(self, now: float, budget: Budget) -> bool:
        return now - self._upload_started > budget.grace and self.upload_rate(now) < budget.min_rate

    def close(self) -> None:
        """Mark closed and wake the reader and the writer; the reader thread releases the socket."""
        self.closed = True
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.outbox.wake()

    # JobListener: called from workers and the heartbeat; they only queue

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
        self.outbox.event(header, blobs, progress_of=job.id)

    def on_result(self, job: Job, image: RawImage) -> None:
        self._release(job)
        if job.kind == "pull":  # the task's result: what is installed now
            self.outbox.event({"type": "pulled", "job": job.id, "weights": image})
            return
        if job.kind == "train":  # the task's result: the model installed
            self.outbox.event({"type": "trained", "job": job.id, **image})
            return
        blobs: list[Any] = []
        self.outbox.event({"type": "result", "job": job.id, "image": image_header(image, blobs)}, blobs)

    def on_error(self, job: Job, code: str, message: str) -> None:
        self._release(job)
        self.outbox.event({"type": "error", "job": job.id, "code": code, "message": message})

    # --- Reading ---------------------------------------------------------------------------------

    def run(self) -> None:
        self.outbox.start()
        try:
            self._serve()
        except (ConnectionClosed, _Stop):
            if self.dropped is not None:
                code, message = self.dropped
                self.send({"type": "error", "code": code, "message": message})
        except ProtocolError as exc:
            log.info("connection %d: %s: %r", self.number, exc.code, exc.message)
            self.send({"type": "error", "code": exc.code, "message": exc.message})
        except Exception as exc:
            log.exception("connection %d: internal error", self.number)
            message = f"Internal error ({type(exc).__name__}); the engine log has the details."
            self.send({"type": "error", "code": "internal", "message": message})
        finally:
            self.server.jobs.cancel_owner(self, "Cancelled: the client disconnected.")
            self.outbox.finish(self.server.config.stall_timeout + 1.0)  # the last error goes out
            self.close()
            self.outbox.finish(5.0)  # no writer may be using the fd when it is released
            self.sock.close()
            self.server.forget(self)

    def _on_idle(self) -> None:
        if self.server.stopping or self.closed:
            raise _Stop()

    def _serve(self) -> None:
        while True:
            try:
                self._serve_one()
            finally:
                self._give_back()  # the bytes of a message that no queued job took over

    def _serve_one(self) -> None:
        """Read one message and answer it. Returning lets go of its images: a job holds its own."""
        cfg = self.server.config
        limits = cfg.limits if self.authenticated else HELLO_LIMITS
        deadline = None if self.authenticated else self.deadline
        try:
            try:
                message = read_message(
                    self.sock, limits, cfg.stall_timeout, self._on_idle, self._check,
                    on_chunk=self._on_chunk, deadline=deadline,
                )  # fmt: skip
            finally:
                self.server.images.arrived(self)
        except Rejected as exc:  # refused before its images were allocated; the stream is intact
            with self._handling():
                error = {"type": "error", "code": exc.code, "message": exc.message}
                self.send(_with_ref(error, _ref(exc.header)))
                exc.skip()
            return
        except ProtocolError as exc:
            if exc.code == "timeout" and not self.authenticated:
                raise ProtocolError("timeout", f"No complete hello within {cfg.hello_timeout:g} s.") from None
            raise
        with self._handling():
            if not self.authenticated:
                self._handshake(message.header)
                return
            ref = _ref(message.header)
            try:
                if not isinstance(message.header.get("type"), str):
                    raise ProtocolError("bad-request", "The header has no `type`.")
                self._dispatch(message, ref)
            except (ProtocolError, UserError) as exc:
                self.send(_with_ref({"type": "error", "code": exc.code, "message": exc.message}, ref))

    @contextlib.contextmanager
    def _handling(self) -> Iterator[None]:
        """A message has arrived: it counts as activity, and the connection keeps its place while
        the message is handled. One that arrives after the place went to another client is not."""
        with self._activity:
            if self.dropped is not None:
                raise ConnectionClosed("dropped")
            self.server.touch()
            try:
                yield
            finally:
                self.active_at = time.monotonic()  # idle from when the handling ended

    def _check(self, header: dict[str, Any], sizes: list[int]) -> None:
        """Runs before a message's images are allocated: only a valid `stylize` that this connection
        and the engine have room for gets memory."""
        if not self.authenticated:
            return  # HELLO_LIMITS allow no payload at all
        kind = header.get("type")
        if kind not in ("stylize", "train"):
            if any(sizes):
                raise ProtocolError("bad-request", "Only `stylize` and `train` requests carry images.")
            return
        try:
            if kind == "stylize":
                self.files.check_job(check_job(header, sizes, self.server.config.limits))
                self._check_room()
            else:
                training.paintings_of(header, pending(sizes), self.server.config.limits)
        except UserError as exc:
            raise ProtocolError(exc.code, exc.message) from None
        total = sum(sizes)
        budget = self.server.images
        if total > budget.limit:
            message = f"A job of {_mib(total)} of images; this engine takes at most {_mib(budget.limit)}."
            raise ProtocolError("too-large", message)
        self._upload_started, self._received = time.monotonic(), 0
        if total and not budget.take(total, self):
            raise ProtocolError(
                "busy",
                f"The engine holds {_mib(budget.used)} of images for other jobs (at most "
                f"{_mib(budget.limit)} at once); try again when one of them ends.",
            )
        self._reserved = total

    def _on_chunk(self, received: int, total: int) -> None:
        self._received = received

    def _give_back(self) -> None:
        """Return the bytes of the message just read, unless a job has taken them over."""
        if self._reserved:
            self.server.images.give(self._reserved)
            self._reserved = 0

    def _release(self, job: Job) -> None:
        """A job ended: its images' bytes go back to the budget, and its end counts as activity."""
        with self._held_lock:
            n = self._held.pop(job.id, 0)
            self.active_at = time.monotonic()
        if n:
            self.server.images.give(n)

    def _check_room(self) -> None:
        limit = self.server.config.max_jobs_per_connection
        if self.server.jobs.count(self, "stylize") >= limit:
            raise UserError(
                "busy",
                f"This connection has {limit} jobs queued or running, the most it may; wait for one to end.",
            )

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
                    "message": f"The engine speaks protocol {PROTOCOL_VERSION}, the client "
                    f"{str(version)[:32]!r}.",
                }
            )
            raise ConnectionClosed("protocol mismatch")
        if self.server.config.endpoint.kind == "tcp" and not _token_matches(
            header.get("token"), self.server.config.token
        ):
            log.warning("connection %d: wrong or missing token", self.number)
            raise ProtocolError("unauthorized", "The engine refused the token.")
        if not self.server.admit(self):
            limit = self.server.config.max_connections
            log.warning("connection %d: %d clients connected already; refusing another", self.number, limit)
            raise ProtocolError("busy", f"The engine serves {limit} clients already; try again later.")
        self.send(_with_ref(self.server.hello_reply(), _ref(header)))

    def _dispatch(self, message: Message, ref: Any) -> None:
        h = message.header
        kind = h["type"]
        if kind == "stylize":
            spec = self.files.check_job(parse_job(message, self.server.config.limits))
            self._check_room()
            # Hold the outbox so `accepted` goes out before the worker's first progress event.
            with self.outbox.hold():
                with self._held_lock:  # the job's end, in a worker, waits until its bytes are recorded
                    job, position = self.server.jobs.submit(spec, self, self)
                    self._held[job.id], self._reserved = self._reserved, 0
                self.outbox.reply(
                    _with_ref({"type": "accepted", "job": job.id, "position": position}, ref), wait=False
                )
        elif kind == "pull":
            ids = pull_ids(h)
            if self.server.jobs.count(self, "pull"):
                raise UserError("busy", "This connection already has a download queued or running.")
            with self.outbox.hold(), self._held_lock:
                job, position = self.server.jobs.submit_task("pull", PULL_QUEUE, pull_task(ids), self, self)
                self._held[job.id] = 0
                self.outbox.reply(
                    _with_ref({"type": "accepted", "job": job.id, "position": position}, ref), wait=False
                )
        elif kind == "train":
            if self.files.paths != "any":
                raise UserError(
                    "path-refused",
                    "Training reads folders on the engine's machine: start it there (nst train), or "
                    "through the engine's Unix socket.",
                )
            paintings = training.paintings_of(h, message.blobs, self.server.config.limits)
            with self.outbox.hold(), self._held_lock:
                job, position = self.server.training.submit(training.job_of(h), self, paintings)
                self._held[job.id] = 0
                self.outbox.reply(
                    _with_ref({"type": "accepted", "job": job.id, "position": position}, ref), wait=False
                )
        elif kind == "cancel":
            job_id = h.get("job")
            if isinstance(job_id, str):
                self.server.training.forget(job_id)
            if not isinstance(job_id, str) or not self.server.jobs.cancel(job_id):
                raise ProtocolError("unknown-job", f"No queued or running job {str(job_id)[:64]!r}.")
            self.send(_with_ref({"type": "ok"}, ref))
        elif kind == "jobs":
            self.send(_with_ref({"type": "jobs", "jobs": self.server.jobs.snapshot()}, ref))
        elif kind == "hello":
            self.send(_with_ref(self.server.hello_reply(), ref))
        elif kind == "shutdown":
            log.info("connection %d asked the engine to shut down", self.number)
            self.send(_with_ref({"type": "ok"}, ref))
            self.outbox.drain(self.server.config.stall_timeout)  # the `ok` goes out before the teardown
            self.server.shutdown(wait=False)
        else:
            raise ProtocolError("unknown-type", f"Unknown message type {kind[:64]!r}.")


def _token_matches(given: Any, expected: str | None) -> bool:
    """Constant-time comparison; a token that is no string, or no valid UTF-8 (a lone surrogate
    from a JSON escape), is simply wrong."""
    if not isinstance(given, str) or not expected:
        return False
    try:
        return hmac.compare_digest(given.encode("utf-8"), expected.encode("utf-8"))
    except UnicodeEncodeError:
        return False


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
                checked = weights.checked_by(manifest.entry(weight_id))
                progress(Progress((index + 1) / len(ids), "verify", f"{weight_id}: {checked} and installed"))
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


def prepare_private_dir(path: Path) -> bool:
    """Make `path` ready to hold the engine's socket or lock; True when only this user can enter it.

    A missing folder is created 0700. An existing one is never changed (it may be the user's own
    folder): it is refused when another user owns it, or when others may write to it without the
    sticky bit (they could replace the socket); otherwise it is used as it is.
    """
    try:
        path.mkdir(mode=0o700, parents=True)
    except FileExistsError:
        pass
    except OSError as exc:
        raise UserError("unsafe-runtime-dir", f"Cannot create {path}: {exc.strerror or exc}.") from None
    if sys.platform == "win32":
        return True
    st = path.stat()
    mode = stat.S_IMODE(st.st_mode)
    if not stat.S_ISDIR(st.st_mode):
        raise UserError("unsafe-runtime-dir", f"{path} is not a folder.")
    if st.st_uid not in (os.geteuid(), 0):
        raise UserError("unsafe-runtime-dir", f"{path} belongs to another user; set NST_RUNTIME_DIR.")
    if mode & 0o022 and not mode & stat.S_ISVTX:
        raise UserError(
            "unsafe-runtime-dir",
            f"Other users may write to {path} (mode {mode:o}) and so replace the engine's socket; choose "
            "a folder only you can write to.",
        )
    return st.st_uid == os.geteuid() and not mode & 0o077


def acquire_lock(lock: EngineLock, endpoint: Endpoint) -> bool:
    """Take the one-engine-per-user lock (nst_common/engine_lock.py) in a folder fit to hold it;
    False when another engine holds it. A lock file that cannot be opened (a link in its place,
    say) is the user's to fix, so it is a UserError."""
    prepare_private_dir(lock.path.parent)
    try:
        return lock.acquire(endpoint)
    except OSError as exc:
        raise UserError(
            "unsafe-runtime-dir", f"Cannot open the lock {lock.path}: {exc.strerror or exc}."
        ) from None


def _answers(ep: Endpoint) -> bool:
    try:
        ep.connect(timeout=1.0).close()
        return True
    except OSError:
        return False
