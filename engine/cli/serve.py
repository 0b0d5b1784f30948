"""`nst serve`, `nst ping`, `nst stop`, `nst jobs` and `nst token`: the engine server's commands."""

from __future__ import annotations

import argparse
import contextlib
import logging
import logging.handlers
import os
import secrets
import signal
import stat
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from engine.errors import UserError
from nst_common import endpoints, engine_lock, framing, session
from nst_common.endpoints import Endpoint
from nst_common.engine_lock import EngineLock
from nst_common.framing import Limits, ProtocolError

_DEFAULTS = Limits()


def register(subparsers: Any) -> None:
    serve = subparsers.add_parser("serve", help="run the engine server (the plug-in starts one itself)")
    serve.add_argument(
        "--listen",
        metavar="HOST:PORT|unix:PATH",
        help="serve TCP on HOST:PORT (needs a token; the default on Windows) or a Unix socket at PATH "
        "(default: engine.sock in the user runtime directory)",
    )
    # The limits and timeouts: (flag, type, default, metavar, help).
    options: tuple[tuple[str, Callable[[str], Any], float, str, str], ...] = (
        ("--idle-timeout", float, 1800.0, "SECONDS",
         "exit after this long without jobs or requests; 0 never (default 1800)"),
        ("--max-message", _size, _DEFAULTS.max_message, "BYTES",
         "largest total of image data one request may carry (all its images), e.g. 8G (default 4G)"),
        ("--max-payload", _size, _DEFAULTS.max_payload, "BYTES",
         "largest payload of one frame: a small message, or one chunk of a large one (default 64M)"),
        ("--chunk-size", _size, _DEFAULTS.chunk_size, "BYTES",
         "bytes per chunk when the engine sends a large result (default 16M)"),
        ("--max-header", _size, _DEFAULTS.max_header, "BYTES",
         "largest JSON header (default 1M)"),
        ("--max-side", int, _DEFAULTS.max_side, "PX",
         "largest image width or height (default 32768)"),
        ("--stall-timeout", float, 30.0, "SECONDS",
         "drop a client that stops sending or reading mid-message (default 30)"),
        ("--jobs-per-device", int, 1, "N",
         "jobs run at once on each device (default 1)"),
        ("--jobs-per-connection", int, 8, "N",
         "jobs one client connection may have queued or running; more are refused as busy (default 8)"),
        ("--cache-size", _size, 4 << 30, "BYTES",
         "memory for cached models before the least recently used go (default 4G)"),
    )  # fmt: skip
    for flag, kind, default, metavar, text in options:
        serve.add_argument(flag, type=kind, default=default, metavar=metavar, help=text)
    serve.add_argument(
        "--max-images",
        type=_size,
        metavar="BYTES",
        help="images the engine holds for jobs of all clients together, being received, queued or "
        "running; a job that does not fit is refused as busy (default: --max-message)",
    )
    serve.add_argument(
        "--styles-dir",
        type=Path,
        metavar="DIR",
        help="the one folder whose images TCP clients may name as styles by path (default: none; they "
        "send pixels). Unix-socket clients, being this user, may name any file",
    )
    serve.add_argument("--log-file", type=Path, help=f"default: {endpoints.LOG_NAME} in the data directory")
    serve.set_defaults(handler=_serve)

    for name, handler, text in (
        ("ping", _ping, "check that an engine answers, and show its versions"),
        ("stop", _stop, "ask the running engine to shut down"),
        ("jobs", _jobs, "list the engine's queued and running jobs"),
    ):
        sub = subparsers.add_parser(name, help=text)
        sub.add_argument(
            "--connect",
            metavar="HOST:PORT|unix:PATH",
            help="the engine to talk to (default: the running engine, else the default endpoint)",
        )
        sub.add_argument("--timeout", type=float, default=5.0, metavar="SECONDS")
        sub.set_defaults(handler=handler)
        if name == "jobs":
            sub.add_argument(
                "--cancel", metavar="ID", help="cancel the job ID (a training keeps its checkpoint)"
            )

    token = subparsers.add_parser("token", help="show the token TCP clients present (creates it if missing)")
    token.add_argument("--new", action="store_true", help="replace the token with a fresh one")
    token.set_defaults(handler=_token)


def _size(text: str) -> int:
    """Bytes, with an optional K, M or G suffix (powers of 1024)."""
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    scale = units.get(text[-1:].upper(), 1)
    digits = text[:-1] if scale > 1 else text
    if not digits.isdigit() or int(digits) == 0:
        raise argparse.ArgumentTypeError(f"expected a size like 512M, not {text!r}")
    return int(digits) * scale


# --- serve ---------------------------------------------------------------------------------------


def _serve(args: argparse.Namespace) -> int:
    endpoint = _parse(args.listen) if args.listen else endpoints.default_endpoint()
    token = None
    if endpoint.kind == "tcp":
        token = endpoints.read_token()
        if token is None and not endpoint.is_loopback:
            raise UserError(
                "no-token",
                f"Refusing to listen on {endpoint.host} without a token: run `nst token` first and give "
                "the token to the clients (see docs/remote.md).",
            )
        token = token or ensure_token(endpoints.token_path())
        check_private(endpoints.token_path())
    from engine.service.server import Server, ServerConfig, acquire_lock

    styles_dir = None
    if args.styles_dir is not None:
        styles_dir = args.styles_dir.expanduser().resolve()
        if not styles_dir.is_dir():
            raise UserError("bad-option", f"--styles-dir {args.styles_dir}: no such folder")
    log_file = args.log_file or endpoints.log_path()
    _setup_logging(log_file)
    lock = EngineLock(engine_lock.lock_path())
    if not acquire_lock(lock, endpoint):
        holder = engine_lock.holder()
        raise UserError(
            "already-running",
            f"An engine is already running (pid {holder.get('pid', '?')}, {holder.get('endpoint', '?')}); "
            "`nst stop` stops it.",
        )
    try:
        from engine.compute.cache import ModelCache
        from engine.pipeline import capabilities, queue_of, run_job

        limits = Limits(
            max_header=args.max_header,
            max_payload=args.max_payload,
            max_message=args.max_message,
            max_side=args.max_side,
            chunk_size=args.chunk_size,
        )
        config = ServerConfig(
            endpoint=endpoint,
            limits=limits,
            token=token,
            idle_timeout=args.idle_timeout,
            stall_timeout=args.stall_timeout,
            slots_per_device=args.jobs_per_device,
            max_images=args.max_images,
            max_jobs_per_connection=args.jobs_per_connection,
            styles_dir=styles_dir,
        )
        server = Server(config, run_job, capabilities, queue_of, ModelCache(args.cache_size))
        server.bind()
        lock.record(server.address)
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, lambda *_: server.shutdown(wait=False))
        print(f"nst: engine listening on {server.address} (log: {log_file})", file=sys.stderr, flush=True)
        server.serve_forever()
    finally:
        lock.release()
    return 0


def _setup_logging(path: Path) -> None:
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    handler = PrivateLogHandler(path, maxBytes=2 << 20, backupCount=2, encoding="utf-8")
    handler.setFormatter(OneLineFormatter("%(asctime)s %(process)d %(threadName)s %(levelname)s %(message)s"))
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(logging.INFO)


class PrivateLogHandler(logging.handlers.RotatingFileHandler):
    """The log, and each file it rotates into, readable by this user only (it names files)."""

    def _open(self) -> Any:
        fd = os.open(self.baseFilename, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        if hasattr(os, "fchmod"):  # a log an older engine created 0644
            with contextlib.suppress(OSError):
                os.fchmod(fd, 0o600)
        return open(fd, "a", encoding=self.encoding, errors=self.errors)


class OneLineFormatter(logging.Formatter):
    """One line per record: a line break inside a message is written as \\n, so no text can forge a
    line of its own (a traceback, added after the message, keeps its lines)."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        return super().formatMessage(record).replace("\r", "\\r").replace("\n", "\\n")


def ensure_token(path: Path, replace: bool = False) -> str:
    """The token in `path`, created 0600 (and never readable by others) when missing."""
    if not replace:
        try:
            existing = path.read_text(encoding="utf-8").strip()
        except FileNotFoundError:
            existing = ""
        if existing:
            return existing
    path.parent.mkdir(parents=True, exist_ok=True)
    token = secrets.token_urlsafe(32)
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(token + "\n")
    os.replace(tmp, path)
    return token


def check_private(path: Path) -> None:
    if sys.platform != "win32" and stat.S_IMODE(path.stat().st_mode) & 0o077:
        raise UserError("unsafe-token", f"{path} can be read by other users; run `chmod 600 {path}`.")


# --- ping, stop, jobs, token ---------------------------------------------------------------------


def _parse(text: str) -> Endpoint:
    try:
        return endpoints.parse_endpoint(text)
    except ValueError as exc:
        raise UserError("bad-endpoint", str(exc)) from None


def _target(args: argparse.Namespace) -> Endpoint:
    """--connect, else what the running engine wrote in its lock file, else the default."""
    if args.connect:
        return _parse(args.connect)
    recorded = engine_lock.holder().get("endpoint")
    if isinstance(recorded, str):
        try:
            return endpoints.parse_endpoint(recorded)
        except ValueError:
            pass
    return endpoints.default_endpoint()


def _session(args: argparse.Namespace) -> tuple[Any, dict[str, Any], Endpoint]:
    endpoint = _target(args)
    token = endpoints.read_token() if endpoint.kind == "tcp" else None
    try:
        sock, hello = session.open_session(endpoint, token, args.timeout)
    except (OSError, framing.ConnectionClosed) as exc:
        raise UserError("no-engine", f"No engine answers at {endpoint} ({exc}).") from None
    except ProtocolError as exc:
        raise UserError(exc.code, f"The engine at {endpoint} refused: {exc.message}") from None
    return sock, hello, endpoint


def _ping(args: argparse.Namespace) -> int:
    start = time.perf_counter()
    sock, hello, endpoint = _session(args)
    sock.close()
    ms = (time.perf_counter() - start) * 1000
    caps = hello.get("capabilities", {})
    print(
        f"engine {hello.get('engine')} (protocol {hello.get('protocol')}, pid {hello.get('pid')}) "
        f"at {endpoint}: answered in {ms:.1f} ms"
    )
    if isinstance(caps, dict):
        print(f"  methods: {', '.join(caps.get('methods') or []) or '-'}")
        print(f"  devices: {', '.join(caps.get('devices') or []) or '-'}")
    limits = hello.get("limits")
    if isinstance(limits, dict) and all(isinstance(limits.get(k), int) for k in ("max_message", "max_side")):
        print(
            f"  limits: {limits['max_message'] >> 20} MiB of images per job, {limits['max_side']} px a side"
        )
    return 0


def _stop(args: argparse.Namespace) -> int:
    sock, hello, endpoint = _session(args)
    with sock:
        framing.send_message(sock, {"type": "shutdown"})
        session.read_reply(sock, args.timeout)
    deadline = time.monotonic() + max(args.timeout, 10.0)
    while time.monotonic() < deadline:
        try:
            endpoint.connect(0.5).close()
        except OSError:
            print(f"stopped the engine (pid {hello.get('pid')}) at {endpoint}")
            return 0
        time.sleep(0.1)
    raise UserError("still-running", f"The engine at {endpoint} accepted `shutdown` but is still running.")


def _jobs(args: argparse.Namespace) -> int:
    sock, _, _ = _session(args)
    with sock:
        if args.cancel is not None:
            framing.send_message(sock, {"type": "cancel", "job": args.cancel})
            try:
                session.read_reply(sock, args.timeout)
            except ProtocolError as exc:
                raise UserError(exc.code, f"{exc.message} (`nst jobs` lists them)") from None
            print(f"cancelled job {args.cancel}")
            return 0
        framing.send_message(sock, {"type": "jobs"})
        jobs = session.read_reply(sock, args.timeout).get("jobs", [])
    if not jobs:
        print("no jobs")
    for job in jobs:
        what = job.get("method") or job.get("kind", "?")
        title = f"  {job['title']}" if job.get("title") else ""
        print(
            f"{job['job']:>5}  {job['state']:<8} {what:<10} {job['device']:<8} "
            f"{100 * job['fraction']:5.1f}%  {job['stage']}{title}"
        )
    return 0


def ask_engine(header: dict[str, Any], connect: str | None = None, timeout: float = 30.0) -> dict[str, Any]:
    """One request to the running engine and its reply (an `error` raised as a UserError)."""
    sock, _, _ = _session(argparse.Namespace(connect=connect, timeout=timeout))
    with sock:
        framing.send_message(sock, header)
        try:
            return session.read_reply(sock, timeout)
        except ProtocolError as exc:
            raise UserError(exc.code, exc.message) from None


def _token(args: argparse.Namespace) -> int:
    path = endpoints.token_path()
    token = ensure_token(path, replace=args.new)
    check_private(path)
    print(f"{token}\n(stored in {path}; TCP clients need the same file, see docs/remote.md)")
    return 0
