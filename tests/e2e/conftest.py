"""Fixtures of the GIMP 3 end-to-end tests (gimp_harness.py holds the functions behind them)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from gimp_harness import ensure_chroot, running_engine, short_dir


@pytest.fixture(scope="session")
def gimp_chroot() -> Path:
    return ensure_chroot()


@pytest.fixture
def work(tmp_path: Path) -> Iterator[Path]:
    """A short directory (Unix socket paths are limited to 107 bytes) bound into the chroot."""
    with short_dir(tmp_path.name[-12:]) as path:
        yield path


@pytest.fixture
def engine(work: Path) -> Iterator[Path]:
    """A real engine, started from the host venv, listening on a socket in the bound directory."""
    with running_engine(work) as sock:
        yield sock
