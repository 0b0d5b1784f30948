"""Validation of method settings that arrive from the CLI or over the socket.

Every value a client can send is checked for type, range and finiteness here, so a method never
sees NaN, a negative size or an unknown choice, and the user gets a message naming the setting.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

from engine.errors import UserError

_MISSING = object()


def _bad(key: str, why: str) -> UserError:
    return UserError("bad-option", f"setting '{key}' {why}")


def number(raw: Mapping[str, Any], key: str, default: float, lo: float, hi: float) -> float:
    value = raw.get(key, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _bad(key, f"must be a number, got {value!r}")
    if not math.isfinite(value) or not lo <= value <= hi:
        raise _bad(key, f"must be between {lo:g} and {hi:g}, got {value!r}")
    return float(value)


def integer(raw: Mapping[str, Any], key: str, default: int | None, lo: int, hi: int) -> int | None:
    value = raw.get(key, default)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise _bad(key, f"must be a whole number, got {value!r}")
    if not lo <= value <= hi:
        raise _bad(key, f"must be between {lo} and {hi}, got {value!r}")
    return value


def choice(raw: Mapping[str, Any], key: str, default: str, options: Iterable[str]) -> str:
    value = raw.get(key, default)
    options = tuple(options)
    if value not in options:
        raise _bad(key, f"must be one of {', '.join(options)}; got {value!r}")
    return value


def boolean(raw: Mapping[str, Any], key: str, default: bool) -> bool:
    value = raw.get(key, default)
    if not isinstance(value, bool):
        raise _bad(key, f"must be true or false, got {value!r}")
    return value


def preserve_colors(raw: Mapping[str, Any], modes: tuple[str, ...]) -> str | bool:
    """`preserve_colors`: false, or one of `modes`; true means the first mode (luminance)."""
    value = raw.get("preserve_colors", False)
    if value is True:
        value = modes[0]
    if value is not False and value not in modes:
        allowed = ", ".join(["false", "true", *(repr(m) for m in modes)])
        raise _bad("preserve_colors", f"must be one of {allowed}; got {value!r}")
    return value


def layer_weights(
    raw: Mapping[str, Any], key: str, default: dict[str, float], known: Iterable[str]
) -> dict[str, float]:
    """A list of layer names (equal weights) or a mapping name -> weight, checked against `known`."""
    value = raw.get(key, default)
    if isinstance(value, (list, tuple)):
        value = {name: 1.0 for name in value}
    if not isinstance(value, Mapping) or not value:
        raise _bad(key, "must be a non-empty list of layer names or a mapping of layer name to weight")
    known = set(known)
    out: dict[str, float] = {}
    for name, weight in value.items():
        if name not in known:
            raise _bad(key, f"names an unknown layer {name!r}; known: {', '.join(sorted(known))}")
        out[name] = number({name: weight}, name, 1.0, 0.0, 1e6)
    return out


def reject_unknown(raw: Mapping[str, Any], allowed: Iterable[str]) -> None:
    """Catch typos: an unknown setting is an error, not silently ignored."""
    unknown = sorted(set(raw) - set(allowed))
    if unknown:
        raise UserError("bad-option", f"unknown setting(s): {', '.join(unknown)}")
