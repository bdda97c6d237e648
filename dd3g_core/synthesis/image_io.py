"""Robust loading of user/object images as straight-alpha RGBA uint8 [H, W, 4].

``load_image_rgba(path_or_bytes)`` accepts any format PIL reads and normalises every mode:

| input | result |
|---|---|
| RGBA, LA, PA, P with transparency | alpha kept |
| RGB, L, 1, CMYK, YCbCr, LAB, HSV, P without transparency | alpha 255, ``info.had_alpha = False`` |
| 16-bit (``I;16*``, ``I``) gray | scaled to 8 bits (not clipped) |
| float (``F``) | 0..1 scaled to 0..255 (values above 1 assume 0..255) |
| EXIF-rotated JPEG | rotated upright (``info.exif_transposed``) |
| animated (GIF, APNG, multi-page TIFF) | first frame (``info.frames``) |

Refused with :class:`ImageLoadError` (a ``ValueError`` with a ``reason`` code): empty input
(``empty``), not an image (``unrecognised``), corrupt or truncated data (``corrupt``), more
pixels than ``max_pixels`` — by default PIL's ``Image.MAX_IMAGE_PIXELS``, checked on the
*declared* size before any pixel is decoded (``decompression_bomb``), zero-sized images
(``empty``), and images whose every pixel is transparent (``all_transparent``; pass
``allow_transparent=True`` to get them anyway).

Bounded memory (``max_side``): an image whose longer side exceeds ``max_side`` is reduced right
while it is converted, never held as a full-size RGBA/float array: JPEGs are decoded at a
reduced DCT scale (``draft``), then the decoded image is converted and box-filtered tile by tile
(premultiplied alpha, an integer factor ``k = ceil(longer side / max_side)``), so the peak
memory is the decoded image plus one ~4-megapixel tile, whatever the later steps do.
:func:`downscale_rgba` applies the same reduction to an RGBA array already in memory. Images
within ``max_side`` take the unchanged full-resolution path (bit-identical results).
"""

from __future__ import annotations

import contextlib
import io
import math
import os
import struct
import threading
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

TILE_PIXELS = 1 << 22  # source pixels converted at a time when downscaling (~64 MB of float32 RGBA)
_EXIF_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


class ImageLoadError(ValueError):
    """An image cannot be used; ``reason`` is a short machine-readable code."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


@dataclass
class ImageInfo:
    source: str
    format: str | None
    mode: str  # PIL mode as stored
    size: tuple[int, int]  # (W, H)
    had_alpha: bool  # False: alpha was set to 255 everywhere (flag it to the caller)
    frames: int = 1
    exif_transposed: bool = False
    downscaled_to: tuple[int, int] | None = None  # (W, H) returned when larger than ``max_side``
    full_size: tuple[int, int] | None = None  # (W, H) upright at full resolution, when downscaled

    def to_dict(self) -> dict:
        return asdict(self)


_LIMIT_LOCK = threading.RLock()


@contextlib.contextmanager
def _pil_pixel_limit(max_pixels: int | None):
    """An explicit ``max_pixels`` replaces PIL's global limit for this call (PIL checks it inside
    ``open``/``load``; our own check on the declared size then applies ``max_pixels``)."""
    if max_pixels is None:
        yield
        return
    with _LIMIT_LOCK:
        saved = Image.MAX_IMAGE_PIXELS
        Image.MAX_IMAGE_PIXELS = max_pixels
        try:
            yield
        finally:
            Image.MAX_IMAGE_PIXELS = saved


def _open(src, max_pixels: int | None) -> tuple[Image.Image, str]:
    if isinstance(src, (bytes, bytearray, memoryview)):
        data, name = bytes(src), f"<{len(src)} bytes>"
        if not data:
            raise ImageLoadError("empty", "image data is empty (0 bytes)")
        fp = io.BytesIO(data)
    else:
        path = Path(os.fspath(src))
        name = str(path)
        if not path.is_file():
            raise FileNotFoundError(f"image file {path} does not exist")
        if path.stat().st_size == 0:
            raise ImageLoadError("empty", f"{path}: file is empty (0 bytes)")
        fp = io.BytesIO(path.read_bytes())
    limit = Image.MAX_IMAGE_PIXELS if max_pixels is None else max_pixels
    try:
        with _pil_pixel_limit(max_pixels), warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(fp)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise ImageLoadError("decompression_bomb", f"{name}: refused, decompression bomb ({e})") from None
    except UnidentifiedImageError:
        raise ImageLoadError("unrecognised", f"{name}: not a recognised image format") from None
    except (OSError, SyntaxError, ValueError) as e:
        raise ImageLoadError("corrupt", f"{name}: corrupt image header ({e})") from None
    w, h = img.size
    if limit is not None and w * h > limit:
        raise ImageLoadError(
            "decompression_bomb",
            f"{name}: declared size {w}x{h} = {w * h} pixels exceeds the limit of {limit} "
            f"(decompression bomb?); raise max_pixels / PIL.Image.MAX_IMAGE_PIXELS if intended",
        )
    if w == 0 or h == 0:
        raise ImageLoadError("empty", f"{name}: image has zero size {w}x{h}")
    return img, name


def _to_rgba(img: Image.Image, peak: float | None = None) -> tuple[np.ndarray, bool]:
    """``peak``: the whole image's maximum for the gray modes (``I``, ``F``) when ``img`` is a tile."""
    mode = img.mode
    if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        arr = np.asarray(img).astype(np.float64)
        top = 65535.0 if (mode.startswith("I;16") or (arr.max() if peak is None else peak) > 255) else 255.0
        gray = np.clip(np.rint(arr / top * 255.0), 0, 255).astype(np.uint8)
        return np.dstack([gray, gray, gray, np.full_like(gray, 255)]), False
    if mode == "F":
        arr = np.asarray(img).astype(np.float64)
        arr = np.nan_to_num(arr, nan=0.0, posinf=0.0, neginf=0.0)
        scale = 255.0 if (arr.max() if peak is None else peak) <= 1.0 else 1.0
        gray = np.clip(np.rint(arr * scale), 0, 255).astype(np.uint8)
        return np.dstack([gray, gray, gray, np.full_like(gray, 255)]), False
    had_alpha = mode in ("RGBA", "LA", "PA", "RGBa", "La") or (mode in ("P", "L", "RGB") and "transparency" in img.info)
    if mode in ("RGBa", "La"):  # premultiplied modes
        img = img.convert(mode.upper())
    if mode == "1":
        img = img.convert("L")
    if img.mode not in ("RGB", "RGBA", "L", "LA", "P", "PA"):
        img = img.convert("RGB")  # CMYK, YCbCr, LAB, HSV, ...
    rgba = np.asarray(img.convert("RGBA"), dtype=np.uint8).copy()
    return rgba, bool(had_alpha)


def _box_reduce(rgba: np.ndarray, k: int) -> np.ndarray:  # uint8 [h, w, 4] -> [ceil(h/k), ceil(w/k), 4]
    """Mean of every ``k`` x ``k`` block (partial blocks at the far edges: of their pixels), on
    premultiplied colour, so transparent pixels carry no colour into the result."""
    h, w = rgba.shape[:2]
    a = rgba[..., 3].astype(np.float32) / 255.0
    x = np.concatenate([rgba[..., :3].astype(np.float32) * a[..., None], a[..., None]], axis=-1)
    rows, cols = np.arange(0, h, k), np.arange(0, w, k)
    sums = np.add.reduceat(np.add.reduceat(x, rows, axis=0), cols, axis=1)
    count = np.outer(np.diff(np.append(rows, h)), np.diff(np.append(cols, w))).astype(np.float32)
    alpha = sums[..., 3] / count
    colour = np.where(sums[..., 3:] > 0, sums[..., :3] / np.maximum(sums[..., 3:], 1e-12), 0.0)
    out = np.concatenate([colour, alpha[..., None] * 255.0], axis=-1)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def _reduce_tiled(
    width: int, height: int, max_side: int, tile: Callable[[int, int, int, int], np.ndarray]
) -> np.ndarray:
    """Box-reduce a ``width`` x ``height`` RGBA image read through ``tile(x0, y0, x1, y1)`` so that
    its longer side is at most ``max_side``, a tile of ~``TILE_PIXELS`` at a time."""
    k = -(-max(width, height) // max_side)
    step = k * max(1, math.isqrt(TILE_PIXELS) // k)  # tile side: a multiple of k (no seams)
    out = np.zeros((-(-height // k), -(-width // k), 4), np.uint8)
    for y0 in range(0, height, step):
        for x0 in range(0, width, step):
            small = _box_reduce(tile(x0, y0, min(x0 + step, width), min(y0 + step, height)), k)
            out[y0 // k : y0 // k + small.shape[0], x0 // k : x0 // k + small.shape[1]] = small
    return out


def downscale_rgba(rgba: np.ndarray, max_side: int) -> np.ndarray:
    """uint8 RGBA [H, W, 4] reduced by an integer box filter until its longer side is <= ``max_side``
    (premultiplied; the array itself when it already fits)."""
    if max_side < 1:
        raise ValueError(f"max_side must be >= 1, got {max_side}")
    h, w = rgba.shape[:2]
    if max(h, w) <= max_side:
        return rgba
    return _reduce_tiled(w, h, max_side, lambda x0, y0, x1, y1: rgba[y0:y1, x0:x1])


def _gray_peak(img: Image.Image) -> float | None:
    """The maximum ``_to_rgba`` scales the gray modes by, over the whole image (tiles must share it)."""
    if img.mode == "I":
        return float(img.getextrema()[1])
    if img.mode == "F":
        w, h, step = img.size[0], img.size[1], max(1, TILE_PIXELS // max(img.size[0], 1))
        peaks = [
            np.nan_to_num(np.asarray(img.crop((0, y, w, min(y + step, h)))), nan=0.0, posinf=0.0, neginf=0.0).max()
            for y in range(0, h, step)
        ]
        return float(max(peaks))
    return None


def _to_rgba_downscaled(img: Image.Image, max_side: int) -> tuple[np.ndarray, bool]:
    """``_to_rgba`` + :func:`downscale_rgba`, a tile at a time (never a full-size array)."""
    peak = _gray_peak(img)
    had_alpha = [False]

    def tile(x0: int, y0: int, x1: int, y1: int) -> np.ndarray:
        rgba, had_alpha[0] = _to_rgba(img.crop((x0, y0, x1, y1)), peak)
        return rgba

    return _reduce_tiled(img.size[0], img.size[1], max_side, tile), had_alpha[0]


def load_image_rgba(
    src: str | os.PathLike | bytes,
    *,
    max_pixels: int | None = None,
    max_side: int | None = None,
    allow_transparent: bool = False,
    return_info: bool = False,
):
    """Load ``src`` (path or encoded bytes) as uint8 RGBA [H, W, 4] (straight alpha).

    ``max_side``: reduce an image whose longer side is larger right while decoding it (see the
    module docstring; ``info.downscaled_to`` records the result's size). ``return_info=True``
    returns ``(rgba, ImageInfo)``; ``info.had_alpha`` is False when the image had no alpha
    channel and alpha was filled with 255. See the module docstring for the refusals
    (:class:`ImageLoadError`, a ``ValueError``)."""
    if max_side is not None and max_side < 1:
        raise ValueError(f"max_side must be >= 1, got {max_side}")
    img, name = _open(src, max_pixels)
    info = ImageInfo(
        source=name,
        format=img.format,
        mode=img.mode,
        size=tuple(img.size),
        had_alpha=False,
        frames=int(getattr(img, "n_frames", 1) or 1),
    )
    try:
        with _pil_pixel_limit(max_pixels), warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img.seek(0)
            big = max_side is not None and max(img.size) > max_side
            if big and img.format == "JPEG":
                img.draft(None, (max_side, max_side))  # decode at 1/2, 1/4 or 1/8 scale, still >= max_side
            img.load()
            try:
                orientation = int(img.getexif().get(0x0112, 1) or 1)
            except Exception:  # a broken EXIF block does not make the pixels unusable
                orientation = 1
            w, h = info.size
            if big:
                info.full_size = (h, w) if orientation in (5, 6, 7, 8) else (w, h)
            if big and max(img.size) > max_side:
                rgba, info.had_alpha = _to_rgba_downscaled(img, max_side)
                if orientation in _EXIF_TRANSPOSE:  # rotate the small result, not the full-size image
                    rgba = np.asarray(Image.fromarray(rgba, "RGBA").transpose(_EXIF_TRANSPOSE[orientation])).copy()
                    info.exif_transposed = True
                info.downscaled_to = (rgba.shape[1], rgba.shape[0])
            else:
                if orientation != 1:
                    img = ImageOps.exif_transpose(img)
                    info.exif_transposed = True
                rgba, info.had_alpha = _to_rgba(img)
                if big:  # a JPEG whose draft already fits
                    info.downscaled_to = (rgba.shape[1], rgba.shape[0])
    except ImageLoadError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise ImageLoadError("decompression_bomb", f"{name}: refused, decompression bomb ({e})") from None
    except (OSError, SyntaxError, ValueError, EOFError, IndexError, struct.error) as e:
        raise ImageLoadError("corrupt", f"{name}: corrupt or truncated image data ({type(e).__name__}: {e})") from None
    if rgba.ndim != 3 or rgba.shape[-1] != 4 or rgba.size == 0:
        raise ImageLoadError("corrupt", f"{name}: decoded to an unexpected shape {rgba.shape}")
    if not allow_transparent and not rgba[..., 3].any():
        raise ImageLoadError("all_transparent", f"{name}: every pixel is fully transparent (nothing to use)")
    rgba[rgba[..., 3] == 0, :3] = 0  # no hidden colour under zero alpha
    return (rgba, info) if return_info else rgba
