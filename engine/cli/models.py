"""`nst models list | pull ID... | import ID FILE | verify [ID...] | remove [--unpin] ID`: printing only."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from engine import weights


def register(subparsers: argparse._SubParsersAction) -> None:
    models = subparsers.add_parser("models", help="list, download, import, verify or remove weights")
    sub = models.add_subparsers(dest="models_command", required=True)

    p = sub.add_parser(
        "list",
        help="every known weight file, whether it is installed, and whether it is verified "
        "(matches a published sha256) or pinned (matches the sha256 pinned at first use)",
    )
    p.set_defaults(handler=_list)

    p = sub.add_parser("pull", help="download and check weights (resumes partial downloads)")
    p.add_argument("ids", nargs="+", metavar="ID", help='weight ids from `nst models list`, or "all"')
    p.set_defaults(handler=_pull)

    p = sub.add_parser(
        "import",
        help="install a file you already have, after checking that it loads as the model's "
        "architecture and matches the published sha256 (or the pin; a file with neither is pinned)",
    )
    p.add_argument("id", metavar="ID")
    p.add_argument("file", type=Path, metavar="FILE", help="the weight file, or the zip bundle holding it")
    p.set_defaults(handler=_import)

    p = sub.add_parser(
        "verify",
        help="rehash installed files against their published or pinned sha256, and check that they "
        "load as their architecture",
    )
    p.add_argument("ids", nargs="*", metavar="ID")
    p.set_defaults(handler=_verify)

    p = sub.add_parser("remove", help="delete an installed file (its pin is kept unless --unpin)")
    p.add_argument("id", metavar="ID")
    p.add_argument(
        "--unpin",
        action="store_true",
        help="also forget the sha256 pinned at the first download or import, so that the next "
        "download or import is pinned afresh (when the first file was the wrong one)",
    )
    p.set_defaults(handler=_remove)


def _mib(size: int | None) -> str:
    return "?" if size is None else f"{size / (1 << 20):.1f} MiB"


def _checksum_label(status: weights.ModelStatus, pins: dict) -> str:
    if status.checksum == "published":
        return "published sha256"
    pin = pins.get(status.id)
    if status.checksum == "pinned when trained":
        return f"pinned when trained {pin['pinned_at'][:10]}" if pin else "unpinned"
    if status.checksum == "pinned at first download":
        return f"pinned {pin['pinned_at'][:10]}" if pin else "none upstream; pinned at first download"
    return f"published prefix; pinned {pin['pinned_at'][:10]}" if pin else status.checksum


def _how_checked(entry: weights.Entry, pins_before: dict) -> str:
    """What the check of an installed file rests on, for `pull` and `import` output."""
    if weights.checked_by(entry) == "verified":
        return "verified (matches the published sha256)"
    pin = weights.pins()[entry.id]
    prefix = f"; starts with the published {entry.sha256_prefix}" if entry.sha256_prefix else ""
    if entry.id not in pins_before:
        return f"pinned (first use{prefix}): sha256 {pin['sha256']}"
    return f"pinned (matches the sha256 pinned {pin['pinned_at'][:10]}{prefix})"


def _print_table(rows: list[weights.ModelStatus]) -> None:
    pins = weights.pins()
    table = [("ID", "METHOD", "STATE", "SIZE", "CHECKSUM", "LICENSE")]
    table += [(r.id, r.method, r.state, _mib(r.size), _checksum_label(r, pins), r.license) for r in rows]
    widths = [max(len(row[i]) for row in table) for i in range(5)]
    for row in table:
        print("  ".join(cell.ljust(w) for cell, w in zip(row[:5], widths, strict=True)) + "  " + row[5])
    for r in rows:
        if r.message:
            print(f"{r.id}: {r.message}")


def _list(args: argparse.Namespace) -> int:
    _print_table(weights.list_models())
    return 0


class _Progress:
    """A progress line on stderr, redrawn in place on a terminal and every 10% otherwise."""

    def __init__(self) -> None:
        self.tty = sys.stderr.isatty()
        self.last: tuple[str, int] = ("", -1)
        self.last_time = 0.0

    def __call__(self, label: str, done: int, total: int | None) -> None:
        percent = int(done * 100 / total) if total else -1
        now = time.monotonic()
        if self.tty:
            if now - self.last_time < 0.2 and percent != 100:
                return
            self.last_time = now
            shown = f"{percent}% of {_mib(total)}" if total else _mib(done)
            print(f"\r{label}: {shown}   ", end="", file=sys.stderr, flush=True)
            return
        step = percent // 10 if total else done >> 26  # every 10%, or every 64 MiB
        if (label, step) != self.last:
            self.last = (label, step)
            shown = f"{percent}%" if total else _mib(done)
            print(f"{label}: {shown}", file=sys.stderr, flush=True)

    def finish(self) -> None:
        if self.tty and self.last_time:
            print(file=sys.stderr)


def _pull(args: argparse.Namespace) -> int:
    manifest = weights.load_manifest()
    ids = weights.expand_ids(args.ids, manifest)
    before = weights.pins()
    progress = _Progress()
    try:
        installed = weights.pull(ids, progress=progress, manifest=manifest)
    finally:
        progress.finish()
    for weight_id, path in zip(ids, installed, strict=True):
        print(f"ok {weight_id}: {_how_checked(manifest.entry(weight_id), before)}; {path}")
    return 0


def _import(args: argparse.Namespace) -> int:
    manifest = weights.load_manifest()
    before = weights.pins()
    path = weights.import_file(args.id, args.file, manifest=manifest)
    print(f"ok {args.id}: {_how_checked(manifest.entry(args.id), before)}; installed as {path}")
    return 0


def _verify(args: argparse.Namespace) -> int:
    rows = weights.verify(args.ids or None)
    _print_table(rows)
    # Files named on the command line must be there; otherwise only what is installed is judged.
    bad_states = ("corrupt", "unpinned", "missing") if args.ids else ("corrupt", "unpinned")
    return 1 if any(r.state in bad_states for r in rows) else 0


def _remove(args: argparse.Namespace) -> int:
    pinned = args.unpin and args.id in weights.pins()
    removed = weights.remove(args.id, unpin=args.unpin)
    if pinned:
        print(f"removed {args.id} and its pin: the next import or pull of it is pinned anew")
    else:
        print(f"removed {args.id}" if removed else f"{args.id} was not installed")
    return 0
