"""The plug-in's side of the engine: find or start it, send a job, stream progress, cancel.

Standard library only: this runs inside GIMP's Python. The wire format is the engine's own
`nst_common` package, which install.py copies beside the plug-in. Every failure reaches the caller
as an `EngineError` whose message says what to do next.
"""

from __future__ import annotations

import json
import os
import select
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from i18n import _, ngettext

from nst_common import endpoints, engine_lock, eta, framing, messages, session
from nst_common.framing import ConnectionClosed, ProtocolError
from nst_common.messages import RawImage, StylizeJob

CONFIG_NAME = "engine.json"


class EngineError(Exception):
    """An engine problem for the user: `code` is stable for programs, `message` is for people."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class EngineClient:
    def __init__(
        self,
        config_path: str | os.PathLike[str] | None = None,
        endpoint: str | None = None,
        start_timeout: float = 60.0,
        connect_timeout: float = 5.0,
        silence_timeout: float = 120.0,
    ) -> None:
        """Read the config install.py wrote (engine.json next to this file unless given).

        `endpoint` overrides where the engine listens (tests; otherwise the config's `endpoint`,
        else the default Unix socket, or loopback TCP on Windows).
        """
        self.config_path = Path(config_path) if config_path else Path(__file__).with_name(CONFIG_NAME)
        self.config = _load_config(self.config_path)
        self.env = {**os.environ, **self.config.get("env", {})}
        try:
            self.endpoint = endpoints.parse_endpoint(
                endpoint or self.config.get("endpoint") or str(endpoints.default_endpoint(self.env))
            )
        except ValueError as exc:
            raise EngineError(
                "bad-config", _("{config}: {problem}").format(config=self.config_path, problem=exc)
            ) from None
        # The plug-in starts an engine only where it is its own: a Unix socket, or the local default.
        # A TCP endpoint set in engine.json may be an SSH tunnel's end, loopback though it is: an
        # engine started there would run the jobs on this machine unasked and take the tunnel's port.
        default = endpoints.default_endpoint(self.env)
        self.starts_engine = self.endpoint.kind == "unix" or self.endpoint == default
        self.start_timeout = start_timeout
        self.connect_timeout = connect_timeout
        self.silence_timeout = silence_timeout
        self.last_hello: dict[str, Any] = {}
        self._process: subprocess.Popen[bytes] | None = None

    # --- API -------------------------------------------------------------------------------------

    def hello(self) -> dict[str, Any]:
        """The engine's capabilities (methods, backbones, devices); starts the engine if needed.

        The whole `hello` reply (versions, pid, limits) is kept in `last_hello`.
        """
        sock, _hello = self._session()
        sock.close()
        return self.last_hello.get("capabilities", {})

    def stylize(
        self,
        job: StylizeJob,
        on_progress: Callable[[float, str], None],
        is_cancelled: Callable[[], bool],
        on_preview: Callable[[RawImage], None] | None = None,
    ) -> RawImage:
        """Run one job and return the result (the content's size, channels and dtype).

        `is_cancelled` is polled at least every 100 ms; when it turns true the job is cancelled
        in the engine and EngineError("cancelled") is raised. Progress messages start with the
        engine's estimate of the time left ("about 3 min left — ...") once it has one: GIMP's
        progress bar cuts off the end of a long text. `on_preview`
        gets the engine's previews of the result as they come (small u8 RGB images, at most one
        every half second); a malformed one is skipped, never the job's failure.
        """
        header, blobs = messages.job_message(job)
        size = sum(memoryview(b).nbytes for b in blobs)
        sock, hello = self._session(is_cancelled)
        with sock:
            limits = hello.get("limits") if isinstance(hello.get("limits"), dict) else {}
            limit = limits.get("max_message")
            if isinstance(limit, int) and size > limit:
                raise EngineError(
                    "too-large",
                    _(
                        "The images add up to {size} MiB but the engine accepts {limit} MiB per job. "
                        "Scale the image down, or start the engine with a larger --max-message."
                    ).format(size=size >> 20, limit=limit >> 20),
                )
            chunk = framing.CHUNK_SIZE
            if isinstance(limits.get("max_payload"), int) and limits["max_payload"] > 0:
                chunk = min(chunk, limits["max_payload"])
            try:
                framing.send_message(
                    sock, header, blobs, self.silence_timeout, chunk, _Meter(on_progress, is_cancelled, sock)
                )
            except (ConnectionClosed, TimeoutError):
                raise _refusal(sock) or self._died() from None
            return self._wait_for_result(sock, job, on_progress, is_cancelled, on_preview)

    def pull(
        self,
        weight_ids: list[str],
        on_progress: Callable[[float, str], None],
        is_cancelled: Callable[[], bool] = lambda: False,
    ) -> list[dict[str, Any]]:
        """Have the engine download and verify weights (manifest ids, as `nst models pull` takes
        them) as a job of its own, with progress; returns what it installed, as the engine's
        `pulled` event lists it.

        An engine that predates the `pull` request (before 0.2.0) raises
        EngineError("pull-unsupported"), whose message names the command to run instead.
        """
        ids = list(weight_ids)
        sock, hello = self._session(is_cancelled)
        with sock:
            if "pull" not in (hello.get("requests") or ()):
                raise _pull_unsupported(hello, ids)
            framing.send_message(sock, {"type": "pull", "ref": "pull", "weights": ids})
            return self._wait_for_pull(sock, ids, hello, on_progress, is_cancelled)

    def train(self, request: dict[str, Any], paintings: list[tuple[str, RawImage]]) -> str:
        """Start a training in the engine (the `train` request, docs/protocol.md) on `paintings`
        (a name and the pixels each), and return its job id once the engine has accepted it: the
        training goes on in the engine, whatever GIMP does."""
        blobs: list[Any] = []
        listed = [{"name": name, "image": messages.image_header(image, blobs)} for name, image in paintings]
        sock, hello = self._session()
        with sock:
            if "train" not in (hello.get("requests") or ()):
                raise EngineError(
                    "train-unsupported",
                    _("This engine cannot train; update it, or train with `nst train johnson` instead."),
                )
            header = {**request, "type": "train", "ref": "train", "paintings": listed}
            try:
                framing.send_message(sock, header, blobs, self.silence_timeout)
                reply = session.read_reply(sock, self.silence_timeout)
            except ProtocolError as exc:
                raise EngineError(exc.code, exc.message) from None
            except (ConnectionClosed, TimeoutError):
                raise self._died() from None
        return str(reply.get("job", "?"))

    # --- Sessions --------------------------------------------------------------------------------

    def _session(self, is_cancelled: Callable[[], bool] = lambda: False) -> tuple[Any, dict[str, Any]]:
        """A connected socket that has said hello, starting the engine when none answers."""
        try:
            return self._open()
        except (OSError, ConnectionClosed):
            pass
        self._start()
        return self._wait_until_ready(is_cancelled)

    def _open(self) -> tuple[Any, dict[str, Any]]:
        token = None
        if self.endpoint.kind == "tcp":
            token = self.config.get("token") or endpoints.read_token(self.env)
        try:
            sock, hello = session.open_session(
                self.endpoint, token, self.connect_timeout, client=f"gimp-plugin {self.config.get('version')}"
            )
        except ProtocolError as exc:
            raise self._refused(exc) from None
        self.last_hello = hello
        return sock, hello

    def _refused(self, exc: ProtocolError) -> EngineError:
        if exc.code == "protocol-mismatch":
            theirs = exc.details.get("protocol", "?")
            return EngineError(
                "protocol-mismatch",
                _(
                    "The engine speaks protocol {theirs} but this plug-in speaks {ours}. Re-run install.py "
                    "so both come from the same release, and stop the old engine (`nst stop`)."
                ).format(theirs=theirs, ours=messages.PROTOCOL_VERSION),
            )
        if exc.code == "unauthorized":
            return EngineError(
                "unauthorized",
                _(
                    "The engine at {endpoint} refused this plug-in's token. Copy the token file from the "
                    "engine's machine (`nst token` shows it) to {path}."
                ).format(endpoint=self.endpoint, path=endpoints.token_path(self.env)),
            )
        return EngineError(
            exc.code,
            _("The engine at {endpoint} refused the connection: {problem}").format(
                endpoint=self.endpoint, problem=exc.message
            ),
        )

    def _start(self) -> None:
        python = self.config.get("python")
        if not python:
            raise EngineError(
                "engine-not-configured",
                _(
                    "No engine answers at {endpoint} and {config} does not say how to start one. "
                    "Run install.py, or start the engine yourself with `nst serve`."
                ).format(endpoint=self.endpoint, config=self.config_path),
            )
        if not self.starts_engine:
            raise EngineError(
                "engine-unreachable",
                _(
                    "No engine answers at {endpoint}. Start it on that machine and check the "
                    "connection or SSH tunnel (see docs/remote.md)."
                ).format(endpoint=self.endpoint),
            )
        out = self._output_path()
        out.parent.mkdir(parents=True, exist_ok=True)
        if out.exists() and out.stat().st_size > 1 << 20:
            out.replace(out.with_suffix(".out.old"))  # keep the start-up output from growing forever
        command = [python, "-m", "engine", "serve", "--listen", str(self.endpoint)]
        options: dict[str, Any] = {}
        if sys.platform == "win32":
            flags = ("DETACHED_PROCESS", "CREATE_NEW_PROCESS_GROUP", "CREATE_NO_WINDOW")
            options["creationflags"] = sum(getattr(subprocess, f, 0) for f in flags)
        else:
            options["start_new_session"] = True  # GIMP's signals and exit do not reach the engine
        try:
            with open(out, "ab") as log:
                self._process = subprocess.Popen(
                    command,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env=self.env,
                    cwd=str(out.parent),
                    close_fds=True,
                    **options,
                )
        except OSError as exc:
            raise EngineError(
                "engine-failed-to-start",
                _("Cannot run the engine's Python {python!r} ({problem}). Re-run install.py.").format(
                    python=python, problem=exc
                ),
            ) from None

    def _wait_until_ready(self, is_cancelled: Callable[[], bool]) -> tuple[Any, dict[str, Any]]:
        deadline = time.monotonic() + self.start_timeout
        while True:
            try:
                return self._open()
            except (OSError, ConnectionClosed):
                pass
            if is_cancelled():
                raise EngineError("cancelled", _("Cancelled (the engine goes on starting for the next run)."))
            process = self._process
            if process is not None and process.poll() is not None and not engine_lock.is_held(self.env):
                raise EngineError(
                    "engine-failed-to-start",
                    _("The engine exited while starting (exit code {code}). Its output is in {path}:").format(
                        code=process.returncode, path=self._output_path()
                    )
                    + "\n"
                    + _tail(self._output_path()),
                )
            if time.monotonic() > deadline:
                raise EngineError(
                    "engine-start-timeout",
                    _("The engine did not answer within {seconds:.0f} s. Its output is in {path}.").format(
                        seconds=self.start_timeout, path=self._output_path()
                    ),
                )
            time.sleep(0.1)

    def _output_path(self) -> Path:
        return endpoints.data_dir(self.env) / "engine.out"

    def _died(self) -> EngineError:
        if self.starts_engine:
            text = _(
                "The engine stopped unexpectedly during the job. Its log is {path}. "
                "The next run will start it again."
            ).format(path=endpoints.log_path(self.env))
        else:
            text = _(
                "The engine stopped unexpectedly during the job. Its log is on the engine's machine; "
                "start it there again (see docs/remote.md)."
            )
        return EngineError("engine-died", text)

    # --- One job or download --------------------------------------------------------------------

    def _wait_for_result(
        self,
        sock: Any,
        job: StylizeJob,
        on_progress: Callable[[float, str], None],
        is_cancelled: Callable[[], bool],
        on_preview: Callable[[RawImage], None] | None = None,
    ) -> RawImage:
        watch = _Watch(sock, is_cancelled)
        while True:
            message = self._next_event(
                watch,
                session.CLIENT_LIMITS,
                lambda header, sizes: _check_incoming(header, sizes, job, watch.job),
                _Meter(on_progress, lambda: False),
            )
            h = message.header
            kind = h.get("type")
            if kind == "accepted" and watch.job is None:
                watch.accept(h.get("job"))
                ahead = h.get("position", 0)
                on_progress(
                    0.0,
                    ngettext("Waiting for {n} job ahead", "Waiting for {n} jobs ahead", ahead).format(n=ahead)
                    if ahead
                    else _("Starting"),
                )
            elif kind == "progress" and h.get("job") == watch.job:
                on_progress(_fraction(h), _progress_text(h))
                preview = _preview_image(message) if on_preview is not None else None
                if preview is not None:
                    on_preview(preview)
            elif kind == "result" and h.get("job") == watch.job:
                return _result_image(message, job)
            elif kind == "error" and h.get("job") in (None, watch.job):
                raise _job_error(h)

    def _wait_for_pull(
        self,
        sock: Any,
        ids: list[str],
        hello: dict[str, Any],
        on_progress: Callable[[float, str], None],
        is_cancelled: Callable[[], bool],
    ) -> list[dict[str, Any]]:
        watch = _Watch(sock, is_cancelled)
        while True:
            # Pull events carry no images: anything with a payload is refused as a bad frame.
            message = self._next_event(watch, session.HEADER_ONLY_LIMITS)
            h = message.header
            kind = h.get("type")
            if kind == "accepted" and watch.job is None and h.get("ref") == "pull":
                watch.accept(h.get("job"))
                ahead = h.get("position", 0)
                on_progress(
                    0.0,
                    ngettext(
                        "Waiting for {n} download ahead", "Waiting for {n} downloads ahead", ahead
                    ).format(n=ahead)
                    if ahead
                    else _("Starting the download"),
                )
            elif kind == "progress" and watch.job is not None and h.get("job") == watch.job:
                on_progress(_fraction(h), str(h.get("message")))
            elif kind == "pulled" and watch.job is not None and h.get("job") == watch.job:
                installed = h.get("weights")
                return [w for w in installed if isinstance(w, dict)] if isinstance(installed, list) else []
            elif kind == "error" and h.get("job") in (None, watch.job):
                if h.get("code") == "unknown-type":  # an engine that lists `pull` but does not know it
                    raise _pull_unsupported(hello, ids)
                raise _job_error(h)

    def _next_event(
        self,
        watch: _Watch,
        limits: framing.Limits,
        incoming: Callable[[dict[str, Any], list[int]], None] | None = None,
        meter: _Meter | None = None,
    ) -> framing.Message:
        """The engine's next message on `watch`'s connection, the one loop both waits share: while
        none comes, `watch` sends the user's cancel and gives up on an engine that fell silent; a
        closed connection is the engine's death, or the end of a cancel."""

        def check() -> None:
            watch.check(self.silence_timeout, endpoints.log_path(self.env))

        try:
            check()
            message = framing.read_message(watch.sock, limits, self.silence_timeout, check, incoming, meter)
        except (ConnectionClosed, TimeoutError):
            if watch.cancel_sent_at is not None:
                raise EngineError("cancelled", _("Cancelled.")) from None
            raise self._died() from None
        except ProtocolError as exc:
            raise EngineError(
                "protocol-error", _("The engine sent something unexpected: {problem}").format(problem=exc)
            ) from None
        watch.heard = time.monotonic()
        return message


class _Watch:
    """The watchdog over one job's (or download's) events: it sends the cancel once the user asks
    and the job has an id, closes the connection (which cancels too) when the engine has not
    stopped three seconds later, and gives up on an engine that reports nothing for too long."""

    def __init__(self, sock: Any, is_cancelled: Callable[[], bool]) -> None:
        self.sock = sock
        self.is_cancelled = is_cancelled
        self.job: Any = None
        self.cancel_sent_at: float | None = None
        self.heard = time.monotonic()

    def accept(self, job: Any) -> None:
        """The engine queued the request as `job`: a cancel asked for meanwhile goes now."""
        self.job = job
        if self.cancel_sent_at is not None:
            framing.send_message(self.sock, {"type": "cancel", "job": job})

    def check(self, silence_timeout: float, log: Path) -> None:
        now = time.monotonic()
        if self.cancel_sent_at is None and self.is_cancelled():
            self.cancel_sent_at = now
            if self.job is not None:
                framing.send_message(self.sock, {"type": "cancel", "job": self.job})
        elif self.cancel_sent_at is not None and now - self.cancel_sent_at > 3.0:
            raise EngineError("cancelled", _("Cancelled."))  # closing the connection cancels the job
        if now - self.heard > silence_timeout:
            raise EngineError(
                "engine-unresponsive",
                _(
                    "The engine has not reported anything for {seconds:.0f} s. Its log is {path}; "
                    "`nst stop` and a new run restart it."
                ).format(seconds=silence_timeout, path=log),
            )


def _fraction(header: dict[str, Any]) -> float:
    fraction = header.get("fraction")
    return float(fraction) if isinstance(fraction, (int, float)) else 0.0


def _job_error(header: dict[str, Any]) -> EngineError:
    """The engine's `error` event about a job or download, for the user."""
    code = str(header.get("code", "error"))
    return EngineError(code, _("Cancelled.") if code == "cancelled" else str(header.get("message")))


def _pull_unsupported(hello: dict[str, Any], ids: list[str]) -> EngineError:
    version = hello.get("engine", "?")
    return EngineError(
        "pull-unsupported",
        _(
            "The engine (version {version}) cannot download models for the plug-in; engines from 0.2.0 "
            "can. Run `nst models pull {weights}` on the engine's machine, or update the engine "
            "(install.py)."
        ).format(version=version, weights=" ".join(ids)),
    )


class _Meter:
    """Transfer progress for `on_progress` (each whole percent), and while uploading, cancellation
    and an early refusal: the engine answers a request it refuses at once, before all of it came."""

    def __init__(
        self,
        on_progress: Callable[[float, str], None],
        is_cancelled: Callable[[], bool],
        uploading: Any = None,
    ) -> None:
        self.on_progress = on_progress
        self.is_cancelled = is_cancelled
        self.sock = uploading
        self.receiving = uploading is None
        self.percent = -1

    def __call__(self, done: int, total: int) -> None:
        if self.is_cancelled():
            raise EngineError("cancelled", _("Cancelled."))  # the connection closes: no job was queued
        if self.sock is not None and select.select([self.sock], [], [], 0)[0]:
            raise _refusal(self.sock) or EngineError(
                "protocol-error", _("The engine answered before the whole job had been sent.")
            )
        percent = 100 * done // max(1, total)
        if percent != self.percent:
            self.percent = percent
            if self.receiving:
                text = _("Receiving the result ({percent}% of {mib} MiB)")
                self.on_progress(1.0, text.format(percent=percent, mib=total >> 20))
            else:
                text = _("Sending the image to the engine ({percent}% of {mib} MiB)")
                self.on_progress(0.0, text.format(percent=percent, mib=total >> 20))


PREVIEW_BYTES = 1 << 20  # progress previews are at most 256 px u8 RGB: far below this


def _check_incoming(header: dict[str, Any], sizes: list[int], job: StylizeJob, job_id: Any) -> None:
    """Before the client allocates a message's images: a result must be the layer's size and format."""
    total = sum(sizes)
    if header.get("type") == "result" and header.get("job") == job_id:
        image, c = header.get("image"), job.content
        expected = {"width": c.width, "height": c.height, "channels": c.channels, "dtype": c.dtype}
        if (
            not isinstance(image, dict)
            or any(image.get(k) != v for k, v in expected.items())
            or total != c.nbytes
        ):
            raise ProtocolError("bad-frame", "the result does not match the layer's size or format")
    elif total > PREVIEW_BYTES:
        raise ProtocolError("too-large", f"a {header.get('type')!r} message with {total} bytes of images")


def _refusal(sock: Any) -> EngineError | None:
    """The engine's `error` reply, when it closed the connection on us while we were sending."""
    deadline = time.monotonic() + 1.0

    def on_idle() -> None:
        if time.monotonic() > deadline:
            raise TimeoutError

    try:
        header = framing.read_message(sock, session.HEADER_ONLY_LIMITS, 1.0, on_idle).header
    except (ConnectionClosed, ProtocolError, TimeoutError, OSError):
        return None
    if header.get("type") != "error":
        return None
    code = str(header.get("code", "error"))
    return EngineError(code, _("The engine refused the job: {problem}").format(problem=header.get("message")))


def _progress_text(header: dict[str, Any]) -> str:
    """A progress event's message, after the time left when the engine says it (optional `eta_s`)."""
    text = str(header.get("message"))
    seconds = header.get("eta_s")
    if isinstance(seconds, (int, float)) and not isinstance(seconds, bool):
        left = eta.describe(float(seconds))
        # TRANSLATORS: the time left comes first ("about 3 min left"): GIMP's progress bar cuts off
        # the end of a long text.
        return _("{time_left} — {progress}").format(time_left=left, progress=text) if left else text
    return text


def _preview_image(message: framing.Message) -> RawImage | None:
    """A progress event's preview when it has a well-formed one (u8 RGB); None otherwise."""
    if "preview" not in message.header:
        return None
    try:
        image = messages.parse_image(
            message.header["preview"], message.blobs, session.CLIENT_LIMITS, "preview"
        )
    except ProtocolError:
        return None
    return image if (image.channels, image.dtype) == (3, "u8") else None


def _result_image(message: framing.Message, job: StylizeJob) -> RawImage:
    try:
        image = messages.parse_image(
            message.header.get("image"), message.blobs, session.CLIENT_LIMITS, "image"
        )
    except ProtocolError as exc:
        raise EngineError(
            "protocol-error", _("The engine sent a malformed result: {problem}").format(problem=exc.message)
        ) from None
    c = job.content
    if (image.width, image.height, image.channels, image.dtype) != (c.width, c.height, c.channels, c.dtype):
        raise EngineError(
            "protocol-error", _("The engine's result does not match the layer's size or format.")
        )
    return image


def _load_config(path: Path) -> dict[str, Any]:
    """engine.json: {"python": ..., "env": {...}, "version": ..., optional "endpoint", "token"}."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        raise EngineError(
            "bad-config",
            _("Cannot read {path} ({problem}); re-run install.py.").format(path=path, problem=exc),
        ) from None
    env = data.get("env", {}) if isinstance(data, dict) else None
    if not isinstance(env, dict) or not all(isinstance(v, str) for v in env.values()):
        raise EngineError(
            "bad-config", _("{path} is not a valid engine config; re-run install.py.").format(path=path)
        )
    return data


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:])
    except OSError:
        return _("(no output)")
