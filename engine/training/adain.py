"""Training AdaIN's decoder for the engine's own encoder: `nst train adain`, the recipe that
engine/training/loop.py runs.

Follows naoto0804/pytorch-AdaIN train.py: each photo's relu4_1 features take the channel means and
deviations of a painting's (AdaIN), the decoder turns them into a picture, and the loss asks that
picture's relu4_1 features to be the AdaIN target (content) and its means and deviations at
relu1_1..relu4_1 to be the painting's (style); Adam with upstream's decaying rate, 256 px crops
of pictures scaled to 512. Two changes: the encoder is any engine backbone, the offline vgg16-hed
by default, so the decoder needs no download to train or to run; and the terms are relative errors,
each against its target's energy, so the weights mean the same on every backbone.

The decoder is upstream's layout (the file loads where naoto0804's decoder.pth loads), installed
as the adain method's model NAME; its encoder is named in its provenance.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from engine.backbones import Backbone, load_backbone
from engine.compute import tune
from engine.errors import UserError
from engine.imaging import images
from engine.methods.adain import PUBLISHED
from engine.nets.adain_nets import ENCODER_TAP, decoder_layers
from engine.nets.inference import pad_to_multiple
from engine.training.loop import Job, read_at, same_path
from engine.training.photos import Photos, find_photos, held_out
from engine.training.settings import AdaINSettings, Settings

METHOD = "adain"
SETTINGS = AdaINSettings
STYLE_TAPS = ("relu1_1", "relu2_1", "relu3_1", ENCODER_TAP)  # upstream's
EPS = 1e-5  # upstream calc_mean_std: added to the (unbiased) variance
PAINTING_SEED = 1  # added to the seed for the paintings' order, so it is not the photos'


def mean_std(feat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Each sample's per-channel mean and sqrt(unbiased variance + EPS): (N, C) each."""
    var, mean = torch.var_mean(feat.flatten(2), dim=2)
    return mean, (var + EPS).sqrt()


def adain(content: torch.Tensor, style: torch.Tensor) -> torch.Tensor:
    """Each content sample's features with its style sample's channel means and deviations."""
    (c_mean, c_std), (s_mean, s_std) = mean_std(content), mean_std(style)
    scale = (s_std / c_std)[..., None, None]
    return (content - c_mean[..., None, None]) * scale + s_mean[..., None, None]


def _relative(error: torch.Tensor, energy: torch.Tensor) -> torch.Tensor:
    """Per-sample squared errors (N, ...) over their targets' energy, averaged over the batch."""
    return (error.pow(2).flatten(1).mean(1) / (energy.flatten(1).mean(1) + 1e-8)).mean()


def new_decoder(seed: int) -> nn.Sequential:
    """Upstream's decoder, freshly initialised from `seed`, whose last conv starts at mid-grey: a
    default start outputs about 0, black, which the encoder sees as an empty picture."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        decoder = decoder_layers()
    with torch.no_grad():
        decoder[-1].bias.fill_(0.5)
    return decoder


def check_new(job: Job) -> None:
    if job.name == PUBLISHED:
        raise UserError("bad-option", f"{PUBLISHED!r} names the published decoder; choose another name")
    if job.style_dir is None or job.content_dir is None:
        raise UserError("bad-option", "a new run needs --style-dir PAINTINGS and --content-dir PHOTOS")


def prepare(job: Job, settings: Settings, state: dict[str, Any], device: torch.device) -> AdaINRecipe:
    assert isinstance(settings, AdaINSettings)
    if not state:
        assert job.style_dir is not None  # check_new refused a run without
        folder = job.style_dir.resolve()
        names, validation = held_out(folder, find_photos(folder, "--style-dir"))
        skipped: list[str] = []
    else:
        folder = same_path(job.style_dir, state["style_dir"], "the paintings in")
        names, validation, skipped = (
            list(state["paintings"]),
            state["validation_style"],
            state["style_skipped"],
        )
    paintings = Photos(folder, names, settings.size, settings.seed + PAINTING_SEED, settings.CROP_ZOOM)
    paintings.skipped.update(skipped)
    return AdaINRecipe(settings, paintings, validation, device)


class AdaINRecipe:
    """The decoder against the content and style terms of AdaIN targets, through a frozen encoder."""

    def __init__(
        self, settings: AdaINSettings, paintings: Photos, validation: str | None, device: torch.device
    ) -> None:
        self.settings, self.paintings, self.validation_style, self.device = (
            settings,
            paintings,
            validation,
            device,
        )
        self.encoder: Backbone = load_backbone(settings.backbone, device=device)
        self.workload = f"train-adain/{self.encoder.name}"
        self.net = new_decoder(settings.seed).to(device, memory_format=torch.channels_last)

    def record(self) -> dict[str, Any]:
        return {
            "style_dir": str(self.paintings.folder),
            "paintings": self.paintings.names,
            "validation_style": self.validation_style,
            "style_skipped": sorted(self.paintings.skipped),
        }

    def terms(
        self, model: nn.Module, photos: torch.Tensor, first: int, path: tune.ComputePath
    ) -> dict[str, torch.Tensor]:
        paintings = self.paintings.batch(first, len(photos)).to(self.device)
        return self._terms(model, photos, paintings.contiguous(memory_format=torch.channels_last), path)

    def _terms(
        self, model: nn.Module, photos: torch.Tensor, paintings: torch.Tensor, path: tune.ComputePath
    ) -> dict[str, torch.Tensor]:
        with torch.no_grad():
            style = self.encoder(paintings, STYLE_TAPS, path)
            target = adain(self.encoder(photos, (ENCODER_TAP,), path)[ENCODER_TAP], style[ENCODER_TAP])
        with path.autocast(self.device):
            made = model(target)
        features = self.encoder(made.float(), STYLE_TAPS, path)
        content = _relative(features[ENCODER_TAP] - target, target.pow(2))
        terms = []
        for tap in STYLE_TAPS:
            (mean, std), (want_mean, want_std) = mean_std(features[tap]), mean_std(style[tap])
            energy = want_mean.pow(2) + want_std.pow(2)
            terms.append(_relative(mean - want_mean, energy) + _relative(std - want_std, energy))
        return {"content": content, "style": sum(terms) / len(terms)}

    def total(self, terms: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.settings.content_weight * terms["content"] + self.settings.style_weight * terms["style"]

    def learning_rate(self, step: int) -> float:
        return self.settings.lr / (1.0 + self.settings.lr_decay * step)

    @functools.cached_property
    def _probe_net(self) -> nn.Module:
        """A copy of the network's shape for tuning's timed steps, made once."""
        return new_decoder(0).to(self.device, memory_format=torch.channels_last)

    def probe(self, path: tune.ComputePath, side: int) -> None:
        probe = self._probe_net
        x = torch.rand(2, 3, side, side, device=self.device).contiguous(memory_format=torch.channels_last)
        self.total(self._terms(probe, x[:1], x[1:], path)).backward()
        probe.zero_grad(set_to_none=True)

    def validation(self, picture: np.ndarray, path: tune.ComputePath) -> list[tuple[str, np.ndarray]]:
        if self.validation_style is None:
            return []
        painting = images.to_tensor(read_at(Path(self.validation_style), self.settings.size * 2), self.device)
        height, width = picture.shape[:2]
        photo = pad_to_multiple(images.to_tensor(picture, self.device), self.settings.SIZE_MULTIPLE)
        with torch.no_grad():
            style = self.encoder(painting, (ENCODER_TAP,), path)[ENCODER_TAP]
            target = adain(self.encoder(photo, (ENCODER_TAP,), path)[ENCODER_TAP], style)
            with path.autocast(self.device):
                made = self.net(target)
        return [("", made.float()[0, :, :height, :width].clamp(0, 1).permute(1, 2, 0).cpu().numpy())]

    def model_state(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().float().cpu().contiguous() for k, v in self.net.state_dict().items()}

    def provenance(self) -> dict[str, Any]:
        return {
            "backbone": self.settings.backbone,  # the encoder the decoder was trained for
            "paintings": len(self.paintings.names) - len(self.paintings.skipped),
            "paintings_skipped": len(self.paintings.skipped),
            "style_dir": str(self.paintings.folder),
        }
