"""The content photos a network trains on: any folder of the user's pictures (or COCO), searched
recursively, read as square crops, in an order that a seed and the position alone decide.

The order is a fresh permutation per epoch from (seed, epoch), and a batch is the photos at global
positions [step * batch, (step + 1) * batch): so a resumed run, or a rank of a data-parallel run,
reads exactly the photos an uninterrupted single process would. A file that cannot be read is
skipped (the next one in the order takes its place) and counted, never fatal.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from engine.errors import UserError
from engine.imaging import images

EXTENSIONS = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff"}


def find_photos(folder: Path, option: str) -> list[str]:
    """The picture files under `folder` (given as `option`), as sorted paths relative to it."""
    if not folder.is_dir():
        raise UserError("bad-input", f"{folder} is not a folder; {option} takes a folder of pictures")
    found = sorted(
        str(p.relative_to(folder))
        for p in folder.rglob("*")
        if p.suffix.lower() in EXTENSIONS and p.is_file()
    )
    if not found:
        extensions = ", ".join(sorted(EXTENSIONS))
        raise UserError("bad-input", f"no pictures ({extensions}) in {folder} or its sub-folders")
    return found


def square_crop(
    picture: np.ndarray, side: int, zoom: float = 1.0, where: tuple[float, float] = (0.5, 0.5)
) -> np.ndarray:
    """The picture scaled so its short side is `zoom` x `side`, then the `side` x `side` square at
    `where` (0..1 down and across the room left). Zoom 1 at the centre is pytorch/examples' Resize +
    CenterCrop; zoom 2 anywhere is pytorch-AdaIN's Resize(512) + RandomCrop(256)."""
    height, width = picture.shape[:2]
    short = round(side * zoom)
    scale = short / min(height, width)
    size = (max(short, round(height * scale)), max(short, round(width * scale)))
    scaled = images.resize(picture, size)
    top, left = round((size[0] - side) * where[0]), round((size[1] - side) * where[1])
    return scaled[top : top + side, left : left + side]


def load_rgb(path: Path) -> np.ndarray:
    """HxWx3 float32 in 0..1 (grey repeated, alpha dropped); UserError when unreadable."""
    picture = images.load_image(path)
    if picture.shape[2] in (1, 2):
        picture = np.repeat(picture[..., :1], 3, axis=2)
    return np.ascontiguousarray(picture[..., :3])


def held_out(folder: Path, names: list[str]) -> tuple[list[str], str | None]:
    """The first readable picture as the validation picture, kept out of training (where there is
    more than one): the validation pictures show the network on one it never learnt from."""
    for index, name in enumerate(names):
        try:
            load_rgb(folder / name)
        except UserError:
            continue
        return (names[:index] + names[index + 1 :] if len(names) > 1 else names), str(folder / name)
    return names, None


class Photos:
    """Batches of square crops from a fixed list of photos, addressed by global position."""

    def __init__(self, folder: Path, names: list[str], side: int, seed: int, zoom: float = 1.0) -> None:
        self.folder = folder
        self.names = names
        self.side = side
        self.seed = seed
        self.zoom = zoom  # above 1: a crop of the picture scaled up, placed by the seed and position
        self.skipped: set[str] = set()
        self._orders: dict[int, torch.Tensor] = {}

    def _order(self, epoch: int) -> torch.Tensor:
        if epoch not in self._orders:
            generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._orders = {epoch: torch.randperm(len(self.names), generator=generator)}
        return self._orders[epoch]

    def at(self, position: int) -> np.ndarray:
        """The crop at global `position`, or the next readable photo in the order after it."""
        for offset in range(len(self.names)):
            epoch, index = divmod(position + offset, len(self.names))
            name = self.names[int(self._order(epoch)[index])]
            if name in self.skipped:
                continue
            try:
                return square_crop(
                    load_rgb(self.folder / name), self.side, self.zoom, self._where(position + offset)
                )
            except UserError:
                self.skipped.add(name)
        raise UserError("bad-input", f"none of the {len(self.names)} pictures in {self.folder} can be read")

    def _where(self, position: int) -> tuple[float, float]:
        if self.zoom == 1.0:
            return (0.5, 0.5)
        generator = torch.Generator().manual_seed((self.seed << 32) + position)  # positions < 2**32
        down, across = torch.rand(2, generator=generator, dtype=torch.float64).tolist()
        return down, across

    def batch(self, start: int, count: int) -> torch.Tensor:
        """Photos at positions start .. start + count - 1 as a (count, 3, side, side) tensor in 0..1."""
        crops = [self.at(start + i) for i in range(count)]
        return torch.from_numpy(np.stack(crops)).permute(0, 3, 1, 2).contiguous()
