"""Pure-Python half of the plug-in: pixels, selection and settings, with no GIMP and no numpy.

Everything here takes and returns plain data (bytes, dataclasses, dicts) so it can be unit-tested
with the host Python; gimp_compat.py does the GIMP calls around it.
"""

from __future__ import annotations

import json
import os
import sys
from array import array
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

from protocol import RawImage, StyleRef, StylizeJob

PARASITE_NAME = "neural-style-settings"
SETTINGS_VERSION = 1

# Babl formats the adapter reads and writes in: non-linear (') float, straight alpha, as the
# protocol wants. GEGL converts to and from whatever precision the drawable has.
BABL_FORMATS = {1: "Y' float", 2: "Y'A float", 3: "R'G'B' float", 4: "R'G'B'A float"}
MASK_FORMAT = "Y float"
LAYER_MASK = "layer-mask"  # the job's mask name for a layer's own mask
LAYER_MASK_INVERSE = "layer-mask-inverse"  # its black part, the second style's region in "split"

METHODS = ("gatys", "johnson", "adain", "cyclegan")
METHOD_LABELS = {
    "gatys": "Gatys (optimisation, slow, best quality)",
    "johnson": "Johnson (fast, one model per style)",
    "adain": "AdaIN (fast, any style image)",
    "cyclegan": "CycleGAN (fast, painter models)",
}
# Johnson and CycleGAN carry their style in a trained model; the other two need a style image.
MODEL_METHODS = frozenset({"johnson", "cyclegan"})
PRESETS = ("draft", "balanced", "best")
DEVICES = ("auto", "cpu", "cuda")
DEVICE_LABELS = {"auto": "Automatic", "cpu": "CPU", "cuda": "CUDA GPU"}
OUTPUTS = ("new-layer", "in-place")
MASK_MODES = ("confine", "split", "ignore", "regions")
MASK_MODE_LABELS = {  # the dialog's one-line explanation of each mode
    "confine": "Confine: style only where the layer mask is white (grey blends)",
    "split": "Split: the first style where the layer mask is white, the second where black",
    "ignore": "Ignore: style the whole layer, whatever its mask",
    "regions": "Regions: each region below (a channel or the layer mask) takes its own style",
}
REGION_COUNT = 4  # regions the dialog offers
REGION_SOURCES = ("none", "channel", "layer-mask", "layer-mask-inverse")
REGION_SOURCE_LABELS = {  # what marks a region, one line each
    "none": "Not used",
    "channel": "The channel chosen below (a saved selection)",
    "layer-mask": "The layer mask: its white part",
    "layer-mask-inverse": "The layer mask inverted: its black part",
}
OUTPUT_LABELS = {"new-layer": "New layer above each source", "in-place": "Replace the layer's pixels"}


@dataclass(frozen=True)
class Param:
    """One procedure argument, gimpfu style; `kind` picks the GIMP argument type."""

    name: str
    kind: str  # choice | int | double | boolean | string | file | layer
    label: str
    blurb: str = ""
    default: Any = None
    lo: float = 0.0
    hi: float = 0.0
    choices: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class ProcedureSpec:
    """One PDB procedure: what GIMP shows, and which runner in gimp_compat does the work."""

    name: str
    label: str
    menu: str
    blurb: str
    help: str
    run: str  # "transfer" | "rerun"
    params: tuple[Param, ...] = ()


class SettingsError(ValueError):
    """A choice the user has to change before anything runs; the message says what to do."""


@dataclass
class Settings:
    """Every user choice of one run: the dialog's fields and the parasite's content."""

    method: str = "gatys"
    model: str = ""
    style_file: str = ""
    style_layer: str = ""  # display name of a layer used as the style, for naming and re-runs
    style2_file: str = ""
    style2_layer: str = ""
    style2_weight: float = 0.0
    strength: float = 1.0
    preset: str = "balanced"
    size: int = 0  # long side of the work in px; 0 = the layer's own size
    preserve_colors: bool = False
    device: str = "auto"
    output: str = "new-layer"
    only_selection: bool = True
    layer_mask: str = "confine"  # what a layer's mask means: one of MASK_MODES
    content_map: str = ""  # display name of the content's label-map layer (semantic maps)
    style_map: str = ""  # display name of the first style's label-map layer
    map_weight: float = 1.0  # how strictly labels bind, 0..1
    seed: int = 0
    iterations: int = 0  # Gatys optimisation steps per scale; 0 = the preset's
    # Regions mode: what marks each region (one of REGION_SOURCES), the channel's display name, and
    # the region's own style (a file, or a layer's display name as for the first style).
    region1_source: str = "none"
    region1_channel: str = ""
    region1_style_file: str = ""
    region1_style_layer: str = ""
    region2_source: str = "none"
    region2_channel: str = ""
    region2_style_file: str = ""
    region2_style_layer: str = ""
    region3_source: str = "none"
    region3_channel: str = ""
    region3_style_file: str = ""
    region3_style_layer: str = ""
    region4_source: str = "none"
    region4_channel: str = ""
    region4_style_file: str = ""
    region4_style_layer: str = ""

    def engine_params(self) -> dict[str, Any]:
        """The StylizeJob.params for these settings (common params from docs/architecture.md)."""
        params: dict[str, Any] = {
            "preset": self.preset,
            "strength": self.strength,
            "preserve_colors": self.preserve_colors,
            "device": self.device,
            "seed": self.seed,
        }
        if self.size > 0:
            params["size"] = self.size
        if self.method in MODEL_METHODS:
            params["model"] = self.model
        if self.method == "gatys" and self.iterations > 0:
            params["iterations"] = self.iterations
        if self.content_map:
            params["map_weight"] = self.map_weight
        return params


@dataclass(frozen=True)
class Region:
    """One row of the dialog's regions: a mask (channel or layer mask) and the style it takes."""

    number: int  # 1..REGION_COUNT, as the dialog shows it
    source: str  # one of REGION_SOURCES
    channel: str
    style_file: str
    style_layer: str

    @property
    def style(self) -> tuple[str, str]:
        """The style as (file, layer name); a layer wins over the file, as for the first style."""
        return ("", self.style_layer) if self.style_layer else (self.style_file, "")

    def describe(self) -> str:
        if self.source == "channel":
            return f"Region {self.number} (channel “{self.channel}”)"
        inverted = " inverted" if self.source == "layer-mask-inverse" else ""
        return f"Region {self.number} (the layer mask{inverted})"


def regions(settings: Settings) -> list[Region]:
    """The regions in use (source not "none"), in dialog order; empty outside the regions mode."""
    if settings.layer_mask != "regions":
        return []
    rows = (
        Region(
            n,
            *(
                getattr(settings, f"region{n}_{part}")
                for part in ("source", "channel", "style_file", "style_layer")
            ),
        )
        for n in range(1, REGION_COUNT + 1)
    )
    return [r for r in rows if r.source != "none"]


def method_models(hello: dict[str, Any]) -> dict[str, list[str] | None]:
    """Methods the engine offers, from its `hello` reply: name -> installed models, or None for
    a method that takes a style image instead of a model.

    The reply carries `capabilities.methods` as {name: {"needs_style": bool, "models": [...]}}.
    """
    caps = hello.get("capabilities", hello)
    out: dict[str, list[str] | None] = {}
    for name, info in (caps.get("methods") or {}).items():
        info = info if isinstance(info, dict) else {}
        needs_style = info.get("needs_style", name not in MODEL_METHODS)
        if needs_style:
            out[name] = None
        else:
            out[name] = [m["id"] if isinstance(m, dict) else str(m) for m in info.get("models") or []]
    return out


def describe_methods(available: dict[str, list[str] | None]) -> str:
    """One line per method for the dialog: what can run now, and how to fix what cannot."""
    lines = []
    for name in METHODS:
        if name not in available:
            lines.append(f"{name}: not offered by this engine")
        elif available[name] is None:
            lines.append(f"{name}: ready")
        elif available[name]:
            lines.append(f"{name}: models {', '.join(available[name] or [])}")
        else:
            lines.append(f"{name}: no models installed (nst models pull …)")
    return "\n".join(lines)


def validate(settings: Settings, available: dict[str, list[str] | None]) -> Settings:
    """Check the choices against the ranges and what the engine has; returns them normalised."""
    s = replace(settings, model=settings.model.strip())
    for value, allowed, what in (
        (s.method, METHODS, "method"),
        (s.preset, PRESETS, "quality preset"),
        (s.device, DEVICES, "device"),
        (s.output, OUTPUTS, "output"),
        (s.layer_mask, MASK_MODES, "layer-mask mode"),
    ):
        if value not in allowed:
            raise SettingsError(f"Unknown {what} {value!r}; choose one of {', '.join(allowed)}.")
    if s.method not in available:
        raise SettingsError(f"The engine does not offer the {s.method} method.")
    models = available[s.method]
    if models is not None:
        if not models:
            raise SettingsError(
                f"No {s.method} models are installed. Install one with `nst models pull` "
                "or choose Gatys or AdaIN, which take any style image."
            )
        if not s.model:
            s = replace(s, model=models[0])
        elif s.model not in models:
            raise SettingsError(
                f"The {s.method} model {s.model!r} is not installed; installed: {', '.join(models)}."
            )
    elif s.layer_mask == "regions":
        _validate_regions(s)
    elif not (s.style_file or s.style_layer):
        raise SettingsError(f"{s.method} needs a style: pick an image file or a layer.")
    if s.layer_mask == "split" and (models is not None or not (s.style2_file or s.style2_layer)):
        raise SettingsError(
            "Splitting by the layer mask needs Gatys or AdaIN and a second style for the black part."
        )
    if bool(s.content_map) != bool(s.style_map):
        raise SettingsError(
            "Semantic maps need two label-map layers: one for the content, one for the style."
        )
    if s.content_map and (models is not None or s.layer_mask in ("split", "regions")):
        raise SettingsError(
            "Semantic maps need Gatys or AdaIN, and cannot be combined with a split layer mask or regions."
        )
    if s.layer_mask == "regions" and models is not None:
        raise SettingsError("Regions need Gatys or AdaIN: each region takes its own style image.")
    if not 0.0 <= s.map_weight <= 1.0:
        raise SettingsError("The label strictness must be between 0 and 1.")
    if not 0.0 <= s.style2_weight <= 1.0:
        raise SettingsError("The second style's weight must be between 0 and 1.")
    if s.style2_weight > 0 and not (s.style2_file or s.style2_layer):
        raise SettingsError("A second-style weight is set but no second style is chosen.")
    if not 0.0 < s.strength <= 10.0:
        raise SettingsError("Strength must be above 0 and at most 10.")
    if not 0 <= s.iterations <= 100_000:
        raise SettingsError("Iterations must be 0 (the preset's) or from 1 to 100000.")
    if s.size and not 16 <= s.size <= 16384:
        raise SettingsError("Size must be 0 (the layer's own) or from 16 to 16384 pixels.")
    return s


def _validate_regions(s: Settings) -> None:
    """Each region in use needs its mask and its style; at least one must be in use."""
    for n in range(1, REGION_COUNT + 1):
        source = getattr(s, f"region{n}_source")
        if source not in REGION_SOURCES:
            raise SettingsError(
                f"Unknown mask {source!r} for region {n}; choose one of {', '.join(REGION_SOURCES)}."
            )
    used = regions(s)
    if not used:
        raise SettingsError(
            "The regions mode needs at least one region: choose its mask (a channel or the layer mask) "
            "and its style."
        )
    for region in used:
        if region.source == "channel" and not region.channel:
            raise SettingsError(f"Region {region.number} is marked by a channel, but no channel is chosen.")
        if not any(region.style):
            raise SettingsError(f"Region {region.number} needs a style: pick an image file or a layer.")


def check_layer(name: str, *, is_group: bool, is_text: bool, settings: Settings) -> None:
    """Refuse layers the run cannot handle, with a message that says why and what to do."""
    if is_group:
        raise SettingsError(
            f"“{name}” is a layer group. Select the layers inside it, or merge the group first."
        )
    if is_text and settings.output == "in-place":
        raise SettingsError(
            f"“{name}” is a text layer; stylizing it in place would discard its text. "
            "Choose the output “new layer” or rasterize it first."
        )


def style_label(settings: Settings) -> str:
    """Short human name of the style(s), for layer names: file stems, layer or model names."""

    def one(path: str, layer: str) -> str:
        return layer or os.path.splitext(os.path.basename(path))[0]

    if settings.method in MODEL_METHODS:
        return settings.model
    if settings.layer_mask == "regions":
        return " + ".join(dict.fromkeys(one(*region.style) for region in regions(settings)))
    label = one(settings.style_file, settings.style_layer)
    if settings.style2_weight > 0 or settings.layer_mask == "split":
        label += " + " + one(settings.style2_file, settings.style2_layer)
    return label


def result_layer_name(source: str, settings: Settings) -> str:
    return f"{source} ({style_label(settings)}, {settings.method})"


def settings_to_bytes(settings: Settings, source_tattoo: int) -> bytes:
    """JSON for the parasite; the source's tattoo lets a re-run find the layer it came from."""
    body = {"version": SETTINGS_VERSION, "source_tattoo": source_tattoo, "settings": asdict(settings)}
    return json.dumps(body, sort_keys=True).encode("utf-8")


def settings_from_bytes(data: bytes) -> tuple[Settings, int]:
    """Parse a parasite; unknown keys are dropped so older or newer plug-ins can still read it."""
    try:
        body = json.loads(bytes(data).decode("utf-8"))
        raw = body["settings"]
        tattoo = int(body.get("source_tattoo", 0))
    except (ValueError, KeyError, TypeError) as exc:
        raise SettingsError(f"The layer's {PARASITE_NAME} parasite is unreadable: {exc}") from None
    if body.get("version") != SETTINGS_VERSION or not isinstance(raw, dict):
        raise SettingsError(f"The layer's settings are from an unknown version {body.get('version')!r}.")
    defaults = Settings()
    values: dict[str, Any] = {}
    for f in fields(Settings):
        if f.name in raw and type(raw[f.name]) is type(getattr(defaults, f.name)):
            values[f.name] = raw[f.name]
        elif f.name in raw and isinstance(getattr(defaults, f.name), float) and type(raw[f.name]) is int:
            values[f.name] = float(raw[f.name])
    return Settings(**values), tattoo


def _floats(data: bytes | bytearray | memoryview) -> array:
    values = array("f")
    values.frombytes(bytes(data))
    if sys.byteorder == "big":  # the protocol is little-endian
        values.byteswap()
    return values


def _to_bytes(values: array) -> bytes:
    if sys.byteorder == "big":
        values = array(values.typecode, values)
        values.byteswap()
    return values.tobytes()


def raw_from_pixels(data: bytes, width: int, height: int, channels: int) -> RawImage:
    """Wrap float pixels read from a Gegl buffer in BABL_FORMATS[channels]."""
    expected = width * height * channels * 4
    if len(data) != expected:
        raise ValueError(f"expected {expected} bytes of {width}x{height}x{channels} float, got {len(data)}")
    if sys.byteorder == "big":
        data = _to_bytes(_floats(data))
    return RawImage(width, height, channels, "f32", bytes(data))


def pixels_from_raw(image: RawImage, width: int, height: int, channels: int) -> bytes:
    """Float pixels for a Gegl buffer in BABL_FORMATS[channels] from the engine's result."""
    if (image.width, image.height, image.channels) != (width, height, channels):
        raise ValueError(
            f"the engine returned {image.width}x{image.height}x{image.channels}, "
            f"expected {width}x{height}x{channels}"
        )
    if image.dtype == "f32":
        values = _floats(image.data)
    elif image.dtype in ("u8", "u16"):
        ints = array("B" if image.dtype == "u8" else "H")
        ints.frombytes(bytes(image.data))
        if image.dtype == "u16" and sys.byteorder == "big":
            ints.byteswap()
        scale = 1.0 / (255.0 if image.dtype == "u8" else 65535.0)
        values = array("f", (v * scale for v in ints))
    else:
        raise ValueError(f"unknown dtype {image.dtype!r}")
    if len(values) != width * height * channels:
        raise ValueError("the engine's result has the wrong number of pixels")
    return values.tobytes()  # native order, which is what Gegl wants


def selection_coverage(mask: RawImage) -> str:
    """'none', 'full' or 'partial': whether the selection misses, covers or cuts the layer."""
    values = _floats(mask.data)
    if not values:
        return "none"
    lo, hi = min(values), max(values)
    if hi <= 0.0:
        return "none"
    if lo >= 1.0:
        return "full"
    return "partial"


def _inverse(mask: RawImage) -> RawImage:
    inverse = array("f", (1.0 - v for v in _floats(mask.data)))
    return RawImage(mask.width, mask.height, 1, "f32", _to_bytes(inverse))


def region_masks(
    settings: Settings, layer_name: str, layer_mask: RawImage | None, channels: dict[int, RawImage]
) -> dict[int, RawImage]:
    """Region number -> its mask over one layer: a channel (already cropped to the layer), the
    layer mask or its inverse. A region that selects nothing there is an error the user can fix,
    not a silently unstyled layer."""
    out = {}
    for region in regions(settings):
        if region.source == "channel":
            mask = channels[region.number]
        elif layer_mask is None:
            raise SettingsError(
                f"Region {region.number} is marked by the layer mask, but “{layer_name}” has no mask. "
                "Add one, or mark the region with a channel."
            )
        else:
            mask = layer_mask if region.source == "layer-mask" else _inverse(layer_mask)
        if selection_coverage(mask) == "none":
            raise SettingsError(
                f"{region.describe()} selects nothing over “{layer_name}”. "
                "Paint the region into it, or choose another mask."
            )
        out[region.number] = mask
    return out


def build_job(
    settings: Settings,
    content: RawImage,
    styles: list[tuple[str | RawImage, float]],
    selection: RawImage | None,
    layer_mask: RawImage | None = None,
    maps: tuple[RawImage, RawImage] | None = None,
    region_mask: dict[int, RawImage] | None = None,
) -> StylizeJob:
    """The job for one layer; `styles` holds a file path or the pixels of a style layer each.

    A layer mask becomes regions (docs/protocol.md): "confine" styles where it is white and keeps
    the content where black; "split" gives white to the first style and black to the second. The
    engine does this inside its loss rather than by pasting. In the regions mode `styles` holds
    each region's style in the order of regions() and `region_mask` each region's mask
    (region_masks); what no region covers keeps the content. `maps` (content's, first style's)
    are colour-coded label maps: each label of the content takes the style of the same label.
    """
    refs = [
        StyleRef(path=s, weight=w) if isinstance(s, str) else StyleRef(image=s, weight=w) for s, w in styles
    ]
    params = settings.engine_params()
    masks = {}
    if settings.layer_mask == "regions":
        params["regions"] = []
        for index, region in enumerate(regions(settings)):
            name = f"region-{region.number}"
            masks[name] = (region_mask or {})[region.number]
            params["regions"].append({"mask": name, "style": index})
    elif layer_mask is not None and settings.layer_mask == "split":
        coverage = selection_coverage(layer_mask)
        params["regions"] = []
        if coverage != "none":
            masks[LAYER_MASK] = layer_mask
            params["regions"].append({"mask": LAYER_MASK, "style": 0})
        if coverage != "full":
            masks[LAYER_MASK_INVERSE] = _inverse(layer_mask)
            params["regions"].append({"mask": LAYER_MASK_INVERSE, "style": 1})
    elif layer_mask is not None:
        masks[LAYER_MASK] = layer_mask
        params["regions"] = [{"mask": LAYER_MASK}]
    job = StylizeJob(
        method=settings.method,
        params=params,
        content=content,
        styles=refs,
        selection=selection,
        masks=masks,
        content_map=maps[0] if maps else None,
    )
    if maps:
        job.styles[0].map = maps[1]
    return job


def style_weights(settings: Settings) -> tuple[float, float]:
    """Weights of the first and second style: the blend weight goes to the second. Split by the
    layer mask, each style has its own region and both count fully."""
    if settings.layer_mask == "split":
        return 1.0, 1.0
    return 1.0 - settings.style2_weight, settings.style2_weight
