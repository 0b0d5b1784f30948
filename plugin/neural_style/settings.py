"""The plug-in's settings: every user choice of one run, the procedure arguments that carry them,
their validation against the declaration (nst_common/settings.py) and the engine's offer, and the
parasites that keep them on a result for re-runs.

Standard library only, no GIMP: host.py and dialog.py do the GIMP calls around it and the tests run
it with the host Python.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

from i18n import _

from nst_common import settings as declared

PARASITE_NAME = "neural-style-settings"
# The style files' full paths, for re-runs while the image stays open: not saved in the XCF, which
# goes wherever the user sends it (the saved settings keep only the file names, unless asked).
PATHS_PARASITE_NAME = "neural-style-paths"
SETTINGS_VERSION = 2  # 1 held the engine settings as flat fields

METHODS = declared.METHOD_NAMES
METHOD_LABELS = {m.name: _(m.label) for m in declared.METHODS}
# Johnson, AdaIN and CycleGAN run one of a list of trained models (the `model` setting).
MODEL_METHODS = frozenset(m.name for m in declared.METHODS if m.has_models)
# Johnson and CycleGAN carry their style in the model; the other two need a style image.
STYLELESS_METHODS = frozenset(m.name for m in declared.METHODS if not m.needs_style)
# The engine settings the dialog shows (the declaration's non-expert rows); experts use `nst`.
DIALOG_SETTINGS = tuple(s for s in declared.SETTINGS if not s.expert)
OUTPUTS = ("new-layer", "in-place")
MASK_MODES = ("confine", "split", "ignore", "regions")
MASK_MODE_LABELS = {  # the dialog's one-line explanation of each mode; messages name its first word
    "confine": _("Confine: style only where the layer mask is white (grey blends)"),
    "split": _("Split: the first style where the layer mask is white, the second where black"),
    "ignore": _("Ignore: style the whole layer, whatever its mask"),
    "regions": _("Regions: each region below (a channel or the layer mask) takes its own style"),
}
REGION_COUNT = 4  # regions the dialog offers
REGION_SOURCES = ("none", "channel", "layer-mask", "layer-mask-inverse")
REGION_SOURCE_LABELS = {  # what marks a region, one line each
    "none": _("Not used"),
    "channel": _("The channel chosen below (a saved selection)"),
    "layer-mask": _("The layer mask: its white part"),
    "layer-mask-inverse": _("The layer mask inverted: its black part"),
}
OUTPUT_LABELS = {"new-layer": _("New layer above each source"), "in-place": _("Replace the layer's pixels")}


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
    """One PDB procedure: what GIMP shows, and which runner in host.py does the work."""

    name: str
    label: str
    menu: str
    blurb: str
    help: str
    run: str  # "transfer" | "rerun" | "train"
    params: tuple[Param, ...] = ()


_ARGUMENT_KINDS = {"int": "int", "float": "double", "choice": "choice", "bool": "boolean"}


def argument_name(field_name: str) -> str:
    """The procedure argument (and config property) of a settings field or declared setting."""
    return field_name.replace("_", "-")


def declared_param(s: declared.Setting) -> Param:
    """The procedure argument of a declared setting: the widest range any method takes (the
    validation narrows it to the chosen method's), 0 or "" for an unset optional one. The
    declaration's words are data, translated here where the dialog takes them."""
    w = s.widest()
    kind = _ARGUMENT_KINDS.get(s.kind, "string")
    blurb = _(s.help)
    if s.optional and kind in ("int", "double"):
        # TRANSLATORS: a number setting's tooltip, then what 0 in its field means.
        blurb = _("{help}; 0 = the default").format(help=blurb)
    if set(s.methods) != set(METHODS):
        # TRANSLATORS: a setting's tooltip, then the methods that take it (gatys, adain, ...).
        blurb = _("{help} ({methods})").format(help=blurb, methods=", ".join(s.methods))
    lo = 0 if s.optional else w.lo or 0
    choices = tuple((c, _(w.choice_label(c))) for c in w.choices) if kind == "choice" else ()
    return Param(
        argument_name(s.name), kind, _(s.label), blurb, dialog_value(s, s.default), lo, w.hi or 0, choices
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
        """The region as messages name it: its tab and what marks it."""
        if self.source == "channel":
            return _("Region {n} (channel “{channel}”)").format(n=self.number, channel=self.channel)
        if self.source == "layer-mask-inverse":
            return _("Region {n} (the layer mask inverted)").format(n=self.number)
        return _("Region {n} (the layer mask)").format(n=self.number)


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


def validate(
    settings: Settings,
    available: dict[str, list[str] | None],
    devices: list[str] | None = None,
    pulls: dict[str, dict[str, list[str]]] | None = None,
) -> Settings:
    """Check the choices against the declaration and what the engine has (its methods, models and,
    when given, its devices and the weights each model needs: {method: {model: ids}}); returns them
    normalised (the first installed model filled in where none is chosen)."""
    s = settings.with_engine(model=str(settings.get("model") or "").strip())
    for value, allowed, message in (
        (s.method, METHODS, _("“Method” cannot be {value!r}: choose one of {choices}.")),
        (s.output, OUTPUTS, _("“Output” cannot be {value!r}: choose one of {choices}.")),
        (s.layer_mask, MASK_MODES, _("“Masks” cannot be {value!r}: choose one of {choices}.")),
    ):
        if value not in allowed:
            raise SettingsError(message.format(value=value, choices=", ".join(allowed)))
    for row in declared.for_method(s.method):
        if row.name in s.engine:
            try:
                declared.check_value(row, wire_value(row, s.engine[row.name]))
            except declared.SettingError as exc:
                # The declaration's own words after the dialog's label: nst_common has no catalog.
                raise SettingsError(
                    _("{label}: {problem}.").format(label=label_text(row.label), problem=exc)
                ) from None
    if s.method not in available:
        raise SettingsError(_("The engine does not offer the {method} method.").format(method=s.method))
    device = s.get("device")
    if devices is not None and device != "auto" and device not in devices:
        raise SettingsError(
            _(
                "The engine has no {device} device; it can use {devices}. "
                "Choose one of them as the “Device”, or “Automatic”."
            ).format(device=device, devices=", ".join(devices))
        )
    models = available[s.method]
    if models is not None:
        # Only the dialog downloads a model (host._download_model); a script's run says how.
        chosen = s.get("model")
        if chosen and chosen not in models:
            ids = (pulls or {}).get(s.method, {}).get(chosen) or [f"{s.method}_{chosen}"]
            text = _(
                "The {method} model {model!r} is not installed: install it with "
                "`nst models pull {ids}`, or choose it in the dialog's “Model” list, "
                "which downloads it."
            ).format(method=s.method, model=chosen, ids=" ".join(ids))
            if models:
                text += " " + _("Installed: {models}.").format(models=", ".join(models))
            raise SettingsError(text)
        if not chosen and models:
            s = s.with_engine(model=models[0])
        # With none installed and none chosen, the engine picks its default model and its error
        # names the exact `nst models pull` to run.
    styleless = s.method in STYLELESS_METHODS  # the style lives in the model
    if styleless:
        pass
    elif s.layer_mask == "regions":
        _validate_regions(s)
    elif not (s.style_file or s.style_layer):
        raise SettingsError(
            _("{method} needs a style: choose a “Style file” or a “Style layer”.").format(method=s.method)
        )
    if s.layer_mask == "split" and (styleless or not (s.style2_file or s.style2_layer)):
        raise SettingsError(
            _(
                "“Masks” set to “Split” needs Gatys or AdaIN and a second style for the black part: "
                "a “Second style file” or a “Second style layer”."
            )
        )
    if bool(s.content_map) != bool(s.style_map):
        raise SettingsError(
            _("Semantic maps need both label maps: a “Content label map” and a “Style label map”.")
        )
    if s.content_map and (styleless or s.layer_mask in ("split", "regions")):
        raise SettingsError(
            _(
                "Semantic maps need Gatys or AdaIN, and cannot be combined with “Masks” set to "
                "“Split” or “Regions”."
            )
        )
    if s.layer_mask == "regions" and styleless:
        raise SettingsError(
            _("“Masks” set to “Regions” needs Gatys or AdaIN: each region takes its own style image.")
        )
    if not 0.0 <= s.style2_weight <= 1.0:
        raise SettingsError(_("The “Second style weight” must be between 0 and 1."))
    if s.style2_weight > 0 and not (s.style2_file or s.style2_layer):
        raise SettingsError(
            _(
                "A “Second style weight” is set but no second style is chosen: choose a “Second style "
                "file” or a “Second style layer”, or set the weight to 0."
            )
        )
    return s


def label_text(label: str) -> str:
    """A dialog label as messages quote it: translated, without its mnemonic underscore."""
    return _(label).replace("_", "")


def _validate_regions(s: Settings) -> None:
    """Each region in use needs its mask and its style; at least one must be in use."""
    for n in range(1, REGION_COUNT + 1):
        source = getattr(s, f"region{n}_source")
        if source not in REGION_SOURCES:
            raise SettingsError(
                _("Region {n}'s “Mask” cannot be {value!r}: choose one of {choices}.").format(
                    n=n, value=source, choices=", ".join(REGION_SOURCES)
                )
            )
    used = regions(s)
    if not used:
        raise SettingsError(
            _(
                "“Masks” set to “Regions” needs at least one region: on the “Region 1” tab (or another), "
                "choose its “Mask” and its “Style file” or “Style layer”."
            )
        )
    for region in used:
        if region.source == "channel" and not region.channel:
            raise SettingsError(
                _("Region {n} is marked by a channel, but no “Channel” is chosen on its tab.").format(
                    n=region.number
                )
            )
        if not any(region.style):
            raise SettingsError(
                _("Region {n} needs a style: choose a “Style file” or a “Style layer” on its tab.").format(
                    n=region.number
                )
            )


def check_layer(name: str, *, is_group: bool, is_text: bool, settings: Settings) -> None:
    """Refuse layers the run cannot handle, with a message that says why and what to do."""
    if is_group:
        raise SettingsError(
            _("“{layer}” is a layer group. Select the layers inside it, or merge the group first.").format(
                layer=name
            )
        )
    if is_text and settings.output == "in-place":
        raise SettingsError(
            _(
                "“{layer}” is a text layer; stylizing it in place would discard its text. "
                "Set “Output” to “New layer above each source”, or rasterize the layer first."
            ).format(layer=name)
        )


def check_style_files(settings: Settings) -> None:
    """Refuse a style file the run would read but cannot, naming the file and its field: GIMP
    passes any path through (the file arguments take any file, so that this check is reached), and
    the engine's own error would only name the path."""
    for path, message, region in _style_files(settings):
        try:
            with open(path, "rb"):
                continue
        except FileNotFoundError:
            problem = _("does not exist")
        except IsADirectoryError:
            problem = _("is a folder, not an image")
        except OSError as exc:
            problem = _("cannot be read ({reason})").format(reason=exc.strerror or exc)
        raise SettingsError(message.format(path=path, problem=problem, n=region))


def _style_files(settings: Settings) -> list[tuple[str, str, int]]:
    """The style files a validated run reads (a layer wins over its file), each with the message
    that names its field and its region's number (0 outside regions); none where the model holds
    the style."""
    if settings.method in STYLELESS_METHODS:
        return []
    if settings.layer_mask == "regions":
        return [
            (
                region.style_file,
                _(
                    "Region {n}'s style file {path} {problem}: choose another painting as its “Style "
                    "file”, or pick its “Style layer”."
                ),
                region.number,
            )
            for region in regions(settings)
            if region.style_file and not region.style_layer
        ]
    files: list[tuple[str, str, int]] = []
    if settings.style_file and not settings.style_layer:
        files.append(
            (
                settings.style_file,
                _(
                    "The style file {path} {problem}: choose another painting as the “Style file”, or "
                    "pick a “Style layer”."
                ),
                0,
            )
        )
    second = settings.style2_weight > 0 or settings.layer_mask == "split"
    if second and settings.style2_file and not settings.style2_layer:
        files.append(
            (
                settings.style2_file,
                _(
                    "The second style file {path} {problem}: choose another painting as the “Second "
                    "style file”, or pick a “Second style layer”."
                ),
                0,
            )
        )
    return files


def style_label(settings: Settings) -> str:
    """Short human name of the style(s), for layer names: file stems, layer or model names."""

    def one(path: str, layer: str) -> str:
        return layer or os.path.splitext(os.path.basename(path))[0]

    if settings.method in STYLELESS_METHODS:
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
    """The style files' full paths, for the parasite that keeps them while the image stays open
    (never saved)."""
    return json.dumps({name: getattr(settings, name) for name in FILE_FIELDS}).encode("utf-8")


def with_paths(settings: Settings, data: bytes) -> Settings:
    """`settings` with the full paths of the paths parasite (kept while the image stays open), where
    it names the same files."""
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
        raise SettingsError(
            _("The layer's {parasite} parasite is unreadable: {problem}").format(
                parasite=PARASITE_NAME, problem=exc
            )
        ) from None
    if body.get("version") not in (1, SETTINGS_VERSION) or not isinstance(raw, dict):
        raise SettingsError(
            _("The layer's settings are from an unknown version {version!r}.").format(
                version=body.get("version")
            )
        )
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
