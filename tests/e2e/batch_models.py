# Runs inside gimp-3.0 (the GUI, under Xvfb) in the trixie chroot; the test prepends E2E_DIR and
# ARGS_PATH. Runs the transfer interactively once per case: a helper process waits for the
# dialog and presses its OK button with xdotool (real X input, as a user would), so the plug-in
# downloads the chosen model through the engine before it runs.
import sys
import traceback

sys.path.insert(0, E2E_DIR)  # noqa: F821 - prepended by the test
from batch_prelude import (
    Gimp,
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
findings = {"cases": {}}


try:
    image = Gimp.Image.new(40, 32, Gimp.ImageBaseType.RGB)
    layer = Gimp.Layer.new(image, "Photo", 40, 32, Gimp.ImageType.RGB_IMAGE, 100.0, Gimp.LayerMode.NORMAL)
    image.insert_layer(layer, None, 0)
    fill(layer, 3, "R'G'B' float", lambda x, y, c: ((x * 7 + y * 5 + c * 11) % 32) / 32.0)
    styled = {}  # AdaIN takes a painting: a layer of stripes, as a user picks a layer as the style
    if any(case.get("method") == "adain" for case in ARGS["cases"]):
        paint = Gimp.Layer.new(image, "Paint", 40, 32, Gimp.ImageType.RGB_IMAGE, 100.0, Gimp.LayerMode.NORMAL)
        image.insert_layer(paint, None, 1)
        fill(paint, 3, "R'G'B' float", lambda x, y, c: ((x + y) // 4 % 2) * (0.9 if c == 1 else 0.2))
        styled = {"style_layer": paint}
    Gimp.Display.new(image)  # the progress bar lives in the image window
    for case in ARGS["cases"]:
        before = layer_state(image)
        kept = {layer.get_id() for layer in image.get_layers()}
        interactive = case.get("interactive", True)
        presser = press_ok("Neural Style Transfer") if interactive else None
        proc, config = procedure_config(
            image,
            [layer],
            run_mode=Gimp.RunMode.INTERACTIVE if interactive else Gimp.RunMode.NONINTERACTIVE,
            method=case.get("method", "johnson"),
            model=case["model"],
            device="cpu",
            **({"mix": case["mix"]} if "mix" in case else {}),
            **(styled if case.get("method") == "adain" else {}),
        )
        status, error = run_procedure(proc, config)
        after = layer_state(image)
        added = len(after) > len(before)
        findings["cases"][case.get("key", case["model"])] = {
            "pressed": presser is None or pressed(presser),
            "status": status,
            "error": error,
            "unchanged": after == before,
            "layers": [entry["name"] for entry in after],
            "changed_pixels": sum(
                1 for a, b in zip(after[0]["pixels"], before[0]["pixels"], strict=True) if abs(a - b) > 1e-3
            )
            if added
            else 0,
            "result": after[0]["pixels"] if added else None,
        }
        for extra in image.get_layers():  # the next case starts from the same image
            if extra.get_id() not in kept:
                image.remove_layer(extra)
except Exception:
    findings["exception"] = traceback.format_exc()

finish(ARGS["out"], findings, image)
