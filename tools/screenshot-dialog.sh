#!/usr/bin/env bash
# Capture the Neural Style Transfer dialog from real GIMP 3 under Xvfb into docs/dialog.png.
#
#   tools/screenshot-dialog.sh [OUTPUT.png]
#
# Builds the GIMP 3 chroot if needed (tools/gimp3-chroot.sh), starts a real engine from the
# project's .venv outside the chroot on a Unix socket in a bound directory, opens an image in
# gimp-3.0 and runs the procedure interactively with the Johnson method; the dialog is found with
# xwininfo, its model list opened with xdotool, and the screen grabbed with ImageMagick's import
# and cut to the dialog. The engine's data directory holds a stand-in for the candy model, so the
# list shows one model installed and the others to download. Needs root.
set -euo pipefail

# shellcheck source=tools/screenshot-common.sh
source "$(dirname "${BASH_SOURCE[0]}")/screenshot-common.sh"
OUT="$(realpath -m "${1:-$REPO/docs/dialog.png}")"
screenshot_setup nst-shot

# A stand-in for the candy model, installed as a user installs a file they have (it is never run).
printf 'a stand-in for the candy model\n' >"$WORK/candy.pth"
# Its own data and runtime directories: an engine running for someone else (one per user, by a
# lock in the runtime directory) neither stops this one nor shows its models.
export NST_HOME="$WORK/home" NST_RUNTIME_DIR="$WORK/run"
(cd "$REPO" && "$PYTHON" -m engine models import johnson_candy "$WORK/candy.pth") >/dev/null
start_engine

# The batch script opens a display on a small image and runs the procedure interactively; it
# blocks in the dialog until the capture below kills GIMP. The Johnson method with its installed
# model chosen, so that the open list hangs below the method: the picture shows the model list
# (installed, to download) and only Johnson's settings.
{
    printf 'import sys\nsys.path.insert(0, "%s")\n' "$REPO/tests/e2e"  # the e2e scripts' shared prelude
    cat <<'PY'
from batch_prelude import Gimp, procedure_config

image = Gimp.Image.new(320, 240, Gimp.ImageBaseType.RGB)
layer = Gimp.Layer.new(image, "Photo", 320, 240, Gimp.ImageType.RGB_IMAGE, 100.0, Gimp.LayerMode.NORMAL)
image.insert_layer(layer, None, 0)
layer.fill(Gimp.FillType.WHITE)
Gimp.Display.new(image)
proc, config = procedure_config(
    image, [layer], run_mode=Gimp.RunMode.INTERACTIVE, method="johnson", model="candy"
)
proc.run(config)
PY
} >"$WORK/open-dialog.py"

cat >"$WORK/capture.sh" <<'SH'
set -u
WORK=$1 OUT=$2
# Xvfb starts with the pointer in the middle of the screen, where the dialog opens: a widget
# under it shows its tooltip, which import grabs with the dialog. Park it in a corner first.
xdotool mousemove 0 0
GIMP3_DIRECTORY=$WORK/gimp3 gimp-3.0 -n --no-splash --batch-interpreter python-fu-eval -b - \
    <"$WORK/open-dialog.py" >"$WORK/gimp.log" 2>&1 &
GIMP=$!
id=""
for _ in $(seq 180); do
    id=$(xwininfo -root -tree | awk '/"Neural Style Transfer"/ {print $1; exit}')
    [ -n "$id" ] && break
    grep -q '^Traceback' "$WORK/gimp.log" && break  # the plug-in failed: no dialog will come
    sleep 1
done
status=1
if [ -n "$id" ]; then
    # Should the dialog cover the corner, move the pointer to the screen corner it leaves free.
    eval "$(xdotool getwindowgeometry --shell "$id")"
    if [ "$X" -le 0 ] && [ "$Y" -le 0 ]; then
        xdotool mousemove "$(xdotool getdisplaygeometry | cut -d' ' -f1)" 0
    fi
    # Wait until two frames a second apart are the same (the dialog has done its layout and
    # painted), then at most 30 s; PPM frames carry no timestamps, so cmp compares pixels.
    import -window "$id" "$WORK/a.ppm"
    for _ in $(seq 30); do
        sleep 1
        import -window "$id" "$WORK/b.ppm"
        cmp -s "$WORK/a.ppm" "$WORK/b.ppm" && break
        mv "$WORK/b.ppm" "$WORK/a.ppm"
    done
    # Open the model list: its mnemonic focuses it, Alt+Down pops it up. The list is a window
    # of its own over the dialog, so the screen is grabbed and cut to the dialog.
    eval "$(xdotool getwindowgeometry --shell "$id")"
    xdotool windowfocus --sync "$id"
    xdotool key --clearmodifiers alt+d
    sleep 0.5
    xdotool key --clearmodifiers alt+Down
    sleep 2
    import -window root -crop "${WIDTH}x${HEIGHT}+${X}+${Y}" +repage "$WORK/c.ppm"
    convert "$WORK/c.ppm" -define png:exclude-chunk=date,time "$OUT" && status=0
else
    echo "the dialog never appeared; GIMP said:" >&2
    tail -40 "$WORK/gimp.log" >&2
fi
kill "$GIMP" 2>/dev/null
sleep 1
kill -9 "$GIMP" 2>/dev/null
exit $status
SH

NST_CHROOT_BINDS="$WORK:$(dirname "$OUT")" "$CHROOT" run \
    xvfb-run -a -s "-screen 0 1280x1024x24" sh "$WORK/capture.sh" "$WORK" "$OUT"
echo "wrote $OUT"
