"""Reading upstream checkpoints safely and strictly.

Every problem is a BadCheckpoint whose reason is a few words: never torch's own text, which dumps
every key or suggests loading with `weights_only=False`.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from torch import nn

from engine.errors import BadCheckpoint, UserError

# InstanceNorm layers without running statistics have no buffers, but checkpoints saved by older
# PyTorch versions still carry them (pytorch/examples saved_models, early CycleGAN releases).
_STALE_NORM_SUFFIXES = (".running_mean", ".running_var", ".num_batches_tracked")
# What a file torch cannot read often is, by its first bytes: a picture or a page given in its place.
_KINDS = (
    (b"\xff\xd8\xff", "a JPEG image"),
    (b"\x89PNG\r\n\x1a\n", "a PNG image"),
    (b"GIF8", "a GIF image"),
    (b"\x89HDF\r\n\x1a\n", "an HDF5 file"),
)
_SHOWN = 3  # keys named in a message
_KEY_CHARS = 60  # characters of a key named in a message (a file's keys can be anything)


def read_state_dict(path: Path, arch: str) -> dict[str, torch.Tensor]:
    """The tensors in a `torch.save(state_dict)` file, loaded without running pickled code; `arch`
    is what the file is read as, for the message when it is not one."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch warns about some pickles before refusing them
            state = torch.load(path, map_location="cpu", weights_only=True)
    except OSError as exc:
        raise UserError("bad-weights", f"cannot read {path}: {exc.strerror or exc}") from None
    except Exception as exc:  # a truncated or foreign file: torch raises many kinds
        raise BadCheckpoint(path, arch, _unreadable(path, exc), readable=False) from None
    if not isinstance(state, dict):
        reason = f"it holds a Python {type(state).__name__}, not a state dict"
        raise BadCheckpoint(path, arch, reason, readable=True)
    for key, value in state.items():
        if not isinstance(key, str):
            reason = f"it is not a state dict: its key {_key(key)} is not a name"
            raise BadCheckpoint(path, arch, reason, readable=True)
        if not isinstance(value, torch.Tensor):
            reason = f"it is not a state dict of tensors: {_key(key)!r} holds a Python {type(value).__name__}"
            raise BadCheckpoint(path, arch, reason, readable=True)
    return state


def _unreadable(path: Path, exc: Exception) -> str:
    """Why torch could not read `path`, in a few words."""
    unsafe = re.search(r"GLOBAL ([\w.]+)", str(exc))
    if unsafe:  # e.g. torch.save(model) rather than torch.save(model.state_dict())
        return f"it holds a pickled {unsafe[1][:_KEY_CHARS]}; only tensors are loaded, never pickled objects"
    with open(path, "rb") as file:
        head = file.read(16)
    if not head:
        return "the file is empty"
    for magic, kind in _KINDS:
        if head.startswith(magic):
            return f"it is {kind}"
    if head.lstrip().startswith(b"<"):
        return "it is an HTML or XML page"
    if head.startswith(b"PK\x03\x04"):
        return "a zip file torch cannot read: damaged, cut short, or not written by torch.save"
    return "it is not in the format torch.save writes"


def without_norm_stats(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """`state` minus the running-statistics buffers that stateless InstanceNorm layers ignore."""
    return {k: v for k, v in state.items() if not k.endswith(_STALE_NORM_SUFFIXES)}


def layout_problem(module: nn.Module, state: Mapping[str, torch.Tensor]) -> str | None:
    """Why `state` would not load into `module` with a strict load_state_dict (the first keys that
    differ), or None when it would. `module` may be on the meta device: only its shapes are read."""
    expected = module.state_dict()
    missing = [key for key in expected if key not in state]
    unexpected = [key for key in state if key not in expected]
    parts = [_keys(keys, what) for keys, what in ((missing, "missing"), (unexpected, "unexpected")) if keys]
    if parts:
        return "; ".join(parts)
    for key, tensor in expected.items():
        if state[key].shape != tensor.shape:
            return f"{key} has shape {tuple(state[key].shape)}, not {tuple(tensor.shape)}"
    return None


def _keys(keys: Sequence[object], what: str) -> str:
    """'48 missing keys like a, b, c', or all of them where there are few: 'missing key a'."""
    named = ", ".join(_key(key) for key in keys[:_SHOWN])
    if len(keys) > _SHOWN:
        return f"{len(keys)} {what} keys like {named}"
    return f"{what} key{'s' if len(keys) > 1 else ''} {named}"


def _key(key: object) -> str:
    """A key of a file as a message shows it: printable and short, whatever the file holds."""
    text = key if isinstance(key, str) and key.isprintable() else repr(key)
    return text if len(text) <= _KEY_CHARS else text[: _KEY_CHARS - 1] + "…"


def load_strict(module: nn.Module, state: dict[str, torch.Tensor], path: Path, arch: str) -> None:
    """Copy `state` into `module`; a key or shape mismatch is a BadCheckpoint naming a few keys."""
    problem = layout_problem(module, state)
    if problem:
        raise BadCheckpoint(path, arch, problem, readable=True)
    module.load_state_dict(state, strict=True)
