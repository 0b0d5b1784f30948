"""One job from plain data to plain data: decode, run the method, blend, encode.

This is the only place that knows about alpha, grey layers, bit depth and the selection, so every
method stays a pure RGB-to-RGB function. It also fits the job to memory: it runs the method under
the planner's plan (engine/planner.py), and retries with a smaller one when memory runs out.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from engine import estimate, methods, params, planner, weights
from engine.backbones import find_backbones
from engine.compute.cache import ModelCache
from engine.compute.devices import available_devices, resolve_device
from engine.errors import CancelToken, UserError
from engine.imaging import images, masks
from engine.methods.base import Guide, Method, PreparedJob, Progress, ProgressFn, RunContext, Style
from nst_common import settings
from nst_common.messages import RawImage, StyleRef, StylizeJob

MAX_REGIONS = 16


def run_job(job: StylizeJob, progress: ProgressFn, cancel: CancelToken, cache: ModelCache) -> RawImage:
    """Run a validated-at-the-wire job; raise UserError for anything the user can fix."""
    progress = estimate.Tracker(progress)  # fills in the time left (engine/estimate.py)
    progress(Progress(0.0, "prepare", "reading images"))
    s, prepared, alpha, first = prepare(job)
    cancel.raise_if_cancelled()
    content, guides = prepared.content, prepared.guides
    result = _run_planned(s.method, prepared, first, progress, cancel, cache, s.memory_limit)
    if result.shape != content.shape:
        raise RuntimeError(f"method {job.method} returned {result.shape}, expected {content.shape}")
    if guides and not settings.method(job.method).guided:  # the style lives in a model: blend by masks
        result = masks.blend(result, content, guides)

    if job.selection is not None:  # result = sel * result + (1 - sel) * content, in place
        selection = images.from_raw(job.selection)
        for rows in images.bands(result.shape[0]):
            band = result[rows]
            band -= content[rows]
            band *= selection[rows]
            band += content[rows]
    out = images.rgb_to_raw(result, alpha, job.content.channels, job.content.dtype)
    progress(Progress(1.0, "done", "finished"))
    return out


def prepare(job: StylizeJob) -> tuple[_Settings, PreparedJob, np.ndarray | None, planner.Plan]:
    """Everything before the method runs: the settings validated, images decoded, styles, masks
    and guides checked, and the first plan. (settings, the method's job, the content's alpha, plan)"""
    s = _settings(job)
    content, alpha = images.rgb_from_raw(job.content)
    referenced = {style for _, style in s.regions if style is not None}
    kept = [i for i, ref in enumerate(job.styles) if ref.weight > 0 or i in referenced]
    styles = [Style(_style_pixels(job.styles[i]), job.styles[i].weight) for i in kept]
    wire_masks = {name: images.from_raw(m)[..., 0] for name, m in job.masks.items()}
    guides = _guides(job, s.regions, wire_masks, kept, styles, s.strictness)
    prepared = PreparedJob(content=content, styles=styles, params=s.params, masks=wire_masks, guides=guides)
    return s, prepared, alpha, planner.plan(s.method, s.params, content.shape[:2], s.device, s.memory_limit)


def plan_job(job: StylizeJob) -> planner.Plan:
    """The plan `run_job` would start with, from the settings and sizes alone: nothing runs."""
    s = _settings(job)
    return planner.plan(s.method, s.params, (job.content.height, job.content.width), s.device, s.memory_limit)


@dataclass
class _Settings:
    method: Method
    params: dict[str, Any]  # the method's, validated
    device: torch.device
    memory_limit: int | None  # bytes, from the `memory` setting (MiB)
    strictness: float
    regions: list[tuple[str, int | None]]


def queue_of(job: StylizeJob) -> str:
    """The queue a job waits in: its resolved device, once its settings are valid. A job the
    pipeline would refuse is refused before it waits behind others, and a made-up device name
    never starts a worker thread of its own."""
    return str(_settings(job).device)


def _settings(job: StylizeJob) -> _Settings:
    """Validate the job's settings: the pipeline's own, then the method's."""
    method = methods.get(job.method)
    declared_method = settings.method(job.method)
    raw_params = dict(job.params)
    regions = _regions(raw_params.pop("regions", None), job, method)
    declared = settings.for_method(job.method, scope="job")
    job_level = params.parse(
        job.method, {s.name: raw_params.pop(s.name) for s in declared if s.name in raw_params}, "job"
    )
    parsed = method.parse_params(raw_params)
    device = resolve_device(job_level["device"])
    memory, strictness = job_level["memory"], job_level.get("map_weight", 1.0)
    if declared_method.needs_style and not job.styles:
        raise UserError("bad-input", f"method {job.method!r} needs at least one style image")
    if job.styles and sum(s.weight for s in job.styles) <= 0:
        raise UserError("bad-option", "style weights must not all be zero")
    if job.content_map is not None and not declared_method.guided:
        raise UserError("bad-option", f"method {job.method!r} does not support semantic maps")
    memory_limit = None if memory is None else memory << 20
    return _Settings(method, parsed, device, memory_limit, strictness, regions)


def _run_planned(
    method: Method,
    job: PreparedJob,
    plan: planner.Plan,
    progress: ProgressFn,
    cancel: CancelToken,
    cache: ModelCache,
    memory_limit: int | None,
) -> np.ndarray:
    """Run the method under `plan`; when memory runs out, again with smaller tiles, then on the CPU.
    Each plan's message carries the time it should take (planner.estimate_seconds)."""
    size = job.content.shape[:2]
    eta = planner.estimate_seconds(method, job.params, size, plan)
    progress(Progress(0.0, "plan", f"plan: {plan.describe()}", eta_s=eta))
    while True:
        try:
            started = time.monotonic()
            result = method.run(job, RunContext(plan.device, progress, cancel, cache, plan))
            planner.learn(method, job.params, size, plan, time.monotonic() - started)
            return result
        except (RuntimeError, MemoryError) as exc:  # torch.OutOfMemoryError is a RuntimeError
            if not _out_of_memory(exc):
                raise
        # Out of the except block, so the failed attempt's tensors (held by the traceback) are freed.
        failed, plan = plan, planner.shrink(plan, memory_limit)
        if failed.device.type == "cuda":
            torch.cuda.empty_cache()
        if plan is None:
            raise UserError(
                "out-of-memory",
                f"ran out of memory with the smallest plan ({failed.describe()}): free memory, or use a "
                "smaller --size",
            )
        eta = planner.estimate_seconds(method, job.params, size, plan)
        message = f"out of memory on {failed.device.type}; retrying: {plan.describe()}"
        progress(Progress(0.0, "plan", message, eta_s=eta))


def _out_of_memory(exc: Exception) -> bool:
    """torch raises OutOfMemoryError on GPUs and RuntimeError from the CPU allocator, and oneDNN
    "could not create a primitive" when it cannot allocate its workspace; numpy MemoryError."""
    if isinstance(exc, (torch.OutOfMemoryError, MemoryError)):
        return True
    text = str(exc)
    return any(
        sign in text for sign in ("out of memory", "can't allocate memory", "could not create a primitive")
    )


def _regions(raw: Any, job: StylizeJob, method: Method) -> list[tuple[str, int | None]]:
    """The `regions` setting as (mask name, style index or None for all styles) pairs."""
    if raw is None:
        return []
    if not isinstance(raw, list) or not 1 <= len(raw) <= MAX_REGIONS:
        raise UserError("bad-option", f"setting 'regions' must be a list of 1 to {MAX_REGIONS} regions")
    out = []
    for item in raw:
        name = item.get("mask") if isinstance(item, dict) else None
        if not isinstance(name, str) or name not in job.masks or set(item) - {"mask", "style"}:
            known = ", ".join(job.masks) or "none were sent"
            raise UserError(
                "bad-option",
                f"each region is {{'mask': NAME, 'style': INDEX}} with a mask of the job ({known})",
            )
        style = item.get("style")
        if style is not None and not settings.method(job.method).needs_style:
            raise UserError("bad-option", f"method {job.method!r} takes no style images to give to regions")
        if style is not None and (
            not isinstance(style, int) or isinstance(style, bool) or not 0 <= style < len(job.styles)
        ):
            raise UserError(
                "bad-option",
                f"region style {style!r} is not the index of one of the {len(job.styles)} style images",
            )
        out.append((name, style))
    return out


def _guides(
    job: StylizeJob,
    regions: list[tuple[str, int | None]],
    wire_masks: dict[str, np.ndarray],
    kept: list[int],
    styles: list[Style],
    strictness: float,
) -> list[Guide]:
    """Regions or semantic maps as guides over the prepared styles (`kept` maps them to the wire's)."""
    weights = [s.weight for s in styles]
    style_maps: list[np.ndarray | None] = []
    for i, style in zip(kept, styles, strict=True):
        label_map = job.styles[i].map
        picture = None if label_map is None else images.split_alpha(images.from_raw(label_map))[0]
        if picture is not None and picture.shape[:2] != style.image.shape[:2]:
            (h, w), (sh, sw) = picture.shape[:2], style.image.shape[:2]
            raise UserError(
                "bad-input",
                f"the map of style {i + 1} is {w}x{h} px and that style image {sw}x{sh} px: give it a "
                "map of its own size",
            )
        style_maps.append(picture)
    if job.content_map is not None:
        if regions:
            raise UserError("bad-option", "use either regions or semantic maps in one job, not both")
        if all(m is None for m in style_maps):
            raise UserError("bad-input", "a content map needs a map for at least one style image")
        content_map = images.split_alpha(images.from_raw(job.content_map))[0]
        return masks.semantic_guides(content_map, style_maps, weights, strictness)
    if any(m is not None for m in style_maps):
        raise UserError("bad-input", "style maps need a content map to match them to")
    position = {wire: index for index, wire in enumerate(kept)}
    pairs = []
    for name, style in regions:
        if wire_masks[name].max() < 0.5 / 255:
            raise UserError("bad-input", f"mask {name!r} is empty: it selects no pixel")
        pairs.append((wire_masks[name], None if style is None else position[style]))
    return masks.region_guides(pairs, weights)


def _style_pixels(ref: StyleRef) -> np.ndarray:
    picture = images.load_image(ref.path) if ref.image is None else images.from_raw(ref.image)
    return images.split_alpha(picture)[0]


def _method_info(method: Method) -> dict[str, Any]:
    """The method's declaration, whether it can run with the weights installed now, and which of
    its models are installed (the manifest's entries of the method, engine/weights.py)."""
    manifest = weights.load_manifest()

    def installed(weight_ids: tuple[str, ...]) -> bool:
        return all(weights.path_for(w, manifest) is not None for w in weight_ids)

    def model(name: str) -> dict[str, Any]:
        ids = method.weight_ids(name)
        sizes = [manifest.download_size(w) for w in ids]
        size = None if None in sizes else sum(s for s in sizes if s is not None)
        return {
            "id": name,
            "installed": installed(ids),
            "weights": list(ids),
            "size": size,
            "styles": weights.trained_styles(ids[0], manifest),  # the paintings a mix names
        }

    declared = settings.method(method.name)
    info: dict[str, Any] = {**dataclasses.asdict(declared)}
    if declared.has_models:
        info["models"] = [model(m) for m in method.models]
        info["ready"] = any(m["installed"] for m in info["models"])
    else:
        info["weights"] = list(method.weight_ids(None))
        info["ready"] = installed(method.weight_ids(None))
    return info


def capabilities() -> dict[str, Any]:
    """What this engine can do, for the protocol's `hello` and `nst info`: every method with its
    readiness and models, and the settings declaration the plug-in builds its dialog from."""
    return {
        "methods": {name: _method_info(methods.get(name)) for name in methods.names()},
        "settings": settings.describe()["settings"],
        "backbones": {name: path is not None for name, path in find_backbones().items()},
        "devices": available_devices(),
    }
