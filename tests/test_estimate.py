"""The time a job has left: present from the plan on, refined from the measured rate, counting down.

Real Gatys jobs through a real server on a real socket; the tracker's arithmetic also on a clock the
test sets, where the truth is known exactly.
"""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pytest
import torch

from engine import planner
from engine.compute import tune
from engine.estimate import Tracker
from engine.methods.base import Progress
from engine.service.server import Server
from nst_common import eta
from nst_common.endpoints import default_endpoint
from nst_common.framing import read_message, send_message
from nst_common.messages import RawImage, StyleRef, StylizeJob, job_message
from nst_common.session import CLIENT_LIMITS, open_session

# One scale of 60 L-BFGS iterations at 128x96 px: some 10 to 30 s on one of two shared cores.
JOB = {"preset": "draft", "size": 128, "seed": 0, "device": "cpu", "iterations": 60}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(autouse=True)
def no_learned_rates() -> Iterator[None]:
    """Each test starts from the planner's table, not from what an earlier test's jobs measured.
    (The machine's compute-path measurements stay: measuring them again would take a minute.)"""
    saved = tune.rates()
    tune.save_rates({})
    yield
    tune.save_rates(saved)


def _job(seed: int) -> StylizeJob:
    rng = np.random.default_rng(seed)
    content = RawImage(128, 96, 3, "u8", rng.integers(0, 256, (96, 128, 3), dtype=np.uint8).tobytes())
    style = RawImage(48, 48, 3, "u8", rng.integers(0, 256, (48, 48, 3), dtype=np.uint8).tobytes())
    return StylizeJob("gatys", dict(JOB), content, [StyleRef(image=style)])


def _run(sock: Any, seed: int) -> tuple[list[tuple[float, dict[str, Any]]], float, list[dict[str, Any]]]:
    """Run one job; (progress events with their arrival times, the result's time, `jobs` replies
    asked for while it ran)."""
    header, blobs = job_message(_job(seed))
    send_message(sock, header, blobs)
    events: list[tuple[float, dict[str, Any]]] = []
    listings: list[dict[str, Any]] = []
    deadline = time.monotonic() + 120
    while True:
        assert time.monotonic() < deadline, "the job did not finish in 120 s"
        h = read_message(sock, CLIENT_LIMITS, 30.0).header
        now = time.monotonic()
        if h["type"] == "progress":
            events.append((now, h))
            if h["stage"] == "optimise" and len(listings) < 1 and h["fraction"] > 0.3:
                send_message(sock, {"type": "jobs"})
        elif h["type"] == "jobs":
            listings.append(h)
        elif h["type"] == "result":
            return events, now, listings
        else:
            assert h["type"] == "accepted", h


def test_a_real_jobs_progress_says_how_long_from_the_plan_on_and_counts_down(
    make_server: Callable[..., Server],
) -> None:
    server = make_server()
    sock, _ = open_session(server.address, None)
    with sock:
        events, done_at, listings = _run(sock, 1)
        duration = done_at - events[0][0]

        # Present before any work: the plan's event says how long, before the first step.
        stages = [h["stage"] for _, h in events]
        plan = stages.index("plan")
        assert "optimise" not in stages[:plan]
        assert events[plan][1]["eta_s"] > 0
        # And on every event from then on, heartbeats included.
        assert all("eta_s" in h and h["eta_s"] >= 0 for _, h in events[plan:]), stages
        assert listings and listings[0]["jobs"][0]["eta_s"] >= 0

        # Refined from the measured rate: from a third of the work on, within half the job's length
        # of the truth (the result's arrival), and going down as the job goes on. Half, because on two
        # shared cores the rate itself changes within a job, as a neighbour's load comes and goes.
        late = [(at, h) for at, h in events if h["stage"] == "optimise" and h["fraction"] >= 0.35]
        assert len(late) >= 5
        for at, h in late:
            assert abs(h["eta_s"] - (done_at - at)) <= max(1.5, duration / 2), (h, done_at - at, duration)
        figures = [h["eta_s"] for _, h in late]
        assert figures[-1] < figures[0]
        slack = max(0.5, duration / 10)
        assert all(b <= a + slack for a, b in itertools.pairwise(figures)), figures

    # The next engine's first estimate (GIMP's next session, another `nst stylize`) comes from the
    # rate this job measured: kept in the data folder, for this machine and thread count.
    assert tune.rates()["cpu/gatys"] > 0
    engine = subprocess.Popen(
        [sys.executable, "-m", "engine", "serve", "--idle-timeout", "120"],
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                sock, _ = open_session(default_endpoint(), None)
                break
            except OSError:
                assert engine.poll() is None and time.monotonic() < deadline, engine.stderr.read()
                time.sleep(0.2)
        with sock:
            events, done_at, _ = _run(sock, 2)
    finally:
        engine.kill()
        engine.wait()
    first = next(h for _, h in events if h["stage"] == "plan")
    truth = done_at - events[0][0]
    assert truth / 3 <= first["eta_s"] <= truth * 3, (first["eta_s"], truth)


def _steady(prior: float, truth: float, start_up: float = 0.0, steps: int = 100) -> list[tuple[float, float]]:
    """(time, eta) at each report of a job whose work takes `truth` seconds at an even rate after
    `start_up` seconds with no progress, tracked from a first estimate of `prior` seconds."""
    now = [0.0]
    seen: list[tuple[float, float]] = []
    tracker = Tracker(lambda p: seen.append((now[0], p.eta_s)), clock=lambda: now[0])
    tracker(Progress(0.0, "plan", "plan", eta_s=prior))
    for tick in range(1, 11):  # quiet start-up, reported by heartbeats of the same fraction
        now[0] = start_up * tick / 10
        tracker(Progress(0.0, "optimise", "set-up"))
    for step in range(1, steps + 1):
        now[0] = start_up + truth * step / steps
        tracker(Progress(step / steps, "optimise", f"step {step}"))
    return seen


def test_an_estimate_that_was_right_counts_down_in_real_time() -> None:
    seen = _steady(prior=50.0, truth=50.0)
    for at, left in seen:
        assert left == pytest.approx(50.0 - at, abs=0.5)


def test_a_wrong_first_estimate_gives_way_to_the_measured_rate() -> None:
    for prior in (10.0, 250.0):  # five times too short, five times too long
        seen = _steady(prior=prior, truth=50.0, start_up=5.0)
        # The start-up is not taken for slow work: the rate's clock starts with the first step.
        after = [(at, left) for at, left in seen if at >= 5.0 + 0.3 * 50.0]
        for at, left in after:
            assert left == pytest.approx(55.0 - at, abs=0.15 * (55.0 - at) + 1.0), (prior, at, left)
        assert after[-1][1] == 0.0


def test_a_short_job_far_faster_than_its_estimate_shows_the_measured_time_soon() -> None:
    # A 3 s job estimated at 25 s (a first job on a fast machine): once 15% of the work has gone by
    # at the measured rate (from the first step on), the measured time replaces the estimate, at
    # once rather than by a glide longer than the job.
    seen = _steady(prior=25.0, truth=3.0, steps=60)
    for at, left in seen:
        if at >= 0.2 * 3.0:
            assert left == pytest.approx(3.0 - at, abs=0.3), (at, left)


def test_a_milestone_is_no_rate() -> None:
    # A model loaded from the cache in 10 ms moves the fraction by 15% in one report; the 5 s of
    # stylising after it are not taken to last 10 ms.
    now = [0.0]
    seen: list[float] = []
    tracker = Tracker(lambda p: seen.append(p.eta_s), clock=lambda: now[0])
    tracker(Progress(0.0, "plan", "plan", eta_s=5.0))
    now[0] = 0.01
    tracker(Progress(0.05, "load", "model loaded"))
    now[0] = 0.02
    tracker(Progress(0.2, "stylize", "stylising"))
    assert seen[-1] > 3.5
    for tick in range(1, 9):  # heartbeats while the one pass runs
        now[0] = 0.5 * tick
        tracker(Progress(0.2, "stylize", "stylising"))
        assert seen[-1] == pytest.approx(5.0 - now[0], abs=1.5), (now[0], seen[-1])


def test_without_progress_the_figure_counts_down_then_grows_with_the_wait() -> None:
    now = [0.0]
    seen: list[float] = []
    tracker = Tracker(lambda p: seen.append(p.eta_s), clock=lambda: now[0])
    tracker(Progress(0.0, "plan", "plan", eta_s=20.0))
    for step in range(1, 6):  # 10% of the work in 2 s: on time
        now[0] = 0.4 * step
        tracker(Progress(0.02 * step, "optimise", "step"))
    on_time = seen[-1]
    assert on_time == pytest.approx(18.0, abs=1.0)
    now[0] = 10.0  # stuck for 8 s on one step: 8 s counted down
    tracker(Progress(0.1, "optimise", "tile"))
    assert seen[-1] == pytest.approx(on_time - 8.0, abs=1.0)
    for second in range(11, 60):  # the figure ran out and the step goes on: now it grows
        now[0] = float(second)
        tracker(Progress(0.1, "optimise", "tile"))
    assert seen[-1] > 60.0


def test_no_first_estimate_means_none_until_the_rate_is_measured() -> None:
    now = [0.0]
    seen: list[float | None] = []
    tracker = Tracker(lambda p: seen.append(p.eta_s), clock=lambda: now[0])
    tracker(Progress(0.0, "plan", "plan"))  # a method the planner has no rate for
    for step in range(1, 21):
        now[0] = 0.5 * step
        tracker(Progress(step / 20, "optimise", "step"))
    assert seen[:3] == [None, None, None]  # one step alone is no rate
    assert seen[-2] == pytest.approx(0.5, abs=0.3) and seen[-1] == 0.0


def test_the_planner_estimates_before_anything_runs() -> None:
    from engine import methods

    gatys = methods.get("gatys")
    params = gatys.parse_params({"preset": "balanced", "size": 1024})
    plan = planner.plan(gatys, params, (683, 1024), torch.device("cpu"))
    two_threads = (planner.CPU_THREADS / torch.get_num_threads()) ** planner.CPU_SCALING
    seconds = planner.estimate_seconds(gatys, params, (683, 1024), plan)
    assert seconds is not None
    # The planner's table: `balanced` at 1024 px took 138 to 161 s on two threads of a busy 2-core EPYC.
    assert 100 < seconds / two_threads < 200
    draft = gatys.parse_params({"preset": "draft", "size": 512})
    smaller = planner.estimate_seconds(gatys, draft, (683, 1024), plan)
    assert smaller is not None and smaller < seconds / 2
    planner.learn(gatys, params, (683, 1024), plan, 2 * seconds)  # this machine is half as fast
    assert planner.estimate_seconds(gatys, params, (683, 1024), plan) == pytest.approx(2 * seconds, rel=0.01)


def test_the_time_left_in_words() -> None:
    assert [eta.describe(s) for s in (3, 12, 40, 56, 100, 190, 3599, 3660, 7200, 9000)] == [
        "a few seconds left",
        "about 10 s left",
        "about 40 s left",
        "about 1 min left",
        "about 2 min left",
        "about 3 min left",
        "about 1 h left",
        "about 1 h 1 min left",
        "about 2 h left",
        "about 2 h 30 min left",
    ]
