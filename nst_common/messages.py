"""The message schema: the images and jobs messages carry, and their validation.

A `stylize` request is built by `job_message` (the plug-in, `nst stylize` over a socket) and
checked completely by `parse_job` (the engine) before any of it reaches the pipeline; `check_job`
runs the same checks before the images' bytes have arrived. Standard library only: the plug-in
runs this inside GIMP's Python. docs/protocol.md is the specification.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from nst_common.framing import Limits, Message, ProtocolError, is_int

PROTOCOL_VERSION = 2  # what both sides say in `hello`; a peer with another is refused
DTYPE_SIZES = {"u8": 1, "u16": 2, "f32": 4}


@dataclass
class RawImage:
    width: int
    height: int
    channels: int  # 1 grey, 2 grey+alpha, 3 RGB, 4 RGBA
    dtype: str  # "u8" | "u16" | "f32"  (little-endian, interleaved, row-major)
    data: bytes | bytearray | memoryview

    @property
    def nbytes(self) -> int:
        return self.width * self.height * self.channels * DTYPE_SIZES[self.dtype]


@dataclass
class StyleRef:
    """A style image, either a file on the engine's machine or pixels sent along."""

    path: str | None = None
    image: RawImage | None = None
    weight: float = 1.0
    map: RawImage | None = None  # colour-coded label map of the style, for semantic maps


@dataclass
class StylizeJob:
    method: str
    params: dict[str, Any]
    content: RawImage
    styles: list[StyleRef] = field(default_factory=list)
    selection: RawImage | None = None  # 1 channel, 0..1: result = sel*styled + (1-sel)*content
    masks: dict[str, RawImage] = field(default_factory=dict)  # name -> 1-channel image
    content_map: RawImage | None = None  # colour-coded label map, content-sized (semantic maps)


def _bad(message: str) -> ProtocolError:
    return ProtocolError("bad-request", message)


def get_str(obj: dict[str, Any], key: str, limits: Limits, default: str | None = None) -> str:
    value = obj.get(key, default)
    if not isinstance(value, str) or not value or len(value) > limits.max_string or "\x00" in value:
        raise _bad(f"`{key}` must be a non-empty string of at most {limits.max_string} characters")
    return value


def get_number(obj: dict[str, Any], key: str, default: float, lo: float, hi: float) -> float:
    value = obj.get(key, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise _bad(f"`{key}` must be a finite number")
    if not lo <= value <= hi:
        raise _bad(f"`{key}` must be between {lo} and {hi}")
    return float(value)


def check_json_value(value: Any, limits: Limits, where: str, depth: int = 0) -> None:
    """Params are plain JSON: bounded nesting and strings, finite numbers, string keys."""
    if depth > limits.max_depth:
        raise _bad(f"`{where}` is nested too deeply")
    if value is None or isinstance(value, bool) or is_int(value):
        return
    if isinstance(value, float):
        if not math.isfinite(value):
            raise _bad(f"`{where}` contains a number that is not finite")
    elif isinstance(value, str):
        if len(value) > limits.max_string:
            raise _bad(f"`{where}` contains a string longer than {limits.max_string}")
    elif isinstance(value, list):
        for item in value:
            check_json_value(item, limits, where, depth + 1)
    elif isinstance(value, dict):
        for key, item in value.items():
            check_json_value(key, limits, where, depth + 1)
            check_json_value(item, limits, f"{where}.{key}", depth + 1)
    else:
        raise _bad(f"`{where}` contains an unsupported value")


def image_header(image: RawImage, blobs: list[Any]) -> dict[str, Any]:
    """Describe `image` for a header and queue its pixels as the next blob."""
    blobs.append(image.data)
    return {
        "width": image.width,
        "height": image.height,
        "channels": image.channels,
        "dtype": image.dtype,
        "blob": len(blobs) - 1,
    }


def parse_image(obj: Any, blobs: list[memoryview], limits: Limits, where: str) -> RawImage:
    """Check an image description against its blob: enums, ranges, and size = w*h*c*bytes."""
    if not isinstance(obj, dict):
        raise _bad(f"`{where}` must be an image object")
    width, height, channels = obj.get("width"), obj.get("height"), obj.get("channels")
    dtype, blob = obj.get("dtype"), obj.get("blob")
    for name, value in (("width", width), ("height", height)):
        if not is_int(value) or not 1 <= value <= limits.max_side:
            raise _bad(f"`{where}.{name}` must be an integer from 1 to {limits.max_side}")
    if not is_int(channels) or channels not in (1, 2, 3, 4):
        raise _bad(f"`{where}.channels` must be 1, 2, 3 or 4")
    if not isinstance(dtype, str) or dtype not in DTYPE_SIZES:
        raise _bad(f"`{where}.dtype` must be one of {', '.join(DTYPE_SIZES)}")
    if not is_int(blob) or not 0 <= blob < len(blobs):
        raise _bad(f"`{where}.blob` does not name a blob of this message")
    image = RawImage(width, height, channels, dtype, blobs[blob])
    if len(blobs[blob]) != image.nbytes:
        raise _bad(
            f"`{where}` is {width}x{height}x{channels} {dtype} ({image.nbytes} bytes) "
            f"but its blob holds {len(blobs[blob])} bytes"
        )
    return image


def job_message(job: StylizeJob) -> tuple[dict[str, Any], list[Any]]:
    """The `stylize` request for a job (attribute access only, so either module copy works)."""
    blobs: list[Any] = []
    styles = []
    for ref in job.styles:
        entry: dict[str, Any] = {"weight": ref.weight}
        if ref.image is not None:
            entry["image"] = image_header(ref.image, blobs)
        else:
            entry["path"] = ref.path
        if ref.map is not None:
            entry["map"] = image_header(ref.map, blobs)
        styles.append(entry)
    header: dict[str, Any] = {
        "type": "stylize",
        "method": job.method,
        "params": job.params,
        "content": image_header(job.content, blobs),
        "styles": styles,
    }
    if job.selection is not None:
        header["selection"] = image_header(job.selection, blobs)
    if job.masks:
        header["masks"] = {name: image_header(m, blobs) for name, m in job.masks.items()}
    if job.content_map is not None:
        header["content_map"] = image_header(job.content_map, blobs)
    return header, blobs


def parse_job(message: Message, limits: Limits) -> StylizeJob:
    """Validate a `stylize` request completely before any of it reaches the pipeline."""
    h, blobs = message.header, message.blobs
    method = get_str(h, "method", limits)
    params = h.get("params", {})
    if not isinstance(params, dict):
        raise _bad("`params` must be an object")
    check_json_value(params, limits, "params")
    content = parse_image(h.get("content"), blobs, limits, "content")
    raw_styles = h.get("styles", [])
    if not isinstance(raw_styles, list) or len(raw_styles) > limits.max_styles:
        raise _bad(f"`styles` must be a list of at most {limits.max_styles} styles")
    styles = []
    for i, entry in enumerate(raw_styles):
        where = f"styles[{i}]"
        if not isinstance(entry, dict) or ("path" in entry) == ("image" in entry):
            raise _bad(f"`{where}` must have exactly one of `path` or `image`")
        weight = get_number(entry, "weight", 1.0, 0.0, 1e6)
        label_map = None
        if entry.get("map") is not None:
            label_map = parse_image(entry["map"], blobs, limits, f"{where}.map")
        if "path" in entry:
            styles.append(StyleRef(path=get_str(entry, "path", limits), weight=weight, map=label_map))
        else:
            image = parse_image(entry["image"], blobs, limits, f"{where}.image")
            if label_map is not None and (label_map.width, label_map.height) != (image.width, image.height):
                raise _bad(f"`{where}.map` must have the style image's width and height")
            styles.append(StyleRef(image=image, weight=weight, map=label_map))
    selection = None
    if h.get("selection") is not None:
        selection = _parse_mask(h["selection"], blobs, limits, "selection", content)
    raw_masks = h.get("masks", {})
    if not isinstance(raw_masks, dict) or len(raw_masks) > limits.max_blobs:
        raise _bad("`masks` must be an object of name -> image")
    masks = {}
    for name, obj in raw_masks.items():
        if not name or len(name) > 64:
            raise _bad("mask names must be 1 to 64 characters")
        masks[name] = _parse_mask(obj, blobs, limits, f"masks.{name}", content)
    content_map = None
    if h.get("content_map") is not None:
        content_map = parse_image(h["content_map"], blobs, limits, "content_map")
        if (content_map.width, content_map.height) != (content.width, content.height):
            raise _bad("`content_map` must have the content's width and height")
    return StylizeJob(method, params, content, styles, selection, masks, content_map)


class _Pending:
    """Stands in for a blob that is not received yet: only its length is known."""

    def __init__(self, size: int) -> None:
        self.size = size

    def __len__(self) -> int:
        return self.size


def pending(sizes: list[int]) -> list[Any]:
    """Stand-ins for a message's blobs before they arrive, for checks that need only their sizes."""
    return [_Pending(n) for n in sizes]


def check_job(header: dict[str, Any], sizes: list[int], limits: Limits) -> StylizeJob:
    """Everything `parse_job` checks, before the blobs exist (a `read_message` check for `stylize`):
    so an image over max_side, or one whose blob does not match its size, costs no memory. Returns
    the job, its images standing in for blobs not yet received (for further checks of its fields)."""
    return parse_job(Message(header, [_Pending(n) for n in sizes]), limits)  # type: ignore[misc]


def _parse_mask(obj: Any, blobs: list[memoryview], limits: Limits, where: str, content: RawImage) -> RawImage:
    image = parse_image(obj, blobs, limits, where)
    if image.channels != 1 or (image.width, image.height) != (content.width, content.height):
        raise _bad(f"`{where}` must be one channel with the content's width and height")
    return image
