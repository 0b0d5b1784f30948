"""`nst train johnson|adain`: train a fast style network on the user's paintings and photos
(engine/training/). Each method's options are derived from its settings class
(engine/training/settings.py)."""

from __future__ import annotations

import argparse
import dataclasses
import signal
import sys
import time
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING

from nst_common import eta

if TYPE_CHECKING:
    from engine.training.loop import Job, Progress

PRINT_EVERY_S = 10.0  # a progress line this often when stderr is not a terminal


def register(sub: argparse._SubParsersAction) -> None:
    from engine.training.settings import AdaINSettings, JohnsonSettings

    train = sub.add_parser("train", help="train your own fast style network")
    kinds = train.add_subparsers(dest="train_command", required=True)
    p = kinds.add_parser(
        "johnson",
        help="a Johnson network for your paintings, from a folder of your photos",
        description="Train a Johnson et al. network on STYLE and the photos under --content-dir "
        "(searched recursively; unreadable files are skipped). Ctrl-C stops after a checkpoint; "
        "--resume continues exactly. The model is installed as `--model NAME` of the johnson method.",
    )
    p.add_argument(
        "--style", type=Path, action="append", default=[], dest="styles", metavar="PAINTING",
        help="the painting; give several for one network of all, blended by nst stylize --mix",
    )  # fmt: skip
    _common(p, JohnsonSettings, "johnson")
    p = kinds.add_parser(
        "adain",
        help="an AdaIN decoder for any painting, from folders of photos and paintings",
        description="Train AdaIN's decoder for the engine's own encoder (--backbone, the offline vgg16-hed "
        "by default) on the photos under --content-dir and the paintings under --style-dir (both searched "
        "recursively). The decoder then stylises with any painting in one pass: `nst stylize PHOTO "
        "--style PAINTING --method adain --model NAME`. A good decoder needs thousands of each (the "
        "published one: MS-COCO and WikiArt, about 80,000 each).",
    )
    p.add_argument("--style-dir", type=Path, help="a folder of paintings (WikiArt works too)")
    _common(p, AdaINSettings, "adain")


def _common(p: argparse.ArgumentParser, settings: type, method: str) -> None:
    """The options every `nst train` method has, and one per setting of its class."""
    p.add_argument("-o", "--name", required=True, help="the model's name (letters, digits, - and _)")
    p.add_argument("--content-dir", type=Path, help="a folder of photos (COCO works too)")
    p.add_argument("--validation", type=Path, help="a photo to show progress on (default: one held out)")
    p.add_argument("--resume", action="store_true", help="continue the run called NAME from its checkpoint")
    p.add_argument(
        "--restart",
        action="store_true",
        help="start again, discarding NAME's checkpoint and validation pictures",
    )
    p.add_argument("--force", action="store_true", help="replace a trained model called NAME")
    p.add_argument(
        "--in-engine",
        action="store_true",
        help="train in the running engine (nst serve, or the one GIMP started): it goes on after this "
        "command and after GIMP closes, shows in nst jobs, and resumes when the engine starts again",
    )
    for f in dataclasses.fields(settings):
        p.add_argument(
            "--" + f.name.replace("_", "-"),
            type=type(f.default),
            default=argparse.SUPPRESS,  # only what is given reaches the run (a resume keeps the rest)
            help=f"{f.metadata['help']} (default {f.default})",
        )
    p.set_defaults(handler=_train, method=method)


class _StopOnSignal:
    """The first Ctrl-C (or SIGTERM) asks the run to stop after its step and checkpoint; a second
    Ctrl-C interrupts at once."""

    def __init__(self) -> None:
        self.asked = False
        self._before = {s: signal.signal(s, self._ask) for s in (signal.SIGINT, signal.SIGTERM)}

    def _ask(self, signum: int, frame: FrameType | None) -> None:
        if self.asked and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.asked = True
        print("\nstopping after this step (Ctrl-C again: stop at once, no checkpoint)", file=sys.stderr)

    def __call__(self) -> bool:
        return self.asked

    def close(self) -> None:
        for s, handler in self._before.items():
            signal.signal(s, handler)


class _ProgressLine:
    """Step, loss terms, speed and time left: redrawn on a terminal, a line every few seconds else."""

    def __init__(self) -> None:
        self.live = sys.stderr.isatty()
        self.last = 0.0

    def __call__(self, p: Progress) -> None:
        now = time.monotonic()
        last_step = p.step == p.steps
        if not self.live and now - self.last < PRINT_EVERY_S and not last_step and p.step != 1:
            return
        self.last = now
        terms = "  ".join(f"{k} {v:.4g}" for k, v in p.terms.items())
        left = "" if p.eta_s is None else f"  {eta.describe(p.eta_s)}"
        line = f"step {p.step}/{p.steps}  {terms}  {p.photos_per_s:.2f} photos/s{left}"
        if self.live:
            sys.stderr.write("\r" + line[:120].ljust(120) + ("\n" if last_step else ""))
        else:
            sys.stderr.write(line + "\n")
        sys.stderr.flush()


def _train(args: argparse.Namespace) -> int:
    from engine.training import adain, johnson, loop
    from engine.training.settings import check_name

    method = {"johnson": johnson, "adain": adain}[args.method]
    names = {f.name for f in dataclasses.fields(method.SETTINGS)}
    job = loop.Job(
        method=args.method,
        name=check_name(args.name),
        styles=getattr(args, "styles", []),
        style_dir=getattr(args, "style_dir", None),
        content_dir=args.content_dir,
        validation=args.validation,
        overrides={k: v for k, v in vars(args).items() if k in names},
        resume=args.resume,
        restart=args.restart,
        replace=args.force,
    )
    if args.in_engine:
        return _in_engine(job)
    stop = _StopOnSignal()
    try:
        installed = loop.train(method, job, _ProgressLine(), stop)
    except loop.Stopped as stopped:
        print(
            f"nst: stopped at step {stopped.step}; checkpoint {stopped.checkpoint}\n"
            f"continue with: nst train {args.method} -o {args.name} --resume",
            file=sys.stderr,
        )
        return 130
    finally:
        stop.close()
    if loop.is_main_process():
        print(f"trained {args.method} model {args.name!r}: {installed}")
        print(f"validation pictures: {job.folder / 'validation'}")
        style = "" if args.method == "johnson" else " --style PAINTING"
        print(f"use it: nst stylize PHOTO{style} --method {args.method} --model {args.name} -o result.png")
    return 0


def _in_engine(job: Job) -> int:
    """Hand the run to the running engine; it checks the request before it queues it."""
    from engine.cli.serve import ask_engine
    from engine.service import training

    absolute = dataclasses.replace(
        job,
        styles=[p.resolve() for p in job.styles],
        **{
            k: getattr(job, k).resolve()
            for k in ("style_dir", "content_dir", "validation")
            if getattr(job, k)
        },
    )
    reply = ask_engine({"type": "train", **training.request_of(absolute)})
    number = reply.get("job")
    print(
        f"training {job.weight_id} in the engine as job {number}; `nst jobs` shows it, "
        f"`nst jobs --cancel {number}` stops it (the checkpoint stays, for --resume)"
    )
    return 0
