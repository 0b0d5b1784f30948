"""The dialog's list of trained models, from the engine's `hello`: which models a method has, which
are installed, and which weights choosing one that is not installed means downloading.

Standard library only, no GIMP: gimp_compat.py builds the list widget from it and the tests run it
with the host Python.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Model:
    """One model of a model method, as the engine's `hello` lists it (docs/protocol.md)."""

    id: str
    installed: bool
    weights: tuple[str, ...]  # the manifest ids a download fetches
    size: int | None = None  # bytes a download fetches, where the manifest knows

    def label(self) -> str:
        """The list's line: "candy (installed)", "mosaic — download, 6.4 MiB"."""
        if self.installed:
            return f"{self.id} (installed)"
        return f"{self.id} — download" + (f", {self.size / (1 << 20):.1f} MiB" if self.size else "")


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
            out[name].append(Model(m["id"], m.get("installed") is True, tuple(weights), size))
    return out


def selected(models: list[Model], current: str) -> str:
    """The model the list shows chosen: `current` when the method has it, else the first installed
    one (what the engine runs when none is chosen), else the first; "" when there are none."""
    if any(m.id == current for m in models):
        return current
    return next((m.id for m in models if m.installed), models[0].id if models else "")


def to_download(known: dict[str, list[Model]], method: str, model: str) -> Model | None:
    """The chosen model when it has to be downloaded before the run: known to the engine and not
    installed. None for an installed or unknown model, and for methods that take style images."""
    return next((m for m in known.get(method, ()) if m.id == model and not m.installed), None)
