"""REFERENCE ONLY, not engine code: the classic single-scale Gatys loop that bench/gatys.py races.

A faithful transcription of the PyTorch tutorial "Neural Transfer Using PyTorch"
(https://pytorch.org/tutorials/advanced/neural_style_tutorial.html, `get_style_model_and_losses` and
`run_style_transfer`), with the layer choice of neural-style-pt (github.com/ProGamerGov/neural-style-pt):
- an nn.Sequential built layer by layer from torchvision's `vggNN().features`, Normalization first,
  every ReLU replaced by `nn.ReLU(inplace=False)` as the tutorial does;
- ContentLoss after relu4_2 and StyleLoss after relu1_1, 2_1, 3_1, 4_1, 5_1, each computing its
  target once when it is inserted, the model truncated after the last loss module;
- Gram = mm(F, F^T) / (a*b*c*d), MSE losses, style weight 1e6 and content weight 1 (tutorial);
- `torch.optim.LBFGS([img])` with default settings (max_iter=20 per step(), no line search) and the
  tutorial's closure, which clamps the image to 0..1 before every evaluation.
The tutorial's `while run[0] <= num_steps` overshoots to the next multiple of 20 evaluations; here
`iterations` must be a multiple of 20 and the loop stops exactly there (no other change).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
import torchvision
from torch import nn

CONTENT_LAYERS = ("relu4_2",)
STYLE_LAYERS = ("relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1")
STYLE_WEIGHT = 1e6
CONTENT_WEIGHT = 1.0
LBFGS_MAX_ITER = 20  # torch.optim.LBFGS default: iterations (and evaluations) per step() call


class ContentLoss(nn.Module):
    def __init__(self, target: torch.Tensor) -> None:
        super().__init__()
        self.target = target.detach()
        self.loss = torch.zeros(())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.loss = F.mse_loss(x, self.target)
        return x


def gram_matrix(x: torch.Tensor) -> torch.Tensor:
    a, b, c, d = x.size()
    features = x.view(a * b, c * d)
    g = torch.mm(features, features.t())
    return g.div(a * b * c * d)


class StyleLoss(nn.Module):
    def __init__(self, target_feature: torch.Tensor) -> None:
        super().__init__()
        self.target = gram_matrix(target_feature).detach()
        self.loss = torch.zeros(())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.loss = F.mse_loss(gram_matrix(x), self.target)
        return x


class Normalization(nn.Module):
    """The tutorial's (img - mean) / std, plus an optional RGB->BGR flip for Caffe-trained weights."""

    def __init__(self, mean: Sequence[float], std: Sequence[float], bgr: bool = False) -> None:
        super().__init__()
        self.bgr = bgr
        # Buffers, so that `.to(device)` takes them along (the tutorial creates them on its device).
        self.register_buffer("mean", torch.tensor(mean).view(-1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(-1, 1, 1), persistent=False)

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        if self.bgr:
            img = img.flip(1)
        return (img - self.mean) / self.std


def torchvision_features(arch: str, ceil_mode: bool = False) -> nn.Sequential:
    """torchvision's `vgg16().features` or `vgg19().features`, pools as the weights expect.

    Built by the same `make_layers` call torchvision's `vgg19()` makes, minus the classifier's 120M
    parameters, whose random init alone takes seconds; every conv is overwritten afterwards.
    """
    vgg = torchvision.models.vgg
    features = vgg.make_layers(vgg.cfgs[{"vgg16": "D", "vgg19": "E"}[arch]], batch_norm=False)
    for layer in features:
        if isinstance(layer, nn.MaxPool2d):
            layer.ceil_mode = ceil_mode
    return features


def copy_conv_weights(features: nn.Sequential, convs: Sequence[nn.Conv2d]) -> None:
    """Give the torchvision stack the backbone's conv weights, conv by conv in depth order."""
    targets = [m for m in features if isinstance(m, nn.Conv2d)]
    if len(targets) != len(convs):
        raise ValueError(f"{len(targets)} convs in the reference, {len(convs)} given")
    with torch.no_grad():
        for target, source in zip(targets, convs, strict=True):
            target.weight.copy_(source.weight)
            target.bias.copy_(source.bias)


def get_style_model_and_losses(
    cnn: nn.Sequential,
    normalization: Normalization,
    style_img: torch.Tensor,
    content_img: torch.Tensor,
) -> tuple[nn.Sequential, list[StyleLoss], list[ContentLoss]]:
    """The tutorial's function, naming layers reluB_L (neural-style-pt's names) instead of conv_N."""
    content_losses: list[ContentLoss] = []
    style_losses: list[StyleLoss] = []
    model = nn.Sequential(normalization)
    block, index = 1, 0
    for layer in cnn.children():
        if isinstance(layer, nn.Conv2d):
            index += 1
            name = f"conv{block}_{index}"
        elif isinstance(layer, nn.ReLU):
            name = f"relu{block}_{index}"
            layer = nn.ReLU(inplace=False)
        elif isinstance(layer, nn.MaxPool2d):
            name = f"pool{block}"
            block, index = block + 1, 0
        else:
            raise RuntimeError(f"Unrecognized layer: {layer.__class__.__name__}")
        model.add_module(name, layer)
        if name in CONTENT_LAYERS:
            target = model(content_img).detach()
            content_loss = ContentLoss(target)
            model.add_module(f"content_loss_{name}", content_loss)
            content_losses.append(content_loss)
        if name in STYLE_LAYERS:
            target_feature = model(style_img).detach()
            style_loss = StyleLoss(target_feature)
            model.add_module(f"style_loss_{name}", style_loss)
            style_losses.append(style_loss)
    for i in range(len(model) - 1, -1, -1):
        if isinstance(model[i], (ContentLoss, StyleLoss)):
            break
    model = model[: i + 1]
    model.eval()
    model.requires_grad_(False)
    return model, style_losses, content_losses


class Reference:
    """The tutorial's model, loss modules, optimiser and closure for one content/style pair."""

    def __init__(
        self, cnn: nn.Sequential, normalization: Normalization, content: torch.Tensor, style: torch.Tensor
    ) -> None:
        self.model, self.style_losses, self.content_losses = get_style_model_and_losses(
            cnn, normalization, style, content
        )
        self.image = content.clone().requires_grad_(True)  # the tutorial's input_img = content_img.clone()
        self.optimizer = torch.optim.LBFGS([self.image])
        self.evaluations = 0

    def closure(self) -> torch.Tensor:
        """The tutorial's closure: clamp, forward, weighted sum of the loss modules, backward."""
        with torch.no_grad():
            self.image.clamp_(0, 1)
        self.optimizer.zero_grad()
        self.model(self.image)
        style_score = sum(sl.loss for sl in self.style_losses) * STYLE_WEIGHT
        content_score = sum(cl.loss for cl in self.content_losses) * CONTENT_WEIGHT
        loss = style_score + content_score
        loss.backward()
        self.evaluations += 1
        return style_score + content_score

    def run(self, iterations: int, after_step: Callable[[], None] | None = None) -> torch.Tensor:
        """`iterations` L-BFGS iterations (a multiple of 20), then the tutorial's final clamp."""
        if iterations % LBFGS_MAX_ITER:
            raise ValueError(f"iterations must be a multiple of {LBFGS_MAX_ITER}")
        for _ in range(iterations // LBFGS_MAX_ITER):
            self.optimizer.step(self.closure)
            if after_step is not None:
                after_step()
        with torch.no_grad():
            self.image.clamp_(0, 1)
        return self.image.detach()

    @torch.no_grad()
    def loss_of(self, image: torch.Tensor) -> float:
        """The reference objective at `image` (clamped to 0..1, as the tutorial's output is)."""
        self.model(image.clamp(0, 1))
        style_score = sum(sl.loss for sl in self.style_losses) * STYLE_WEIGHT
        content_score = sum(cl.loss for cl in self.content_losses) * CONTENT_WEIGHT
        return float(style_score + content_score)

    @torch.no_grad()
    def terms_of(self, image: torch.Tensor) -> dict[str, float]:
        """The weighted terms of `loss_of`, per layer: which parts of the objective an image pays for."""
        self.model(image.clamp(0, 1))
        terms = {
            name: float(sl.loss) * STYLE_WEIGHT
            for name, sl in zip(STYLE_LAYERS, self.style_losses, strict=True)
        }
        for name, cl in zip(CONTENT_LAYERS, self.content_losses, strict=True):
            terms[f"content {name}"] = float(cl.loss) * CONTENT_WEIGHT
        return terms
