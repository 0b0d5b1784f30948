"""The transfer's dialog: GIMP's generated procedure dialog, laid out in two columns, with a list of
the engine's models in place of the model's text entry, and only the fields the chosen method takes.

Called by host.py for interactive runs; it changes nothing but the procedure config.
"""

from __future__ import annotations

from collections.abc import Callable

import gi

gi.require_version("Gimp", "3.0")
gi.require_version("GimpUi", "3.0")
gi.require_version("Gtk", "3.0")
import model_choice  # noqa: E402
from gi.repository import Gimp, GimpUi, GObject, Gtk  # noqa: E402
from i18n import _  # noqa: E402
from settings import (  # noqa: E402
    DIALOG_SETTINGS,
    FILE_FIELDS,
    METHODS,
    MODEL_METHODS,
    REGION_COUNT,
    STYLELESS_METHODS,
    argument_name,
)

from nst_common import settings as declared  # noqa: E402

_REGION_NUMBERS = range(1, REGION_COUNT + 1)
# The declared settings in the dialog's left column; the model has its own place and the label
# strictness sits with the label maps.
_LEFT_SETTINGS = tuple(row for row in DIALOG_SETTINGS if row.name not in ("model", "map_weight"))


def run(
    procedure: Gimp.Procedure,
    config: Gimp.ProcedureConfig,
    available: dict[str, list[str] | None],
    known: dict[str, list[model_choice.Model]],
) -> bool:
    """Show the settings dialog; False when the user cancels. `known`: every model the engine
    could run, installed or not (model_choice.known_models)."""
    GimpUi.init(procedure.get_name())
    method_choice = Gimp.param_spec_choice_get_choice(procedure.find_argument("method"))
    for name in METHODS:  # a model method needs a model it has or can download
        usable = name in available and (available[name] is None or bool(available[name] or known.get(name)))
        method_choice.set_sensitive(name, usable)
    for name in FILE_FIELDS:  # GIMP's file chooser takes no ANY argument (host._add_argument)
        Gimp.param_spec_file_set_action(
            config.find_property(argument_name(name)), Gimp.FileChooserAction.OPEN
        )
    dialog = GimpUi.ProcedureDialog.new(procedure, config, _("Neural Style Transfer"))

    def title(label_id: str, text: str) -> None:
        label = dialog.get_label(label_id, text, False, False)
        label.set_line_wrap(True)
        label.set_max_width_chars(64)

    status = _("Methods in the running engine:") + "\n" + model_choice.describe_methods(available)
    dialog.get_label("engine-status", status, False, False)
    title("style-title", _("Style: an image file, or a layer of any open image"))
    dialog.fill_box("style-box", ["style-file", "style-layer"])
    dialog.fill_frame("style-frame", "style-title", False, "style-box")
    title("style2-title", _("Second style (optional)"))
    dialog.fill_box("style2-box", ["style2-file", "style2-layer", "style2-weight"])
    dialog.fill_frame("style2-frame", "style2-title", False, "style2-box")
    dialog.fill_box("output-box", ["output", "only-selection", "remember-paths", "layer-mask"])
    for n in _REGION_NUMBERS:
        dialog.get_label(f"region{n}-tab", _("Region {n}").format(n=n), False, False)
        parts = ("source", "channel", "style-file", "style-layer")
        dialog.fill_box(f"region{n}-box", [f"region{n}-{part}" for part in parts])
    dialog.fill_notebook(
        "regions-book",
        [f"region{n}-tab" for n in _REGION_NUMBERS],
        [f"region{n}-box" for n in _REGION_NUMBERS],
    )
    title(
        "regions-title",
        _(
            "Regions (with “Masks” set to “Regions”): each region's mask takes its own style; what "
            "no region covers keeps the layer"
        ),
    )
    dialog.fill_frame("regions-frame", "regions-title", False, "regions-book")
    title(
        "maps-title",
        _(
            "Semantic maps (optional): label layers painted in matching colours; each colour of the "
            "content takes the style of the same colour"
        ),
    )
    dialog.fill_box("maps-box", ["content-map", "style-map", "map-weight"])
    dialog.fill_frame("maps-frame", "maps-title", False, "maps-box")
    model_box, fill_models = _model_list(dialog, config, known)
    dialog.fill_box(
        "left-column",
        [
            "engine-status",
            "method",
            "model-box",
            "style-frame",
            "style2-frame",
            *(argument_name(row.name) for row in _LEFT_SETTINGS),
        ],
    )
    dialog.fill_box("right-column", ["output-box", "regions-frame", "maps-frame"])
    columns = dialog.fill_box("columns", ["left-column", "right-column"])
    columns.set_orientation(Gtk.Orientation.HORIZONTAL)
    columns.set_spacing(18)
    dialog.fill(["columns"])
    style_widget = dialog.get_widget("style-frame", GObject.TYPE_NONE)
    style2_widget = dialog.get_widget("style2-frame", GObject.TYPE_NONE)
    regions_widget = dialog.get_widget("regions-frame", GObject.TYPE_NONE)
    remember_widget = dialog.get_widget("remember-paths", GObject.TYPE_NONE)
    maps_widget = dialog.get_widget("maps-frame", GObject.TYPE_NONE)
    channel_widgets = {n: dialog.get_widget(f"region{n}-channel", GObject.TYPE_NONE) for n in _REGION_NUMBERS}
    # Pairs, not a dict: a Setting holds dicts (per_method), so it cannot be hashed.
    setting_widgets = [
        (row, dialog.get_widget(argument_name(row.name), GObject.TYPE_NONE)) for row in _LEFT_SETTINGS
    ]

    def sync(*_args: object) -> None:
        method = config.get_property("method")
        regions = config.get_property("layer-mask") == "regions"
        # Only what the chosen method takes: a model, style images, regions, label maps.
        model_box.set_visible(method in MODEL_METHODS)
        for widget in (style_widget, style2_widget, regions_widget, remember_widget):
            widget.set_visible(method not in STYLELESS_METHODS)
        maps_widget.set_visible(declared.method(method).guided)
        style_widget.set_sensitive(not regions)
        regions_widget.set_sensitive(regions)
        for n, widget in channel_widgets.items():
            widget.set_sensitive(config.get_property(f"region{n}-source") == "channel")
        # A model of several paintings shows the Style mix field, with an even mix of its paintings
        # as the example; other models hide it.
        hint = model_choice.mix_hint(known.get(method, []), str(config.get_property("model") or ""))
        for row, widget in setting_widgets:  # only what the chosen method (and model) uses
            widget.set_visible(method in row.methods and (row.name != "mix" or bool(hint)))
            entry = _entry_in(widget) if row.name == "mix" else None
            if entry is not None:
                entry.set_placeholder_text(hint)

    for prop in ("method", "model", "layer-mask", *(f"region{n}-source" for n in _REGION_NUMBERS)):
        config.connect(f"notify::{prop}", sync)
    config.connect("notify::method", fill_models)
    fill_models()
    sync()
    ok = dialog.run()
    dialog.destroy()
    return bool(ok)


def _entry_in(widget: Gtk.Widget) -> Gtk.Entry | None:
    """The text entry inside a generated field (GIMP wraps it with its label)."""
    if isinstance(widget, Gtk.Entry):
        return widget
    if isinstance(widget, Gtk.Container):
        for child in widget.get_children():
            found = _entry_in(child)
            if found is not None:
                return found
    return None


def _model_list(
    dialog: GimpUi.ProcedureDialog, config: Gimp.ProcedureConfig, known: dict[str, list[model_choice.Model]]
) -> tuple[Gtk.Box, Callable[..., None]]:
    """The model field as a list of the chosen method's models, each marked installed or to
    download, in place of the `model` argument's text entry (which stays for scripts). Returns the
    row and the function that refills it for the config's method."""
    label = dialog.get_label("model-label", _(declared.BY_NAME["model"].label), False, True)
    label.set_xalign(0.0)
    method = dialog.get_widget("method", GObject.TYPE_NONE)
    if isinstance(method, GimpUi.Labeled):  # line the list up with the method's choice above it
        labels = Gtk.SizeGroup(mode=Gtk.SizeGroupMode.HORIZONTAL)
        labels.add_widget(method.get_label())
        labels.add_widget(label)
    box = dialog.fill_box("model-box", ["model-label"])
    box.set_orientation(Gtk.Orientation.HORIZONTAL)
    box.set_spacing(6)
    combo = Gtk.ComboBoxText()
    combo.set_hexpand(True)
    combo.set_tooltip_text(
        _(
            "The trained model to run. One that is not installed is downloaded when you press OK, "
            "with its progress on the progress bar."
        )
    )
    label.set_mnemonic_widget(combo)
    box.pack_start(combo, True, True, 0)
    combo.show()
    filling = False

    def fill(*_args: object) -> None:
        nonlocal filling
        models = known.get(config.get_property("method"), [])
        current = model_choice.selected(models, str(config.get_property("model") or ""))
        filling = True
        try:
            combo.remove_all()
            for m in models:
                combo.append(m.id, m.label())
            combo.set_active_id(current or None)
        finally:
            filling = False
        if current and current != config.get_property("model"):
            config.set_property("model", current)

    def chosen(_combo: Gtk.ComboBoxText) -> None:
        if not filling and combo.get_active_id():
            config.set_property("model", combo.get_active_id())

    combo.connect("changed", chosen)
    return box, fill


def run_train(procedure: Gimp.Procedure, config: Gimp.ProcedureConfig) -> bool:
    """The Train Fast Style dialog, generated from the procedure's arguments; False on cancel."""
    GimpUi.init(procedure.get_name())
    dialog = GimpUi.ProcedureDialog.new(procedure, config, _("Train Fast Style"))
    dialog.fill(None)
    ok = dialog.run()
    dialog.destroy()
    return bool(ok)
