"""Shared fixtures: throwaway engine homes, and real engine servers on real sockets."""

from __future__ import annotations

import shutil
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
PLUGIN_DIR = ROOT / "plugin" / "neural_style"

# GIMP runs the plug-in as a script, so its modules import each other as top-level siblings.
if str(PLUGIN_DIR) not in sys.path:
    sys.path.insert(0, str(PLUGIN_DIR))


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """A private directory with a short path: Unix socket paths must stay under ~100 bytes."""
    path = Path(tempfile.mkdtemp(prefix="nst-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def nst_env(tmp_path: Path, short_dir: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """NST_HOME and NST_RUNTIME_DIR in throwaway folders, for this process and engines it starts."""
    env = {"NST_HOME": str(tmp_path / "home"), "NST_RUNTIME_DIR": str(short_dir / "run")}
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("NST_ENDPOINT", raising=False)
    return env


@pytest.fixture
def make_server(short_dir: Path) -> Iterator[Callable[..., Any]]:
    """Start in-process engine servers on a Unix socket (or `endpoint=`); all stop at teardown.

    The runner defaults to the real pipeline; keyword arguments go to ServerConfig.
    """
    from engine.protocol import Endpoint
    from engine.server import Server, ServerConfig, device_of

    servers: list[Server] = []

    def make(runner: Any = None, capabilities: Any = None, **config: Any) -> Server:
        from engine import pipeline

        config.setdefault("endpoint", Endpoint("unix", path=str(short_dir / f"s{len(servers)}.sock")))
        config.setdefault("stall_timeout", 1.0)
        config.setdefault("hello_timeout", 1.0)
        server = Server(
            ServerConfig(**config),
            runner or pipeline.run_job,
            capabilities or pipeline.capabilities,
            device_of,
        )
        servers.append(server)
        return server.start()

    yield make
    for server in servers:
        server.shutdown()
