"""Pure-Python half of the plug-in: pixels, selection and settings, with no GIMP and no numpy.

Everything here takes and returns plain data (bytes, dataclasses, dicts) so it can be unit-tested
with the host Python; gimp_compat.py does the GIMP calls around it.
"""

from __future__ import annotations

import json
import os
import sys
from array import array
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

from nst_common import settings as declared
from nst_common.messages import RawImage, StyleRef, StylizeJob

PARASITE_NAME = "neural-style-settings"
# The style files' full paths, for re-runs while the image stays open: not saved in the XCF, which
# goes wherever the user sends it (the saved settings keep only the file names, unless asked).
PATHS_PARASITE_NAME = "neural-style-paths"
SETTINGS_VERSION = 2  # 1 held the engine settings as flat fields

# Babl formats the adapter reads and writes in: non-linear (') float, straight alpha, as the
# protocol wants. GEGL converts to and from whatever precision the drawable has.
BABL_FORMATS = {1: "Y' float", 2: "Y'A float", 3: "R'G'B' float", 4: "R'G'B'A float"}
MASK_FORMAT = "Y float"
LAYER_MASK = "layer-mask"  # the job's mask name for a layer's own mask
LAYER_MASK_INVERSE = "layer-mask-inverse"  # its black part, the second style's region in "split"

METHODS = declared.METHOD_NAMES
METHOD_LABELS = {m.name: m.label for m in declared.METHODS}
# Johnson and CycleGAN carry their style in a trained model; the other two need a style image.
MODEL_METHODS = frozenset(m.name for m in declared.METHODS if not m.needs_style)
# The engine settings the dialog shows (the declaration's non-expert rows); experts use `nst`.
DIALOG_SETTINGS = tuple(s for s in declared.SETTINGS if not s.expert)
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


_ARGUMENT_KINDS = {"int": "int", "float": "double", "choice": "choice", "bool": "boolean"}


def declared_param(s: declared.Setting) -> Param:
    """The procedure argument of a declared setting: the widest range any method takes (the
    validation narrows it to the chosen method's), 0 or "" for an unset optional one."""
    w = s.widest()
    scope = "" if set(s.methods) == set(METHODS) else f" ({', '.join(s.methods)})"
    kind = _ARGUMENT_KINDS.get(s.kind, "string")
    blurb = s.help + ("; 0 = the default" if s.optional and kind in ("int", "double") else "") + scope
    lo = 0 if s.optional else w.lo or 0
    choices = tuple((c, w.choice_label(c)) for c in w.choices) if kind == "choice" else ()
    return Param(
        s.name.replace("_", "-"), kind, s.label, blurb, dialog_value(s, s.default), lo, w.hi or 0, choices
    )


class SettingsError(ValueError):
    """A choice the user has to change before anything runs; the message says what to do."""


@dataclass
class Settings:
    """Every user choice of one run: the dialog's fields and the parasite's content."""

    method: str = "gatys"
    style_file: str = ""
    style_layer: str = ""  # display name of a layer used as the style, for naming and re-runs
    style2_file: str = ""
    style2_layer: str = ""
    style2_weight: float = 0.0
    output: str = "new-layer"
    only_selection: bool = True
    remember_paths: bool = False  # save the style files' full paths with the result, for re-runs
    layer_mask: str = "confine"  # what a layer's mask means: one of MASK_MODES
    content_map: str = ""  # display name of the content's label-map layer (semantic maps)
    style_map: str = ""  # display name of the first style's label-map layer
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
    # The engine settings of DIALOG_SETTINGS by wire name, as the dialog holds them: an unset
    # optional number is 0, an unset model "" (dialog_value).
    engine: dict[str, Any] = field(
        default_factory=lambda: {s.name: dialog_value(s, s.default) for s in DIALOG_SETTINGS}
    )

    @classmethod
    def of(cls, **values: Any) -> Settings:
        """Settings from plug-in fields and engine settings alike, each by its name."""
        own = {f.name for f in fields(cls)} - {"engine"}
        unknown = set(values) - own - {s.name for s in DIALOG_SETTINGS}
        if unknown:
            raise TypeError(f"unknown settings: {', '.join(sorted(unknown))}")
        settings = cls(**{k: v for k, v in values.items() if k in own})
        return settings.with_engine(**{k: v for k, v in values.items() if k not in own})

    def get(self, name: str) -> Any:
        return self.engine[name]

    def with_engine(self, **values: Any) -> Settings:
        return replace(self, engine={**self.engine, **values})

    def engine_params(self) -> dict[str, Any]:
        """The StylizeJob.params: the dialog's settings that the chosen method takes, unset ones left
        to the engine's defaults."""
        params = {}
        for s in declared.for_method(self.method):
            if s.name in self.engine and s.name != "map_weight":
                value = wire_value(s, self.engine[s.name])
                if value is not None:
                    params[s.name] = value
        if self.content_map and self.method in declared.BY_NAME["map_weight"].methods:
            params["map_weight"] = self.engine["map_weight"]
        return params


def dialog_value(s: declared.Setting, value: Any) -> Any:
    """A declared value as the dialog's field holds it: unset is 0 on a number, "" on text."""
    if value is None:
        return 0 if s.kind in ("int", "float") else ""
    return value


def wire_value(s: declared.Setting, value: Any) -> Any:
    """The dialog's field as the engine takes it: 0 or "" on an optional field is unset (None)."""
    if s.optional and value in (0, ""):
        return None
    return value


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

    The reply carries `capabilities.methods` as {name: {"needs_style": bool, "models":
    [{"id": ..., "installed": bool}, ...]}}.
    """
    caps = hello.get("capabilities", hello)
    out: dict[str, list[str] | None] = {}
    for name, info in (caps.get("methods") or {}).items():
        info = info if isinstance(info, dict) else {}
        if info.get("needs_style", name not in MODEL_METHODS):
            out[name] = None
        else:
            out[name] = [
                m["id"] for m in info.get("models") or [] if isinstance(m, dict) and m.get("installed")
            ]
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
            lines.append(f"{name}: no models installed yet (choose one to download it)")
    return "\n".join(lines)


def validate(
    settings: Settings, available: dict[str, list[str] | None], devices: list[str] | None = None
) -> Settings:
    """Check the choices against the declaration and what the engine has (its methods, models and,
    when given, its devices); returns them normalised (the first installed model filled in where
    none is chosen)."""
    s = settings.with_engine(model=str(settings.get("model")).strip())
    for value, allowed, what in (
        (s.method, METHODS, "method"),
        (s.output, OUTPUTS, "output"),
        (s.layer_mask, MASK_MODES, "masks mode"),
    ):
        if value not in allowed:
            raise SettingsError(f"Unknown {what} {value!r}; choose one of {', '.join(allowed)}.")
    for row in declared.for_method(s.method):
        if row.name in s.engine:
            try:
                declared.check_value(row, wire_value(row, s.engine[row.name]))
            except declared.SettingError as exc:
                raise SettingsError(f"{_label(row)}: {exc}.") from None
    if s.method not in available:
        raise SettingsError(f"The engine does not offer the {s.method} method.")
    device = s.get("device")
    if devices is not None and device != "auto" and device not in devices:
        raise SettingsError(
            f"The engine has no {device} device; it can use {', '.join(devices)}. Choose one, or Automatic."
        )
    models = available[s.method]
    if models is not None:
        # Only the dialog downloads a model (gimp_compat._download_model); a script's run says how.
        chosen = s.get("model")
        if chosen and chosen not in models:
            raise SettingsError(
                f"The {s.method} model {chosen!r} is not installed; install it with "
                f"`nst models pull {s.method}_{chosen}`, or choose it in the dialog, which downloads it"
                + (f" (installed: {', '.join(models)})." if models else ".")
            )
        if not chosen and models:
            s = s.with_engine(model=models[0])
        # With none installed and none chosen, the engine picks its default model and its error
        # names the exact `nst models pull` to run.
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
    if not 0.0 <= s.style2_weight <= 1.0:
        raise SettingsError("The second style's weight must be between 0 and 1.")
    if s.style2_weight > 0 and not (s.style2_file or s.style2_layer):
        raise SettingsError("A second-style weight is set but no second style is chosen.")
    return s


def _label(row: declared.Setting) -> str:
    """The dialog's label of a setting, without its mnemonic."""
    return row.label.replace("_", "")


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
        return str(settings.get("model"))
    if settings.layer_mask == "regions":
        return " + ".join(dict.fromkeys(one(*region.style) for region in regions(settings)))
    label = one(settings.style_file, settings.style_layer)
    if settings.style2_weight > 0 or settings.layer_mask == "split":
        label += " + " + one(settings.style2_file, settings.style2_layer)
    return label


def result_layer_name(source: str, settings: Settings) -> str:
    return f"{source} ({style_label(settings)}, {settings.method})"


FILE_FIELDS = ("style_file", "style2_file", *(f"region{n}_style_file" for n in range(1, REGION_COUNT + 1)))


def settings_to_bytes(settings: Settings, source_tattoo: int) -> bytes:
    """JSON for the saved parasite; the source's tattoo lets a re-run find the layer it came from.
    Style files are named by their file names only, unless the user asked to remember the paths."""
    stored = asdict(settings)
    if not settings.remember_paths:
        stored.update({name: os.path.basename(stored[name]) for name in FILE_FIELDS})
    body = {"version": SETTINGS_VERSION, "source_tattoo": source_tattoo, "settings": stored}
    return json.dumps(body, sort_keys=True).encode("utf-8")


def paths_to_bytes(settings: Settings) -> bytes:
    """The style files' full paths, for the session-only parasite."""
    return json.dumps({name: getattr(settings, name) for name in FILE_FIELDS}).encode("utf-8")


def with_paths(settings: Settings, data: bytes) -> Settings:
    """`settings` with the full paths of the session-only parasite, where it names the same files."""
    try:
        paths = json.loads(bytes(data).decode("utf-8"))
    except ValueError:
        return settings
    found = {
        name: path
        for name, path in (paths.items() if isinstance(paths, dict) else [])
        if name in FILE_FIELDS
        and isinstance(path, str)
        and os.path.basename(path) == os.path.basename(getattr(settings, name))
    }
    return replace(settings, **found)


def settings_from_bytes(data: bytes) -> tuple[Settings, int]:
    """Parse a parasite; unknown keys are dropped so older or newer plug-ins can still read it.
    Version 1 held the engine settings as flat fields; they are read into `engine`."""
    try:
        body = json.loads(bytes(data).decode("utf-8"))
        raw = body["settings"]
        tattoo = int(body.get("source_tattoo", 0))
    except (ValueError, KeyError, TypeError) as exc:
        raise SettingsError(f"The layer's {PARASITE_NAME} parasite is unreadable: {exc}") from None
    if body.get("version") not in (1, SETTINGS_VERSION) or not isinstance(raw, dict):
        raise SettingsError(f"The layer's settings are from an unknown version {body.get('version')!r}.")
    defaults = Settings()
    stored = raw.get("engine") if isinstance(raw.get("engine"), dict) else raw
    values: dict[str, Any] = {}
    for f in fields(Settings):
        value = _same_kind(raw.get(f.name), getattr(defaults, f.name)) if f.name != "engine" else None
        if value is not None:
            values[f.name] = value
    engine = dict(defaults.engine)
    for row in DIALOG_SETTINGS:
        value = stored.get(row.name)
        if row.name == "preserve_colors" and isinstance(value, bool):  # version 1: a switch
            value = "luminance" if value else "none"
        value = _same_kind(value, engine[row.name])
        if value is not None:
            engine[row.name] = value
    return Settings(**values, engine=engine), tattoo


def _same_kind(value: Any, like: Any) -> Any:
    """`value` as the type of `like` (an int where a float is meant becomes one); None otherwise."""
    if type(value) is type(like):
        return value
    if isinstance(like, float) and type(value) is int:
        return float(value)
    return None


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
