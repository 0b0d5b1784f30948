"""Johnson et al. fast neural style: one forward pass of a network trained for one style.

Models are pytorch/examples' fast_neural_style saved_models, weights `johnson_<model>`.
"""

from __future__ import annotations

from engine.nets.inference import SingleModelMethod
from engine.nets.transformer_net import load_transformer_net

MODELS = ("candy", "mosaic", "rain_princess", "udnie")

# Two stride-2 convs and two 2x upsamplings: sides must be multiples of 4 to come back whole.
METHOD = SingleModelMethod("johnson", MODELS, load_transformer_net, multiple=4)
