"""`nst stylize` and `nst info`: run a job from files, and say what this engine can do."""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from typing import TYPE_CHECKING, Any

from engine.errors import UserError
from nst_common import endpoints, eta, settings

if TYPE_CHECKING:
    import numpy as np

    from nst_common.messages import RawImage, StylizeJob

# Every method setting is an option, built from its declaration (nst_common/settings.py); only
# those the user gives are sent, so each method validates exactly what it was asked to do.
_KINDS: dict[str, Any] = {"int": int, "float": float, "layers": settings.parse_layers}
ASPECT_TOLERANCE = 0.02  # a mask's or map's width/height may differ from the photo's by 2% (rounding)


def _add_setting_options(p: argparse.ArgumentParser) -> None:
    experts = p.add_argument_group("expert settings")
    for s in settings.SETTINGS:
        methods = "" if set(s.methods) == set(settings.METHOD_NAMES) else f" ({', '.join(s.methods)})"
        group = experts if s.expert else p
        extra: dict[str, Any] = {"type": _KINDS.get(s.kind, str)}
        if s.kind == "choice":
            extra["choices"] = s.choices
        if s.name == "preserve_colors":  # a bare --preserve-colors keeps the luminance
            extra.update(nargs="?", const="luminance")
        default = "" if s.default is None or s.kind == "layers" else f" (default {s.default})"
        flag = "--" + s.name.replace("_", "-")
        group.add_argument(flag, dest=s.name, help=f"{s.help}{default}{_range(s)}{methods}", **extra)


def _range(s: settings.Setting) -> str:
    """ " (0 to 1; gatys 0 to 10)": the values a number setting takes, and where a method differs."""
    if s.lo is None or s.hi is None:
        return ""

    def span(row: settings.Setting) -> str:
        return f"{row.lo:.0f} to {row.hi:.0f}" if s.kind == "int" else f"{row.lo:g} to {row.hi:g}"

    differ = [f"; {m} {span(row)}" for m in s.methods if span(row := s.for_method(m)) != span(s)]
    return f" ({span(s)}{''.join(differ)})"


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("stylize", help="stylise an image file", description="Stylise CONTENT and write OUT.")
    p.add_argument("content", help="the photo to stylise")
    p.add_argument(
        "-s", "--style", action="append", default=[], help="a style image (repeat to blend several)"
    )
    p.add_argument("--style-weights", help="blend weights for several styles, e.g. 0.7,0.3")
    p.add_argument("-o", "--output", required=True, help="where to write the result (PNG, JPEG, TIFF...)")
    p.add_argument("--force", action="store_true", help="replace OUT if it exists (even if it is an input)")
    p.add_argument(
        "--method", default="gatys", choices=settings.METHOD_NAMES, help="the method (default gatys)"
    )
    p.add_argument("--mask", help="a grey image: style only where it is white (soft), keep the rest")
    p.add_argument(
        "--region", action="append", default=[], metavar="MASK=STYLE",
        help="style the white of MASK with the image STYLE (repeat for several regions; the rest is kept)",
    )  # fmt: skip
    p.add_argument("--content-map", help="colour-coded label map of the content (semantic maps)")
    p.add_argument(
        "--style-map", action="append", default=[],
        help="colour-coded label map of each style, in order: a label takes the same label's style",
    )  # fmt: skip
    p.add_argument(
        "--dry-run", action="store_true",
        help="print how the job would run (device, tiles, estimated memory) and stop",
    )  # fmt: skip
    p.add_argument("--set", action="append", default=[], metavar="KEY=JSON", help="any other method setting")
    _add_setting_options(p)
    p.set_defaults(handler=_stylize)

    info = sub.add_parser("info", help="devices, backbones, methods and the data directory")
    info.add_argument("--json", action="store_true", help="machine-readable output")
    info.set_defaults(handler=_info)

    tune_cmd = sub.add_parser(
        "tune",
        help="measure this machine's fastest compute path for each method",
        description="Time each compute path (fp32, NNPACK's Winograd, bf16) on a small fixed workload "
        "for every method whose weights are installed, and remember the fastest for this machine and "
        "torch; jobs otherwise measure on first use. `nst info` shows the result.",
    )
    tune_cmd.set_defaults(handler=_tune)


def _settings(args: argparse.Namespace) -> dict[str, Any]:
    values = {s.name: getattr(args, s.name) for s in settings.SETTINGS}
    chosen: dict[str, Any] = {key: value for key, value in values.items() if value is not None}
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UserError("bad-option", f"--set expects KEY=VALUE, got {item!r}")
        chosen[key] = settings.parse_text(value)
    return chosen


def _style_weights(args: argparse.Namespace) -> list[float]:
    if not args.style_weights:
        return [1.0] * len(args.style)
    try:
        weights = [float(w) for w in args.style_weights.split(",")]
    except ValueError:
        raise UserError(
            "bad-option", f"--style-weights must be numbers like 0.7,0.3; got {args.style_weights!r}"
        ) from None
    if len(weights) != len(args.style) or any(w < 0 for w in weights) or sum(weights) <= 0:
        raise UserError(
            "bad-option", f"--style-weights needs one non-negative weight per style ({len(args.style)})"
        )
    return weights


def _add_masks(job: StylizeJob, args: argparse.Namespace, size: tuple[int, int]) -> None:
    """--mask, --region and the maps, as the plug-in would send them: masks and maps are resized to
    the (possibly --size'd) content; region styles are appended to the job's styles."""
    from engine.imaging import images
    from nst_common.messages import StyleRef

    def shaped(path: str, what: str) -> np.ndarray:
        """The picture at `path`, which must have the photo's shape: it is scaled, never cropped."""
        picture = images.split_alpha(images.load_image(path))[0]
        (h, w), (ch, cw) = picture.shape[:2], size
        if abs(math.log((w / h) / (cw / ch))) > ASPECT_TOLERANCE:
            raise UserError(
                "bad-input",
                f"{what} {path} is {w}x{h} px and the photo {cw}x{ch} px: give it the photo's shape "
                "(it is scaled to the photo, never cropped)",
            )
        return picture

    def grey(path: str, what: str) -> RawImage:
        picture = shaped(path, what).mean(axis=2, keepdims=True)
        return images.to_raw(images.resize(picture, size), "f32")

    if args.mask and args.region:
        raise UserError("bad-option", "use --mask or --region, not both")
    if args.mask:
        job.masks["mask"] = grey(args.mask, "--mask")
        job.params["regions"] = [{"mask": "mask"}]
    regions = []
    for i, item in enumerate(args.region):
        mask, sep, style = item.partition("=")
        if not sep or not mask or not style:
            raise UserError("bad-option", f"--region expects MASK=STYLE (two image files), got {item!r}")
        job.masks[f"r{i}"] = grey(mask, "the --region mask")
        regions.append({"mask": f"r{i}", "style": len(job.styles)})
        job.styles.append(StyleRef(path=style))
    if regions:
        job.params["regions"] = regions
    if args.style_map and len(args.style_map) != len(args.style):
        raise UserError("bad-option", f"give one --style-map per --style ({len(args.style)})")
    if args.content_map:
        colour = shaped(args.content_map, "--content-map")
        job.content_map = images.to_raw(_nearest(colour, size), "u8")
    for ref, path in zip(job.styles, args.style_map, strict=False):
        ref.map = images.to_raw(images.split_alpha(images.load_image(path))[0], "u8")


def _nearest(picture: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize a label map without inventing colours between labels."""
    import numpy as np

    rows = (np.arange(size[0]) * picture.shape[0] // size[0]).clip(0, picture.shape[0] - 1)
    cols = (np.arange(size[1]) * picture.shape[1] // size[1]).clip(0, picture.shape[1] - 1)
    return picture[rows][:, cols]


def check_size(size: int | None) -> None:
    """--size against the declared range, before any work."""
    try:
        settings.check_value(settings.BY_NAME["size"], size)
    except settings.SettingError as exc:
        raise UserError("bad-option", str(exc)) from None


def _stylize(args: argparse.Namespace) -> int:
    from engine.compute.cache import ModelCache
    from engine.errors import CancelToken
    from engine.imaging import images
    from engine.pipeline import plan_job, run_job
    from nst_common.messages import StyleRef, StylizeJob

    inputs = [args.content, *args.style, args.mask, args.content_map, *args.style_map]
    inputs += [part for item in args.region for part in item.split("=", 1)]
    output = images.check_output(args.output, [i for i in inputs if i], args.force)
    if args.style and not settings.method(args.method).needs_style:
        raise UserError(
            "bad-option",
            f"--method {args.method} takes no style image (-s): its style is in the model it runs "
            "(--model; nst models list shows them)",
        )
    check_size(args.size)
    content = images.load_image(args.content)
    if args.size is not None:
        content = images.at_long_side(content, args.size)
    styles = [
        StyleRef(path=str(path), weight=w) for path, w in zip(args.style, _style_weights(args), strict=True)
    ]
    job = StylizeJob(args.method, _settings(args), images.to_raw(content, "f32"), styles)
    _add_masks(job, args, content.shape[:2])
    if args.dry_run:
        print(f"plan: {plan_job(job).describe()}")
        return 0
    bar = _ProgressBar()
    started = time.monotonic()
    result = run_job(job, bar, CancelToken(), ModelCache())
    bar.close()
    images.save_image(output, images.from_raw(result))
    print(f"wrote {output} ({result.width}x{result.height}) in {time.monotonic() - started:.1f} s")
    return 0


class _ProgressBar:
    """A one-line progress bar on a terminal; silent when stderr is not one."""

    def __init__(self) -> None:
        self.live = sys.stderr.isatty()

    def __call__(self, progress: Any) -> None:
        if self.live:
            filled = int(progress.fraction * 30)
            bar = f"[{'#' * filled}{'.' * (30 - filled)}] {progress.fraction:4.0%}"
            left = "" if progress.eta_s is None else f" {eta.describe(progress.eta_s)}:"
            line = f"\r{bar}{left} {progress.message}"
            sys.stderr.write(line[:120].ljust(120))
            sys.stderr.flush()

    def close(self) -> None:
        if self.live:
            sys.stderr.write("\n")


def _info(args: argparse.Namespace) -> int:
    from engine import __version__
    from engine.backbones import find_backbones
    from engine.pipeline import capabilities

    report = {
        "version": __version__,
        "data_dir": str(endpoints.data_dir()),
        "backbones": find_backbones(),
        **{k: v for k, v in capabilities().items() if k != "backbones"},
    }
    report["compute"] = _compute_report()
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print(f"nst {report['version']}")
    print(f"data directory: {report['data_dir']}")
    print(f"devices: {', '.join(report['devices'])}")
    print("backbones:")
    for name, path in report["backbones"].items():
        print(f"  {name:18} {path or 'not installed'}")
    print(f"methods: {', '.join(report['methods'])}")
    _print_compute(report["compute"])
    return 0


def _compute_report() -> dict[str, Any]:
    from engine.compute import tune

    return {
        "machine": tune.machine(),
        "override": os.environ.get(tune.PRECISION_ENV) or None,
        "measured": tune.summary(),
    }


def _print_compute(compute: dict[str, Any]) -> None:
    from engine.compute import tune

    print(f"compute: {tune.describe(compute['machine'])}")
    if compute["override"]:
        print(f"  NST_PRECISION={compute['override']} overrides the measured choice")
    if not compute["measured"]:
        print("  nothing measured yet: the first job of each method measures, or run `nst tune`")
    for workload, record in compute["measured"].items():
        for side, found in record["sides"].items():
            times = ", ".join(f"{name} {seconds:.3f} s" for name, seconds in sorted(found["seconds"].items()))
            print(f"  {workload} at {side} px: {found['chosen']:14} ({times})")


def _tune(args: argparse.Namespace) -> int:
    """Measure by running each method's smallest job with precision auto, from nothing remembered."""
    import numpy as np

    from engine.compute import tune
    from engine.compute.cache import ModelCache
    from engine.errors import CancelToken
    from engine.pipeline import run_job
    from nst_common.messages import RawImage, StyleRef, StylizeJob

    if os.environ.get(tune.PRECISION_ENV):
        print(f"note: NST_PRECISION={os.environ[tune.PRECISION_ENV]} is set and overrides what is measured")
    tune.forget()
    pixels = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8).tobytes()
    picture = RawImage(64, 64, 3, "u8", pixels)
    small = {"gatys": {"size": 64, "iterations": 1}}
    cache = ModelCache()
    for method in settings.METHOD_NAMES:
        styles = [StyleRef(image=picture)] if settings.method(method).needs_style else []
        job = StylizeJob(method, {"precision": "auto", **small.get(method, {})}, picture, styles)
        print(f"{method}: measuring...", flush=True)
        try:
            run_job(job, lambda p: None, CancelToken(), cache)
        except UserError as exc:
            print(f"{method}: skipped: {exc.message}")
    _print_compute(_compute_report())
    return 0
