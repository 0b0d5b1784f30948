"""Which architecture the file of each weights entry must be, and the check that it is.

`nst models import` and `pull` check a file here before it is pinned, and `nst models verify` checks
installed files, so that a file the engine cannot load (a picture, another model's checkpoint) is
never pinned under an entry's name. The check reads the file as the method's loader reads it and
compares its tensors, key for key and shape for shape, with the network the loader fills, built on
the meta device: what a strict load_state_dict checks, without the memory or the load.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from engine import sifid
from engine.backbones import adain as adain_backbone
from engine.backbones import vgg
from engine.backbones.base import VGG16, VggSpec, build_vgg
from engine.errors import BadCheckpoint
from engine.nets import adain_nets, resnet_generator, transformer_net
from engine.nets.state import layout_problem, read_state_dict
from engine.weights import Entry


@dataclass(frozen=True)
class Layout:
    """An architecture as a loader sees it: its name, the network it fills, how it reads a file."""

    arch: str
    build: Callable[[], nn.Module]
    read: Callable[[Path], dict[str, torch.Tensor]]


def _plain(arch: str, build: Callable[[], nn.Module]) -> Layout:
    """A layout whose loader takes the file's state dict as it is."""
    return Layout(arch, build, lambda path: read_state_dict(path, arch))


JOHNSON = Layout(transformer_net.ARCH, transformer_net.TransformerNet, transformer_net.read_state)
CYCLEGAN = Layout(resnet_generator.ARCH, resnet_generator.ResnetGenerator, resnet_generator.read_state)
ADAIN_ENCODER = _plain(adain_backbone.ARCH, lambda: build_vgg(adain_backbone.SPEC)[0])
ADAIN_DECODER = _plain(adain_nets.DECODER_ARCH, adain_nets.decoder_layers)
TORCHVISION = {
    "vgg19": Layout(vgg.ARCH, lambda: vgg.named_as_torchvision(build_vgg(vgg.SPEC)[0]), vgg.read_features),
    "vgg16": Layout(
        "torchvision VGG16",
        lambda: vgg.named_as_torchvision(build_vgg(VggSpec(VGG16))[0]),
        lambda path: vgg.read_features(path, "torchvision VGG16"),
    ),
    "inception_v3": _plain(sifid.ARCH, sifid.inception),
}


def layout_for(entry: Entry) -> Layout | None:
    """The layout the loader of `entry` expects, as the method picks its loader; None for an entry
    no torch loader reads (the HED backbone's Keras file, a method the engine does not have)."""
    if entry.method == "johnson":
        return JOHNSON
    if entry.method == "cyclegan":
        return CYCLEGAN
    if entry.method == "adain":
        return ADAIN_ENCODER if entry.arch.get("layout") == "vgg_normalised" else ADAIN_DECODER
    return TORCHVISION.get(entry.arch.get("torchvision", ""))


def check_file(entry: Entry, path: Path) -> None:
    """Raise BadCheckpoint unless `path` loads as the architecture of `entry`."""
    layout = layout_for(entry)
    if layout is None:
        return
    state = layout.read(path)
    with torch.device("meta"):
        network = layout.build()
    problem = layout_problem(network, state)
    if problem:
        raise BadCheckpoint(path, layout.arch, problem, readable=True)
