"""Gatys: losses against hand-computed values, and real optimisation runs on the offline backbone."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import torch
from helpers import random_backbone

from engine.backbones import load_backbone
from engine.compute.cache import ModelCache
from engine.errors import Cancelled, CancelToken, UserError
from engine.imaging import images
from engine.methods import gatys
from engine.methods.base import PreparedJob, Progress, RunContext, Style
from engine.methods.gatys import presets, tiles
from engine.methods.gatys.losses import Target, gram, total_variation
from engine.methods.gatys.objective import Objective, for_scale
from engine.methods.gatys.optimiser import Optimiser
from nst_common import settings


def synthetic_photo(height: int = 64, width: int = 80) -> np.ndarray:
    """A 'photo' with structure: a bright disc and a dark bar on a smooth gradient."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    img = np.stack([x / width, y / height, 0.5 * np.ones_like(x)], axis=2) * 0.6 + 0.2
    disc = (x - width * 0.35) ** 2 + (y - height * 0.5) ** 2 < (height * 0.25) ** 2
    img[disc] = [0.95, 0.9, 0.3]
    img[int(height * 0.2) : int(height * 0.3), int(width * 0.55) : int(width * 0.9)] = [0.05, 0.1, 0.2]
    return img


def synthetic_painting(size: int = 64, seed: int = 1) -> np.ndarray:
    """A 'painting': bold diagonal stripes in saturated colours with noise, nothing like the photo."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size].astype(np.float32)
    stripes = np.sin((x + y) * 0.6)[..., None]
    img = np.where(stripes > 0, [0.9, 0.2, 0.1], [0.1, 0.3, 0.9]).astype(np.float32)
    return (img + rng.normal(0, 0.08, img.shape)).clip(0, 1).astype(np.float32)


def run_gatys(
    content: np.ndarray,
    style: np.ndarray,
    progress=lambda p: None,
    cancel: CancelToken | None = None,
    **settings,
) -> np.ndarray:
    method = gatys.METHOD
    params = method.parse_params({"preset": "draft", "seed": 0, **settings})
    job = PreparedJob(content=content, styles=[Style(style)], params=params)
    ctx = RunContext(torch.device("cpu"), progress, cancel or CancelToken(), ModelCache())
    return method.run(job, ctx)


# --- Losses against hand-computed values ---------------------------------------------------------


def test_gram_matches_hand_computation() -> None:
    # Two channels over four positions: a = [1, 2, 0, 1], b = [0, 1, 3, 1].
    f = torch.tensor([[1.0, 2.0, 0.0, 1.0], [0.0, 1.0, 3.0, 1.0]]).reshape(1, 2, 2, 2)
    # aa = 1+4+0+1 = 6, ab = 0+2+0+1 = 3, bb = 0+1+9+1 = 11; averaged over 4 positions.
    expected = torch.tensor([[6.0, 3.0], [3.0, 11.0]]) / 4
    assert torch.allclose(gram(f)[0], expected)
    # With a shift of -1: a' = [0, 1, -1, 0], b' = [-1, 0, 2, 0]: a'a' = 2, a'b' = -2, b'b' = 5.
    assert torch.allclose(gram(f, shift=-1.0)[0], torch.tensor([[2.0, -2.0], [-2.0, 5.0]]) / 4)


def test_relative_loss_and_total_variation_by_hand() -> None:
    target = Target.of(torch.tensor([1.0, 3.0]))  # mean square = 5
    assert target.loss(torch.tensor([2.0, 1.0])).item() == pytest.approx(((1 + 4) / 2) / 5, rel=1e-6)
    image = torch.tensor([[0.0, 1.0], [2.0, 4.0]]).reshape(1, 1, 2, 2)
    # vertical diffs: 2, 3 -> mean 6.5; horizontal: 1, 2 -> mean 2.5
    assert total_variation(image).item() == pytest.approx(6.5 + 2.5)


def test_schedule_is_coarse_to_fine_and_ends_at_the_requested_size() -> None:
    assert presets.schedule(1024, presets.PRESETS["balanced"]) == [256, 512, 1024]
    assert presets.schedule(200, presets.PRESETS["balanced"]) == [200]
    best = presets.schedule(1000, presets.PRESETS["best"])
    assert best[-1] == 1000 and best[0] >= 250 and best == sorted(best)
    assert presets.schedule(1024, presets.PRESETS["balanced"], scales=2) == [512, 1024]
    assert presets.schedule(64, presets.PRESETS["draft"], scales=3) == [16, 32, 64]
    assert presets.schedule(53, presets.PRESETS["draft"], scales=3) == [26, 53]  # never below 16 px
    assert presets.PRESETS["balanced"].iterations([256, 512, 1024]) == [80, 20, 5]


@pytest.mark.parametrize(
    "settings",
    [
        {"preset": "fast"},
        {"strength": float("nan")},
        {"strength": -1},
        {"size": 10**6},
        {"style_layers": ["relu9_9"]},
        {"init": "/no/such/file.png"},
        {"optimiser": "lbfgs"},  # typo of optimizer: unknown settings are errors
        {"seed": "7"},
    ],
)
def test_bad_settings_are_rejected_with_the_setting_named(settings: dict) -> None:
    with pytest.raises(UserError) as err:
        gatys.METHOD.parse_params(settings)
    assert err.value.code == "bad-option"
    assert next(iter(settings)) in err.value.message


# --- Real optimisation ---------------------------------------------------------------------------


def style_loss(image: np.ndarray, style: np.ndarray) -> float:
    """The style loss computed independently of the method's own objective."""
    backbone = load_backbone("vgg16-hed")
    layers = list(settings.BY_NAME["style_layers"].default)
    with torch.no_grad():
        mine = backbone(images.to_tensor(image), layers)
        theirs = backbone(images.to_tensor(style), layers)
        return sum(Target.of(gram(theirs[n])).loss(gram(mine[n])).item() for n in layers)


def structure_correlation(a: np.ndarray, b: np.ndarray) -> float:
    """Correlation of blurred luminance: large shapes agree, whatever texture covers them."""
    kernel = np.exp(-0.5 * (np.arange(-6, 7) / 3.0) ** 2)
    kernel /= kernel.sum()

    def blurred(img: np.ndarray) -> np.ndarray:
        grey = img.mean(axis=2)
        grey = np.apply_along_axis(np.convolve, 0, grey, kernel, mode="valid")
        return np.apply_along_axis(np.convolve, 1, grey, kernel, mode="valid").ravel()

    return float(np.corrcoef(blurred(a), blurred(b))[0, 1])


def test_real_stylisation_moves_to_the_style_and_keeps_the_content() -> None:
    # The style's long side equals the work size, so Gatys matches exactly the statistics measured here.
    content, style = synthetic_photo(), synthetic_painting(80)
    result = run_gatys(content, style, size=80, iterations=100, strength=10.0)
    assert result.shape == content.shape and result.dtype == np.float32
    before, after = style_loss(content, style), style_loss(result, style)
    assert after <= 0.1 * before, f"style loss fell only from {before:.4g} to {after:.4g}"
    assert np.abs(result - content).mean() > 0.05  # visibly changed
    # The disc and bar are still where they were, far more than in an unrelated image.
    assert structure_correlation(result, content) > 0.6
    assert abs(structure_correlation(style[:64], content)) < 0.3


def test_multiscale_output_has_exactly_the_content_size() -> None:
    content, style = synthetic_photo(37, 53), synthetic_painting(40)
    progress: list[Progress] = []
    result = run_gatys(content, style, size=53, iterations=2, scales=3, progress=progress.append)
    assert result.shape == (37, 53, 3)
    seen_scales = {p.scale for p in progress}
    assert len(seen_scales) >= 2, "expected a coarse-to-fine run over several scales"
    fractions = [p.fraction for p in progress]
    assert fractions == sorted(fractions) and fractions[-1] == pytest.approx(1.0)


def test_seeded_runs_are_deterministic_and_noise_init_depends_on_the_seed() -> None:
    content, style = synthetic_photo(32, 32), synthetic_painting(32)
    a = run_gatys(content, style, init="noise", iterations=3, seed=5)
    b = run_gatys(content, style, init="noise", iterations=3, seed=5)
    c = run_gatys(content, style, init="noise", iterations=3, seed=6)
    assert np.array_equal(a, b)
    assert not np.allclose(a, c)


def test_preserve_colors_keeps_the_content_chroma() -> None:
    from engine.imaging.colors import rgb_to_ycc

    content, style = synthetic_photo(48, 48), synthetic_painting(48)
    result = run_gatys(content, style, iterations=20, preserve_colors="luminance")
    chroma = lambda img: rgb_to_ycc(img)[..., 1:]  # noqa: E731
    inside = np.all((result > 0.001) & (result < 0.999), axis=2)  # where no channel had to be clipped
    assert inside.mean() > 0.5
    assert np.abs(chroma(result) - chroma(content))[inside].max() < 0.02
    assert np.abs(rgb_to_ycc(result)[..., 0] - rgb_to_ycc(content)[..., 0]).mean() > 0.01


def test_adam_and_several_styles_work() -> None:
    content = synthetic_photo(40, 40)
    method = gatys.METHOD
    params = method.parse_params({"preset": "draft", "optimizer": "adam", "iterations": 15})
    styles = [Style(synthetic_painting(40), 0.7), Style(np.full((40, 40, 3), 0.5, np.float32), 0.3)]
    job = PreparedJob(content=content, styles=styles, params=params)
    result = method.run(job, RunContext(torch.device("cpu"), lambda p: None, CancelToken(), ModelCache()))
    assert result.shape == content.shape and np.isfinite(result).all()
    assert np.abs(result - content).mean() > 0.01


def test_zero_strength_returns_the_content_unchanged() -> None:
    content = synthetic_photo(32, 32)
    assert np.array_equal(run_gatys(content, synthetic_painting(32), strength=0.0), content)


def test_an_objective_that_cannot_improve_is_reported_not_returned_silently() -> None:
    # Content init with only the content term: the start is already optimal, so neither L-BFGS nor
    # the Adam fallback can lower the loss; the method must say so rather than hand back the input.
    content = synthetic_photo(32, 32)
    with pytest.raises(UserError) as err:
        run_gatys(content, synthetic_painting(32), style_layers={"relu1_1": 0.0}, tv_weight=0.0, iterations=3)
    assert err.value.code == "no-progress"


def test_cancel_stops_within_one_step() -> None:
    content, style = synthetic_photo(96, 96), synthetic_painting(96)
    token = CancelToken()
    steps_after_cancel: list[int] = []
    cancelled_at: list[float] = []

    def progress(p: Progress) -> None:
        if token.cancelled:
            steps_after_cancel.append(p.step)
        elif p.step == 3:
            cancelled_at.append(time.monotonic())
            threading.Thread(target=token.cancel).start()
            time.sleep(0.05)  # the cancel arrives from another thread while the step loop runs

    with pytest.raises(Cancelled):
        run_gatys(content, style, iterations=200, progress=progress, cancel=token)
    assert len(steps_after_cancel) <= 1
    assert time.monotonic() - cancelled_at[0] < 5.0


def test_an_lbfgs_stall_is_detected_and_adam_carries_on() -> None:
    # The max-norm is kinked everywhere L-BFGS goes: after a few iterations its direction stops being
    # a descent direction, no line-search trial lowers the loss, and the image would stop moving.
    target = torch.linspace(0, 1, 3 * 8 * 8).reshape(1, 3, 8, 8)

    def objective(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        loss = (x - target).abs().max()
        return loss, loss

    messages: list[str] = []
    ctx = RunContext(torch.device("cpu"), lambda p: messages.append(p.message), CancelToken(), ModelCache())
    run = Optimiser(gatys.METHOD.parse_params({}), ctx, [8], [50])
    start = torch.full((1, 3, 8, 8), 0.5)
    _, stalled_loss, done, _ = run._lbfgs(0, start, objective, 50)
    assert done < 50, "expected this objective to stall L-BFGS"
    result = run.optimise_scale(0, start, objective)
    assert "L-BFGS stalled; continuing with Adam" in messages
    assert float(objective(result)[0]) < stalled_loss - 0.1


def test_lbfgs_line_search_rescues_an_overshooting_trial() -> None:
    # A narrow pseudo-Huber loss far from its minimum: the gradient barely changes along the first step,
    # so the secant curvature is tiny and the next quasi-Newton trial overshoots many times over.
    # Without line-search trials (torch's default budget when step() runs one iteration leaves none)
    # that trial is rejected, the image never moves again and the loss stays near 4294; with them,
    # L-BFGS walks to the minimum (192) in a few iterations.
    target = torch.linspace(0.5, 1, 3 * 8 * 8).reshape(1, 3, 8, 8)

    def objective(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        loss = (1 + (30 * (x - target)) ** 2).sqrt().sum()
        return loss, loss

    ctx = RunContext(torch.device("cpu"), lambda p: None, CancelToken(), ModelCache())
    run = Optimiser(gatys.METHOD.parse_params({}), ctx, [8], [10])
    _, loss, _, _ = run._lbfgs(0, torch.zeros(1, 3, 8, 8), objective, 10)
    assert loss < 200.0


def test_lbfgs_keeps_the_image_displayable() -> None:
    # The unconstrained minimum lies outside 0..1; every evaluated (and the returned) image is inside.
    target = torch.linspace(-1, 2, 3 * 8 * 8).reshape(1, 3, 8, 8)
    seen: list[tuple[float, float]] = []

    def objective(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        seen.append((float(x.detach().min()), float(x.detach().max())))
        loss = ((x - target) ** 2).sum()
        return loss, loss

    ctx = RunContext(torch.device("cpu"), lambda p: None, CancelToken(), ModelCache())
    run = Optimiser(gatys.METHOD.parse_params({}), ctx, [8], [10])
    result, loss, _, _ = run._lbfgs(0, torch.full((1, 3, 8, 8), 0.5), objective, 10)
    assert min(lo for lo, _ in seen) >= 0.0 and max(hi for _, hi in seen) <= 1.0
    assert loss == pytest.approx(float(objective(target.clamp(0, 1))[0]), rel=1e-3)
    assert float(result.min()) >= 0.0 and float(result.max()) <= 1.0
    # One iteration: the point its line search accepted lies partly outside 0..1; what comes back is
    # an image that was evaluated, projected, with its own loss (not the unprojected point's, lower).
    result, loss, _, _ = run._lbfgs(0, torch.full((1, 3, 8, 8), 0.5), objective, 1)
    assert float(result.min()) >= 0.0 and float(result.max()) <= 1.0
    assert loss == pytest.approx(float(objective(result)[0]))


def test_lbfgs_converges_to_a_minimum_on_the_bounds() -> None:
    # A smooth, coupled objective whose minimum over 0..1 has two thirds of the pixels at 0 or 1, where
    # the gradient keeps pushing them out. L-BFGS fed that raw gradient stalls after 8 iterations with
    # free pixels' gradients at 0.72; fed the projected one (outward parts dropped) it converges.
    target = torch.linspace(-1, 2, 3 * 8 * 8).reshape(1, 3, 8, 8)

    def objective(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        dx, dy = x[..., 1:] - x[..., :-1], x[..., 1:, :] - x[..., :-1, :]
        loss = ((x - target) ** 2).sum() + 3 * (dx.pow(2).sum() + dy.pow(2).sum())
        return loss, loss

    ctx = RunContext(torch.device("cpu"), lambda p: None, CancelToken(), ModelCache())
    run = Optimiser(gatys.METHOD.parse_params({}), ctx, [8], [20])
    result, loss, _, _ = run._lbfgs(0, torch.full((1, 3, 8, 8), 0.5), objective, 20)
    x = result.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(objective(x)[0], x)
    at_bound = ((result <= 0) & (grad > 0)) | ((result >= 1) & (grad < 0))
    assert float(at_bound.float().mean()) > 0.5
    assert float(grad.masked_fill(at_bound, 0).abs().max()) < 0.01  # the first-order optimality condition
    assert float(objective(result)[0]) == pytest.approx(loss)  # the loss handed back is the image's


def test_an_lbfgs_scale_evaluates_only_the_points_the_optimiser_asks_for() -> None:
    # The start's loss is L-BFGS's first evaluation and the best image is always one of its trials: a
    # scale makes no extra evaluation (without a gradient) before or after (a forward pass each, 1024 px
    # ones taking seconds).
    target = torch.linspace(0.2, 0.8, 3 * 8 * 8).reshape(1, 3, 8, 8)
    with_gradient: list[bool] = []

    def objective(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        with_gradient.append(torch.is_grad_enabled())
        dx, dy = x[..., 1:] - x[..., :-1], x[..., 1:, :] - x[..., :-1, :]
        loss = ((x - target) ** 2).sum() + 3 * (dx.pow(2).sum() + dy.pow(2).sum())
        return loss, loss

    ctx = RunContext(torch.device("cpu"), lambda p: None, CancelToken(), ModelCache())
    run = Optimiser(gatys.METHOD.parse_params({}), ctx, [8], [5])
    start = torch.full((1, 3, 8, 8), 0.5)
    result = run.optimise_scale(0, start, objective)
    assert float(objective(result)[0]) < float(objective(start)[0]) / 2
    assert len(with_gradient) > 5 and all(with_gradient)


@pytest.mark.parametrize("name", ["vgg16-hed", "vgg19", "vgg19-normalised"])
def test_tiled_objective_gives_the_whole_image_loss_and_gradient(name: str) -> None:
    # Tiles with a halo at least the receptive radius see exactly the whole image's features, and the
    # global Gram is the sum of the tiles' owned parts: loss and gradient must equal the one-pass ones
    # (the content features, kept in half precision, are the one approximation). 12 tiles over a
    # 192x240 image whose sides are not multiples of the tile core; every backbone, so the halo must
    # cover the deepest receptive field (VGG19's).
    torch.manual_seed(0)
    backbone = random_backbone(name, seed=1)
    content = torch.rand(1, 3, 192, 240)
    style = torch.rand(1, 3, 150, 170)
    p = gatys.METHOD.parse_params({"activation_shift": 1.5, "tv_weight": 2.0})
    image = (content + 0.2 * torch.randn_like(content)).clamp(0, 1)
    # oneDNN's direct convolutions: NNPACK's Winograd rounds differently in a tile than over the
    # whole image, and where a ReLU's input lies within that rounding of zero the gradient takes
    # another way (tests/test_backbones.py compares the two convolutions).
    with torch.backends.nnpack.flags(enabled=False):
        whole = Objective(backbone, p, content, [style], np.ones(1), [])
        x = image.clone().requires_grad_(True)
        total, style_part = whole(x)
        total.backward()
        tiled = for_scale(backbone, p, content, [style], np.ones(1), [], tile=240)
        assert isinstance(tiled, tiles.TiledObjective)
        evaluation = tiled.loss(image)
        tiled_grad = tiled.gradient(image, evaluation)
    assert float(evaluation.total) == pytest.approx(total.item(), rel=1e-4)
    assert float(evaluation.style) == pytest.approx(style_part.item(), rel=1e-4)
    assert float((tiled_grad - x.grad).abs().max()) < 1e-3 * float(x.grad.abs().max())


def test_a_trial_made_tile_by_tile_scores_as_the_trial_image_and_is_taken_exactly() -> None:
    # The descent never builds its trial image: each window computes clamp(x - size * d) where it is
    # read, total variation plane by plane. The loss must be the trial image's, and taking the step
    # must give that image bit for bit (the next gradient is computed there from this evaluation).
    torch.manual_seed(0)
    backbone = random_backbone("vgg16-hed", seed=1)
    content = torch.rand(1, 3, 192, 240)
    p = gatys.METHOD.parse_params({"tv_weight": 2.0})
    with torch.backends.nnpack.flags(enabled=False):
        style = torch.rand(1, 3, 150, 170)
        tiled = for_scale(backbone, p, content, [style], np.ones(1), [], tile=240)
        assert isinstance(tiled, tiles.TiledObjective)
        x = (content + 0.2 * torch.randn_like(content)).clamp(0, 1)
        direction = torch.randn_like(x)
        step = tiles.Step(direction, 0.3)
        trial = step.apply(x)  # the whole trial image, as one tensor
        at_trial = tiled.loss(x, step)
        expected = tiled.loss(trial)
        assert float(at_trial.total) == pytest.approx(float(expected.total), rel=1e-6)
        assert float(at_trial.style) == pytest.approx(float(expected.style), rel=1e-6)
        assert float(at_trial.total) != pytest.approx(float(tiled.loss(x).total), rel=1e-3)
        step.take(x)
    assert torch.equal(x, trial)


def test_a_scale_larger_than_the_tile_runs_in_tiles_and_lowers_its_loss() -> None:
    # A 272 px strip in tiles of 256: the finest scale is optimised tile by tile by projected descent
    # (no image-sized optimiser state), the coarse one in one pass. Every kept step must lower the
    # loss (a scale that does not raises no-progress), and the style still moves the picture.
    content, style = synthetic_photo(96, 272), synthetic_painting(160)
    losses: list[float] = []
    tile_messages: list[str] = []

    def progress(p: Progress) -> None:
        if p.scale == 2 and p.loss is not None:
            losses.append(p.loss)
        elif p.scale == 2 and "tile" in p.message:
            tile_messages.append(p.message)

    result = run_gatys(content, style, progress, size=272, scales=2, iterations=3, tile=256)
    assert result.shape == content.shape
    assert result.min() >= 0.0 and result.max() <= 1.0
    assert np.abs(result - content).mean() > 0.005
    assert len(losses) == 3 and losses == sorted(losses, reverse=True)
    # A pass over a large image takes minutes: the user sees it advance tile by tile.
    assert "scale 2/2 (272 px), step 0/3: tile 3/3" in tile_messages  # the 3 windows of one pass
    assert any(m.startswith("scale 2/2 (272 px), step 2/3: tile") for m in tile_messages)


def test_cancel_in_tiles_stops_within_one_tile() -> None:
    content, style = synthetic_photo(96, 400), synthetic_painting(160)
    token = CancelToken()
    after_cancel: list[str] = []

    def progress(p: Progress) -> None:
        if token.cancelled:
            after_cancel.append(p.message)
        elif "tile 1/" in p.message:
            token.cancel()

    with pytest.raises(Cancelled):
        run_gatys(content, style, progress, cancel=token, size=400, scales=1, iterations=3, tile=208)
    assert after_cancel == []
