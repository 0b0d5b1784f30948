"""Training as an engine job, from where a user starts it: `nst train ... --in-engine` and a client
on the engine's real socket. The run belongs to no connection (it goes on when the client leaves),
shows in `nst jobs`, can be cancelled (its checkpoint stays), lets stylising jobs through between
its steps, and resumes from its checkpoint when a killed engine starts again."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from helpers import drawn_scene
from PIL import Image
from test_score import _painting

from engine import weights
from engine.service.server import Server
from nst_common.endpoints import Endpoint
from nst_common.framing import read_message, send_message
from nst_common.messages import RawImage, StyleRef, StylizeJob, job_message
from nst_common.session import CLIENT_LIMITS, open_session

ROOT = Path(__file__).resolve().parents[1]
SMALL = {"batch": 2, "size": 64, "precision": "fp32", "validate_every": 0}


@pytest.fixture
def pictures(tmp_path: Path) -> tuple[Path, Path]:
    _painting(tmp_path / "painting.png")
    photos = tmp_path / "photos"
    photos.mkdir()
    for i in range(4):
        Image.fromarray((drawn_scene(i, 80, 96) * 255).astype(np.uint8)).save(photos / f"{i}.png")
    return tmp_path / "painting.png", photos


def _request(painting: Path, photos: Path, name: str, **settings: Any) -> dict[str, Any]:
    return {
        "type": "train",
        "method": "johnson",
        "name": name,
        "styles": [str(painting)],
        "content_dir": str(photos),
        "settings": {**SMALL, **settings},
    }


def _events(sock: socket.socket, until: Callable[[dict[str, Any]], bool], timeout: float = 300) -> list[dict]:
    """The messages up to and including the first for which `until` holds."""
    seen = []
    deadline = time.monotonic() + timeout
    while True:
        assert time.monotonic() < deadline, seen[-3:]
        header = read_message(sock, CLIENT_LIMITS, timeout).header
        seen.append(header)
        if until(header):
            return seen


def _nst(*words: object, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "engine", *map(str, words)],
        cwd=ROOT, capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip


def test_a_training_runs_in_the_engine_and_outlives_its_client(
    pictures: tuple[Path, Path], make_server: Callable[..., Server], nst_env: dict[str, str]
) -> None:
    home = Path(nst_env["NST_HOME"])
    server = make_server()
    sock, hello = open_session(server.address, None)
    assert "train" in hello["requests"]
    with sock:
        send_message(sock, _request(*pictures, "mine", steps=12))
        accepted = _events(sock, lambda h: h["type"] != "progress")[-1]
        assert accepted["type"] == "accepted", accepted
        note = home / "training" / "johnson_mine" / "engine-job.json"
        assert json.loads(note.read_text())["name"] == "mine"
        events = _events(sock, lambda h: h["type"] in ("trained", "error"))
    assert events[-1]["type"] == "trained", events[-1]
    assert events[-1]["model"] == "johnson_mine" and Path(events[-1]["file"]).is_file()
    steps = [e for e in events if e.get("stage") == "train"]
    assert steps and "step" in steps[-1]["message"]
    assert not note.exists()  # done: nothing to take up again

    # A client that leaves does not take the training with it.
    sock, _ = open_session(server.address, None)
    with sock:
        send_message(sock, _request(*pictures, "orphan", steps=12))
        assert _events(sock, lambda h: h["type"] != "progress")[-1]["type"] == "accepted"
    deadline = time.monotonic() + 300
    while "johnson_orphan" not in weights.load_manifest().entries:  # listed: the install is done
        assert time.monotonic() < deadline, "the training stopped with its client"
        time.sleep(0.5)
    assert (home / "weights" / "johnson_orphan.pth").is_file()


def test_a_stylising_job_waits_for_at_most_one_training_step(
    pictures: tuple[Path, Path], make_server: Callable[..., Server], nst_env: dict[str, str]
) -> None:
    server = make_server()
    trainer, _ = open_session(server.address, None)
    client, _ = open_session(server.address, None)
    with trainer, client:
        send_message(trainer, _request(*pictures, "long", steps=100_000))
        _events(trainer, lambda h: h.get("stage") == "train")  # training steps are going
        content = RawImage(48, 40, 3, "u8", (drawn_scene(7, 40, 48) * 255).astype(np.uint8).tobytes())
        style = RawImage(32, 32, 3, "u8", (drawn_scene(8, 32, 32) * 255).astype(np.uint8).tobytes())
        params = {"preset": "draft", "iterations": 40, "size": 48, "device": "cpu"}
        header, blobs = job_message(StylizeJob("gatys", params, content, [StyleRef(image=style)]))
        before = _training(server)
        send_message(client, header, blobs)
        done = _events(client, lambda h: h["type"] in ("result", "error"), timeout=120)
        after = _training(server)
        assert done[-1]["type"] == "result", done[-1]
        assert after["title"] == "johnson_long" and after["state"] == "running"
        send_message(trainer, {"type": "cancel", "job": after["job"]})
    # While the picture was made, the training took at most the step it was in and the one it had
    # begun when the job came; without waiting it took 7 (measured).
    steps = round((after["fraction"] - before["fraction"]) * 100_000)
    assert steps <= 2, steps


def _training(server: Server) -> dict[str, Any]:
    """The engine's training job, as `jobs` lists it."""
    return next(j for j in _ask(server, {"type": "jobs"})["jobs"] if j["kind"] == "train")


def _ask(server: Server, header: dict[str, Any]) -> dict[str, Any]:
    sock, _ = open_session(server.address, None)
    with sock:
        send_message(sock, header)
        return read_message(sock, CLIENT_LIMITS, 10).header


def test_cancel_keeps_the_checkpoint_and_a_killed_engine_resumes_the_run(
    pictures: tuple[Path, Path], nst_env: dict[str, str], tmp_path: Path
) -> None:
    home = Path(nst_env["NST_HOME"])
    painting, photos = pictures

    def serve() -> subprocess.Popen[str]:
        engine = subprocess.Popen(
            [sys.executable, "-m", "engine", "serve", "--idle-timeout", "300"],
            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        deadline = time.monotonic() + 60
        while _nst("ping").returncode != 0:
            assert engine.poll() is None and time.monotonic() < deadline, (
                engine.stderr and engine.stderr.read()
            )
            time.sleep(0.2)
        return engine

    words = ["train", "johnson", "--style", painting, "--content-dir", photos, "--batch", 2,
             "--size", 64, "--precision", "fp32", "--validate-every", 0, "--checkpoint-minutes", 0.01,
             "--in-engine"]  # fmt: skip
    engine = serve()
    try:
        started = _nst(*words, "-o", "kept", "--steps", 100_000)
        assert started.returncode == 0, started.stderr
        assert "in the engine as job" in started.stdout
        number = started.stdout.split("as job ")[1].split(";")[0]
        checkpoint = home / "training" / "johnson_kept" / "checkpoint.pt"
        _wait_for(checkpoint.is_file)
        assert "johnson_kept" in _nst("jobs").stdout
        cancelled = _nst("jobs", "--cancel", number)
        assert cancelled.returncode == 0, cancelled.stderr
        _wait_for(lambda: "johnson_kept" not in _nst("jobs").stdout)
        assert checkpoint.is_file() and not (checkpoint.parent / "engine-job.json").exists()

        twice = _nst(*words, "-o", "kept", "--steps", 10)  # refused at once, not queued
        assert twice.returncode == 2 and "--resume" in twice.stderr

        resumed = _nst(*words, "-o", "again", "--steps", 60)
        assert resumed.returncode == 0, resumed.stderr
        again = home / "training" / "johnson_again" / "checkpoint.pt"
        _wait_for(again.is_file)
        engine.send_signal(signal.SIGKILL)  # the engine dies mid-run
        engine.wait(10)
        assert (again.parent / "engine-job.json").is_file()
    finally:
        if engine.poll() is None:
            engine.kill()
        engine.wait()

    engine = serve()  # starts again, and takes the run up from its checkpoint
    try:
        _wait_for(lambda: (home / "weights" / "johnson_again.pth").is_file(), timeout=300)
        provenance = json.loads((home / "weights" / "trained.json").read_text())["johnson_again"]
        assert provenance["steps"] == 60
        assert "resuming the training of johnson_again" in (home / "engine.log").read_text()
    finally:
        engine.send_signal(signal.SIGTERM)
        engine.wait(30)


def _wait_for(condition: Callable[[], bool], timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.3)


def test_train_names_folders_so_tcp_clients_are_refused(
    pictures: tuple[Path, Path], make_server: Callable[..., Server], nst_env: dict[str, str]
) -> None:
    server = make_server(endpoint=Endpoint("tcp", host="127.0.0.1", port=0), token="secret")
    sock, _ = open_session(server.address, "secret")
    with sock:
        send_message(sock, _request(*pictures, "remote", steps=1))
        reply = read_message(sock, CLIENT_LIMITS, 10).header
    assert (reply["type"], reply["code"]) == ("error", "path-refused"), reply
    assert not (Path(nst_env["NST_HOME"]) / "training").exists()


@pytest.mark.parametrize(
    ("change", "says"),
    [
        ({"name": "../up"}, "model name '../up'"),
        ({"method": "gatys"}, "method must be one of"),
        ({"styles": ["relative.png"]}, "absolute paths"),
        ({"settings": {"steps": "many"}}, "setting steps must be a whole number"),
        ({"settings": {"colour": 1}}, "unknown settings for johnson: colour"),
        ({"content_dir": None}, "needs --style PAINTING and --content-dir"),
        ({"styles": ["/x"] * 65}, "at most 64"),
    ],
)
def test_a_bad_train_request_is_answered_at_once(
    change: dict[str, Any],
    says: str,
    pictures: tuple[Path, Path],
    make_server: Callable[..., Server],
    nst_env: dict[str, str],
) -> None:
    server = make_server()
    sock, _ = open_session(server.address, None)
    with sock:
        send_message(sock, {**_request(*pictures, "x", steps=1), **change})
        reply = read_message(sock, CLIENT_LIMITS, 10).header
    assert reply["type"] == "error" and says in reply["message"], reply
    assert not (Path(nst_env["NST_HOME"]) / "training").exists()  # nothing queued, nothing noted
