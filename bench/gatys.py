"""Gatys: the engine's optimiser against the classic tutorial loop (bench/reference_gatys.py), in one
process ("ours" in the output is the engine).

Three figures:
- step: seconds per loss+gradient evaluation at 512 px, both sides on the same random-weight VGG19
  (tests/helpers.py random_backbone, copied conv by conv into the reference's torchvision stack).
  A "step" is one evaluation, not one L-BFGS iteration: the engine does a strong-Wolfe line search
  (one evaluation per iteration once under way, more when a trial overshoots), the reference's
  default L-BFGS exactly one. The engine is timed through engine.methods.gatys.objective.Objective,
  the code every optimiser step runs. Interleaved, medians.
- each preset against the reference at 512 px on the real offline backbone vgg16-hed (random weights
  give an odd landscape): the reference runs the tutorial's 300 L-BFGS iterations from the content,
  noting when each evaluation's loss was known. Then each preset runs as `nst stylize --preset NAME
  --size 512` runs it (engine.pipeline.run_job: its own scales and iterations, the measured compute
  path), with settings under which the engine minimises the reference's objective up to one constant
  factor (per-layer weights from the reference targets' energy, no TV), and the reference objective
  scores its picture. A preset's ratio is the reference's time to that same loss over the preset's
  wall time ("equal size and equal result"); where the reference never gets there, its whole run is a
  lower bound. The reference runs again afterwards until it has reached every preset's loss, and the
  two runs' times are averaged against drift in the machine's speed. "Time to the reference's result"
  is the reference's whole run over the fastest preset whose picture scores at least as well.
  The quality score (engine/score.py) judges as well: the reference keeps every fifth evaluated
  image, and a preset's style ratio is the reference's time (first run) to a style score as low as
  the preset's, over the preset's time.
- wall time of preset `balanced` at 1024 px with the default backbone through engine.pipeline.run_job,
  with evaluations and seconds per scale.

    .venv/bin/python bench/gatys.py                   # all three: about 35 min on 2 cores
    .venv/bin/python bench/gatys.py --parts step ttr  # skip the 1024 px run
    .venv/bin/python bench/gatys.py --quick           # tiny sizes, a smoke test of the code paths
    .venv/bin/python bench/gatys.py --parts step --device cuda  # the step on a GPU, both sides
The last line printed is one JSON object with the ratios and raw seconds.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

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
from engine.compute.devices import gpu_name, resolve_device, synchronize  # noqa: E402
from engine.errors import CancelToken  # noqa: E402
from engine.imaging import images  # noqa: E402
from engine.methods import gatys  # noqa: E402
from engine.methods.base import Progress, RunContext  # noqa: E402
from engine.methods.gatys.objective import Objective  # noqa: E402
from engine.methods.gatys.presets import PRESETS  # noqa: E402
from engine.pipeline import run_job  # noqa: E402
from engine.score import Scorer  # noqa: E402
from nst_common.messages import StyleRef, StylizeJob  # noqa: E402

IMAGES = ROOT.parent / "shared" / "images"
SNAPSHOT_EVERY = 5  # reference evaluations between the images kept for the score
CONTENT = "content/golden_gate.jpg"
STYLE = "style/woman_with_hat_matisse.jpg"
PARTS = ("step", "ttr", "balanced")


@dataclass(frozen=True)
class Sizes:
    """How big each part runs: the published figures' sizes, or tiny ones for --quick."""

    step: int = 512
    step_reps: int = 5
    ttr: int = 512
    ref_iterations: int = 300  # the tutorial's num_steps
    preset_iterations: int | None = None  # None: each preset's own counts, as users run it
    balanced: int = 1024
    balanced_iterations: int | None = None  # None: the preset's own counts


QUICK = Sizes(step=64, step_reps=2, ttr=64, ref_iterations=20, preset_iterations=2, balanced=96,
              balanced_iterations=2)  # fmt: skip


def load_pair(folder: Path) -> tuple[np.ndarray, np.ndarray]:
    """The content and style pictures as HxWx3 float32, read in place from the shared folder."""
    content, style = (images.split_alpha(images.load_image(folder / name))[0] for name in (CONTENT, STYLE))
    return content, style


R = TypeVar("R", bound=ref.Reference)


def reference_for(
    backbone: Backbone,
    arch: str,
    normalization: ref.Normalization,
    content: torch.Tensor,
    style: torch.Tensor,
    kind: type[R] = ref.Reference,  # type: ignore[assignment]
    **options: Any,
) -> R:
    """The tutorial loop (or `kind` of it) on torchvision's `arch` stack carrying exactly the
    backbone's conv weights."""
    cnn = ref.torchvision_features(arch, ceil_mode=backbone.layers[4].ceil_mode)
    ref.copy_conv_weights(cnn, [m for m in backbone.layers if isinstance(m, nn.Conv2d)])
    return kind(cnn.to(content.device), normalization.to(content.device), content, style, **options)


def bench_step(
    content: np.ndarray, style: np.ndarray, sizes: Sizes, seed: int, device: torch.device
) -> dict[str, Any]:
    """Median seconds of one loss+gradient evaluation, the engine's and the reference's, interleaved,
    both on `device`."""
    backbone = random_backbone("vgg19", seed, device=str(device))
    content_t, style_t = (
        images.to_tensor(images.at_long_side(p, sizes.step)).to(device) for p in (content, style)
    )
    p = gatys.METHOD.parse_params({"backbone": "vgg19"})
    ctx = RunContext(device, lambda _: None, CancelToken(), ModelCache())
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
            synchronize(device)
            start = time.perf_counter()
            fn()
            synchronize(device)
            times[name].append(time.perf_counter() - start)
    ours_s, ref_s = (statistics.median(times[name]) for name in runs)
    print(
        f"\nstep at {sizes.step} px, random VGG19 (one step = one loss+gradient evaluation), "
        f"path {path.name}, on {gpu_name(device) or 'the CPU'}"
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
        "step_device": gpu_name(device) or "cpu",
    }


class TracedReference(ref.Reference):
    """The tutorial loop, noting when each evaluation's loss was known: the loss it reports is the
    reference objective of the clamped iterate, so the trace says when the loop reached any loss.
    With `snapshot_every`, it also keeps every so many evaluated images, for the score afterwards."""

    def __init__(self, *args: Any, snapshot_every: int = 0) -> None:
        super().__init__(*args)
        self.trace: list[tuple[float, float]] = []
        self.snapshot_every = snapshot_every
        self.snapshots: list[tuple[float, torch.Tensor]] = []

    def closure(self) -> torch.Tensor:
        loss = super().closure()
        now = time.perf_counter()
        self.trace.append((now, float(loss.detach())))
        if self.snapshot_every and self.evaluations % self.snapshot_every == 0:
            self.snapshots.append((now, self.image.detach().clone()))
        return loss

    def seconds_to(self, start: float, loss: float) -> float | None:
        """Seconds from `start` until an evaluation scored `loss` or less; None if none did."""
        return next((t - start for t, value in self.trace if value <= loss), None)


class _Reached(Exception):
    """Raised after an L-BFGS step: the reference has reached every loss it was run for."""


def preset_settings(reference: ref.Reference, size: int) -> dict[str, Any]:
    """Settings under which the engine minimises the reference's objective, up to one constant factor.

    The engine's per-layer losses are relative to the targets' energy; weighting each by that energy
    turns them into the reference's absolute MSE terms (style weight 1e6, content 1, no TV).
    """
    style_energy = {
        name: ref.STYLE_WEIGHT * float(m.target.pow(2).mean())
        for name, m in zip(ref.STYLE_LAYERS, reference.style_losses, strict=True)
    }
    content_energy = ref.CONTENT_WEIGHT * float(reference.content_losses[0].target.pow(2).mean())
    scale = max(content_energy, sum(style_energy.values()))
    return {
        "size": size,
        "content_layers": {name: 1.0 for name in ref.CONTENT_LAYERS},
        "content_weight": content_energy / scale,
        "style_layers": {name: e / max(style_energy.values()) for name, e in style_energy.items()},
        "style_weight": sum(style_energy.values()) / scale,
        "tv_weight": 0.0,
    }


def bench_time_to_reference(
    content: np.ndarray, style: np.ndarray, sizes: Sizes, pictures: Path | None = None
) -> dict[str, Any]:
    """Each preset as `nst stylize` runs it, against the reference loop's time to the same loss and
    to the same style score (engine/score.py); with `pictures`, every picture is saved there too."""
    backbone = load_backbone(DEFAULT_BACKBONE)
    content, style = (images.at_long_side(p, sizes.ttr) for p in (content, style))
    content_t, style_t = images.to_tensor(content), images.to_tensor(style)
    normalization = ref.Normalization([m / 255 for m in hed.MEAN_BGR], [1 / 255] * 3, bgr=True)

    def new_reference(snapshot_every: int = 0) -> TracedReference:
        args = (backbone, "vgg16", normalization, content_t, style_t, TracedReference)
        return reference_for(*args, snapshot_every=snapshot_every)

    judge = new_reference()  # scores the presets' pictures; its optimiser never steps
    first = new_reference(SNAPSHOT_EVERY)
    first_start = time.perf_counter()
    first.run(sizes.ref_iterations)
    first_s = time.perf_counter() - first_start
    ref_loss = judge.loss_of(first.image.detach())
    ours = run_presets(content, style, preset_settings(judge, sizes.ttr), sizes, backbone)

    # The reference again, against drift in the machine's speed (shared VMs drift by 10-20% in minutes),
    # until it has reached every preset's loss or run as long as the first time.
    lowest = min(judge.loss_of(images.to_tensor(o["image"])) for o in ours.values())
    second = new_reference()

    def reached_all() -> None:
        if second.trace[-1][1] <= lowest:
            raise _Reached

    second_start = time.perf_counter()
    with contextlib.suppress(_Reached):
        second.run(sizes.ref_iterations, reached_all)

    # After the clocks: the reference objective and the score judge every picture.
    scorer = Scorer(content, style, backbone)
    ref_styles = [(t - first_start, scorer(images.to_numpy(x.clamp(0, 1))).style) for t, x in first.snapshots]
    ref_picture = images.to_numpy(first.image.detach().clamp(0, 1))
    ref_score = scorer(ref_picture)
    if pictures:
        pictures.mkdir(parents=True, exist_ok=True)
        images.save_image(pictures / "reference.png", ref_picture)
    for name, o in ours.items():
        picture = o.pop("image")
        if pictures:
            images.save_image(pictures / f"{name}.png", picture)
        o["loss"] = judge.loss_of(images.to_tensor(picture))
        runs = [r.seconds_to(s, o["loss"]) for r, s in ((first, first_start), (second, second_start))]
        o["reference_s"] = statistics.mean(runs) if None not in runs else None
        # The reference never got there: its whole run is a lower bound on its time to this loss.
        o["ratio"] = (o["reference_s"] or first_s) / o["seconds"]
        o["ratio_is_lower_bound"] = o["reference_s"] is None
        o["reached_reference"] = o["loss"] <= ref_loss
        o["score"] = scorer(picture).as_dict()
        o["reference_s_to_style"] = next((t for t, st in ref_styles if st <= o["score"]["style"]), None)
        o["style_ratio"] = (o["reference_s_to_style"] or first_s) / o["seconds"]
    reaching = [o["seconds"] for o in ours.values() if o["reached_reference"]]
    result = {
        "ttr_size": sizes.ttr,
        "ttr_reference_iterations": sizes.ref_iterations,
        "ttr_reference_s": first_s,
        "ttr_reference_loss": ref_loss,
        "ttr_reference_score": ref_score.as_dict(),
        "ttr_presets": ours,
        "time_to_ref_ratio": first_s / min(reaching) if reaching else None,
    }
    print_time_to_reference(result, first.evaluations)
    return result


def run_presets(
    content: np.ndarray, style: np.ndarray, settings: dict[str, Any], sizes: Sizes, backbone: Backbone
) -> dict[str, dict[str, Any]]:
    """Each preset through engine.pipeline.run_job, as `nst stylize --preset NAME` runs it: seconds
    and picture."""
    if sizes.preset_iterations:
        settings = {**settings, "iterations": sizes.preset_iterations}
    cache = ModelCache()
    cache.get(("backbone", DEFAULT_BACKBONE, "max", "cpu"), lambda: backbone)  # loaded once, as a server does
    raw, job_style = images.to_raw(content, "f32"), [StyleRef(image=images.to_raw(style, "f32"))]
    # The compute path is measured once per machine (engine/compute/tune.py); `nst tune` does it up
    # front, and so does this, so that no preset's time includes it.
    run_job(
        StylizeJob("gatys", {**settings, "iterations": 1}, raw, job_style),
        lambda p: None,
        CancelToken(),
        cache,
    )
    ours: dict[str, dict[str, Any]] = {}
    for name in PRESETS:
        job = StylizeJob("gatys", {**settings, "preset": name}, raw, job_style)
        start = time.perf_counter()
        picture = images.from_raw(run_job(job, lambda p: None, CancelToken(), cache))
        ours[name] = {"seconds": time.perf_counter() - start, "image": picture}
    return ours


def _against(reference_s: float | None, ratio: float, whole_s: float) -> str:
    """The reference's time and the ratio; where it never got there, its whole run as a bound."""
    if reference_s is None:
        return f"{f'>{whole_s:.1f}':>8} {f'>={ratio:.2f}':>7}"
    return f"{reference_s:8.1f} {ratio:7.2f}"


def print_time_to_reference(result: dict[str, Any], evaluations: int) -> None:
    ref_s, size = result["ttr_reference_s"], result["ttr_size"]
    print(f"\neach preset against the reference loop at {size} px, {DEFAULT_BACKBONE}, same weights")
    print(f"  reference: {result['ttr_reference_iterations']} iterations ({evaluations} evaluations), "
          f"{ref_s:.1f} s, loss {result['ttr_reference_loss']:.5g}, "
          f"style score {result['ttr_reference_score']['style']:.3f}")  # fmt: skip
    print(f"  {'preset':9} {'seconds':>8} {'loss':>10} {'ref. s':>8} {'ratio':>7}  "
          f"{'style':>6} {'ref. s':>8} {'ratio':>7}  beats the reference's loss")  # fmt: skip
    for name, o in result["ttr_presets"].items():
        by_loss = _against(o["reference_s"], o["ratio"], ref_s)
        by_style = _against(o["reference_s_to_style"], o["style_ratio"], ref_s)
        style = o["score"]["style"]
        print(f"  {name:9} {o['seconds']:8.1f} {o['loss']:10.5g} {by_loss}  {style:6.3f} {by_style}  "
              f"{o['reached_reference']}")  # fmt: skip
    ratio = result["time_to_ref_ratio"]
    print("  time to the reference's result, by the fastest preset that reaches it: "
          + (f"{ratio:.2f}x" if ratio else "none reaches it"))  # fmt: skip


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
    parser.add_argument("--pictures", type=Path, help="save the time-to-reference part's pictures here")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="where the step part runs")
    args = parser.parse_args()
    device = resolve_device(args.device)
    if device.type != "cpu" and set(args.parts) != {"step"}:
        parser.error("--device other than cpu runs the step part only: add --parts step")
    allocator.configure()  # as `nst` does first; the reference, in this process too, gets it as well
    sizes = QUICK if args.quick else Sizes()
    if args.reps:
        sizes = Sizes(**{**sizes.__dict__, "step_reps": args.reps})
    torch.manual_seed(args.seed)
    content, style = load_pair(args.images)
    style = images.resize(style, content.shape[:2])  # the tutorial needs style and content of one size
    machine = tune.machine()
    print(tune.describe(machine))
    result: dict[str, Any] = {"quick": args.quick, "machine": machine}
    if "step" in args.parts:
        result.update(bench_step(content, style, sizes, args.seed, device))
    if "ttr" in args.parts:
        result.update(bench_time_to_reference(content, style, sizes, args.pictures))
    if "balanced" in args.parts:
        result.update(bench_balanced(args.images, sizes))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
