"""The job queue: a worker per device slot, cancel tokens, throttled progress and a heartbeat.

Jobs on one device run one at a time by default, because two optimisations sharing a GPU are
each slower than running them in turn and may not fit in its memory together. The queue knows
nothing about sockets: it reports to a `JobListener`, which the server implements per connection.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from engine.compute.cache import ModelCache
from engine.errors import Cancelled, CancelToken, UserError
from engine.methods.base import Progress, ProgressFn
from nst_common.messages import RawImage, StylizeJob

log = logging.getLogger(__name__)

Runner = Callable[[StylizeJob, ProgressFn, CancelToken, ModelCache], RawImage]
# Work other than stylising (a weights download): reports progress, polls the token, returns what
# the listener's on_result gets.
Task = Callable[[ProgressFn, CancelToken], Any]


class JobListener(Protocol):
    """Receives a job's events; calls come from worker threads and must not block for long."""

    def on_progress(self, job: Job, progress: Progress, with_preview: bool) -> None: ...

    def on_result(self, job: Job, image: RawImage) -> None: ...

    def on_error(self, job: Job, code: str, message: str) -> None: ...


@dataclass(eq=False)
class Job:
    id: str
    spec: StylizeJob | None  # None for a task
    device: str  # the queue it waits in: a device, or a task's own queue
    listener: JobListener
    owner: object
    token: CancelToken = field(default_factory=CancelToken)
    kind: str = "stylize"  # or a task's kind, e.g. "pull"
    task: Task | None = None
    title: str | None = None  # what a task works on, for `jobs` (a training's model)
    state: str = "queued"  # queued | running | done
    lock: threading.Lock = field(default_factory=threading.Lock)  # orders heartbeats before the end
    last: Progress | None = None
    last_at: float = 0.0  # when `last` came
    last_sent: float = 0.0
    last_stage: str = ""  # the stage of the last progress sent
    last_preview: float = 0.0
    cancel_message: str = "Cancelled."

    def describe(self, position: int) -> dict[str, Any]:
        last = self.last
        return {
            "job": self.id,
            "kind": self.kind,
            "method": self.spec.method if self.spec is not None else None,
            **({} if self.title is None else {"title": self.title}),
            "device": self.device,
            "state": self.state,
            "position": position,
            "fraction": last.fraction if last else 0.0,
            "stage": last.stage if last else self.state,
            **({} if (eta := self.eta_now()) is None else {"eta_s": round(eta, 1)}),
        }

    def eta_now(self) -> float | None:
        """The last report's time left, counted down since it came; None when it gave none."""
        last = self.last
        if last is None or last.eta_s is None:
            return None
        return max(0.0, last.eta_s - (time.monotonic() - self.last_at))


class JobQueue:
    def __init__(
        self,
        runner: Runner,
        cache: ModelCache,
        queue_of: Callable[[StylizeJob], str],
        slots_per_device: int = 1,
        progress_interval: float = 0.05,
        preview_interval: float = 0.5,
        heartbeat: float = 0.25,
    ) -> None:
        self._runner = runner
        self._cache = cache
        self._queue_of = queue_of
        self._slots = slots_per_device
        self._progress_interval = progress_interval
        self._preview_interval = preview_interval
        self._heartbeat = heartbeat
        self._cond = threading.Condition()
        self._queues: dict[str, deque[Job]] = {}
        self._running: dict[str, list[Job]] = {}
        self._workers: list[threading.Thread] = []
        self._ids = itertools.count(1)
        self._closing = False
        self.last_activity = time.monotonic()
        self._beat = threading.Thread(target=self._heartbeat_loop, name="nst-heartbeat", daemon=True)

    # --- API used by the server ------------------------------------------------------------------

    def submit(self, spec: StylizeJob, listener: JobListener, owner: object) -> tuple[Job, int]:
        """Queue a job; returns it and how many jobs must finish before it starts."""
        device = self._queue_of(spec)
        return self._enqueue(device, lambda i: Job(i, spec, device, listener, owner))

    def submit_task(
        self,
        kind: str,
        queue: str,
        task: Task,
        listener: JobListener,
        owner: object,
        title: str | None = None,
    ) -> tuple[Job, int]:
        """Queue a task in its own queue (one per kind, e.g. "download"): it neither waits for the
        devices' jobs nor holds them up. Returns it and how many must finish before it starts."""
        return self._enqueue(
            queue, lambda i: Job(i, None, queue, listener, owner, kind=kind, task=task, title=title)
        )

    def tasks(self, kind: str) -> list[Job]:
        """The queued and running tasks of `kind`."""
        with self._cond:
            return [j for j in self._all_jobs() if j.kind == kind]

    def wait_for_devices(self, device: str, token: CancelToken) -> None:
        """Block while jobs are queued or running on `device` (any device of its type) and the
        token is not set: a background task takes its turns between the stylising jobs."""
        kind = device.split(":")[0]

        def busy() -> bool:
            names = [n for n in {*self._queues, *self._running} if n.split(":")[0] == kind]
            return any(self._queues.get(n) or self._running.get(n) for n in names)

        with self._cond:
            while busy() and not token.cancelled and not self._closing:
                self._cond.wait(0.25)

    def count(self, owner: object, kind: str) -> int:
        """How many jobs of `kind` that `owner` submitted are queued or running."""
        with self._cond:
            return sum(1 for j in self._all_jobs() if j.owner is owner and j.kind == kind)

    def _enqueue(self, device: str, make: Callable[[str], Job]) -> tuple[Job, int]:
        with self._cond:
            if self._closing:
                raise UserError("shutting-down", "The engine is shutting down; try again in a moment.")
            job = make(str(next(self._ids)))
            queue = self._queues.setdefault(device, deque())
            running = self._running.setdefault(device, [])
            position = len(queue) + (1 if len(running) >= self._slots else 0)
            queue.append(job)
            if self._beat.ident is None:  # started with the first job: an unused queue has no threads
                self._beat.start()
            if sum(1 for t in self._workers if t.name.startswith(f"nst-{device}-")) < self._slots:
                worker = threading.Thread(
                    target=self._work, args=(device,), name=f"nst-{device}-{len(self._workers)}", daemon=True
                )
                self._workers.append(worker)
                worker.start()
            self.last_activity = time.monotonic()
            self._cond.notify_all()
        what = job.spec.method if job.spec is not None else job.kind
        log.info("job %s queued: %r on %r, position %d", job.id, what, device, position)
        return job, position

    def cancel(self, job_id: str, message: str = "Cancelled.") -> bool:
        """Cancel a queued or running job; False when no such job is waiting or running."""
        with self._cond:
            for queue in self._queues.values():
                for job in queue:
                    if job.id == job_id:
                        queue.remove(job)
                        break
                else:
                    continue
                break
            else:
                for job in itertools.chain.from_iterable(self._running.values()):
                    if job.id == job_id:
                        job.cancel_message = message
                        job.token.cancel()
                        return True
                return False
        log.info("job %s cancelled while queued", job_id)
        self._notify(job, job.listener.on_error, job, "cancelled", message)
        return True

    def cancel_owner(self, owner: object, message: str = "Cancelled.") -> None:
        """Cancel every job a connection submitted (it went away)."""
        with self._cond:
            ids = [j.id for j in self._all_jobs() if j.owner is owner]
        for job_id in ids:
            self.cancel(job_id, message)

    def snapshot(self) -> list[dict[str, Any]]:
        with self._cond:
            out = []
            for device, running in self._running.items():
                out += [job.describe(0) for job in running]
                busy = 1 if len(running) >= self._slots else 0
                out += [job.describe(i + busy) for i, job in enumerate(self._queues.get(device, ()))]
            return out

    @property
    def idle(self) -> bool:
        with self._cond:
            return not any(self._all_jobs())

    def close(self, message: str = "The engine is shutting down.", timeout: float = 10.0) -> None:
        """Cancel everything and join the worker and heartbeat threads."""
        with self._cond:
            self._closing = True
            ids = [j.id for j in self._all_jobs()]
        for job_id in ids:
            self.cancel(job_id, message)
        with self._cond:
            self._cond.notify_all()
        deadline = time.monotonic() + timeout
        for thread in [*self._workers, self._beat]:
            if thread.ident is None:  # never started
                continue
            thread.join(max(0.0, deadline - time.monotonic()))
            if thread.is_alive():
                log.warning("thread %s did not stop within %.0f s", thread.name, timeout)

    # --- Internals -------------------------------------------------------------------------------

    def _all_jobs(self) -> list[Job]:
        running = itertools.chain.from_iterable(self._running.values())
        return [*running, *itertools.chain.from_iterable(self._queues.values())]

    def _work(self, device: str) -> None:
        while True:
            with self._cond:
                queue = self._queues[device]
                while not queue and not self._closing:
                    self._cond.wait()
                if self._closing and not queue:
                    return
                job = queue.popleft()
                job.state = "running"
                self._running[device].append(job)
            report, args = self._run(job)
            with self._cond:
                self._running[device].remove(job)
                job.spec = None  # type: ignore[assignment]  # let the pixels go now
                self.last_activity = time.monotonic()
            # Only once the job has left the queue: a client that got its result may cancel nothing.
            with job.lock:
                job.state = "done"
                self._notify(job, report, *args)
            del report, args  # the result's pixels: not kept alive while this worker waits for the next job

    def _run(self, job: Job) -> tuple[Callable[..., None], tuple[Any, ...]]:
        """Run the job; returns the listener call that reports how it ended."""
        started = time.monotonic()
        self._send_progress(job, Progress(0.0, "start", "Starting"), force=True)

        def progress(p: Progress) -> None:
            job.last, job.last_at = p, time.monotonic()
            job.token.raise_if_cancelled()
            self._send_progress(job, p, force=False)

        listener = job.listener
        try:
            if job.task is not None:
                image = job.task(progress, job.token)
            else:
                assert job.spec is not None
                image = self._runner(job.spec, progress, job.token, self._cache)
        except Cancelled:
            log.info("job %s cancelled after %.2f s", job.id, time.monotonic() - started)
            return listener.on_error, (job, "cancelled", job.cancel_message)
        except UserError as exc:
            log.info("job %s failed: %s: %r", job.id, exc.code, exc.message)
            return listener.on_error, (job, exc.code, exc.message)
        except Exception as exc:
            log.exception("job %s: internal error", job.id)
            return listener.on_error, (job, *_describe_internal(exc))
        log.info("job %s done in %.2f s", job.id, time.monotonic() - started)
        if job.token.cancelled:
            return listener.on_error, (job, "cancelled", job.cancel_message)
        return listener.on_result, (job, image)

    def _send_progress(self, job: Job, p: Progress, force: bool) -> None:
        now = time.monotonic()
        # A preview that is due always goes out: the next one may come only after the job has ended.
        with_preview = p.preview is not None and now - job.last_preview >= self._preview_interval
        recent = now - job.last_sent < self._progress_interval
        # A new stage always goes out: there are few, and the plan's carries the first estimate.
        if recent and not (force or with_preview or p.fraction >= 1.0 or p.stage != job.last_stage):
            return
        with job.lock:
            if job.state == "done":
                return
            job.last_sent, job.last_stage = now, p.stage
            if with_preview:
                job.last_preview = now
            self._notify(job, job.listener.on_progress, job, p, with_preview)

    def _heartbeat_loop(self) -> None:
        """Re-send the last progress of a job whose method has been quiet, so clients see life."""
        while True:
            with self._cond:
                if self._closing:
                    return
                self._cond.wait(self._heartbeat / 2)
                now = time.monotonic()
                quiet = [
                    j
                    for j in itertools.chain.from_iterable(self._running.values())
                    if now - j.last_sent >= self._heartbeat
                ]
            for job in quiet:
                last = job.last or Progress(0.0, "start", "Starting")
                again = Progress(last.fraction, last.stage, last.message, eta_s=job.eta_now())
                self._send_progress(job, again, force=True)

    def _notify(self, job: Job, fn: Callable[..., None], *args: Any) -> None:
        """Listener failures (a client gone) cancel the job; they never reach the worker loop."""
        try:
            fn(*args)
        except Exception:
            log.exception("job %s: could not deliver an event; cancelling it", job.id)
            job.token.cancel()


def _describe_internal(exc: Exception) -> tuple[str, str]:
    text = f"{type(exc).__name__}: {exc}".splitlines()[0][:300]
    if isinstance(exc, MemoryError) or "out of memory" in str(exc).lower():
        return "out-of-memory", (
            f"The engine ran out of memory ({text}). Try a smaller size, the draft preset, or device cpu."
        )
    return "internal", f"The engine hit an internal error ({text}). The engine log has the details."
