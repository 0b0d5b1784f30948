"""Every method and every setting, declared once as plain data, and the one validation of them.

Both sides read this module: the engine validates jobs with `check` and builds the `nst stylize`
options, `nst info --json` and the protocol's `hello` from `describe`; the plug-in builds its
procedure arguments, its dialog and its own validation from the same tuples, with no engine
running. A fifth method is one `Method` row here plus its engine module; a new setting is one
`Setting` row. Standard library only: this runs inside GIMP's Python too.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field, replace
from typing import Any

MAX_SIDE = 16384  # the largest long side a job may ask for (size, tile)
MIN_SIDE = 16


class SettingError(ValueError):
    """A value the user must change; the message names the setting and what it accepts."""


@dataclass(frozen=True)
class Method:
    name: str
    label: str  # the dialog's choice label
    help: str  # one line: when to pick it
    needs_style: bool  # takes style images; False: its style lives in a trained model
    guided: bool  # matches each region's (or label's) own style inside the method
    has_models: bool  # runs one of a list of trained models (the `model` setting)


METHODS: tuple[Method, ...] = (
    Method(
        "gatys", "Gatys (optimisation, slow, best quality)",
        "Optimises the picture itself against any style image; minutes on a CPU", True, True, False,
    ),
    Method(
        "johnson", "Johnson (fast, one model per style)",
        "One forward pass of a network trained for one style; needs a model", False, False, True,
    ),
    Method(
        "adain", "AdaIN (fast, any style image)",
        "One forward pass for any style image; needs a decoder: the published one, or one trained "
        "by nst train adain", True, True, True,
    ),
    Method(
        "cyclegan", "CycleGAN (fast, painter models)",
        "One forward pass of a generator trained on a painter's work; needs a model", False, False, True,
    ),
)  # fmt: skip
METHOD_NAMES = tuple(m.name for m in METHODS)
_EVERY = METHOD_NAMES
_FEED_FORWARD = ("johnson", "adain", "cyclegan")
_MODEL_METHODS = tuple(m.name for m in METHODS if m.has_models)
_STYLELESS = tuple(m.name for m in METHODS if not m.needs_style)  # the style lives in the model
_GUIDED = tuple(m.name for m in METHODS if m.guided)

# Gatys' feature taps, shared by its layer settings.
TAPS = (
    "relu1_1", "relu1_2", "relu2_1", "relu2_2", "relu3_1", "relu3_2", "relu3_3", "relu4_1",
    "relu4_2", "relu4_3", "relu5_1", "relu5_2", "relu5_3",
)  # fmt: skip


@dataclass(frozen=True)
class Setting:
    """One setting. `kind` is int, float, choice, bool, text, model or layers (a mapping of
    feature tap to weight). `default` None means unset: the method decides (size: the content's).
    `per_method` says where methods really differ: {method: {field: value}} over this row."""

    name: str  # the wire key; the CLI flag is --name-with-dashes
    kind: str
    default: Any
    label: str  # the dialog's label, with a mnemonic
    help: str  # one line: CLI --help and the dialog's tooltip
    methods: tuple[str, ...]
    lo: float | None = None
    hi: float | None = None
    choices: tuple[str, ...] = ()
    labels: tuple[str, ...] = ()  # the dialog's words for `choices`, in order (default: capitalised)
    expert: bool = False  # the command line and the wire only; the dialog leaves it out
    scope: str = "method"  # "job": read by the pipeline (device, memory, map_weight), not the method
    per_method: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)

    def for_method(self, method: str) -> Setting:
        """This row as `method` takes it."""
        override = self.per_method.get(method)
        return replace(self, per_method={}, **override) if override else self

    def choice_label(self, value: str) -> str:
        labels = dict(zip(self.choices, self.labels, strict=False))
        return labels.get(value, value.capitalize())

    def widest(self) -> Setting:
        """This row with the widest range and choices any method takes: a GIMP argument's bounds."""
        rows = [self.for_method(m) for m in self.methods]
        los = [r.lo for r in rows if r.lo is not None]
        his = [r.hi for r in rows if r.hi is not None]
        choices = tuple(dict.fromkeys(c for r in rows for c in r.choices))
        return replace(
            self, per_method={}, lo=min(los) if los else None, hi=max(his) if his else None, choices=choices
        )

    @property
    def optional(self) -> bool:
        """Unset is allowed; the dialog shows it as 0 on a whole-number field."""
        return self.default is None


SETTINGS: tuple[Setting, ...] = (
    Setting(
        "model", "model", None, "Mo_del",
        "The trained model to run (default: the first installed one)", _MODEL_METHODS,
        per_method={"adain": {"help": "The decoder to run: published (with its VGG-19 encoder) or one "
                              "trained by nst train adain (default: the first installed one)"}},
    ),
    Setting(
        "mix", "text", None, "Style m_ix",
        "For a model trained on several paintings: how much of each, as name=weight, comma-separated "
        "(default: the first painting alone)", ("johnson",),
    ),
    Setting(
        "preset", "choice", "balanced", "_Quality",
        "How much work: draft (quick look), balanced, best (slow)", ("gatys",),
        choices=("draft", "balanced", "best"),
    ),
    Setting(
        "strength", "float", 1.0, "_Strength",
        "How much of the style: 0 keeps the photo, 1 is the method's full style (Gatys weighs it up to 10)",
        _EVERY, 0.0, 1.0, per_method={"gatys": {"hi": 10.0}},
    ),
    Setting(
        "size", "int", None, "Work si_ze",
        "Long side of the work in pixels (default: the layer's own, Gatys at most its preset's)",
        _EVERY, MIN_SIDE, MAX_SIDE,
    ),
    Setting(
        "preserve_colors", "choice", "none", "_Preserve colours",
        "Keep the photo's colours: by luminance, or by matching the style's colour histogram",
        _EVERY, choices=("none", "luminance", "histogram"),
        labels=("No", "Keep the photo's luminance", "Match the style's colours to the photo"),
        per_method={name: {"choices": ("none", "luminance")} for name in _STYLELESS},
    ),
    Setting(
        "iterations", "int", None, "_Iterations",
        "Optimisation steps per scale (default: the quality preset's)", ("gatys",), 1, 100_000,
    ),
    Setting("seed", "int", 0, "S_eed", "Random seed, for repeatable results", ("gatys",), 0, 2**31 - 1),
    Setting(
        "device", "choice", "auto", "De_vice", "Where the engine computes", _EVERY,
        choices=("auto", "cpu", "cuda", "mps"), labels=("Automatic", "CPU", "CUDA GPU", "Apple GPU (MPS)"),
        scope="job",
    ),
    Setting(
        "map_weight", "float", 1.0, "Label st_rictness",
        "With label maps: how strictly a label takes its own style (1 = only its own)", _GUIDED, 0.0, 1.0,
        scope="job",
    ),
    # --- for experts: the command line and the wire ---
    Setting(
        "memory", "int", None, "Memory", "MiB the job may use on its device (default: what is free)",
        _EVERY, 256, 1 << 24, expert=True, scope="job",
    ),
    Setting(
        "tile", "int", None, "Tile", "Work in tiles of this side in pixels (default: only when needed)",
        _EVERY, MIN_SIDE, MAX_SIDE, expert=True, per_method={"gatys": {"lo": 176}},
    ),
    Setting(
        "precision", "choice", "auto", "Precision",
        "Number format of the network's passes: auto (the fastest measured on this machine; fp16 on "
        "CUDA), fp32, fp16 or bf16",
        _EVERY, choices=("auto", "fp32", "fp16", "bf16"), expert=True,
    ),
    Setting(
        "style_size", "int", 512, "Style size",
        "Shorter side the style image is resized to; 0 keeps its size", ("adain",), 0, MAX_SIDE,
        expert=True,
    ),
    Setting(
        "scales", "int", None, "Scales", "Coarse-to-fine scales (default: the preset's)", ("gatys",),
        1, 16, expert=True,
    ),
    Setting(
        "style_scale", "float", 1.0, "Style scale",
        "Size of the style's features relative to the content's", ("gatys",), 0.05, 8.0, expert=True,
    ),
    Setting(
        "init", "text", "content", "Start", "Start from: content, noise or an image file", ("gatys",),
        expert=True,
    ),
    Setting(
        "optimizer", "choice", "lbfgs", "Optimiser", "lbfgs or adam", ("gatys",),
        choices=("lbfgs", "adam"), expert=True,
    ),
    Setting(
        "learning_rate", "float", 0.02, "Learning rate", "Adam's step size", ("gatys",), 1e-5, 1.0,
        expert=True,
    ),
    Setting(
        "backbone", "choice", "vgg16-hed", "Backbone", "The feature network", ("gatys",),
        choices=("vgg16-hed", "vgg19", "vgg19-normalised"), expert=True,
    ),
    Setting(
        "pooling", "choice", "max", "Pooling", "max or avg pooling in the feature network", ("gatys",),
        choices=("max", "avg"), expert=True,
    ),
    Setting(
        "content_weight", "float", 1.0, "Content weight", "Weight of the content loss", ("gatys",),
        0.0, 1e6, expert=True,
    ),
    Setting(
        "style_weight", "float", 10.0, "Style weight",
        "Weight of the style loss (strength scales it)", ("gatys",), 0.0, 1e6, expert=True,
    ),
    Setting(
        "tv_weight", "float", 2.0, "Smoothing", "Weight of the total-variation smoothing", ("gatys",),
        0.0, 1e6, expert=True,
    ),
    Setting(
        "activation_shift", "float", 0.0, "Activation shift",
        "Novak & Nikulin's shift of the activations before the Gram matrices", ("gatys",), -100.0, 100.0,
        expert=True,
    ),
    Setting(
        "content_layers", "layers", {"relu4_2": 1.0}, "Content layers",
        "Feature taps of the content loss: name or name:weight, comma-separated", ("gatys",),
        0.0, 1e6, choices=TAPS, expert=True,
    ),
    Setting(
        "style_layers", "layers",
        {"relu1_1": 1.0, "relu2_1": 1.0, "relu3_1": 1.0, "relu4_1": 1.0, "relu5_1": 1.0},
        "Style layers", "Feature taps of the style loss: name or name:weight, comma-separated",
        ("gatys",), 0.0, 1e6, choices=TAPS, expert=True,
    ),
)  # fmt: skip
BY_NAME = {s.name: s for s in SETTINGS}


def method(name: str) -> Method:
    for m in METHODS:
        if m.name == name:
            return m
    raise SettingError(f"unknown method {name!r}; choose one of: {', '.join(METHOD_NAMES)}")


def for_method(name: str, scope: str | None = None) -> list[Setting]:
    """The settings `name` takes, as it takes them; only those of `scope` when given."""
    return [s.for_method(name) for s in SETTINGS if name in s.methods and (scope is None or s.scope == scope)]


def check(method_name: str, raw: Mapping[str, Any], scope: str | None = None) -> dict[str, Any]:
    """Validate `raw` for a method and complete it with defaults: every setting of the method (of
    `scope`, when given) in, none other. An unknown or foreign key is an error, not ignored."""
    method(method_name)
    taken = {s.name: s for s in for_method(method_name, scope)}
    for key in raw:
        if key in taken:
            continue
        row = BY_NAME.get(key)
        if row is None:
            raise SettingError(f"unknown setting {key!r}")
        if method_name not in row.methods:
            raise SettingError(
                f"setting {key!r} is not used by {method_name}; it applies to {', '.join(row.methods)}"
            )
        raise SettingError(f"setting {key!r} is not expected here")
    return {name: check_value(s, raw.get(name, s.default)) for name, s in taken.items()}


def check_value(s: Setting, value: Any) -> Any:
    """One value against its row; returns it normalised (ints as floats where a float is meant)."""
    if value is None and s.optional:
        return None
    if s.kind == "bool":
        if not isinstance(value, bool):
            raise _bad(s, f"must be true or false, got {value!r}")
        return value
    if s.kind == "int":
        if isinstance(value, bool) or not isinstance(value, int):
            raise _bad(s, f"must be a whole number, got {value!r}")
        _in_range(s, value)
        return value
    if s.kind == "float":
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise _bad(s, f"must be a number, got {value!r}")
        _in_range(s, value)
        return float(value)
    if s.kind == "choice":
        if s.name == "preserve_colors" and isinstance(value, bool):  # older clients sent a switch
            value = "luminance" if value else "none"
        if value not in s.choices:
            raise _bad(s, f"must be one of {', '.join(s.choices)}; got {value!r}")
        return value
    if s.kind in ("text", "model"):
        if not isinstance(value, str) or not value or len(value) > 4096:
            raise _bad(s, f"must be a non-empty text, got {value!r}")
        return value
    if s.kind == "layers":
        return _layers(s, value)
    raise ValueError(f"setting {s.name!r} has an unknown kind {s.kind!r}")


def _layers(s: Setting, value: Any) -> dict[str, float]:
    """A list of taps (equal weights) or a mapping tap -> weight."""
    if isinstance(value, (list, tuple)):
        value = {name: 1.0 for name in value}
    if not isinstance(value, Mapping) or not value:
        raise _bad(s, "must be a non-empty list of layer names or a mapping of layer name to weight")
    out = {}
    for name, weight in value.items():
        if name not in s.choices:
            raise _bad(s, f"names an unknown layer {name!r}; known: {', '.join(s.choices)}")
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not math.isfinite(weight):
            raise _bad(s, f"gives layer {name!r} the weight {weight!r}; weights are numbers")
        if not (s.lo or 0.0) <= weight <= (s.hi or math.inf):
            raise _bad(
                s, f"gives layer {name!r} the weight {weight!r}; weights are from {s.lo:g} to {s.hi:g}"
            )
        out[name] = float(weight)
    return out


def _in_range(s: Setting, value: float) -> None:
    if (s.lo is not None and value < s.lo) or (s.hi is not None and value > s.hi):
        raise _bad(s, f"must be between {s.lo:g} and {s.hi:g}, got {value!r}")


def _bad(s: Setting, why: str) -> SettingError:
    return SettingError(f"setting {s.name!r} {why}")


def parse_layers(text: str) -> dict[str, float]:
    """`relu1_1:1,relu2_1:0.5` or `relu4_2` (weight 1), as typed on the command line."""
    out: dict[str, float] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, _, weight = item.partition(":")
        try:
            out[name] = float(weight) if weight else 1.0
        except ValueError:
            raise SettingError(f"layer weight in {item!r} is not a number") from None
    return out


def parse_text(text: str) -> Any:
    """A value typed on a command line (`--set KEY=VALUE`): JSON where it parses, so numbers, true
    and lists keep their type, else the text itself."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def describe(names: Iterable[str] = METHOD_NAMES) -> dict[str, Any]:
    """The declaration as JSON-ready data, for `nst info --json` and the protocol's `hello`."""
    return {
        "methods": [asdict(method(n)) for n in names],
        "settings": [
            {**asdict(s), "per_method": {k: dict(v) for k, v in s.per_method.items()}} for s in SETTINGS
        ],
    }
