"""Brute-force dense compositor: every pixel against every Gaussian, in pure torch.

It is the test oracle for the tiled CPU kernels (and slow: O(pixels x Gaussians) memory).
Per pixel, Gaussians are taken front to back by depth and composited exactly as gsplat's
``rasterize_to_pixels`` does:

    sigma_i = 0.5 (a dx^2 + c dy^2) + b dx dy,  dx = mu_x - (x + 0.5), dy = mu_y - (y + 0.5)
    alpha_i = min(0.999, o_i exp(-sigma_i)),  skipped if sigma_i < 0 or alpha_i < 1/255
    T_i     = prod_{j<i} (1 - alpha_j); compositing stops *before* the first i whose
              T_i (1 - alpha_i) <= 1e-4
    C       = sum_i c_i alpha_i T_i,   A = sum_i alpha_i T_i
"""

from __future__ import annotations

import torch
from torch import Tensor

from .projection import ALPHA_THRESHOLD

TRANSMITTANCE_EPS = 1e-4
MAX_ALPHA = 0.999


def rasterize_dense(
    means2d: Tensor,  # [I, N, 2]
    conics: Tensor,  # [I, N, 3]
    colors: Tensor,  # [I, N, D]
    opacities: Tensor,  # [I, N]
    depths: Tensor,  # [I, N]
    radii: Tensor,  # [I, N, 2] int, 0 = culled
    width: int,
    height: int,
) -> tuple[Tensor, Tensor]:  # colors [I, H, W, D], alphas [I, H, W, 1]
    out_c, out_a = [], []
    ys, xs = torch.meshgrid(
        torch.arange(height, dtype=means2d.dtype, device=means2d.device) + 0.5,
        torch.arange(width, dtype=means2d.dtype, device=means2d.device) + 0.5,
        indexing="ij",
    )
    px, py = xs.reshape(-1, 1), ys.reshape(-1, 1)  # [P, 1]
    for i in range(means2d.shape[0]):
        visible = (radii[i] > 0).any(-1)
        order = torch.argsort(torch.where(visible, depths[i], torch.inf), stable=True)
        order = order[visible[order]]
        m, q, col, op = means2d[i, order], conics[i, order], colors[i, order], opacities[i, order]
        dx = m[None, :, 0] - px  # [P, M]
        dy = m[None, :, 1] - py
        sigma = 0.5 * (q[None, :, 0] * dx * dx + q[None, :, 2] * dy * dy) + q[None, :, 1] * dx * dy
        alpha = torch.clamp(op[None, :] * torch.exp(-sigma), max=MAX_ALPHA)
        alpha = torch.where((sigma >= 0) & (alpha >= ALPHA_THRESHOLD), alpha, torch.zeros_like(alpha))
        one_minus = 1.0 - alpha
        t_incl = torch.cumprod(one_minus, dim=1)  # T after each Gaussian
        keep = t_incl > TRANSMITTANCE_EPS  # a prefix per pixel: T only decreases
        t_excl = torch.cat([torch.ones_like(t_incl[:, :1]), t_incl[:, :-1]], 1)
        w = alpha * t_excl * keep
        out_c.append((w @ col).reshape(height, width, -1))
        out_a.append(w.sum(1).reshape(height, width, 1))
    return torch.stack(out_c), torch.stack(out_a)
