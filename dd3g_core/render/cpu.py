"""Tiled CPU rasterizer: gsplat's "classic" compositing, compiled with numba, with a
hand-written backward.

Per pixel centre ``p = (x + 0.5, y + 0.5)`` and Gaussians sorted front to back by depth:

    sigma_i = 0.5 (a dx^2 + c dy^2) + b dx dy,   (dx, dy) = mean_i - p,  conic_i = (a, b, c)
    alpha_i = min(0.999, o_i exp(-sigma_i)),      skipped if sigma_i < 0 or alpha_i < 1/255
    T_i     = prod_{j<i} (1 - alpha_j),           stop before the first i with T_i (1 - alpha_i) <= 1e-4
    C       = sum_i c_i alpha_i T_i,              A = 1 - T_final

which is exactly :func:`dd3g_core.render.reference.rasterize_dense` (the oracle). Only the
Gaussians whose screen box ``[mean - radius, mean + radius]`` overlaps a 16x16 tile are
visited for that tile's pixels; the opacity-aware radius from :mod:`.projection` bounds the
region where ``alpha >= 1/255``, so culling by tiles drops nothing the dense compositor keeps
(the kernels apply the same bound again to 4x4 pixel blocks inside each tile).

The forward saves, per pixel, the final transmittance and the bucket position of the last
contributing Gaussian; the backward walks each pixel's list back to front from there
(3DGS/gsplat's backward, see ``_cpu_kernels.rasterize_bwd`` for the equations). Gradients
flow to ``means2d``, ``conics``, ``colors`` and ``opacities``; ``depths`` only order the
Gaussians and ``radii`` only cull them, so they get none.

Threads: the kernels release the GIL and run on ``torch.get_num_threads()`` Python threads
(images or tiles handed out in chunks); renders under ``SERIAL_BELOW_PIXELS`` pixels stay on
the calling thread. On a machine whose cores are busy with other processes, torch's OpenMP
workers spin-wait and slow every torch op (and these kernels) several-fold;
``OMP_WAIT_POLICY=PASSIVE`` in the environment avoids that.
"""

from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from ..cameras import check_resolution
from .projection import ALPHA_THRESHOLD
from .reference import MAX_ALPHA, TRANSMITTANCE_EPS

# Below this many pixels (all images together) the kernels run on the calling thread only: a
# thread hand-off costs tens of microseconds, which dominates tiny renders and gradchecks.
SERIAL_BELOW_PIXELS = 4096
CHUNKS_PER_WORKER = 4  # smaller chunks than workers x 1 let idle threads take over stragglers

_pool: ThreadPoolExecutor | None = None
_pool_key: tuple[int, int] = (0, 0)  # (pid, workers) the pool was made for
_pool_lock = threading.Lock()


def _kernels():
    # numba costs ~0.5 s to import and is only needed once something is rasterized on CPU.
    from . import _cpu_kernels

    return _cpu_kernels


def _run(kernel, args: tuple, total: int, pixels: int) -> None:
    """``kernel(*args, a, b)`` over chunks [a, b) of range(total), on up to
    ``torch.get_num_threads()`` threads (the kernels release the GIL)."""
    global _pool, _pool_key
    workers = min(torch.get_num_threads(), total) if pixels >= SERIAL_BELOW_PIXELS else 1
    if workers <= 1:
        kernel(*args, 0, total)
        return
    key = (os.getpid(), workers)  # a forked child (DataLoader worker) needs its own threads
    with _pool_lock:
        if _pool_key != key:
            if _pool is not None and _pool_key[0] == key[0]:
                _pool.shutdown(wait=False)  # thread count changed: retire the old threads
            _pool, _pool_key = ThreadPoolExecutor(workers, thread_name_prefix="dd3g-cpu-raster"), key
        pool = _pool
    n = min(total, workers * CHUNKS_PER_WORKER)
    bounds = [total * c // n for c in range(n + 1)]
    futures = [pool.submit(kernel, *args, lo, hi) for lo, hi in zip(bounds[:-1], bounds[1:])]
    for f in futures:
        f.result()  # re-raises a kernel's exception here


def _consts(dtype: np.dtype) -> np.ndarray:  # [6] in the compute dtype, see _cpu_kernels.C_*
    return np.array([0.0, 0.5, 1.0, MAX_ALPHA, ALPHA_THRESHOLD, TRANSMITTANCE_EPS], dtype=dtype)


def _np(t: Tensor, dtype: torch.dtype) -> np.ndarray:
    return t.detach().to(dtype).contiguous().numpy()


class _RasterizeToPixelsCPU(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx,
        means2d: Tensor,  # [I, N, 2]
        conics: Tensor,  # [I, N, 3]
        colors: Tensor,  # [I, N, D]
        opacities: Tensor,  # [I, N]
        depths: Tensor,  # [I, N]
        radii: Tensor,  # [I, N, 2] int
        width: int,
        height: int,
        tile_size: int,
    ) -> tuple[Tensor, Tensor]:  # [I, H, W, D], [I, H, W, 1]
        k = _kernels()
        dt = means2d.dtype  # float32 or float64 (checked by the caller)
        I, N, D = colors.shape
        tiles_x, tiles_y = -(-width // tile_size), -(-height // tile_size)
        radii_np = _np(radii, torch.int32)
        arrays = tuple(_np(t, dt) for t in (means2d, conics, colors, opacities)) + (radii_np,)
        npdt = arrays[0].dtype
        pixels = I * width * height
        # tile binning: per-image counts -> bucket offsets -> depth-ordered buckets
        rect = np.zeros((I, N, 4), np.int64)
        counts = np.zeros(I * tiles_x * tiles_y + 1, np.int64)
        _run(k.bin_count, (arrays[0], radii_np, tile_size, tiles_x, tiles_y, rect, counts), I, pixels)
        offsets = np.cumsum(counts)
        ids = np.empty(offsets[-1], np.int32)
        _run(k.bin_fill, (_np(depths, dt), rect, offsets, tiles_x, tiles_y, ids), I, pixels)
        # compositing, per (image, tile)
        pix_x = np.arange(width, dtype=npdt) + npdt.type(0.5)
        pix_y = np.arange(height, dtype=npdt) + npdt.type(0.5)
        grid = (pix_x, pix_y, _consts(npdt), tile_size, tiles_x, tiles_y)
        out_colors = np.zeros((I, height, width, D), npdt)
        out_T = np.ones((I, height, width), npdt)  # pixels no Gaussian touches keep T = 1
        out_last = np.full((I, height, width), -1, np.int32)
        outs = (out_colors, out_T, out_last)
        _run(k.rasterize_fwd, (*arrays, offsets, ids, *grid, *outs), I * tiles_x * tiles_y, pixels)
        # numpy state for the backward (not tensors: autograd never needs to see them)
        ctx.state = (arrays, offsets, ids, grid, out_T, out_last)
        ctx.dtype = dt
        render_alphas = 1.0 - torch.from_numpy(out_T)[..., None]
        return torch.from_numpy(out_colors), render_alphas

    @staticmethod
    @once_differentiable
    def backward(ctx, v_render_colors: Tensor, v_render_alphas: Tensor):  # [I, H, W, D], [I, H, W, 1]
        k = _kernels()
        arrays, offsets, ids, grid, out_T, out_last = ctx.state
        I, N, D = arrays[2].shape
        dt = ctx.dtype
        H, W = out_T.shape[1:]
        if v_render_colors is None:
            v_render_colors = torch.zeros(I, H, W, D, dtype=dt)
        if v_render_alphas is None:
            v_render_alphas = torch.zeros(I, H, W, 1, dtype=dt)
        tiles = grid[4] * grid[5]
        slots = np.zeros((ids.shape[0], k.S_COLOR + D), arrays[0].dtype)  # one row per tile-intersection
        v_c, v_a = _np(v_render_colors, dt), _np(v_render_alphas[..., 0], dt)
        _run(k.rasterize_bwd, (*arrays, offsets, ids, *grid, out_T, out_last, v_c, v_a, slots), I * tiles, I * H * W)
        grads = torch.zeros(I, N, k.S_COLOR + D, dtype=dt)  # (mean xy, conic abc, opacity, colour)
        _run(k.reduce_slots, (offsets, ids, tiles, slots, grads.numpy()), I, I * H * W)
        v_means2d, v_conics, v_opac, v_colors = grads.split([2, 3, 1, D], dim=-1)
        return v_means2d, v_conics, v_colors, v_opac[..., 0], None, None, None, None, None


def rasterize_to_pixels_cpu(
    means2d: Tensor,  # [I, N, 2] pixel coordinates
    conics: Tensor,  # [I, N, 3] inverse 2D covariance (a, b, c)
    colors: Tensor,  # [I, N, D] any number of channels
    opacities: Tensor,  # [I, N]
    depths: Tensor,  # [I, N] sort key (camera z)
    radii: Tensor,  # [I, N, 2] int, 0 = culled
    width: int,
    height: int,
    tile_size: int = 16,
) -> tuple[Tensor, Tensor]:  # render_colors [I, H, W, D], render_alphas [I, H, W, 1]
    """Composite I images on CPU; differentiable w.r.t. means2d, conics, colors, opacities.

    Computes in float64 for float64 ``means2d`` and float32 otherwise (other float inputs are
    cast to that dtype; outputs come back in it).
    """
    check_resolution(width, height)
    if int(tile_size) != tile_size or tile_size < 1:
        raise ValueError(f"tile_size must be a positive integer, got {tile_size}")
    if means2d.ndim != 3 or means2d.shape[-1] != 2:
        raise ValueError(f"means2d must be [I, N, 2], got {tuple(means2d.shape)}")
    I, N = means2d.shape[:2]
    expect = {
        "conics": (conics, (I, N, 3)),
        "opacities": (opacities, (I, N)),
        "depths": (depths, (I, N)),
        "radii": (radii, (I, N, 2)),
    }
    for name, (t, shape) in expect.items():
        if tuple(t.shape) != shape:
            raise ValueError(f"{name} must have shape {shape} to match means2d, got {tuple(t.shape)}")
    if colors.ndim != 3 or tuple(colors.shape[:2]) != (I, N):
        raise ValueError(f"colors must be [{I}, {N}, D], got {tuple(colors.shape)}")
    for t in (means2d, conics, colors, opacities, depths, radii):
        if t.device.type != "cpu":
            raise ValueError(f"rasterize_to_pixels_cpu needs CPU tensors, got one on {t.device}")
    dt = torch.float64 if means2d.dtype == torch.float64 else torch.float32
    return _RasterizeToPixelsCPU.apply(
        means2d.to(dt),
        conics.to(dt),
        colors.to(dt),
        opacities.to(dt),
        depths,
        radii,
        int(width),
        int(height),
        int(tile_size),
    )
