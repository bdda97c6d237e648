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
"""

from __future__ import annotations

import contextlib
import io
import os
import struct
import threading
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError


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


def _to_rgba(img: Image.Image) -> tuple[np.ndarray, bool]:
    mode = img.mode
    if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        arr = np.asarray(img).astype(np.float64)
        top = 65535.0 if (mode.startswith("I;16") or arr.max() > 255) else 255.0
        gray = np.clip(np.rint(arr / top * 255.0), 0, 255).astype(np.uint8)
        return np.dstack([gray, gray, gray, np.full_like(gray, 255)]), False
    if mode == "F":
        arr = np.asarray(img).astype(np.float64)
        arr = np.nan_to_num(arr, nan=0.0, posinf=0.0, neginf=0.0)
        scale = 255.0 if arr.max() <= 1.0 else 1.0
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


def load_image_rgba(
    src: str | os.PathLike | bytes,
    *,
    max_pixels: int | None = None,
    allow_transparent: bool = False,
    return_info: bool = False,
):
    """Load ``src`` (path or encoded bytes) as uint8 RGBA [H, W, 4] (straight alpha).

    ``return_info=True`` returns ``(rgba, ImageInfo)``; ``info.had_alpha`` is False when the
    image had no alpha channel and alpha was filled with 255. See the module docstring for the
    refusals (:class:`ImageLoadError`, a ``ValueError``)."""
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
            img.load()
            try:
                orientation = int(img.getexif().get(0x0112, 1) or 1)
            except Exception:  # a broken EXIF block does not make the pixels unusable
                orientation = 1
            if orientation != 1:
                img = ImageOps.exif_transpose(img)
                info.exif_transposed = True
            rgba, info.had_alpha = _to_rgba(img)
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
