"""Real spherical harmonics up to degree 3, in the ordering and sign convention of 3DGS/gsplat.

``colors = clamp_min(sum_k Y_k(d) c_k + 0.5, 0)`` with ``d`` the unit direction from the camera
centre to the Gaussian (gsplat's ``spherical_harmonics`` followed by its ``+ 0.5`` offset).
"""

from __future__ import annotations

import torch
from torch import Tensor

C0 = 0.28209479177387814
C1 = 0.4886025119029199
C2 = (1.0925484305920792, -1.0925484305920792, 0.31539156525252005, -1.0925484305920792, 0.5462742152960396)
C3 = (
    -0.5900435899266435,
    2.890611442640554,
    -0.4570457994644658,
    0.3731763325901154,
    -0.4570457994644658,
    1.445305721320277,
    -0.5900435899266435,
)


def sh_basis(degree: int, dirs: Tensor) -> Tensor:  # dirs [..., 3] unit -> [..., (degree+1)^2]
    if not 0 <= degree <= 3:
        raise ValueError(f"SH degree must be in 0..3, got {degree}")
    x, y, z = dirs.unbind(-1)
    out = [torch.full_like(x, C0)]
    if degree >= 1:
        out += [-C1 * y, C1 * z, -C1 * x]
    if degree >= 2:
        xx, yy, zz, xy, yz, xz = x * x, y * y, z * z, x * y, y * z, x * z
        out += [C2[0] * xy, C2[1] * yz, C2[2] * (2 * zz - xx - yy), C2[3] * xz, C2[4] * (xx - yy)]
    if degree >= 3:
        out += [
            C3[0] * y * (3 * xx - yy),
            C3[1] * xy * z,
            C3[2] * y * (4 * zz - xx - yy),
            C3[3] * z * (2 * zz - 3 * xx - 3 * yy),
            C3[4] * x * (4 * zz - xx - yy),
            C3[5] * z * (xx - yy),
            C3[6] * x * (xx - 3 * yy),
        ]
    return torch.stack(out, -1)


def eval_sh_colors(
    sh: Tensor,  # [..., N, K, 3]
    means: Tensor,  # [..., N, 3]
    cam_centers: Tensor,  # [..., C, 3]
) -> Tensor:  # [..., C, N, 3]
    """View-dependent colours of every Gaussian seen from every camera."""
    k = sh.shape[-2]
    degree = int(round(k**0.5)) - 1
    if degree == 0:  # view-independent: skip the direction maths
        rgb = sh[..., 0, :] * C0 + 0.5
        return torch.clamp_min(rgb[..., None, :, :].expand(*cam_centers.shape[:-1], *rgb.shape[-2:]), 0.0)
    dirs = means[..., None, :, :] - cam_centers[..., :, None, :]  # [..., C, N, 3]
    dirs = torch.nn.functional.normalize(dirs, dim=-1, eps=1e-12)
    basis = sh_basis(degree, dirs)  # [..., C, N, K]
    rgb = torch.einsum("...cnk,...nkd->...cnd", basis, sh)
    return torch.clamp_min(rgb + 0.5, 0.0)
