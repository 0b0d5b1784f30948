"""Johnson, AdaIN and CycleGAN: upstream checkpoint layouts, equality with the upstream forward
passes (bench/zoo.py's faithful re-implementations), padding, AdaIN's options and the caches.

The state dicts are written here, key for key, from the upstream sources:
- pytorch/examples fast_neural_style/neural_style/transformer_net.py (TransformerNet), whose
  saved_models also carry stale InstanceNorm running_mean/running_var keys (neural_style.py stylize);
- naoto0804/pytorch-AdaIN net.py (`vgg`: 53 layers, `decoder`);
- junyanz/pytorch-CycleGAN-and-pix2pix models/networks.py (ResnetGenerator, resnet_9blocks, instance
  norm: conv biases, no norm parameters).
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from engine import weights
from engine.compute.cache import ModelCache
from engine.errors import CancelToken, UserError
from engine.methods.adain import METHOD as ADAIN
from engine.methods.base import PreparedJob, RunContext, Style
from engine.methods.cyclegan import METHOD as CYCLEGAN
from engine.methods.johnson import METHOD as JOHNSON
from engine.nets.adain_nets import load_encoder
from engine.nets.inference import pad_to_multiple
from engine.nets.ops import UpsampleConv3x3, channels_last, instance_norm_, nchw, reflect_conv
from engine.nets.resnet_generator import load_resnet_generator
from engine.nets.transformer_net import load_transformer_net

ROOT = Path(__file__).resolve().parents[1]
CPU = torch.device("cpu")
Shapes = dict[str, tuple[int, ...]]


def _load_bench():
    spec = importlib.util.spec_from_file_location("bench_zoo", ROOT / "bench" / "zoo.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


zoo = _load_bench()


# --- the upstream layouts ----------------------------------------------------------------------


def _conv(prefix: str, cout: int, cin: int, k: int) -> Shapes:
    return {f"{prefix}.weight": (cout, cin, k, k), f"{prefix}.bias": (cout,)}


def johnson_shapes() -> Shapes:
    """transformer_net.py: ConvLayer keeps its conv as `conv2d`; InstanceNorm2d(affine=True)."""
    shapes: Shapes = {}
    convs = [("conv1", 32, 3, 9), ("conv2", 64, 32, 3), ("conv3", 128, 64, 3)]
    convs += [(f"res{i}.conv{j}", 128, 128, 3) for i in range(1, 6) for j in (1, 2)]
    convs += [("deconv1", 64, 128, 3), ("deconv2", 32, 64, 3), ("deconv3", 3, 32, 9)]
    for name, cout, cin, k in convs:
        shapes.update(_conv(f"{name}.conv2d", cout, cin, k))
    norms = [("in1", 32), ("in2", 64), ("in3", 128), ("in4", 64), ("in5", 32)]
    norms += [(f"res{i}.in{j}", 128) for i in range(1, 6) for j in (1, 2)]
    for name, channels in norms:
        for key in ("weight", "bias", "running_mean", "running_var"):  # old saved_models carry all four
            shapes[f"{name}.{key}"] = (channels,)
    return shapes


ADAIN_VGG_CONVS = [(0, 3, 3, 1), (2, 64, 3, 3), (5, 64, 64, 3), (9, 128, 64, 3), (12, 128, 128, 3)]
ADAIN_VGG_CONVS += [(16, 256, 128, 3)] + [(i, 256, 256, 3) for i in (19, 22, 25)] + [(29, 512, 256, 3)]
ADAIN_VGG_CONVS += [(i, 512, 512, 3) for i in (32, 35, 38, 42, 45, 48, 51)]
ADAIN_DECODER_CONVS = [(1, 256, 512), (5, 256, 256), (8, 256, 256), (11, 256, 256), (14, 128, 256)]
ADAIN_DECODER_CONVS += [(18, 128, 128), (21, 64, 128), (25, 64, 64), (28, 3, 64)]


def adain_vgg_shapes() -> Shapes:
    """net.py `vgg`: all 53 layers are in the file, though only the first 31 are used."""
    shapes: Shapes = {}
    for index, cout, cin, k in ADAIN_VGG_CONVS:
        shapes.update(_conv(str(index), cout, cin, k))
    return shapes


def adain_decoder_shapes() -> Shapes:
    shapes: Shapes = {}
    for index, cout, cin in ADAIN_DECODER_CONVS:
        shapes.update(_conv(str(index), cout, cin, 3))
    return shapes


def cyclegan_shapes() -> Shapes:
    """networks.py ResnetGenerator(3, 3, 64, InstanceNorm2d, n_blocks=9): every conv has a bias;
    ConvTranspose2d weights are (in, out, k, k)."""
    shapes: Shapes = {
        **_conv("model.1", 64, 3, 7),
        **_conv("model.4", 128, 64, 3),
        **_conv("model.7", 256, 128, 3),
    }
    for block in range(10, 19):
        shapes.update(_conv(f"model.{block}.conv_block.1", 256, 256, 3))
        shapes.update(_conv(f"model.{block}.conv_block.5", 256, 256, 3))
    shapes.update({"model.19.weight": (256, 128, 3, 3), "model.19.bias": (128,)})
    shapes.update({"model.22.weight": (128, 64, 3, 3), "model.22.bias": (64,)})
    shapes.update(_conv("model.26", 3, 64, 7))
    return shapes


def random_state(shapes: Shapes, seed: int, last: str, last_scale: float, last_bias: float) -> dict:
    """He-scaled weights, small biases, norm scales near 1; `last` (the output conv) rescaled so
    the output spans the pixel range, as a trained model's does."""
    gen = torch.Generator().manual_seed(seed)
    state = {}
    for key, shape in shapes.items():
        if key.endswith("running_var"):
            state[key] = torch.ones(shape)
        elif key.endswith("running_mean"):
            state[key] = torch.zeros(shape)
        elif len(shape) == 4:
            fan_in = (
                shape[1] * shape[2] * shape[3]
                if "model.19" not in key and "model.22" not in key
                else shape[0] * 9
            )
            state[key] = torch.randn(shape, generator=gen) * (2.0 / fan_in) ** 0.5
        elif key.startswith("in") or ".in" in key:
            state[key] = (1.0 if key.endswith("weight") else 0.0) + 0.1 * torch.randn(shape, generator=gen)
        else:
            state[key] = 0.05 * torch.randn(shape, generator=gen)
    state[f"{last}.weight"] *= last_scale
    if last_bias:
        state[f"{last}.bias"].fill_(last_bias)
    return state


@pytest.fixture(scope="module")
def states() -> dict[str, dict]:
    return {
        "johnson": random_state(johnson_shapes(), 1, "deconv3.conv2d", 40.0, 128.0),
        "vgg": random_state(adain_vgg_shapes(), 2, "51", 1.0, 0.0),
        "decoder": random_state(adain_decoder_shapes(), 3, "28", 0.1, 0.5),
        "cyclegan": random_state(cyclegan_shapes(), 4, "model.26", 0.3, 0.0),
    }


@pytest.fixture(scope="module")
def files(states: dict[str, dict], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("upstream")
    out = {}
    for name, state in states.items():
        out[name] = folder / f"{name}.pth"
        torch.save(state, out[name])
    return out


@pytest.fixture(scope="module")
def home(files: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A private NST_HOME with the four files installed through the weights manager."""
    with pytest.MonkeyPatch.context() as mp:
        path = tmp_path_factory.mktemp("home")
        mp.setenv("NST_HOME", str(path))
        for weight_id, name in [
            ("johnson_candy", "johnson"),
            ("adain_vgg", "vgg"),
            ("adain_decoder", "decoder"),
            ("cyclegan_style_monet", "cyclegan"),
        ]:
            weights.import_file(weight_id, files[name])
        yield path


def image(height: int, width: int, seed: int) -> np.ndarray:
    return zoo.synthetic_image(height, width, seed)


def context(cache: ModelCache | None = None) -> RunContext:
    return RunContext(device=CPU, progress=lambda _: None, cancel=CancelToken(), cache=cache or ModelCache())


def run(method, content: np.ndarray, styles=(), ctx: RunContext | None = None, **settings) -> np.ndarray:
    job = PreparedJob(
        content=content, styles=[Style(*s) for s in styles], params=method.parse_params(settings)
    )
    return method.run(job, ctx or context())


def ref_tensor(img: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(img).permute(2, 0, 1).unsqueeze(0).contiguous()


# --- layouts: the bench's references are upstream-shaped too -------------------------------------


def test_bench_references_have_the_upstream_layouts() -> None:
    def layout(module: torch.nn.Module) -> Shapes:
        return {k: tuple(v.shape) for k, v in module.state_dict().items()}

    johnson = {k: v for k, v in johnson_shapes().items() if "running" not in k}
    assert layout(zoo.RefTransformerNet()) == johnson
    assert layout(zoo.ref_adain_vgg()) == adain_vgg_shapes()
    assert len(zoo.ref_adain_vgg()) == 53
    assert layout(zoo.ref_adain_decoder()) == adain_decoder_shapes()
    assert layout(zoo.RefResnetGenerator()) == cyclegan_shapes()


# --- each loader reads its upstream file and matches the upstream forward pass -------------------


def test_johnson_matches_pytorch_examples_stylize(states, files) -> None:
    ref = zoo.RefTransformerNet()
    ref.load_state_dict({k: v for k, v in states["johnson"].items() if "running" not in k})
    content = image(48, 64, seed=5)
    expected = zoo.ref_johnson(ref.eval(), content)
    net = load_transformer_net(files["johnson"], CPU)
    with torch.inference_mode():
        ours = net(ref_tensor(content))[0].permute(1, 2, 0).numpy()
    assert expected.std() > 0.1 and (expected == 0).any()  # informative output; the clamp is exercised
    assert np.abs(ours - expected).max() < 1e-4


def test_adain_matches_naoto0804_style_transfer(states, home) -> None:
    vgg, decoder = zoo.ref_adain_vgg(), zoo.ref_adain_decoder()
    vgg.load_state_dict(states["vgg"])
    decoder.load_state_dict(states["decoder"])
    encoder = torch.nn.Sequential(*list(vgg.children())[:31]).eval()
    content, style = image(48, 64, seed=6), image(40, 56, seed=7)
    expected = zoo.ref_adain(encoder, decoder.eval(), content, style, alpha=0.8)
    ours = run(ADAIN, content, [(style,)], strength=0.8, style_size=0)
    assert expected.std() > 0.05
    assert np.abs(ours - expected).max() < 1e-4


def test_cyclegan_matches_junyanz_test(states, files) -> None:
    ref = zoo.RefResnetGenerator()
    ref.load_state_dict(states["cyclegan"])
    content = image(48, 64, seed=8)
    expected = zoo.ref_cyclegan(ref.eval(), content)
    net = load_resnet_generator(files["cyclegan"], CPU)
    with torch.inference_mode():
        ours = net(ref_tensor(content))[0].permute(1, 2, 0).numpy()
    assert expected.std() > 0.05
    assert np.abs(ours - expected).max() < 1e-4


def test_stale_norm_statistics_are_dropped_but_other_extra_keys_are_not(states, tmp_path) -> None:
    cyclegan = dict(states["cyclegan"])
    cyclegan["model.2.running_mean"] = torch.zeros(64)  # as early CycleGAN releases saved them
    cyclegan["model.2.num_batches_tracked"] = torch.tensor(0)
    torch.save(cyclegan, tmp_path / "old.pth")
    load_resnet_generator(tmp_path / "old.pth", CPU)

    johnson = dict(states["johnson"])
    johnson["conv9.conv2d.weight"] = torch.zeros(1)
    torch.save(johnson, tmp_path / "foreign.pth")
    with pytest.raises(UserError) as err:
        load_transformer_net(tmp_path / "foreign.pth", CPU)
    assert err.value.code == "bad-weights"


def test_a_decoder_file_is_not_accepted_as_the_encoder(files) -> None:
    with pytest.raises(UserError) as err:
        load_encoder(files["decoder"], CPU)
    assert err.value.code == "bad-weights"


# --- pinned outputs: an architecture change must show up here ------------------------------------

# Per-channel mean and std of each method's output for the fixed weights and image above; a change
# in any layer moves them far beyond the tolerance, BLAS rounding does not.
PINNED = {
    "johnson": ([0.4456, 0.5772, 0.3475], [0.1438, 0.1236, 0.1254]),
    "adain": ([0.5945, 0.4993, 0.4364], [0.0177, 0.0100, 0.0162]),
    "cyclegan": ([0.5022, 0.4327, 0.4527], [0.1170, 0.1097, 0.1172]),
}


@pytest.mark.parametrize("name", ["johnson", "adain", "cyclegan"])
def test_pinned_output_statistics(name: str, home: Path) -> None:
    method = {"johnson": JOHNSON, "adain": ADAIN, "cyclegan": CYCLEGAN}[name]
    styles = [(image(64, 64, seed=11),)] if name == "adain" else []
    out = run(method, image(64, 80, seed=10), styles)
    mean, std = PINNED[name]
    assert out.mean(axis=(0, 1)) == pytest.approx(mean, abs=5e-4)
    assert out.std(axis=(0, 1)) == pytest.approx(std, abs=5e-4)


# --- the fused ops against the module chains they replace --------------------------------------


@pytest.mark.parametrize("layout", ["channels_last", "nchw", "batch of two", "bfloat16"])
def test_instance_norm_in_place_equals_instance_norm_then_relu(layout: str) -> None:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2 if layout == "batch of two" else 1, 16, 24, 20, generator=gen) * 3 + 1
    weight, bias = torch.rand(16, generator=gen) + 0.5, torch.randn(16, generator=gen)
    expected = torch.relu(torch.nn.functional.instance_norm(x, weight=weight, bias=bias))
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    if layout == "bfloat16":
        x, expected = x.bfloat16(), expected.bfloat16()
    out = instance_norm_(x.clone(), weight, bias, relu=True)
    assert out.dtype == x.dtype
    assert (out.float() - expected.float()).abs().max() < (0.05 if layout == "bfloat16" else 1e-5)


def test_upsample_conv_equals_upsample_reflect_pad_conv() -> None:
    """transformer_net.py UpsampleConvLayer, net.py decoder: Upsample(2), ReflectionPad2d(1), conv."""
    gen = torch.Generator().manual_seed(1)
    conv = torch.nn.Conv2d(6, 5, 3)
    x = torch.randn(1, 6, 7, 9, generator=gen)
    chain = torch.nn.Sequential(
        torch.nn.Upsample(scale_factor=2, mode="nearest"), torch.nn.ReflectionPad2d(1), conv
    )
    with torch.no_grad():
        assert (UpsampleConv3x3(conv)(x) - chain(x)).abs().max() < 1e-5


@pytest.mark.skipif(not torch._nnpack_available(), reason="NNPACK does not support this CPU")
@pytest.mark.parametrize(("cin", "cout", "kernel"), [(16, 16, 3), (24, 8, 3)])
def test_nnpack_conv_equals_reflect_pad_conv(cin: int, cout: int, kernel: int) -> None:
    """The res blocks' Winograd 3x3, from either layout, against float64."""
    gen = torch.Generator().manual_seed(2)
    conv = torch.nn.Conv2d(cin, cout, kernel).requires_grad_(False)
    x = torch.randn(1, cin, 21, 26, generator=gen)
    expected = conv.double()(torch.nn.functional.pad(x.double(), (kernel // 2,) * 4, mode="reflect"))
    conv.float()
    for layout in (torch.contiguous_format, torch.channels_last):
        got = reflect_conv(x.contiguous(memory_format=layout), conv, nnpack=True)
        assert got.is_contiguous()  # NNPACK's NCHW, not oneDNN's output
        assert (got.double() - expected).abs().max() < 1e-4 * expected.abs().max()


@pytest.mark.parametrize("batch", [1, 2])
def test_layout_conversions_keep_the_values(batch: int) -> None:
    x = torch.randn(batch, 5, 7, 3)
    cl = channels_last(x)
    assert cl.is_contiguous(memory_format=torch.channels_last) and torch.equal(cl, x)
    back = nchw(cl)
    assert back.is_contiguous() and torch.equal(back, x)
    assert channels_last(cl) is cl and nchw(back) is back


# --- sizes --------------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [(37, 23), (50, 61), (5, 9)])
@pytest.mark.parametrize("name", ["johnson", "adain", "cyclegan"])
def test_any_size_comes_back_exactly(name: str, size: tuple[int, int], home: Path) -> None:
    method = {"johnson": JOHNSON, "adain": ADAIN, "cyclegan": CYCLEGAN}[name]
    styles = [(image(33, 41, seed=3),)] if name == "adain" else []
    out = run(method, image(*size, seed=2), styles)
    assert out.shape == (*size, 3) and out.dtype == np.float32
    assert np.isfinite(out).all() and out.min() >= 0.0 and out.max() <= 1.0


def test_padding_reaches_a_multiple_and_the_minimum_side() -> None:
    x = torch.arange(2 * 3 * 37 * 23, dtype=torch.float32).reshape(2, 3, 37, 23)
    padded = pad_to_multiple(x, 8)
    assert padded.shape[-2:] == (40, 24)
    assert torch.equal(padded[..., :37, :23], x)
    assert torch.equal(padded[..., 37, :23], x[..., 35, :])  # reflected, not repeated
    assert pad_to_multiple(x, 1) is x
    assert pad_to_multiple(x[..., :5, :9], 4).shape[-2:] == (16, 16)  # too thin to reflect: repeated


def test_work_size_runs_smaller_and_returns_the_content_size(home: Path) -> None:
    content = image(60, 80, seed=4)
    small = run(JOHNSON, content, size=40)
    assert small.shape == content.shape
    assert np.abs(small - run(JOHNSON, content)).mean() > 0.01  # it really ran at another size


# --- AdaIN options ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def adain_refs(states) -> tuple[torch.nn.Sequential, torch.nn.Sequential]:
    vgg, decoder = zoo.ref_adain_vgg(), zoo.ref_adain_decoder()
    vgg.load_state_dict(states["vgg"])
    decoder.load_state_dict(states["decoder"])
    return torch.nn.Sequential(*list(vgg.children())[:31]).eval(), decoder.eval()


def test_adain_alpha_zero_is_the_decoded_content(adain_refs, home: Path) -> None:
    encoder, decoder = adain_refs
    content = image(48, 64, seed=12)
    with torch.no_grad():
        expected = decoder(encoder(ref_tensor(content))).clamp(0, 1)[0].permute(1, 2, 0).numpy()
    out = run(ADAIN, content, [(image(32, 32, seed=13),)], strength=0.0)
    assert np.abs(out - expected).max() < 1e-4
    assert np.abs(out - run(ADAIN, content, [(image(32, 32, seed=13),)], strength=1.0)).max() > 0.01


def test_adain_interpolation_matches_upstreams_weighted_features(adain_refs, home: Path) -> None:
    """test.py with --style_interpolation_weights: AdaIN per style, weighted sum, then decode."""
    encoder, decoder = adain_refs
    content = image(40, 48, seed=14)
    styles = [image(32, 40, seed=15), image(48, 32, seed=16)]
    with torch.no_grad():
        content_f = encoder(ref_tensor(content))
        feat = sum(
            w * zoo.ref_adain_op(content_f, encoder(ref_tensor(s)))
            for w, s in zip((0.25, 0.75), styles, strict=True)
        )
        expected = decoder(feat).clamp(0, 1)[0].permute(1, 2, 0).numpy()
    out = run(ADAIN, content, [(styles[0], 1.0), (styles[1], 3.0)], style_size=0)
    assert np.abs(out - expected).max() < 1e-4
    assert np.abs(out - run(ADAIN, content, [(styles[1],)], style_size=0)).max() > 1e-3


def test_adain_style_size_resizes_the_style_short_side(home: Path) -> None:
    content, style = image(32, 32, seed=17), image(40, 80, seed=18)
    kept = run(ADAIN, content, [(style,)], style_size=0)
    assert np.array_equal(kept, run(ADAIN, content, [(style,)], style_size=40))  # already 40 short
    assert not np.array_equal(kept, run(ADAIN, content, [(style,)], style_size=20))


def test_adain_preserve_colors(home: Path) -> None:
    from engine.imaging.colors import rgb_to_ycc

    content, style = image(40, 40, seed=19), image(40, 40, seed=20)
    plain = run(ADAIN, content, [(style,)])
    luma = run(ADAIN, content, [(style,)], preserve_colors=True)
    chroma = rgb_to_ycc(luma)[..., 1:] - rgb_to_ycc(content)[..., 1:]
    assert np.median(np.abs(chroma)) < 1e-4 < 1e-2 < np.abs(luma - plain).max()  # (gamut clipping aside)
    histogram = run(ADAIN, content, [(style,)], preserve_colors="histogram")
    assert np.abs(histogram - plain).max() > 1e-3 and np.abs(histogram - luma).max() > 1e-2


# --- caches -------------------------------------------------------------------------------------


def test_models_load_once_per_cache(home: Path) -> None:
    cache = ModelCache()
    content = image(24, 24, seed=21)
    first = run(JOHNSON, content, ctx=context(cache))
    assert cache.loads == 1
    assert np.array_equal(first, run(JOHNSON, content, ctx=context(cache)))
    run(CYCLEGAN, content, ctx=context(cache))
    run(CYCLEGAN, content, ctx=context(cache))
    assert cache.loads == 2


def test_adain_caches_models_and_each_styles_statistics(home: Path) -> None:
    cache = ModelCache()
    content, style = image(24, 24, seed=22), image(24, 24, seed=23)
    first = run(ADAIN, content, [(style,)], ctx=context(cache))
    assert cache.loads == 3  # encoder, decoder, the style's statistics
    again = run(ADAIN, image(32, 24, seed=24), [(style.copy(),)], ctx=context(cache), strength=0.5)
    assert cache.loads == 3 and again.shape == (32, 24, 3)
    other = style.copy()
    other[0, 0, 0] += 0.01  # one pixel differs: another style
    run(ADAIN, content, [(other,)], ctx=context(cache))
    assert cache.loads == 4
    assert np.array_equal(first, run(ADAIN, content, [(style,)], ctx=context(cache)))


# --- settings and weights -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "settings"),
    [
        (JOHNSON, {"model": "starry"}),
        (JOHNSON, {"preserve_colors": "histogram"}),
        (JOHNSON, {"strength": 1.5}),
        (CYCLEGAN, {"precision": "fp8"}),
        (CYCLEGAN, {"alpha": 0.5}),
        (CYCLEGAN, {"seed": 1}),
        (ADAIN, {"strength": -0.1}),
        (ADAIN, {"strength": float("nan")}),
        (ADAIN, {"style_size": 8}),
        (ADAIN, {"preserve_colors": "coral"}),
        (ADAIN, {"model": "candy"}),
    ],
)
def test_bad_settings_are_refused(method, settings: dict) -> None:
    with pytest.raises(UserError) as err:
        method.parse_params(settings)
    assert err.value.code == "bad-option"


def test_defaults() -> None:
    assert JOHNSON.parse_params({}) == {
        "model": "candy", "mix": None, "strength": 1.0, "preserve_colors": "none", "size": None,
        "precision": "auto", "tile": None,
    }  # fmt: skip
    assert CYCLEGAN.parse_params({})["model"] == "style_monet"
    assert ADAIN.parse_params({"preserve_colors": True}) == {
        "model": "published", "strength": 1.0, "style_size": 512, "preserve_colors": "luminance",
        "size": None, "precision": "auto", "tile": None,
    }  # fmt: skip


def test_every_model_has_a_manifest_entry() -> None:
    manifest = weights.load_manifest()
    for method in (JOHNSON, CYCLEGAN):
        for model in method.models:
            assert manifest.entry(f"{method.name}_{model}").method == method.name
    assert {manifest.entry(i).method for i in ("adain_vgg", "adain_decoder")} == {"adain"}


def test_missing_weights_say_how_to_get_them(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NST_HOME", str(tmp_path))
    with pytest.raises(UserError) as err:
        run(JOHNSON, image(16, 16, seed=0), model="mosaic")
    assert err.value.code == "missing-weights" and "johnson_mosaic" in err.value.message


def test_strength_blends_towards_the_content_and_luminance_keeps_its_colours(home: Path) -> None:
    from engine.imaging.colors import rgb_to_ycc

    content = image(32, 40, seed=25)
    assert np.array_equal(run(CYCLEGAN, content, strength=0.0), content)
    full, half = run(CYCLEGAN, content), run(CYCLEGAN, content, strength=0.5)
    assert np.abs(half - (content + full) / 2).max() < 1e-6
    kept = run(JOHNSON, content, preserve_colors="luminance")
    assert np.median(np.abs(rgb_to_ycc(kept)[..., 1:] - rgb_to_ycc(content)[..., 1:])) < 1e-4


def test_bf16_autocast_runs_close_to_fp32(home: Path) -> None:
    content = image(32, 32, seed=26)
    fp32 = run(JOHNSON, content, precision="fp32")
    bf16 = run(JOHNSON, content, precision="bf16")
    assert bf16.dtype == np.float32 and 0 < np.abs(bf16 - fp32).mean() < 0.05


# --- regions --------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["johnson", "adain", "cyclegan"])
def test_a_region_mask_confines_the_feedforward_methods(name: str, home: Path) -> None:
    from engine.imaging import images
    from engine.pipeline import run_job
    from nst_common.messages import StyleRef, StylizeJob

    content = image(32, 48, seed=23)
    mask = np.zeros((32, 48, 1), np.float32)
    mask[:, :24] = 1.0
    styles = [StyleRef(image=images.to_raw(image(32, 32, seed=24), "f32"))] if name == "adain" else []

    def stylize(params: dict) -> np.ndarray:
        job = StylizeJob(
            name, params, images.to_raw(content, "f32"), styles, masks={"m": images.to_raw(mask, "f32")}
        )
        return images.from_raw(run_job(job, lambda p: None, CancelToken(), ModelCache()))

    whole, confined = stylize({}), stylize({"regions": [{"mask": "m"}]})
    assert np.abs(confined[:, 30:] - content[:, 30:]).max() < 1e-6  # black: unchanged
    assert np.abs(confined[:, :18] - content[:, :18]).mean() > 0.02  # white: styled
    if name != "adain":  # one model: inside the mask the result is the unconfined output
        assert np.abs(confined[:, :18] - whole[:, :18]).max() < 1e-6


def test_adain_semantic_maps_take_each_labels_own_style_statistics(home: Path) -> None:
    from engine.imaging import images
    from engine.pipeline import run_job
    from nst_common.messages import StyleRef, StylizeJob

    content, style = image(32, 32, seed=25), image(32, 32, seed=26)
    style[:16] *= 0.3  # a dark top and a bright bottom: different statistics per label
    top = np.zeros((32, 32, 3), np.float32)
    top[:16] = [1.0, 0.0, 0.0]
    swapped = top[::-1].copy()

    def stylize(content_map: np.ndarray | None, style_map: np.ndarray | None, **params: float) -> np.ndarray:
        ref = StyleRef(image=images.to_raw(style, "f32"))
        if style_map is not None:
            ref.map = images.to_raw(style_map, "u8")
        raw_map = None if content_map is None else images.to_raw(content_map, "u8")
        job = StylizeJob("adain", params, images.to_raw(content, "f32"), [ref], content_map=raw_map)
        return images.from_raw(run_job(job, lambda p: None, CancelToken(), ModelCache()))

    plain, same, crossed = stylize(None, None), stylize(top, top), stylize(top, swapped)
    assert np.abs(same - plain).mean() > 1e-3 and np.abs(crossed - same).mean() > 1e-3
    # map_weight 0: every label sees the whole images, which is plain AdaIN again.
    assert np.abs(stylize(top, swapped, map_weight=0.0) - plain).max() < 2e-3
