"""The time a job has left, in words: progress events carry it as `eta_s` (docs/protocol.md), and
the plug-in's progress text and `nst stylize`'s progress bar show it this way."""

from __future__ import annotations

import math


def describe(seconds: float) -> str:
    """'about 3 min left' and the like: rounded as a person would say it, never a false precision."""
    if not math.isfinite(seconds) or seconds < 0:
        return ""
    if seconds < 10:
        return "a few seconds left"
    if seconds < 55:
        return f"about {5 * round(seconds / 5)} s left"
    minutes = round(seconds / 60)
    if minutes < 60:
        return f"about {max(1, minutes)} min left"
    hours, rest = divmod(minutes, 60)
    return f"about {hours} h {rest} min left" if rest else f"about {hours} h left"
