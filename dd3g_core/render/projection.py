"""EWA projection of 3D Gaussians to screen space, in pure torch (differentiable by autograd).

This follows gsplat 1.5's ``fully_fused_projection`` ("classic" 3DGS) term by term so that the
CPU backend and gsplat's CUDA backend see the same 2D Gaussians:

    Sigma   = R S S^T R^T                        (3D covariance from quats + scales)
    t       = W mu + w,  Sigma_c = W Sigma W^T   (world -> camera, W = viewmat[:3,:3])
    J       = [[fx/tz, 0, -fx tx/tz^2], [0, fy/tz, -fy ty/tz^2]]  with tx, ty clamped to
              1.3x the frustum (gsplat's guard against huge Jacobians off-screen)
    Sigma2d = J Sigma_c J^T + eps2d I            (eps2d = 0.3: the low-pass "dilation")
    conic   = Sigma2d^-1 stored as (a, b, c) = (inv00, inv01, inv11)
    radius  = ceil(extend * sqrt(diag(Sigma2d))) with the opacity-aware
              extend = min(3.33, sqrt(2 ln(opacity / (1/255))))

The opacity-aware box bounds exactly the region where alpha >= 1/255, so tile culling never
drops a contribution the compositor would keep: tiled and dense compositors agree exactly.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

ALPHA_THRESHOLD = 1.0 / 255.0


class Projected(NamedTuple):
    means2d: Tensor  # [..., C, N, 2] pixel coordinates
    conics: Tensor  # [..., C, N, 3] inverse 2D covariance (a, b, c)
    depths: Tensor  # [..., C, N] camera-space z
    radii: Tensor  # [..., C, N, 2] int32 half-extent of the screen box, 0 = culled
    opacities: Tensor  # [..., C, N] opacity per (camera, Gaussian)


def quat_to_rotmat(quats: Tensor) -> Tensor:  # [..., 4] wxyz -> [..., 3, 3]
    q = torch.nn.functional.normalize(quats, dim=-1, eps=1e-12)
    w, x, y, z = q.unbind(-1)
    R = torch.stack(
        [
            1 - 2 * (y * y + z * z),
            2 * (x * y - w * z),
            2 * (x * z + w * y),
            2 * (x * y + w * z),
            1 - 2 * (x * x + z * z),
            2 * (y * z - w * x),
            2 * (x * z - w * y),
            2 * (y * z + w * x),
            1 - 2 * (x * x + y * y),
        ],
        dim=-1,
    )
    return R.reshape(q.shape[:-1] + (3, 3))


def covariance_3d(
    quats: Tensor,  # [..., N, 4] wxyz
    scales: Tensor,  # [..., N, 3]
) -> Tensor:  # [..., N, 3, 3]
    M = quat_to_rotmat(quats) * scales[..., None, :]
    return M @ M.transpose(-1, -2)


def project_gaussians(
    means: Tensor,  # [..., N, 3]
    covars: Tensor,  # [..., N, 3, 3]
    opacities: Tensor,  # [..., N]
    viewmats: Tensor,  # [..., C, 4, 4]
    Ks: Tensor,  # [..., C, 3, 3]
    width: int,
    height: int,
    eps2d: float = 0.3,
    near_plane: float = 0.01,
    far_plane: float = 1e10,
) -> Projected:
    R = viewmats[..., :3, :3]  # [..., C, 3, 3]
    t = viewmats[..., :3, 3]  # [..., C, 3]
    means_c = torch.einsum("...cij,...nj->...cni", R, means) + t[..., None, :]  # [..., C, N, 3]
    covars_c = torch.einsum("...cij,...njk,...clk->...cnil", R, covars, R)  # [..., C, N, 3, 3]

    tx, ty, tz = means_c.unbind(-1)  # [..., C, N]
    fx, fy = Ks[..., 0, 0, None], Ks[..., 1, 1, None]  # [..., C, 1]
    cx, cy = Ks[..., 0, 2, None], Ks[..., 1, 2, None]
    # Guard the Jacobian: Gaussians far outside the frustum would otherwise get enormous
    # screen footprints. Clamp the direction to 1.3x the half-fov (gsplat's 0.3 margin).
    lim_x_pos = (width - cx) / fx + 0.3 * (0.5 * width / fx)
    lim_x_neg = cx / fx + 0.3 * (0.5 * width / fx)
    lim_y_pos = (height - cy) / fy + 0.3 * (0.5 * height / fy)
    lim_y_neg = cy / fy + 0.3 * (0.5 * height / fy)
    tz_safe = torch.where(tz.abs() < 1e-12, torch.full_like(tz, 1e-12), tz)
    txc = tz_safe * torch.clamp(tx / tz_safe, min=-lim_x_neg, max=lim_x_pos)
    tyc = tz_safe * torch.clamp(ty / tz_safe, min=-lim_y_neg, max=lim_y_pos)
    zero = torch.zeros_like(tz)
    J = torch.stack(
        [fx / tz_safe, zero, -fx * txc / tz_safe**2, zero, fy / tz_safe, -fy * tyc / tz_safe**2], -1
    ).reshape(tz.shape + (2, 3))
    cov2d = J @ covars_c @ J.transpose(-1, -2)  # [..., C, N, 2, 2]
    means2d = torch.stack([fx * tx / tz_safe + cx, fy * ty / tz_safe + cy], -1)  # [..., C, N, 2]

    a = cov2d[..., 0, 0] + eps2d
    b = 0.5 * (cov2d[..., 0, 1] + cov2d[..., 1, 0])
    c = cov2d[..., 1, 1] + eps2d
    det = (a * c - b * b).clamp_min(1e-10)
    conics = torch.stack([c / det, -b / det, a / det], -1)  # [..., C, N, 3]

    opac = opacities[..., None, :].expand_as(tz)  # [..., C, N]
    with torch.no_grad():
        extend = torch.sqrt(2.0 * torch.log(opac.clamp_min(ALPHA_THRESHOLD) / ALPHA_THRESHOLD))
        extend = extend.clamp(max=3.33)
        rx = torch.ceil(extend * torch.sqrt(a.clamp_min(0)))
        ry = torch.ceil(extend * torch.sqrt(c.clamp_min(0)))
        valid = (
            (a * c - b * b > 0)
            & (tz > near_plane)
            & (tz < far_plane)
            & (opac >= ALPHA_THRESHOLD)
            & ((rx > 0) | (ry > 0))
        )
        mx, my = means2d[..., 0], means2d[..., 1]
        inside = (mx + rx > 0) & (mx - rx < width) & (my + ry > 0) & (my - ry < height)
        keep = valid & inside & torch.isfinite(mx) & torch.isfinite(my)
        # Clamp each half-extent to the distance from the mean to the far image edge (+1):
        # the box still covers every pixel it covered (a fixed cap such as 2 max(W, H) would
        # cut the on-screen part of a huge Gaussian centred off-screen), yet stays small
        # enough for int32 and for tile binning.
        rx = torch.minimum(rx, (mx - width / 2).abs() + width / 2 + 1)
        ry = torch.minimum(ry, (my - height / 2).abs() + height / 2 + 1)
        radii = torch.where(keep[..., None], torch.stack([rx, ry], -1), torch.zeros_like(means2d))
        radii = radii.clamp(max=2**30).to(torch.int32)
    return Projected(means2d, conics, tz, radii, opac)
