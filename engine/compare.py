"""`nst compare`: several methods, presets or settings on one photo and one painting, each run as
`nst stylize` runs it, timed and scored (engine/score.py), on one contact sheet, with a plot of the
style distance against time. This is how a user picks a method and a preset by what they get for the
time they wait.
"""

from __future__ import annotations

import io
import shlex
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from engine import params
from engine.compute.cache import ModelCache
from engine.errors import CancelToken, UserError
from engine.imaging import images
from engine.score import Score, Scorer
from nst_common import settings
from nst_common.messages import StyleRef, StylizeJob

THUMB = 320  # long side of each picture on the sheet
LABEL_LINES = 3  # the label and the score's first line under each picture, and a line of space
LINE_HEIGHT = 17
MARGIN = 8
COLUMNS = 4
LABEL_KEY = "label"  # in a run's description: the sheet's title for it, not a setting
DEFAULT_PRESETS = ("draft", "balanced")  # a method with quality presets runs at these by default
WARM_UP_SIDE = 64


@dataclass(frozen=True)
class Run:
    """One picture to make: a method, the settings the user gave, and its title on the sheet."""

    method: str
    settings: dict[str, Any]
    label: str


@dataclass(frozen=True)
class Entry:
    run: Run
    seconds: float
    score: Score
    image: np.ndarray


@dataclass(frozen=True)
class Comparison:
    """The photo and the painting (the score's anchors), the scorer, and every run's result."""

    photo: np.ndarray
    painting: np.ndarray
    scorer: Scorer
    entries: list[Entry]


def parse_run(spec: str) -> Run:
    """`METHOD KEY=VALUE ...`, values as `nst stylize --set` takes them; `label=TEXT` titles it."""
    try:
        words = shlex.split(spec)
    except ValueError as exc:
        raise UserError("bad-option", f"--run {spec!r}: {exc}") from None
    if not words or words[0] not in settings.METHOD_NAMES:
        raise UserError(
            "bad-option",
            f"--run {spec!r} must start with a method: {', '.join(settings.METHOD_NAMES)}",
        )
    chosen: dict[str, Any] = {}
    for word in words[1:]:
        key, sep, value = word.partition("=")
        if not sep or not key:
            raise UserError("bad-option", f"--run {spec!r}: expected KEY=VALUE, got {word!r}")
        chosen[key] = settings.parse_text(value)
    label = str(chosen.pop(LABEL_KEY, "")) or " ".join(words)
    params.parse(words[0], chosen, scope=None)  # a mistake is reported before anything runs
    return Run(words[0], chosen, label)


def default_runs(capabilities: dict[str, Any]) -> list[Run]:
    """Every method that can run with the weights installed: one with quality presets at the quick
    ones, one with models at its first installed model."""
    runs: list[Run] = []
    for name, info in capabilities["methods"].items():
        if not info["ready"]:
            continue
        if name in settings.BY_NAME["preset"].methods:
            runs += [Run(name, {"preset": p}, f"{name} preset={p}") for p in DEFAULT_PRESETS]
        elif "models" in info:
            model = next(m["id"] for m in info["models"] if m["installed"])
            runs.append(Run(name, {"model": model}, f"{name} model={model}"))
        else:
            runs.append(Run(name, {}, name))
    return runs


def run_all(
    content_path: str, style_path: str, runs: list[Run], size: int | None, report: Callable[[str], None]
) -> Comparison:
    """Each run through the pipeline, timed as a running engine serves it: each method first runs
    once at a small size, untimed, which loads its models and measures its compute path."""
    from engine.pipeline import run_job

    content = images.split_alpha(images.load_image(content_path))[0]
    if size is not None:
        content = images.at_long_side(content, size)
    painting = images.split_alpha(images.load_image(style_path))[0]
    scorer = Scorer(content, painting)
    cache = ModelCache()

    def run_one(run: Run, picture: np.ndarray, extra: dict[str, Any]) -> np.ndarray:
        job = StylizeJob(
            run.method, {**run.settings, **extra}, images.to_raw(picture, "f32"), [StyleRef(path=style_path)]
        )
        return images.from_raw(run_job(job, lambda p: None, CancelToken(), cache))

    warmed: set[str] = set()
    entries = []
    for number, run in enumerate(runs, start=1):
        report(f"[{number}/{len(runs)}] {run.label}")
        if run.method not in warmed:
            small = images.at_long_side(content, WARM_UP_SIDE)
            taken = {s.name for s in settings.for_method(run.method)}
            run_one(run, small, {"size": None} | ({"iterations": 1} if "iterations" in taken else {}))
            warmed.add(run.method)
        start = time.perf_counter()
        result = run_one(run, content, {})
        seconds = time.perf_counter() - start
        entries.append(Entry(run, seconds, scorer(result), result))
    return Comparison(content, painting, scorer, entries)


def describe(s: Score) -> tuple[str, ...]:
    """The score in lines of text: the four numbers, then SIFID where it was computed."""
    numbers = f"style {s.style:.2f}  content {s.content:.2f}  colour {s.colour:.2f}  edges {s.edges:.2f}"
    return (numbers,) if s.sifid is None else (numbers, f"SIFID {s.sifid:.3g}")


def seconds_text(seconds: float) -> str:
    """A run's time, with two figures below a second: the fast methods' 0.04 s is not 0.0 s."""
    return f"{seconds:.2g} s" if seconds < 1 else f"{seconds:.1f} s"


def contact_sheet(c: Comparison) -> np.ndarray:
    """The photo and the painting, then each result with its label, time and score."""
    anchors = (("photo", c.photo), ("painting", c.painting))
    cells = [(name, "", describe(c.scorer(picture)), picture) for name, picture in anchors]
    cells += [(e.run.label, seconds_text(e.seconds), describe(e.score), e.image) for e in c.entries]
    columns = min(COLUMNS, len(cells))
    rows = -(-len(cells) // columns)
    lines = LABEL_LINES + max(len(numbers) for _, _, numbers, _ in cells) - 1
    cell_w, cell_h = THUMB + 2 * MARGIN, THUMB + lines * LINE_HEIGHT + 2 * MARGIN
    sheet = Image.new("RGB", (columns * cell_w, rows * cell_h), "white")
    draw = ImageDraw.Draw(sheet)
    font = ImageFont.load_default(size=13)
    for index, (title, seconds, numbers, picture) in enumerate(cells):
        x, y = (index % columns) * cell_w + MARGIN, (index // columns) * cell_h + MARGIN
        thumb = images.at_long_side(picture, THUMB)
        sheet.paste(Image.fromarray((thumb.clip(0, 1) * 255 + 0.5).astype(np.uint8)), (x, y))
        for line, text in enumerate((f"{title}  {seconds}".strip(), *numbers)):
            at = (x, y + THUMB + 4 + line * LINE_HEIGHT)
            draw.text(at, _fit(draw, text, font), fill="black", font=font)
    return np.asarray(sheet, dtype=np.float32) / 255


def _fit(draw: ImageDraw.ImageDraw, text: str, font: ImageFont.FreeTypeFont | ImageFont.ImageFont) -> str:
    while text and draw.textlength(text, font=font) > THUMB:
        text = text[:-2] + "…"
    return text


def plot(entries: list[Entry]) -> np.ndarray | None:
    """Style distance against seconds, one labelled point per run; None where matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    figure, axes = plt.subplots(figsize=(7, 4.5), dpi=100)
    for entry in entries:
        axes.scatter(entry.seconds, entry.score.style)
        axes.annotate(entry.run.label, (entry.seconds, entry.score.style), fontsize=8, xytext=(4, 4),
                      textcoords="offset points")  # fmt: skip
    axes.set_xscale("log")
    axes.set_xlabel("seconds (log scale)")
    axes.set_ylabel("style distance (photo 1, painting 0)")
    axes.axhline(1.0, color="grey", linewidth=0.8, linestyle="--")
    axes.grid(True, alpha=0.3)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    plt.close(figure)
    return np.asarray(Image.open(buffer).convert("RGB"), dtype=np.float32) / 255
