"""``render``: Gaussians + cameras -> RGB, alpha, depth, with interchangeable backends.

Backends (one signature, one set of conventions — gsplat's "classic" 3DGS):

* ``"gsplat"``    gsplat's CUDA ``rasterization`` (tensors on a CUDA device).
* ``"cpu"``       the project's tiled, compiled CPU rasterizer with a hand-written backward.
* ``"reference"`` a dense pure-torch compositor (test oracle; memory O(pixels x Gaussians)).
* ``"auto"``      gsplat on CUDA tensors, ``cpu`` otherwise.

Shapes follow gsplat: batch dims ``[B]`` in front of scenes, ``C`` cameras per scene::

    gaussians  Gaussians with means [B, N, 3] (or [N, 3])
    viewmats   [B, C, 4, 4] or [C, 4, 4] (shared by every scene)
    Ks         [B, C, 3, 3] or [C, 3, 3]
    background [3], [B, C, 3] or None (= black)
    -> rgb [B, C, H, W, 3], alpha [B, C, H, W, 1], depth [B, C, H, W, 1]   (B dropped if the
       Gaussians were unbatched)

``depth`` is gsplat's expected depth ("ED"): the alpha-weighted mean camera z, 0 where empty.
"""

from __future__ import annotations

from typing import Literal, NamedTuple, get_args

import torch
from torch import Tensor

from ..cameras import camera_centers, check_resolution
from ..gaussians import Gaussians
from .projection import covariance_3d, project_gaussians
from .reference import rasterize_dense
from .sh import eval_sh_colors

Backend = Literal["auto", "gsplat", "cpu", "reference"]


class RenderOutput(NamedTuple):
    rgb: Tensor  # [..., C, H, W, 3]
    alpha: Tensor  # [..., C, H, W, 1]
    depth: Tensor  # [..., C, H, W, 1]


def _check_inputs(g: Gaussians, viewmats: Tensor, Ks: Tensor, width: int, height: int) -> None:
    check_resolution(width, height)
    if viewmats.shape[-2:] != (4, 4) or Ks.shape[-2:] != (3, 3):
        raise ValueError(
            f"viewmats must be [..., C, 4, 4] and Ks [..., C, 3, 3]; got {tuple(viewmats.shape)}, {tuple(Ks.shape)}"
        )
    if viewmats.shape[:-2] != Ks.shape[:-2]:
        raise ValueError(f"viewmats {tuple(viewmats.shape)} and Ks {tuple(Ks.shape)} disagree on cameras")
    if not (torch.isfinite(viewmats).all() and torch.isfinite(Ks).all()):
        raise ValueError("cameras contain NaN/Inf")
    fx, fy = Ks[..., 0, 0], Ks[..., 1, 1]
    if (fx <= 0).any() or (fy <= 0).any():
        raise ValueError("intrinsics need positive focal lengths (fov must be in (0, 180) degrees)")
    det = torch.linalg.det(viewmats[..., :3, :3].double())
    if ((det - 1.0).abs() > 1e-3).any():
        raise ValueError("viewmats must be rigid world->camera transforms (rotation part with det +1)")
    g.check_finite()


def render(
    gaussians: Gaussians,
    viewmats: Tensor,
    Ks: Tensor,
    width: int,
    height: int,
    background: Tensor | None = None,
    backend: Backend = "auto",
    near_plane: float = 0.01,
    far_plane: float = 1e10,
    eps2d: float = 0.3,
) -> RenderOutput:
    if backend not in get_args(Backend):
        raise ValueError(f"backend must be one of {get_args(Backend)}, got {backend!r}")
    _check_inputs(gaussians, viewmats, Ks, width, height)
    unbatched = gaussians.means.ndim == 2
    g = gaussians if not unbatched else Gaussians(**{k: v[None] for k, v in vars(gaussians).items()})
    B = g.means.shape[0]
    if viewmats.ndim == 3:
        viewmats, Ks = viewmats.expand(B, -1, -1, -1), Ks.expand(B, -1, -1, -1)
    if viewmats.shape[0] != B:
        raise ValueError(f"{B} scenes but cameras for {viewmats.shape[0]}")
    C = viewmats.shape[1]
    viewmats, Ks = viewmats.to(g.means), Ks.to(g.means)
    if background is None:
        background = g.means.new_zeros(3)
    background = background.to(g.means).expand(B, C, 3)

    if backend == "auto":
        backend = "gsplat" if g.means.is_cuda else "cpu"
    if backend == "gsplat":
        from .gsplat_backend import render_gsplat  # lazy: imports gsplat's CUDA path

        out = render_gsplat(g, viewmats, Ks, width, height, background, near_plane, far_plane, eps2d)
    else:
        if g.means.is_cuda:
            raise ValueError(f"backend {backend!r} runs on CPU tensors; use 'gsplat' (or 'auto') on CUDA")
        out = _render_torch_projection(
            g, viewmats, Ks, width, height, background, backend, near_plane, far_plane, eps2d
        )
    if unbatched:
        out = RenderOutput(*(t[0] for t in out))
    return out


def _render_torch_projection(
    g: Gaussians, viewmats, Ks, width, height, background, backend, near_plane, far_plane, eps2d
) -> RenderOutput:
    B, C = viewmats.shape[:2]
    N = g.num_gaussians
    proj = project_gaussians(
        g.means,
        covariance_3d(g.quats, g.scales),
        g.opacities,
        viewmats,
        Ks,
        width,
        height,
        eps2d=eps2d,
        near_plane=near_plane,
        far_plane=far_plane,
    )
    colors = eval_sh_colors(g.sh, g.means, camera_centers(viewmats))  # [B, C, N, 3]
    feats = torch.cat([colors, proj.depths[..., None]], -1)  # depth rides along as a 4th channel
    flat = lambda t: t.reshape(B * C, N, *t.shape[3:])  # noqa: E731
    args = (
        flat(proj.means2d),
        flat(proj.conics),
        flat(feats),
        flat(proj.opacities),
        flat(proj.depths),
        flat(proj.radii),
    )
    if backend == "reference":
        img, alpha = rasterize_dense(*args, width, height)
    else:
        from .cpu import rasterize_to_pixels_cpu

        img, alpha = rasterize_to_pixels_cpu(*args, width, height)
    img = img.reshape(B, C, height, width, 4)
    alpha = alpha.reshape(B, C, height, width, 1)
    rgb = img[..., :3] + (1.0 - alpha) * background[:, :, None, None, :]
    depth = img[..., 3:] / alpha.clamp_min(1e-10)
    return RenderOutput(rgb, alpha, depth)
