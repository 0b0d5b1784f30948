"""Where the engine lives: its endpoint, and the data and runtime folders with the files in them.

The one computation of these folders for the engine, the plug-in and install.py: standard library
only (the plug-in runs it inside GIMP's Python, install.py before anything is installed), giving
the folders platformdirs gives for "neural-style" (tests/test_protocol.py compares them).
"""

from __future__ import annotations

import os
import socket
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

APP_NAME = "neural-style"
DEFAULT_PORT = 47913
SOCKET_NAME = "engine.sock"
TOKEN_NAME = "token"
LOG_NAME = "engine.log"


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


def _xdg(e: dict[str, str], name: str) -> Path | None:
    """An XDG base directory variable; the specification ignores relative (and empty) paths."""
    value = e.get(name, "")
    return Path(value) if os.path.isabs(value) else None


def data_dir(env: dict[str, str] | None = None) -> Path:
    """Weights, token, log: NST_HOME, else platformdirs' user_data_dir("neural-style").

    Not created here: whoever writes into it creates it.
    """
    e = _env(env)
    if e.get("NST_HOME"):
        return Path(e["NST_HOME"])
    home = Path(e.get("HOME") or Path.home())
    if sys.platform == "win32":
        return Path(e.get("LOCALAPPDATA") or home / "AppData" / "Local") / APP_NAME
    if sys.platform == "darwin":
        return home / "Library" / "Application Support" / APP_NAME
    return (_xdg(e, "XDG_DATA_HOME") or home / ".local" / "share") / APP_NAME


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
    xdg = _xdg(e, "XDG_RUNTIME_DIR")
    if xdg is not None:
        return xdg / APP_NAME
    uid = os.geteuid()
    run_user = Path(f"/run/user/{uid}")
    try:
        st = run_user.stat()
        if st.st_uid == uid and os.access(run_user, os.W_OK):
            return run_user / APP_NAME
    except OSError:
        pass
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
    """The shared secret's file: `nst token` writes it, TCP clients on this machine read it."""
    return data_dir(env) / TOKEN_NAME


def log_path(env: dict[str, str] | None = None) -> Path:
    """The engine's log, which error messages point the user to."""
    return data_dir(env) / LOG_NAME


def read_token(env: dict[str, str] | None = None) -> str | None:
    """The shared secret TCP clients present, or None when there is no token file."""
    try:
        return token_path(env).read_text(encoding="utf-8").strip() or None
    except OSError:
        return None
