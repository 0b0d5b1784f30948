"""The host adapter: with dialog.py, the only module that calls Gimp, Gegl, Gio and GLib.

It turns the declarative table of neural_style.py into GIMP 3 procedures, reads layers, masks, the
selection and channels into RawImages (pixels.py), builds each layer's job (job.py), runs the
engine through client.py with GIMP's progress bar and a live preview layer, and only then touches
the image, inside one undo group. An error before that point leaves the image exactly as it was.

Cancel: GIMP 3 gives a plug-in no cancel signal. When the user cancels the progress bar, the
core kills the plug-in process (gimp_plug_in_close with kill), so the engine sees its socket
close and must treat that as a cancel; the image is untouched because the result never arrived,
except for a live preview layer (`_Preview`), which is outside the undo history and which the next
run on the image removes.
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import fields
from typing import Any

import gi

gi.require_version("Gimp", "3.0")
gi.require_version("Gegl", "0.4")
import dialog  # noqa: E402
import model_choice  # noqa: E402
import pixels  # noqa: E402
from gi.repository import Gegl, Gimp, Gio, GLib, GObject  # noqa: E402
from i18n import CATALOG_DIR, DOMAIN, _  # noqa: E402
from job import build_job, region_masks, style_weights  # noqa: E402
from settings import (  # noqa: E402
    DIALOG_SETTINGS,
    FILE_FIELDS,
    PARASITE_NAME,
    PATHS_PARASITE_NAME,
    REGION_COUNT,
    STYLELESS_METHODS,
    Param,
    ProcedureSpec,
    Settings,
    SettingsError,
    argument_name,
    check_layer,
    check_style_files,
    paths_to_bytes,
    regions,
    result_layer_name,
    settings_from_bytes,
    settings_to_bytes,
    validate,
    with_paths,
)

from nst_common.messages import RawImage  # noqa: E402

TRANSFER = "plug-in-neural-style-transfer"
_RW = GObject.ParamFlags.READWRITE


class _Failure(Exception):
    """Ends a run with EXECUTION_ERROR and this message; raised before the image is touched."""


# --- Registration --------------------------------------------------------------------------------


def _add_argument(procedure: Gimp.Procedure, p: Param) -> None:
    blurb = p.blurb or p.label
    if p.kind == "choice":
        choice = Gimp.Choice.new()
        for i, (nick, label) in enumerate(p.choices):
            choice.add(nick, i, label, "")
        procedure.add_choice_argument(p.name, p.label, blurb, choice, p.default, _RW)
    elif p.kind == "int":
        procedure.add_int_argument(p.name, p.label, blurb, int(p.lo), int(p.hi), p.default, _RW)
    elif p.kind == "double":
        procedure.add_double_argument(p.name, p.label, blurb, p.lo, p.hi, p.default, _RW)
    elif p.kind == "boolean":
        procedure.add_boolean_argument(p.name, p.label, blurb, p.default, _RW)
    elif p.kind == "string":
        procedure.add_string_argument(p.name, p.label, blurb, p.default, _RW)
    elif p.kind == "file":
        # ANY, not OPEN: GIMP refuses a missing file for an OPEN argument before the plug-in runs,
        # with a message that names neither the file nor the fix; check_style_files does both.
        # The dialog sets the config's file properties to OPEN for its file choosers (dialog.run).
        procedure.add_file_argument(p.name, p.label, blurb, Gimp.FileChooserAction.ANY, True, None, _RW)
    elif p.kind == "folder":
        procedure.add_file_argument(
            p.name, p.label, blurb, Gimp.FileChooserAction.SELECT_FOLDER, True, None, _RW
        )
    elif p.kind == "layer":
        procedure.add_layer_argument(p.name, p.label, blurb, True, _RW)
    elif p.kind == "channel":
        procedure.add_channel_argument(p.name, p.label, blurb, True, _RW)
    else:
        raise ValueError(f"unknown parameter kind {p.kind!r}")


def _make_plugin_class(table: list[ProcedureSpec]) -> type:
    specs = {spec.name: spec for spec in table}

    class NeuralStylePlugIn(Gimp.PlugIn):
        def do_query_procedures(self) -> list[str]:
            return list(specs)

        def do_set_i18n(self, name: str) -> tuple[bool, str, str]:
            """GIMP's default scheme, said outright: the plug-in's name, its locale/ folder."""
            return True, DOMAIN, CATALOG_DIR

        def do_create_procedure(self, name: str) -> Gimp.Procedure:
            spec = specs[name]
            procedure = Gimp.ImageProcedure.new(self, name, Gimp.PDBProcType.PLUGIN, _RUNNERS[spec.run], None)
            procedure.set_image_types("RGB*, GRAY*")
            procedure.set_sensitivity_mask(
                Gimp.ProcedureSensitivityMask.DRAWABLE | Gimp.ProcedureSensitivityMask.DRAWABLES
            )
            procedure.set_menu_label(spec.label)
            procedure.add_menu_path(spec.menu)
            procedure.set_documentation(spec.blurb, spec.help, name)
            procedure.set_attribution("neural-style contributors", "neural-style contributors", "2026")
            for param in spec.params:
                _add_argument(procedure, param)
            return procedure

    return NeuralStylePlugIn


def main(table: list[ProcedureSpec]) -> None:
    """Hand the table to GIMP; called by neural_style.py when GIMP starts the plug-in."""
    Gimp.main(_make_plugin_class(table).__gtype__, sys.argv)


# --- Settings <-> procedure config ---------------------------------------------------------------

# Settings fields held as GIMP objects in the config; the settings keep their display names.
_REGION_NUMBERS = range(1, REGION_COUNT + 1)
_LAYER_FIELDS = frozenset(
    {"style_layer", "style2_layer", "content_map", "style_map"}
    | {f"region{n}_style_layer" for n in _REGION_NUMBERS}
)
_CHANNEL_FIELDS = frozenset(f"region{n}_channel" for n in _REGION_NUMBERS)
_FILE_FIELDS = frozenset(FILE_FIELDS)


def _settings_from_config(config: Gimp.ProcedureConfig) -> tuple[Settings, dict[str, Any]]:
    """The plain settings, plus the layers and channels they name by field (pixels are read
    later, only when needed)."""
    values: dict[str, Any] = {}
    items: dict[str, Any] = {}
    for f in fields(Settings):
        if f.name == "engine":
            continue
        value = config.get_property(argument_name(f.name))
        if f.name in _LAYER_FIELDS or f.name in _CHANNEL_FIELDS:
            items[f.name] = value
            values[f.name] = value.get_name() if value is not None else ""
        elif f.name in _FILE_FIELDS:
            values[f.name] = (value.get_path() or "") if value is not None else ""
        else:
            values[f.name] = value
    engine = {row.name: config.get_property(argument_name(row.name)) for row in DIALOG_SETTINGS}
    return Settings(**values, engine=engine), items


def _settings_to_config(settings: Settings, image: Gimp.Image, config: Gimp.ProcedureConfig) -> None:
    """Fill a config from stored settings; layers and channels are found again by name in `image`."""
    for f in fields(Settings):
        if f.name == "engine":
            continue
        value = getattr(settings, f.name)
        if f.name in _LAYER_FIELDS:
            value = image.get_layer_by_name(value) if value else None
        elif f.name in _CHANNEL_FIELDS:
            value = image.get_channel_by_name(value) if value else None
        elif f.name in _FILE_FIELDS:
            value = Gio.File.new_for_path(value) if value else None
        config.set_property(argument_name(f.name), value)
    for name, value in settings.engine.items():
        config.set_property(argument_name(name), value)


# --- Pixels --------------------------------------------------------------------------------------


def _channels(drawable: Gimp.Drawable) -> int:
    return (3 if drawable.is_rgb() else 1) + (1 if drawable.has_alpha() else 0)


def _read_pixels(drawable: Gimp.Drawable) -> RawImage:
    """The drawable's pixels as non-linear float with straight alpha, whatever its precision."""
    w, h, c = drawable.get_width(), drawable.get_height(), _channels(drawable)
    data = drawable.get_buffer().get(
        Gegl.Rectangle.new(0, 0, w, h), 1.0, pixels.BABL_FORMATS[c], Gegl.AbyssPolicy.CLAMP
    )
    return pixels.raw_from_pixels(bytes(data), w, h, c)


def _write_pixels(buffer: Gegl.Buffer, image: RawImage, w: int, h: int, channels: int) -> None:
    """Write float pixels; GEGL converts them to the drawable's own precision."""
    data = pixels.pixels_from_raw(image, w, h, channels)
    buffer.set(Gegl.Rectangle.new(0, 0, w, h), pixels.BABL_FORMATS[channels], data)
    buffer.flush()


def _read_selection(image: Gimp.Image, layer: Gimp.Layer) -> RawImage:
    """The selection over the layer's extent (image coordinates, offsets applied), 0..1 float.

    Outside the canvas the selection is empty, hence the NONE abyss. Feathered edges keep their
    soft values because the mask is read in its own linear "Y" space.
    """
    _found, ox, oy = layer.get_offsets()
    w, h = layer.get_width(), layer.get_height()
    data = (
        image.get_selection()
        .get_buffer()
        .get(Gegl.Rectangle.new(ox, oy, w, h), 1.0, pixels.MASK_FORMAT, Gegl.AbyssPolicy.NONE)
    )
    return pixels.raw_from_pixels(bytes(data), w, h, 1)


def _read_channel(channel: Gimp.Channel, layer: Gimp.Layer) -> RawImage:
    """A channel (image-sized) over the layer's extent, 0..1 float: read like the selection, which
    is a channel too, so an offset or smaller layer gets the part of the channel it covers."""
    _found, ox, oy = layer.get_offsets()
    w, h = layer.get_width(), layer.get_height()
    data = channel.get_buffer().get(
        Gegl.Rectangle.new(ox, oy, w, h), 1.0, pixels.MASK_FORMAT, Gegl.AbyssPolicy.NONE
    )
    return pixels.raw_from_pixels(bytes(data), w, h, 1)


def _read_regions(settings: Settings, items: dict[str, Any], layer: Gimp.Layer) -> dict[int, RawImage]:
    """Each region's mask over `layer`, or a _Failure that names the region and what to do."""
    channels = {
        r.number: _read_channel(items[f"region{r.number}_channel"], layer)
        for r in regions(settings)
        if r.source == "channel"
    }
    try:
        return region_masks(settings, layer.get_name(), _read_layer_mask(layer), channels)
    except SettingsError as exc:
        raise _Failure(str(exc)) from None


def _read_layer_mask(layer: Gimp.Layer) -> RawImage | None:
    """The layer's mask as 0..1 float over the layer, or None when it has none (linear "Y", like
    the selection, so grey mask values keep their meaning as blend amounts)."""
    mask = layer.get_mask()
    if mask is None:
        return None
    w, h = layer.get_width(), layer.get_height()
    data = mask.get_buffer().get(
        Gegl.Rectangle.new(0, 0, w, h), 1.0, pixels.MASK_FORMAT, Gegl.AbyssPolicy.CLAMP
    )
    return pixels.raw_from_pixels(bytes(data), w, h, 1)


def _read_maps(layer: Gimp.Layer, map_layers: list[Gimp.Layer | None]) -> tuple[RawImage, RawImage] | None:
    """The content's and the style's label maps; the content's must cover the layer exactly."""
    if not map_layers:
        return None
    content_map, style_map = (_read_pixels(m) for m in map_layers)
    if (content_map.width, content_map.height) != (layer.get_width(), layer.get_height()):
        raise _Failure(
            _("The “Content label map” must have the size of “{layer}”.").format(layer=layer.get_name())
        )
    return content_map, style_map


# --- The engine ----------------------------------------------------------------------------------


def _client() -> Any:
    """The engine client, imported late so a broken client still lets the plug-in register."""
    try:
        import client
    except Exception as exc:  # any import failure is reported the same way to the user
        raise _Failure(
            _("The neural-style engine client could not be loaded: {problem}").format(problem=exc)
        ) from None
    return client


@contextlib.contextmanager
def _engine_call(refused: str) -> Iterator[Any]:
    """The client module, for a call to the engine whose refusal says `refused` (with {problem})
    and whose lost connection says so; both end the run with that message."""
    client = _client()
    try:
        yield client
    except client.EngineError as exc:
        raise _Failure(refused.format(problem=exc.message)) from None
    except OSError as exc:
        raise _Failure(
            _("The neural-style engine could not be reached: {problem}").format(problem=exc)
        ) from None


def _hello() -> tuple[Any, dict[str, list[str] | None]]:
    with _engine_call(_("The neural-style engine is not available: {problem}")) as client:
        engine = client.EngineClient()
        return engine, model_choice.method_models(engine.hello())


def _download_model(
    engine: Any, config: Gimp.ProcedureConfig, available: dict[str, list[str] | None]
) -> dict[str, list[str] | None]:
    """After the dialog: when the chosen model is known but not installed, have the engine download
    and verify it (a job of its own, on GIMP's progress bar), then ask again what is installed.

    Only the dialog's OK downloads: a script's run never starts one, and validate tells it
    which `nst models pull` to run. A failed download raises _Failure before the image is touched.
    """
    method, model = config.get_property("method"), str(config.get_property("model") or "").strip()
    wanted = model_choice.to_download(model_choice.known_models(engine.last_hello), method, model)
    if wanted is None:
        return available
    client = _client()
    label = _("Downloading the {method} model {model}").format(method=method, model=model)

    def on_progress(fraction: float, message: str) -> None:
        Gimp.progress_set_text(message or label)
        Gimp.progress_update(max(0.0, min(1.0, fraction)))

    Gimp.progress_init(label)
    try:
        engine.pull(list(wanted.weights), on_progress)
    except client.EngineError as exc:
        raise _Failure(
            _("Could not download the {method} model {model}: {problem}").format(
                method=method, model=model, problem=exc.message
            )
        ) from None
    except OSError as exc:
        raise _Failure(
            _("Lost the connection to the neural-style engine: {problem}").format(problem=exc)
        ) from None
    return _hello()[1]


def _stylize(
    engine: Any, job: Any, label: str, done: int, total: int, preview: _Preview | None = None
) -> RawImage:
    """Run one job with progress (the client starts its messages with the time left); a part of the
    whole bar per layer; the engine's previews go to `preview`."""
    client = _client()

    def on_progress(fraction: float, message: str) -> None:
        # TRANSLATORS: the progress bar's text: the layer's name, then the engine's progress.
        text = _("{layer}: {progress}").format(layer=label, progress=message)
        Gimp.progress_set_text(text if message else label)
        Gimp.progress_update((done + max(0.0, min(1.0, fraction))) / total)

    Gimp.progress_init(label)
    try:
        return engine.stylize(job, on_progress, lambda: False, preview.show if preview else None)
    except client.EngineError as exc:
        raise _Failure(
            _("Neural style failed on “{layer}”: {problem}").format(layer=label, problem=exc.message)
        ) from None
    except OSError as exc:
        raise _Failure(
            _("Lost the connection to the neural-style engine: {problem}").format(problem=exc)
        ) from None


# --- Live preview --------------------------------------------------------------------------------

PREVIEW_NAME = _("Neural style preview")
PREVIEW_PARASITE = "neural-style-preview"  # marks the temporary layer, in any language; not saved
PREVIEW_EVERY_S = 1.5  # at most one refresh this often (and never more than a fifth of the time)
PREVIEW_FORMAT = "R'G'B' u8"  # the engine's previews: small u8 RGB (docs/protocol.md)


def _previews_wanted(run_mode: Gimp.RunMode, engine: Any) -> bool:
    """Previews show in interactive runs (the dialog, Repeat and Re-show) and not in scripts, which
    nobody watches and which must leave nothing but their result. `"preview": true` or `false` in
    engine.json turns them on or off for every run."""
    setting = engine.config.get("preview")
    if isinstance(setting, bool):
        return setting
    return run_mode != Gimp.RunMode.NONINTERACTIVE


class _Preview:
    """A temporary layer right above a source layer that shows the engine's previews while its
    job runs, scaled up to the layer by GEGL (the previews are at most 256 px).

    It never enters the undo history: the undo stack is frozen only for the few calls that insert,
    refresh and remove it, and thawed in between, so whatever the user does meanwhile stays
    undoable (and a frozen stack cannot outlive a plug-in GIMP kills on cancel). Refreshes come at
    most every PREVIEW_EVERY_S, and on a layer so large that one takes long, at most a fifth of the
    time. A preview that fails turns itself off: it never costs the result.
    """

    def __init__(self, image: Gimp.Image, source: Gimp.Layer, selection: bool) -> None:
        self.image = image
        self.source = source
        self.selection = selection  # mask the preview by the selection, as the result will be
        self.layer: Gimp.Layer | None = None
        self.next_at = 0.0
        self.off = False

    def show(self, preview: RawImage) -> None:
        started = time.monotonic()
        if self.off or started < self.next_at:
            return
        try:
            self._draw(preview)
        except Exception as exc:  # GEGL or the PDB refused: no more previews for this job
            self.off = True
            print(f"neural-style: no more previews: {exc}", file=sys.stderr)
            return
        spent = time.monotonic() - started
        self.next_at = time.monotonic() + max(PREVIEW_EVERY_S, 4 * spent)

    def remove(self) -> None:
        """Take the layer out again (no display flush: the caller flushes once it is done)."""
        layer, self.layer = self.layer, None
        if layer is not None and layer.is_valid():
            with _undo_frozen(self.image):
                self.image.remove_layer(layer)

    def _draw(self, preview: RawImage) -> None:
        if not self.source.is_valid() or (self.layer is not None and not self.layer.is_valid()):
            self.off = True  # the user deleted the source or the preview: leave it so
            return
        w, h = self.source.get_width(), self.source.get_height()
        with _undo_frozen(self.image):
            layer = self.layer or self._insert(w, h)
            _scale_into(preview, layer.get_buffer(), w, h)
            layer.update(0, 0, w, h)
        Gimp.displays_flush()

    def _insert(self, w: int, h: int) -> Gimp.Layer:
        image, source = self.image, self.source
        grey = image.get_base_type() == Gimp.ImageBaseType.GRAY
        kind = Gimp.ImageType.GRAYA_IMAGE if grey else Gimp.ImageType.RGBA_IMAGE
        layer = Gimp.Layer.new(image, PREVIEW_NAME, w, h, kind, 100.0, Gimp.LayerMode.NORMAL)
        image.insert_layer(layer, source.get_parent(), image.get_item_position(source))
        self.layer = layer  # from here on `remove` takes it out, whatever fails next
        _found, ox, oy = source.get_offsets()
        layer.set_offsets(ox, oy)
        layer.attach_parasite(Gimp.Parasite.new(PREVIEW_PARASITE, 0, [1]))
        if self.selection:
            layer.add_mask(layer.create_mask(Gimp.AddMaskType.SELECTION))
        return layer


@contextlib.contextmanager
def _undo_frozen(image: Gimp.Image) -> Iterator[None]:
    image.undo_freeze()
    try:
        yield
    finally:
        image.undo_thaw()


_gegl_ready = False


def _scale_into(preview: RawImage, target: Gegl.Buffer, w: int, h: int) -> None:
    """Scale a small RGB preview up to `target`'s w x h in GEGL: the pixels never pass through Python."""
    global _gegl_ready
    if not _gegl_ready:  # libgimp sets up buffers but not GEGL's operations
        Gegl.init(None)
        _gegl_ready = True
    small = Gegl.Buffer.new(PREVIEW_FORMAT, 0, 0, preview.width, preview.height)
    small.set(Gegl.Rectangle.new(0, 0, preview.width, preview.height), PREVIEW_FORMAT, bytes(preview.data))
    graph = Gegl.Node()
    read = graph.create_child("gegl:buffer-source")
    read.set_property("buffer", small)
    scale = graph.create_child("gegl:scale-size")
    scale.set_property("x", float(w))
    scale.set_property("y", float(h))
    scale.set_property("sampler", Gegl.SamplerType.LINEAR)
    scale.set_property("abyss-policy", Gegl.AbyssPolicy.CLAMP)  # edges keep their colour, not fade out
    write = graph.create_child("gegl:write-buffer")
    write.set_property("buffer", target)
    read.link(scale)
    scale.link(write)
    write.process()
    target.flush()


def _is_preview(drawable: Gimp.Drawable) -> bool:
    return isinstance(drawable, Gimp.Layer) and drawable.get_parasite(PREVIEW_PARASITE) is not None


def _remove_stale_previews(image: Gimp.Image) -> None:
    """Preview layers an earlier run left (GIMP killed it on cancel): out, outside the undo history.
    Another run still going on this image loses its preview too; its result is not affected."""
    stale = []
    pending = list(image.get_layers())
    while pending:
        layer = pending.pop()
        if layer.is_group():
            pending += layer.get_children()
        elif _is_preview(layer):
            stale.append(layer)
    if stale:
        with _undo_frozen(image):
            for layer in stale:
                image.remove_layer(layer)


# --- Running -------------------------------------------------------------------------------------


def _error(procedure: Gimp.Procedure, message: str) -> Gimp.ValueArray:
    return procedure.new_return_values(Gimp.PDBStatusType.EXECUTION_ERROR, GLib.Error(message))


def _read_style_file(path: str) -> RawImage:
    """A style file decoded by GIMP, for an engine that reads no files for this client (one
    reached over TCP takes pixels, not paths: docs/protocol.md)."""
    try:
        picture = Gimp.file_load(Gimp.RunMode.NONINTERACTIVE, Gio.File.new_for_path(path))
    except GLib.Error as exc:
        raise _Failure(
            _("The style file {path} could not be read: {problem}").format(path=path, problem=exc.message)
        ) from None
    try:
        return _read_pixels(picture.flatten())
    finally:
        picture.delete()


def _prepare_styles(settings: Settings, items: dict[str, Any], send_files: bool) -> list[tuple[Any, float]]:
    """The job's styles: a file path or a layer's pixels each, with its weight. In the regions mode
    each region's own style, in region order, counting fully. Without `send_files` (the engine
    reads no paths of this client) a file goes as its pixels too."""
    if settings.method in STYLELESS_METHODS:
        return []
    if settings.layer_mask == "regions":
        chosen = [(items[f"region{r.number}_style_layer"], r.style_file, 1.0) for r in regions(settings)]
    else:
        w1, w2 = style_weights(settings)
        chosen = [
            (items["style_layer"], settings.style_file, w1),
            (items["style2_layer"], settings.style2_file, w2),
        ]
    styles: list[tuple[Any, float]] = []
    for layer, path, weight in chosen:
        if weight <= 0:
            continue
        if layer is not None:
            styles.append((_read_pixels(layer), weight))
        else:
            styles.append((path if send_files else _read_style_file(path), weight))
    return styles


def _check_drawables(drawables: list[Gimp.Drawable], settings: Settings) -> list[Gimp.Layer]:
    if not drawables:
        raise _Failure(_("Select at least one layer."))
    out = []
    for d in drawables:
        if not isinstance(d, Gimp.Layer) or isinstance(d, Gimp.LayerMask):
            raise _Failure(
                _("“{layer}” is not a layer; neural style works on layers only.").format(layer=d.get_name())
            )
        check_layer(d.get_name(), is_group=d.is_group(), is_text=d.is_text_layer(), settings=settings)
        out.append(d)
    return out


def _apply(image: Gimp.Image, source: Gimp.Layer, result: RawImage, settings: Settings) -> Gimp.Layer:
    """Put one result into the image: a copy of the source right above it, or the source itself."""
    w, h, c = source.get_width(), source.get_height(), _channels(source)
    if settings.output == "in-place":
        _write_pixels(source.get_shadow_buffer(), result, w, h, c)
        source.merge_shadow(True)
        target = source
    else:
        # A copy keeps the source's size, offsets, type, mode, opacity and layer mask.
        target = source.copy()
        target.set_name(result_layer_name(source.get_name(), settings))
        image.insert_layer(target, source.get_parent(), image.get_item_position(source))
        _write_pixels(target.get_buffer(), result, w, h, c)
    target.update(0, 0, w, h)
    data = settings_to_bytes(settings, source.get_tattoo())
    target.attach_parasite(
        Gimp.Parasite.new(PARASITE_NAME, Gimp.PARASITE_PERSISTENT | Gimp.PARASITE_UNDOABLE, list(data))
    )
    paths = paths_to_bytes(settings)  # not persistent: never saved in the XCF
    target.attach_parasite(Gimp.Parasite.new(PATHS_PARASITE_NAME, Gimp.PARASITE_UNDOABLE, list(paths)))
    return target


def _transfer(
    procedure: Gimp.Procedure,
    run_mode: Gimp.RunMode,
    image: Gimp.Image,
    drawables: list[Gimp.Drawable],
    config: Gimp.ProcedureConfig,
) -> Gimp.ValueArray:
    return _run_transfer(procedure, procedure, config, run_mode, image, list(drawables))


def _run_transfer(
    procedure: Gimp.Procedure,
    transfer: Gimp.Procedure,
    config: Gimp.ProcedureConfig,
    run_mode: Gimp.RunMode,
    image: Gimp.Image,
    drawables: list[Gimp.Drawable],
) -> Gimp.ValueArray:
    """The transfer's dialog (when interactive) and the model's download, then the run; what
    `procedure` returns. `transfer` and its `config` are the transfer's, also when re-running."""
    engine, available = _hello()
    if run_mode == Gimp.RunMode.INTERACTIVE:
        if not dialog.run(transfer, config, available, model_choice.known_models(engine.last_hello)):
            return procedure.new_return_values(Gimp.PDBStatusType.CANCEL, GLib.Error())
        available = _download_model(engine, config, available)
    _execute(engine, available, image, drawables, config, _previews_wanted(run_mode, engine))
    return procedure.new_return_values(Gimp.PDBStatusType.SUCCESS, GLib.Error())


def _execute(
    engine: Any,
    available: dict[str, list[str] | None],
    image: Gimp.Image,
    drawables: list[Gimp.Drawable],
    config: Gimp.ProcedureConfig,
    preview: bool = False,
) -> None:
    """Stylize every selected layer with the config's settings, then change the image once.
    `preview`: show each job's previews in a temporary layer above its source meanwhile."""
    _remove_stale_previews(image)
    drawables = [d for d in drawables if d.is_valid()]  # a stale preview the user had selected
    raw_settings, items = _settings_from_config(config)
    try:
        devices = engine.last_hello.get("capabilities", {}).get("devices")
        pulls = {
            method: {m.id: list(m.weights) for m in models}
            for method, models in model_choice.known_models(engine.last_hello).items()
        }
        settings = validate(raw_settings, available, devices if isinstance(devices, list) else None, pulls)
        check_style_files(settings)
        sources = _check_drawables(drawables, settings)
    except SettingsError as exc:
        raise _Failure(str(exc)) from None
    styles = _prepare_styles(settings, items, engine.last_hello.get("paths", "any") == "any")
    map_layers = [items["content_map"], items["style_map"]] if settings.content_map else []
    use_selection = settings.only_selection and not Gimp.Selection.is_empty(image)

    jobs = []
    for layer in sources:
        selection = None
        if use_selection:
            selection = _read_selection(image, layer)
            coverage = pixels.selection_coverage(selection)
            if coverage == "none":
                continue
            if coverage == "full":
                selection = None
        masks = _read_regions(settings, items, layer) if settings.layer_mask == "regions" else None
        mask = _read_layer_mask(layer) if settings.layer_mask in ("confine", "split") else None
        if mask is not None and settings.content_map:
            raise _Failure(
                _(
                    "“{layer}” has a layer mask; semantic maps cannot be combined with it yet. "
                    "Set “Masks” to “Ignore”, or take the label maps away."
                ).format(layer=layer.get_name())
            )
        if mask is not None and settings.layer_mask == "confine":
            coverage = pixels.selection_coverage(mask)
            if coverage == "none":
                continue
            if coverage == "full":
                mask = None
        job = build_job(
            settings, _read_pixels(layer), styles, selection, mask, _read_maps(layer, map_layers), masks
        )
        jobs.append((layer, job, selection is not None))
    if not jobs:
        raise _Failure(
            _("The selection and the layer masks leave nothing to stylize in the selected layers.")
        )

    views: list[_Preview] = []  # each stays until every result is in, so no layer goes blank meanwhile
    try:
        results = []
        for i, (layer, job, masked) in enumerate(jobs):
            view = _Preview(image, layer, masked) if preview else None
            if view is not None:
                views.append(view)
            results.append((layer, _stylize(engine, job, layer.get_name(), i, len(jobs), view)))
    except BaseException:
        for view in views:
            view.remove()
        Gimp.displays_flush()
        raise
    for view in views:  # out before the results go in: not part of their undo step
        view.remove()

    # Every result is in; only now does the image change, as one undo step.
    image.undo_group_start()
    try:
        for layer, result in results:
            _apply(image, layer, result, settings)
    finally:
        image.undo_group_end()
    Gimp.progress_end()
    Gimp.displays_flush()


def _rerun(
    procedure: Gimp.Procedure,
    run_mode: Gimp.RunMode,
    image: Gimp.Image,
    drawables: list[Gimp.Drawable],
    config: Gimp.ProcedureConfig,
) -> Gimp.ValueArray:
    """Read the settings a result layer carries and run the transfer again on its source.

    It runs in this process with the transfer procedure's config: calling the transfer through
    the PDB interactively would make GIMP replace the stored settings with its last-used values.
    """
    if len(drawables) != 1:
        raise _Failure(_("Select exactly one layer made by Neural Style Transfer."))
    layer = drawables[0]
    parasite = layer.get_parasite(PARASITE_NAME)
    if parasite is None:
        raise _Failure(
            _("“{layer}” carries no neural-style settings; it was not made by this plug-in.").format(
                layer=layer.get_name()
            )
        )
    try:
        settings, tattoo = settings_from_bytes(bytes(parasite.get_data()))
        paths = layer.get_parasite(PATHS_PARASITE_NAME)
        if paths is not None:
            settings = with_paths(settings, bytes(paths.get_data()))
    except SettingsError as exc:
        raise _Failure(str(exc)) from None
    source = image.get_layer_by_tattoo(tattoo) if tattoo else None
    transfer = Gimp.get_pdb().lookup_procedure(TRANSFER)
    transfer_config = transfer.create_config()
    _settings_to_config(settings, image, transfer_config)
    return _run_transfer(procedure, transfer, transfer_config, run_mode, image, [source or layer])


def _guarded(
    body: Callable[..., Gimp.ValueArray],
) -> Callable[..., Gimp.ValueArray]:
    """Turn a _Failure anywhere in a run into EXECUTION_ERROR with its message."""

    def run(
        procedure: Gimp.Procedure,
        run_mode: Gimp.RunMode,
        image: Gimp.Image,
        drawables: list[Gimp.Drawable],
        config: Gimp.ProcedureConfig,
        _data: object,
    ) -> Gimp.ValueArray:
        try:
            return body(procedure, run_mode, image, drawables, config)
        except _Failure as exc:
            return _error(procedure, str(exc))

    return run


def _train(
    procedure: Gimp.Procedure,
    run_mode: Gimp.RunMode,
    image: Gimp.Image,
    drawables: list[Gimp.Drawable],
    config: Gimp.ProcedureConfig,
) -> Gimp.ValueArray:
    """Start a Johnson training in the engine on the selected layer's painting and a photo folder;
    the engine checks the request (name, folder, an existing model) before it accepts it."""
    if len(drawables) != 1 or not isinstance(drawables[0], Gimp.Layer):
        raise _Failure(_("Select the one layer that holds the painting, then choose Train Fast Style."))
    if run_mode == Gimp.RunMode.INTERACTIVE and not dialog.run_train(procedure, config):
        return procedure.new_return_values(Gimp.PDBStatusType.CANCEL, GLib.Error())
    name = str(config.get_property("model-name") or "").strip()
    folder = config.get_property("photos")
    if not name:
        raise _Failure(_("Give the model a “Model name”: letters, digits, - and _."))
    if folder is None or not folder.get_path():
        raise _Failure(_("Choose the folder of photos to train on as “Photos”."))
    steps = int(config.get_property("steps"))
    request = {
        "method": "johnson",
        "name": name,
        "content_dir": folder.get_path(),
        "settings": {"steps": steps} if steps else {},
    }
    painting = (_style_name(drawables[0].get_name()), _read_pixels(drawables[0]))
    with _engine_call(_("The engine did not start the training: {problem}")) as client:
        job = client.EngineClient().train(request, [painting])
    Gimp.message(
        _(
            "Training {name} in the neural-style engine (job {job}). It goes on after GIMP closes; "
            "`nst jobs` shows how far it is. When it ends, {name} is in the Johnson model list."
        ).format(name=name, job=job)
    )
    return procedure.new_return_values(Gimp.PDBStatusType.SUCCESS, GLib.Error())


def _style_name(layer_name: str) -> str:
    """A layer's name as a painting's name (what a mix names): letters, digits, - and _."""
    cleaned = "".join(c if c.isascii() and (c.isalnum() or c in "-_") else "_" for c in layer_name)
    return cleaned.strip("_-")[:40] or "painting"


_RUNNERS = {"transfer": _guarded(_transfer), "rerun": _guarded(_rerun), "train": _guarded(_train)}
