"""`nst serve`, `ping`, `jobs`, `stop` and `token` as a user runs them: real processes, real TCP."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest


def _nst(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "engine", *args], capture_output=True, text=True, timeout=timeout
    )


def test_a_non_loopback_address_needs_a_token_first(nst_env: dict[str, str]) -> None:
    done = _nst("serve", "--listen", "0.0.0.0:0")
    assert done.returncode == 2 and "nst token" in done.stderr
    assert not (Path(nst_env["NST_HOME"]) / "token").exists()


def test_token_file_is_private(nst_env: dict[str, str]) -> None:
    done = _nst("token")
    path = Path(nst_env["NST_HOME"]) / "token"
    assert done.returncode == 0 and path.read_text().strip() in done.stdout
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    first = path.read_text()
    assert _nst("token").stdout == done.stdout
    assert _nst("token", "--new").returncode == 0 and path.read_text() != first
    path.chmod(0o644)
    assert _nst("serve", "--listen", "127.0.0.1:0").returncode == 2


def test_a_styles_dir_must_exist(nst_env: dict[str, str]) -> None:
    done = _nst("serve", "--listen", "127.0.0.1:0", "--styles-dir", "/nonexistent/styles")
    assert done.returncode == 2 and "no such folder" in done.stderr


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals and locks")
def test_serve_tcp_then_ping_jobs_refuse_a_second_engine_and_stop(nst_env: dict[str, str]) -> None:
    styles = Path(nst_env["NST_HOME"]).parent / "styles"
    styles.mkdir()
    engine = subprocess.Popen(
        [
            *(sys.executable, "-m", "engine", "serve", "--listen", "127.0.0.1:0", "--idle-timeout", "120"),
            *("--max-message", "512M", "--max-side", "20000", "--max-payload", "8M", "--chunk-size", "4M"),
            *("--styles-dir", str(styles), "--max-images", "1G", "--jobs-per-connection", "2"),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while (ping := _nst("ping")).returncode != 0:
            assert engine.poll() is None, engine.stderr.read() if engine.stderr else ""
            assert time.monotonic() < deadline, ping.stderr
            time.sleep(0.2)
        assert f"pid {engine.pid}" in ping.stdout and "tcp:127.0.0.1:" in ping.stdout
        assert "limits: 512 MiB of images per job, 20000 px a side" in ping.stdout
        assert stat.S_IMODE((Path(nst_env["NST_HOME"]) / "token").stat().st_mode) == 0o600

        assert _nst("jobs").stdout.strip() == "no jobs"
        second = _nst("serve")
        assert second.returncode == 2 and f"pid {engine.pid}" in second.stderr

        stop = _nst("stop")
        assert stop.returncode == 0 and "stopped" in stop.stdout
        assert engine.wait(10) == 0
        assert _nst("ping").returncode == 2
    finally:
        if engine.poll() is None:
            engine.kill()
            engine.wait()
        if engine.stderr:
            engine.stderr.close()
    log = Path(nst_env["NST_HOME"]) / "engine.log"
    assert "listening on tcp:127.0.0.1:" in log.read_text() and os.path.getsize(log) > 0
    assert stat.S_IMODE(log.stat().st_mode) == 0o600  # it names files: the user's only
