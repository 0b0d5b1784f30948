"""Training Johnson et al.'s feed-forward network: `nst train johnson`, the recipe that
engine/training/loop.py runs.

The loss is pytorch/examples' (perceptual: Gram matrices at relu1_2, relu2_2, relu3_3 and relu4_3,
content at relu2_2) computed on any backbone the engine has, the offline vgg16-hed by default, so
training needs no download. Its terms are relative errors (engine/methods/gatys/losses.py), so the
weights mean the same on every backbone. The network is upstream's layout, 0..255 in and out, so a
trained one-painting model also runs in pytorch/examples' own `stylize`. Several paintings train
one network with a row of instance-norm scales and shifts per painting (Dumoulin et al. 2017).
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from engine import weights
from engine.backbones import Backbone, load_backbone, winograd
from engine.compute import tune
from engine.errors import UserError
from engine.imaging import images
from engine.methods.gatys.losses import Target, gram, total_variation
from engine.nets.inference import pad_to_multiple
from engine.nets.ops import nnpack_layout, upsample_conv3x3, winograd_wanted
from engine.nets.ops import winograd as winograd_scope
from engine.nets.space_to_depth import space_to_depth_conv
from engine.nets.transformer_net import HEAD_BLOCK, TransformerNet
from engine.training.loop import Job, read_at
from engine.training.settings import JohnsonSettings, Settings

METHOD = "johnson"
SETTINGS = JohnsonSettings

STYLE_TAPS = ("relu1_2", "relu2_2", "relu3_3", "relu4_3")  # pytorch/examples' choice
CONTENT_TAPS = ("relu2_2",)
OUTPUT_GAIN = 25.0  # the last layer's initial weights against torch's default: output +- 10 of 255


# --- the network and its loss --------------------------------------------------------------------


def _conv(layer: nn.Module, x: torch.Tensor, upsample: bool = False) -> torch.Tensor:
    """Upstream's ConvLayer (reflection pad, conv) or UpsampleConvLayer (nearest 2x, then the
    same), the latter as the inference net runs it: on the small image, 2.25x fewer multiply-adds
    for the same sums."""
    conv = layer.conv2d
    if upsample:
        return upsample_conv3x3(x, conv)
    pad = conv.kernel_size[0] // 2
    x = F.pad(x, (pad, pad, pad, pad), mode="reflect")
    if winograd_wanted(conv) and winograd.available(x) and winograd.applies(conv, x):
        return winograd.conv(conv, x)  # the residual blocks, on the compute path fp32-winograd
    return conv(x)


class TrainableTransformerNet(TransformerNet):
    """TransformerNet's parameters under upstream's names, with a forward that autograd can run
    (the inference net's is in place). 0..255 in and out, as upstream runs it.

    The last convolution starts at mid-grey with weights OUTPUT_GAIN times torch's default: with
    the default a new network outputs about 0 +- 0.4, black, and Adam at 1e-3 spends about two
    thousand steps only growing that layer's weights towards the 0..255 range.
    """

    def __init__(self, styles: int = 1) -> None:
        super().__init__()
        with torch.no_grad():
            self.deconv3.conv2d.weight.mul_(OUTPUT_GAIN)
            self.deconv3.conv2d.bias.fill_(127.5)
        if styles > 1:  # conditional instance norm: a row of scales and shifts per style
            for norm in self.modules():
                if isinstance(norm, nn.InstanceNorm2d):
                    norm.weight = nn.Parameter(norm.weight.detach().repeat(styles, 1))
                    norm.bias = nn.Parameter(norm.bias.detach().repeat(styles, 1))

    def forward(self, x: torch.Tensor, styles: torch.Tensor) -> torch.Tensor:
        """`styles`: each photo's style, an index into the norms' rows (zeros for one style)."""

        def norm(module: nn.InstanceNorm2d, y: torch.Tensor) -> torch.Tensor:
            scale, shift = module.weight, module.bias
            if scale.dim() == 2:
                scale, shift = scale[styles], shift[styles]
            else:
                scale, shift = scale.expand(len(y), -1), shift.expand(len(y), -1)
            return F.instance_norm(y, eps=module.eps) * scale[..., None, None] + shift[..., None, None]

        y = F.relu(norm(self.in1, _conv(self.conv1, x)))
        y = F.relu(norm(self.in2, _conv(self.conv2, y)))
        y = F.relu(norm(self.in3, _conv(self.conv3, y)))
        if winograd_wanted(self.res1.conv1.conv2d):
            y = nnpack_layout(y)  # NNPACK's layout (the convs with channels_last weights return to it)
        for block in (self.res1, self.res2, self.res3, self.res4, self.res5):
            z = F.relu(norm(block.in1, _conv(block.conv1, y)))
            y = y + norm(block.in2, _conv(block.conv2, z))
        y = F.relu(norm(self.in4, _conv(self.deconv1, y, upsample=True)))
        y = F.relu(norm(self.in5, _conv(self.deconv2, y, upsample=True)))
        return space_to_depth_conv(y, self.deconv3.conv2d, HEAD_BLOCK)  # as inference runs the head

    def upstream_state(self) -> dict[str, torch.Tensor]:
        """The weights in pytorch/examples' layout, float32 on the CPU."""
        return {k: v.detach().float().cpu().contiguous() for k, v in self.state_dict().items()}


class PerceptualLoss:
    """Content, style and smoothness terms of a batch of results against their photos."""

    def __init__(self, backbone: Backbone, paintings: list[torch.Tensor]) -> None:
        self.backbone = backbone
        with torch.no_grad():
            grams = [{t: gram(f) for t, f in backbone(p, STYLE_TAPS).items()} for p in paintings]
        targets = {tap: [Target.of(g[tap]) for g in grams] for tap in STYLE_TAPS}
        self.grams = {tap: torch.cat([t.value for t in ts]) for tap, ts in targets.items()}  # (S, C, C)
        self.norms = {tap: torch.stack([t.norm for t in ts]) for tap, ts in targets.items()}  # (S,)

    def __call__(
        self, result: torch.Tensor, photo: torch.Tensor, styles: torch.Tensor, path: tune.ComputePath
    ) -> dict[str, torch.Tensor]:
        """result and photo: (N, 3, H, W) in 0..1, `styles` each one's painting; each term a mean
        over the batch. The backbone's passes run on `path`; the features come back, and the terms
        are summed, in float32."""
        with torch.no_grad():
            wanted = self.backbone(photo, CONTENT_TAPS, path)
        features = self.backbone(result, tuple(dict.fromkeys(STYLE_TAPS + CONTENT_TAPS)), path)
        content = sum(_relative_error(features[t], wanted[t]) for t in CONTENT_TAPS) / len(CONTENT_TAPS)
        style = sum(self._style_error(gram(features[t]), t, styles) for t in STYLE_TAPS) / len(STYLE_TAPS)
        return {"content": content, "style": style, "tv": total_variation(result)}

    def _style_error(self, grams: torch.Tensor, tap: str, styles: torch.Tensor) -> torch.Tensor:
        """Each photo's Gram error relative to its painting's Gram energy, averaged over the batch."""
        error = (grams - self.grams[tap][styles]).pow(2).flatten(1).mean(1)
        return (error / self.norms[tap][styles]).mean()


def _relative_error(current: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Each photo's squared error relative to its own features' energy, averaged over the batch:
    a photo's term does not depend on which others share its batch (or its process, under torchrun)."""
    error = (current - target).pow(2).flatten(1).mean(1)
    return (error / (target.pow(2).flatten(1).mean(1) + 1e-8)).mean()


def new_net(seed: int, styles: int = 1) -> TrainableTransformerNet:
    """A freshly initialised network for `styles` paintings, from `seed`."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return TrainableTransformerNet(styles)


def stylise(
    net: nn.Module, picture: np.ndarray, style: int, device: torch.device, path: tune.ComputePath
) -> np.ndarray:
    """The network's result in painting `style` for an HxWx3 picture in 0..1, as the validation
    pictures show it."""
    height, width = picture.shape[:2]
    x = torch.from_numpy(picture).permute(2, 0, 1)[None].to(device) * 255
    with torch.no_grad(), path.autocast(device):
        y = net(pad_to_multiple(x, 4), torch.tensor([style], device=device))[..., :height, :width]
    return (y.float() / 255).clamp(0, 1)[0].permute(1, 2, 0).cpu().numpy()


# --- the recipe ----------------------------------------------------------------------------------


def check_new(job: Job) -> None:
    """A new run's request: paintings with distinct names (a mix names them), and photos."""
    if not job.styles or job.content_dir is None:
        raise UserError("bad-option", "a new run needs --style PAINTING and --content-dir PHOTOS")
    names = [p.stem for p in job.styles]
    if len(set(names)) < len(names):
        raise UserError(
            "bad-option", f"the paintings' file names {names} repeat; a mix names them, rename one"
        )


def _paintings(job: Job, state: dict[str, Any]) -> tuple[list[Path], list[str]]:
    """The paintings and their sha256: a new run's from the request, a resumed run's from its
    checkpoint (which the request may repeat), each checked unchanged."""
    if not state:
        paths = [p.resolve() for p in job.styles]
        return paths, [weights.sha256_file(p) for p in paths]
    paths = [Path(p) for p in state["styles"]]
    if job.styles and [p.resolve() for p in job.styles] != paths:
        listed = ", ".join(map(str, paths))
        raise UserError("bad-option", f"this run trains on the paintings {listed}; leave --style out")
    for painting, digest in zip(paths, state["style_sha256"], strict=True):
        if not painting.is_file():
            raise UserError("bad-input", f"a painting this run trains on is gone: {painting}")
        if weights.sha256_file(painting) != digest:
            raise UserError("bad-input", f"{painting} changed since the run started; --restart to use it")
    return paths, list(state["style_sha256"])


def prepare(job: Job, settings: Settings, state: dict[str, Any], device: torch.device) -> JohnsonRecipe:
    assert isinstance(settings, JohnsonSettings)
    paths, hashes = _paintings(job, state)
    return JohnsonRecipe(settings, paths, hashes, device)


class JohnsonRecipe:
    """The transformer network against the perceptual loss of its paintings."""

    def __init__(
        self, settings: JohnsonSettings, paintings: list[Path], hashes: list[str], device: torch.device
    ) -> None:
        self.settings, self.paintings, self.hashes, self.device = settings, paintings, hashes, device
        pictures = [images.to_tensor(read_at(p, settings.style_size), device) for p in paintings]
        backbone = load_backbone(settings.backbone, device=device)
        self.workload = f"train-johnson/{backbone.name}"
        self.loss = PerceptualLoss(backbone, pictures)
        self.net = new_net(settings.seed, len(paintings)).to(device, memory_format=torch.channels_last)

    def record(self) -> dict[str, Any]:
        return {"styles": [str(p) for p in self.paintings], "style_sha256": self.hashes}

    def _styles(self, first: int, count: int) -> torch.Tensor:
        """Each photo's painting, by its global position: the same under torchrun and on resume."""
        return torch.arange(first, first + count, device=self.device) % len(self.paintings)

    def terms(
        self, model: nn.Module, photos: torch.Tensor, first: int, path: tune.ComputePath
    ) -> dict[str, torch.Tensor]:
        styles = self._styles(first, len(photos))
        with path.autocast(self.device), winograd_scope(path.winograd):
            y = model(photos * 255, styles)
        return self.loss(y.float() / 255, photos, styles, path)

    def total(self, terms: dict[str, torch.Tensor]) -> torch.Tensor:
        s = self.settings
        return (
            s.content_weight * terms["content"] + s.style_weight * terms["style"] + s.tv_weight * terms["tv"]
        )

    def learning_rate(self, step: int) -> float:
        return self.settings.lr

    @functools.cached_property
    def _probe_net(self) -> nn.Module:
        """A copy of the network's shape for tuning's timed steps, made once."""
        return new_net(0).to(self.device, memory_format=torch.channels_last)

    def probe(self, path: tune.ComputePath, side: int) -> None:
        probe = self._probe_net
        x = torch.rand(1, 3, side, side, device=self.device).contiguous(memory_format=torch.channels_last)
        self.total(self.terms(probe, x, 0, path)).backward()
        probe.zero_grad(set_to_none=True)

    def validation(self, picture: np.ndarray, path: tune.ComputePath) -> list[tuple[str, np.ndarray]]:
        several = len(self.paintings) > 1
        return [
            (f"-{painting.stem}" if several else "", stylise(self.net, picture, index, self.device, path))
            for index, painting in enumerate(self.paintings)
        ]

    def model_state(self) -> dict[str, torch.Tensor]:
        return self.net.upstream_state()

    def provenance(self) -> dict[str, Any]:
        return {
            "styles": [p.stem for p in self.paintings],  # the names a mix gives weights to
            "style_files": [p.name for p in self.paintings],
            "style_sha256": self.hashes,
            "backbone": self.settings.backbone,
        }
