"""Gatys: the engine's optimiser against the classic tutorial loop (bench/reference_gatys.py), in one
process ("ours" in the output is the engine).

Three figures:
- step: seconds per loss+gradient evaluation at 512 px, both sides on the same random-weight VGG19
  (tests/helpers.py random_backbone, copied conv by conv into the reference's torchvision stack).
  A "step" is one evaluation, not one L-BFGS iteration: the engine does a strong-Wolfe line search
  (one evaluation per iteration once under way, more when a trial overshoots), the reference's
  default L-BFGS exactly one. The engine is timed through engine.methods.gatys.objective.Objective,
  the code every optimiser step runs. Interleaved, medians.
- time to reference loss at 256 px on the real offline backbone vgg16-hed (random weights give an
  odd landscape): the reference runs 200 L-BFGS iterations (final objective L_ref), before the
  engine and again after it (T_ref: the mean of the two, against drift in the machine's speed);
  then the real GatysMethod runs coarse to fine (Sizes.stages: 60 iterations at half the size, from the
  content as the reference starts; then at full size 40 on the style layers relu1_1 and relu2_1
  alone, which the upsampled image misses most, and 80 on those and relu3_1, at about a quarter and
  a half of an evaluation's cost; each result starts the next run), then on the whole objective
  until its full-size image reaches L_ref (T_ours, all the runs before included). Those three
  layers make up 83% of L_ref; the deeper terms keep about what the half-size run gave them. A run
  at a quarter of the size first saves time but restyles the picture so thoroughly that the
  content's shapes are lost (README). Both images' per-term scores are printed. The engine
  minimises the same function: its relative per-layer losses are weighted by the reference
  targets' energy, which turns them into the reference's absolute MSE terms (style weight 1e6,
  content 1, no TV), divided by one constant. So its own reported loss, times that constant, says
  when to stop (0.1% below L_ref), and after the clock has stopped the reference objective scores
  the image it stopped on: that score decides "reached". (An earlier version of this bench had the
  reference's model score every iteration while the engine ran: its time was subtracted, its effect
  on caches and the heap was not.)
- wall time of preset `balanced` at 1024 px with the default backbone through engine.pipeline.run_job,
  with evaluations and seconds per scale.

    .venv/bin/python bench/gatys.py                   # all three: about 12 min on 2 cores
    .venv/bin/python bench/gatys.py --parts step ttr  # skip the 1024 px run
    .venv/bin/python bench/gatys.py --quick           # tiny sizes, a smoke test of the code paths
The last line printed is one JSON object with the ratios and raw seconds.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT / "tests"))  # helpers.random_backbone: seeded weights, no files

import reference_gatys as ref  # noqa: E402
from helpers import random_backbone  # noqa: E402

from engine.backbones import DEFAULT_BACKBONE, hed, load_backbone, vgg  # noqa: E402
from engine.backbones.base import Backbone  # noqa: E402
from engine.compute import allocator, tune  # noqa: E402
from engine.compute.cache import ModelCache  # noqa: E402
from engine.errors import CancelToken  # noqa: E402
from engine.imaging import images  # noqa: E402
from engine.methods import gatys  # noqa: E402
from engine.methods.base import PreparedJob, Progress, RunContext, Style  # noqa: E402
from engine.methods.gatys import optimiser  # noqa: E402
from engine.methods.gatys.objective import Objective  # noqa: E402
from engine.pipeline import run_job  # noqa: E402
from nst_common.messages import StyleRef, StylizeJob  # noqa: E402

IMAGES = ROOT.parent / "shared" / "images"
CONTENT = "content/golden_gate.jpg"
STYLE = "style/woman_with_hat_matisse.jpg"
PARTS = ("step", "ttr", "balanced")
SHALLOW = ("relu1_1", "relu2_1")  # the style layers at full and half resolution
MIDDLE = (*SHALLOW, "relu3_1")
STOP_MARGIN = 1e-3  # the engine stops 0.1% below the reference's loss: float sums differ between the two


@dataclass(frozen=True)
class Sizes:
    """How big each part runs: the published figures' sizes, or tiny ones for --quick."""

    step: int = 512
    step_reps: int = 5
    ttr: int = 256
    ref_iterations: int = 200
    ours_iteration_cap: int = 200
    stall_iterations: int = 20  # give up on the engine after this many iterations without a better loss
    # The engine's runs before the one that is timed to the reference's loss, each starting from the last:
    # (long side, iterations, only these style layers or None for the whole objective).
    stages: tuple[tuple[int, int, tuple[str, ...] | None], ...] = (
        (128, 60, None), (256, 40, SHALLOW), (256, 80, MIDDLE),
    )  # fmt: skip
    balanced: int = 1024
    balanced_iterations: int | None = None  # None: the preset's own counts


QUICK = Sizes(step=64, step_reps=2, ttr=64, ref_iterations=20, ours_iteration_cap=10, stall_iterations=5,
              stages=((32, 5, None), (64, 3, SHALLOW), (64, 3, MIDDLE)), balanced=96,
              balanced_iterations=2)  # fmt: skip


def load_pair(folder: Path) -> tuple[np.ndarray, np.ndarray]:
    """The content and style pictures as HxWx3 float32, read in place from the shared folder."""
    content, style = (images.split_alpha(images.load_image(folder / name))[0] for name in (CONTENT, STYLE))
    return content, style


def at_long_side(picture: np.ndarray, side: int) -> np.ndarray:
    return images.resize(picture, images.fit_long_side(*picture.shape[:2], side))


def reference_for(
    backbone: Backbone,
    arch: str,
    normalization: ref.Normalization,
    content: torch.Tensor,
    style: torch.Tensor,
) -> ref.Reference:
    """The tutorial loop on torchvision's `arch` stack carrying exactly the backbone's conv weights."""
    cnn = ref.torchvision_features(arch, ceil_mode=backbone.layers[4].ceil_mode)
    ref.copy_conv_weights(cnn, [m for m in backbone.layers if isinstance(m, nn.Conv2d)])
    return ref.Reference(cnn, normalization, content, style)


def bench_step(content: np.ndarray, style: np.ndarray, sizes: Sizes, seed: int) -> dict[str, float]:
    """Median seconds of one loss+gradient evaluation, the engine's and the reference's, interleaved."""
    backbone = random_backbone("vgg19", seed)
    content_t, style_t = (images.to_tensor(at_long_side(p, sizes.step)) for p in (content, style))
    p = gatys.METHOD.parse_params({"backbone": "vgg19"})
    ctx = RunContext(torch.device("cpu"), lambda _: None, CancelToken(), ModelCache())
    path = gatys.compute_path(backbone, p, ctx, math.prod(content_t.shape[-2:]))  # as a job chooses it
    objective = Objective(backbone, p, content_t, [style_t], np.ones(1), [], path)
    x = content_t.clone().requires_grad_(True)

    def ours() -> None:
        x.grad = None
        total, _ = objective(x)
        total.backward()

    reference = reference_for(backbone, "vgg19", ref.Normalization(vgg.MEAN, vgg.STD), content_t, style_t)
    runs: dict[str, Callable[[], Any]] = {"ours": ours, "reference": reference.closure}
    times: dict[str, list[float]] = {name: [] for name in runs}
    for fn in runs.values():  # warm-up: oneDNN primitive caches, allocator
        fn()
    for _ in range(sizes.step_reps):
        for name, fn in runs.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    ours_s, ref_s = (statistics.median(times[name]) for name in runs)
    print(
        f"\nstep at {sizes.step} px, random VGG19 (one step = one loss+gradient evaluation), path {path.name}"
    )
    print(f"  {'':10} {'median s':>9}  all")
    for name in runs:
        each = ", ".join(f"{t:.2f}" for t in times[name])
        print(f"  {name:10} {statistics.median(times[name]):9.3f}  {each}")
    print(f"  ratio reference/ours: {ref_s / ours_s:.2f}")
    return {
        "step_ours_s": ours_s,
        "step_reference_s": ref_s,
        "step_ratio_512": ref_s / ours_s,
        "step_path": path.name,
    }


class _Stop(Exception):
    """Raised from the progress callback: the engine has matched the reference, or stopped improving."""


def bench_time_to_reference(content: np.ndarray, style: np.ndarray, sizes: Sizes) -> dict[str, Any]:
    """T_ref for 200 reference iterations against the engine's time to the same reference loss."""
    backbone = load_backbone("vgg16-hed")
    # The engine gets the pictures at the timed size as well: a run hands back its result at the size of the
    # content it was given, so from 512 px each result went up to 512 and the next run took it back
    # down, which blurred away the detail a run at the timed size had added.
    content, style = (at_long_side(p, sizes.ttr) for p in (content, style))
    content_t, style_t = images.to_tensor(content), images.to_tensor(style)
    normalization = ref.Normalization([m / 255 for m in hed.MEAN_BGR], [1 / 255] * 3, bgr=True)
    judge = reference_for(backbone, "vgg16", normalization, content_t, style_t)  # untouched optimiser

    def run_reference() -> tuple[float, ref.Reference]:
        reference = reference_for(backbone, "vgg16", normalization, content_t, style_t)
        start = time.perf_counter()
        reference.run(sizes.ref_iterations)
        return time.perf_counter() - start, reference

    # Reference, engine, reference again: T_ref is the mean of the two, so a machine that speeds up or
    # slows down steadily during the ~6 minutes moves both sides alike (shared VMs drift by 10-20%).
    first_s, reference = run_reference()
    ref_loss = judge.loss_of(reference.image.detach())

    # Relative loss x target energy = the reference's absolute MSE: the same objective (and gradient) as
    # the reference's, up to one constant factor. Same content init as the reference, no TV.
    style_energy = {
        name: ref.STYLE_WEIGHT * float(m.target.pow(2).mean())
        for name, m in zip(ref.STYLE_LAYERS, reference.style_losses, strict=True)
    }
    content_energy = ref.CONTENT_WEIGHT * float(reference.content_losses[0].target.pow(2).mean())
    scale = max(content_energy, sum(style_energy.values()))
    settings = {
        "preset": "balanced",
        "size": sizes.ttr,
        "iterations": sizes.ours_iteration_cap,
        "content_layers": {"relu4_2": 1.0},
        "content_weight": content_energy / scale,
        "style_layers": {name: e / max(style_energy.values()) for name, e in style_energy.items()},
        "style_weight": sum(style_energy.values()) / scale,
        "tv_weight": 0.0,
    }
    cache = ModelCache()
    cache.get(("backbone", DEFAULT_BACKBONE, "max", "cpu"), lambda: backbone)  # loading is not timed
    # The engine reports its best loss so far, which is the reference objective divided by `scale`: the run
    # stops on it, and the judge scores the image it stopped on only after the clock has stopped.
    seen: dict[str, Any] = {"iterations": 0, "best": float("inf"), "best_at": 0, "image": None}

    def progress(p: Progress) -> None:
        if p.preview is None or p.stage != "optimise" or p.loss is None:
            return
        seen["iterations"], seen["image"] = p.step, p.preview
        if p.loss * scale < seen["best"]:
            seen["best"], seen["best_at"] = p.loss * scale, p.step
        if seen["best"] <= ref_loss * (1 - STOP_MARGIN) or p.step - seen["best_at"] >= sizes.stall_iterations:
            raise _Stop

    context = RunContext(torch.device("cpu"), progress, CancelToken(), cache)
    preview_every = optimiser.PREVIEW_EVERY_S
    optimiser.PREVIEW_EVERY_S = 0.0  # a preview (the whole image at this size) with every iteration
    start = time.perf_counter()
    try:
        # Coarse to fine: cheap iterations at a quarter and at half the size form the style patterns,
        # and each result starts the next size (an iteration at half the side costs about a quarter).
        coarse_context = RunContext(torch.device("cpu"), lambda p: None, CancelToken(), cache)
        init: dict[str, str] = {}
        with tempfile.TemporaryDirectory() as folder:
            for number, (side, iterations, layers) in enumerate(sizes.stages):
                stage = {**settings, **init, "size": side, "iterations": iterations}
                if layers:  # the pass stops at the deepest of them: a quarter to a half of the cost
                    chosen = {n: w for n, w in settings["style_layers"].items() if n in layers}
                    stage.update(style_layers=chosen, content_layers={layers[-1]: 1.0}, content_weight=0.0)
                params = gatys.METHOD.parse_params(stage)
                seed = gatys.METHOD.run(
                    PreparedJob(content=content, styles=[Style(style)], params=params), coarse_context
                )
                path = Path(folder) / f"stage{number}.png"
                images.save_image(path, seed, bits=16)
                init = {"init": str(path)}
            params = gatys.METHOD.parse_params({**settings, **init})
            gatys.METHOD.run(PreparedJob(content=content, styles=[Style(style)], params=params), context)
    except _Stop:
        pass
    finally:
        optimiser.PREVIEW_EVERY_S = preview_every
    ours_s = time.perf_counter() - start
    judged = judge.loss_of(images.to_tensor(seen["image"])) if seen["image"] is not None else float("inf")
    terms = {"reference": judge.terms_of(reference.image.detach())}
    if seen["image"] is not None:
        terms["ours"] = judge.terms_of(images.to_tensor(seen["image"]))
    reached = judged <= ref_loss
    second_s, again = run_reference()
    ref_s = (first_s + second_s) / 2

    print(f"\ntime to the reference's loss at {sizes.ttr} px, vgg16-hed (same weights both sides)")
    print(f"  reference: {sizes.ref_iterations} iterations ({reference.evaluations} evaluations) "
          f"in {first_s:.1f} s before ours and {second_s:.1f} s after (mean {ref_s:.1f} s), "
          f"loss {ref_loss:.5g} (again: {judge.loss_of(again.image.detach()):.5g})")  # fmt: skip
    status = "reached" if reached else f"NOT reached (best {judged:.5g} at iteration {seen['best_at']})"
    stages = ", ".join(
        f"{its} iterations at {side} px" + (f" ({'+'.join(layers)})" if layers else "")
        for side, its, layers in sizes.stages
    )
    print(f"  ours: {status} after {stages} and {seen['iterations']} at {sizes.ttr} px in {ours_s:.1f} s")
    print(f"  its own loss x scale {seen['best']:.5g}, the reference's objective on its image {judged:.5g}")
    print("  per term: " + ", ".join(terms["reference"]))
    for name, values in terms.items():
        print(f"    {name:9} " + ", ".join(f"{v:.4g}" for v in values.values()))
    ratio = ref_s / ours_s if reached else None
    print(f"  ratio T_ref/T_ours: {ratio:.2f}" if ratio else "  ratio: none (not reached)")
    return {
        "time_to_ref_ratio_256": ratio,
        "ttr_reference_s": ref_s,
        "ttr_reference_runs_s": [first_s, second_s],
        "ttr_ours_s": ours_s,
        "ttr_reference_loss": ref_loss,
        "ttr_ours_best_reference_loss": judged,
        "ttr_ours_iterations": seen["iterations"],
        "ttr_terms": terms,
    }


@contextlib.contextmanager
def counting_evaluations() -> Iterator[dict[tuple[int, ...], list[float]]]:
    """Per image shape: [evaluations, first start, last end] of Objective calls (tiny overhead)."""
    seen: dict[tuple[int, ...], list[float]] = {}
    original = Objective.__call__

    def counted(self: Objective, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        now = time.perf_counter()
        entry = seen.setdefault(tuple(image.shape[-2:]), [0, now, now])
        entry[0] += 1
        result = original(self, image)
        entry[2] = time.perf_counter()
        return result

    Objective.__call__ = counted  # type: ignore[method-assign]
    try:
        yield seen
    finally:
        Objective.__call__ = original  # type: ignore[method-assign]


def bench_balanced(folder: Path, sizes: Sizes) -> dict[str, Any]:
    """Wall time of one `balanced` job at the given size through the real pipeline."""
    content = images.load_image(folder / CONTENT)
    settings: dict[str, Any] = {"preset": "balanced", "size": sizes.balanced}
    if sizes.balanced_iterations:
        settings["iterations"] = sizes.balanced_iterations
    job = StylizeJob("gatys", settings, images.to_raw(content, "f32"), [StyleRef(path=str(folder / STYLE))])
    iterations: dict[int, int] = {}

    def progress(p: Progress) -> None:
        if p.stage == "optimise":
            iterations[p.scale] = p.total

    with counting_evaluations() as seen:
        start = time.perf_counter()
        run_job(job, progress, CancelToken(), ModelCache())
        wall = time.perf_counter() - start
    print(f"\npreset balanced at {sizes.balanced} px, {DEFAULT_BACKBONE}, pipeline.run_job: {wall:.1f} s")
    print(f"  {'scale':>11} {'iterations':>10} {'evaluations':>11} {'seconds':>8} {'s/eval':>7}")
    scales = []
    for index, ((h, w), (count, first, last)) in enumerate(seen.items(), start=1):
        its = iterations.get(index, 0)
        scales.append({"size": [h, w], "iterations": its, "evaluations": count, "seconds": last - first})
        print(f"  {f'{h}x{w}':>11} {its:10d} {count:11d} {last - first:8.1f} {(last - first) / count:7.2f}")
    return {"balanced_1024_s": wall, "balanced_scales": scales}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS))
    parser.add_argument("--quick", action="store_true", help="tiny sizes: checks the code paths, not speed")
    parser.add_argument("--reps", type=int, help="timed evaluations per side for the step figure")
    parser.add_argument("--images", type=Path, default=IMAGES, help="folder with content/ and style/")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    allocator.configure()  # as `nst` does first; the reference, in this process too, gets it as well
    sizes = QUICK if args.quick else Sizes()
    if args.reps:
        sizes = Sizes(**{**sizes.__dict__, "step_reps": args.reps})
    torch.manual_seed(args.seed)
    content, style = load_pair(args.images)
    style = images.resize(style, content.shape[:2])  # the tutorial needs style and content of one size
    machine = tune.machine()
    print(
        f"{machine['cpu']}, {machine['capability']}, {machine['threads']} threads, torch {machine['torch']}"
    )
    result: dict[str, Any] = {"quick": args.quick, "machine": machine}
    if "step" in args.parts:
        result.update(bench_step(content, style, sizes, args.seed))
    if "ttr" in args.parts:
        result.update(bench_time_to_reference(content, style, sizes))
    if "balanced" in args.parts:
        result.update(bench_balanced(args.images, sizes))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
