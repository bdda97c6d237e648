"""An edge-aware matte of the teacher's views: coverage by unmixing the object's colour from the background.

The colour key (:func:`~dd3g_core.distill.losses.alpha_from_background`) reads a pixel as fully opaque as soon
as it is ``softness`` (0.08) away from the background. A silhouette pixel that is half a dark object and half
white is 0.5 away, so the key calls it opaque, and its colour target, ``OI - (1 - A) bg = OI``, is the object's
colour *mixed with white*. The student learns a one-pixel light rim around every object and along the seams
where two views' Gaussians meet; on the teacher's white it is invisible, on black it is a halo.

An edge pixel is a mix ``OI = a F + (1 - a) bg`` of the object's colour ``F`` and the background. ``F`` is not
known at the pixel, but it is at the pixels just inside the silhouette. :func:`unmixed_alpha`:

1. takes the colour key's *sure* foreground (key alpha 1 at the pixel and its 8 neighbours), where
   ``F = OI``;
2. spreads ``F`` outward ``rings`` pixels, each unknown pixel taking the mean of its known 3 x 3
   neighbours (a push fill);
3. solves for the coverage by projecting onto the line from ``bg`` to ``F`` (least squares over RGB):
   ``a = <OI - bg, F - bg> / |F - bg|^2``, clamped to [0, 1];
4. keeps the colour key where the projection is ill-posed (no foreground colour within ``rings`` pixels, or
   ``F`` within ``softness`` of the background: white parts of an object) and the key's dead zone
   (``floor``) for the background's noise.

Interior pixels keep alpha 1 (``F = OI`` there), background pixels 0, and the recomposited target
``OI + (1 - a) (b' - bg)`` (:func:`~dd3g_core.distill.losses.recomposite`) has the object's own colour at the
edge on any background.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .losses import alpha_from_background

__all__ = ["unmixed_alpha", "teacher_matte"]


def unmixed_alpha(
    views: Tensor,  # [B, V, 3, H, W] OI in [0, 1], composited on ``background``
    background: tuple[float, float, float] = (1.0, 1.0, 1.0),
    softness: float = 0.08,
    floor: float = 0.0,
    rings: int = 2,
    connected: bool = False,
) -> Tensor:  # [B, V, 1, H, W] in [0, 1]
    """Coverage of each pixel by unmixing the nearest interior colour from the background (module doc)."""
    if rings < 1:
        raise ValueError(f"rings must be >= 1, got {rings}")
    key = alpha_from_background(views, background, softness, floor, connected)  # [B, V, 1, H, W]
    shape = views.shape
    x = views.reshape(-1, 3, *shape[-2:]).float()  # [N, 3, H, W]
    k = key.reshape(-1, 1, *shape[-2:]).float()
    bg = x.new_tensor(background).reshape(1, 3, 1, 1)

    # 1. sure foreground: key alpha 1 at the pixel and all its 8 neighbours (borders count as background)
    opaque = (k >= 1.0).float()
    known = -F.max_pool2d(-F.pad(opaque, (1, 1, 1, 1), value=0.0), 3, stride=1)  # 3x3 erosion
    colour = x * known

    # 2. push fill: each ring, an unknown pixel takes the mean colour of its known neighbours
    ones = torch.ones(1, 1, 3, 3, dtype=x.dtype, device=x.device)
    for _ in range(rings):
        count = F.conv2d(known, ones, padding=1)
        total = F.conv2d(colour, ones.expand(3, 1, 3, 3), padding=1, groups=3)
        fresh = (known == 0) & (count > 0)
        colour = torch.where(fresh, total / count.clamp_min(1.0), colour)
        known = torch.where(fresh, torch.ones_like(known), known)

    # 3. the coverage along bg -> F (least squares over the three channels)
    towards = colour - bg  # F - bg
    span = (towards * towards).sum(1, keepdim=True)
    coverage = ((x - bg) * towards).sum(1, keepdim=True) / span.clamp_min(1e-8)
    coverage = coverage.clamp(0.0, 1.0)

    # 4. the key where the unmixing is ill-posed, and the key's dead zone (background noise) everywhere
    posed = (known > 0) & (towards.abs().amax(1, keepdim=True) >= softness)
    alpha = torch.where(posed & (k > 0), coverage, k)
    return alpha.reshape(key.shape).to(views.dtype)


def teacher_matte(
    views: Tensor,  # [B, V, 3, H, W] OI in [0, 1], composited on ``background``
    background: tuple[float, float, float],
    softness: float,
    floor: float,
    connected: bool = False,
    unmix_rings: int = 0,
) -> Tensor:  # [B, V, 1, H, W] in [0, 1]
    """The alpha target of the teacher's views: the colour key, or (``unmix_rings`` > 0) its silhouette unmixed.
    One place for the distillation objective and the fit ceiling, so the two always use the same matte."""
    if unmix_rings:
        return unmixed_alpha(views, background, softness, floor, rings=unmix_rings, connected=connected)
    return alpha_from_background(views, background, softness, floor, connected)
