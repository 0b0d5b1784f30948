"""Pixels in and out of the engine: files, raw layer bytes, alpha, grey and resizing.

Methods only ever see HxWx3 float32 RGB in 0..1; everything that differs between a PNG on disk and
a 16-bit grey GIMP layer with alpha is undone here and redone on the way out.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps, UnidentifiedImageError

from engine.errors import UserError
from nst_common.messages import RawImage

MAX_SIDE = 32768
BAND_ROWS = 256
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
    pixels = np.asarray(img.convert(target), dtype=np.float32) / 255.0
    return pixels[..., None] if pixels.ndim == 2 else pixels


# Extensions whose formats hold no alpha channel: a result with alpha is written without it.
NO_ALPHA = frozenset({".jpg", ".jpeg", ".jpe", ".jfif", ".ppm", ".pgm", ".pnm"})


def check_output(path: str | Path, inputs: list[str | Path], force: bool) -> Path:
    """Refuse, before any work, an output that cannot be written or would destroy a file: a missing
    folder, an unknown extension, one of the inputs, or an existing file (unless `force`)."""
    path = Path(path)
    if not path.parent.is_dir():
        raise UserError("bad-output", f"output folder does not exist: {path.parent}")
    if path.suffix.lower() not in Image.registered_extensions():
        raise UserError("bad-output", f"no image format has the extension of {path.name!r}: use .png or .jpg")
    if path.is_dir():
        raise UserError("bad-output", f"{path} is a folder")
    if path.exists() and not force:
        same = any(Path(i).exists() and path.samefile(i) for i in inputs)
        what = "is one of the inputs" if same else "exists"
        raise UserError("bad-output", f"{path} {what}; choose another output, or add --force to replace it")
    return path


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def save_image(path: str | Path, image: np.ndarray, bits: int = 8) -> None:
    """Write HxWxC float32 0..1 (16 bits only for PNG grey or via TIFF-friendly modes) to a temporary
    file beside `path`, then move it over `path`: a failed write never leaves a truncated file. A
    format without alpha gets the colour channels alone."""
    path = Path(path)
    if not path.parent.is_dir():
        raise UserError("bad-output", f"output folder does not exist: {path.parent}")
    channels = image.shape[2]
    if channels in (2, 4) and path.suffix.lower() in NO_ALPHA:
        image, channels = image[..., : channels - 1], channels - 1
    mode = {1: "L", 2: "LA", 3: "RGB", 4: "RGBA"}[channels]
    if bits == 16 and channels == 1:
        pil = Image.fromarray((image[..., 0] * 65535.0 + 0.5).astype(np.uint16))
    else:
        data = (image.clip(0, 1) * 255.0 + 0.5).astype(np.uint8)
        pil = Image.fromarray(data[..., 0] if channels == 1 else data, mode)
    fd, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    os.close(fd)
    try:
        pil.save(temporary, format=Image.registered_extensions().get(path.suffix.lower()))
        os.chmod(temporary, path.stat().st_mode & 0o7777 if path.exists() else 0o666 & ~_umask())
        os.replace(temporary, path)
    except (OSError, ValueError, KeyError) as exc:
        raise UserError("bad-output", f"cannot write {path}: {exc}") from None
    finally:
        if os.path.exists(temporary):
            os.unlink(temporary)


def bands(height: int, rows: int = BAND_ROWS) -> Iterator[slice]:
    """Row ranges covering an image: full-size work done a band at a time needs no full-size
    temporaries (an 8192x8192 float32 RGB copy is 805 MB)."""
    for top in range(0, height, rows):
        yield slice(top, min(top + rows, height))


def _pixels(raw: RawImage) -> np.ndarray:
    """The raw bytes as an HxWxC array of their own dtype, without a copy."""
    dtype, _ = _DTYPES[raw.dtype]
    flat = np.frombuffer(raw.data, dtype=dtype, count=raw.width * raw.height * raw.channels)
    return flat.reshape(raw.height, raw.width, raw.channels)


def _to_float(pixels: np.ndarray, out: np.ndarray, dtype: str) -> None:
    """Scale integer pixels to 0..1 into `out`; NaN and infinities of float layers become 0 and 1."""
    np.divide(pixels, _DTYPES[dtype][1], out=out, dtype=np.float32, casting="unsafe")
    np.nan_to_num(out, copy=False, nan=0.0, posinf=1.0, neginf=0.0)


def from_raw(raw: RawImage) -> np.ndarray:
    """Raw layer bytes to HxWxC float32 0..1 (a copy: the caller's buffer is never touched)."""
    pixels = _pixels(raw)
    out = np.empty(pixels.shape, np.float32)
    for rows in bands(raw.height):
        _to_float(pixels[rows], out[rows], raw.dtype)
    return out


def rgb_from_raw(raw: RawImage) -> tuple[np.ndarray, np.ndarray | None]:
    """`split_alpha(from_raw(raw))` in one band-wise pass: only the RGB and alpha arrays are made."""
    pixels = _pixels(raw)
    rgb = np.empty((raw.height, raw.width, 3), np.float32)
    alpha = np.empty((raw.height, raw.width), np.float32) if raw.channels in (2, 4) else None
    colour = 3 if raw.channels >= 3 else 1
    for rows in bands(raw.height):
        _to_float(pixels[rows, :, :colour], rgb[rows, :, :colour], raw.dtype)
        if colour == 1:
            rgb[rows, :, 1:] = rgb[rows, :, :1]
        if alpha is not None:
            _to_float(pixels[rows, :, -1], alpha[rows], raw.dtype)
    return rgb, alpha


def to_raw(image: np.ndarray, dtype: str) -> RawImage:
    """HxWxC float32 0..1 to raw bytes of the given dtype, rounding to nearest."""
    height, width, channels = image.shape
    return _encode(lambda rows: image[rows], height, width, channels, dtype)


def rgb_to_raw(rgb: np.ndarray, alpha: np.ndarray | None, channels: int, dtype: str) -> RawImage:
    """`to_raw(merge_alpha(rgb, alpha, channels), dtype)` a band at a time, into one buffer."""
    height, width = rgb.shape[:2]
    return _encode(
        lambda rows: merge_alpha(rgb[rows], None if alpha is None else alpha[rows], channels),
        height, width, channels, dtype,
    )  # fmt: skip


def _encode(
    band_of: Callable[[slice], np.ndarray], height: int, width: int, channels: int, dtype: str
) -> RawImage:
    np_dtype, scale = _DTYPES[dtype]
    data = bytearray(height * width * channels * np_dtype.itemsize)
    out = np.frombuffer(data, dtype=np_dtype).reshape(height, width, channels)
    for rows in bands(height):
        clipped = band_of(rows).clip(0.0, 1.0)
        out[rows] = clipped if scale == 1.0 else clipped * scale + 0.5  # the cast truncates: rounding
    return RawImage(width=width, height=height, channels=channels, dtype=dtype, data=data)


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


def at_long_side(image: np.ndarray, long_side: int) -> np.ndarray:
    """HxWxC float32 numpy resized to `long_side`, keeping its aspect."""
    return resize(image, fit_long_side(*image.shape[:2], long_side))


def resize(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize HxWxC float32 numpy to (height, width)."""
    if image.shape[:2] == tuple(size):
        return image
    tensor = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)[None]
    out = resize_tensor(tensor, size)[0].permute(1, 2, 0).clamp(0, 1)
    return np.ascontiguousarray(out.numpy())
