"""Johnson, AdaIN and CycleGAN inference: ours against faithful re-implementations of upstream.

The references follow the upstream inference code step by step, copies and conversions included:
- Johnson: pytorch/examples fast_neural_style/neural_style/transformer_net.py and neural_style.py
  stylize() (ToTensor, x255, no_grad forward, clone().clamp(0, 255) in utils.save_image);
- AdaIN: naoto0804/pytorch-AdaIN net.py, function.py (calc_mean_std, adaptive_instance_normalization)
  and test.py style_transfer();
- CycleGAN: junyanz/pytorch-CycleGAN-and-pix2pix models/networks.py ResnetGenerator (resnet_9blocks,
  instance norm, no dropout) and test.py (Normalize to -1..1, forward, util.tensor2im's (x + 1) / 2).
Both sides get the same fixed-seed random weights (saved in the upstream layouts and installed
through engine.weights) and the same synthetic images, in the same process, with interleaved
repetitions; the table gives median seconds, the ratio of the medians and of the fastest runs, and
the max abs difference of the 0..1 outputs.

    .venv/bin/python bench/zoo.py            # 512 and 1024 px: ~4 min on 2 idle CPU cores, ~7 when shared
    .venv/bin/python bench/zoo.py --sizes 256 --reps 2
"""

from __future__ import annotations

import argparse
import ctypes
import functools
import itertools
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _device_of(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


# --- references: pytorch/examples fast_neural_style ---------------------------------------------


class RefConvLayer(nn.Module):
    def __init__(self, cin: int, cout: int, kernel: int, stride: int) -> None:
        super().__init__()
        self.reflection_pad = nn.ReflectionPad2d(kernel // 2)
        self.conv2d = nn.Conv2d(cin, cout, kernel, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2d(self.reflection_pad(x))


class RefResidualBlock(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = RefConvLayer(channels, channels, 3, 1)
        self.in1 = nn.InstanceNorm2d(channels, affine=True)
        self.conv2 = RefConvLayer(channels, channels, 3, 1)
        self.in2 = nn.InstanceNorm2d(channels, affine=True)
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.in1(self.conv1(x)))
        return self.in2(self.conv2(out)) + x


class RefUpsampleConvLayer(nn.Module):
    def __init__(self, cin: int, cout: int, kernel: int, stride: int, upsample: int) -> None:
        super().__init__()
        self.upsample_layer = nn.Upsample(mode="nearest", scale_factor=upsample)
        self.reflection_pad = nn.ReflectionPad2d(kernel // 2)
        self.conv2d = nn.Conv2d(cin, cout, kernel, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2d(self.reflection_pad(self.upsample_layer(x)))


class RefTransformerNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = RefConvLayer(3, 32, 9, 1)
        self.in1 = nn.InstanceNorm2d(32, affine=True)
        self.conv2 = RefConvLayer(32, 64, 3, 2)
        self.in2 = nn.InstanceNorm2d(64, affine=True)
        self.conv3 = RefConvLayer(64, 128, 3, 2)
        self.in3 = nn.InstanceNorm2d(128, affine=True)
        self.res1, self.res2, self.res3, self.res4, self.res5 = (RefResidualBlock(128) for _ in range(5))
        self.deconv1 = RefUpsampleConvLayer(128, 64, 3, 1, 2)
        self.in4 = nn.InstanceNorm2d(64, affine=True)
        self.deconv2 = RefUpsampleConvLayer(64, 32, 3, 1, 2)
        self.in5 = nn.InstanceNorm2d(32, affine=True)
        self.deconv3 = RefConvLayer(32, 3, 9, 1)
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.relu(self.in1(self.conv1(x)))
        y = self.relu(self.in2(self.conv2(y)))
        y = self.relu(self.in3(self.conv3(y)))
        y = self.res5(self.res4(self.res3(self.res2(self.res1(y)))))
        y = self.relu(self.in4(self.deconv1(y)))
        y = self.relu(self.in5(self.deconv2(y)))
        return self.deconv3(y)


def ref_johnson(model: RefTransformerNet, content: np.ndarray) -> np.ndarray:
    """neural_style.py stylize(): ToTensor, mul(255), forward under no_grad, save_image's clamp."""
    x = torch.from_numpy(content).permute(2, 0, 1).contiguous().mul(255).unsqueeze(0)
    x = x.to(_device_of(model))
    with torch.no_grad():
        output = model(x).cpu()
    img = output[0].clone().clamp(0, 255).numpy().transpose(1, 2, 0)
    return img / 255.0


# --- references: naoto0804/pytorch-AdaIN ----------------------------------------------------------


def ref_adain_vgg() -> nn.Sequential:
    """net.vgg: 53 layers, a 1x1 colour conv then VGG-19 with reflection padding and ceil-mode pools."""
    layers: list[nn.Module] = [nn.Conv2d(3, 3, (1, 1))]
    cin = 3
    for block, (count, width) in enumerate(zip((2, 2, 4, 4, 4), (64, 128, 256, 512, 512), strict=True)):
        if block:
            layers.append(nn.MaxPool2d((2, 2), (2, 2), (0, 0), ceil_mode=True))
        for _ in range(count):
            layers += [nn.ReflectionPad2d((1, 1, 1, 1)), nn.Conv2d(cin, width, (3, 3)), nn.ReLU()]
            cin = width
    return nn.Sequential(*layers)


def ref_adain_decoder() -> nn.Sequential:
    """net.decoder: relu4_1 features back to RGB, nearest upsampling between the conv groups."""
    layers: list[nn.Module] = []
    plan = [(512, 256), 0, (256, 256), (256, 256), (256, 256), (256, 128), 0, (128, 128), (128, 64)]
    plan += [0, (64, 64), (64, 3)]
    for step in plan:
        if step == 0:
            layers.append(nn.UpsamplingNearest2d(scale_factor=2))
        else:
            layers += [nn.ReflectionPad2d((1, 1, 1, 1)), nn.Conv2d(*step, (3, 3)), nn.ReLU()]
    return nn.Sequential(*layers[:-1])


def ref_calc_mean_std(feat: torch.Tensor, eps: float = 1e-5) -> tuple[torch.Tensor, torch.Tensor]:
    n, c = feat.size()[:2]
    feat_std = (feat.view(n, c, -1).var(dim=2) + eps).sqrt().view(n, c, 1, 1)
    return feat.view(n, c, -1).mean(dim=2).view(n, c, 1, 1), feat_std


def ref_adain_op(content_feat: torch.Tensor, style_feat: torch.Tensor) -> torch.Tensor:
    size = content_feat.size()
    style_mean, style_std = ref_calc_mean_std(style_feat)
    content_mean, content_std = ref_calc_mean_std(content_feat)
    normalized = (content_feat - content_mean.expand(size)) / content_std.expand(size)
    return normalized * style_std.expand(size) + style_mean.expand(size)


def ref_adain(
    vgg: nn.Sequential, decoder: nn.Sequential, content: np.ndarray, style: np.ndarray, alpha: float = 1.0
) -> np.ndarray:
    """test.py: ToTensor both, unsqueeze, style_transfer() under no_grad, save_image's clamp."""
    c = torch.from_numpy(content).permute(2, 0, 1).contiguous().unsqueeze(0)
    s = torch.from_numpy(style).permute(2, 0, 1).contiguous().unsqueeze(0)
    c, s = c.to(_device_of(vgg)), s.to(_device_of(vgg))
    with torch.no_grad():
        content_f = vgg(c)
        style_f = vgg(s)
        feat = ref_adain_op(content_f, style_f)
        feat = feat * alpha + content_f * (1 - alpha)
        output = decoder(feat).cpu()
    return output[0].clamp(0, 1).numpy().transpose(1, 2, 0)


# --- references: junyanz/pytorch-CycleGAN-and-pix2pix ---------------------------------------------


class RefResnetBlock(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.conv_block = nn.Sequential(
            nn.ReflectionPad2d(1), nn.Conv2d(dim, dim, 3, bias=True), nn.InstanceNorm2d(dim), nn.ReLU(True),
            nn.ReflectionPad2d(1), nn.Conv2d(dim, dim, 3, bias=True), nn.InstanceNorm2d(dim),
        )  # fmt: skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv_block(x)


class RefResnetGenerator(nn.Module):
    def __init__(self, ngf: int = 64, n_blocks: int = 9) -> None:
        super().__init__()
        model: list[nn.Module] = [nn.ReflectionPad2d(3), nn.Conv2d(3, ngf, 7, padding=0, bias=True)]
        model += [nn.InstanceNorm2d(ngf), nn.ReLU(True)]
        for i in range(2):
            mult = 2**i
            model += [nn.Conv2d(ngf * mult, ngf * mult * 2, 3, stride=2, padding=1, bias=True)]
            model += [nn.InstanceNorm2d(ngf * mult * 2), nn.ReLU(True)]
        model += [RefResnetBlock(ngf * 4) for _ in range(n_blocks)]
        for i in range(2):
            mult = 2 ** (2 - i)
            model += [
                nn.ConvTranspose2d(ngf * mult, ngf * mult // 2, 3, 2, padding=1, output_padding=1, bias=True)
            ]
            model += [nn.InstanceNorm2d(ngf * mult // 2), nn.ReLU(True)]
        model += [nn.ReflectionPad2d(3), nn.Conv2d(ngf, 3, 7, padding=0), nn.Tanh()]
        self.model = nn.Sequential(*model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


def ref_cyclegan(model: RefResnetGenerator, content: np.ndarray) -> np.ndarray:
    """test.py: ToTensor, Normalize((0.5,)*3, (0.5,)*3), forward under no_grad, tensor2im's (x + 1) / 2."""
    x = torch.from_numpy(content).permute(2, 0, 1).contiguous()
    x = ((x - 0.5) / 0.5).unsqueeze(0).to(_device_of(model))
    with torch.no_grad():
        fake = model(x)
    return (fake[0].cpu().float().numpy().transpose(1, 2, 0) + 1) / 2.0


# --- fixed-seed weights in the upstream layouts -------------------------------------------------


def _he_init(module: nn.Module, seed: int) -> None:
    """He-normal convs and small biases: activations keep their scale through deep plain stacks."""
    gen = torch.Generator().manual_seed(seed)
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
            fan_in = m.weight[0].numel() if isinstance(m, nn.Conv2d) else m.weight[:, 0].numel()
            with torch.no_grad():
                m.weight.copy_(torch.randn(m.weight.shape, generator=gen) * (2.0 / fan_in) ** 0.5)
                m.bias.copy_(torch.randn(m.bias.shape, generator=gen) * 0.05)
        elif isinstance(m, nn.InstanceNorm2d) and m.affine:
            with torch.no_grad():
                m.weight.copy_(1.0 + 0.1 * torch.randn(m.weight.shape, generator=gen))
                m.bias.copy_(0.1 * torch.randn(m.bias.shape, generator=gen))


def johnson_model(seed: int = 0) -> RefTransformerNet:
    """Output scaled to span 0..255, as a trained model's does."""
    net = RefTransformerNet()
    _he_init(net, seed)
    with torch.no_grad():
        net.deconv3.conv2d.weight.mul_(40.0)
        net.deconv3.conv2d.bias.fill_(128.0)
    return net.eval()


def johnson_state_dict(model: RefTransformerNet) -> dict[str, torch.Tensor]:
    """As pytorch/examples' saved_models hold it: with the stale InstanceNorm running-stat keys."""
    state = dict(model.state_dict())
    for name, module in model.named_modules():
        if isinstance(module, nn.InstanceNorm2d):
            state[f"{name}.running_mean"] = torch.zeros(module.num_features)
            state[f"{name}.running_var"] = torch.ones(module.num_features)
    return state


def adain_models(seed: int = 0) -> tuple[nn.Sequential, nn.Sequential]:
    vgg, decoder = ref_adain_vgg(), ref_adain_decoder()
    _he_init(vgg, seed)
    _he_init(decoder, seed + 1)
    with torch.no_grad():
        decoder[-1].weight.mul_(0.1)
        decoder[-1].bias.fill_(0.5)
    return vgg.eval(), decoder.eval()


def cyclegan_model(seed: int = 0) -> RefResnetGenerator:
    net = RefResnetGenerator()
    _he_init(net, seed)
    with torch.no_grad():
        net.model[-2].weight.mul_(0.3)
    return net.eval()


def synthetic_image(height: int, width: int, seed: int) -> np.ndarray:
    """Smooth colour gradients, stripes and a little noise: structure at every scale, no files."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    yy, xx = yy / height, xx / width
    freq = rng.uniform(3, 12, size=3)
    phase = rng.uniform(0, 6.3, size=3)
    channels = [
        0.5 + 0.35 * np.sin(freq[c] * (xx + 0.7 * yy) * 6.28 + phase[c]) * (0.6 + 0.4 * yy) for c in range(3)
    ]
    image = np.stack(channels, axis=2) + rng.normal(0, 0.03, (height, width, 3))
    return np.clip(image, 0, 1).astype(np.float32)


# --- ours ----------------------------------------------------------------------------------------


def install(weight_id: str, state: dict[str, torch.Tensor], folder: Path) -> None:
    """Save `state` as upstream does and import it through the weights manager (NST_HOME is private)."""
    from engine import weights

    path = folder / f"{weight_id}.pth"
    torch.save(state, path)
    weights.import_file(weight_id, path)


def our_runner(method_name: str, device: torch.device, **settings: object) -> Callable[..., np.ndarray]:
    from engine.cache import ModelCache
    from engine.errors import CancelToken
    from engine.methods.base import PreparedJob, RunContext, Style

    method = __import__(f"engine.methods.{method_name}", fromlist=["METHOD"]).METHOD
    ctx = RunContext(device=device, progress=lambda _: None, cancel=CancelToken(), cache=ModelCache())
    parsed = method.parse_params(dict(settings))

    def run(content: np.ndarray, *styles: np.ndarray) -> np.ndarray:
        job = PreparedJob(content=content, styles=[Style(s) for s in styles], params=parsed)
        return method.run(job, ctx)

    return run


# --- timing --------------------------------------------------------------------------------------


def timed(fn: Callable[[], np.ndarray], device: torch.device) -> tuple[float, np.ndarray]:
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    out = fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start, out


def compare(
    name: str,
    ref: Callable[[], np.ndarray],
    ours: Callable[[], np.ndarray],
    reps: int,
    device: torch.device,
    warm_up: bool,
) -> dict:
    """`reps` interleaved timed runs (after an untimed one each if `warm_up`); medians and the worst
    difference. Only the first size warms up: later sizes reuse the loaded models and kernels."""
    if warm_up:
        ref(), ours()
    ref_times, our_times, diff = [], [], 0.0
    for _ in range(reps):
        t_ref, out_ref = timed(ref, device)
        t_ours, out_ours = timed(ours, device)
        ref_times.append(t_ref)
        our_times.append(t_ours)
        diff = max(diff, float(np.abs(out_ref - out_ours).max()))
    row = {
        "case": name,
        "ref_s": statistics.median(ref_times),
        "ours_s": statistics.median(our_times),
        "max_abs_diff": diff,
    }
    row["speedup"] = row["ref_s"] / row["ours_s"]
    # On a shared machine the fastest runs are the least disturbed: their ratio is shown too.
    row["speedup_best"] = min(ref_times) / min(our_times)
    print(
        f"{name:<22} {row['ref_s']:>9.3f} {row['ours_s']:>9.3f} {row['speedup']:>8.2f}x "
        f"{row['speedup_best']:>8.2f}x {diff:>12.2e}",
        flush=True,
    )
    return row


def _adain_pair(
    enc: nn.Sequential,
    decoder: nn.Sequential,
    ours: Callable[..., np.ndarray],
    content: np.ndarray,
    style: np.ndarray,
) -> tuple[Callable[[], np.ndarray], Callable[[], np.ndarray]]:
    """Each reference call nudges one style pixel and ours then gets the same style: our per-style
    statistics cache never hits, so the comparison includes encoding the style, as upstream does."""
    current = [style]
    count = itertools.count(1)

    def ref() -> np.ndarray:
        current[0] = style.copy()
        current[0][0, 0, 0] = next(count) * 1e-7
        return ref_adain(enc, decoder, content, current[0])

    return ref, lambda: ours(content, current[0])


def bench(device: torch.device, sizes: list[int], reps: tuple[int, int], folder: Path) -> list[dict]:
    """Every case at every size; `reps` is (up to 512 px, above)."""
    johnson = johnson_model()
    vgg, decoder = adain_models()
    cyclegan = cyclegan_model()
    install("johnson_candy", johnson_state_dict(johnson), folder)
    install("adain_vgg", vgg.state_dict(), folder)
    install("adain_decoder", decoder.state_dict(), folder)
    install("cyclegan_style_monet", cyclegan.state_dict(), folder)
    for model in (johnson, vgg, decoder, cyclegan):
        model.to(device)
    enc = nn.Sequential(*list(vgg.children())[:31])  # test.py: vgg[:31]

    ours_j = our_runner("johnson", device, model="candy", precision="fp32")
    ours_a = our_runner("adain", device, style_size=0, precision="fp32")
    ours_c = our_runner("cyclegan", device, model="style_monet", precision="fp32")
    style = synthetic_image(512, 512, seed=2)
    rows = []
    print(
        f"{'case (' + device.type + ')':<22} {'ref s':>9} {'ours s':>9} {'speedup':>9} {'best/best':>9} "
        f"{'max |diff|':>12}"
    )
    for i, size in enumerate(sizes):
        content = synthetic_image(size, size, seed=1)
        cases = [
            ("johnson", functools.partial(ref_johnson, johnson, content), functools.partial(ours_j, content)),
            ("adain", *_adain_pair(enc, decoder, ours_a, content, style)),
            (
                "cyclegan",
                functools.partial(ref_cyclegan, cyclegan, content),
                functools.partial(ours_c, content),
            ),
        ]
        for name, ref, ours in cases:
            rows.append(compare(f"{name} {size}", ref, ours, reps[size > 512], device, warm_up=i == 0))
    return rows


def keep_freed_memory() -> None:
    """Big tensors are otherwise mmap'd fresh on every allocation and each page faults in again:
    at 1024 px that is about a third of a Johnson forward pass on this CPU. Process-wide."""
    libc = ctypes.CDLL("libc.so.6")
    libc.mallopt(-3, 1 << 30)  # M_MMAP_THRESHOLD: serve big blocks from the heap
    libc.mallopt(-1, 1 << 32)  # M_TRIM_THRESHOLD: keep freed heap memory for the next pass


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", type=int, nargs="+", default=[512, 1024])
    parser.add_argument("--reps", type=int, default=3, help="timed runs per case up to 512 px")
    parser.add_argument("--reps-large", type=int, default=2, help="timed runs per case above 512 px")
    parser.add_argument(
        "--keep-freed-memory",
        action="store_true",
        help="make glibc malloc reuse freed blocks instead of returning them to the OS (both sides)",
    )
    args = parser.parse_args()
    if args.keep_freed_memory:
        keep_freed_memory()
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["NST_HOME"] = str(Path(tmp) / "home")
        devices = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
        summary = {
            "bench": "zoo",
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "results": {},
        }
        for device in devices:
            rows = bench(device, args.sizes, (args.reps, args.reps_large), Path(tmp))
            for row in rows:
                summary["results"][f"{device.type}:{row['case'].replace(' ', '@')}"] = {
                    "speedup": round(row["speedup"], 3),
                    "speedup_best": round(row["speedup_best"], 3),
                    "max_abs_diff": float(f"{row['max_abs_diff']:.3g}"),
                }
        print(json.dumps(summary))


if __name__ == "__main__":
    main()
