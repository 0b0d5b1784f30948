#!/usr/bin/env bash
# A Debian trixie chroot with real GIMP 3, for the plug-in's end-to-end tests and screenshots.
#
#   tools/gimp3-chroot.sh ensure          build the chroot if missing (idempotent, locked)
#   tools/gimp3-chroot.sh run CMD...      run CMD inside it (proc/dev/binds mounted, always unmounted)
#   tools/gimp3-chroot.sh shell           interactive shell inside it
#   tools/gimp3-chroot.sh path            print the chroot directory
#
# Env: NST_GIMP3_CHROOT (default /var/cache/neural-style/gimp3-trixie),
#      NST_GIMP3_MIRROR (default http://deb.debian.org/debian),
#      NST_CHROOT_BINDS (colon-separated host dirs bind-mounted at the same path inside;
#      the repository root is always bound).
# Needs root. The chroot shares the host's network namespace, so an engine started outside
# is reachable on loopback or through a Unix socket in a bound directory.
set -euo pipefail

ROOT="${NST_GIMP3_CHROOT:-/var/cache/neural-style/gimp3-trixie}"
MIRROR="${NST_GIMP3_MIRROR:-http://deb.debian.org/debian}"
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PACKAGES=(gimp python3-gi gir1.2-gimp-3.0 gir1.2-gegl-0.4 xvfb xauth imagemagick x11-utils xdotool)
STAMP="$ROOT/.neural-style-ready"

die() { echo "gimp3-chroot: $*" >&2; exit 1; }

need_root() { [[ $(id -u) == 0 ]] || die "must run as root (chroot, mount)"; }

ensure() {
    need_root
    [[ -f $STAMP ]] && return 0
    if ! command -v debootstrap >/dev/null; then
        { apt-get install -y -qq debootstrap || { apt-get update -qq && apt-get install -y -qq debootstrap; }; } \
            >/dev/null || die "debootstrap is missing and could not be installed"
    fi
    mkdir -p "$(dirname "$ROOT")"
    # One builder at a time; a second caller waits and then finds the stamp.
    exec 9>"$ROOT.lock"
    flock 9
    [[ -f $STAMP ]] && return 0
    local tmp="$ROOT.building"
    rm -rf "$tmp"
    echo "gimp3-chroot: debootstrap trixie into $tmp" >&2
    debootstrap --variant=minbase trixie "$tmp" "$MIRROR" >"$ROOT.log" 2>&1 \
        || die "debootstrap failed, see $ROOT.log"
    echo "gimp3-chroot: installing ${PACKAGES[*]}" >&2
    in_chroot "$tmp" sh -c "apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
        apt-get install -y -qq --no-install-recommends ${PACKAGES[*]} && apt-get clean" \
        >>"$ROOT.log" 2>&1 || die "package install failed, see $ROOT.log"
    touch "$tmp/.neural-style-ready"
    rm -rf "$ROOT"
    mv "$tmp" "$ROOT"
    echo "gimp3-chroot: ready at $ROOT" >&2
}

# in_chroot DIR CMD...: run CMD in DIR inside a private mount namespace, so the mounts
# never leak to the host and concurrent runs do not step on each other; the trap also
# unmounts explicitly in reverse order.
in_chroot() {
    local dir=$1
    shift
    local binds="$REPO${NST_CHROOT_BINDS:+:$NST_CHROOT_BINDS}"
    unshare --mount --propagation private -- bash -euo pipefail -c "$INNER" inner "$dir" "$binds" "$@"
}

# The part of in_chroot that runs inside the new mount namespace (passed with -c so the
# command's stdin stays the caller's).
INNER='
dir=$1 binds=$2
shift 2
mounted=()
cleanup() {
    local i
    for ((i = ${#mounted[@]} - 1; i >= 0; i--)); do umount -l "${mounted[i]}" 2>/dev/null || true; done
}
trap cleanup EXIT
mnt() { mount "$@" && mounted+=("${!#}"); }
mnt -t proc proc "$dir/proc"
mnt --rbind /dev "$dir/dev"
mnt -t tmpfs tmpfs "$dir/tmp"
mkdir -p "$dir/dev/shm"
cp /etc/resolv.conf "$dir/etc/resolv.conf" 2>/dev/null || true
IFS=: read -ra paths <<<"$binds"
for p in "${paths[@]}"; do
    [[ -n $p && -d $p ]] || continue
    mkdir -p "$dir$p"
    mnt --bind "$p" "$dir$p"
done
env -i HOME=/root PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    LANG=C.UTF-8 TERM="${TERM:-dumb}" chroot "$dir" "$@"
'

cmd=${1:-}
shift || true
case $cmd in
    ensure) ensure ;;
    run)
        need_root
        [[ -f $STAMP ]] || die "no chroot at $ROOT; run '$0 ensure' first"
        [[ $# -gt 0 ]] || die "usage: $0 run CMD..."
        in_chroot "$ROOT" "$@"
        ;;
    shell)
        need_root
        [[ -f $STAMP ]] || die "no chroot at $ROOT; run '$0 ensure' first"
        in_chroot "$ROOT" /bin/bash -i
        ;;
    path) echo "$ROOT" ;;
    *) die "usage: $0 ensure | run CMD... | shell | path" ;;
esac
