"""The engine's wire protocol: framing, message schema, limits and where the engine listens.

Standard library only, and no imports from `engine`: the plug-in loads this very file (through a
symlink) as a sibling module inside GIMP's Python. docs/protocol.md is the specification; this
module follows it.

A frame is a 16-byte prefix (magic, header length, payload length; big-endian), a UTF-8 JSON
header, then the payload. The header's `blobs` list says how a message's binary data splits into
blobs; images refer to their blob by index. Small messages carry their blobs in their own payload;
large ones (`"chunked": true`) are followed by `chunk` frames that the receiver writes straight into
one buffer of the message's final size, allocated once the header has been checked.
"""

from __future__ import annotations

import json
import math
import mmap
import os
import socket
import struct
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

PROTOCOL_VERSION = 2
MAGIC = b"NST\x01"
PREFIX = struct.Struct(">4sIQ")
APP_NAME = "neural-style"
DEFAULT_PORT = 47913
SOCKET_NAME = "engine.sock"
LOCK_NAME = "engine.lock"
TOKEN_NAME = "token"
LOG_NAME = "engine.log"
DTYPE_SIZES = {"u8": 1, "u16": 2, "f32": 4}
POLL = 0.1  # socket timeout: how often a blocked reader looks up (cancel, shutdown)
CHUNK = 1 << 20  # bytes per send/recv call: big enough to be fast, small enough to notice a stall
CHUNK_SIZE = 16 << 20  # bytes per `chunk` frame a sender writes; messages up to this size go inline
MAX_CHUNK_HEADER = 1024  # a `chunk` frame's JSON header is small: {"type":"chunk","blob":i,"offset":n}
# Messages with at least this many bytes of blobs are received into an anonymous memory map: the
# operating system backs its pages as the bytes arrive, so a header that declares a large image and
# then stalls costs no memory.
LAZY_BUFFER = 1 << 20


class ProtocolError(Exception):
    """A frame or message that breaks the protocol; `code` is the `error` event's code."""

    def __init__(self, code: str, message: str, details: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.details = details or {}  # the whole `error` header, when it came from the peer


class Rejected(ProtocolError):
    """A well-framed message that `read_message`'s `check` refused before its blobs were allocated.

    The blobs are still on the wire: call `skip()` (after replying, so the peer hears early) to
    read and discard them, and the connection can go on. `skip` raises like `read_message` when
    the rest of the message turns out to be broken.
    """

    def __init__(self, cause: ProtocolError, header: dict[str, Any], skip: Callable[[], None]) -> None:
        super().__init__(cause.code, cause.message, cause.details)
        self.header = header
        self.skip = skip


class ConnectionClosed(Exception):
    """The peer closed the connection (cleanly between frames, or in the middle of one)."""


@dataclass
class Limits:
    """Bounds on what a peer may send; the server takes them from `nst serve` options."""

    max_header: int = 1 << 20
    max_payload: int = 64 << 20  # one frame's payload: an inline message, or one chunk
    max_message: int = 4 << 30  # all blobs of one message together (every image of a job)
    max_side: int = 32768
    chunk_size: int = CHUNK_SIZE  # what this side sends per chunk frame (not a bound on the peer)
    max_blobs: int = 64
    max_styles: int = 16
    max_string: int = 4096
    max_depth: int = 8  # nesting of params


@dataclass
class RawImage:
    width: int
    height: int
    channels: int  # 1 grey, 2 grey+alpha, 3 RGB, 4 RGBA
    dtype: str  # "u8" | "u16" | "f32"  (little-endian, interleaved, row-major)
    data: bytes | bytearray | memoryview

    @property
    def nbytes(self) -> int:
        return self.width * self.height * self.channels * DTYPE_SIZES[self.dtype]


@dataclass
class StyleRef:
    """A style image, either a file on the engine's machine or pixels sent along."""

    path: str | None = None
    image: RawImage | None = None
    weight: float = 1.0
    map: RawImage | None = None  # colour-coded label map of the style, for semantic maps


@dataclass
class StylizeJob:
    method: str
    params: dict[str, Any]
    content: RawImage
    styles: list[StyleRef] = field(default_factory=list)
    selection: RawImage | None = None  # 1 channel, 0..1: result = sel*styled + (1-sel)*content
    masks: dict[str, RawImage] = field(default_factory=dict)  # name -> 1-channel image
    content_map: RawImage | None = None  # colour-coded label map, content-sized (semantic maps)


@dataclass
class Message:
    header: dict[str, Any]
    blobs: list[memoryview]


# --- Framing -------------------------------------------------------------------------------------


def _loads(text: bytes) -> Any:
    def no_constant(name: str) -> Any:
        raise ProtocolError("bad-frame", f"header contains {name}, which JSON does not allow")

    def finite_float(text: str) -> float:
        value = float(text)
        if not math.isfinite(value):
            raise ProtocolError("bad-frame", "header contains a number out of range")
        return value

    try:
        return json.loads(text.decode("utf-8"), parse_constant=no_constant, parse_float=finite_float)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise ProtocolError("bad-frame", f"header is not valid UTF-8 JSON: {exc}") from None


def encode_header(header: dict[str, Any], blobs: Sequence[Any], chunked: bool = False) -> bytes:
    """Prefix plus JSON header for a message whose blobs are `blobs` (bytes-like, sent after).

    Inline (the default) the payload is the blobs back to back; `chunked` declares an empty
    payload and promises `chunk` frames for the blobs (see `encode_chunk`).
    """
    sizes = [memoryview(b).nbytes for b in blobs]
    body = dict(header, blobs=sizes)
    if chunked:
        body["chunked"] = True
    text = json.dumps(body, separators=(",", ":"), allow_nan=False).encode("utf-8")
    return PREFIX.pack(MAGIC, len(text), 0 if chunked else sum(sizes)) + text


def encode_chunk(blob: int, offset: int, size: int) -> bytes:
    """Prefix plus header of a `chunk` frame: `size` bytes of blob `blob` from `offset` follow."""
    text = json.dumps({"type": "chunk", "blob": blob, "offset": offset}, separators=(",", ":")).encode()
    return PREFIX.pack(MAGIC, len(text), size) + text


def _byte_view(blob: Any) -> memoryview:
    view = memoryview(blob)
    return view.cast("B") if view.ndim != 1 or view.format != "B" else view


def send_message(
    sock: socket.socket,
    header: dict[str, Any],
    blobs: Sequence[Any] = (),
    stall_timeout: float = 30.0,
    chunk_size: int = CHUNK_SIZE,
    on_chunk: Callable[[int, int], None] | None = None,
) -> None:
    """Write one message, streaming blobs from memoryviews so large images are never copied.

    Blobs of more than `chunk_size` bytes in all travel as `chunk` frames of at most `chunk_size`
    bytes; `on_chunk(sent, total)` runs after each (it may raise to stop: the stream is then
    broken and the connection must be closed). The socket should have a short timeout; a peer
    that accepts no bytes for `stall_timeout` seconds raises TimeoutError.
    """
    if chunk_size < 1:
        raise ValueError("chunk_size must be positive")
    views = [_byte_view(b) for b in blobs]
    total = sum(len(v) for v in views)
    chunked = total > chunk_size
    _send_all(sock, memoryview(encode_header(header, views, chunked)), stall_timeout)
    if not chunked:
        for view in views:
            _send_all(sock, view, stall_timeout)
        return
    sent = 0
    for index, view in enumerate(views):
        for offset in range(0, len(view), chunk_size):
            piece = view[offset : offset + chunk_size]
            _send_all(sock, memoryview(encode_chunk(index, offset, len(piece))), stall_timeout)
            _send_all(sock, piece, stall_timeout)
            sent += len(piece)
            if on_chunk is not None:
                on_chunk(sent, total)


def _send_all(sock: socket.socket, view: memoryview, stall_timeout: float) -> None:
    pos, last = 0, time.monotonic()
    while pos < len(view):
        try:
            sent = sock.send(view[pos : pos + CHUNK])
        except (TimeoutError, BlockingIOError, InterruptedError):
            if time.monotonic() - last > stall_timeout:
                raise TimeoutError("the peer stopped reading") from None
            continue
        except OSError as exc:
            raise ConnectionClosed(str(exc)) from None
        pos += sent
        last = time.monotonic()


def _recv_into(
    sock: socket.socket,
    view: memoryview,
    stall_timeout: float,
    on_idle: Callable[[], None] | None,
    deadline: float | None = None,
) -> None:
    """Fill `view` completely. `on_idle` runs on each socket timeout before the first byte; past
    `deadline` (time.monotonic()) it raises ProtocolError("timeout") however the bytes trickle in."""
    pos, last = 0, time.monotonic()
    while pos < len(view):
        if deadline is not None and time.monotonic() > deadline:
            raise ProtocolError("timeout", "the time allowed for this message ran out")
        try:
            n = sock.recv_into(view[pos:], min(len(view) - pos, CHUNK))
        except (TimeoutError, BlockingIOError, InterruptedError):
            if pos == 0 and on_idle is not None:
                on_idle()
                last = time.monotonic()
            elif time.monotonic() - last > stall_timeout:
                raise ProtocolError("timeout", "the peer stalled in the middle of a message") from None
            continue
        except OSError as exc:
            raise ConnectionClosed(str(exc)) from None
        if n == 0:
            raise ConnectionClosed("the peer closed the connection")
        pos += n
        last = time.monotonic()


def _read_head(
    sock: socket.socket,
    max_header: int,
    max_payload: int,
    stall_timeout: float,
    on_idle: Callable[[], None] | None,
    deadline: float | None = None,
) -> tuple[dict[str, Any], int]:
    """Read one frame's prefix and JSON header (not its payload): the header and payload length."""
    prefix = bytearray(PREFIX.size)
    _recv_into(sock, memoryview(prefix), stall_timeout, on_idle, deadline)
    magic, header_len, payload_len = PREFIX.unpack(prefix)
    if magic != MAGIC:
        raise ProtocolError("bad-frame", "not a neural-style frame (wrong magic bytes)")
    if header_len == 0 or header_len > max_header:
        raise ProtocolError("too-large", f"header of {header_len} bytes (limit {max_header})")
    if payload_len > max_payload:
        raise ProtocolError("too-large", f"payload of {payload_len} bytes (limit {max_payload})")
    text = bytearray(header_len)
    _recv_into(sock, memoryview(text), stall_timeout, None, deadline)
    header = _loads(bytes(text))
    if not isinstance(header, dict):
        raise ProtocolError("bad-frame", "header is not a JSON object")
    return header, payload_len


def read_message(
    sock: socket.socket,
    limits: Limits,
    stall_timeout: float = 30.0,
    on_idle: Callable[[], None] | None = None,
    check: Callable[[dict[str, Any], list[int]], None] | None = None,
    on_chunk: Callable[[int, int], None] | None = None,
    deadline: float | None = None,
) -> Message:
    """Read and check one message. Its blobs are allocated only once the header accounts for them.

    Between messages, each socket timeout calls `on_idle` (which may raise to stop waiting); inside
    one (chunks included), `stall_timeout` seconds without a byte raise ProtocolError("timeout"), and
    so does reading past `deadline` (time.monotonic(); None: no deadline), even from a peer that
    sends a byte now and then. `check(header, blob_sizes)` runs before the blobs are allocated; a
    ProtocolError from it becomes `Rejected`, whose `skip()` consumes the rest of the message.
    `on_chunk(received, total)` runs after each chunk of a chunked message. All blobs are views into
    one buffer of their total size (from LAZY_BUFFER bytes on, a memory map filled as they arrive).
    """
    header, payload_len = _read_head(
        sock, limits.max_header, limits.max_payload, stall_timeout, on_idle, deadline
    )
    if header.get("type") == "chunk":
        raise ProtocolError("bad-frame", "a `chunk` frame outside a chunked message (too many chunks?)")
    chunked = header.get("chunked", False)
    sizes = header.get("blobs", [])
    if (
        not isinstance(chunked, bool)
        or not isinstance(sizes, list)
        or len(sizes) > limits.max_blobs
        or not all(_is_int(s) and s >= 0 for s in sizes)
    ):
        raise ProtocolError("bad-frame", "header `blobs` does not account for the payload")
    total = sum(sizes)
    if (chunked and payload_len != 0) or (not chunked and total != payload_len):
        raise ProtocolError("bad-frame", "header `blobs` does not account for the payload")
    if total > limits.max_message:
        raise ProtocolError("too-large", f"a message of {total} bytes of images (limit {limits.max_message})")
    if check is not None:
        try:
            check(header, list(sizes))
        except ProtocolError as exc:

            def skip() -> None:
                _receive(sock, None, sizes, chunked, limits, stall_timeout, None, deadline)

            raise Rejected(exc, header, skip) from None
    view = memoryview(mmap.mmap(-1, total) if total >= LAZY_BUFFER else bytearray(total))
    _receive(sock, view, sizes, chunked, limits, stall_timeout, on_chunk, deadline)
    blobs, pos = [], 0
    for size in sizes:
        blobs.append(view[pos : pos + size])
        pos += size
    return Message(header, blobs)


def _receive(
    sock: socket.socket,
    target: memoryview | None,
    sizes: list[int],
    chunked: bool,
    limits: Limits,
    stall_timeout: float,
    on_chunk: Callable[[int, int], None] | None,
    deadline: float | None = None,
) -> None:
    """Read a message's blobs into `target` (None: read and discard them in small pieces)."""
    total = sum(sizes)
    if not chunked:
        _fill(sock, target, total, stall_timeout, deadline)
        return
    received = 0
    for index, size in enumerate(sizes):
        offset = 0
        while offset < size:
            header, n = _read_head(sock, MAX_CHUNK_HEADER, limits.max_payload, stall_timeout, None, deadline)
            if header.get("type") != "chunk":
                raise ProtocolError(
                    "bad-frame",
                    f"the message ended after {received} of {total} bytes: a "
                    f"{str(header.get('type'))[:32]!r} frame came where blob {index} at offset {offset} "
                    "was expected",
                )
            blob, at = header.get("blob"), header.get("offset")
            if blob != index or at != offset or not _is_int(blob) or not _is_int(at):
                raise ProtocolError(
                    "bad-frame",
                    f"expected a chunk of blob {index} at offset {offset}, got blob {str(blob)[:32]} at "
                    f"offset {str(at)[:32]}: chunks come in order, without gaps or overlaps",
                )
            if not 1 <= n <= size - offset:
                raise ProtocolError(
                    "bad-frame",
                    f"a chunk of {n} bytes at offset {offset} of blob {index}, which has "
                    f"{size - offset} bytes left",
                )
            start = received
            _fill(sock, None if target is None else target[start : start + n], n, stall_timeout, deadline)
            offset += n
            received += n
            if on_chunk is not None:
                on_chunk(received, total)


def _fill(
    sock: socket.socket, target: memoryview | None, n: int, stall_timeout: float, deadline: float | None
) -> None:
    if target is not None:
        _recv_into(sock, target, stall_timeout, None, deadline)
        return
    scratch = memoryview(bytearray(min(n, CHUNK)))
    while n > 0:
        piece = min(n, len(scratch))
        _recv_into(sock, scratch[:piece], stall_timeout, None, deadline)
        n -= piece


# --- Field validation ----------------------------------------------------------------------------


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _bad(message: str) -> ProtocolError:
    return ProtocolError("bad-request", message)


def get_str(obj: dict[str, Any], key: str, limits: Limits, default: str | None = None) -> str:
    value = obj.get(key, default)
    if not isinstance(value, str) or not value or len(value) > limits.max_string or "\x00" in value:
        raise _bad(f"`{key}` must be a non-empty string of at most {limits.max_string} characters")
    return value


def get_number(obj: dict[str, Any], key: str, default: float, lo: float, hi: float) -> float:
    value = obj.get(key, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise _bad(f"`{key}` must be a finite number")
    if not lo <= value <= hi:
        raise _bad(f"`{key}` must be between {lo} and {hi}")
    return float(value)


def check_json_value(value: Any, limits: Limits, where: str, depth: int = 0) -> None:
    """Params are plain JSON: bounded nesting and strings, finite numbers, string keys."""
    if depth > limits.max_depth:
        raise _bad(f"`{where}` is nested too deeply")
    if value is None or isinstance(value, bool) or _is_int(value):
        return
    if isinstance(value, float):
        if not math.isfinite(value):
            raise _bad(f"`{where}` contains a number that is not finite")
    elif isinstance(value, str):
        if len(value) > limits.max_string:
            raise _bad(f"`{where}` contains a string longer than {limits.max_string}")
    elif isinstance(value, list):
        for item in value:
            check_json_value(item, limits, where, depth + 1)
    elif isinstance(value, dict):
        for key, item in value.items():
            check_json_value(key, limits, where, depth + 1)
            check_json_value(item, limits, f"{where}.{key}", depth + 1)
    else:
        raise _bad(f"`{where}` contains an unsupported value")


def image_header(image: RawImage, blobs: list[Any]) -> dict[str, Any]:
    """Describe `image` for a header and queue its pixels as the next blob."""
    blobs.append(image.data)
    return {
        "width": image.width,
        "height": image.height,
        "channels": image.channels,
        "dtype": image.dtype,
        "blob": len(blobs) - 1,
    }


def parse_image(obj: Any, blobs: list[memoryview], limits: Limits, where: str) -> RawImage:
    """Check an image description against its blob: enums, ranges, and size = w*h*c*bytes."""
    if not isinstance(obj, dict):
        raise _bad(f"`{where}` must be an image object")
    width, height, channels = obj.get("width"), obj.get("height"), obj.get("channels")
    dtype, blob = obj.get("dtype"), obj.get("blob")
    for name, value in (("width", width), ("height", height)):
        if not _is_int(value) or not 1 <= value <= limits.max_side:
            raise _bad(f"`{where}.{name}` must be an integer from 1 to {limits.max_side}")
    if not _is_int(channels) or channels not in (1, 2, 3, 4):
        raise _bad(f"`{where}.channels` must be 1, 2, 3 or 4")
    if not isinstance(dtype, str) or dtype not in DTYPE_SIZES:
        raise _bad(f"`{where}.dtype` must be one of {', '.join(DTYPE_SIZES)}")
    if not _is_int(blob) or not 0 <= blob < len(blobs):
        raise _bad(f"`{where}.blob` does not name a blob of this message")
    image = RawImage(width, height, channels, dtype, blobs[blob])
    if len(blobs[blob]) != image.nbytes:
        raise _bad(
            f"`{where}` is {width}x{height}x{channels} {dtype} ({image.nbytes} bytes) "
            f"but its blob holds {len(blobs[blob])} bytes"
        )
    return image


def job_message(job: StylizeJob) -> tuple[dict[str, Any], list[Any]]:
    """The `stylize` request for a job (attribute access only, so either module copy works)."""
    blobs: list[Any] = []
    styles = []
    for ref in job.styles:
        entry: dict[str, Any] = {"weight": ref.weight}
        if ref.image is not None:
            entry["image"] = image_header(ref.image, blobs)
        else:
            entry["path"] = ref.path
        if ref.map is not None:
            entry["map"] = image_header(ref.map, blobs)
        styles.append(entry)
    header: dict[str, Any] = {
        "type": "stylize",
        "method": job.method,
        "params": job.params,
        "content": image_header(job.content, blobs),
        "styles": styles,
    }
    if job.selection is not None:
        header["selection"] = image_header(job.selection, blobs)
    if job.masks:
        header["masks"] = {name: image_header(m, blobs) for name, m in job.masks.items()}
    if job.content_map is not None:
        header["content_map"] = image_header(job.content_map, blobs)
    return header, blobs


def parse_job(message: Message, limits: Limits) -> StylizeJob:
    """Validate a `stylize` request completely before any of it reaches the pipeline."""
    h, blobs = message.header, message.blobs
    method = get_str(h, "method", limits)
    params = h.get("params", {})
    if not isinstance(params, dict):
        raise _bad("`params` must be an object")
    check_json_value(params, limits, "params")
    content = parse_image(h.get("content"), blobs, limits, "content")
    raw_styles = h.get("styles", [])
    if not isinstance(raw_styles, list) or len(raw_styles) > limits.max_styles:
        raise _bad(f"`styles` must be a list of at most {limits.max_styles} styles")
    styles = []
    for i, entry in enumerate(raw_styles):
        where = f"styles[{i}]"
        if not isinstance(entry, dict) or ("path" in entry) == ("image" in entry):
            raise _bad(f"`{where}` must have exactly one of `path` or `image`")
        weight = get_number(entry, "weight", 1.0, 0.0, 1e6)
        label_map = None
        if entry.get("map") is not None:
            label_map = parse_image(entry["map"], blobs, limits, f"{where}.map")
        if "path" in entry:
            styles.append(StyleRef(path=get_str(entry, "path", limits), weight=weight, map=label_map))
        else:
            image = parse_image(entry["image"], blobs, limits, f"{where}.image")
            if label_map is not None and (label_map.width, label_map.height) != (image.width, image.height):
                raise _bad(f"`{where}.map` must have the style image's width and height")
            styles.append(StyleRef(image=image, weight=weight, map=label_map))
    selection = None
    if h.get("selection") is not None:
        selection = _parse_mask(h["selection"], blobs, limits, "selection", content)
    raw_masks = h.get("masks", {})
    if not isinstance(raw_masks, dict) or len(raw_masks) > limits.max_blobs:
        raise _bad("`masks` must be an object of name -> image")
    masks = {}
    for name, obj in raw_masks.items():
        if not name or len(name) > 64:
            raise _bad("mask names must be 1 to 64 characters")
        masks[name] = _parse_mask(obj, blobs, limits, f"masks.{name}", content)
    content_map = None
    if h.get("content_map") is not None:
        content_map = parse_image(h["content_map"], blobs, limits, "content_map")
        if (content_map.width, content_map.height) != (content.width, content.height):
            raise _bad("`content_map` must have the content's width and height")
    return StylizeJob(method, params, content, styles, selection, masks, content_map)


class _Pending:
    """Stands in for a blob that is not received yet: only its length is known."""

    def __init__(self, size: int) -> None:
        self.size = size

    def __len__(self) -> int:
        return self.size


def check_job(header: dict[str, Any], sizes: list[int], limits: Limits) -> StylizeJob:
    """Everything `parse_job` checks, before the blobs exist (a `read_message` check for `stylize`):
    so an image over max_side, or one whose blob does not match its size, costs no memory. Returns
    the job, its images standing in for blobs not yet received (for further checks of its fields)."""
    return parse_job(Message(header, [_Pending(n) for n in sizes]), limits)  # type: ignore[misc]


def _parse_mask(obj: Any, blobs: list[memoryview], limits: Limits, where: str, content: RawImage) -> RawImage:
    image = parse_image(obj, blobs, limits, where)
    if image.channels != 1 or (image.width, image.height) != (content.width, content.height):
        raise _bad(f"`{where}` must be one channel with the content's width and height")
    return image


# --- Where the engine lives ----------------------------------------------------------------------


@dataclass(frozen=True)
class Endpoint:
    """`unix:/path/engine.sock` or `tcp:host:port` (the text form `nst serve --listen` takes)."""

    kind: str  # "unix" | "tcp"
    path: str = ""
    host: str = ""
    port: int = 0

    def __str__(self) -> str:
        if self.kind == "unix":
            return f"unix:{self.path}"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"tcp:{host}:{self.port}"

    @property
    def is_loopback(self) -> bool:
        return (
            self.kind == "unix"
            or self.host in ("localhost", "127.0.0.1", "::1")
            or (self.host.startswith("127."))
        )

    def connect(self, timeout: float) -> socket.socket:
        """A connected socket; raises OSError when no engine listens here."""
        if self.kind == "unix":
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(timeout)
            try:
                sock.connect(self.path)
            except BaseException:
                sock.close()
                raise
            return sock
        sock = socket.create_connection((self.host, self.port), timeout=timeout)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock


def parse_endpoint(text: str) -> Endpoint:
    """Accept `unix:PATH`, `tcp:HOST:PORT`, `HOST:PORT` or `[v6]:PORT` (port 0: any free port)."""
    if text.startswith("unix:"):
        path = text[5:]
        if not path:
            raise ValueError("a unix endpoint needs a path: unix:/path/to/engine.sock")
        return Endpoint("unix", path=path)
    rest = text[4:] if text.startswith("tcp:") else text
    host, sep, port_text = rest.rpartition(":")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if not sep or not host or not port_text.isdigit() or not 0 <= int(port_text) < 65536:
        raise ValueError(f"expected HOST:PORT or unix:PATH, not {text!r}")
    return Endpoint("tcp", host=host, port=int(port_text))


def _env(env: dict[str, str] | None) -> dict[str, str]:
    return dict(os.environ) if env is None else env


def data_dir(env: dict[str, str] | None = None) -> Path:
    """platformdirs' user_data_dir("neural-style") in the standard library; NST_HOME overrides."""
    e = _env(env)
    if e.get("NST_HOME"):
        return Path(e["NST_HOME"])
    home = Path(e.get("HOME") or Path.home())
    if sys.platform == "win32":
        return Path(e.get("LOCALAPPDATA") or home / "AppData" / "Local") / APP_NAME
    if sys.platform == "darwin":
        return home / "Library" / "Application Support" / APP_NAME
    return Path(e.get("XDG_DATA_HOME") or home / ".local" / "share") / APP_NAME


def runtime_dir(env: dict[str, str] | None = None) -> Path:
    """platformdirs' user_runtime_dir("neural-style") in the standard library.

    NST_RUNTIME_DIR overrides it (tests, or several engines for one user).
    """
    e = _env(env)
    if e.get("NST_RUNTIME_DIR"):
        return Path(e["NST_RUNTIME_DIR"])
    if sys.platform == "win32":
        return Path(e.get("LOCALAPPDATA") or Path.home() / "AppData" / "Local") / "Temp" / APP_NAME
    if sys.platform == "darwin":
        return Path(e.get("HOME") or Path.home()) / "Library" / "Caches" / "TemporaryItems" / APP_NAME
    if e.get("XDG_RUNTIME_DIR"):
        return Path(e["XDG_RUNTIME_DIR"]) / APP_NAME
    uid = os.geteuid()
    run_user = Path(f"/run/user/{uid}")
    try:
        st = run_user.stat()
        if st.st_uid == uid and os.access(run_user, os.W_OK):
            return run_user / APP_NAME
    except OSError:
        pass
    import tempfile

    return Path(tempfile.gettempdir()) / f"runtime-{uid}" / APP_NAME


def default_endpoint(env: dict[str, str] | None = None) -> Endpoint:
    """NST_ENDPOINT, else TCP on loopback on Windows, else the Unix socket in the runtime dir."""
    e = _env(env)
    if e.get("NST_ENDPOINT"):
        return parse_endpoint(e["NST_ENDPOINT"])
    if sys.platform == "win32" or not hasattr(socket, "AF_UNIX"):
        return Endpoint("tcp", host="127.0.0.1", port=DEFAULT_PORT)
    return Endpoint("unix", path=str(runtime_dir(e) / SOCKET_NAME))


def token_path(env: dict[str, str] | None = None) -> Path:
    return data_dir(env) / TOKEN_NAME


def log_path(env: dict[str, str] | None = None) -> Path:
    return data_dir(env) / LOG_NAME


def lock_holder(env: dict[str, str] | None = None) -> dict[str, Any]:
    """What the running engine wrote in its lock file: {"pid", "endpoint"} (may be stale)."""
    try:
        data = json.loads((runtime_dir(env) / LOCK_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def read_token(env: dict[str, str] | None = None) -> str | None:
    """The shared secret TCP clients present, or None when there is no token file."""
    try:
        return token_path(env).read_text(encoding="utf-8").strip() or None
    except OSError:
        return None


# --- The client's side of a session --------------------------------------------------------------

CLIENT_LIMITS = Limits(max_payload=1 << 40, max_message=1 << 40)  # a client trusts the engine it chose
HEADER_ONLY_LIMITS = Limits(max_payload=0, max_message=0)  # a reply that can carry no images


def open_session(
    endpoint: Endpoint, token: str | None, timeout: float = 5.0, client: str = "nst"
) -> tuple[socket.socket, dict[str, Any]]:
    """Connect and say hello. Returns the socket (timeout `POLL`) and the engine's `hello`.

    Raises OSError when nothing listens at `endpoint`, ConnectionClosed when the peer hangs up,
    and ProtocolError (code from the engine: "protocol-mismatch", "unauthorized", ...) when refused.
    """
    sock = endpoint.connect(timeout)
    try:
        sock.settimeout(POLL)
        hello: dict[str, Any] = {"type": "hello", "protocol": PROTOCOL_VERSION, "client": client}
        if token is not None:
            hello["token"] = token
        send_message(sock, hello, (), timeout)
        reply = read_reply(sock, timeout)
        if reply.get("type") != "hello":
            raise ProtocolError("bad-frame", f"expected hello, got {reply.get('type')!r}")
        return sock, reply
    except BaseException:
        sock.close()
        raise


def read_reply(sock: socket.socket, timeout: float) -> dict[str, Any]:
    """The next message, which must arrive within `timeout`; an `error` is raised as ProtocolError."""
    deadline = time.monotonic() + timeout

    def on_idle() -> None:
        if time.monotonic() > deadline:
            raise ProtocolError("timeout", "the engine did not answer in time")

    header = read_message(sock, CLIENT_LIMITS, timeout, on_idle).header
    if header.get("type") == "error":
        raise ProtocolError(str(header.get("code", "error")), str(header.get("message", "")), header)
    return header
