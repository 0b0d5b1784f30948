#!/usr/bin/env bash
# Capture real GIMP 3 under Xvfb while a Gatys run's live preview forms, into docs/preview.png.
#
#   tools/screenshot-preview.sh [OUTPUT.png]
#
# Builds the GIMP 3 chroot if needed (tools/gimp3-chroot.sh), draws a picture and a painting (the
# synthetic ones of bench/make_readme_pictures.py, so the screenshot may ship), starts a real engine
# from the project's .venv outside the chroot on a Unix socket in a bound directory, opens the
# picture in gimp-3.0 and runs the transfer as Filters > Repeat does (no dialog; previews on). The
# plug-in's run function runs in the batch script's process, so the script sees each progress
# report: once 40% of the work is done it grabs GIMP's window with ImageMagick's import (the preview
# layer over the picture, the time left on the progress bar). Needs root.
set -euo pipefail

# shellcheck source=tools/screenshot-common.sh
source "$(dirname "${BASH_SOURCE[0]}")/screenshot-common.sh"
OUT="$(realpath -m "${1:-$REPO/docs/preview.png}")"
screenshot_setup nst-preview
echo '(show-welcome-dialog no)' >"$WORK/gimp3/gimprc"

(cd "$REPO" && "$PYTHON" - "$WORK" <<'PY'
import importlib.util
import sys
from pathlib import Path

from engine.imaging import images

work = Path(sys.argv[1])
spec = importlib.util.spec_from_file_location("pictures", Path("bench/make_readme_pictures.py"))
pictures = importlib.util.module_from_spec(spec)
spec.loader.exec_module(pictures)
photo, _ = pictures.landscape(480)
images.save_image(work / "landscape.png", photo[60:420])  # 480x360
warm = pictures.strokes(256, [(0.9, 0.35, 0.1), (0.95, 0.75, 0.2), (0.5, 0.1, 0.1)], 0.6, seed=1)
images.save_image(work / "painting.png", warm)
PY
)

NST_HOME="$WORK/home" start_engine

{
    printf 'WORK = "%s"\nPLUGIN = "%s"\nSIZE = (1060, 660)\n' "$WORK" "$PLUGIN"
    printf 'import sys\nsys.path.insert(0, "%s")\n' "$REPO/tests/e2e"  # the e2e scripts' shared prelude
    cat <<'PY'
import subprocess
import time
import traceback

from batch_prelude import Gimp, Gio, procedure_config

sys.path.insert(0, PLUGIN)
import client
import host

stylize = client.EngineClient.stylize
grabbed = []


def main_window():
    """The image window's X id: its title ends with "GIMP" (the welcome dialog's does not)."""
    search = ["xdotool", "search", "--onlyvisible", "--name", "GIMP$"]
    return subprocess.run(search, capture_output=True, text=True).stdout.split()[0]


def grab():
    """GIMP's window, once it has painted the latest preview (the pointer off the canvas, where
    it would draw the brush's outline)."""
    subprocess.run(["xdotool", "mousemove", "700", "12"])
    time.sleep(1.5)
    subprocess.run(["import", "-window", main_window(), f"{WORK}/shot.png"], check=True)
    grabbed.append(True)


def watched(self, job, on_progress, is_cancelled, on_preview=None):
    def progress(fraction, message):
        on_progress(fraction, message)
        ready = " left" in message and image.get_layer_by_name(host.PREVIEW_NAME) is not None
        if not grabbed and fraction >= 0.4 and ready:
            grab()

    return stylize(self, job, progress, is_cancelled, on_preview)


try:
    image = Gimp.file_load(Gimp.RunMode.NONINTERACTIVE, Gio.File.new_for_path(f"{WORK}/landscape.png"))
    layer = image.get_layers()[0]
    Gimp.Display.new(image)
    Gimp.displays_flush()
    time.sleep(2)
    window = main_window()  # wide enough for the progress text and the time left
    subprocess.run(["xdotool", "windowmove", window, "0", "0"])
    subprocess.run(["xdotool", "windowsize", window, str(SIZE[0]), str(SIZE[1])])
    time.sleep(2)
    client.EngineClient.stylize = watched
    proc, config = procedure_config(
        image,
        [layer],
        style_file=Gio.File.new_for_path(f"{WORK}/painting.png"),
        preset="draft",
        size=256,
        iterations=100,
        seed=0,
    )
    host._RUNNERS["transfer"](proc, Gimp.RunMode.WITH_LAST_VALS, image, [layer], config, None)
    image.clean_all()
except Exception:
    traceback.print_exc()
quit_proc = Gimp.get_pdb().lookup_procedure("gimp-quit")
quit_config = quit_proc.create_config()
quit_config.set_property("force", True)
quit_proc.run(quit_config)
PY
} >"$WORK/preview-run.py"

cat >"$WORK/capture.sh" <<'SH'
set -u
WORK=$1
xdotool mousemove 0 0  # no tooltip under the pointer
GIMP3_DIRECTORY=$WORK/gimp3 timeout 600 gimp-3.0 -n --no-splash --batch-interpreter python-fu-eval -b - \
    <"$WORK/preview-run.py" >"$WORK/gimp.log" 2>&1
[ -f "$WORK/shot.png" ] || { echo "no screenshot was taken; GIMP said:" >&2; tail -40 "$WORK/gimp.log" >&2; exit 1; }
SH

NST_CHROOT_BINDS="$WORK" "$CHROOT" run xvfb-run -a -s "-screen 0 1280x900x24" sh "$WORK/capture.sh" "$WORK"
# A 256-colour palette: a screenshot for the README, not a photograph.
NST_CHROOT_BINDS="$WORK:$(dirname "$OUT")" "$CHROOT" run \
    convert "$WORK/shot.png" -colors 256 -define png:exclude-chunk=date,time "$OUT"
echo "wrote $OUT ($(stat -c %s "$OUT") bytes)"
