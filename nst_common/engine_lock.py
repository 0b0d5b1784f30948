"""One engine per user: the lock the running engine holds, and what clients learn from it.

The engine takes an exclusive lock on `engine.lock` in the runtime folder and writes its pid and
endpoint into the file (`EngineLock`); the operating system releases the lock when the process
dies, so a file left behind holds nothing. Clients ask whether some engine holds it (`is_held`: an
engine that lost the race to start is no failure) and where that engine listens (`holder`: `nst
ping` and friends, install.py --uninstall). Writer, probe and reader live together here so that
they agree on the file. Standard library only: the plug-in runs this inside GIMP's Python.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

from nst_common.endpoints import Endpoint, runtime_dir

LOCK_NAME = "engine.lock"


def lock_path(env: dict[str, str] | None = None) -> Path:
    """The lock file in the runtime folder `env` (default: this process's environment) selects."""
    return runtime_dir(env) / LOCK_NAME


class EngineLock:
    """The running engine's hold on the lock file, with the pid and endpoint it records there."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None

    def acquire(self, endpoint: Endpoint) -> bool:
        """Take the lock and record `endpoint`; False when another process holds it.

        Raises OSError when the file cannot be opened; a link in its place is never followed.
        """
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o600)
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


def is_held(env: dict[str, str] | None = None) -> bool:
    """Whether some process holds the lock now; always False on Windows, where it cannot be asked."""
    if sys.platform == "win32":
        return False
    import fcntl

    try:
        fd = os.open(lock_path(env), os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        return False
    except OSError:
        return True
    finally:
        os.close(fd)


def holder(env: dict[str, str] | None = None) -> dict[str, Any]:
    """What the running engine wrote in the lock file: {"pid", "endpoint"} (may be stale)."""
    try:
        data = json.loads(lock_path(env).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}
