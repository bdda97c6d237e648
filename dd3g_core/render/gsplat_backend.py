"""The CUDA backend: gsplat 1.5's ``rasterization`` with the same conventions as the CPU path.

gsplat is called in "classic" mode (3DGS compositing, no anti-aliasing compensation),
``packed=False``, with the activated parameters of the container (``g.rotations``,
``g.scales``, ``g.opacities``) and the raw SH coefficients (``sh_degree = g.sh_degree``; gsplat
evaluates them per camera and adds 0.5, clamped at 0, as :mod:`.sh` does). Render mode
"RGB+ED" gives RGB plus the expected depth ``sum_i w_i z_i / sum_i w_i`` (0 where empty).

The background is composited here, not by gsplat, exactly as the CPU path does it:

    rgb = rgb_premultiplied + (1 - alpha) * background

so both backends apply the identical formula (gsplat would add ``T_final * background``
inside its kernel, which equals the same thing up to rounding).
"""

from __future__ import annotations

from torch import Tensor

from ..gaussians import Gaussians


def render_gsplat(
    g: Gaussians,  # batched: means [B, N, 3]
    viewmats: Tensor,  # [B, C, 4, 4]
    Ks: Tensor,  # [B, C, 3, 3]
    width: int,
    height: int,
    background: Tensor,  # [B, C, 3]
    near_plane: float,
    far_plane: float,
    eps2d: float,
):  # -> RenderOutput: rgb [B, C, H, W, 3], alpha [B, C, H, W, 1], depth [B, C, H, W, 1]
    # Lazy imports: gsplat loads (or JIT-builds) its CUDA extension on first use, and the
    # RenderOutput type lives in the package __init__ that imports this module lazily.
    import gsplat

    from . import RenderOutput

    if not g.means.is_cuda:
        raise ValueError("the gsplat backend needs CUDA tensors (use backend='cpu' on CPU)")
    img, alpha, _meta = gsplat.rasterization(
        means=g.means,
        quats=g.rotations,
        scales=g.scales,
        opacities=g.opacities,
        colors=g.sh,
        viewmats=viewmats,
        Ks=Ks,
        width=width,
        height=height,
        near_plane=near_plane,
        far_plane=far_plane,
        eps2d=eps2d,
        sh_degree=g.sh_degree,
        packed=False,
        render_mode="RGB+ED",
        rasterize_mode="classic",
    )  # img [B, C, H, W, 4] (RGB premultiplied by alpha, then ED), alpha [B, C, H, W, 1]
    rgb = img[..., :3] + (1.0 - alpha) * background[:, :, None, None, :]
    return RenderOutput(rgb, alpha, img[..., 3:])
