"""The weights manager against a real HTTP server on loopback that can cut, 404 or lie."""

from __future__ import annotations

import hashlib
import io
import json
import os
import socket
import subprocess
import sys
import threading
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import ModuleType

import pytest
import torch
import torchvision
from PIL import Image

from engine import weights
from engine.errors import UserError
from engine.nets.checkpoints import layout_for

REPO = Path(__file__).resolve().parents[1]


def payload(seed: int, size: int = 300_000) -> bytes:
    """Deterministic bytes that are not all alike, so a wrong offset changes the hash."""
    out = bytearray()
    block = seed.to_bytes(4, "little")
    while len(out) < size:
        block = hashlib.sha256(block).digest()
        out += block
    return bytes(out[:size])


@dataclass
class Behaviour:
    files: dict[str, bytes] = field(default_factory=dict)
    cut_after: dict[str, int] = field(default_factory=dict)  # path -> bytes sent before cutting
    cut_times: dict[str, int] = field(default_factory=dict)  # path -> how many requests to cut
    # path -> the Content-Length to declare instead of the true one (None: no Content-Length)
    length: dict[str, str | None] = field(default_factory=dict)
    extra: dict[str, bytes] = field(default_factory=dict)  # path -> bytes sent after the declared body
    requests: list[tuple[str, dict[str, str]]] = field(default_factory=list)


class Server:
    def __init__(self) -> None:
        self.behaviour = Behaviour()
        behaviour = self.behaviour

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                behaviour.requests.append((self.path, dict(self.headers.items())))
                body = behaviour.files.get(self.path)
                if body is None:
                    self.send_error(404, "Not Found")
                    return
                start = 0
                rng = self.headers.get("Range")
                if rng:
                    start = int(rng.removeprefix("bytes=").split("-")[0])
                    if start >= len(body):
                        self.send_response(416)
                        self.send_header("Content-Range", f"bytes */{len(body)}")
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
                else:
                    self.send_response(200)
                length = behaviour.length.get(self.path, str(len(body) - start))
                if length is not None:
                    self.send_header("Content-Length", length)
                self.end_headers()
                chunk = body[start:] + behaviour.extra.get(self.path, b"")
                if behaviour.cut_times.get(self.path, 0) > 0:
                    behaviour.cut_times[self.path] -= 1
                    chunk = chunk[: behaviour.cut_after[self.path]]
                    self.close_connection = True
                self.wfile.write(chunk)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def ranges(self, path: str) -> list[str | None]:
        return [h.get("Range") for p, h in self.behaviour.requests if p == path]


@pytest.fixture
def server() -> Iterator[Server]:
    srv = Server()
    srv.thread.start()
    yield srv
    srv.httpd.shutdown()
    srv.httpd.server_close()


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("NST_HOME", str(tmp_path / "home"))
    monkeypatch.setattr(weights, "BACKOFF_S", 0.01)
    return tmp_path / "home"


def write_manifest(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, body: str) -> Path:
    path = tmp_path / "manifest.toml"
    path.write_text("schema = 1\n" + body, encoding="utf-8")
    monkeypatch.setenv("NST_MANIFEST", str(path))
    return path


def entry(weight_id: str, url: str, **extra: str) -> str:
    lines = [
        "[[weights]]",
        f'id = "{weight_id}"',
        'method = "test"',
        f'file = "{weight_id}.pth"',
        f'urls = ["{url}"]',
        'license = "test"',
    ]
    lines += [f'{k} = "{v}"' for k, v in extra.items()]
    return "\n".join(lines) + "\n"


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_resume_after_the_connection_is_cut(server: Server, home: Path, tmp_path, monkeypatch) -> None:
    data = payload(1)
    server.behaviour.files["/a.pth"] = data
    server.behaviour.cut_after["/a.pth"] = 120_000
    server.behaviour.cut_times["/a.pth"] = 1
    write_manifest(tmp_path, monkeypatch, entry("a", server.url + "/a.pth", sha256=sha(data)))
    seen: list[tuple[int, int | None]] = []

    [path] = weights.pull(["a"], progress=lambda _id, done, total: seen.append((done, total)))

    assert server.ranges("/a.pth") == [None, "bytes=120000-"]
    assert path == home / "weights" / "a.pth"
    assert path.read_bytes() == data
    assert not (home / "weights" / "a.pth.part").exists()
    assert seen[-1] == (len(data), len(data))
    assert weights.path_for("a") == path


def test_checksum_mismatch_leaves_no_file(server: Server, home: Path, tmp_path, monkeypatch) -> None:
    server.behaviour.files["/a.pth"] = payload(2)
    write_manifest(tmp_path, monkeypatch, entry("a", server.url + "/a.pth", sha256=sha(payload(1))))

    with pytest.raises(UserError) as err:
        weights.pull(["a"])

    assert err.value.code == "checksum-mismatch"
    assert sorted(p.name for p in (home / "weights").iterdir() if p.suffix in (".pth", ".part")) == []
    assert weights.path_for("a") is None


def test_404_is_reported_clearly(server: Server, home: Path, tmp_path, monkeypatch) -> None:
    write_manifest(tmp_path, monkeypatch, entry("a", server.url + "/gone.pth", sha256=sha(b"x")))

    with pytest.raises(UserError) as err:
        weights.pull(["a"])

    assert err.value.code == "weights-not-found"
    assert "404" in err.value.message and "nst models import a FILE" in err.value.message
    assert len(server.behaviour.requests) == 1  # a 404 is not retried
    assert not any((home / "weights").glob("a.pth*"))


def test_a_mirror_is_tried_when_the_first_url_is_missing(server: Server, home, tmp_path, monkeypatch) -> None:
    data = payload(3)
    server.behaviour.files["/b.pth"] = data
    body = entry("a", server.url + "/gone.pth", sha256=sha(data)).replace(
        f'urls = ["{server.url}/gone.pth"]', f'urls = ["{server.url}/gone.pth", "{server.url}/b.pth"]'
    )
    write_manifest(tmp_path, monkeypatch, body)

    [path] = weights.pull(["a"])

    assert path.read_bytes() == data


def test_a_download_that_never_connected_promises_no_partial_file(
    home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with socket.socket() as probe:  # a loopback port nobody listens on: the machine offline
        probe.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{probe.getsockname()[1]}/a.pth"
    monkeypatch.setattr(weights, "BACKOFF_S", 0.01)
    write_manifest(tmp_path, monkeypatch, entry("a", url, sha256=sha(b"x")))
    with pytest.raises(UserError) as err:
        weights.pull(["a"])
    assert err.value.code == "download-failed" and "once the connection works" in err.value.message
    assert "kept" not in err.value.message and not (home / "weights" / "a.pth.part").exists()


def test_failed_download_never_leaves_a_final_file_and_resumes_later(
    server: Server, home: Path, tmp_path, monkeypatch
) -> None:
    data = payload(4)
    server.behaviour.files["/a.pth"] = data
    server.behaviour.cut_after["/a.pth"] = 50_000
    server.behaviour.cut_times["/a.pth"] = weights.RETRIES + 1
    write_manifest(tmp_path, monkeypatch, entry("a", server.url + "/a.pth", sha256=sha(data)))

    with pytest.raises(UserError) as err:
        weights.pull(["a"])

    assert err.value.code == "download-failed" and "a.pth.part is kept" in err.value.message
    assert not (home / "weights" / "a.pth").exists()
    part = home / "weights" / "a.pth.part"
    assert part.stat().st_size == 50_000 * (weights.RETRIES + 1)

    [path] = weights.pull(["a"])  # the server behaves now: the next pull resumes

    assert server.ranges("/a.pth")[-1] == f"bytes={50_000 * (weights.RETRIES + 1)}-"
    assert path.read_bytes() == data and not part.exists()


def test_pin_at_first_download_then_enforced(server: Server, home: Path, tmp_path, monkeypatch) -> None:
    first, changed = payload(5), payload(6)
    server.behaviour.files["/a.pth"] = first
    write_manifest(tmp_path, monkeypatch, entry("a", server.url + "/a.pth", checksum_note="none upstream"))

    weights.pull(["a"])

    pins = json.loads((home / "weights" / "pins.json").read_text())
    assert pins["a"]["sha256"] == sha(first)
    assert pins["a"]["source"] == server.url + "/a.pth"
    [status] = weights.list_models()
    assert (status.state, status.checksum) == ("pinned", "pinned at first download")

    weights.remove("a")
    server.behaviour.files["/a.pth"] = changed
    with pytest.raises(UserError) as err:
        weights.pull(["a"])
    assert err.value.code == "checksum-mismatch"
    assert not (home / "weights" / "a.pth").exists()

    weights.remove("a", unpin=True)
    [path] = weights.pull(["a"])
    assert path.read_bytes() == changed
    assert weights.pins()["a"]["sha256"] == sha(changed)


def test_published_prefix_is_checked_and_the_full_hash_pinned(
    server: Server, home: Path, tmp_path, monkeypatch
) -> None:
    good, bad = payload(7), payload(8)
    server.behaviour.files["/good.pth"] = good
    server.behaviour.files["/bad.pth"] = bad
    body = entry("good", server.url + "/good.pth", sha256_prefix=sha(good)[:8])
    body += entry("bad", server.url + "/bad.pth", sha256_prefix=sha(good)[:8])
    write_manifest(tmp_path, monkeypatch, body)

    weights.pull(["good"])
    with pytest.raises(UserError) as err:
        weights.pull(["bad"])

    assert weights.pins()["good"]["sha256"] == sha(good)
    assert err.value.code == "checksum-mismatch" and "published" in err.value.message
    assert "bad" not in weights.pins()


def test_import_verifies_a_local_file(home: Path, tmp_path, monkeypatch) -> None:
    data = payload(9)
    write_manifest(tmp_path, monkeypatch, entry("a", "http://127.0.0.1:9/none", sha256=sha(data)))
    wrong = tmp_path / "wrong.pth"
    wrong.write_bytes(payload(10))
    right = tmp_path / "right.pth"
    right.write_bytes(data)

    with pytest.raises(UserError) as err:
        weights.import_file("a", wrong)
    assert err.value.code == "checksum-mismatch"
    assert not any((home / "weights").glob("a.pth*"))

    path = weights.import_file("a", right)
    assert path.read_bytes() == data and weights.require("a") == path
    assert right.exists()  # import copies, it never moves the user's file


def bundle_manifest(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, url: str, more: str = "") -> None:
    """A manifest of the archive "bundle" at `url` with candy in it, then `more`."""
    write_manifest(
        tmp_path,
        monkeypatch,
        f"""
[[archives]]
id = "bundle"
file = "saved_models.zip"
urls = ["{url}"]

[[weights]]
id = "candy"
method = "johnson"
file = "johnson_candy.pth"
archive = "bundle"
member = "saved_models/candy.pth"
"""
        + more,
    )


def saved(state: dict[str, torch.Tensor]) -> bytes:
    """`state` as torch.save writes it to a file."""
    buf = io.BytesIO()
    torch.save(state, buf)
    return buf.getvalue()


def test_zip_bundle_is_extracted_to_verified_files(
    server: Server, home: Path, tmp_path, monkeypatch, zoo: ModuleType
) -> None:
    candy, udnie = (saved(zoo.johnson_state_dict(zoo.johnson_model(seed))) for seed in (1, 2))
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("saved_models/candy.pth", candy)
        zf.writestr("saved_models/udnie.pth", udnie)
    server.behaviour.files["/saved_models.zip"] = buf.getvalue()
    bundle_manifest(
        tmp_path,
        monkeypatch,
        server.url + "/saved_models.zip",
        """
[[weights]]
id = "udnie"
method = "johnson"
file = "johnson_udnie.pth"
archive = "bundle"
member = "saved_models/udnie.pth"
""",
    )

    [path] = weights.pull(["candy"])

    assert path.read_bytes() == candy
    assert weights.require("udnie").read_bytes() == udnie  # extracted from the same download
    assert len(server.behaviour.requests) == 1
    assert not any((home / "weights").glob("saved_models.zip*"))
    assert set(weights.pins()) == {"candy", "udnie"}
    weights.pull(["candy", "udnie"])
    assert len(server.behaviour.requests) == 1  # already installed: nothing fetched


def test_require_explains_how_to_get_missing_weights(home: Path, tmp_path, monkeypatch) -> None:
    write_manifest(tmp_path, monkeypatch, entry("a", "http://127.0.0.1:9/none", sha256=sha(b"x")))

    with pytest.raises(UserError) as err:
        weights.require("a")

    assert err.value.code == "missing-weights"
    assert "nst models pull a" in err.value.message


def test_verify_notices_a_file_changed_after_install(home: Path, tmp_path, monkeypatch) -> None:
    data = payload(13)
    write_manifest(tmp_path, monkeypatch, entry("a", "http://127.0.0.1:9/none", sha256=sha(data)))
    source = tmp_path / "a.pth"
    source.write_bytes(data)
    path = weights.import_file("a", source)
    assert weights.path_for("a") == path

    flipped = bytearray(data)
    flipped[1000] ^= 0xFF
    path.write_bytes(bytes(flipped))
    os.utime(path, ns=(1, 1))  # a new mtime, as any real write gives

    [status] = weights.verify()
    assert status.state == "corrupt" and "nst models pull a" in status.message
    assert weights.path_for("a") is None


def test_the_shipped_manifest_is_well_formed(nst_env: dict[str, str]) -> None:
    # nst_env: an empty home, so that no model trained on this machine is listed with the shipped.
    manifest = weights.load_manifest(REPO / "weights" / "manifest.toml")
    ids = set(manifest.entries)
    assert {"vgg19", "vgg16", "adain_vgg", "adain_decoder", "hed"} <= ids
    with pytest.raises(UserError, match=r"no weights called 'candy'; did you mean johnson_candy\? known: "):
        manifest.entry("candy")  # the model's name, as --model takes it
    assert {f"johnson_{s}" for s in ("candy", "mosaic", "rain_princess", "udnie")} <= ids
    assert {f"cyclegan_style_{s}" for s in ("monet", "cezanne", "ukiyoe", "vangogh")} <= ids
    for e in manifest.entries.values():
        assert e.license and e.citation, e.id
        assert e.sha256 or e.sha256_prefix or e.checksum_note, e.id
        if e.sha256_prefix:
            assert e.file.split("-")[-1].startswith(e.sha256_prefix), e.id  # torchvision's convention
        assert e.package or layout_for(e) is not None, e.id  # import and pull check what a file holds
        if "torchvision" in e.arch:  # the file torchvision's own weights name, at its stated size
            published = torchvision.models.get_model_weights(e.arch["torchvision"]).IMAGENET1K_V1
            assert e.urls == (published.url,), e.id
            assert round(e.size / 2**20, 3) == published.meta["_file_size"], e.id  # MiB, as torchvision says


def run_cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "engine", "models", *args],
        capture_output=True,
        text=True,
        env={**os.environ, **env},
        cwd=REPO,
        timeout=120,
    )


def test_cli_pull_list_and_errors(server: Server, tmp_path: Path, monkeypatch) -> None:
    data = payload(14)
    server.behaviour.files["/a.pth"] = data
    manifest = write_manifest(tmp_path, monkeypatch, entry("a", server.url + "/a.pth"))
    env = {"NST_HOME": str(tmp_path / "home"), "NST_MANIFEST": str(manifest)}

    before = run_cli("verify", "a", env=env)
    pulled = run_cli("pull", "a", env=env)
    after = run_cli("verify", "a", env=env)
    listed = run_cli("list", env=env)
    unknown = run_cli("pull", "nope", env=env)

    assert before.returncode == 1 and "missing" in before.stdout  # a named file must be there
    assert pulled.returncode == 0, pulled.stderr
    assert after.returncode == 0, after.stdout
    assert "ok a: pinned (first use): sha256 " + sha(data) in pulled.stdout and "a: 100%" in pulled.stderr
    assert "verified" not in pulled.stdout  # no published hash: pinned, never "verified"
    row = next(line for line in listed.stdout.splitlines() if line.startswith("a "))
    assert row.split()[2] == "pinned" and "pinned 20" in row and "verified" not in row
    assert unknown.returncode == 2
    assert unknown.stderr.strip().splitlines() == ["nst: error: no weights called 'nope'; known: a"]


# --- verified (a published sha256) and pinned (a hash pinned at first use) --------------------


def nst(*args: str) -> int:
    """`nst ARGS` in this process (the handler, as engine.cli.main runs it)."""
    from engine.cli import build_parser

    parsed = build_parser().parse_args(list(args))
    return int(parsed.handler(parsed) or 0)


def test_import_says_pinned_where_no_hash_is_published(
    home: Path, tmp_path, monkeypatch, capsys: pytest.CaptureFixture[str]
) -> None:
    published, unpublished, prefixed = payload(20), payload(21), payload(22)
    body = entry("pub", "http://127.0.0.1:9/none", sha256=sha(published))
    body += entry("unpub", "http://127.0.0.1:9/none", checksum_note="none upstream")
    body += entry("prefixed", "http://127.0.0.1:9/none", sha256_prefix=sha(prefixed)[:8])
    write_manifest(tmp_path, monkeypatch, body)
    files = {}
    for name, data in (("pub", published), ("unpub", unpublished), ("prefixed", prefixed)):
        files[name] = tmp_path / f"{name}.pth"
        files[name].write_bytes(data)

    for name in files:
        assert nst("models", "import", name, str(files[name])) == 0
    first = capsys.readouterr().out.splitlines()
    assert first[0].startswith("ok pub: verified (matches the published sha256); installed as ")
    assert first[1].startswith(f"ok unpub: pinned (first use): sha256 {sha(unpublished)}; installed as ")
    assert first[2].startswith(
        f"ok prefixed: pinned (first use; starts with the published {sha(prefixed)[:8]}): sha256 "
    )
    assert nst("models", "import", "unpub", str(files["unpub"])) == 0
    again = capsys.readouterr().out
    assert again.startswith("ok unpub: pinned (matches the sha256 pinned 20") and "verified" not in again

    assert nst("models", "list") == 0
    rows = {line.split()[0]: line for line in capsys.readouterr().out.splitlines()[1:]}
    assert rows["pub"].split()[2] == "verified" and "published sha256" in rows["pub"]
    assert rows["unpub"].split()[2] == "pinned" and "verified" not in rows["unpub"]
    assert rows["prefixed"].split()[2] == "pinned" and "published prefix; pinned 20" in rows["prefixed"]
    states = {status.id: status.state for status in weights.verify()}
    assert states == {"pub": "verified", "unpub": "pinned", "prefixed": "pinned"}


def test_a_file_with_no_pin_is_unpinned_and_never_loaded(home: Path, tmp_path, monkeypatch) -> None:
    write_manifest(tmp_path, monkeypatch, entry("a", "http://127.0.0.1:9/none"))
    (home / "weights").mkdir(parents=True)
    (home / "weights" / "a.pth").write_bytes(payload(23))

    [status] = weights.list_models()
    with pytest.raises(UserError) as err:
        weights.require("a")

    assert status.state == "unpinned" and "nst models import a" in status.message
    assert weights.path_for("a") is None
    assert err.value.code == "missing-weights" and "unpinned" in err.value.message


# --- size limits -------------------------------------------------------------------------------


def assert_too_large(err: pytest.ExceptionInfo[UserError], *names: str, limit: int) -> None:
    assert err.value.code == "weights-too-large", err.value.message
    assert str(limit) in err.value.message, err.value.message
    for name in names:
        assert name in err.value.message, err.value.message


def test_a_download_without_a_declared_size_stops_at_the_cap(
    server: Server, home: Path, tmp_path, monkeypatch
) -> None:
    monkeypatch.setattr(weights, "MAX_UNSIZED_FILE_BYTES", 200_000)
    server.behaviour.files["/a.pth"] = payload(24, 2_000_000)
    server.behaviour.length["/a.pth"] = None  # no Content-Length: the body runs until the server closes
    write_manifest(tmp_path, monkeypatch, entry("a", server.url + "/a.pth"))
    seen: list[int] = []

    with pytest.raises(UserError) as err:
        weights.pull(["a"], progress=lambda _id, done, total: seen.append(done))

    assert_too_large(err, "a.pth", limit=200_000)
    assert max(seen, default=0) <= 200_000
    assert not any((home / "weights").glob("a.pth*")) and "a" not in weights.pins()
    assert len(server.behaviour.requests) == 1  # not retried


def test_a_download_stops_at_the_manifest_size_plus_the_margin(
    server: Server, home: Path, tmp_path, monkeypatch
) -> None:
    data = payload(25, 100_000)
    limit = 100_000 + weights.SIZE_MARGIN_MIN
    server.behaviour.files["/a.pth"] = data + payload(26, 2 * weights.SIZE_MARGIN_MIN)
    server.behaviour.length["/a.pth"] = None
    write_manifest(
        tmp_path, monkeypatch, entry("a", server.url + "/a.pth", sha256=sha(data)) + "size = 100000\n"
    )
    assert weights.file_limit(weights.load_manifest().entry("a")) == limit
    seen: list[int] = []

    with pytest.raises(UserError) as err:
        weights.pull(["a"], progress=lambda _id, done, total: seen.append(done))

    assert_too_large(err, "a.pth", limit=limit)
    assert max(seen) <= limit
    assert not any((home / "weights").glob("a.pth*"))


def test_a_declared_size_over_the_limit_is_refused_before_any_byte(
    server: Server, home: Path, tmp_path, monkeypatch
) -> None:
    server.behaviour.files["/a.pth"] = payload(27)
    server.behaviour.length["/a.pth"] = str(1 << 40)  # a lie the client must not act on
    write_manifest(tmp_path, monkeypatch, entry("a", server.url + "/a.pth"))
    seen: list[int] = []

    with pytest.raises(UserError) as err:
        weights.pull(["a"], progress=lambda _id, done, total: seen.append(done))

    assert_too_large(err, "a.pth", str(1 << 40), limit=weights.MAX_UNSIZED_FILE_BYTES)
    assert seen == [] and not any((home / "weights").glob("a.pth*"))


def test_a_resumed_download_stops_where_the_server_sends_more_than_it_declared(
    server: Server, home: Path, tmp_path, monkeypatch
) -> None:
    data = payload(28)
    server.behaviour.files["/a.pth"] = data
    server.behaviour.length["/a.pth"] = None
    server.behaviour.extra["/a.pth"] = payload(29, 500_000)  # past the Content-Range total
    write_manifest(tmp_path, monkeypatch, entry("a", server.url + "/a.pth"))
    (home / "weights").mkdir(parents=True)
    (home / "weights" / "a.pth.part").write_bytes(data[:100_000])

    with pytest.raises(UserError) as err:
        weights.pull(["a"])

    assert server.ranges("/a.pth") == ["bytes=100000-"]
    assert_too_large(err, "a.pth", f"{len(data)} bytes it declared", limit=weights.MAX_UNSIZED_FILE_BYTES)
    assert not any((home / "weights").glob("a.pth*")) and "a" not in weights.pins()


def test_a_zip_member_over_the_cap_is_refused_by_its_declared_size(
    server: Server, home: Path, tmp_path, monkeypatch
) -> None:
    # The report: a zip of a few hundred KB that inflates one member to hundreds of MiB.
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf, zf.open("saved_models/candy.pth", "w") as out:
        zeros = bytes(1 << 20)
        for _ in range(weights.MAX_UNSIZED_MEMBER_BYTES >> 20):
            out.write(zeros)
        out.write(b"\0")
    assert len(buf.getvalue()) < 300_000
    server.behaviour.files["/saved_models.zip"] = buf.getvalue()
    bundle_manifest(tmp_path, monkeypatch, server.url + "/saved_models.zip")
    copy = tmp_path / "saved_models.zip"
    copy.write_bytes(buf.getvalue())
    for call in (lambda: weights.pull(["candy"]), lambda: weights.import_file("candy", copy)):
        with pytest.raises(UserError) as err:
            call()
        assert_too_large(err, "saved_models/candy.pth", "candy", limit=weights.MAX_UNSIZED_MEMBER_BYTES)
        assert not any((home / "weights").glob("johnson_candy*")) and "candy" not in weights.pins()
        assert "nothing was extracted" in err.value.message  # refused by the declared size
    assert not any((home / "weights").glob("saved_models.zip*"))


def test_a_zip_member_that_inflates_past_its_declared_size_is_stopped(
    home: Path, tmp_path, monkeypatch
) -> None:
    # A zip can lie: the bytes are counted while they are copied, whatever the header says.
    bundle_manifest(tmp_path, monkeypatch, "http://127.0.0.1:9/none")
    copy = tmp_path / "saved_models.zip"
    with zipfile.ZipFile(copy, "w") as zf:
        zf.writestr("saved_models/candy.pth", payload(30, 1000))
    endless = bytes(4 << 20)  # what a decompressor that ignores the header would hand out
    monkeypatch.setattr(zipfile.ZipFile, "open", lambda self, name, *args, **kwargs: io.BytesIO(endless))

    with pytest.raises(UserError) as err:
        weights.import_file("candy", copy)

    assert_too_large(
        err, "saved_models/candy.pth", "1000 bytes it declares", limit=weights.MAX_UNSIZED_MEMBER_BYTES
    )
    assert not any((home / "weights").glob("johnson_candy*")) and "candy" not in weights.pins()


def test_a_zip_whose_header_lies_about_the_size_is_a_bad_archive(home: Path, tmp_path, monkeypatch) -> None:
    bundle_manifest(tmp_path, monkeypatch, "http://127.0.0.1:9/none")
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("saved_models/candy.pth", bytes(1 << 20))
    raw = bytearray(buf.getvalue())
    # Declare 1000 bytes in the local header (offset 22) and the central directory (offset 24).
    for signature, offset in ((b"PK\x03\x04", 22), (b"PK\x01\x02", 24)):
        at = raw.index(signature) + offset
        raw[at : at + 4] = (1000).to_bytes(4, "little")
    copy = tmp_path / "saved_models.zip"
    copy.write_bytes(bytes(raw))

    with pytest.raises(UserError) as err:
        weights.import_file("candy", copy)

    assert err.value.code == "bad-archive" and "saved_models/candy.pth" in err.value.message
    assert not any((home / "weights").glob("johnson_candy*")) and "candy" not in weights.pins()


def test_an_import_over_the_limit_is_refused_before_copying(home: Path, tmp_path, monkeypatch) -> None:
    data = payload(31, 1000)
    write_manifest(tmp_path, monkeypatch, entry("a", "http://127.0.0.1:9/none") + "size = 1000\n")
    big = tmp_path / "big.pth"
    big.write_bytes(data + bytes(weights.SIZE_MARGIN_MIN + 1))

    with pytest.raises(UserError) as err:
        weights.import_file("a", big)

    assert_too_large(err, str(big), "a.pth", limit=1000 + weights.SIZE_MARGIN_MIN)
    assert not any((home / "weights").glob("a.pth*")) and "a" not in weights.pins()


def test_an_installed_file_over_the_limit_is_never_hashed_nor_handed_out(
    home: Path, tmp_path, monkeypatch
) -> None:
    data = payload(32, 1000) + bytes(weights.SIZE_MARGIN_MIN + 1)
    write_manifest(
        tmp_path, monkeypatch, entry("a", "http://127.0.0.1:9/none", sha256=sha(data)) + "size = 1000\n"
    )
    (home / "weights").mkdir(parents=True)
    (home / "weights" / "a.pth").write_bytes(data)
    monkeypatch.setattr(weights, "sha256_file", lambda path: pytest.fail(f"hashed {path}"))

    [status] = weights.verify()

    assert weights.path_for("a") is None
    assert status.state == "corrupt" and str(1000 + weights.SIZE_MARGIN_MIN) in status.message


# --- what a file holds: checked before it is pinned ----------------------------------------------


def test_a_download_that_is_not_a_checkpoint_is_never_pinned(
    server: Server, home: Path, tmp_path, monkeypatch, zoo: ModuleType
) -> None:
    server.behaviour.files["/mosaic.pth"] = b"<!DOCTYPE html><html>Rate limit exceeded</html>"
    body = entry("johnson_x", server.url + "/mosaic.pth").replace('method = "test"', 'method = "johnson"')
    write_manifest(tmp_path, monkeypatch, body)

    with pytest.raises(UserError) as err:
        weights.pull(["johnson_x"])

    assert err.value.code == "bad-weights"
    assert err.value.message == (
        f"the file from {server.url}/mosaic.pth is not a PyTorch checkpoint (it is an HTML or XML page); "
        "nothing was installed as johnson_x"
    )
    assert not any((home / "weights").glob("johnson_x*")) and "johnson_x" not in weights.pins()

    server.behaviour.files["/mosaic.pth"] = right = saved(zoo.johnson_state_dict(zoo.johnson_model()))
    [path] = weights.pull(["johnson_x"])
    assert path.read_bytes() == right and weights.pins()["johnson_x"]["sha256"] == sha(right)


UPSTREAM_STATES = {
    "johnson": lambda zoo: zoo.johnson_state_dict(zoo.johnson_model()),
    "cyclegan": lambda zoo: zoo.cyclegan_model().state_dict(),
    "adain_vgg": lambda zoo: zoo.adain_models()[0].state_dict(),
    "adain_decoder": lambda zoo: zoo.adain_models()[1].state_dict(),
}


@pytest.mark.parametrize(
    ("weight_id", "wrong", "arch", "keys"),
    [
        (
            "johnson_candy",
            "cyclegan",
            "fast-neural-style TransformerNet",
            "62 missing keys like conv1.conv2d.",
        ),
        (
            "adain_vgg",
            "adain_decoder",
            "pytorch-AdaIN vgg_normalised",
            "30 missing keys like 0.weight, 0.bias",
        ),
        (
            "adain_decoder",
            "adain_vgg",
            "pytorch-AdaIN decoder",
            "14 missing keys like 1.weight, 1.bias, 8.weight",
        ),
        ("vgg19", "johnson", "torchvision VGG19", "32 missing keys like features.0.weight, features.0.bias"),
        (
            "inception_v3",
            "johnson",
            "torchvision Inception v3",
            "missing keys like Conv2d_1a_3x3.conv.weight",
        ),
    ],
)
def test_a_checkpoint_of_another_architecture_is_refused(
    weight_id: str, wrong: str, arch: str, keys: str, nst_env: dict[str, str], tmp_path: Path, zoo: ModuleType
) -> None:
    file = tmp_path / f"{wrong}.pth"
    torch.save(UPSTREAM_STATES[wrong](zoo), file)

    with pytest.raises(UserError) as err:
        weights.import_file(weight_id, file)

    message = err.value.message
    assert err.value.code == "bad-weights"
    assert message.startswith(f"{file} is a checkpoint, but not a {arch} for {weight_id}: "), message
    assert keys in message and message.endswith(f"; nothing was installed as {weight_id}"), message
    assert weights.pins() == {} and not list(weights.weights_dir().glob("*.p*"))


def nst_cli(*args: str, home: Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    """`nst ARGS` as a user runs it, with the shipped manifest and a throwaway home."""
    env = {"NST_HOME": str(home), "NST_MANIFEST": str(REPO / "weights" / "manifest.toml")}
    return subprocess.run(
        [sys.executable, "-m", "engine", *args],
        capture_output=True,
        text=True,
        env={**os.environ, **env},
        cwd=cwd,
        timeout=300,
    )


def one_error_line(done: subprocess.CompletedProcess[str]) -> str:
    """The message of a command refused for bad input: exit status 2 and one line on stderr."""
    assert done.returncode == 2, (done.stdout, done.stderr)
    [line] = done.stderr.splitlines()
    assert line.startswith("nst: error: ") and "weights_only" not in line, line
    return line.removeprefix("nst: error: ")


def test_a_picture_imported_as_a_model_is_refused_and_the_model_then_imports(
    nst_env: dict[str, str], tmp_path: Path, zoo: ModuleType
) -> None:
    home = Path(nst_env["NST_HOME"])
    picture, model, candy = tmp_path / "st.jpg", tmp_path / "mosaic.pth", tmp_path / "candy.pth"
    Image.new("RGB", (32, 32), (200, 40, 10)).save(picture)
    torch.save(zoo.johnson_state_dict(zoo.johnson_model()), model)
    torch.save(zoo.johnson_state_dict(zoo.johnson_model(1)), candy)

    refused = one_error_line(
        nst_cli("models", "import", "johnson_mosaic", str(picture), home=home, cwd=tmp_path)
    )
    other = one_error_line(
        nst_cli("models", "import", "cyclegan_style_cezanne", str(candy), home=home, cwd=tmp_path)
    )

    assert refused == (
        f"{picture} is not a PyTorch checkpoint (it is a JPEG image); nothing was installed as johnson_mosaic"
    )
    assert other.startswith(
        f"{candy} is a checkpoint, but not a CycleGAN resnet_9blocks generator for cyclegan_style_cezanne: "
        "48 missing keys like model.1.weight, model.1.bias, model.4.weight; 62 unexpected keys like "
    )
    assert weights.pins() == {} and not list((home / "weights").glob("*.p*"))
    imported = nst_cli("models", "import", "johnson_mosaic", str(model), home=home, cwd=tmp_path)
    assert imported.returncode == 0, imported.stderr
    assert imported.stdout.startswith(
        f"ok johnson_mosaic: pinned (first use): sha256 {sha(model.read_bytes())}"
    )


def test_a_pin_mismatch_names_the_first_file_and_the_fix_that_works(
    nst_env: dict[str, str], tmp_path: Path, zoo: ModuleType
) -> None:
    home = Path(nst_env["NST_HOME"])
    first, right = tmp_path / "candy.pth", tmp_path / "mosaic.pth"
    torch.save(
        zoo.johnson_state_dict(zoo.johnson_model(1)), first
    )  # another style: a checkpoint all the same
    torch.save(zoo.johnson_state_dict(zoo.johnson_model()), right)
    assert nst_cli("models", "import", "johnson_mosaic", str(first), home=home, cwd=tmp_path).returncode == 0
    assert nst_cli("models", "remove", "johnson_mosaic", home=home, cwd=tmp_path).returncode == 0
    pinned_at = weights.pins()["johnson_mosaic"]["pinned_at"].replace("T", " ")

    mismatch = one_error_line(
        nst_cli("models", "import", "johnson_mosaic", str(right), home=home, cwd=tmp_path)
    )

    assert mismatch == (
        f"johnson_mosaic: {right} has sha256 {sha(right.read_bytes())}, which does not match "
        f"{sha(first.read_bytes())}, pinned at the first import of johnson_mosaic ({pinned_at}, "
        f"from {first}); the file was discarded. If that first file was the wrong one, drop its pin with "
        "`nst models remove --unpin johnson_mosaic`, then import or pull johnson_mosaic again"
    )
    unpinned = nst_cli("models", "remove", "--unpin", "johnson_mosaic", home=home, cwd=tmp_path)
    assert unpinned.returncode == 0 and "removed johnson_mosaic and its pin" in unpinned.stdout
    imported = nst_cli("models", "import", "johnson_mosaic", str(right), home=home, cwd=tmp_path)
    assert imported.returncode == 0, imported.stderr
    assert weights.pins()["johnson_mosaic"]["sha256"] == sha(right.read_bytes())


def test_a_wrong_file_pinned_before_imports_were_checked_is_one_line_at_use_and_in_verify(
    nst_env: dict[str, str], tmp_path: Path, zoo: ModuleType
) -> None:
    # A picture and a Johnson model pinned as CycleGAN's, as an engine that did not check them left them.
    home = Path(nst_env["NST_HOME"])
    folder = home / "weights"
    folder.mkdir(parents=True)
    mosaic, cezanne = folder / "johnson_mosaic.pth", folder / "cyclegan_style_cezanne.pth"
    Image.new("RGB", (32, 32), (200, 40, 10)).save(mosaic, format="JPEG")
    torch.save(zoo.johnson_state_dict(zoo.johnson_model()), cezanne)
    pins = {
        file.stem: {
            "sha256": sha(file.read_bytes()),
            "source": "import:/x",
            "pinned_at": "2025-01-01T00:00:00+00:00",
        }
        for file in (mosaic, cezanne)
    }
    (folder / "pins.json").write_text(json.dumps(pins), encoding="utf-8")
    photo = tmp_path / "in.jpg"
    Image.new("RGB", (40, 32), (20, 100, 10)).save(photo)

    def stylize(method: str, model: str) -> str:
        args = ("stylize", str(photo), "--method", method, "--model", model, "-o", "out.png")
        return one_error_line(nst_cli(*args, home=home, cwd=tmp_path))

    def fix(weight_id: str) -> str:
        return (
            f"drop it and its pin with `nst models remove --unpin {weight_id}`, then re-import the right "
            f"file with `nst models import {weight_id} FILE` or `nst models pull {weight_id}`"
        )

    johnson, cyclegan = stylize("johnson", "mosaic"), stylize("cyclegan", "style_cezanne")
    verified = nst_cli("models", "verify", home=home, cwd=tmp_path)

    assert johnson == (
        f"the johnson_mosaic weights at {mosaic} are not a fast-neural-style TransformerNet checkpoint "
        f"(it is a JPEG image); {fix('johnson_mosaic')}"
    )
    assert cyclegan.startswith(
        f"the cyclegan_style_cezanne weights at {cezanne} are not a CycleGAN resnet_9blocks generator "
        "checkpoint (48 missing keys like model.1.weight, model.1.bias, model.4.weight; 62 unexpected "
        "keys like "
    )
    assert cyclegan.endswith(f"); {fix('cyclegan_style_cezanne')}") and len(cyclegan) < 600
    assert verified.returncode == 1
    states = {line.split()[0]: line.split()[2] for line in verified.stdout.splitlines()[1:] if "  " in line}
    assert states["johnson_mosaic"] == states["cyclegan_style_cezanne"] == "corrupt"
    assert (
        "johnson_mosaic: not a fast-neural-style TransformerNet checkpoint (it is a JPEG image); "
        in verified.stdout
    )

    assert nst_cli("models", "remove", "--unpin", "johnson_mosaic", home=home, cwd=tmp_path).returncode == 0
    right = tmp_path / "mosaic.pth"
    torch.save(zoo.johnson_state_dict(zoo.johnson_model()), right)
    assert nst_cli("models", "import", "johnson_mosaic", str(right), home=home, cwd=tmp_path).returncode == 0
