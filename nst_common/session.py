"""The client's side of a connection: connect, say hello, and read the engine's replies.

`nst ping`/`stop`/`jobs`, the plug-in and the tests open their connections here. Standard library
only: the plug-in runs this inside GIMP's Python.
"""

from __future__ import annotations

import socket
import time
from typing import Any

from nst_common.endpoints import Endpoint
from nst_common.framing import POLL, Limits, ProtocolError, read_message, send_message
from nst_common.messages import PROTOCOL_VERSION

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
