"""`vgg19`: torchvision's ImageNet VGG19 (IMAGENET1K_V1), the classic Gatys backbone.

Looked up in the engine's weights dir, then in torch's hub cache where torchvision downloads it.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch

from engine.backbones.base import VGG19, Backbone, InputTransform, VggSpec, load_state, verify_sha256
from engine.errors import UserError
from engine.paths import weights_dir

NAME = "vgg19"
FILE = "vgg19-dcbb9e9d.pth"
URL = f"https://download.pytorch.org/models/{FILE}"
SPEC = VggSpec(VGG19)
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)

# torchvision convention: the name carries the first hex digits of the file's sha256.
_FILE_NAME = re.compile(r"vgg19-([0-9a-f]{8,64})\.pth")


def transform() -> InputTransform:
    return InputTransform(MEAN, [1 / s for s in STD], bgr=False)


def _search_dirs() -> list[Path]:
    return [weights_dir(), Path(torch.hub.get_dir()) / "checkpoints"]


def find() -> Path | None:
    """The canonical file if present anywhere, else any `vgg19-<sha prefix>.pth`, else None."""
    dirs = [d for d in _search_dirs() if d.is_dir()]
    for directory in dirs:
        if (directory / FILE).is_file():
            return directory / FILE
    for directory in dirs:
        for path in sorted(directory.iterdir()):
            if _FILE_NAME.fullmatch(path.name) and path.is_file():
                return path
    return None


def load(pooling: str) -> Backbone:
    path = find()
    if path is None:
        raise UserError(
            "missing-weights",
            f"backbone {NAME} needs {FILE}; download {URL} into {weights_dir()} "
            f"(or let torchvision cache it), or use the default backbone vgg16-hed",
        )
    match = _FILE_NAME.fullmatch(path.name)
    assert match is not None  # find() only returns matching names
    verify_sha256(path, match[1])
    state = torch.load(path, map_location="cpu", weights_only=True)
    features = {k.removeprefix("features."): v for k, v in state.items() if k.startswith("features.")}
    backbone = Backbone(NAME, SPEC, pooling, transform())
    load_state(backbone, features, path)
    return backbone
