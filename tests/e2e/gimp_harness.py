"""The e2e harness in plain functions: the chroot's checks, a short work directory, a real engine,
the plug-in installed by install.py, and GIMP running a batch script. conftest.py wraps them in
fixtures; tests that need them at a wider scope call them directly.

GIMP 3 runs in a Debian trixie chroot (tools/gimp3-chroot.sh); the plug-in talks to an engine
started from the host venv through a Unix socket in a directory bound into the chroot.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
CHROOT = REPO / "tools" / "gimp3-chroot.sh"
HERE = Path(__file__).resolve().parent


def skip_reason() -> str | None:
    if sys.platform != "linux":
        return "the GIMP 3 chroot harness is Linux-only"
    if os.geteuid() != 0:
        return "the GIMP 3 chroot harness needs root (chroot, mount, unshare)"
    if not shutil.which("unshare") or not shutil.which("chroot"):
        return "unshare/chroot are not installed"
    return None


def ensure_chroot() -> Path:
    """The chroot's path, built on first use (needs root, debootstrap and the Debian mirror)."""
    reason = skip_reason()
    if reason:
        pytest.skip(reason)
    subprocess.run([str(CHROOT), "ensure"], check=True, timeout=900)
    return Path(
        subprocess.run([str(CHROOT), "path"], check=True, capture_output=True, text=True).stdout.strip()
    )


@contextmanager
def short_dir(tag: str) -> Iterator[Path]:
    """A short directory (Unix socket paths are limited to 107 bytes), to bind into the chroot."""
    path = Path(f"/tmp/nst-e2e-{os.getpid()}-{tag}")
    path.mkdir()
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def engine_env(home: Path) -> dict[str, str]:
    """The environment of the engine with data directory `home`, for `nst` commands too."""
    return dict(os.environ, NST_HOME=str(home))


@contextmanager
def running_engine(
    work: Path, home: Path | None = None, name: str = "engine", listen: str | None = None
) -> Iterator[Path | str]:
    """A real engine, started from the host venv, listening on `work`/run/`name`.sock, or on
    `listen` (e.g. "tcp:127.0.0.1:PORT"); yields the socket's path or `listen`. Its data directory
    is `home` (default `work`/home) and its output goes to `work`/`name`.out. Its runtime directory
    (lock, token) is its own too: the default one is shared by every engine of the user, and one
    engine per runtime directory may run."""
    sock = work / "run" / f"{name}.sock"
    sock.parent.mkdir(exist_ok=True)
    out = work / f"{name}.out"
    log = open(out, "wb")  # noqa: SIM115 - closed below
    env = {**engine_env(home or work / "home"), "NST_RUNTIME_DIR": str(work / "run" / name)}
    endpoint = listen or f"unix:{sock}"
    proc = subprocess.Popen(
        [sys.executable, "-m", "engine", "serve", "--listen", endpoint],
        cwd=REPO,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 60
        while not _listening(endpoint):
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                pytest.fail(f"the engine did not start: {out.read_text()}")
            time.sleep(0.2)
        yield listen or sock
    finally:
        proc.terminate()
        proc.wait(30)
        log.close()


def _listening(endpoint: str) -> bool:
    """The socket file exists, or the TCP port takes a connection."""
    kind, _, where = endpoint.partition(":")
    if kind == "unix":
        return Path(where).exists()
    host, _, port = where.rpartition(":")
    try:
        socket.create_connection((host, int(port)), 0.5).close()
        return True
    except OSError:
        return False


def install_plugin(work: Path, engine_config: dict) -> Path:
    """Install the plug-in with the real install.py (into the test's venv and a private GIMP folder),
    then point its engine.json at the engine outside the chroot: GIMP inside cannot run the host's
    interpreter, so the config names the socket and an interpreter that cannot start."""
    subprocess.run(
        [sys.executable, str(REPO / "install.py"), "--venv", sys.prefix, "--gimp-dir", str(work / "gimp3")],
        check=True,
        capture_output=True,
        timeout=300,
    )
    target = work / "gimp3" / "plug-ins" / "neural_style"
    config = json.loads((target / "engine.json").read_text())
    (target / "engine.json").write_text(json.dumps({**config, **engine_config}))
    return target


def run_gimp_batch(
    work: Path,
    script: Path,
    args: dict,
    gui: bool = False,
    timeout: float = 240,
    gimp_env: dict[str, str] | None = None,
) -> dict:
    """Run `script` in GIMP inside the chroot (gimp-console, or the GUI under Xvfb when `gui`);
    it reports through args["out"]. `gimp_env`: variables for GIMP (and so its plug-ins), such as
    LANGUAGE; the chroot starts from an empty environment."""
    args_path = work / "args.json"
    args["out"] = str(work / "findings.json")
    args_path.write_text(json.dumps(args))
    text = f"E2E_DIR = {str(HERE)!r}\nARGS_PATH = {str(args_path)!r}\n" + script.read_text()
    env = dict(os.environ, NST_CHROOT_BINDS=str(work))
    gimp = ["gimp-3.0", "-n", "--no-splash"] if gui else ["gimp-console-3.0", "-idf"]
    batch = ["--batch-interpreter", "python-fu-eval", "-b", "-"] + ([] if gui else ["--quit"])
    xvfb = ["xvfb-run", "-a", "-s", "-screen 0 1280x1024x24"] if gui else []
    proc = subprocess.Popen(
        [
            str(CHROOT),
            "run",
            *xvfb,
            "env",
            f"GIMP3_DIRECTORY={work / 'gimp3'}",
            *(f"{key}={value}" for key, value in (gimp_env or {}).items()),
            *gimp,
            *batch,
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        start_new_session=True,  # so a timeout can kill GIMP and its plug-ins too
    )
    try:
        stdout, stderr = proc.communicate(text, timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        stdout, stderr = proc.communicate()
        pytest.fail(f"GIMP did not finish in {timeout} s:\n{stdout}\n{stderr}")
    out = Path(args["out"])
    assert out.exists(), f"GIMP wrote no findings (rc {proc.returncode}):\n{stdout}\n{stderr}"
    findings = json.loads(out.read_text())
    assert "exception" not in findings, findings["exception"] + stderr
    findings["gimp_output"] = stdout + stderr
    return findings


def write_style(path: Path) -> None:
    from PIL import Image

    img = Image.new("RGB", (48, 48))
    img.putdata(
        [((x * 40) % 256, (y * 60) % 256, ((x ^ y) * 30) % 256) for y in range(48) for x in range(48)]
    )
    img.save(path)
