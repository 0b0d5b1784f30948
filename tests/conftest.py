"""Shared fixtures: throwaway engine homes, real engine servers on real sockets, and bench/zoo.py."""

from __future__ import annotations

import atexit
import importlib.util
import os
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
PLUGIN_DIR = ROOT / "plugin" / "neural_style"

# GIMP runs the plug-in as a script, so its modules import each other as top-level siblings.
if str(PLUGIN_DIR) not in sys.path:
    sys.path.insert(0, str(PLUGIN_DIR))


# Results are compared with references and with each other to float32 rounding, so every test runs
# the fp32 path unless it sets another; the measured choice and reduced precision have their own
# tests (tests/test_precision.py), which lift this.
os.environ["NST_PRECISION"] = "fp32"

# No test reads or writes the user's own data folder or talks to an engine they run: the session has
# a throwaway data folder and runtime folder (nst_env gives a test its own), set before any engine
# module reads them.
_SESSION = Path(tempfile.mkdtemp(prefix="nst-session-", dir="/tmp"))
atexit.register(shutil.rmtree, _SESSION, ignore_errors=True)
os.environ["NST_HOME"] = str(_SESSION / "home")
os.environ["NST_RUNTIME_DIR"] = str(_SESSION / "run")
os.environ.pop("NST_ENDPOINT", None)


@pytest.fixture(scope="session")
def zoo() -> ModuleType:
    """bench/zoo.py, loaded once (bench/ is no package): fixed-seed Johnson, AdaIN and CycleGAN nets
    in the upstream checkpoint layouts, their upstream forward passes, and synthetic images."""
    spec = importlib.util.spec_from_file_location("bench_zoo", ROOT / "bench" / "zoo.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def one_torch_thread() -> Iterator[None]:
    """One torch thread for a module's tests: on two shared cores torch's own thread pool only
    adds contention to small jobs."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


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
def make_server(short_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., Any]]:
    """Start in-process engine servers on a Unix socket (or `endpoint=`); all stop at teardown.

    The runner defaults to the real pipeline, which checks a job's settings before it is queued; a
    test's own runner takes any settings, on the CPU. Keyword arguments go to ServerConfig. Taking
    `monkeypatch` makes the servers stop before a test's environment (its NST_HOME) is restored,
    so work still going at teardown never writes into the real home.
    """
    from engine.service.server import Server, ServerConfig
    from nst_common.endpoints import Endpoint

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
            pipeline.queue_of if runner is None else lambda spec: "cpu",
        )
        servers.append(server)
        return server.start()

    yield make
    for server in servers:
        server.shutdown()


@pytest.fixture
def engine_config(nst_env: dict[str, str], tmp_path: Path) -> Iterator[Path]:
    """An engine.json like install.py writes, for this venv; engines it starts are killed after."""
    import json
    import os
    import signal
    import time

    from engine import __version__
    from nst_common import engine_lock

    path = tmp_path / "plugin" / "engine.json"
    path.parent.mkdir()
    config = {"python": sys.executable, "env": {**nst_env, "OMP_NUM_THREADS": "1"}, "version": __version__}
    path.write_text(json.dumps(config), encoding="utf-8")
    yield path
    pid = engine_lock.holder(nst_env).get("pid")
    if isinstance(pid, int) and not _gone(pid):
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 10
        while not _gone(pid):
            if time.monotonic() > deadline:
                os.kill(pid, signal.SIGKILL)
            time.sleep(0.05)


def _gone(pid: int) -> bool:
    """Whether the process has exited (reaping it when it is this process's child)."""
    import os

    try:
        return os.waitpid(pid, os.WNOHANG)[0] == pid
    except ChildProcessError:  # not a child of this process: ask the kernel whether it exists
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        return False
