"""Training Johnson et al.'s feed-forward network for one painting: `nst train johnson`.

The loss is pytorch/examples' (perceptual: Gram matrices at relu1_2, relu2_2, relu3_3 and relu4_3,
content at relu2_2) computed on any backbone the engine has, the offline vgg16-hed by default, so
training needs no download. Its terms are relative errors (engine/methods/gatys/losses.py), so the
weights mean the same on every backbone. The network is upstream's layout, 0..255 in and out, so a
trained model also runs in pytorch/examples' own `stylize`.

A run lives in a folder of the data directory: its checkpoint (network, Adam, step, the photo list;
written every few minutes, on Ctrl-C and at the end) and its validation pictures. The data order
is a function of the seed and the step (engine/training/photos.py), so `--resume` continues exactly
where the run stopped. Under `torchrun` every process takes its share of each global batch and
DistributedDataParallel averages the gradients; rank 0 writes the files.
"""

from __future__ import annotations

import dataclasses
import datetime
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from engine import __version__, weights
from engine.backbones import Backbone, load_backbone
from engine.compute import tune
from engine.errors import UserError
from engine.imaging import images
from engine.methods.gatys.losses import Target, gram, total_variation
from engine.nets.inference import pad_to_multiple
from engine.nets.transformer_net import TransformerNet
from engine.training.photos import Photos, find_photos, load_rgb
from engine.training.settings import RESUMABLE_CHANGES, Settings, check
from nst_common.endpoints import data_dir

STYLE_TAPS = ("relu1_2", "relu2_2", "relu3_3", "relu4_3")  # pytorch/examples' choice
CONTENT_TAPS = ("relu2_2",)
CHECKPOINT_FORMAT = 1
OUTPUT_GAIN = 25.0  # the last layer's initial weights against torch's default: output +- 10 of 255
VALIDATION_SIDE = 512  # long side of the validation pictures
TUNE_SIDES = (128, 256)  # where the training step's compute paths are timed, once per machine


# --- the network and its loss --------------------------------------------------------------------


def _conv(layer: nn.Module, x: torch.Tensor, upsample: bool = False) -> torch.Tensor:
    """Upstream's ConvLayer (reflection pad, conv) or UpsampleConvLayer (nearest 2x first)."""
    if upsample:
        x = F.interpolate(x, scale_factor=2, mode="nearest")
    pad = layer.conv2d.kernel_size[0] // 2
    return layer.conv2d(F.pad(x, (pad, pad, pad, pad), mode="reflect"))


class TrainableTransformerNet(TransformerNet):
    """TransformerNet's parameters under upstream's names, with a forward that autograd can run
    (the inference net's is in place). 0..255 in and out, as upstream runs it.

    The last convolution starts at mid-grey with weights OUTPUT_GAIN times torch's default: with
    the default a new network outputs about 0 +- 0.4, black, and Adam at 1e-3 spends about two
    thousand steps only growing that layer's weights towards the 0..255 range.
    """

    def __init__(self, styles: int = 1) -> None:
        super().__init__()
        with torch.no_grad():
            self.deconv3.conv2d.weight.mul_(OUTPUT_GAIN)
            self.deconv3.conv2d.bias.fill_(127.5)
        if styles > 1:  # conditional instance norm: a row of scales and shifts per style
            for norm in self.modules():
                if isinstance(norm, nn.InstanceNorm2d):
                    norm.weight = nn.Parameter(norm.weight.detach().repeat(styles, 1))
                    norm.bias = nn.Parameter(norm.bias.detach().repeat(styles, 1))

    def forward(self, x: torch.Tensor, styles: torch.Tensor) -> torch.Tensor:
        """`styles`: each photo's style, an index into the norms' rows (zeros for one style)."""

        def norm(module: nn.InstanceNorm2d, y: torch.Tensor) -> torch.Tensor:
            scale, shift = module.weight, module.bias
            if scale.dim() == 2:
                scale, shift = scale[styles], shift[styles]
            else:
                scale, shift = scale.expand(len(y), -1), shift.expand(len(y), -1)
            return F.instance_norm(y, eps=module.eps) * scale[..., None, None] + shift[..., None, None]

        y = F.relu(norm(self.in1, _conv(self.conv1, x)))
        y = F.relu(norm(self.in2, _conv(self.conv2, y)))
        y = F.relu(norm(self.in3, _conv(self.conv3, y)))
        for block in (self.res1, self.res2, self.res3, self.res4, self.res5):
            z = F.relu(norm(block.in1, _conv(block.conv1, y)))
            y = y + norm(block.in2, _conv(block.conv2, z))
        y = F.relu(norm(self.in4, _conv(self.deconv1, y, upsample=True)))
        y = F.relu(norm(self.in5, _conv(self.deconv2, y, upsample=True)))
        return _conv(self.deconv3, y)

    def upstream_state(self) -> dict[str, torch.Tensor]:
        """The weights in pytorch/examples' layout, float32 on the CPU."""
        return {k: v.detach().float().cpu().contiguous() for k, v in self.state_dict().items()}


class PerceptualLoss:
    """Content, style and smoothness terms of a batch of results against their photos."""

    def __init__(self, backbone: Backbone, paintings: list[torch.Tensor]) -> None:
        self.backbone = backbone
        with torch.no_grad():
            grams = [{t: gram(f) for t, f in backbone(p, STYLE_TAPS).items()} for p in paintings]
        targets = {tap: [Target.of(g[tap]) for g in grams] for tap in STYLE_TAPS}
        self.grams = {tap: torch.cat([t.value for t in ts]) for tap, ts in targets.items()}  # (S, C, C)
        self.norms = {tap: torch.stack([t.norm for t in ts]) for tap, ts in targets.items()}  # (S,)

    def __call__(
        self, result: torch.Tensor, photo: torch.Tensor, styles: torch.Tensor, path: tune.ComputePath
    ) -> dict[str, torch.Tensor]:
        """result and photo: (N, 3, H, W) in 0..1, `styles` each one's painting; each term a mean
        over the batch. The backbone's passes run on `path`; the features come back, and the terms
        are summed, in float32."""
        with torch.no_grad():
            wanted = self.backbone(photo, CONTENT_TAPS, path)
        features = self.backbone(result, tuple(dict.fromkeys(STYLE_TAPS + CONTENT_TAPS)), path)
        content = sum(_relative_error(features[t], wanted[t]) for t in CONTENT_TAPS) / len(CONTENT_TAPS)
        style = sum(self._style_error(gram(features[t]), t, styles) for t in STYLE_TAPS) / len(STYLE_TAPS)
        return {"content": content, "style": style, "tv": total_variation(result)}

    def _style_error(self, grams: torch.Tensor, tap: str, styles: torch.Tensor) -> torch.Tensor:
        """Each photo's Gram error relative to its painting's Gram energy, averaged over the batch."""
        error = (grams - self.grams[tap][styles]).pow(2).flatten(1).mean(1)
        return (error / self.norms[tap][styles]).mean()


def _relative_error(current: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Each photo's squared error relative to its own features' energy, averaged over the batch:
    a photo's term does not depend on which others share its batch (or its process, under torchrun)."""
    error = (current - target).pow(2).flatten(1).mean(1)
    return (error / (target.pow(2).flatten(1).mean(1) + 1e-8)).mean()


def weighted(terms: dict[str, torch.Tensor], settings: Settings) -> torch.Tensor:
    return (
        settings.content_weight * terms["content"]
        + settings.style_weight * terms["style"]
        + settings.tv_weight * terms["tv"]
    )


def read_at(path: Path, long_side: int) -> np.ndarray:
    """An RGB picture scaled to `long_side`."""
    picture = load_rgb(path)
    return images.at_long_side(picture, long_side)


def is_main_process() -> bool:
    """Rank 0 of a torchrun launch, or a plain process: the one that prints and writes."""
    return int(os.environ.get("RANK", "0")) == 0


def new_net(seed: int, styles: int = 1) -> TrainableTransformerNet:
    """A freshly initialised network for `styles` paintings, from `seed`."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return TrainableTransformerNet(styles)


def stylise(
    net: nn.Module, picture: np.ndarray, style: int, device: torch.device, path: tune.ComputePath
) -> np.ndarray:
    """The network's result in painting `style` for an HxWx3 picture in 0..1, as the validation
    pictures show it."""
    height, width = picture.shape[:2]
    x = torch.from_numpy(picture).permute(2, 0, 1)[None].to(device) * 255
    with torch.no_grad(), path.autocast(device):
        y = net(pad_to_multiple(x, 4), torch.tensor([style], device=device))[..., :height, :width]
    return (y.float() / 255).clamp(0, 1)[0].permute(1, 2, 0).cpu().numpy()


# --- a run ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Progress:
    """One report of a run: what the command line's progress line shows."""

    step: int
    steps: int
    terms: dict[str, float]
    photos_per_s: float
    eta_s: float | None


class Stopped(Exception):
    """The run stopped on request after a checkpoint; `--resume` continues it."""

    def __init__(self, step: int, checkpoint: Path) -> None:
        super().__init__(f"stopped at step {step}; checkpoint {checkpoint}")
        self.step = step
        self.checkpoint = checkpoint


@dataclass
class Job:
    """What a run trains on and where it goes; the settings are separate (they are checkpointed)."""

    name: str
    styles: list[Path] = field(default_factory=list)  # the paintings; several: one network for all
    content_dir: Path | None = None
    validation: Path | None = None
    overrides: dict[str, Any] = field(default_factory=dict)  # settings given on the command line
    resume: bool = False
    restart: bool = False
    replace: bool = False  # an existing trained model of this name may be replaced

    @property
    def weight_id(self) -> str:
        return f"johnson_{self.name}"

    @property
    def folder(self) -> Path:
        return data_dir() / "training" / self.weight_id

    @property
    def checkpoint(self) -> Path:
        return self.folder / "checkpoint.pt"


class Distributed:
    """This process's place in a torchrun launch (rank 0 of 1 without one)."""

    def __init__(self) -> None:
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.on = self.world > 1
        local = int(os.environ.get("LOCAL_RANK", "0"))
        self.device = torch.device(f"cuda:{local}" if torch.cuda.is_available() else "cpu")
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)  # NCCL's collectives run on the current device
        if self.on and not dist.is_initialized():
            dist.init_process_group("nccl" if self.device.type == "cuda" else "gloo")
        self.rank = dist.get_rank() if self.on else 0

    def sum(self, values: list[float]) -> list[float]:
        """`values` summed over all processes (as they are, alone)."""
        if not self.on:
            return values
        tensor = torch.tensor(values, dtype=torch.float64, device=self.device)
        dist.all_reduce(tensor)
        return tensor.tolist()

    def close(self) -> None:
        if self.on and dist.is_initialized():
            dist.destroy_process_group()


def _fresh_or_resumed(job: Job) -> dict[str, Any]:
    """The checkpoint to continue from ({} for a fresh run), after checking that the request and
    the folder agree: a fresh run never discards a checkpoint unless told to."""
    if job.resume:
        if not job.checkpoint.is_file():
            raise UserError("bad-option", f"no checkpoint of {job.name!r} to resume ({job.checkpoint})")
        try:
            state = torch.load(job.checkpoint, map_location="cpu", weights_only=True)
        except Exception as exc:  # a truncated or foreign file: torch raises many kinds
            raise UserError(
                "bad-input", f"cannot read {job.checkpoint} ({exc}); --restart begins anew"
            ) from None
        if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
            raise UserError("bad-input", f"{job.checkpoint} is not a checkpoint this engine can resume")
        return state
    if job.checkpoint.is_file() and not job.restart:
        raise UserError(
            "exists",
            f"a run called {job.name!r} has a checkpoint ({job.checkpoint}); continue it with --resume, "
            "or start again with --restart (discards it)",
        )
    if not job.styles or job.content_dir is None:
        raise UserError("bad-option", "a new run needs --style PAINTING and --content-dir PHOTOS")
    names = [p.stem for p in job.styles]
    if len(set(names)) < len(names):
        raise UserError(
            "bad-option", f"the paintings' file names {names} repeat; a mix names them, rename one"
        )
    if job.restart:  # what the discarded run left: its checkpoint goes at the first save
        shutil.rmtree(job.folder / "validation", ignore_errors=True)
    return {}


def _settings_of(job: Job, state: dict[str, Any]) -> Settings:
    if not state:
        settings = Settings(**job.overrides)
    else:
        settings = Settings(**state["settings"])
        for name, value in job.overrides.items():
            if name in RESUMABLE_CHANGES:
                settings = dataclasses.replace(settings, **{name: value})
            elif value != getattr(settings, name):
                option = "--" + name.replace("_", "-")
                raise UserError(
                    "bad-option",
                    f"this run started with {option} {getattr(settings, name)}; a resumed run keeps its "
                    f"settings (only {', '.join('--' + n.replace('_', '-') for n in RESUMABLE_CHANGES)} "
                    "can change)",
                )
    check(settings)
    return settings


def _same_path(given: Path | None, stored: str, what: str) -> Path:
    if given is not None and given.resolve() != Path(stored):
        raise UserError("bad-option", f"this run trains on {what} {stored}, not {given}; leave that out")
    return Path(stored)


def train(job: Job, report: Callable[[Progress], None], stop: Callable[[], bool] = lambda: False) -> Path:
    """Run (or continue) the job to its last step and install the model; returns its file.
    Raises Stopped after writing a checkpoint when `stop()` turns true."""
    place = Distributed()
    try:
        return _train(job, place, report, stop)
    finally:
        place.close()


def _train(
    job: Job, place: Distributed, report: Callable[[Progress], None], stop: Callable[[], bool]
) -> Path:
    weights.check_trained_id(job.weight_id, job.replace)
    check(Settings(**job.overrides))  # what was given, before anything is read
    state = _fresh_or_resumed(job)
    settings = _settings_of(job, state)
    if settings.batch % place.world:
        raise UserError("bad-option", f"--batch {settings.batch} must divide among {place.world} processes")
    device = place.device
    style_paths, content_dir, names, validation = _inputs(job, state)
    paintings = [images.to_tensor(read_at(p, settings.style_size), device) for p in style_paths]

    backbone = load_backbone(settings.backbone, device=device)
    net = new_net(settings.seed, len(style_paths)).to(device)
    optimizer = torch.optim.Adam(net.parameters(), lr=settings.lr)
    if state:
        net.load_state_dict(state["net"])
        optimizer.load_state_dict(state["optimizer"])
    net = net.to(memory_format=torch.channels_last)
    loss = PerceptualLoss(backbone, paintings)
    path = _compute_path(settings, backbone, loss, device, state)
    model: nn.Module = nn.parallel.DistributedDataParallel(net) if place.on else net
    photos = Photos(content_dir, names, settings.size, settings.seed)
    photos.skipped.update(state.get("skipped", []))
    local = settings.batch // place.world

    step = int(state.get("step", 0))
    elapsed_before = elapsed = float(state.get("elapsed_s", 0.0))
    history: list[list[float]] = [list(h) for h in state.get("history", [])]

    def save_checkpoint() -> None:
        if place.rank:
            return
        job.folder.mkdir(parents=True, exist_ok=True)
        record = {
            "format": CHECKPOINT_FORMAT,
            "settings": dataclasses.asdict(settings),
            "step": step,
            "net": net.state_dict(),
            "optimizer": optimizer.state_dict(),
            "styles": [str(p) for p in style_paths],
            "style_sha256": style_hashes,
            "content_dir": str(content_dir),
            "photos": names,
            "validation": validation,
            "skipped": sorted(photos.skipped),
            "elapsed_s": elapsed,
            "history": history,
            "precision": path.name,
        }
        temporary = job.checkpoint.with_name(f".{job.checkpoint.name}.{os.getpid()}.tmp")
        torch.save(record, temporary)
        os.replace(temporary, job.checkpoint)

    def validate() -> None:
        if place.rank or validation is None:
            return
        try:
            picture = read_at(Path(validation), VALIDATION_SIDE)
        except UserError:
            return
        folder = job.folder / "validation"
        folder.mkdir(parents=True, exist_ok=True)
        for index, painting in enumerate(style_paths):
            suffix = f"-{painting.stem}" if len(style_paths) > 1 else ""
            result = stylise(net, picture, index, device, path)
            images.save_image(folder / f"step-{step:07d}{suffix}.png", result)

    style_hashes = state.get("style_sha256") or [weights.sha256_file(p) for p in style_paths]
    if not state:
        job.folder.mkdir(parents=True, exist_ok=True)
        validate()  # step 0: the untrained network, for comparison
    last_checkpoint = time.monotonic()
    first_step, started = step, time.monotonic()
    while step < settings.steps:
        first = step * settings.batch + place.rank * local
        x = photos.batch(first, local).to(device).contiguous(memory_format=torch.channels_last)
        styles = torch.arange(first, first + local, device=device) % len(style_paths)  # by position
        with path.autocast(device):
            y = model(x * 255, styles)
        terms = loss(y.float() / 255, x, styles, path)
        total = weighted(terms, settings)
        optimizer.zero_grad(set_to_none=True)
        total.backward()
        optimizer.step()
        step += 1
        now = time.monotonic()
        due = now - last_checkpoint >= settings.checkpoint_minutes * 60
        # One exchange per step: the mean loss terms, and whether any process must stop or checkpoint.
        c, s, t, stopping, checkpointing = place.sum(
            [*(float(terms[k].detach()) for k in ("content", "style", "tv")), float(stop()), float(due)]
        )
        means = {"content": c / place.world, "style": s / place.world, "tv": t / place.world}
        elapsed = elapsed_before + now - started
        rate = (step - first_step) * settings.batch / max(now - started, 1e-9)
        eta = (settings.steps - step) * settings.batch / rate if rate > 0 else None
        report(Progress(step, settings.steps, means, rate, eta))
        if settings.validate_every and step % settings.validate_every == 0 and step < settings.steps:
            validate()
        if stopping or checkpointing or step == settings.steps:
            history.append([step, means["content"], means["style"], means["tv"], elapsed])
            save_checkpoint()
            last_checkpoint = time.monotonic()
            if stopping and step < settings.steps:
                raise Stopped(step, job.checkpoint)
    validate()
    if place.rank:
        dist.barrier()
        return weights.weights_dir() / f"{job.weight_id}.pth"
    installed = _install(job, net, settings, path, names, photos, style_paths, style_hashes, elapsed, history)
    if place.on:
        dist.barrier()
    return installed


def _inputs(job: Job, state: dict[str, Any]) -> tuple[list[Path], Path, list[str], str | None]:
    """The painting, the photo folder, the photos to train on and the validation photo: a new
    run's from the request, a resumed run's from its checkpoint (which the request may repeat)."""
    if not state:
        style_paths, content_dir = [p.resolve() for p in job.styles], job.content_dir.resolve()
        names = find_photos(content_dir)
        if job.validation:
            return style_paths, content_dir, names, str(job.validation.resolve())
        return style_paths, content_dir, *_held_out(content_dir, names)
    style_paths = [Path(p) for p in state["styles"]]
    if job.styles and [p.resolve() for p in job.styles] != style_paths:
        listed = ", ".join(map(str, style_paths))
        raise UserError("bad-option", f"this run trains on the paintings {listed}; leave --style out")
    content_dir = _same_path(job.content_dir, state["content_dir"], "the photos in")
    for painting, digest in zip(style_paths, state["style_sha256"], strict=True):
        if not painting.is_file():
            raise UserError("bad-input", f"a painting this run trains on is gone: {painting}")
        if weights.sha256_file(painting) != digest:
            raise UserError("bad-input", f"{painting} changed since the run started; --restart to use it")
    return style_paths, content_dir, list(state["photos"]), state["validation"]


def _held_out(folder: Path, names: list[str]) -> tuple[list[str], str | None]:
    """The first readable photo as the validation picture, kept out of training (where there is
    more than one): the pictures show the network on a photo it never learnt from."""
    for index, name in enumerate(names):
        try:
            load_rgb(folder / name)
        except UserError:
            continue
        return (names[:index] + names[index + 1 :] if len(names) > 1 else names), str(folder / name)
    return names, None


def _compute_path(
    settings: Settings, backbone: Backbone, loss: PerceptualLoss, device: torch.device, state: dict[str, Any]
) -> tune.ComputePath:
    """A resumed run keeps its path (the same sums, so the same weights); a new one takes the
    setting's, or the one measured fastest for a training step on this machine."""
    if state:
        return tune.BY_NAME[state["precision"]]
    probe = new_net(0).to(device, memory_format=torch.channels_last)

    def one_step(path: tune.ComputePath, side: int) -> None:
        x = torch.rand(1, 3, side, side, device=device).contiguous(memory_format=torch.channels_last)
        first = torch.zeros(1, dtype=torch.long, device=device)
        with path.autocast(device):
            y = probe(x * 255, first)
        total = weighted(loss(y.float() / 255, x, first, path), settings)
        total.backward()
        probe.zero_grad(set_to_none=True)

    workload = f"train-johnson/{backbone.name}"
    return tune.choose(workload, device, settings.size**2, one_step, TUNE_SIDES, settings.precision)


def _install(
    job: Job,
    net: TrainableTransformerNet,
    settings: Settings,
    path: tune.ComputePath,
    names: list[str],
    photos: Photos,
    style_paths: list[Path],
    style_hashes: list[str],
    elapsed: float,
    history: list[list[float]],
) -> Path:
    """The trained network into the weights folder with its provenance; the checkpoint goes (the
    validation pictures stay)."""
    file = job.folder / "model.pth"
    state = net.upstream_state()
    torch.save(state, file)
    provenance = {
        "styles": [p.stem for p in style_paths],  # the names a mix gives weights to
        "style_files": [p.name for p in style_paths],
        "style_sha256": style_hashes,
        "photos": len(names) - len(photos.skipped),  # the readable ones it trained on
        "skipped": len(photos.skipped),
        "steps": settings.steps,
        "settings": dataclasses.asdict(settings),
        "precision": path.name,
        "seconds": round(elapsed, 1),
        "final": dict(zip(("content", "style", "tv"), history[-1][1:4], strict=True)) if history else {},
        "trained_at": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "engine": __version__,
        "torch": torch.__version__,
        "validation": str(job.folder / "validation"),
    }
    installed = weights.install_trained(job.weight_id, "johnson", file, provenance, job.replace)
    job.checkpoint.unlink(missing_ok=True)
    return installed
