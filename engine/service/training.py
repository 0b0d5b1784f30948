"""Training as an engine job: the `train` request, its task, and the runs the engine takes up
again when it starts.

A training runs in a queue of its own, one at a time, and before each step it waits while
stylising jobs are queued or running on its device, so they never wait longer than one training
step. It belongs to no connection: closing GIMP or the client leaves it running. A note beside its
checkpoint (`engine-job.json`) says the engine owns the run; an engine that stops or dies with
the note there resumes the run from its checkpoint when it next starts. A `cancel` removes the
note (the checkpoint stays, for `nst train ... --resume`); so do the run's end and its failure.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from pathlib import Path
from types import ModuleType
from typing import Any

from engine.errors import Cancelled, CancelToken, UserError
from engine.imaging import images
from engine.methods.base import Progress, ProgressFn
from engine.service.jobs import Job as QueuedJob
from engine.service.jobs import JobListener, JobQueue, Task
from engine.training import adain, johnson, loop
from engine.training.settings import check_name
from nst_common.framing import Limits
from nst_common.messages import RawImage, parse_image

log = logging.getLogger(__name__)

QUEUE = "training"  # trainings wait in their own queue, one at a time
KIND = "train"
NOTE = "engine-job.json"
METHODS: dict[str, ModuleType] = {"johnson": johnson, "adain": adain}
MAX_PATH = 4096
MAX_STYLES = 64  # paintings one Johnson network may learn


def paintings_of(request: dict[str, Any], blobs: list[Any], limits: Limits) -> list[tuple[str, RawImage]]:
    """The paintings a `train` request carries as images (a GIMP layer each), with their names;
    with stand-in blobs, the check before the pixels arrive."""
    listed = request.get("paintings", [])
    if not isinstance(listed, list) or len(listed) > MAX_STYLES:
        raise UserError("bad-request", f"train: paintings must be a list of at most {MAX_STYLES}")
    out = []
    for i, item in enumerate(listed):
        if not isinstance(item, dict):
            raise UserError(
                "bad-request", f"train: paintings[{i}] must be an object with a name and an image"
            )
        out.append(
            (
                check_name(str(item.get("name", ""))),
                parse_image(item.get("image"), blobs, limits, f"paintings[{i}]"),
            )
        )
    return out


def job_of(request: dict[str, Any]) -> loop.Job:
    """The run a `train` request (or a note) asks for, every field checked for type and size."""
    method = request.get("method")
    if method not in METHODS:
        raise UserError("bad-option", f"train: method must be one of {', '.join(METHODS)}")
    name = request.get("name")
    if not isinstance(name, str):
        raise UserError("bad-option", "train: name must be a string")
    styles = request.get("styles", [])
    if not isinstance(styles, list) or len(styles) > MAX_STYLES:
        raise UserError("bad-option", f"train: styles must be a list of at most {MAX_STYLES} paths")
    settings = request.get("settings", {})
    kinds = {f.name: type(f.default) for f in dataclasses.fields(METHODS[method].SETTINGS)}
    if not isinstance(settings, dict) or not set(settings) <= set(kinds):
        unknown = ", ".join(sorted(set(settings) - set(kinds))) if isinstance(settings, dict) else "?"
        raise UserError("bad-option", f"train: unknown settings for {method}: {unknown}")
    overrides = {}
    for key, value in settings.items():
        wanted = kinds[key]
        if isinstance(value, bool) or not isinstance(value, (wanted, int) if wanted is float else wanted):
            kind = {int: "a whole number", float: "a number"}.get(wanted, "text")
            raise UserError("bad-option", f"train: setting {key} must be {kind}")
        overrides[key] = wanted(value)
    flags = {k: request.get(k, False) for k in ("resume", "restart", "replace")}
    if not all(isinstance(v, bool) for v in flags.values()):
        raise UserError("bad-option", "train: resume, restart and replace are true or false")
    return loop.Job(
        method=method,
        name=check_name(name),
        styles=[_path(p, "styles") for p in styles],
        style_dir=_optional_path(request.get("style_dir"), "style_dir"),
        content_dir=_optional_path(request.get("content_dir"), "content_dir"),
        validation=_optional_path(request.get("validation"), "validation"),
        overrides=overrides,
        **flags,
    )


def _path(value: Any, what: str) -> Path:
    if not isinstance(value, str) or not value or len(value) > MAX_PATH or "\0" in value:
        raise UserError("bad-option", f"train: {what} must hold paths of 1 to {MAX_PATH} characters")
    path = Path(value)
    if not path.is_absolute():
        raise UserError("bad-option", f"train: {what} must be absolute paths (the engine has its own)")
    return path


def _optional_path(value: Any, what: str) -> Path | None:
    return None if value is None else _path(value, what)


def request_of(job: loop.Job) -> dict[str, Any]:
    """The `train` request that asks for `job` (what the note keeps)."""
    return {
        "method": job.method,
        "name": job.name,
        "styles": [str(p) for p in job.styles],
        "style_dir": None if job.style_dir is None else str(job.style_dir),
        "content_dir": None if job.content_dir is None else str(job.content_dir),
        "validation": None if job.validation is None else str(job.validation),
        "settings": job.overrides,
        "resume": job.resume,
        "restart": job.restart,
        "replace": job.replace,
    }


class _Relay:
    """Forwards a training's events to the client that started it while it listens; a client that
    went away is dropped, never the training (the queue cancels a job whose listener fails)."""

    def __init__(self, listener: JobListener | None) -> None:
        self.listener = listener

    def _send(self, name: str, *args: Any) -> None:
        if self.listener is None:
            return
        try:
            getattr(self.listener, name)(*args)
        except Exception:
            log.info("a training's client went away; the training goes on")
            self.listener = None

    def on_progress(self, job: QueuedJob, progress: Progress, with_preview: bool) -> None:
        self._send("on_progress", job, progress, with_preview)

    def on_result(self, job: QueuedJob, result: Any) -> None:
        self._send("on_result", job, result)

    def on_error(self, job: QueuedJob, code: str, message: str) -> None:
        self._send("on_error", job, code, message)


class Trainings:
    """The engine's trainings: started by requests, resumed from notes, cancelled by id."""

    def __init__(self, queue: JobQueue) -> None:
        self.queue = queue

    def submit(
        self, job: loop.Job, listener: JobListener | None, paintings: list[tuple[str, RawImage]] = ()
    ) -> tuple[QueuedJob, int]:
        """Check the request as far as that needs no picture, then queue it with its note. Paintings
        sent as pixels are kept in the run's folder, and trained on as files from there."""
        method = METHODS[job.method]
        sent = {job.folder / "paintings" / f"{name}.png": image for name, image in paintings}
        job.styles = [*job.styles, *sent]
        loop.preflight(method, job)
        for path, image in sent.items():
            path.parent.mkdir(parents=True, exist_ok=True)
            images.save_image(path, images.split_alpha(images.from_raw(image))[0])
        if any(t.title == job.weight_id for t in self.queue.tasks(KIND)):
            raise UserError("busy", f"the engine is training {job.weight_id} already; `nst jobs` lists it")
        note = job.folder / NOTE
        note.parent.mkdir(parents=True, exist_ok=True)
        temporary = note.with_name(f".{NOTE}.{os.getpid()}.tmp")
        temporary.write_text(json.dumps(request_of(job)), encoding="utf-8")
        os.replace(temporary, note)
        queued, position = self.queue.submit_task(
            KIND, QUEUE, self._task(method, job, note), _Relay(listener), None, title=job.weight_id
        )
        return queued, position

    def forget(self, job_id: str) -> None:
        """A client is cancelling the training `job_id`: the engine no longer takes it up again.
        Called before the queue lets go of the job (a queued one leaves it at once)."""
        for task in self.queue.tasks(KIND):
            if task.id == job_id and task.title is not None:
                (loop.runs_dir() / task.title / NOTE).unlink(missing_ok=True)

    def resume_pending(self) -> list[str]:
        """Queue again every run whose note an engine left (stopped, or died): from its checkpoint,
        or from the start when it had none. Returns the job ids; a note that no longer makes a
        run is removed, and the reason logged."""
        started = []
        for note in sorted(loop.runs_dir().glob(f"*/{NOTE}")):
            try:
                request = json.loads(note.read_text(encoding="utf-8"))
                job = job_of(request if isinstance(request, dict) else {})
                resumable = job.checkpoint.is_file()
                job.resume, job.restart = resumable, not resumable
                queued, _ = self.submit(job, None)
            except (UserError, OSError, ValueError) as exc:
                log.warning("not resuming the training of %s: %s", note.parent.name, exc)
                note.unlink(missing_ok=True)
                continue
            log.info("resuming the training of %s as job %s", job.weight_id, queued.id)
            started.append(queued.id)
        return started

    def _task(self, method: ModuleType, job: loop.Job, note: Path) -> Task:
        def run(progress: ProgressFn, token: CancelToken) -> dict[str, Any]:
            def report(p: loop.Progress) -> None:
                if token.cancelled:  # stop() ends the run at this step, after its checkpoint
                    return
                terms = "  ".join(f"{k} {v:.4g}" for k, v in p.terms.items())
                message = f"{job.weight_id}: step {p.step}/{p.steps}  {terms}"
                fraction = p.step / p.steps
                progress(Progress(fraction, "train", message, step=p.step, total=p.steps, eta_s=p.eta_s))

            device = str(loop.training_device())
            try:
                installed = loop.train(
                    method,
                    job,
                    report,
                    stop=lambda: token.cancelled,
                    between=lambda: self.queue.wait_for_devices(device, token),
                )
            except loop.Stopped:
                raise Cancelled() from None  # the note stays unless a client cancelled
            except Exception:
                note.unlink(missing_ok=True)  # a run that fails is not taken up again
                raise
            note.unlink(missing_ok=True)
            return {"model": job.weight_id, "file": str(installed)}

        return run
