# Runs inside gimp-3.0 (the GUI, under Xvfb) in the trixie chroot; the test prepends E2E_DIR and
# ARGS_PATH. The live preview, seen from the inside: a plug-in's PDB call blocks its caller until it
# returns, so this script runs the plug-in's own run function (the one GIMP calls) in this process,
# in the run mode of Filters > Repeat (no dialog; previews on), and records the image's layers at
# every progress report the engine client passes on. Then one Ctrl+Z (xdotool, as batch_undo.py)
# must remove all results, and a second must bring back no preview: none was in the undo history.
# Then a preview layer such as a cancelled (killed) run leaves is removed by the next run, made
# through the PDB in the plug-in's own process, non-interactively (previews off), in one undo step.
# Last, a grey image gets a grey preview.
import sys
import traceback

sys.path.insert(0, E2E_DIR)  # noqa: F821 - prepended by the test
from batch_prelude import (
    Gimp,
    Gio,
    fill,
    finish,
    focus,
    image_window,
    layer_state,
    load_args,
    pixels,
    procedure_config,
    transfer,
    undo_once,
)

ARGS = load_args(ARGS_PATH)  # noqa: F821 - prepended by the test
W, H = 64, 48
findings = {}


def names(image):
    return [layer.get_name() for layer in image.get_layers()]


try:
    image = Gimp.Image.new(W, H, Gimp.ImageBaseType.RGB)
    sources = []
    for name, shade in (("Base", 0.3), ("Top", 0.8)):
        layer = Gimp.Layer.new(image, name, W, H, Gimp.ImageType.RGB_IMAGE, 100.0, Gimp.LayerMode.NORMAL)
        image.insert_layer(layer, None, 0)
        fill(
            layer,
            3,
            "R'G'B' float",
            lambda x, y, c, shade=shade: ((x * 5 + y * 3 + c * 7) % 16) / 16.0 * shade,
        )
        sources.append(layer)
    sources.reverse()  # Top first, as the Layers dialog lists them
    image.undo_enable()
    image.clean_all()
    Gimp.Display.new(image)
    Gimp.displays_flush()
    findings["before"] = layer_state(image)

    sys.path.insert(0, ARGS["plugin_dir"])
    import client
    import host

    seen = []
    watching = [image]
    stylize = client.EngineClient.stylize

    def watched(self, job, on_progress, is_cancelled, on_preview=None):
        def progress(fraction, message):
            on_progress(fraction, message)
            entry = {"fraction": fraction, "message": message, "layers": names(watching[0])}
            preview = watching[0].get_layer_by_name(host.PREVIEW_NAME)
            if preview is not None:
                values = pixels(preview, "R'G'B' float")
                mean = sum(values) / len(values)
                entry["preview"] = {
                    "size": [preview.get_width(), preview.get_height()],
                    "offsets": list(preview.get_offsets()[1:]),
                    "spread": (sum((v - mean) ** 2 for v in values) / len(values)) ** 0.5,
                    "grey": preview.is_gray(),
                }
            seen.append(entry)

        return stylize(self, job, progress, is_cancelled, on_preview)

    client.EngineClient.stylize = watched
    proc, config = procedure_config(
        image,
        sources,
        style_file=Gio.File.new_for_path(ARGS["style"]),
        preset="draft",
        size=W,
        iterations=ARGS["iterations"],
    )
    result = host._RUNNERS["transfer"](proc, Gimp.RunMode.WITH_LAST_VALS, image, sources, config, None)
    findings["status"] = result.index(0).value_nick
    findings["error"] = result.index(1) if result.length() > 1 else ""
    findings["seen"] = list(seen)
    findings["after_run"] = names(image)
    Gimp.displays_flush()

    findings["windows"] = windows = image_window()
    focus(windows[0])
    undo_once(image, len(findings["after_run"]), tries=20)
    findings["after_undo"] = layer_state(image)
    undo_once(
        image, len(image.get_layers()), tries=20
    )  # nothing left to undo: a preview step would show here
    findings["after_second_undo"] = names(image)

    # What a cancelled run leaves: GIMP kills the plug-in, its preview layer stays. The next run
    # (previews off: non-interactive) takes it out; that is not an undo step either.
    stale = Gimp.Layer.new(
        image, host.PREVIEW_NAME, W, H, Gimp.ImageType.RGBA_IMAGE, 100.0, Gimp.LayerMode.NORMAL
    )
    image.undo_freeze()
    image.insert_layer(stale, None, 0)
    stale.attach_parasite(Gimp.Parasite.new(host.PREVIEW_PARASITE, 0, [1]))
    image.undo_thaw()
    findings["with_stale"] = names(image)
    top = image.get_layer_by_name("Top")
    findings["pdb_status"], findings["pdb_error"] = transfer(
        image, [top], style_file=Gio.File.new_for_path(ARGS["style"]), preset="draft", size=W, iterations=2
    )
    findings["after_pdb"] = names(image)
    Gimp.displays_flush()
    undo_once(image, len(findings["after_pdb"]), tries=20)
    findings["after_pdb_undo"] = names(image)

    grey = Gimp.Image.new(32, 24, Gimp.ImageBaseType.GRAY)
    layer = Gimp.Layer.new(grey, "Grey", 32, 24, Gimp.ImageType.GRAY_IMAGE, 100.0, Gimp.LayerMode.NORMAL)
    grey.insert_layer(layer, None, 0)
    fill(layer, 1, "Y' float", lambda x, y, c: ((x * 3 + y * 5) % 11) / 11.0)
    watching[0] = grey
    seen.clear()
    proc, config = procedure_config(
        grey, [layer], style_file=Gio.File.new_for_path(ARGS["style"]), preset="draft", size=32, iterations=3
    )
    result = host._RUNNERS["transfer"](proc, Gimp.RunMode.WITH_LAST_VALS, grey, [layer], config, None)
    findings["grey_status"] = result.index(0).value_nick
    findings["grey_seen"] = [s["preview"] for s in seen if "preview" in s]
    findings["grey_after"] = names(grey)
    grey.delete()
    client.EngineClient.stylize = stylize
except Exception:
    findings["exception"] = traceback.format_exc()

finish(ARGS["out"], findings, image)
