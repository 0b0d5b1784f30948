"""Helpers several test modules share (pytest puts tests/ on sys.path, so `from helpers import ...`
works from tests/ and tests/e2e/; bench/gatys.py takes its random backbone from here too)."""

from __future__ import annotations

import math
import socket
import struct
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np
import torch

from engine.backbones import Backbone, source_of
from engine.backbones.base import check_pooling
from engine.service.server import Server
from nst_common.messages import RawImage
from nst_common.session import open_session


def noise(w: int, h: int, c: int, seed: int = 0) -> RawImage:
    """A w x h u8 image of `c` channels of uniform noise from `seed`."""
    data = np.random.default_rng(seed).integers(0, 256, (h, w, c), dtype=np.uint8)
    return RawImage(w, h, c, "u8", data.tobytes())


def random_backbone(name: str, seed: int = 0, pooling: str = "max", device: str = "cpu") -> Backbone:
    """The named backbone's architecture and input transform with seeded random weights.

    For tests and benchmarks that need realistic cost and activation scale without weight files:
    He-normal kernels keep activations from vanishing or exploding through 16 layers.
    """
    module = source_of(name)
    check_pooling(pooling)
    backbone = Backbone(name, module.SPEC, pooling, module.transform())
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for conv in backbone.layers:
            if isinstance(conv, torch.nn.Conv2d):
                fan_in = conv.weight[0].numel()
                conv.weight.copy_(torch.randn(conv.weight.shape, generator=generator) * math.sqrt(2 / fan_in))
                conv.bias.copy_(torch.randn(conv.bias.shape, generator=generator) * 0.01)
    return backbone.freeze(device)


def is_final(header: dict[str, Any]) -> bool:
    """Whether a job's event ends it."""
    return header["type"] in ("result", "error")


def session(server: Server) -> socket.socket:
    """A connection to `server` that has said hello with the server's token."""
    return open_session(server.address, server.config.token, timeout=5.0)[0]


@dataclass
class Files:
    """What `serve_files` serves: bodies by path, sent in blocks of `block` bytes `delay` seconds
    apart; the paths asked for, in order."""

    bodies: dict[str, bytes] = field(default_factory=dict)
    delay: float = 0.0
    block: int = 8192
    requests: list[str] = field(default_factory=list)


@contextmanager
def serve_files(files: Files) -> Iterator[str]:
    """A loopback HTTP server of `files` (404 for any other path) while the block runs; its URL."""

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def do_GET(self) -> None:
            files.requests.append(self.path)
            body = files.bodies.get(self.path)
            if body is None:
                self.send_error(404, "Not Found")
                return
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            for start in range(0, len(body), files.block):
                time.sleep(files.delay)
                self.wfile.write(body[start : start + files.block])

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()


def write_catalog(path: Path, translations: dict[str | tuple[str, str], str | tuple[str, str]]) -> None:
    """A compiled gettext catalog (.mo) with English plural rules: msgid (or singular and plural)
    -> translation (or its two forms)."""
    header = "Content-Type: text/plain; charset=UTF-8\nPlural-Forms: nplurals=2; plural=(n != 1);\n"
    pairs = [("", header)] + [
        ("\0".join(k) if isinstance(k, tuple) else k, "\0".join(v) if isinstance(v, tuple) else v)
        for k, v in translations.items()
    ]
    pairs.sort()
    ids = [k.encode() for k, _ in pairs]
    strs = [v.encode() for _, v in pairs]
    start = 7 * 4 + 16 * len(pairs)
    table, blob = [], b""
    for data in ids + strs:
        table.append((len(data), start + len(blob)))
        blob += data + b"\0"
    head = struct.pack("<7I", 0x950412DE, 0, len(pairs), 28, 28 + 8 * len(pairs), 0, 0)
    path.parent.mkdir(parents=True)
    path.write_bytes(head + b"".join(struct.pack("<2I", *t) for t in table) + blob)


def drawn_scene(seed: int, height: int = 160, width: int = 200) -> np.ndarray:
    """A photo-like picture (HxWx3 float32 in 0..1): a graded sky and ground, and random houses,
    discs and bars with shading and grain. Different for each seed; for training on many photos."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width] / height
    horizon = rng.uniform(0.5, 0.8)
    sky, ground = rng.uniform(0.3, 1.0, 3), rng.uniform(0.1, 0.6, 3)
    picture = np.where(
        (y < horizon)[..., None], sky * (0.8 + 0.3 * y[..., None]), ground * (1.2 - 0.4 * y[..., None])
    )
    for _ in range(rng.integers(3, 8)):
        colour = rng.uniform(0, 1, 3)
        cx, cy, r = rng.uniform(0, width / height), rng.uniform(0.1, 0.9), rng.uniform(0.04, 0.25)
        kind = rng.integers(3)
        if kind == 0:  # a house: wall, roof, a window
            wall = (np.abs(x - cx) < r) & (y > cy) & (y < cy + 1.5 * r)
            picture[wall] = colour * (0.8 + 0.2 * x[wall, None])
            picture[(y <= cy) & (y > cy - r) & (np.abs(x - cx) < y - cy + r)] = colour[::-1] * 0.6
            picture[(np.abs(x - cx) < r / 3) & (np.abs(y - cy - 0.6 * r) < r / 4)] = (0.1, 0.12, 0.2)
        elif kind == 1:  # a disc, lit from one side
            disc = (x - cx) ** 2 + (y - cy) ** 2 < r**2
            picture[disc] = colour * (0.6 + 0.4 * ((cx - x[disc] + r) / (2 * r)))[:, None]
        else:  # a bar
            picture[(np.abs(x - cx) < r / 4) & (y > cy - r)] = colour
    picture += rng.normal(0, 0.02, picture.shape)
    return np.clip(picture, 0, 1).astype(np.float32)
