"""Turntables (GIF/MP4) and multi-view grids (PNG) of Gaussians, written atomically.

Frames are orbit renders around the origin with the evaluation camera (radius 1.5, vertical
fov 49.1 degrees, as ``ViewLayout``), on a plain background (floats in 0..1, white by default).
"""

from __future__ import annotations

import numbers
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from .gaussians import Gaussians
from .io import atomic_path
from .render import Backend
from .render.views import orbit_views, to_uint8

TURNTABLE_FORMATS = (".gif", ".mp4")
MP4_BLOCK = 16  # h264/yuv420p wants sizes divisible by 2; 16 avoids ffmpeg's rescaling entirely


def turntable_frames(
    gaussians: Gaussians,  # unbatched, means [N, 3]
    num_frames: int = 36,
    elevation_deg: float = 15.0,
    resolution: int = 256,
    background: Sequence[float] = (1.0, 1.0, 1.0),
    radius: float = 1.5,
    fov_deg: float = 49.1,
    backend: Backend = "auto",
) -> np.ndarray:  # uint8 [F, H, W, 3]
    """``num_frames`` views evenly spaced in azimuth over one full turn (0 degrees first)."""
    if int(num_frames) != num_frames or num_frames < 1:
        raise ValueError(f"num_frames must be a positive integer, got {num_frames!r}")
    azimuths = np.arange(int(num_frames)) * (360.0 / num_frames)
    rgb, _ = orbit_views(gaussians, azimuths, elevation_deg, radius, fov_deg, resolution, tuple(background), backend)
    return to_uint8(rgb)


def _turntable_format(path: str | os.PathLike) -> str:
    ext = Path(path).suffix.lower()
    if ext not in TURNTABLE_FORMATS:
        raise ValueError(f"turntable output must end in {' or '.join(TURNTABLE_FORMATS)}, got {str(path)!r}")
    return ext


def save_turntable(
    gaussians: Gaussians,
    path: str | os.PathLike,
    num_frames: int = 36,
    elevation_deg: float = 15.0,
    resolution: int = 256,
    background: Sequence[float] = (1.0, 1.0, 1.0),
    fps: float = 12.0,
    backend: Backend = "auto",
) -> Path:
    """Render a turntable and write it as an endlessly looping GIF or an h264 MP4 (by extension).

    MP4 frames are rendered at ``resolution`` rounded to a multiple of 16 (at least 16) so
    that the yuv420p encoder never rescales. Note that GIF encoders merge consecutive
    *identical* frames (a rotationally symmetric object), so such a GIF can hold fewer frames.
    """
    import imageio.v2 as imageio  # lazy: imageio's plugin registry is slow to import

    ext = _turntable_format(path)
    if isinstance(fps, bool) or not isinstance(fps, numbers.Real) or not 0 < fps <= 1000:
        raise ValueError(f"turntable fps must be a number in (0, 1000], got {fps!r}")  # 0 divided by zero
    if ext == ".mp4":
        resolution = max(MP4_BLOCK, MP4_BLOCK * round(resolution / MP4_BLOCK))
    frames = turntable_frames(gaussians, num_frames, elevation_deg, resolution, background, backend=backend)
    path = Path(path)
    with atomic_path(path) as tmp:
        if ext == ".gif":
            # duration is per frame in milliseconds; loop=0 means forever
            imageio.mimwrite(tmp, list(frames), format="GIF", duration=1000.0 / fps, loop=0)
        else:
            writer = imageio.get_writer(
                tmp,
                format="FFMPEG",
                fps=fps,
                codec="libx264",
                pixelformat="yuv420p",
                macro_block_size=MP4_BLOCK,
                ffmpeg_log_level="error",
                quality=8,
            )
            try:
                for frame in frames:
                    writer.append_data(frame)
            finally:
                writer.close()
    return path


def views_grid(
    images,  # [V, H, W, 3 or 4], uint8 or float in 0..1
    ncols: int | None = None,
    pad: int = 0,
    pad_value: int = 255,
) -> np.ndarray:  # uint8 [rows*H + (rows-1)*pad, ncols*W + (ncols-1)*pad, 3 or 4]
    """Tile images row-major into a grid; empty cells and padding are ``pad_value`` (alpha 0)."""
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[-1] not in (3, 4) or images.shape[0] == 0:
        raise ValueError(f"images must be a non-empty [V, H, W, 3|4] stack, got shape {images.shape}")
    if images.dtype != np.uint8:
        images = to_uint8(images)
    V, H, W, Cc = images.shape
    ncols = V if ncols is None else int(ncols)
    if ncols < 1:
        raise ValueError(f"ncols must be >= 1, got {ncols}")
    nrows = -(-V // ncols)
    grid = np.full((nrows * H + (nrows - 1) * pad, ncols * W + (ncols - 1) * pad, Cc), pad_value, np.uint8)
    if Cc == 4:
        grid[..., 3] = 0
    for i, img in enumerate(images):
        r, c = divmod(i, ncols)
        grid[r * (H + pad) : r * (H + pad) + H, c * (W + pad) : c * (W + pad) + W] = img
    return grid


def save_png(image: np.ndarray, path: str | os.PathLike) -> Path:
    """Write a uint8 [H, W, 3|4] image as PNG, atomically."""
    path = Path(path)
    if path.suffix.lower() != ".png":
        raise ValueError(f"image output must end in .png, got {str(path)!r}")
    with atomic_path(path) as tmp:
        Image.fromarray(np.asarray(image)).save(tmp, format="PNG")
    return path


def save_views_grid(
    gaussians: Gaussians,
    path: str | os.PathLike,
    azimuths: Sequence[float] = (0.0, 90.0, 180.0, 270.0),
    elevation_deg: float = 15.0,
    resolution: int = 256,
    background: Sequence[float] = (1.0, 1.0, 1.0),
    ncols: int | None = None,
    backend: Backend = "auto",
) -> Path:
    """Render one view per azimuth and save them side by side (``ncols`` per row) as a PNG."""
    if Path(path).suffix.lower() != ".png":  # fail before rendering
        raise ValueError(f"grid output must end in .png, got {str(path)!r}")
    rgb, _ = orbit_views(gaussians, list(azimuths), elevation_deg, 1.5, 49.1, resolution, tuple(background), backend)
    return save_png(views_grid(to_uint8(rgb), ncols), path)
