"""Colour transforms used by "preserve original colours".

Two classic recipes (Gatys et al. 2016, *Preserving Color in Neural Artistic Style Transfer*):
luminance-only transfer, which keeps the content's chroma exactly, and colour-histogram matching,
which recolours the style image to the content's mean and covariance before the transfer.
"""

from __future__ import annotations

import numpy as np

# Full-range BT.601 YCbCr, as JPEG uses; exact inverse below.
_RGB_TO_YCC = np.array(
    [[0.299, 0.587, 0.114], [-0.168736, -0.331264, 0.5], [0.5, -0.418688, -0.081312]], dtype=np.float64
)
_YCC_TO_RGB = np.linalg.inv(_RGB_TO_YCC)


def rgb_to_ycc(rgb: np.ndarray) -> np.ndarray:
    return (rgb @ _RGB_TO_YCC.T.astype(np.float32)).astype(np.float32)


def ycc_to_rgb(ycc: np.ndarray) -> np.ndarray:
    return (ycc @ _YCC_TO_RGB.T.astype(np.float32)).astype(np.float32)


def luminance_transfer(result: np.ndarray, content: np.ndarray) -> np.ndarray:
    """Keep the result's luma and the content's chroma (both HxWx3, same size)."""
    ycc = rgb_to_ycc(content)
    ycc[..., 0] = rgb_to_ycc(result)[..., 0]
    return ycc_to_rgb(ycc).clip(0.0, 1.0)


def _sqrtm(cov: np.ndarray, inverse: bool = False) -> np.ndarray:
    values, vectors = np.linalg.eigh(cov)
    values = np.clip(values, 1e-8, None)
    power = -0.5 if inverse else 0.5
    return (vectors * values**power) @ vectors.T


def match_color_histogram(source: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Recolour `source` so its RGB mean and covariance equal `target`'s.

    Uses the symmetric ("sym") solution, the one that rotates colours least, so hues move as little
    as possible while the statistics match exactly.
    """
    src = source.reshape(-1, 3).astype(np.float64)
    tgt = target.reshape(-1, 3).astype(np.float64)
    mu_s, mu_t = src.mean(0), tgt.mean(0)
    cov_s = np.cov(src, rowvar=False) + np.eye(3) * 1e-5
    cov_t = np.cov(tgt, rowvar=False) + np.eye(3) * 1e-5
    s_half, s_inv_half = _sqrtm(cov_s), _sqrtm(cov_s, inverse=True)
    transform = s_inv_half @ _sqrtm(s_half @ cov_t @ s_half) @ s_inv_half
    out = (src - mu_s) @ transform.T + mu_t
    return out.reshape(source.shape).clip(0.0, 1.0).astype(np.float32)
