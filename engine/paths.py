"""Where the engine keeps its data: weights, tokens and config.

`NST_HOME` overrides the platform's user data directory so tests and portable installs stay
self-contained.
"""

from __future__ import annotations

import os
from pathlib import Path

import platformdirs

APP_NAME = "neural-style"


def data_dir() -> Path:
    """The directory for weights and other persistent engine data (created on demand)."""
    override = os.environ.get("NST_HOME")
    path = Path(override) if override else Path(platformdirs.user_data_dir(APP_NAME, appauthor=False))
    path.mkdir(parents=True, exist_ok=True)
    return path


def weights_dir() -> Path:
    path = data_dir() / "weights"
    path.mkdir(parents=True, exist_ok=True)
    return path
