"""Johnson, AdaIN and CycleGAN inference: the engine ("ours" in the output) against faithful
re-implementations of upstream.

The references follow the upstream inference code step by step, copies and conversions included:
- Johnson: pytorch/examples fast_neural_style/neural_style/transformer_net.py and neural_style.py
  stylize() (ToTensor, x255, no_grad forward, clone().clamp(0, 255) in utils.save_image);
- AdaIN: naoto0804/pytorch-AdaIN net.py, function.py (calc_mean_std, adaptive_instance_normalization)
  and test.py style_transfer();
- CycleGAN: junyanz/pytorch-CycleGAN-and-pix2pix models/networks.py ResnetGenerator (resnet_9blocks,
  instance norm, no dropout) and test.py (Normalize to -1..1, forward, util.tensor2im's (x + 1) / 2).
Both sides get the same fixed-seed random weights (saved in the upstream layouts; the engine's side
installs them through engine.weights) and the same synthetic images. Each side runs in its own fresh
process, as its authors run it: the reference as upstream leaves the process, the engine's
configured as the engine configures itself at start-up (engine.compute.allocator). The processes
alternate, reference and engine, for several rounds; each warms up once per size, then times
`--reps` runs. The table gives median seconds over all rounds, the ratio of the medians and of the
fastest runs, and the max abs difference of the 0..1 outputs.

    .venv/bin/python bench/zoo.py            # 512 and 1024 px: ~15 min on 2 idle CPU cores
    .venv/bin/python bench/zoo.py --sizes 256 --rounds 1 --reps 1
    .venv/bin/python bench/zoo.py --methods adain --rounds 1
"""

from __future__ import annotations

import argparse
import functools
import itertools
import json
import os
import statistics
import subprocess
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


# --- one side in its own process ------------------------------------------------------------------

METHODS = ("johnson", "adain", "cyclegan")
WEIGHT_FILES = {
    "johnson": ("johnson_candy",),
    "adain": ("adain_vgg", "adain_decoder"),
    "cyclegan": ("cyclegan_style_monet",),
}


def save_weights(folder: Path) -> None:
    """The fixed-seed models' state dicts, saved as upstream saves them, and installed for the engine."""
    from engine import weights

    vgg, decoder = adain_models()
    states = {
        "johnson_candy": johnson_state_dict(johnson_model()),
        "adain_vgg": vgg.state_dict(),
        "adain_decoder": decoder.state_dict(),
        "cyclegan_style_monet": cyclegan_model().state_dict(),
    }
    for weight_id, state in states.items():
        torch.save(state, folder / f"{weight_id}.pth")
        weights.import_file(weight_id, folder / f"{weight_id}.pth")


def ref_runner(method: str, device: torch.device, folder: Path) -> Callable[..., np.ndarray]:
    """The upstream model built and loaded from the saved file, as each project's test script does."""

    def load(model: nn.Module, weight_id: str) -> nn.Module:
        state = torch.load(folder / f"{weight_id}.pth", map_location="cpu", weights_only=True)
        if method == "johnson":  # neural_style.py stylize(): drop the stale running-stat keys
            state = {k: v for k, v in state.items() if not k.endswith((".running_mean", ".running_var"))}
        model.load_state_dict(state)
        return model.to(device).eval()

    if method == "johnson":
        net = load(RefTransformerNet(), "johnson_candy")
        return lambda content: ref_johnson(net, content)
    if method == "adain":
        vgg = load(ref_adain_vgg(), "adain_vgg")
        decoder = load(ref_adain_decoder(), "adain_decoder")
        enc = nn.Sequential(*list(vgg.children())[:31])  # test.py: vgg[:31]
        return lambda content, style: ref_adain(enc, decoder, content, style)
    net = load(RefResnetGenerator(), "cyclegan_style_monet")
    return lambda content: ref_cyclegan(net, content)


def our_runner(method_name: str, device: torch.device, precision: str) -> Callable[..., np.ndarray]:
    """The engine through the method's own entry point, the style at its full size for AdaIN, with the
    `precision` setting (auto: the path the engine measures fastest on this machine, as users get)."""
    from engine.compute.cache import ModelCache
    from engine.errors import CancelToken
    from engine.methods.base import PreparedJob, RunContext, Style

    settings = {
        "johnson": {"model": "candy"},
        "adain": {"style_size": 0},
        "cyclegan": {"model": "style_monet"},
    }[method_name]
    method = __import__(f"engine.methods.{method_name}", fromlist=["METHOD"]).METHOD
    ctx = RunContext(device=device, progress=lambda _: None, cancel=CancelToken(), cache=ModelCache())
    parsed = method.parse_params({**settings, "precision": precision})

    def run(content: np.ndarray, *styles: np.ndarray) -> np.ndarray:
        job = PreparedJob(content=content, styles=[Style(s) for s in styles], params=parsed)
        return method.run(job, ctx)

    return run


def timed(fn: Callable[[], np.ndarray], device: torch.device) -> tuple[float, np.ndarray]:
    from engine.compute.devices import synchronize

    synchronize(device)
    start = time.perf_counter()
    out = fn()
    synchronize(device)
    return time.perf_counter() - start, out


def worker(
    side: str, method: str, device: torch.device, sizes: list[int], reps: int, folder: Path, precision: str
) -> None:
    """One side of one method: per size one untimed run, then `reps` timed ones; prints the times
    as JSON and leaves the last output in `folder` for the parent to compare."""
    if side == "ours":
        from engine.compute import allocator

        allocator.configure()  # as engine.cli.main() does first
    run = our_runner(method, device, precision) if side == "ours" else ref_runner(method, device, folder)
    style = synthetic_image(512, 512, seed=2)
    # Each call gets a new style (one pixel nudged, the same sequence on both sides): the engine's
    # per-style statistics cache never hits, so both sides encode the style every time, as upstream does.
    nudges = itertools.count(1)

    def call(content: np.ndarray) -> np.ndarray:
        if method != "adain":
            return run(content)
        nudged = style.copy()
        nudged[0, 0, 0] = next(nudges) * 1e-7
        return run(content, nudged)

    times: dict[int, list[float]] = {}
    for size in sizes:
        content = synthetic_image(size, size, seed=1)
        call(content)
        runs = [timed(functools.partial(call, content), device) for _ in range(reps)]
        times[size] = [t for t, _ in runs]
        np.save(folder / f"out-{side}-{method}-{size}.npy", runs[-1][1])
    print(json.dumps(times))


# --- the comparison ------------------------------------------------------------------------------


def run_worker(side: str, method: str, args: argparse.Namespace, device: str, folder: Path) -> dict:
    command = [sys.executable, __file__, "--worker", side, "--method", method, "--device", device]
    command += ["--folder", str(folder), "--reps", str(args.reps), "--precision", args.precision]
    command += ["--sizes", *map(str, args.sizes)]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode:
        raise SystemExit(f"{side} {method} failed:\n{done.stderr[-3000:]}")
    return {int(k): v for k, v in json.loads(done.stdout.strip().splitlines()[-1]).items()}


def bench(device: str, args: argparse.Namespace, folder: Path) -> list[dict]:
    """`args.rounds` rounds; in each, per method, a reference and an engine process, alternating
    which goes first. Returns one row per method and size."""
    times = {(side, m, s): [] for side in ("ref", "ours") for m in args.methods for s in args.sizes}
    diffs = {(m, s): 0.0 for m in args.methods for s in args.sizes}
    for round_ in range(args.rounds):
        for method in args.methods:
            for side in ("ref", "ours") if round_ % 2 == 0 else ("ours", "ref"):
                for size, runs in run_worker(side, method, args, device, folder).items():
                    times[side, method, size] += runs
            for size in args.sizes:
                ref, ours = (np.load(folder / f"out-{side}-{method}-{size}.npy") for side in ("ref", "ours"))
                diffs[method, size] = max(diffs[method, size], float(np.abs(ref - ours).max()))
    rows = []
    for size in args.sizes:
        for method in args.methods:
            ref, ours = times["ref", method, size], times["ours", method, size]
            row = {
                "case": f"{method} {size}",
                "ref_s": statistics.median(ref),
                "ours_s": statistics.median(ours),
            }
            row["speedup"] = row["ref_s"] / row["ours_s"]
            # On a shared machine the fastest runs are the least disturbed: their ratio is shown too.
            row["speedup_best"] = min(ref) / min(ours)
            row["max_abs_diff"] = diffs[method, size]
            rows.append(row)
            print(
                f"{device + ': ' + row['case']:<22} {row['ref_s']:>9.3f} {row['ours_s']:>9.3f} "
                f"{row['speedup']:>8.2f}x {row['speedup_best']:>8.2f}x {row['max_abs_diff']:>12.2e}",
                flush=True,
            )
    return rows


def main() -> None:
    from engine.compute import tune
    from engine.compute.devices import gpu_name

    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", type=int, nargs="+", default=[512, 1024])
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    parser.add_argument("--rounds", type=int, default=3, help="reference/ours process pairs per method")
    parser.add_argument("--reps", type=int, default=1, help="timed runs per size in each process")
    parser.add_argument(
        "--precision", default="auto", help="the engine's precision setting (default auto, as users run it)"
    )
    parser.add_argument("--worker", choices=("ref", "ours"), help=argparse.SUPPRESS)
    parser.add_argument("--method", choices=METHODS, help=argparse.SUPPRESS)
    parser.add_argument("--device", default="cpu", help=argparse.SUPPRESS)
    parser.add_argument("--folder", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(
            args.worker,
            args.method,
            torch.device(args.device),
            args.sizes,
            args.reps,
            args.folder,
            args.precision,
        )
        return
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["NST_HOME"] = str(Path(tmp) / "home")  # inherited by the workers
        save_weights(Path(tmp))
        devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
        summary = {
            "bench": "zoo",
            "machine": tune.machine(),
            "gpu": gpu_name(torch.device("cuda")) if "cuda" in devices else None,
            "precision": args.precision,
            "rounds": args.rounds,
            "reps": args.reps,
            "load_before": os.getloadavg(),
            "results": {},
        }
        print(f"{'case':<22} {'ref s':>9} {'ours s':>9} {'speedup':>9} {'best/best':>9} {'max |diff|':>12}")
        for device in devices:
            for row in bench(device, args, Path(tmp)):
                summary["results"][f"{device}:{row['case'].replace(' ', '@')}"] = {
                    "ref_s": round(row["ref_s"], 3),
                    "ours_s": round(row["ours_s"], 3),
                    "speedup": round(row["speedup"], 3),
                    "speedup_best": round(row["speedup_best"], 3),
                    "max_abs_diff": float(f"{row['max_abs_diff']:.3g}"),
                }
        summary["load_after"] = os.getloadavg()
        summary["paths"] = tune.summary()  # what auto chose, per method and size, from the measured times
        print(json.dumps(summary))


if __name__ == "__main__":
    main()
