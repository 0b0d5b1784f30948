"""The wire format: frames, their limits, and reading and writing whole messages.

Standard library only, and no imports from `engine`: the plug-in runs this package inside GIMP's
Python (install.py copies it beside the plug-in). docs/protocol.md is the specification; this
module follows its framing part, `nst_common.messages` its message schema.

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
import socket
import struct
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

MAGIC = b"NST\x01"
PREFIX = struct.Struct(">4sIQ")
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
class Message:
    """One message as read: its header, and its blobs as views into one buffer."""

    header: dict[str, Any]
    blobs: list[memoryview]


def is_int(value: Any) -> bool:
    """A JSON integer: Python's bool is an int, but `true` is no count or size."""
    return isinstance(value, int) and not isinstance(value, bool)


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
        or not all(is_int(s) and s >= 0 for s in sizes)
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
            if blob != index or at != offset or not is_int(blob) or not is_int(at):
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
