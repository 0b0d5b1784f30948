"""Johnson et al. fast neural style: one forward pass of a network trained for one style.

Models are pytorch/examples' fast_neural_style saved_models, weights `johnson_<model>`: the
manifest's johnson entries (weights/manifest.toml) are the list of them.
"""

from __future__ import annotations

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
METHOD = SingleModelMethod("johnson", load_transformer_net, COST)
