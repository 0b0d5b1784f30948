"""CycleGAN: one forward pass of a generator trained to translate photos into a painter's style
(or back, monet2photo). Models are junyanz/pytorch-CycleGAN-and-pix2pix's pretrained generators,
weights `cyclegan_<model>`: the manifest's cyclegan entries (weights/manifest.toml) are the list of
them.
"""

from __future__ import annotations

from engine.nets.inference import NetCost, SingleModelMethod
from engine.nets.resnet_generator import load_resnet_generator

# Two stride-2 convs and two stride-2 transposed convs: sides must be multiples of 4. The
# receptive-field radius is 87 px: 7x7 conv (3), two stride-2 convs (1 + 2), eighteen 3x3 convs at
# stride 4 (72), two transposed convs (about 4 + 2) and the 7x7 output conv (3).
# NNPACK's Winograd workspace for the residual blocks (engine/nets/ops.py reflect_conv) adds about 205 bytes
# per pixel to the peak, measured at 1024 and 2048 px; it stays allocated in the worker thread.
COST = NetCost(multiple=4, halo=88, bytes_per_pixel=920, fixed_bytes=46 << 20)
METHOD = SingleModelMethod("cyclegan", load_resnet_generator, COST)
