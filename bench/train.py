"""Johnson training throughput: `nst train johnson` as users run it against pytorch/examples'
training loop, on the same photos, size, batch and loss network, in one run.

The reference follows fast_neural_style/neural_style/neural_style.py train() step by step: the
photos read, resized and centre-cropped in the loop (its DataLoader has no workers), x255,
TransformerNet (bench/zoo.py's faithful copy), Vgg16's four slices to relu1_2, relu2_2, relu3_3 and
relu4_3, normalize_batch, gram_matrix / (c h w), MSE content loss at relu2_2 and style loss on the
Grams, Adam at 1e-3, fp32. Its loss network is the engine's default (vgg16-hed, the same weights
through torchvision's VGG16 stack), with that network's own input transform in place of
normalize_batch's ImageNet statistics. The engine runs through engine.training.loop.train, on
the compute path it measures fastest here, and on fp32 with and without NNPACK's Winograd kernel
in the loss network and the residual blocks (the latter forced through NST_PRECISION: no setting
names it).

Each side trains `--steps` steps after `--warmup` untimed ones; the reference runs before and after
the engine, and its two times are averaged against drift in the machine's speed.

    .venv/bin/python bench/train.py                    # 256 px, batch 4: ~6 min on 2 CPU cores
    .venv/bin/python bench/train.py --size 64 --steps 2 --warmup 1
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT / "tests"))

import reference_gatys as ref  # noqa: E402
import zoo  # noqa: E402
from helpers import drawn_scene  # noqa: E402
from PIL import Image  # noqa: E402

from engine.backbones import hed, load_backbone  # noqa: E402
from engine.compute import allocator, tune  # noqa: E402
from engine.compute.devices import gpu_name, synchronize  # noqa: E402
from engine.training import johnson, loop  # noqa: E402
from engine.training.photos import find_photos, load_rgb, square_crop  # noqa: E402
from engine.training.settings import PRECISIONS  # noqa: E402

IMAGES = ROOT.parent / "shared" / "images"
STYLE = IMAGES / "style" / "woman_with_hat_matisse.jpg"
CONTENT_WEIGHT, STYLE_WEIGHT, LR = 1e5, 1e10, 1e-3  # pytorch/examples' defaults


class RefVgg16(nn.Module):
    """pytorch/examples vgg.py Vgg16: four slices of VGG16's features, their outputs returned."""

    def __init__(self, features: nn.Sequential) -> None:
        super().__init__()
        self.slices = nn.ModuleList([features[0:4], features[4:9], features[9:16], features[16:23]])
        for param in self.parameters():
            param.requires_grad = False

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        out = []
        for block in self.slices:
            x = block(x)
            out.append(x)
        return out  # relu1_2, relu2_2, relu3_3, relu4_3


def ref_gram_matrix(y: torch.Tensor) -> torch.Tensor:
    b, ch, h, w = y.size()
    features = y.view(b, ch, w * h)
    return features.bmm(features.transpose(1, 2)) / (ch * h * w)


class ReferenceLoop:
    """neural_style.py train(), one step at a time, on `names` under `folder`."""

    def __init__(
        self, folder: Path, names: list[str], style: np.ndarray, size: int, batch: int, device: torch.device
    ) -> None:
        backbone = load_backbone("vgg16-hed")
        features = ref.torchvision_features("vgg16", ceil_mode=True)
        ref.copy_conv_weights(features, [m for m in backbone.layers if isinstance(m, nn.Conv2d)])
        self.device = device
        self.vgg = RefVgg16(features).to(device)
        # BGR 0..255 minus the mean
        self.normalise = ref.Normalization(hed.MEAN_BGR, [1.0] * 3, bgr=True).to(device)
        self.folder, self.names, self.size, self.batch = folder, names, size, batch
        torch.manual_seed(0)
        self.transformer = zoo.RefTransformerNet().to(device)
        self.optimizer = torch.optim.Adam(self.transformer.parameters(), LR)
        style_t = torch.from_numpy(style).permute(2, 0, 1)[None].mul(255).repeat(batch, 1, 1, 1).to(device)
        self.gram_style = [ref_gram_matrix(y) for y in self.vgg(self.normalize_batch(style_t))]
        self.position = 0

    def normalize_batch(self, batch: torch.Tensor) -> torch.Tensor:
        """The loss network's input from 0..255 (upstream: ImageNet statistics; here HED's)."""
        return self.normalise(batch)

    def step(self) -> None:
        crops = []
        for _ in range(self.batch):  # ImageFolder + Resize + CenterCrop + ToTensor + mul(255)
            name = self.names[self.position % len(self.names)]
            self.position += 1
            crops.append(square_crop(load_rgb(self.folder / name), self.size))
        x = torch.from_numpy(np.stack(crops)).permute(0, 3, 1, 2).contiguous().to(self.device) * 255
        n_batch = len(x)
        self.optimizer.zero_grad()
        y = self.transformer(x)
        y, x = self.normalize_batch(y), self.normalize_batch(x)
        features_y, features_x = self.vgg(y), self.vgg(x)
        content_loss = CONTENT_WEIGHT * F.mse_loss(features_y[1], features_x[1])
        style_loss = 0.0
        for ft_y, gm_s in zip(features_y, self.gram_style, strict=True):
            style_loss = style_loss + F.mse_loss(ref_gram_matrix(ft_y), gm_s[:n_batch, :, :])
        total_loss = content_loss + STYLE_WEIGHT * style_loss
        total_loss.backward()
        self.optimizer.step()


def time_reference(loop: ReferenceLoop, steps: int, warmup: int) -> float:
    for _ in range(warmup):
        loop.step()
    synchronize(loop.device)
    start = time.perf_counter()
    for _ in range(steps):
        loop.step()
    synchronize(loop.device)
    return time.perf_counter() - start


def time_engine(folder: Path, style: Path, args: argparse.Namespace, precision: str, home: Path) -> dict:
    """`nst train johnson` through its entry point; the time from the report of the last warm-up
    step to the report of the last step (checkpoints and validation pictures fall outside it)."""
    seen: dict[int, float] = {}
    job = loop.Job(
        method="johnson",
        name=f"bench-{precision}",
        styles=[style],
        content_dir=folder,
        overrides={
            "steps": args.warmup + args.steps,
            "batch": args.batch,
            "size": args.size,
            "precision": precision if precision in PRECISIONS else "auto",
            "validate_every": 0,
        },
        replace=True,
        restart=True,
    )
    forced = {"NST_PRECISION": precision} if precision not in PRECISIONS else {}  # no setting names it
    with patched_environ(forced):
        loop.train(johnson, job, lambda p: seen.setdefault(p.step, time.perf_counter()))
    chosen = json.loads((home / "weights" / "trained.json").read_text())[job.weight_id]["precision"]
    return {"s": seen[args.warmup + args.steps] - seen[args.warmup], "path": chosen}


@contextlib.contextmanager
def patched_environ(values: dict[str, str]) -> Iterator[None]:
    before = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in before.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def pictures(args: argparse.Namespace, tmp: Path) -> tuple[Path, Path]:
    """The photo folder and the painting: the shared pictures, or drawn ones where they are missing."""
    if (IMAGES / "content").is_dir() and STYLE.is_file():
        return IMAGES / "content", STYLE
    folder = tmp / "photos"
    folder.mkdir()
    for i in range(8):
        Image.fromarray((drawn_scene(i, 480, 640) * 255).astype(np.uint8)).save(folder / f"{i}.jpg")
    Image.fromarray((drawn_scene(100, 512, 512) * 255).astype(np.uint8)).save(tmp / "style.png")
    return folder, tmp / "style.png"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--steps", type=int, default=10, help="timed steps per side")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    allocator.configure()
    machine = tune.machine()
    print(tune.describe(machine))
    result: dict[str, Any] = {"machine": machine, "size": args.size, "batch": args.batch, "steps": args.steps}
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp) / "home"
        os.environ["NST_HOME"] = str(home)
        folder, style = pictures(args, Path(tmp))
        names = find_photos(folder, "--content-dir")
        style_picture = loop.read_at(style, johnson.SETTINGS().style_size)
        device = loop.training_device()  # where `nst train` runs: the GPU where there is one
        result["device"] = gpu_name(device) or "cpu"
        print(f"training on {result['device']}")
        reference = ReferenceLoop(folder, names, style_picture, args.size, args.batch, device)
        ref_s = [time_reference(reference, args.steps, args.warmup)]
        paths = ("auto", "fp32") + ((tune.WINOGRAD.name,) if device.type == "cpu" else ())  # NNPACK: CPU only
        ours = {p: time_engine(folder, style, args, p, home) for p in paths}
        ref_s.append(time_reference(reference, args.steps, 0))
    photos = args.steps * args.batch
    reference_rate = photos / (sum(ref_s) / len(ref_s))
    result["reference_photos_per_s"] = reference_rate
    print(
        f"\ntraining at {args.size} px, batch {args.batch}, {args.steps} timed steps, loss network vgg16-hed"
    )
    times = ", ".join(f"{s:.1f} s" for s in ref_s)
    print(f"  reference (pytorch/examples, fp32)  {reference_rate:6.2f} photos/s  ({times})")
    for precision, figures in ours.items():
        rate = photos / figures["s"]
        ratio = rate / reference_rate
        result[f"ours_{precision}"] = {"photos_per_s": rate, "path": figures["path"], "ratio": ratio}
        label = f"nst train ({precision}: {figures['path']})"
        print(f"  {label:34}  {rate:6.2f} photos/s  {ratio:.2f}x")
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
