"""CycleGAN: one forward pass of a generator trained to translate photos into a painter's style
(or back, monet2photo). Models are junyanz/pytorch-CycleGAN-and-pix2pix's pretrained generators,
weights `cyclegan_<model>`.
"""

from __future__ import annotations

from engine.nets.inference import SingleModelMethod
from engine.nets.resnet_generator import load_resnet_generator

MODELS = ("style_monet", "style_cezanne", "style_ukiyoe", "style_vangogh", "monet2photo")

# Two stride-2 convs and two stride-2 transposed convs: sides must be multiples of 4.
METHOD = SingleModelMethod("cyclegan", MODELS, load_resnet_generator, multiple=4)
