"""Reading upstream checkpoints safely and strictly."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from engine.errors import UserError

# InstanceNorm layers without running statistics have no buffers, but checkpoints saved by older
# PyTorch versions still carry them (pytorch/examples saved_models, early CycleGAN releases).
_STALE_NORM_SUFFIXES = (".running_mean", ".running_var", ".num_batches_tracked")


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """The tensors in a `torch.save(state_dict)` file, loaded without running pickled code."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a truncated or foreign file: torch raises many kinds
        raise UserError("bad-weights", f"{path} is not a readable PyTorch weights file: {exc}") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise UserError("bad-weights", f"{path} does not hold a state dict of tensors")
    return state


def without_norm_stats(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """`state` minus the running-statistics buffers that stateless InstanceNorm layers ignore."""
    return {k: v for k, v in state.items() if not k.endswith(_STALE_NORM_SUFFIXES)}


def load_strict(module: nn.Module, state: dict[str, torch.Tensor], path: Path, what: str) -> None:
    """Copy `state` into `module`, turning a key or shape mismatch into a message about the file."""
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise UserError(
            "bad-weights", f"{path} does not hold {what} weights in the expected layout: {exc}"
        ) from None
