"""The engine's side of the settings declaration (nst_common/settings.py): a method's settings,
validated for type, range and finiteness, so a method never sees NaN, a negative size or an unknown
choice, and the user gets a message naming the setting."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from engine.errors import UserError
from nst_common import settings


def parse(method: str, raw: Mapping[str, Any], scope: str | None = "method") -> dict[str, Any]:
    """Every setting `method` takes (of `scope`), from `raw` or its default; UserError otherwise."""
    try:
        return settings.check(method, raw, scope)
    except settings.SettingError as exc:
        raise UserError("bad-option", str(exc)) from None
