"""Rendering helpers for unbatched Gaussians: camera batches, RGBA images, backdrops.

All renders run under ``torch.no_grad`` (these are images, not training losses) and default
to ``backend="auto"`` (the compiled CPU rasterizer on CPU, gsplat on CUDA).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from ..cameras import orbit_cameras
from ..gaussians import Gaussians
from . import Backend, render

MAX_CAMERAS_PER_CALL = 8  # bounds peak memory (the dense reference backend is O(pixels x N))


def render_views(
    gaussians: Gaussians,  # unbatched, means [N, 3]
    viewmats: Tensor,  # [C, 4, 4] world -> camera
    Ks: Tensor,  # [C, 3, 3]
    resolution: int,
    background: Tensor | tuple[float, float, float] | None = None,  # [3] in 0..1, None = black
    backend: Backend = "auto",
) -> tuple[Tensor, Tensor]:  # rgb [C, H, W, 3] float in 0..1, alpha [C, H, W, 1]
    """Render square views of one scene, a few cameras at a time, without gradients."""
    if gaussians.means.ndim != 2:
        raise ValueError("render_views takes one unbatched scene; index a batched container first")
    bg = torch.zeros(3) if background is None else torch.as_tensor(background, dtype=torch.float32).reshape(3)
    C = viewmats.shape[0]
    if gaussians.num_gaussians == 0:  # an empty scene is pure background, whatever the backend
        rgb = bg.expand(C, resolution, resolution, 3).clone()
        return rgb, torch.zeros(C, resolution, resolution, 1)
    rgbs, alphas = [], []
    with torch.no_grad():
        for start in range(0, C, MAX_CAMERAS_PER_CALL):
            sl = slice(start, start + MAX_CAMERAS_PER_CALL)
            out = render(gaussians, viewmats[sl], Ks[sl], resolution, resolution, background=bg, backend=backend)
            rgbs.append(out.rgb.cpu())
            alphas.append(out.alpha.cpu())
    return torch.cat(rgbs).clamp(0.0, 1.0), torch.cat(alphas).clamp(0.0, 1.0)


def orbit_views(
    gaussians: Gaussians,
    azimuths_deg,  # [C]
    elevation_deg: float = 0.0,
    radius: float = 1.5,
    fov_deg: float = 49.1,
    resolution: int = 64,
    background=None,
    backend: Backend = "auto",
) -> tuple[Tensor, Tensor]:  # rgb [C, H, W, 3], alpha [C, H, W, 1]
    """:func:`render_views` at orbit cameras around the origin (see ``cameras.orbit_cameras``)."""
    az = torch.as_tensor(azimuths_deg, dtype=torch.float32).reshape(-1)
    viewmats, Ks = orbit_cameras(az, float(elevation_deg), float(radius), fov_deg, resolution, resolution)
    return render_views(gaussians, viewmats, Ks, resolution, background, backend)


def to_uint8(x: Tensor | np.ndarray) -> np.ndarray:
    """Float image(s) in 0..1 -> uint8 with rounding (not truncation)."""
    x = x.detach().cpu().numpy() if isinstance(x, Tensor) else np.asarray(x)
    return np.clip(np.rint(x * 255.0), 0, 255).astype(np.uint8)


def render_rgba(
    gaussians: Gaussians,
    azimuth_deg: float = 0.0,
    elevation_deg: float = 0.0,
    radius: float = 1.5,
    fov_deg: float = 49.1,
    resolution: int = 64,
    backend: Backend = "auto",
) -> np.ndarray:  # uint8 [H, W, 4]
    """One view as straight (un-premultiplied) RGBA; RGB is 0 wherever alpha is 0."""
    premul, alpha = orbit_views(
        gaussians, [azimuth_deg], elevation_deg, radius, fov_deg, resolution, None, backend
    )  # black background: rendered RGB is premultiplied colour
    premul, alpha = premul[0], alpha[0]
    straight = torch.where(alpha > 1e-6, premul / alpha.clamp_min(1e-6), torch.zeros_like(premul)).clamp(0, 1)
    a8 = to_uint8(alpha)
    rgb8 = np.where(a8 > 0, to_uint8(straight), 0).astype(np.uint8)
    return np.concatenate([rgb8, a8], axis=-1)


def composite_on_background(
    rgba: np.ndarray,  # uint8 [H, W, 4] straight alpha
    color: tuple[int, int, int],  # 0..255
) -> np.ndarray:  # uint8 [H, W, 3]
    """Alpha-composite a straight-alpha RGBA image over a plain colour."""
    rgba = np.asarray(rgba)
    if rgba.ndim != 3 or rgba.shape[-1] != 4 or rgba.dtype != np.uint8:
        raise ValueError(f"expected a uint8 [H, W, 4] image, got {rgba.dtype} {rgba.shape}")
    a = rgba[..., 3:].astype(np.float32) / 255.0
    out = rgba[..., :3].astype(np.float32) * a + np.asarray(color, dtype=np.float32).reshape(1, 1, 3) * (1.0 - a)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)
