"""Johnson et al. fast neural style: one forward pass of a network trained for one style, or for
several (a model from `nst train johnson` with several paintings), blended by the `mix` setting.

Models are pytorch/examples' fast_neural_style saved_models, weights `johnson_<model>`: the
manifest's johnson entries (weights/manifest.toml), plus the models trained here, are the list.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from engine import weights
from engine.errors import UserError
from engine.nets.inference import NetCost, SingleModelMethod
from engine.nets.transformer_net import load_transformer_net

# Two stride-2 convs and two 2x upsamplings: sides must be multiples of 4 to come back whole. The
# receptive-field radius is 57 px: 9x9 conv (4), two stride-2 convs (1 + 2), ten 3x3 convs at
# stride 4 (40), two upsampling convs (2 + 2 with the nearest upsampling) and the 9x9 output conv (4).
# NNPACK's Winograd workspace for the residual blocks (engine/nets/ops.py reflect_conv) adds about 185 bytes
# per pixel to the peak, measured at 1024 and 2048 px; it stays allocated in the worker thread.
# In tiles, a tile's heap holds more than one pass measured alone: 8192 px in tiles of 1024 px
# peaked at 3.10 GiB against a plan of 2.93 made with 650 (allocator configured as the engine runs).
COST = NetCost(multiple=4, halo=60, bytes_per_pixel=900, fixed_bytes=7 << 20)


def parse_mix(text: str, styles: list[str]) -> tuple[float, ...]:
    """`a=0.3,b=0.7` (names of the model's styles; those left out weigh 0) as weights summing to 1."""
    weights_by_name = dict.fromkeys(styles, 0.0)
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, _, value = item.partition("=")
        name = name.strip()
        if name not in weights_by_name:
            raise UserError(
                "bad-option", f"mix: the model has no style {name!r}; its styles: {', '.join(styles)}"
            )
        try:
            weights_by_name[name] = float(value) if value.strip() else 1.0
        except ValueError:
            raise UserError("bad-option", f"mix: {item!r} is not name=weight") from None
        if not 0.0 <= weights_by_name[name] < float("inf"):
            raise UserError("bad-option", f"mix: the weight of {name} must be 0 or more")
    total = sum(weights_by_name.values())
    if total <= 0:
        raise UserError("bad-option", f"mix: give at least one of {', '.join(styles)} a weight above 0")
    return tuple(w / total for w in weights_by_name.values())


class JohnsonMethod(SingleModelMethod):
    def settle(self, p: dict[str, Any]) -> None:
        """`mix` as one weight per style of the chosen model, summing to 1 (None: a one-style model,
        or the first style)."""
        styles = weights.trained_styles(self.weight_ids(p["model"])[0])
        if p["mix"] is not None and not styles:
            raise UserError(
                "bad-option", f"the johnson model {p['model']} holds one style; mix is for models of several"
            )
        p["mix"] = parse_mix(p["mix"], styles) if p["mix"] is not None else None

    def net_key(self, p: Mapping[str, Any]) -> tuple[Any, ...]:
        return (self.name, p["model"], p["mix"])

    def load(self, path: Path, p: Mapping[str, Any], device: torch.device) -> torch.nn.Module:
        return load_transformer_net(path, device, p["mix"])


METHOD = JohnsonMethod("johnson", load_transformer_net, COST)
