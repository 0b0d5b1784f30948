"""The repository's shape: every module has its place in docs/architecture.md, and a checkout
without symlinks (Windows' core.symlinks=false) installs a plug-in that reaches its engine."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from test_install import TESTS_SITE, install, site_packages, venv_seeing

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("engine", "nst_common", "plugin/neural_style")


def tracked(*paths: str) -> list[str]:
    out = subprocess.run(["git", "ls-files", "-s", "--", *paths], cwd=REPO, capture_output=True, text=True)
    return out.stdout.splitlines()


def test_every_module_is_on_the_architecture_map() -> None:
    text = (REPO / "docs" / "architecture.md").read_text(encoding="utf-8")
    modules = sorted(
        str(path.relative_to(REPO)) for folder in PACKAGES for path in (REPO / folder).rglob("*.py")
    )
    assert len(modules) > 40
    missing = [m for m in modules if m not in text]
    assert not missing, f"docs/architecture.md does not place: {', '.join(missing)}"
    named = {part.rstrip("`,.:;)") for part in text.split() if part.endswith(".py") or ".py`" in part}
    gone = sorted(n for n in named if n.startswith(PACKAGES) and not (REPO / n.strip("`")).exists())
    assert not gone, f"docs/architecture.md names modules that do not exist: {', '.join(gone)}"


def test_no_symlink_is_committed() -> None:
    if not (REPO / ".git").exists():
        pytest.skip("not a git checkout")
    links = [line.split("\t", 1)[1] for line in tracked() if line.startswith("120000 ")]
    assert not links, f"symlinks break checkouts made with core.symlinks=false: {links}"


def test_a_checkout_without_symlinks_installs_a_plugin_that_starts_its_engine(tmp_path: Path) -> None:
    if not (REPO / ".git").exists() or not shutil.which("git"):
        pytest.skip("needs git and a git checkout to clone")
    checkout = tmp_path / "checkout"
    subprocess.run(
        ["git", "clone", "-q", "-c", "core.symlinks=false", str(REPO), str(checkout)], check=True, timeout=120
    )
    home, gimp, nst = tmp_path / "home", tmp_path / "gimp", tmp_path / "nst"
    home.mkdir()
    venv = venv_seeing(tmp_path / "venv", TESTS_SITE)
    done = install("--venv", str(venv), "--gimp-dir", str(gimp), "--nst-home", str(nst), home=home,
                   script=checkout / "install.py")  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert (site_packages(venv) / "engine" / "service" / "server.py").is_file()

    # The plug-in as GIMP would load it: its own folder first on the path, no engine package
    # beside it; its client starts the engine that engine.json names and says hello.
    plugin = gimp / "plug-ins" / "neural_style"
    assert not any(p.is_symlink() for p in plugin.rglob("*"))
    config = json.loads((plugin / "engine.json").read_text())
    assert config["python"] == str(venv / "bin" / "python")
    probe = (
        "import sys; sys.path.insert(0, sys.argv[1]); from client import EngineClient\n"
        "client = EngineClient(sys.argv[1] + '/engine.json')\n"
        "hello = client.hello()\n"
        "print(sorted(hello['methods']))\n"
    )
    run_dir = tmp_path / "run"
    env = {k: v for k, v in os.environ.items() if k not in ("NST_HOME", "PYTHONPATH")}
    env.update(HOME=str(home), NST_RUNTIME_DIR=str(run_dir))
    try:
        out = subprocess.run(
            [sys.executable, "-I", "-S", "-c", probe, str(plugin)],
            capture_output=True, text=True, env=env, cwd=tmp_path, timeout=180,
        )  # fmt: skip
        assert out.returncode == 0, out.stdout + out.stderr
        assert out.stdout.strip() == str(sorted(["adain", "cyclegan", "gatys", "johnson"])), out.stdout
    finally:
        stop = [str(venv / "bin" / "python"), "-m", "engine", "stop"]
        subprocess.run(stop, env={**env, "NST_HOME": str(nst)}, capture_output=True, timeout=60)
