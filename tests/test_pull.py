"""Weights downloads as engine jobs: the `pull` request, from the plug-in's real client through a real
engine server to a real HTTP server on loopback that serves fixture files slowly."""

from __future__ import annotations

import argparse
import functools
import hashlib
import io
import re
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from client import EngineClient, EngineError
from helpers import Files, serve_files

from engine import methods, weights
from engine.cli import serve
from engine.nets.transformer_net import TransformerNet
from engine.service import server as engine_server
from engine.service.server import Server
from nst_common.endpoints import Endpoint
from nst_common.framing import read_message, send_message
from nst_common.session import CLIENT_LIMITS, open_session

REPO = Path(__file__).resolve().parents[1]
NO_CONFIG = "/nonexistent/engine.json"  # connect only, never start an engine


@functools.cache
def fixture_bytes(seed: int) -> bytes:
    """A Johnson checkpoint (random weights, its own for each seed): a pull checks what it fetched."""
    torch.manual_seed(seed)
    buffer = io.BytesIO()
    torch.save(TransformerNet().state_dict(), buffer)
    return buffer.getvalue()


SIZE = len(fixture_bytes(1))  # every seed's: the same tensors
BLOCK = -(-SIZE // 32)  # the HTTP server's block: 32 to a file


@pytest.fixture
def http() -> Iterator[tuple[str, Files]]:
    """A loopback HTTP server serving `Files.bodies`, each block after `Files.delay`."""
    files = Files()
    with serve_files(files) as url:
        yield url, files


@pytest.fixture
def manifest(
    http: tuple[str, Files], nst_env: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Files:
    """The real manifest with two Johnson models served here (candy right, mosaic with other bytes
    than its sha256 says) and the first CycleGAN model at a URL that answers 404."""
    url, files = http
    files.block = BLOCK
    candy, mosaic = fixture_bytes(1), fixture_bytes(2)
    files.bodies = {"/candy.pth": candy, "/mosaic.pth": fixture_bytes(3)}
    text = (REPO / "weights" / "manifest.toml").read_text(encoding="utf-8")
    for model, body in (("candy", candy), ("mosaic", mosaic)):
        old = f'archive = "fast_neural_style_zip"\nmember = "saved_models/{model}.pth"'
        new = f'urls = ["{url}/{model}.pth"]\nsha256 = "{hashlib.sha256(body).hexdigest()}"\nsize = {SIZE}'
        assert text.count(old) == 1, model
        text = text.replace(old, new)
    monet = re.compile(r'urls = \["[^"]*/style_monet\.pth"\]')
    assert len(monet.findall(text)) == 1
    text = monet.sub(f'urls = ["{url}/monet.pth"]', text)
    path = tmp_path / "manifest.toml"
    path.write_text(text, encoding="utf-8")
    monkeypatch.setenv("NST_MANIFEST", str(path))
    monkeypatch.setattr(weights, "BACKOFF_S", 0.01)
    return files


def _client(server: Server) -> EngineClient:
    return EngineClient(NO_CONFIG, endpoint=str(server.address), silence_timeout=10.0)


def _models(hello: dict[str, Any], method: str) -> list[dict[str, Any]]:
    return hello["capabilities"]["methods"][method]["models"]


def test_the_manifest_is_the_list_of_models(manifest: Files, make_server: Callable[..., Server]) -> None:
    johnson, cyclegan = methods.get("johnson"), methods.get("cyclegan")
    assert johnson.models == ("candy", "mosaic", "rain_princess", "udnie")
    assert cyclegan.models[0] == "style_monet"
    assert johnson.parse_params({})["model"] == "candy"  # nothing installed: the first one
    with pytest.raises(Exception, match="unknown johnson model 'picasso'; choose one of: candy, mosaic, "):
        johnson.parse_params({"model": "picasso"})

    sock, hello = open_session(make_server().address, None)
    sock.close()
    assert _models(hello, "johnson")[:3] == [
        {"id": "candy", "installed": False, "weights": ["johnson_candy"], "size": SIZE, "styles": []},
        {"id": "mosaic", "installed": False, "weights": ["johnson_mosaic"], "size": SIZE, "styles": []},
        {
            "id": "rain_princess",
            "installed": False,
            "weights": ["johnson_rain_princess"],
            "size": None,
            "styles": [],
        },
    ]
    assert hello["requests"] == ["pull", "train"] and hello["limits"]["max_pull_weights"] == 8


def test_pull_downloads_with_progress_while_other_clients_are_answered(
    manifest: Files, make_server: Callable[..., Server]
) -> None:
    manifest.delay = 0.05  # 32 blocks: about 1.6 s
    server = make_server()
    progress: list[tuple[float, str]] = []
    box: dict[str, Any] = {}

    def pull() -> None:
        try:
            box["result"] = _client(server).pull(["johnson_candy"], lambda f, m: progress.append((f, m)))
        except BaseException as exc:
            box["error"] = exc

    thread = threading.Thread(target=pull)
    thread.start()
    sock, _ = open_session(server.address, None)
    pings, seen_job = [], None
    with sock:
        while thread.is_alive():  # another client: its requests are answered during the download
            start = time.monotonic()
            send_message(sock, {"type": "jobs", "ref": len(pings)})
            reply = read_message(sock, CLIENT_LIMITS, 5.0).header
            pings.append(time.monotonic() - start)
            assert reply["ref"] == len(pings) - 1
            seen_job = next((j for j in reply["jobs"] if j["kind"] == "pull"), seen_job)
            time.sleep(0.05)
    thread.join()

    assert "error" not in box, box.get("error")
    assert box["result"] == [{"id": "johnson_candy", "installed": True}]
    assert len(pings) >= 10 and max(pings) < 0.5, pings
    assert seen_job is not None and seen_job["device"] == "download" and seen_job["method"] is None
    downloading = [(f, m) for f, m in progress if m.startswith("Downloading johnson_candy: ")]
    assert len(downloading) >= 3 and f"% of {SIZE / (1 << 20):.1f} MiB" in downloading[-1][1], progress
    fractions = [f for f, _ in progress]
    assert fractions == sorted(fractions) and 0.0 < downloading[1][0] < 1.0 and fractions[-1] == 1.0
    installed = weights.path_for("johnson_candy")
    assert installed is not None and installed.read_bytes() == fixture_bytes(1)
    sock, hello = open_session(server.address, None)
    sock.close()
    assert [m["installed"] for m in _models(hello, "johnson")] == [True, False, False, False]

    box.clear()
    progress.clear()
    assert _client(server).pull(["johnson_candy"], lambda f, m: progress.append((f, m))) == [
        {"id": "johnson_candy", "installed": True}
    ]
    assert manifest.requests == ["/candy.pth"]  # installed and verified: not fetched again


def test_a_checksum_mismatch_or_a_missing_file_fails_and_installs_nothing(
    manifest: Files, make_server: Callable[..., Server], nst_env: dict[str, str]
) -> None:
    client = _client(make_server())
    with pytest.raises(EngineError) as err:
        client.pull(["johnson_mosaic"], lambda f, m: None)
    assert err.value.code == "checksum-mismatch" and "johnson_mosaic" in err.value.message
    with pytest.raises(EngineError) as err:
        client.pull(["cyclegan_style_monet"], lambda f, m: None)
    assert err.value.code == "weights-not-found" and "404" in err.value.message
    folder = Path(nst_env["NST_HOME"]) / "weights"
    assert not [p.name for p in folder.iterdir() if p.suffix in (".pth", ".part")]


def _ask(sock: socket.socket, header: dict[str, Any]) -> dict[str, Any]:
    send_message(sock, header)
    return read_message(sock, CLIENT_LIMITS, 5.0).header


@pytest.mark.parametrize("transport", ["unix", "tcp"])
def test_only_manifest_ids_are_pulled(
    transport: str, manifest: Files, make_server: Callable[..., Server], nst_env: dict[str, str]
) -> None:
    config: dict[str, Any] = {}
    if transport == "tcp":
        config = {"endpoint": Endpoint("tcp", host="127.0.0.1", port=0), "token": "secret"}
    server = make_server(**config)
    sock, _ = open_session(server.address, config.get("token"))
    with sock:
        for weights_field, code in (
            (["../../etc/passwd"], "unknown-weights"),
            (["/tmp/x.pth"], "unknown-weights"),
            (["all"], "unknown-weights"),
            (["hed"], "not-downloadable"),
            ([], "bad-request"),
            (["johnson_candy"] * 9, "bad-request"),
            ("johnson_candy", "bad-request"),
            ([{"url": "http://example.com/x"}], "bad-request"),
            (["x" * 129], "bad-request"),
        ):
            reply = _ask(sock, {"type": "pull", "ref": "r", "weights": weights_field})
            assert (reply["type"], reply["code"], reply["ref"]) == ("error", code, "r"), reply
        assert _ask(sock, {"type": "hello", "ref": 1})["type"] == "hello"  # the connection stays
    assert manifest.requests == []
    assert not (Path(nst_env["NST_HOME"]) / "weights").exists() or not any(
        (Path(nst_env["NST_HOME"]) / "weights").glob("*.pth")
    )


def test_one_pull_per_connection_nst_jobs_shows_it_and_a_disconnect_cancels_it(
    manifest: Files,
    make_server: Callable[..., Server],
    nst_env: dict[str, str],
    capsys: pytest.CaptureFixture[str],
) -> None:
    manifest.delay = 0.2  # 32 blocks: several seconds
    server = make_server()
    sock, _ = open_session(server.address, None)
    with sock:
        accepted = _ask(sock, {"type": "pull", "ref": 1, "weights": ["johnson_candy"]})
        assert accepted["type"] == "accepted" and accepted["position"] == 0
        while True:  # a second one from the same connection is refused while the first runs
            reply = read_message(sock, CLIENT_LIMITS, 5.0).header
            if reply["type"] == "progress" and "Downloading johnson_candy: " in reply["message"]:
                break
        send_message(sock, {"type": "pull", "ref": 2, "weights": ["johnson_mosaic"]})
        while (reply := read_message(sock, CLIENT_LIMITS, 5.0).header).get("ref") != 2:
            pass
        assert reply["code"] == "busy"
        capsys.readouterr()
        assert serve._jobs(argparse.Namespace(connect=str(server.address), timeout=5.0, cancel=None)) == 0
        line = capsys.readouterr().out.split()
        assert line[:4] == [accepted["job"], "running", "pull", "download"], line
    deadline = time.monotonic() + 10
    while not server.jobs.idle:  # the connection closed: its pull is cancelled at the next block
        assert time.monotonic() < deadline, server.jobs.snapshot()
        time.sleep(0.05)
    folder = Path(nst_env["NST_HOME"]) / "weights"
    assert not (folder / "johnson_candy.pth").exists()
    assert (folder / "johnson_candy.pth.part").stat().st_size < SIZE  # kept, so a later pull resumes


def test_an_engine_without_pull_gets_a_clear_message(
    manifest: Files, make_server: Callable[..., Server], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(engine_server, "REQUESTS", ())  # an engine from before `pull`
    with pytest.raises(EngineError) as err:
        _client(make_server()).pull(["johnson_candy"], lambda f, m: None)
    assert err.value.code == "pull-unsupported"
    assert "nst models pull johnson_candy" in err.value.message and "0.2.0" in err.value.message
    assert manifest.requests == []
