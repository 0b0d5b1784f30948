"""The wire format: framing, validation of every field, endpoint rules, and the shared-file setup."""

from __future__ import annotations

import ast
import itertools
import json
import os
import socket
import struct
import sys
import threading
import time
import tracemalloc
from pathlib import Path
from typing import Any

import platformdirs
import pytest

from nst_common import endpoints, framing, messages
from nst_common.framing import (
    MAGIC,
    PREFIX,
    ConnectionClosed,
    Limits,
    Message,
    ProtocolError,
    encode_chunk,
    encode_header,
    read_message,
    send_message,
)
from nst_common.messages import RawImage, StyleRef, StylizeJob, job_message, parse_job

ROOT = Path(__file__).resolve().parents[1]
LIMITS = Limits(max_payload=1 << 27, max_side=4096)


def _pair() -> tuple[socket.socket, socket.socket]:
    a, b = socket.socketpair()
    a.settimeout(framing.POLL)
    b.settimeout(framing.POLL)
    return a, b


def _image(w: int, h: int, c: int, dtype: str, seed: int = 0) -> RawImage:
    size = w * h * c * messages.DTYPE_SIZES[dtype]
    return RawImage(w, h, c, dtype, bytes((seed + i * 7) % 256 for i in range(size)))


def _roundtrip(header: dict[str, Any], blobs: list[Any], limits: Limits = LIMITS) -> Message:
    a, b = _pair()
    with a, b:
        sender = threading.Thread(target=send_message, args=(a, header, blobs))
        sender.start()
        try:
            return read_message(b, limits, stall_timeout=2.0)
        finally:
            sender.join()


def _raw_frame(header: Any, payload: bytes = b"", declared: int | None = None) -> bytes:
    text = header if isinstance(header, bytes) else json.dumps(header).encode()
    return PREFIX.pack(MAGIC, len(text), len(payload) if declared is None else declared) + text + payload


def _read_raw(data: bytes, limits: Limits = LIMITS) -> Message:
    a, b = _pair()
    with a, b:
        a.sendall(data)
        a.shutdown(socket.SHUT_WR)
        return read_message(b, limits, stall_timeout=0.5)


def test_job_roundtrip_keeps_every_field_and_byte() -> None:
    content = _image(5, 3, 4, "u16", seed=1)
    job = StylizeJob(
        method="gatys",
        params={"preset": "draft", "size": 48, "strength": 0.5, "layers": {"relu1_1": 1.0}, "x": [1, None]},
        content=content,
        styles=[StyleRef(path="/x/style.jpg", weight=0.25), StyleRef(image=_image(2, 2, 3, "f32", 3))],
        selection=_image(5, 3, 1, "f32", seed=2),
        masks={"sky": _image(5, 3, 1, "u8", seed=4)},
        content_map=_image(5, 3, 3, "u8", seed=5),
    )
    job.styles[1].map = _image(2, 2, 4, "u8", seed=6)
    header, blobs = job_message(job)
    got = parse_job(_roundtrip(header, blobs), LIMITS)
    assert got.method == "gatys" and got.params == job.params
    c = got.content
    assert (c.width, c.height, c.channels, c.dtype) == (5, 3, 4, "u16")
    assert bytes(got.content.data) == content.data
    assert got.styles[0].path == "/x/style.jpg" and got.styles[0].weight == 0.25
    assert got.styles[1].image is not None and bytes(got.styles[1].image.data) == job.styles[1].image.data
    assert got.selection is not None and bytes(got.selection.data) == job.selection.data
    assert bytes(got.masks["sky"].data) == job.masks["sky"].data
    assert got.content_map is not None and bytes(got.content_map.data) == job.content_map.data
    assert got.styles[0].map is None and got.styles[1].map is not None
    assert bytes(got.styles[1].map.data) == job.styles[1].map.data and got.styles[1].map.channels == 4


def test_large_payload_streams_intact() -> None:
    data = os.urandom(1 << 20) * 48  # 48 MiB: many send/recv chunks
    msg = _roundtrip({"type": "x"}, [data, b"tail"], Limits(max_payload=1 << 27))
    assert len(msg.blobs) == 2 and msg.blobs[0] == data and bytes(msg.blobs[1]) == b"tail"


@pytest.mark.parametrize(
    ("frame", "code"),
    [
        (b"XXXX" + bytes(12), "bad-frame"),
        (PREFIX.pack(MAGIC, 0, 0), "too-large"),
        (PREFIX.pack(MAGIC, (1 << 20) + 1, 0), "too-large"),
        (PREFIX.pack(MAGIC, 2, (1 << 27) + 1) + b"{}", "too-large"),
        (_raw_frame(b"{not json"), "bad-frame"),
        (_raw_frame(b"\xff\xfe{}"), "bad-frame"),
        (_raw_frame(b'{"type": "x", "n": NaN}'), "bad-frame"),
        (_raw_frame(b'{"type": "x", "n": -Infinity}'), "bad-frame"),
        (_raw_frame(b'{"type": "x", "n": 1e999}'), "bad-frame"),
        (_raw_frame(b"[" * 100000 + b"]" * 100000), "bad-frame"),
        (_raw_frame([1, 2]), "bad-frame"),
        (_raw_frame({"type": "x", "blobs": [4]}, b"abc"), "bad-frame"),
        (_raw_frame({"type": "x", "blobs": [2, 2]}, b"abc"), "bad-frame"),
        (_raw_frame({"type": "x", "blobs": [-1, 4]}, b"abc"), "bad-frame"),
        (_raw_frame({"type": "x", "blobs": [True]}, b"a"), "bad-frame"),
        (_raw_frame({"type": "x", "blobs": "3"}, b"abc"), "bad-frame"),
        (_raw_frame({"type": "x", "blobs": [0] * 65}), "bad-frame"),
        (_raw_frame({"type": "x"}, declared=1 << 26), "bad-frame"),
    ],
)
def test_malformed_frames_are_rejected(frame: bytes, code: str) -> None:
    with pytest.raises(ProtocolError) as info:
        _read_raw(frame)
    assert info.value.code == code


def test_truncated_frame_is_a_closed_connection() -> None:
    frame = _raw_frame({"type": "x", "blobs": [10]}, b"0123456789")
    for cut in (1, PREFIX.size, PREFIX.size + 3, len(frame) - 1):
        with pytest.raises(ConnectionClosed):
            _read_raw(frame[:cut])


def test_a_peer_stalling_mid_frame_times_out_but_idle_between_frames_does_not() -> None:
    a, b = _pair()
    idle_calls = []
    with a, b:
        a.sendall(_raw_frame({"type": "x"})[:10])
        with pytest.raises(ProtocolError) as info:
            read_message(b, LIMITS, stall_timeout=0.3, on_idle=lambda: idle_calls.append(1))
        assert info.value.code == "timeout" and idle_calls == []

    a, b = _pair()
    with a, b:

        def on_idle() -> None:
            idle_calls.append(1)
            if len(idle_calls) == 5:
                a.sendall(_raw_frame({"type": "late"}))

        assert read_message(b, LIMITS, stall_timeout=0.05, on_idle=on_idle).header["type"] == "late"


def _stylize_header(**over: Any) -> tuple[dict[str, Any], list[bytes]]:
    header: dict[str, Any] = {
        "type": "stylize",
        "method": "gatys",
        "params": {},
        "content": {"width": 2, "height": 2, "channels": 3, "dtype": "u8", "blob": 0},
        "styles": [{"path": "/s.jpg"}],
    }
    header.update(over)
    return header, [bytes(12), bytes(4), bytes(16)]


def _content(**over: Any) -> dict[str, Any]:
    return {"width": 2, "height": 2, "channels": 3, "dtype": "u8", "blob": 0, **over}


@pytest.mark.parametrize(
    "over",
    [
        {"method": 3},
        {"method": ""},
        {"method": "x" * 5000},
        {"method": "a\x00b"},
        {"params": []},
        {"params": {"deep": [[[[[[[[[[[1]]]]]]]]]]]}},
        {"params": {"s": "x" * 5000}},
        {"content": None},
        {"content": _content(width=0)},
        {"content": _content(width=4097)},
        {"content": _content(width=2.0)},
        {"content": _content(width=True)},
        {"content": _content(height="2")},
        {"content": _content(channels=5)},
        {"content": _content(dtype="u32")},
        {"content": _content(dtype=["u8"])},
        {"content": _content(blob=3)},
        {"content": _content(blob=-1)},
        {"content": _content(width=3)},  # 3x2x3 = 18 bytes, blob 0 holds 12
        {"content": _content(dtype="u16")},
        {"styles": {"path": "/s.jpg"}},
        {"styles": [{"path": "/s.jpg", "image": _content()}]},
        {"styles": [{}]},
        {"styles": [{"path": 7}]},
        {"styles": [{"path": "/s.jpg", "weight": -1}]},
        {"styles": [{"path": "/s.jpg", "weight": "1"}]},
        {"styles": [{"path": "/s.jpg", "weight": 1e300}]},
        {"styles": [{"path": "/s.jpg"}] * 17},
        {"selection": _content(channels=1, blob=1, width=4, height=1)},  # not the content's size
        {"selection": _content(blob=0)},  # three channels
        {"masks": []},
        {"masks": {"": _content(channels=1, blob=1)}},
        {"masks": {"sky": "x"}},
        {"masks": {"sky": _content(channels=1, blob=1, width=4, height=1)}},  # not the content's size
        {"content_map": _content(blob=1, width=4, height=1, channels=1)},  # not the content's size
        {"content_map": "x"},
        {
            "styles": [{"image": _content(), "map": _content(blob=1, width=1, height=1)}]
        },  # not the style's size
        {"styles": [{"path": "/s.jpg", "map": {"blob": 1}}]},
    ],
)
def test_invalid_stylize_fields_are_rejected(over: dict[str, Any]) -> None:
    header, blobs = _stylize_header(**over)
    with pytest.raises(ProtocolError) as info:
        parse_job(Message(header, [memoryview(b) for b in blobs]), LIMITS)
    assert info.value.code == "bad-request"


def test_valid_stylize_header_passes() -> None:
    header, blobs = _stylize_header(
        selection=_content(channels=1, blob=1), masks={"sky": _content(channels=1, blob=1)}
    )
    job = parse_job(Message(header, [memoryview(b) for b in blobs]), LIMITS)
    assert job.selection is not None and job.selection.channels == 1 and job.styles[0].path == "/s.jpg"


def test_encode_refuses_nan() -> None:
    with pytest.raises(ValueError):
        encode_header({"type": "x", "v": float("nan")}, [])


def test_prefix_is_big_endian_magic_then_lengths() -> None:
    frame = encode_header({"type": "x"}, [b"abcd"])
    magic, header_len, payload_len = struct.unpack(">4sIQ", frame[:16])
    assert (magic, header_len, payload_len) == (MAGIC, len(frame) - 16, 4)
    assert json.loads(frame[16:]) == {"type": "x", "blobs": [4]}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("unix:/run/x.sock", "unix:/run/x.sock"),
        ("127.0.0.1:8000", "tcp:127.0.0.1:8000"),
        ("tcp:example.org:1", "tcp:example.org:1"),
        ("[::1]:9", "tcp:[::1]:9"),
    ],
)
def test_endpoints_parse_and_print(text: str, expected: str) -> None:
    assert str(endpoints.parse_endpoint(text)) == expected
    assert endpoints.parse_endpoint(expected) == endpoints.parse_endpoint(text)


@pytest.mark.parametrize("text", ["", "unix:", "host", "host:65536", ":80", "host:http"])
def test_bad_endpoints_are_refused(text: str) -> None:
    with pytest.raises(ValueError):
        endpoints.parse_endpoint(text)


def test_loopback_detection() -> None:
    assert endpoints.parse_endpoint("127.0.0.1:1").is_loopback
    assert endpoints.parse_endpoint("[::1]:1").is_loopback
    assert not endpoints.parse_endpoint("0.0.0.0:1").is_loopback
    assert not endpoints.parse_endpoint("192.168.1.5:1").is_loopback


@pytest.mark.skipif(sys.platform != "linux", reason="the XDG rule")
def test_dirs_follow_platformdirs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path / "run"))
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    for var in ("NST_HOME", "NST_RUNTIME_DIR", "NST_ENDPOINT"):
        monkeypatch.delenv(var, raising=False)
    assert endpoints.runtime_dir() == Path(platformdirs.user_runtime_dir("neural-style", appauthor=False))
    assert endpoints.data_dir() == Path(platformdirs.user_data_dir("neural-style", appauthor=False))
    assert endpoints.default_endpoint() == endpoints.Endpoint(
        "unix", path=str(tmp_path / "run" / "neural-style" / "engine.sock")
    )
    env = {"NST_HOME": "/h", "NST_RUNTIME_DIR": "/r", "NST_ENDPOINT": "127.0.0.1:5"}
    assert endpoints.data_dir(env) == Path("/h") and endpoints.runtime_dir(env) == Path("/r")
    assert endpoints.default_endpoint(env) == endpoints.parse_endpoint("tcp:127.0.0.1:5")
    assert endpoints.token_path(env) == Path("/h/token")


def test_shared_package_is_stdlib_only() -> None:
    """nst_common is copied next to the plug-in, which runs in GIMP's Python: no third-party import."""
    for source in (ROOT / "nst_common").glob("*.py"):
        tree = ast.parse(source.read_text())
        imported = {
            (node.module if isinstance(node, ast.ImportFrom) else alias.name).split(".")[0]
            for node in ast.walk(tree)
            if isinstance(node, (ast.Import, ast.ImportFrom)) and not getattr(node, "level", 0)
            for alias in node.names
        }
        assert imported <= set(sys.stdlib_module_names) | {"__future__", "nst_common"}, (source, imported)


# --- Chunked messages ----------------------------------------------------------------------------

SMALL = Limits(max_payload=4096, max_message=1 << 20, max_side=4096)


def _chunked(sizes: list[int], *chunks: tuple[int, int, bytes]) -> bytes:
    """A chunked message's header frame for blobs of `sizes`, then (blob, offset, bytes) chunks."""
    head = encode_header({"type": "x"}, [bytes(n) for n in sizes], chunked=True)
    return head + b"".join(encode_chunk(b, o, len(data)) + data for b, o, data in chunks)


def test_a_message_larger_than_a_chunk_streams_into_one_buffer() -> None:
    first, second = os.urandom(70_001), os.urandom(10_000)
    a, b = _pair()
    progress: list[tuple[int, int]] = []
    with a, b:
        sender = threading.Thread(
            target=send_message,
            args=(a, {"type": "x"}, [first, memoryview(second)]),
            kwargs={"chunk_size": 4096},
        )
        sender.start()
        try:
            msg = read_message(b, SMALL, stall_timeout=2.0, on_chunk=lambda n, t: progress.append((n, t)))
        finally:
            sender.join()
    assert msg.header["chunked"] is True and msg.header["blobs"] == [70_001, 10_000]
    assert msg.blobs[0] == first and msg.blobs[1] == second
    assert msg.blobs[0].obj is msg.blobs[1].obj and len(msg.blobs[0].obj) == 80_001  # one buffer
    assert len(progress) == 18 + 3 and progress[-1] == (80_001, 80_001)  # ceil(70001/4096) + ceil(10000/4096)
    assert all(x[0] < y[0] for x, y in itertools.pairwise(progress))


def test_a_message_within_one_chunk_stays_inline() -> None:
    frame = encode_header({"type": "x"}, [b"abcd"])
    assert PREFIX.unpack(frame[:16])[2] == 4 and b"chunked" not in frame
    a, b = _pair()
    with a, b:
        send_message(a, {"type": "x"}, [b"abcd"], chunk_size=4)
        assert bytes(read_message(b, SMALL, 1.0).blobs[0]) == b"abcd"
        send_message(a, {"type": "x"}, [b"abcde"], chunk_size=4)  # one byte more: two chunks
        msg = read_message(b, Limits(max_payload=4), 1.0)
        assert msg.header["chunked"] and bytes(msg.blobs[0]) == b"abcde"


A8, B4 = bytes(range(8)), b"WXYZ"


@pytest.mark.parametrize(
    ("stream", "code"),
    [
        (_chunked([8], (0, 4, A8[4:]), (0, 0, A8[:4])), "bad-frame"),  # out of order
        (_chunked([8], (0, 0, A8[:4]), (0, 2, A8[2:])), "bad-frame"),  # overlapping
        (_chunked([8], (0, 0, A8[:2]), (0, 4, A8[4:])), "bad-frame"),  # a gap
        (_chunked([8, 4], (1, 0, B4), (0, 0, A8)), "bad-frame"),  # blobs out of order
        (_chunked([8, 4], (0, 0, A8[:4])) + encode_header({"type": "jobs"}, []), "bad-frame"),  # ended early
        (_chunked([8], (0, 0, A8 + b"!")), "bad-frame"),  # longer than the blob
        (_chunked([8, 4], (0, 0, A8 + B4)), "bad-frame"),  # one chunk across two blobs
        (_chunked([8], (0, 0, b""), (0, 0, A8)), "bad-frame"),  # empty chunk
        (_chunked([8]) + PREFIX.pack(MAGIC, 2, 8) + b"{}" + A8, "bad-frame"),  # not a chunk header
        (_chunked([8]) + _raw_frame({"type": "chunk", "blob": 0, "offset": 0.0}, A8), "bad-frame"),
        (_chunked([8]) + _raw_frame({"type": "chunk", "blob": False, "offset": 0}, A8), "bad-frame"),
        (_chunked([8]) + _raw_frame({"type": "chunk", "blob": 0}, A8), "bad-frame"),
        (_chunked([8]) + _raw_frame(b'{"type": "chunk", "blob": 0, "offset": 0', A8), "bad-frame"),
        (_chunked([8]) + _raw_frame(b"x" * 1025, A8), "too-large"),  # chunk headers are small
        (_chunked([1 << 13], (0, 0, bytes(4097))), "too-large"),  # over max_payload
        (_chunked([(1 << 20) + 1]), "too-large"),  # over max_message, before anything is allocated
        (_chunked([4, 4]).replace(b"[4,4]", b"[4,-4]"), "bad-frame"),
        (_raw_frame({"type": "x", "blobs": [4], "chunked": True}, b"abcd"), "bad-frame"),  # payload too
        (_raw_frame({"type": "x", "blobs": [4], "chunked": 1}), "bad-frame"),
        (_raw_frame({"type": "x", "blobs": [4], "chunked": "yes"}), "bad-frame"),
        (encode_chunk(0, 0, 4) + b"abcd", "bad-frame"),  # a chunk with no message
    ],
)
def test_malformed_chunk_streams_are_rejected(stream: bytes, code: str) -> None:
    with pytest.raises(ProtocolError) as info:
        _read_raw(stream, SMALL)
    assert info.value.code == code, info.value.message


def test_too_many_chunks_the_extra_one_is_refused_and_a_truncated_one_is_a_closed_connection() -> None:
    a, b = _pair()
    with a, b:
        a.sendall(_chunked([8], (0, 0, A8[:5]), (0, 5, A8[5:]), (0, 8, b"more")))
        a.shutdown(socket.SHUT_WR)
        assert bytes(read_message(b, SMALL, 0.5).blobs[0]) == A8
        with pytest.raises(ProtocolError) as info:
            read_message(b, SMALL, 0.5)
        assert info.value.code == "bad-frame" and "outside a chunked message" in info.value.message
    stream = _chunked([8], (0, 0, A8))
    for cut in (len(stream) - 9, len(stream) - 3):  # inside the chunk's header, inside its bytes
        with pytest.raises(ConnectionClosed):
            _read_raw(stream[:cut], SMALL)


def test_a_peer_stalling_between_chunks_times_out() -> None:
    a, b = _pair()
    with a, b:
        a.sendall(_chunked([8], (0, 0, A8[:4])))
        idle: list[int] = []
        start = time.monotonic()
        with pytest.raises(ProtocolError) as info:
            read_message(b, SMALL, stall_timeout=0.3, on_idle=lambda: idle.append(1))
        assert info.value.code == "timeout" and idle == [] and 0.3 <= time.monotonic() - start < 2.0


def test_check_runs_before_allocation_and_a_rejected_message_can_be_skipped() -> None:
    huge = Limits(max_message=1 << 44)
    seen: list[Any] = []

    def refuse(header: dict[str, Any], sizes: list[int]) -> None:
        seen.append(sizes)
        raise ProtocolError("bad-request", "no thanks")

    a, b = _pair()
    with a, b:
        # 16 TiB declared: a receiver that allocated before asking `check` would die here.
        a.sendall(_raw_frame({"type": "x", "ref": 5, "blobs": [1 << 44], "chunked": True}))
        with pytest.raises(framing.Rejected) as info:
            read_message(b, huge, 0.5, check=refuse)
        assert seen == [[1 << 44]] and info.value.code == "bad-request" and info.value.header["ref"] == 5

        for chunk_size in (3, 100):  # chunked and inline, each skipped, then the next message is read
            sender = threading.Thread(
                target=send_message, args=(a, {"type": "x"}, [A8, B4]), kwargs={"chunk_size": chunk_size}
            )
            sender.start()
            with pytest.raises(framing.Rejected) as info:
                read_message(b, SMALL, 0.5, check=refuse)
            info.value.skip()
            sender.join()
            send_message(a, {"type": "after"}, [b"ok"])
            msg = read_message(b, SMALL, 0.5, check=lambda h, s: None)
            assert msg.header["type"] == "after" and bytes(msg.blobs[0]) == b"ok"


def test_check_job_validates_a_stylize_header_without_its_blobs() -> None:
    header, _ = _stylize_header()
    messages.check_job(header, [12, 4, 16], LIMITS)
    for over, sizes in (({"content": _content(width=5000, height=1)}, [15000]), ({}, [13])):
        bad, _ = _stylize_header(**over)
        with pytest.raises(ProtocolError) as info:
            messages.check_job(bad, sizes, LIMITS)
        assert info.value.code == "bad-request"


def test_the_receiver_holds_one_copy_and_the_sender_none() -> None:
    """A 64 MiB image in 256 KiB chunks: the traced peak of both sides together (the image itself
    was allocated before tracing started) is the receiver's one buffer, plus small change."""
    size = 64 << 20
    image = bytearray(os.urandom(1 << 20)) * 64
    limits = Limits(max_payload=256 << 10, max_message=size)
    a, b = _pair()
    with a, b:
        tracemalloc.start()
        try:
            sender = threading.Thread(
                target=send_message, args=(a, {"type": "x"}, [image]), kwargs={"chunk_size": 256 << 10}
            )
            sender.start()
            msg = read_message(b, limits, stall_timeout=5.0)
            sender.join()
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    assert msg.blobs[0] == image
    print(f"traced peak {peak / size:.3f} x the image ({peak >> 20} MiB)")
    assert peak < size + (2 << 20), f"peak {peak >> 20} MiB for a {size >> 20} MiB image"
