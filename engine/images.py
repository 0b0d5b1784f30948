"""Pixels in and out of the engine: files, raw layer bytes, alpha, grey and resizing.

Methods only ever see HxWx3 float32 RGB in 0..1; everything that differs between a PNG on disk and
a 16-bit grey GIMP layer with alpha is undone here and redone on the way out.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps, UnidentifiedImageError

from engine.errors import UserError
from engine.protocol import RawImage

MAX_SIDE = 32768
_DTYPES: dict[str, tuple[np.dtype, float]] = {
    "u8": (np.dtype("<u1"), 255.0),
    "u16": (np.dtype("<u2"), 65535.0),
    "f32": (np.dtype("<f4"), 1.0),
}
# Rec. 709 luma weights, applied to the encoded values as GIMP's desaturate does.
_LUMA = np.array([0.2126, 0.7152, 0.0722], dtype=np.float32)
Image.MAX_IMAGE_PIXELS = MAX_SIDE * MAX_SIDE


def load_image(path: str | Path) -> np.ndarray:
    """Decode a file to HxWxC float32 in 0..1 (C is 1..4), honouring EXIF orientation and 16 bits."""
    path = Path(path)
    if not path.is_file():
        raise UserError("bad-input", f"image not found: {path}")
    try:
        with Image.open(path) as img:
            img = ImageOps.exif_transpose(img)
            return _pil_to_array(img)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise UserError("bad-input", f"cannot read image {path}: {exc}") from None


def _pil_to_array(img: Image.Image) -> np.ndarray:
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        grey = np.asarray(img, dtype=np.float32)
        scale = 65535.0 if img.mode != "I" or grey.max() > 255 else 255.0
        return (grey / scale).clip(0, 1)[..., None]
    if img.mode == "F":
        return np.asarray(img, dtype=np.float32).clip(0, 1)[..., None]
    has_alpha = img.mode in ("RGBA", "LA", "PA") or "transparency" in img.info
    target = img.mode if img.mode in ("L", "LA") else "RGBA" if has_alpha else "RGB"
    return np.asarray(img.convert(target), dtype=np.float32) / 255.0


def save_image(path: str | Path, image: np.ndarray, bits: int = 8) -> None:
    """Write HxWxC float32 0..1; 16 bits only for PNG grey or via TIFF-friendly modes."""
    path = Path(path)
    if not path.parent.is_dir():
        raise UserError("bad-output", f"output folder does not exist: {path.parent}")
    channels = image.shape[2]
    mode = {1: "L", 2: "LA", 3: "RGB", 4: "RGBA"}[channels]
    if bits == 16 and channels == 1:
        pil = Image.fromarray((image[..., 0] * 65535.0 + 0.5).astype(np.uint16))
    else:
        data = (image.clip(0, 1) * 255.0 + 0.5).astype(np.uint8)
        pil = Image.fromarray(data[..., 0] if channels == 1 else data, mode)
    try:
        pil.save(path)
    except (OSError, ValueError, KeyError) as exc:
        raise UserError("bad-output", f"cannot write {path}: {exc}") from None


def from_raw(raw: RawImage) -> np.ndarray:
    """Raw layer bytes to HxWxC float32 0..1 (a copy: the caller's buffer is never touched)."""
    dtype, scale = _DTYPES[raw.dtype]
    flat = np.frombuffer(raw.data, dtype=dtype, count=raw.width * raw.height * raw.channels)
    pixels = flat.reshape(raw.height, raw.width, raw.channels).astype(np.float32)
    if scale != 1.0:
        pixels /= scale
    return np.nan_to_num(pixels, nan=0.0, posinf=1.0, neginf=0.0)


def to_raw(image: np.ndarray, dtype: str) -> RawImage:
    """HxWxC float32 0..1 to raw bytes of the given dtype, rounding to nearest."""
    np_dtype, scale = _DTYPES[dtype]
    clipped = image.clip(0.0, 1.0)
    data = clipped.astype(np_dtype) if scale == 1.0 else (clipped * scale + 0.5).astype(np_dtype)
    height, width, channels = image.shape
    return RawImage(width=width, height=height, channels=channels, dtype=dtype, data=data.tobytes())


def split_alpha(image: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    """Any of grey, grey+alpha, RGB, RGBA to (RGB, alpha or None)."""
    channels = image.shape[2]
    colour = image[..., : 3 if channels >= 3 else 1]
    alpha = image[..., -1] if channels in (2, 4) else None
    if colour.shape[2] == 1:
        colour = np.repeat(colour, 3, axis=2)
    return np.ascontiguousarray(colour, dtype=np.float32), alpha


def merge_alpha(rgb: np.ndarray, alpha: np.ndarray | None, channels: int) -> np.ndarray:
    """The inverse of `split_alpha`, for the channel count of the original."""
    colour = (rgb @ _LUMA)[..., None] if channels in (1, 2) else rgb
    if alpha is None:
        return colour
    return np.concatenate([colour, alpha[..., None]], axis=2)


def to_tensor(image: np.ndarray, device: torch.device | str = "cpu") -> torch.Tensor:
    """HxWx3 numpy to a 1x3xHxW tensor."""
    tensor = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)[None]
    return tensor.to(device).contiguous()


def to_numpy(tensor: torch.Tensor) -> np.ndarray:
    """1x3xHxW tensor to HxWx3 float32 numpy in 0..1."""
    return tensor.detach()[0].clamp(0, 1).permute(1, 2, 0).float().cpu().numpy()


def fit_long_side(height: int, width: int, long_side: int) -> tuple[int, int]:
    """The (height, width) with the given long side and the same aspect ratio (each side >= 1)."""
    scale = long_side / max(height, width)
    return max(1, round(height * scale)), max(1, round(width * scale))


def resize_tensor(image: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Antialiased bicubic resize of an NCHW tensor (antialias matters when shrinking paintings)."""
    if tuple(image.shape[-2:]) == tuple(size):
        return image
    return F.interpolate(image, size=size, mode="bicubic", align_corners=False, antialias=True)


def resize(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize HxWxC float32 numpy to (height, width)."""
    if image.shape[:2] == tuple(size):
        return image
    tensor = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)[None]
    out = resize_tensor(tensor, size)[0].permute(1, 2, 0).clamp(0, 1)
    return np.ascontiguousarray(out.numpy())
