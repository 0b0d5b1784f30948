# Sourced by tools/screenshot-dialog.sh and tools/screenshot-preview.sh: what both set up before
# they drive real GIMP 3 in the chroot (tools/gimp3-chroot.sh).
#
# Defines REPO, PYTHON (NST_PYTHON or the project's .venv) and CHROOT, and
#   screenshot_setup NAME  builds the chroot if needed; makes WORK (/tmp/NAME.XXXXXX, removed with
#                          the engine stopped on exit) and the directory of OUT; installs the
#                          plug-in in WORK/gimp3 (PLUGIN), nst_common beside it as install.py lays
#                          it out, pointed at an engine on the Unix socket WORK/run/engine.sock
#   start_engine           serves the engine from REPO on that socket (its log in WORK/engine.log),
#                          in the caller's environment; waits for the socket, or fails

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${NST_PYTHON:-$REPO/.venv/bin/python}"
CHROOT="$REPO/tools/gimp3-chroot.sh"
ENGINE_PID=""

cleanup() {
    [[ -n $ENGINE_PID ]] && kill "$ENGINE_PID" 2>/dev/null && wait "$ENGINE_PID" 2>/dev/null
    rm -rf "$WORK"
}

screenshot_setup() {
    "$CHROOT" ensure
    WORK="$(mktemp -d "/tmp/$1.XXXXXX")"
    trap cleanup EXIT

    PLUGIN="$WORK/gimp3/plug-ins/neural_style"
    mkdir -p "$PLUGIN/nst_common" "$WORK/run" "$(dirname "$OUT")"
    for f in "$REPO"/plugin/neural_style/*.py; do cp -L "$f" "$PLUGIN/"; done
    cp -rL "$REPO/plugin/neural_style/locale" "$PLUGIN/"  # the translations, where GIMP looks
    # The plug-in imports nst_common (protocol, settings declaration) as a sibling package.
    for f in "$REPO"/nst_common/*.py; do cp -L "$f" "$PLUGIN/nst_common/"; done
    chmod +x "$PLUGIN/neural_style.py"
    printf '{"python": "/nonexistent/python", "endpoint": "unix:%s"}\n' "$WORK/run/engine.sock" \
        >"$PLUGIN/engine.json"
}

start_engine() {
    (cd "$REPO" && exec "$PYTHON" -m engine serve --listen "unix:$WORK/run/engine.sock") \
        >"$WORK/engine.log" 2>&1 &
    ENGINE_PID=$!
    for _ in $(seq 100); do [[ -S $WORK/run/engine.sock ]] && break; sleep 0.2; done
    [[ -S $WORK/run/engine.sock ]] || { cat "$WORK/engine.log" >&2; echo "engine did not start" >&2; exit 1; }
}
