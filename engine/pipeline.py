"""One job from plain data to plain data: decode, run the method, blend, encode.

This is the only place that knows about alpha, grey layers, bit depth and the selection, so every
method stays a pure RGB-to-RGB function.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from engine import images, methods
from engine.backbones import find_backbones
from engine.cache import ModelCache
from engine.devices import available_devices, resolve_device
from engine.errors import CancelToken, UserError
from engine.methods.base import PreparedJob, Progress, ProgressFn, RunContext, Style
from engine.protocol import RawImage, StyleRef, StylizeJob


def run_job(job: StylizeJob, progress: ProgressFn, cancel: CancelToken, cache: ModelCache) -> RawImage:
    """Run a validated-at-the-wire job; raise UserError for anything the user can fix."""
    method = methods.get(job.method)
    raw_params = dict(job.params)
    device = resolve_device(str(raw_params.pop("device", "auto")))
    parsed = method.parse_params(raw_params)
    if method.needs_style and not job.styles:
        raise UserError("bad-input", f"method {job.method!r} needs at least one style image")
    if job.styles and sum(s.weight for s in job.styles) <= 0:
        raise UserError("bad-option", "style weights must not all be zero")

    progress(Progress(0.0, "prepare", "reading images"))
    content, alpha = images.split_alpha(images.from_raw(job.content))
    styles = [Style(_style_pixels(ref), ref.weight) for ref in job.styles if ref.weight > 0]
    masks = {name: images.from_raw(m)[..., 0] for name, m in job.masks.items()}
    cancel.raise_if_cancelled()

    prepared = PreparedJob(content=content, styles=styles, params=parsed, masks=masks)
    context = RunContext(device=device, progress=progress, cancel=cancel, cache=cache)
    result = method.run(prepared, context)
    if result.shape != content.shape:
        raise RuntimeError(f"method {job.method} returned {result.shape}, expected {content.shape}")

    if job.selection is not None:
        selection = images.from_raw(job.selection)
        result = selection * result + (1.0 - selection) * content
    out = images.merge_alpha(result.astype(np.float32), alpha, job.content.channels)
    progress(Progress(1.0, "done", "finished"))
    return images.to_raw(out, job.content.dtype)


def _style_pixels(ref: StyleRef) -> np.ndarray:
    picture = images.load_image(ref.path) if ref.image is None else images.from_raw(ref.image)
    return images.split_alpha(picture)[0]


def capabilities() -> dict[str, Any]:
    """What this engine can do, for the protocol's `hello` and `nst info`."""
    return {
        "methods": {name: {"needs_style": methods.get(name).needs_style} for name in methods.names()},
        "backbones": {name: path is not None for name, path in find_backbones().items()},
        "devices": available_devices(),
    }
