"""The method registry: adding a method is one module plus one line here."""

from __future__ import annotations

import importlib

from engine.errors import UserError
from engine.methods.base import Method

_MODULES = {
    "gatys": "engine.methods.gatys",
    "johnson": "engine.methods.johnson",
    "adain": "engine.methods.adain",
    "cyclegan": "engine.methods.cyclegan",
}


def names() -> tuple[str, ...]:
    return tuple(_MODULES)


def get(name: str) -> Method:
    """The method called `name`; its module (and its torch code) is imported on first use."""
    if name not in _MODULES:
        raise UserError("bad-option", f"unknown method {name!r}; choose one of: {', '.join(_MODULES)}")
    return importlib.import_module(_MODULES[name]).METHOD
