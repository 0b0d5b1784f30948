"""The training run every method shares: `nst train METHOD` for johnson and adain.

A run lives in a folder of the data directory: its checkpoint (network, Adam, step, the photo
list, the method's inputs; written every few minutes, on Ctrl-C and at the end) and its validation
pictures. The data order is a function of the seed and the step (engine/training/photos.py), so
`--resume` continues exactly where the run stopped. Under `torchrun` every process takes its share
of each global batch and DistributedDataParallel averages the gradients; rank 0 writes the files.

What differs between methods (the network, its loss, the style side of the data, the installed
file) is a `Recipe`, one module per method: engine/training/johnson.py and adain.py.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from engine import __version__, weights
from engine.compute import tune
from engine.errors import UserError
from engine.imaging import images
from engine.training.photos import Photos, find_photos, held_out, load_rgb
from engine.training.settings import RESUMABLE_CHANGES, Settings, check
from nst_common.endpoints import data_dir

CHECKPOINT_FORMAT = 2
VALIDATION_SIDE = 512  # long side of the validation pictures
FLAT = 0.5 / 255  # a validation picture whose every channel varies less than this is one colour


def runs_dir() -> Path:
    """The folder of the runs: each run's checkpoint, validation pictures and notes in a folder
    named for the model it trains."""
    return data_dir() / "training"


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

    method: str
    name: str
    styles: list[Path] = field(default_factory=list)  # johnson's paintings; several: one network for all
    style_dir: Path | None = None  # adain's folder of paintings
    content_dir: Path | None = None
    validation: Path | None = None
    overrides: dict[str, Any] = field(default_factory=dict)  # settings given on the command line
    resume: bool = False
    restart: bool = False
    replace: bool = False  # an existing trained model of this name may be replaced

    @property
    def weight_id(self) -> str:
        return f"{self.method}_{self.name}"

    @property
    def folder(self) -> Path:
        return runs_dir() / self.weight_id

    @property
    def checkpoint(self) -> Path:
        return self.folder / "checkpoint.pt"


class Recipe(Protocol):
    """One method's part of a run, built by its module's `prepare` for a new or resumed run."""

    net: nn.Module  # what Adam trains, the checkpoint holds and the model file is made from
    workload: str  # the compute-path measurement's name (engine/compute/tune.py)

    def record(self) -> dict[str, Any]:
        """The method's inputs (paintings and their hashes), for the checkpoint and `prepare`."""
        ...

    def terms(
        self, model: nn.Module, photos: torch.Tensor, first: int, path: tune.ComputePath
    ) -> dict[str, torch.Tensor]:
        """The loss terms of a batch: `photos` (N,3,S,S) in 0..1 are the photos at global
        positions first .. first + N - 1; `model` is `net`, wrapped for data parallelism."""
        ...

    def total(self, terms: dict[str, torch.Tensor]) -> torch.Tensor:
        """The weighted sum that is minimised."""
        ...

    def learning_rate(self, step: int) -> float: ...

    def probe(self, path: tune.ComputePath, side: int) -> None:
        """One training step's work at `side` px, on a copy of the network: what tuning times."""
        ...

    def validation(self, picture: np.ndarray, path: tune.ComputePath) -> list[tuple[str, np.ndarray]]:
        """(file-name suffix, picture) for each validation picture of the network now."""
        ...

    def model_state(self) -> dict[str, torch.Tensor]:
        """The trained weights in the upstream layout the method's loader reads, float32 on the CPU."""
        ...

    def provenance(self) -> dict[str, Any]:
        """What the model was trained on, for weights/trained.json."""
        ...


class Method(Protocol):
    """A training module (engine/training/johnson.py, adain.py)."""

    METHOD: str
    SETTINGS: type[Settings]

    def check_new(self, job: Job) -> None: ...

    def prepare(
        self, job: Job, settings: Settings, state: dict[str, Any], device: torch.device
    ) -> Recipe: ...


def read_at(path: Path, long_side: int) -> np.ndarray:
    """An RGB picture scaled to `long_side`."""
    return images.at_long_side(load_rgb(path), long_side)


def is_main_process() -> bool:
    """Rank 0 of a torchrun launch, or a plain process: the one that prints and writes."""
    return int(os.environ.get("RANK", "0")) == 0


def same_path(given: Path | None, stored: str, what: str) -> Path:
    """A resumed run's input: the request may repeat it, but not change it."""
    if given is not None and given.resolve() != Path(stored):
        raise UserError("bad-option", f"this run trains on {what} {stored}, not {given}; leave that out")
    return Path(stored)


def training_device() -> torch.device:
    """This process's GPU under torchrun (its LOCAL_RANK), the GPU, or the CPU."""
    local = int(os.environ.get("LOCAL_RANK", "0"))
    return torch.device(f"cuda:{local}" if torch.cuda.is_available() else "cpu")


class Distributed:
    """This process's place in a torchrun launch (rank 0 of 1 without one)."""

    def __init__(self) -> None:
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.on = self.world > 1
        self.device = training_device()
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


def _fresh_or_resumed(method: Method, job: Job) -> dict[str, Any]:
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
            raise UserError(
                "bad-input",
                f"{job.checkpoint} is not a checkpoint this engine can resume; --restart begins anew",
            )
        return state
    if job.checkpoint.is_file() and not job.restart:
        raise UserError(
            "exists",
            f"a run called {job.name!r} has a checkpoint ({job.checkpoint}); continue it with --resume, "
            "or start again with --restart (discards it)",
        )
    method.check_new(job)
    return {}


def _settings_of(method: Method, job: Job, state: dict[str, Any]) -> Settings:
    if not state:
        settings = method.SETTINGS(**job.overrides)
    else:
        settings = method.SETTINGS(**state["settings"])
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


def _photos(job: Job, state: dict[str, Any]) -> tuple[Path, list[str], str | None]:
    """The photo folder, the photos to train on and the validation photo: a new run's from the
    request (the first readable photo held out), a resumed run's from its checkpoint."""
    if not state:
        assert job.content_dir is not None  # check_new refused a run without
        content_dir = job.content_dir.resolve()
        names = find_photos(content_dir, "--content-dir")
        if job.validation:
            return content_dir, names, str(job.validation.resolve())
        names, validation = held_out(content_dir, names)
        return content_dir, names, validation
    content_dir = same_path(job.content_dir, state["content_dir"], "the photos in")
    return content_dir, list(state["photos"]), state["validation"]


def preflight(method: Method, job: Job) -> tuple[dict[str, Any], Settings]:
    """The checkpoint to continue from ({} for a new run) and the settings, after every check that
    needs no picture read: what the engine answers a `train` request with before queueing it."""
    weights.check_trained_id(job.weight_id, job.replace)
    check(method.SETTINGS(**job.overrides))  # what was given, before anything is read
    state = _fresh_or_resumed(method, job)
    return state, _settings_of(method, job, state)


def train(
    method: Method,
    job: Job,
    report: Callable[[Progress], None],
    stop: Callable[[], bool] = lambda: False,
    between: Callable[[], None] = lambda: None,
) -> Path:
    """Run (or continue) the job to its last step and install the model; returns its file.
    Raises Stopped after writing a checkpoint when `stop()` turns true. `between` runs before each
    step: the engine waits there while stylising jobs use the device."""
    place = Distributed()
    try:
        return _train(method, job, place, report, stop, between)
    finally:
        place.close()


def _train(
    method: Method,
    job: Job,
    place: Distributed,
    report: Callable[[Progress], None],
    stop: Callable[[], bool],
    between: Callable[[], None],
) -> Path:
    state, settings = preflight(method, job)
    if job.restart and not state:  # what the discarded run left: its checkpoint goes at the first save
        shutil.rmtree(job.folder / "validation", ignore_errors=True)
    if settings.batch % place.world:
        raise UserError("bad-option", f"--batch {settings.batch} must divide among {place.world} processes")
    device = place.device
    content_dir, names, validation = _photos(job, state)
    recipe = method.prepare(job, settings, state, device)
    net = recipe.net
    optimizer = torch.optim.Adam(net.parameters(), lr=settings.lr)
    if state:
        net.load_state_dict(state["net"])
        optimizer.load_state_dict(state["optimizer"])
    path = (
        tune.BY_NAME[state["precision"]]  # a resumed run keeps its path: the same sums
        if state
        else tune.choose(
            recipe.workload, device, settings.size**2, recipe.probe, TUNE_SIDES, settings.precision
        )
    )
    model: nn.Module = nn.parallel.DistributedDataParallel(net) if place.on else net
    photos = Photos(content_dir, names, settings.size, settings.seed, settings.CROP_ZOOM)
    photos.skipped.update(state.get("skipped", []))
    local = settings.batch // place.world

    step = int(state.get("step", 0))
    elapsed_before = elapsed = float(state.get("elapsed_s", 0.0))
    history: list[dict[str, float]] = list(state.get("history", []))

    def save_checkpoint() -> None:
        if place.rank:
            return
        job.folder.mkdir(parents=True, exist_ok=True)
        record = {
            "format": CHECKPOINT_FORMAT,
            "method": method.METHOD,
            "settings": dataclasses.asdict(settings),
            "step": step,
            "net": net.state_dict(),
            "optimizer": optimizer.state_dict(),
            "content_dir": str(content_dir),
            "photos": names,
            "validation": validation,
            "skipped": sorted(photos.skipped),
            "elapsed_s": elapsed,
            "history": history,
            "precision": path.name,
            **recipe.record(),
        }
        temporary = job.checkpoint.with_name(f".{job.checkpoint.name}.{os.getpid()}.tmp")
        torch.save(record, temporary)
        os.replace(temporary, job.checkpoint)

    picture = None  # the validation photo, read once; rank 0 alone writes pictures
    if not place.rank and validation is not None:
        with contextlib.suppress(UserError):
            picture = read_at(Path(validation), VALIDATION_SIDE)

    def validate() -> list[np.ndarray]:
        if picture is None:
            return []
        folder = job.folder / "validation"
        folder.mkdir(parents=True, exist_ok=True)
        made = recipe.validation(picture, path)
        for suffix, result in made:
            images.save_image(folder / f"step-{step:07d}{suffix}.png", result)
        return [result for _, result in made]

    if not state:
        job.folder.mkdir(parents=True, exist_ok=True)
        validate()  # step 0: the untrained network, for comparison
    last_checkpoint = time.monotonic()
    first_step, started = step, time.monotonic()
    while step < settings.steps:
        between()
        first = step * settings.batch + place.rank * local
        x = photos.batch(first, local).to(device).contiguous(memory_format=torch.channels_last)
        terms = recipe.terms(model, x, first, path)
        total = recipe.total(terms)
        optimizer.zero_grad(set_to_none=True)
        total.backward()
        now = time.monotonic()
        due = now - last_checkpoint >= settings.checkpoint_minutes * 60
        # One exchange per step, before the weights change: the mean loss terms, and whether any
        # process must stop or checkpoint, or has lost its numbers.
        *sums, stopping, checkpointing, lost = place.sum(
            [
                *(float(v.detach()) for v in terms.values()),
                float(stop()),
                float(due),
                float(not total.isfinite()),
            ]
        )
        if lost:
            raise UserError(
                "diverged",
                f"training diverged at step {step + 1}: the loss is not a number. Lower --lr (now "
                f"{settings.lr:g}) and start again with --restart",
            )
        for group in optimizer.param_groups:
            group["lr"] = recipe.learning_rate(step)
        optimizer.step()
        step += 1
        means = {k: v / place.world for k, v in zip(terms, sums, strict=True)}
        elapsed = elapsed_before + now - started
        rate = (step - first_step) * settings.batch / max(now - started, 1e-9)
        eta = (settings.steps - step) * settings.batch / rate if rate > 0 else None
        report(Progress(step, settings.steps, means, rate, eta))
        if settings.validate_every and step % settings.validate_every == 0 and step < settings.steps:
            validate()
        if stopping or checkpointing or step == settings.steps:
            history.append({"step": step, **means, "elapsed_s": elapsed})
            save_checkpoint()
            last_checkpoint = time.monotonic()
            if stopping and step < settings.steps:
                raise Stopped(step, job.checkpoint)
    if any(picture.std(axis=(0, 1)).max() < FLAT for picture in validate()):
        raise UserError(
            "diverged",
            f"the trained network makes a flat picture of the validation photo (in {job.folder}); it was "
            f"not installed. Lower --lr (now {settings.lr:g}) and start again with --restart",
        )
    if place.rank:
        dist.barrier()
        return weights.weights_dir() / f"{job.weight_id}.pth"
    installed = _install(job, recipe, settings, path, names, photos, elapsed, history)
    if place.on:
        dist.barrier()
    return installed


TUNE_SIDES = (128, 256)  # where the training step's compute paths are timed, once per machine


def _install(
    job: Job,
    recipe: Recipe,
    settings: Settings,
    path: tune.ComputePath,
    names: list[str],
    photos: Photos,
    elapsed: float,
    history: list[dict[str, float]],
) -> Path:
    """The trained network into the weights folder with its provenance; the checkpoint goes (the
    validation pictures stay)."""
    file = job.folder / "model.pth"
    torch.save(recipe.model_state(), file)
    final = {k: v for k, v in history[-1].items() if k not in ("step", "elapsed_s")} if history else {}
    provenance = {
        **recipe.provenance(),
        "photos": len(names) - len(photos.skipped),  # the readable ones it trained on
        "skipped": len(photos.skipped),
        "steps": settings.steps,
        "settings": dataclasses.asdict(settings),
        "precision": path.name,
        "seconds": round(elapsed, 1),
        "final": final,
        "trained_at": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "engine": __version__,
        "torch": torch.__version__,
        "validation": str(job.folder / "validation"),
    }
    installed = weights.install_trained(job.weight_id, job.method, file, provenance, job.replace)
    job.checkpoint.unlink(missing_ok=True)
    return installed
