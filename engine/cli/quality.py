"""`nst score` and `nst compare`: how close results come to the photo and the painting, and how
methods and presets compare on the user's own pictures (engine/score.py, engine/compare.py)."""

from __future__ import annotations

import argparse
import json
import sys

from engine.cli.stylize import check_size
from engine.errors import UserError

SIFID_HINT = "nst models pull inception_v3"
SCORE_HELP = (
    "style: 1 is the photo's own distance to the painting, 0 the painting's; content: 0 is the photo, "
    "1 as far as the photo blurred; colour: like style, on Lab colours; edges: 1 keeps every outline "
    "of the photo; SIFID: the published single-image distance to the painting, where its weights are "
    f"installed ({SIFID_HINT}). docs/score.md says what each misses."
)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "score", help="score results against their photo and painting",
        description=f"Score each RESULT against CONTENT and STYLE. {SCORE_HELP}",
    )  # fmt: skip
    p.add_argument("content", help="the photo the results were made from")
    p.add_argument("style", help="the painting whose style they should have")
    p.add_argument("results", nargs="+", metavar="RESULT", help="pictures to score")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(handler=_score)

    c = sub.add_parser(
        "compare", help="run several methods or presets and lay the results out on one sheet",
        description="Run each --run on CONTENT with STYLE as `nst stylize` would, time and score it, "
        f"and write a contact sheet (PNG) and a plot of style distance against time. {SCORE_HELP}",
    )  # fmt: skip
    c.add_argument("content", help="the photo")
    c.add_argument("style", help="the painting")
    c.add_argument("-o", "--output", required=True, help="the contact sheet (PNG); the plot goes beside it")
    c.add_argument(
        "--run", action="append", default=[], metavar="'METHOD KEY=VALUE ...'",
        help="one picture to make, e.g. 'gatys preset=draft' or 'johnson model=candy label=Candy'; "
        "repeat for several (default: every installed method, Gatys at draft and balanced)",
    )  # fmt: skip
    c.add_argument("--size", type=int, help="long side of the photo's work size (default: its own)")
    c.add_argument("--force", action="store_true", help="replace the outputs if they exist")
    c.add_argument("--json", action="store_true", help="print every run's time and score as JSON")
    c.set_defaults(handler=_compare)


def _score(args: argparse.Namespace) -> int:
    from engine import sifid
    from engine.imaging import images
    from engine.score import Scorer

    scorer = Scorer(images.load_image(args.content), images.load_image(args.style))
    scores = {path: scorer(images.load_image(path)).as_dict() for path in args.results}
    if not sifid.installed():
        print(f"nst: no SIFID without its weights ({SIFID_HINT})", file=sys.stderr)
    elif any(s["sifid"] is None for s in scores.values()):
        print(f"nst: no SIFID for pictures under {sifid.MIN_SIDE} px", file=sys.stderr)
    if args.json:
        print(json.dumps(scores, indent=2))
        return 0
    print(f"{'style':>6} {'content':>8} {'colour':>7} {'edges':>6} {'SIFID':>8}  result")
    for path, s in scores.items():
        anchor = "-" if s["sifid"] is None else f"{s['sifid']:.3g}"
        numbers = f"{s['style']:6.3f} {s['content']:8.3f} {s['colour']:7.3f} {s['edges']:6.3f}"
        print(f"{numbers} {anchor:>8}  {path}")
    return 0


def _compare(args: argparse.Namespace) -> int:
    from engine import compare
    from engine.imaging import images
    from engine.pipeline import capabilities

    check_size(args.size)
    sheet_path = images.check_output(args.output, [args.content, args.style], args.force)
    if sheet_path.suffix.lower() != ".png":
        raise UserError("bad-option", f"the contact sheet is a PNG; give -o a .png name, not {args.output!r}")
    plot_path = sheet_path.with_name(f"{sheet_path.stem}-plot.png")
    images.check_output(plot_path, [args.content, args.style], args.force)
    runs = [compare.parse_run(spec) for spec in args.run] or compare.default_runs(capabilities())
    if not runs:
        raise UserError("no-method", "no method can run: install a model (`nst models list`) or give --run")
    result = compare.run_all(
        args.content, args.style, runs, args.size, lambda line: print(line, file=sys.stderr)
    )
    images.save_image(sheet_path, compare.contact_sheet(result))
    wrote = [str(sheet_path)]
    plot = compare.plot(result.entries)
    if plot is not None:
        images.save_image(plot_path, plot)
        wrote.append(str(plot_path))
    else:
        install = f"{sys.executable} -m pip install matplotlib"
        print(f"nst: no plot without matplotlib ({install}); the sheet has every number", file=sys.stderr)
    if args.json:
        rows = [{"label": e.run.label, "method": e.run.method, "settings": e.run.settings,
                 "seconds": e.seconds, "score": e.score.as_dict()} for e in result.entries]  # fmt: skip
        print(json.dumps({"runs": rows, "wrote": wrote}, indent=2))
    else:
        for e in result.entries:
            numbers = "  ".join(compare.describe(e.score))
            print(f"{compare.seconds_text(e.seconds):>9}  {numbers}  {e.run.label}")
        print("wrote " + " and ".join(wrote))
    return 0
