"""The method registry: the methods declared in nst_common/settings.py, each the module or package
engine/methods/<name> with a METHOD."""

from __future__ import annotations

import importlib

from engine.errors import UserError
from engine.methods.base import Method
from nst_common import settings


def names() -> tuple[str, ...]:
    return settings.METHOD_NAMES


def get(name: str) -> Method:
    """The method called `name`; its module (and its torch code) is imported on first use."""
    if name not in settings.METHOD_NAMES:
        raise UserError("bad-option", f"unknown method {name!r}; choose one of: {', '.join(names())}")
    return importlib.import_module(f"engine.methods.{name}").METHOD
