"""What the engine offers, from its `hello`: the methods it runs and their installed models (which
the validation reads), the dialog's status lines, and the dialog's list of trained models: which
models a method has, which are installed, and which weights choosing one that is not installed
means downloading.

Standard library only, no GIMP: dialog.py builds the widgets from it and the tests run it with the
host Python.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from i18n import _
from settings import METHODS


@dataclass(frozen=True)
class Model:
    """One model of a model method, as the engine's `hello` lists it (docs/protocol.md)."""

    id: str
    installed: bool
    weights: tuple[str, ...]  # the manifest ids a download fetches
    size: int | None = None  # bytes a download fetches, where the manifest knows
    styles: tuple[str, ...] = ()  # the paintings of a model trained on several: what a mix names

    def label(self) -> str:
        """The list's line: "candy (installed)", "mosaic — download, 6.4 MiB"."""
        if self.installed:
            return _("{model} (installed)").format(model=self.id)
        if self.size:
            return _("{model} — download, {mib:.1f} MiB").format(model=self.id, mib=self.size / (1 << 20))
        return _("{model} — download").format(model=self.id)


def known_models(hello: dict[str, Any]) -> dict[str, list[Model]]:
    """Method name -> its models, installed or not, for the methods that run trained models; from a
    `hello` reply or its `capabilities`. Malformed entries are left out."""
    caps = hello.get("capabilities", hello)
    methods = caps.get("methods") if isinstance(caps, dict) else None
    out: dict[str, list[Model]] = {}
    for name, info in (methods if isinstance(methods, dict) else {}).items():
        listed = info.get("models") if isinstance(info, dict) else None
        if not isinstance(listed, list):
            continue
        out[name] = []
        for m in listed:
            if not isinstance(m, dict) or not isinstance(m.get("id"), str) or not m["id"]:
                continue
            weights = m.get("weights")
            if not isinstance(weights, list) or not all(isinstance(w, str) for w in weights):
                weights = [f"{name}_{m['id']}"]  # the engine's naming, for an engine that omits them
            size = m.get("size")
            size = size if isinstance(size, int) and not isinstance(size, bool) and size > 0 else None
            styles = m.get("styles")
            styles = (
                tuple(styles) if isinstance(styles, list) and all(isinstance(x, str) for x in styles) else ()
            )
            out[name].append(Model(m["id"], m.get("installed") is True, tuple(weights), size, styles))
    return out


def selected(models: list[Model], current: str) -> str:
    """The model the list shows chosen: `current` when the method has it, else the first installed
    one (what the engine runs when none is chosen), else the first; "" when there are none."""
    if any(m.id == current for m in models):
        return current
    return next((m.id for m in models if m.installed), models[0].id if models else "")


def mix_hint(models: list[Model], model: str) -> str:
    """What the Style mix field shows for the chosen model: an even mix of its paintings, as the
    field takes it ("" for a model of one painting)."""
    styles = next((m.styles for m in models if m.id == model), ())
    if not styles:
        return ""
    share = 1 / len(styles)
    return ", ".join(f"{name}={share:.2g}" for name in styles)


def to_download(known: dict[str, list[Model]], method: str, model: str) -> Model | None:
    """The chosen model when it has to be downloaded before the run: known to the engine and not
    installed. None for an installed or unknown model, and for methods that take style images."""
    return next((m for m in known.get(method, ()) if m.id == model and not m.installed), None)


def method_models(hello: dict[str, Any]) -> dict[str, list[str] | None]:
    """Methods the engine offers, from its `hello` reply: name -> installed models, or None for
    a method that runs no models.

    The reply carries `capabilities.methods` as {name: {"has_models": bool, "models":
    [{"id": ..., "installed": bool}, ...]}}.
    """
    caps = hello.get("capabilities", hello)
    out: dict[str, list[str] | None] = {}
    for name, info in (caps.get("methods") or {}).items():
        info = info if isinstance(info, dict) else {}
        if not info.get("has_models", isinstance(info.get("models"), list)):
            out[name] = None
        else:
            out[name] = [
                m["id"] for m in info.get("models") or [] if isinstance(m, dict) and m.get("installed")
            ]
    return out


def describe_methods(available: dict[str, list[str] | None]) -> str:
    """One line per method for the dialog: what can run now, and how to fix what cannot."""
    lines = []
    for name in METHODS:
        if name not in available:
            lines.append(_("{method}: not offered by this engine").format(method=name))
        elif available[name] is None:
            lines.append(_("{method}: ready").format(method=name))
        elif available[name]:
            models = ", ".join(available[name] or [])
            lines.append(_("{method}: models {models}").format(method=name, models=models))
        else:
            lines.append(
                _("{method}: no models installed yet (choose one to download it)").format(method=name)
            )
    return "\n".join(lines)
