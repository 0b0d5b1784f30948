"""A quality score for stylised pictures: numbers that compare across methods, presets and sizes,
where loss values do not (each method minimises its own loss, on its own network, at its own size).

Every number is relative to two anchors, so that it reads the same for any photo and painting:
- content: the result's distance from the photo in deep features (CONTENT_TAP), over the distance of
  the photo blurred by BLUR_SIGMA pixels. 0 is the photo itself, 1 is as far as that blurred copy.
- style: per style layer, the sliced Wasserstein distance between the distribution of the result's
  feature vectors and the style's, over the photo's own distance; the mean over the layers. The photo
  scores 1, the style itself 0. Unlike a Gram matrix, the distribution compares every quantile of
  every (random) direction, so it sees both texture statistics and their spread.
- colour: the same distance on the pixels' CIE Lab colours. The photo scores 1, the style 0.
- edges: the correlation of the photo's and the result's gradient magnitude at a quarter of the size,
  where brush texture is averaged away and the outlines of shapes remain. 1 keeps every outline.

It runs on the offline backbone (vgg16-hed), so it works without a download, with a fixed seed for
the random directions: the same pictures always score the same. Where the Inception weights are
installed, each result also gets SIFID (engine/sifid.py), a published measure, against the painting
at the same sizes. What each number misses is in docs/score.md.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F

from engine import sifid
from engine.backbones import DEFAULT_BACKBONE, Backbone, load_backbone
from engine.imaging import images

SIDE = 512  # pictures are scored at the photo's long side, at most this: a fixed scale for texture
CONTENT_TAP = "relu4_2"
STYLE_TAPS = ("relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1")
BLUR_SIGMA = 4.0  # pixels at SIDE, in proportion below: the content anchor, a photo clearly out of focus
DIRECTIONS = 128  # random projections of the sliced Wasserstein distance
QUANTILES = 256  # points compared along each projection
SAMPLES = 16384  # feature vectors drawn from each layer (relu1_1 at 512 px has 262144): quantiles to ~1%
SEED = 0
EDGE_POOL = 4  # edges are compared at 1/EDGE_POOL of the scoring size
# The D65 white point and sRGB's matrix to CIE XYZ, for Lab.
_WHITE = (0.95047, 1.0, 1.08883)
_RGB_TO_XYZ = (
    (0.4124564, 0.3575761, 0.1804375),
    (0.2126729, 0.7151522, 0.0721750),
    (0.0193339, 0.1191920, 0.9503041),
)


@dataclass(frozen=True)
class Score:
    """One result's numbers; lower is closer for the distances, higher is better for edges."""

    content: float
    style: float
    colour: float
    edges: float
    style_layers: dict[str, float]
    sifid: float | None = None  # None where the Inception weights are not installed, or too small

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


class Scorer:
    """Scores pictures against one photo and one painting; their features are computed once."""

    def __init__(self, content: np.ndarray, style: np.ndarray, backbone: Backbone | None = None) -> None:
        self.backbone = backbone or load_backbone(DEFAULT_BACKBONE)
        content, _ = images.split_alpha(content)  # grey or with alpha, as files come
        style, _ = images.split_alpha(style)
        self.side = min(SIDE, max(content.shape[:2]))
        self.size = images.fit_long_side(*content.shape[:2], self.side)
        self.content = self._prepare(content)
        self.style = images.to_tensor(images.at_long_side(style, self.side))
        generator = torch.Generator().manual_seed(SEED)
        self._content_features = self._features(self.content)
        style_features = self._features(self.style)
        self._directions = {
            tap: _unit(torch.randn(style_features[tap].shape[0], DIRECTIONS, generator=generator))
            for tap in STYLE_TAPS
        }
        self._colour_directions = _unit(torch.randn(3, DIRECTIONS, generator=generator))
        self._style_quantiles = {
            tap: _projected_quantiles(style_features[tap].T, self._directions[tap]) for tap in STYLE_TAPS
        }
        self._style_colours = _projected_quantiles(_lab_points(self.style), self._colour_directions)
        self._content_edges = _edges(self.content)
        blurred = _blur(self.content, BLUR_SIGMA * self.side / SIDE)
        self._blur_distance = self._content_distance(self._features(blurred))
        self._photo_style = self._style_distances(self._content_features)
        self._photo_colour = self._colour_distance(self.content)
        self._sifid = sifid.SIFID(self.style) if sifid.installed() else None

    def __call__(self, result: np.ndarray) -> Score:
        """The result's numbers. Its distances to the photo's features and edges are taken at the
        photo's size, its statistics at its own aspect ratio, so that the style itself scores 0."""
        rgb, _ = images.split_alpha(result)
        aligned = self._prepare(rgb)
        features = self._features(aligned)
        own = images.fit_long_side(*rgb.shape[:2], self.side)
        whole = aligned if own == self.size else images.to_tensor(images.resize(rgb, own))
        style = self._style_distances(features if whole is aligned else self._features(whole))
        per_layer = {tap: style[tap] / max(self._photo_style[tap], 1e-12) for tap in STYLE_TAPS}
        return Score(
            content=self._content_distance(features) / max(self._blur_distance, 1e-12),
            style=float(np.mean(list(per_layer.values()))),
            colour=self._colour_distance(whole) / max(self._photo_colour, 1e-12),
            edges=float(torch.corrcoef(torch.stack([self._content_edges, _edges(aligned)]))[0, 1]),
            style_layers=per_layer,
            sifid=self._sifid(whole) if self._sifid is not None else None,
        )

    def _prepare(self, rgb: np.ndarray) -> torch.Tensor:
        """An RGB picture at the photo's scoring size."""
        return images.to_tensor(images.resize(rgb, self.size))

    @torch.no_grad()
    def _features(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        """(C, N) feature vectors of every location, per tap."""
        out = self.backbone(image, (CONTENT_TAP, *STYLE_TAPS))
        return {tap: f[0].flatten(1) for tap, f in out.items()}

    def _content_distance(self, features: dict[str, torch.Tensor]) -> float:
        return float((features[CONTENT_TAP] - self._content_features[CONTENT_TAP]).square().mean())

    def _style_distances(self, features: dict[str, torch.Tensor]) -> dict[str, float]:
        return {
            tap: _distance(features[tap].T, self._directions[tap], self._style_quantiles[tap])
            for tap in STYLE_TAPS
        }

    def _colour_distance(self, image: torch.Tensor) -> float:
        return _distance(_lab_points(image), self._colour_directions, self._style_colours)


def _unit(directions: torch.Tensor) -> torch.Tensor:
    return directions / directions.norm(dim=0, keepdim=True)


def _projected_quantiles(points: torch.Tensor, directions: torch.Tensor) -> torch.Tensor:
    """(QUANTILES, DIRECTIONS): evenly spaced quantiles of (N, C) points along each direction, so
    that sets of different sizes compare; from SAMPLES of the points, drawn with a fixed seed."""
    if points.shape[0] > SAMPLES:
        points = points[
            torch.randperm(points.shape[0], generator=torch.Generator().manual_seed(SEED))[:SAMPLES]
        ]
    projected, _ = torch.sort(points @ directions, dim=0)
    at = torch.linspace(0, projected.shape[0] - 1, QUANTILES).round().long()
    return projected[at]


def _distance(points: torch.Tensor, directions: torch.Tensor, target: torch.Tensor) -> float:
    """The sliced Wasserstein-2 distance of (N, C) points to a set given by its projected quantiles."""
    return math.sqrt(float((_projected_quantiles(points, directions) - target).square().mean()))


def _lab_points(image: torch.Tensor) -> torch.Tensor:
    """(N, 3) CIE Lab colours of an sRGB image (1, 3, H, W) in 0..1."""
    rgb = image[0].flatten(1).T.clamp(0, 1)
    linear = torch.where(rgb <= 0.04045, rgb / 12.92, ((rgb + 0.055) / 1.055) ** 2.4)
    xyz = linear @ torch.tensor(_RGB_TO_XYZ).T / torch.tensor(_WHITE)
    delta = 6 / 29
    f = torch.where(xyz > delta**3, xyz.clamp_min(1e-12) ** (1 / 3), xyz / (3 * delta**2) + 4 / 29)
    return torch.stack([116 * f[:, 1] - 16, 500 * (f[:, 0] - f[:, 1]), 200 * (f[:, 1] - f[:, 2])], dim=1)


def _blur(image: torch.Tensor, sigma: float) -> torch.Tensor:
    radius = math.ceil(3 * sigma)
    x = torch.arange(-radius, radius + 1, dtype=torch.float32)
    kernel = torch.exp(-(x**2) / (2 * sigma**2))
    kernel = (kernel / kernel.sum()).repeat(3, 1, 1, 1)
    padded = F.pad(image, (radius, radius, radius, radius), mode="replicate")
    across = F.conv2d(padded, kernel.view(3, 1, 1, -1), groups=3)
    return F.conv2d(across, kernel.view(3, 1, -1, 1), groups=3)


def _edges(image: torch.Tensor) -> torch.Tensor:
    """Gradient magnitude of the luminance at 1/EDGE_POOL of the size, flattened."""
    luma = (image * torch.tensor([0.2126, 0.7152, 0.0722]).view(1, 3, 1, 1)).sum(1, keepdim=True)
    small = F.avg_pool2d(luma, EDGE_POOL)
    sobel = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]])
    kernels = torch.stack([sobel, sobel.T]).unsqueeze(1)
    gradient = F.conv2d(F.pad(small, (1, 1, 1, 1), mode="replicate"), kernels)
    return gradient.square().sum(1).sqrt().flatten()
