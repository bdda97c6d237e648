"""Statistics of predicted Gaussians that say whether a student makes surfaces or fog.

Scales are given in *pixels* of a view at the orbit radius: a Gaussian with largest standard
deviation ``s`` (world units) at distance ``radius`` covers ``s / footprint`` pixels, with
``footprint = 2 * radius * tan(fov / 2) / resolution`` world units per pixel. Below half a pixel
a Gaussian cannot form a surface at that resolution; it only adds faint colour.
"""

from __future__ import annotations

import math

import torch

from ..gaussians import Gaussians

__all__ = ["gaussian_statistics", "pixel_footprint", "TRANSPARENT", "OPACITY_BINS"]

TRANSPARENT = 0.05  # opacity below this: "nearly transparent"
OPACITY_BINS = 10


def pixel_footprint(radius: float, fov_deg: float, resolution: int) -> float:
    """World units per pixel at the orbit centre."""
    return 2.0 * radius * math.tan(math.radians(fov_deg) / 2.0) / resolution


def gaussian_statistics(
    g: Gaussians,  # batched [B, N] (or unbatched [N])
    radius: float,
    fov_deg: float,
    resolution: int,  # the teacher's views
    display_resolution: int,
) -> dict:
    opacity = g.opacities.detach().float().reshape(-1).cpu()
    largest = g.scales.detach().float().amax(-1).reshape(-1).cpu()
    rgb = g.rgb.detach().float().reshape(-1, 3).cpu()
    finite = torch.isfinite(opacity) & torch.isfinite(largest) & torch.isfinite(rgb).all(-1)
    opacity, largest, rgb = opacity[finite], largest[finite], rgb[finite]
    if opacity.numel() == 0:
        return {"count": 0, "nonfinite": int((~finite).sum())}
    px = largest / pixel_footprint(radius, fov_deg, resolution)
    transparent = opacity < TRANSPARENT
    hist = torch.histc(opacity, bins=OPACITY_BINS, min=0.0, max=1.0) / opacity.numel()
    return {
        "count": int(opacity.numel()),
        "nonfinite": int((~finite).sum()),
        "opacity_median": float(opacity.median()),
        "opacity_mean": float(opacity.mean()),
        "transparent_share": float(transparent.float().mean()),  # opacity < 0.05
        "white_fog_share": float((transparent & (rgb.amin(-1) > 0.8)).float().mean()),  # faint and near-white
        "opacity_histogram": [round(float(h), 5) for h in hist],  # 10 bins over [0, 1]
        "scale_px_median": float(px.median()),  # largest sigma in the teacher's pixels
        "scale_px_median_display": float(px.median() * display_resolution / resolution),
        "subpixel_share": float((px < 0.5).float().mean()),  # largest sigma < half a teacher pixel
    }
