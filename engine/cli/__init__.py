"""The `nst` command: argument parsing and printing only."""

from __future__ import annotations

import argparse
import sys
from types import ModuleType

from engine import __version__
from engine.compute import allocator


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="nst", description="Neural style transfer engine.")
    parser.add_argument("--version", action="version", version=f"nst {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    for module in _command_modules():
        module.register(sub)
    return parser


def _command_modules() -> list[ModuleType]:
    """Each area of the CLI lives in its own module with a `register(subparsers)` function."""
    from engine.cli import models, quality, serve, stylize, train

    return [stylize, quality, serve, models, train]


def main(argv: list[str] | None = None) -> int:
    allocator.configure()  # before any thread allocates: see engine/compute/allocator.py
    from engine.errors import UserError

    args = build_parser().parse_args(argv)
    try:
        return int(args.handler(args) or 0)
    except UserError as exc:
        print(f"nst: error: {exc.message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("nst: interrupted", file=sys.stderr)
        return 130
