"""Errors a user can act on, and cooperative cancellation.

Everything that reaches a user (CLI line, protocol `error` event, GIMP message) is a `UserError`
with a stable machine-readable code; anything else is a bug and is reported as `internal`.
"""

from __future__ import annotations

import threading
from pathlib import Path


class UserError(Exception):
    """A problem with the input or the environment, with a message that says what to do."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class BadCheckpoint(UserError):
    """A weights file that does not load as the architecture it is read as.

    `readable` tells a file torch reads (but that holds other tensors, or no state dict) from one it
    cannot; `arch` and `reason` (a few words) let a caller that knows which weights entry the file
    is name the entry and the fix, never torch's text.
    """

    def __init__(self, path: Path, arch: str, reason: str, readable: bool) -> None:
        if readable:
            message = f"{path} is a checkpoint, but not a {arch}: {reason}"
        else:
            message = f"{path} is not a PyTorch checkpoint ({reason})"
        super().__init__("bad-weights", message)
        self.arch = arch
        self.reason = reason
        self.readable = readable


class Cancelled(Exception):
    """Raised inside a job when its cancel token is set."""


class CancelToken:
    """A thread-safe flag that methods poll once per step."""

    def __init__(self) -> None:
        self._event = threading.Event()

    def cancel(self) -> None:
        self._event.set()

    @property
    def cancelled(self) -> bool:
        return self._event.is_set()

    def raise_if_cancelled(self) -> None:
        if self._event.is_set():
            raise Cancelled()
