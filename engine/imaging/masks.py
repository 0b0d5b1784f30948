"""Where and which style: masks at feature resolution, masked statistics, label maps and guides.

Regions (a soft mask per style) and semantic maps (colour-coded label images for the content and
each style) both become a list of `Guide`s: a soft content region plus the style statistics it
takes. Gatys and AdaIN match statistics per guide inside the network (Gatys et al. 2017,
"Controlling Perceptual Factors"; Champandard 2016, "Semantic Style Transfer"); methods whose style
lives in a model blend their output by the feathered masks instead.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from engine.methods.base import Guide, StyleSource

MAX_LABELS = 8  # distinct colours a label map may use
MIN_LABEL_SHARE = 0.002  # colours covering less of all maps are edge antialiasing, not labels
BLEND_TOLERANCE = 0.08  # a colour this close to the line between two labels is their edge
EMPTY = 1e-6  # a mask whose mean is below this selects nothing
_EPS = 1e-5


def layer_mask(
    mask: np.ndarray | torch.Tensor, size: tuple[int, int], device: torch.device | str
) -> torch.Tensor:
    """An HxW (or 1x1xHxW) mask as 1x1xhxw at a feature map's size.

    Shrinking averages areas, so a feature cell gets the share of its pixels inside the region: soft
    edges stay soft at every depth instead of snapping to one side, which is what keeps seams and
    halos out of the result.
    """
    t = mask if isinstance(mask, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(mask, np.float32))
    t = t.to(device=device, dtype=torch.float32).reshape(1, 1, *t.shape[-2:])
    if tuple(t.shape[-2:]) == tuple(size):
        return t
    if t.shape[-2] >= size[0] and t.shape[-1] >= size[1]:
        return F.adaptive_avg_pool2d(t, size)
    return F.interpolate(t, size=size, mode="bilinear", align_corners=False)


def masked_mean_std(features: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and std of (1, C, h, w) features weighted by a (1, 1, h, w) mask, in float32.

    The variance is the unbiased one for weighted samples, so a uniform mask gives exactly AdaIN's
    own (unbiased) statistics.
    """
    f, m = features[0].float(), mask[0].float()
    total = m.sum().clamp_min(_EPS)
    mean = (f * m).sum(dim=(1, 2)) / total
    spread = total - m.pow(2).sum() / total  # N - 1 for a uniform mask of N ones
    var = ((f - mean[:, None, None]).pow(2) * m).sum(dim=(1, 2)) / spread.clamp_min(_EPS)
    return mean, (var + _EPS).sqrt()


def label_maps(maps: list[np.ndarray], max_labels: int = MAX_LABELS) -> list[np.ndarray]:
    """Colour-coded HxWx3 maps to HxW integer labels with one shared palette.

    The palette is the most common colours over all maps together (so red means the same label in
    the content's map and the style's), skipping mixes of two commoner ones (antialiased edges);
    every pixel takes the nearest palette colour.
    """
    pixels = np.concatenate([m[..., :3].reshape(-1, 3) for m in maps])
    bins = np.round(pixels * 15).astype(np.int32)
    keys, counts = np.unique(bins[:, 0] * 256 + bins[:, 1] * 16 + bins[:, 2], return_counts=True)
    colours = np.stack([keys // 256, keys // 16 % 16, keys % 16], axis=1) / 15.0
    chosen: list[np.ndarray] = []
    for i in np.argsort(counts, kind="stable")[::-1]:
        if len(chosen) == max_labels or (chosen and counts[i] < MIN_LABEL_SHARE * len(pixels)):
            break
        if not any(_between(colours[i], a, b) for a in chosen for b in chosen):
            chosen.append(colours[i])
    palette = np.stack(chosen)
    out = []
    for m in maps:
        colours = m[..., :3].astype(np.float32)
        distances = np.stack([np.square(colours - c).sum(axis=2) for c in palette.astype(np.float32)])
        out.append(distances.argmin(axis=0).astype(np.int32))
    return out


def _between(colour: np.ndarray, a: np.ndarray, b: np.ndarray) -> bool:
    """Whether `colour` is a mix of a and b (an antialiased edge between two labels), not a label."""
    span = b - a
    if not span.any():
        return False
    t = float(np.clip(np.dot(colour - a, span) / np.dot(span, span), 0.0, 1.0))
    return 0.0 < t < 1.0 and float(np.abs(a + t * span - colour).max()) < BLEND_TOLERANCE


def label_masks(labels: np.ndarray, count: int, strictness: float) -> list[np.ndarray]:
    """One soft mask per label: strictness 1 is each label alone, 0 lets every label see everything."""
    spread = (1.0 - strictness) / count
    return [((labels == k) * strictness + spread).astype(np.float32) for k in range(count)]


def region_guides(regions: list[tuple[np.ndarray, int | None]], weights: list[float]) -> list[Guide]:
    """Guides for (mask, style index or None for every style blended by `weights`) pairs.

    Masks are feathered a little, so a hard-edged selection or channel meets the kept content
    across a short ramp rather than a seam.
    """
    everyone = [StyleSource(i, w) for i, w in enumerate(weights) if w > 0]
    return [
        Guide(
            feather(mask, feather_sigma(*mask.shape)),
            [StyleSource(style, 1.0)] if style is not None else everyone,
        )
        for mask, style in regions
        if mask.mean() > EMPTY
    ]


def semantic_guides(
    content_map: np.ndarray, style_maps: list[np.ndarray | None], weights: list[float], strictness: float
) -> list[Guide]:
    """One guide per label: the content's label-X region takes the statistics of each style's X.

    A style without a map, or without that label, lends its whole statistics to the label.
    """
    given = [m for m in style_maps if m is not None]
    content_labels, *style_labels = label_maps([content_map, *given])
    count = int(max(lab.max() for lab in (content_labels, *style_labels))) + 1
    per_style: list[list[np.ndarray] | None] = []
    found = iter(style_labels)
    for m in style_maps:
        per_style.append(None if m is None else label_masks(next(found), count, strictness))
    guides = []
    for k, mask in enumerate(label_masks(content_labels, count, strictness)):
        if mask.mean() <= EMPTY:
            continue
        sources = []
        for index, (weight, masks) in enumerate(zip(weights, per_style, strict=True)):
            if weight > 0:
                own = None if masks is None or masks[k].mean() <= EMPTY else masks[k]
                sources.append(StyleSource(index, weight, own))
        guides.append(Guide(mask, sources))
    return guides


def coverage(guides: list[Guide]) -> np.ndarray:
    """How much of each pixel the guides style (0: keeps the content), HxW in 0..1."""
    return np.clip(sum(g.mask for g in guides), 0.0, 1.0).astype(np.float32)


def feather(mask: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian-blurred HxW mask, so a hard-edged region blends over a few pixels without a seam."""
    if sigma <= 0:
        return mask
    radius = max(1, int(3 * sigma))
    x = torch.arange(-radius, radius + 1, dtype=torch.float32)
    kernel = torch.exp(-0.5 * (x / sigma) ** 2)
    kernel = kernel / kernel.sum()
    t = torch.from_numpy(np.ascontiguousarray(mask, dtype=np.float32))[None, None]
    t = F.pad(t, (radius, radius, radius, radius), mode="replicate")
    t = F.conv2d(t, kernel.reshape(1, 1, 1, -1))
    t = F.conv2d(t, kernel.reshape(1, 1, -1, 1))
    return t[0, 0].numpy()


def feather_sigma(height: int, width: int) -> float:
    """Feathering that scales with the image: about 0.4% of the long side, at least one pixel."""
    return max(1.0, max(height, width) / 256)


def blend(result: np.ndarray, content: np.ndarray, guides: list[Guide]) -> np.ndarray:
    """result where the guides style the image, content elsewhere (the masks are already soft)."""
    amount = coverage(guides)[..., None]
    return (amount * result + (1.0 - amount) * content).astype(np.float32)
