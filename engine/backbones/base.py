"""The VGG-shaped Backbone module every backbone source fills with its weights, and the file checks.

One flat layer list mirrors the upstream `nn.Sequential` index for index, so state dicts load
without renaming and a forward pass can stop right after the deepest tap it was asked for.
"""

from __future__ import annotations

import hashlib
import itertools
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from engine.backbones import winograd
from engine.compute.tune import FP32, ComputePath
from engine.errors import UserError

POOLINGS = ("max", "avg")
WIDTHS = (64, 128, 256, 512, 512)


@dataclass(frozen=True)
class VggSpec:
    """The shape of a VGG feature stack, enough to rebuild any of the upstream layouts."""

    convs_per_block: tuple[int, ...]  # VGG16: (2, 2, 3, 3, 3), VGG19: (2, 2, 4, 4, 4)
    reflect_pad: bool = False  # AdaIN's vgg_normalised pads with ReflectionPad2d modules
    ceil_mode: bool = False  # Caffe-derived nets round pooled sizes up
    stem: bool = False  # AdaIN's vgg_normalised starts with a 1x1 conv 3->3 that does the preprocessing


VGG16 = (2, 2, 3, 3, 3)
VGG19 = (2, 2, 4, 4, 4)


class InputTransform(nn.Module):
    """Maps RGB 0..1 to the input the first conv was trained on: (x[:, order] - mean) * scale."""

    def __init__(self, mean: Sequence[float], scale: Sequence[float], bgr: bool) -> None:
        super().__init__()
        self.bgr = bgr
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("scale", torch.tensor(scale, dtype=torch.float32).view(1, 3, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.bgr:
            x = x.flip(1)
        return (x - self.mean) * self.scale


def check_pooling(pooling: str) -> None:
    if pooling not in POOLINGS:
        raise UserError("bad-option", f"unknown pooling {pooling!r}; choose one of: {', '.join(POOLINGS)}")


def build_vgg(spec: VggSpec, pooling: str = "max") -> tuple[nn.Sequential, dict[str, int]]:
    """The flat layer list for `spec` (untrained) and, per tap `reluB_L`, the index of that ReLU.

    In-place ReLU is safe everywhere: it only overwrites a fresh conv or pool output (the forward
    pass may pool before the ReLU, Backbone.forward), and whatever follows a ReLU (conv, pad, pool)
    never modifies its input, so a returned tap stays intact.
    """
    check_pooling(pooling)
    layers: list[nn.Module] = []
    taps: dict[str, int] = {}
    if spec.stem:
        layers.append(nn.Conv2d(3, 3, 1))
    channels = 3
    for block, (count, width) in enumerate(zip(spec.convs_per_block, WIDTHS, strict=True), start=1):
        if block > 1:
            pool = nn.MaxPool2d if pooling == "max" else nn.AvgPool2d
            layers.append(pool(2, 2, ceil_mode=spec.ceil_mode))
        for layer in range(1, count + 1):
            if spec.reflect_pad:
                layers += [nn.ReflectionPad2d(1), nn.Conv2d(channels, width, 3)]
            else:
                layers.append(nn.Conv2d(channels, width, 3, padding=1))
            layers.append(nn.ReLU(inplace=True))
            taps[f"relu{block}_{layer}"] = len(layers) - 1
            channels = width
    return nn.Sequential(*layers), taps


class Backbone(nn.Module):
    """A frozen VGG feature extractor that returns the activations at the named taps."""

    name: str
    tap_names: tuple[str, ...]

    def __init__(self, name: str, spec: VggSpec, pooling: str, transform: nn.Module) -> None:
        super().__init__()
        self.name = name
        self.pooling = pooling
        self.transform = transform
        with torch.device("meta"):  # every loader overwrites all weights: skip the default init
            self.layers, self._tap_index = build_vgg(spec, pooling)
        self.layers.to_empty(device="cpu")
        self.tap_names = tuple(self._tap_index)
        self._flat = list(self.layers)  # plain list: indexing an nn.Sequential builds objects
        # ReLUs that a max pool follows: where such a ReLU is no tap, the pool runs first
        self._pooled_relus = frozenset(
            i
            for i, (layer, after) in enumerate(itertools.pairwise(self._flat))
            if isinstance(layer, nn.ReLU) and isinstance(after, nn.MaxPool2d)
        )
        # conv index -> (its weight's storage and version, the input-gradient kernel made from it)
        self._rotated: dict[int, tuple[tuple[int, int], torch.Tensor]] = {}

    def forward(
        self, image: torch.Tensor, taps: Sequence[str], path: ComputePath = FP32
    ) -> dict[str, torch.Tensor]:
        """image: (N,3,H,W) float RGB in 0..1. Runs the layers only up to the deepest requested tap.

        `path` (engine/compute/tune.py) says how: under autocast in reduced precision, with the 3x3
        convs through NNPACK. The taps come back in float32 either way, so the losses and their sums
        stay exact; the caller puts image and weights in `path.layout`.
        """
        try:
            wanted = {self._tap_index[tap]: tap for tap in taps}
        except KeyError as exc:
            choices = ", ".join(self.tap_names)
            raise UserError(
                "bad-option", f"backbone {self.name} has no layer {exc.args[0]!r}; choose from: {choices}"
            ) from None
        out: dict[str, torch.Tensor] = {}
        if not wanted:
            return out
        x = self.transform(image)
        fast = path.winograd and winograd.available(x)
        last = max(wanted)
        with path.autocast(image.device):
            index = 0
            while index <= last:
                layer = self._flat[index]
                if fast and isinstance(layer, nn.Conv2d) and winograd.applies(layer, x):
                    x = winograd.conv(layer, x, self._rotated_kernel(index))
                elif index in self._pooled_relus and index not in wanted:
                    # max(relu(a), relu(b)) = relu(max(a, b)), gradient included: the ReLU runs on
                    # the pooled quarter of the positions, forward and backward.
                    x = layer(self._flat[index + 1](x))
                    index += 1
                else:
                    x = layer(x)
                if index in wanted:
                    out[wanted[index]] = x
                index += 1
        return {tap: f.float() for tap, f in out.items()}

    def _rotated_kernel(self, index: int) -> torch.Tensor:
        weight = self._flat[index].weight
        key = (weight.data_ptr(), weight._version)  # loading or moving the weights makes a new one
        if index not in self._rotated or self._rotated[index][0] != key:
            self._rotated[index] = (key, winograd.rotated_kernel(self._flat[index]))
        return self._rotated[index][1]

    def convs(self) -> dict[str, nn.Conv2d]:
        """The conv that feeds each tap, keyed by tap name (loaders fill these in depth order)."""
        return {tap: self._flat[index - 1] for tap, index in self._tap_index.items()}

    def freeze(self, device: torch.device | str) -> Backbone:
        """Eval mode, no parameter gradients, on `device`: how every backbone is handed out."""
        self.to(device).eval()
        for param in self.parameters():
            param.requires_grad_(False)
        return self


_verified: set[tuple[str, int, int, str]] = set()
_verified_lock = threading.Lock()


def verify_sha256(path: Path, expected: str) -> None:
    """Raise UserError unless the file's sha256 starts with `expected` (a full digest or a prefix).

    Remembered by path, mtime and size, so a long-lived engine hashes each file once.
    """
    stat = path.stat()
    key = (str(path.resolve()), stat.st_mtime_ns, stat.st_size, expected)
    with _verified_lock:
        if key in _verified:
            return
    digest = hashlib.sha256()
    with path.open("rb") as file:
        for chunk in iter(lambda: file.read(1 << 20), b""):
            digest.update(chunk)
    actual = digest.hexdigest()
    if not actual.startswith(expected):
        raise UserError(
            "checksum-mismatch",
            f"{path} is damaged or not the expected file (sha256 {actual[:16]}…, expected {expected[:16]}…); "
            "delete it and install it again",
        )
    with _verified_lock:
        _verified.add(key)
