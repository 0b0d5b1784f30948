# Runs inside gimp-3.0 (the GUI, under Xvfb) in the trixie chroot; the test prepends E2E_DIR and
# ARGS_PATH. Runs Filters > Artistic > Train Fast Style on a painting layer, once per case, and
# reports how each run ended and whether the image was left as it was. An interactive case shows
# the dialog, filled from the case, and a helper process presses its OK button with xdotool.
import sys
import traceback

sys.path.insert(0, E2E_DIR)  # noqa: F821 - prepended by the test
from batch_prelude import (
    Gimp,
    Gio,
    fill,
    finish,
    layer_state,
    load_args,
    press_ok,
    pressed,
    procedure_config,
    run_procedure,
)

ARGS = load_args(ARGS_PATH)  # noqa: F821 - prepended by the test
findings = {"cases": []}

try:
    image = Gimp.Image.new(48, 40, Gimp.ImageBaseType.RGB)
    paint = Gimp.Layer.new(
        image, "Blue waves", 48, 40, Gimp.ImageType.RGB_IMAGE, 100.0, Gimp.LayerMode.NORMAL
    )
    image.insert_layer(paint, None, 0)
    fill(paint, 3, "R'G'B' float", lambda x, y, c: ((x + 2 * y) // 5 % 2) * (0.9 if c == 2 else 0.3))
    for case in ARGS["cases"]:
        before = layer_state(image)
        folder = Gio.File.new_for_path(case["photos"]) if case.get("photos") else None
        interactive = case.get("interactive", False)
        presser = press_ok("Train Fast Style") if interactive else None
        proc, config = procedure_config(
            image,
            [paint],
            procedure="plug-in-neural-style-train",
            run_mode=Gimp.RunMode.INTERACTIVE if interactive else Gimp.RunMode.NONINTERACTIVE,
            model_name=case["name"],
            photos=folder,
            steps=case.get("steps", 0),
        )
        status, error = run_procedure(proc, config)
        findings["cases"].append(
            {
                "status": status,
                "error": error,
                "pressed": presser is None or pressed(presser),
                "unchanged": layer_state(image) == before,
            }
        )
except Exception:
    findings["exception"] = traceback.format_exc()

finish(ARGS["out"], findings, image)
