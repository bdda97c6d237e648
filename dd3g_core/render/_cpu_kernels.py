"""numba kernels of the tiled CPU rasterizer (see :mod:`dd3g_core.render.cpu` for the maths).

Three passes, each parallel over independent work so no two threads ever write the same
memory:

* :func:`bin_gaussians`   per image: which 16x16 tiles each Gaussian's screen box touches
  (gsplat's ``isect_tiles``), bucketed per (image, tile) in front-to-back depth order.
* :func:`rasterize_fwd`   per tile: front-to-back alpha compositing of its pixels.
* :func:`rasterize_bwd`   per tile: back-to-front gradients; tile-intersection ``s`` owns
  gradient slot ``s`` (a Gaussian touching several tiles has one slot per tile, filled by
  different threads), and :func:`reduce_slots` then sums the slots per Gaussian, parallel
  over images (an image's slots only touch that image's Gaussians).

Float scalars come from the ``consts`` array, which has the dtype of the inputs, so float32
inputs are composited in float32 (as gsplat does) and float64 inputs in float64 (gradcheck);
a bare Python literal would silently promote every float32 expression to float64.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit, prange

# Layout of `consts` (built by cpu.py in the input dtype).
C_ZERO, C_HALF, C_ONE, C_MAX_ALPHA, C_ALPHA_MIN, C_T_EPS = range(6)
# Layout of one gathered row: x, y, conic a, b, c, opacity, then D colour channels.
R_COLOR = 6


@njit(cache=True, parallel=True, fastmath=False)
def bin_gaussians(
    means2d,  # [I, N, 2] float
    radii,  # [I, N, 2] int32, 0 = culled
    depths,  # [I, N] float
    tile_size,  # int
    tiles_x,  # int
    tiles_y,  # int
):  # -> offsets [I * tiles_y * tiles_x + 1] int64, ids [M] int32 (Gaussian index in its image)
    """Tile binning: tiles ``[floor((m - r) / ts), ceil((m + r) / ts))`` per axis, clamped to
    the grid; each (image, tile) bucket lists its Gaussians sorted by depth (ties: index)."""
    I, N = radii.shape[0], radii.shape[1]
    TT = tiles_x * tiles_y
    rect = np.zeros((I, N, 4), np.int64)  # x0, x1, y0, y1 (half-open), empty if culled
    counts = np.zeros(I * TT + 1, np.int64)
    ts = float(tile_size)
    for i in prange(I):
        for n in range(N):
            rx, ry = radii[i, n, 0], radii[i, n, 1]
            if rx <= 0 and ry <= 0:  # the same visibility rule as the dense reference
                continue
            mx, my = float(means2d[i, n, 0]), float(means2d[i, n, 1])
            # clamp in float before the int cast: off-screen means can be huge
            x0 = int(min(max(np.floor((mx - rx) / ts), 0.0), float(tiles_x)))
            x1 = int(min(max(np.ceil((mx + rx) / ts), 0.0), float(tiles_x)))
            y0 = int(min(max(np.floor((my - ry) / ts), 0.0), float(tiles_y)))
            y1 = int(min(max(np.ceil((my + ry) / ts), 0.0), float(tiles_y)))
            rect[i, n, 0], rect[i, n, 1], rect[i, n, 2], rect[i, n, 3] = x0, x1, y0, y1
            for ty in range(y0, y1):
                for tx in range(x0, x1):
                    counts[1 + i * TT + ty * tiles_x + tx] += 1
    offsets = np.cumsum(counts)
    ids = np.empty(offsets[-1], np.int32)
    for i in prange(I):
        # Visiting Gaussians front to back (stable sort: ties by index) and appending to each
        # touched bucket yields depth-sorted buckets with no per-tile sort (a counting sort).
        key = np.empty(N, np.float64)
        for n in range(N):
            key[n] = depths[i, n] if rect[i, n, 1] > rect[i, n, 0] and rect[i, n, 3] > rect[i, n, 2] else np.inf
        order = np.argsort(key, kind="mergesort")
        cursor = offsets[i * TT : (i + 1) * TT].copy()
        for j in range(N):
            n = order[j]
            for ty in range(rect[i, n, 2], rect[i, n, 3]):
                for tx in range(rect[i, n, 0], rect[i, n, 1]):
                    t = ty * tiles_x + tx
                    ids[cursor[t]] = n
                    cursor[t] += 1
    return offsets, ids


@njit(cache=True, fastmath=False)
def _gather(means2d, conics, colors, opacities, i, ids, start, end):  # -> [L, 6 + D]
    """Copy a tile's Gaussians into one contiguous block (the CPU analogue of gsplat's
    shared-memory batch): the per-pixel loops then stream through memory."""
    D = colors.shape[2]
    buf = np.empty((end - start, R_COLOR + D), means2d.dtype)
    for k in range(end - start):
        n = ids[start + k]
        buf[k, 0], buf[k, 1] = means2d[i, n, 0], means2d[i, n, 1]
        buf[k, 2], buf[k, 3], buf[k, 4] = conics[i, n, 0], conics[i, n, 1], conics[i, n, 2]
        buf[k, 5] = opacities[i, n]
        for d in range(D):
            buf[k, R_COLOR + d] = colors[i, n, d]
    return buf


@njit(cache=True, parallel=True, fastmath=False)
def rasterize_fwd(
    means2d, conics, colors, opacities,  # [I, N, 2], [I, N, 3], [I, N, D], [I, N]
    offsets, ids,  # from bin_gaussians
    pix_x, pix_y,  # [W], [H] pixel centres (j + 0.5, i + 0.5) in the input dtype
    consts,  # see C_* above
    tile_size, tiles_x, tiles_y,
    out_colors,  # [I, H, W, D] zero-initialised, written
    out_T,  # [I, H, W] written: final transmittance prod (1 - alpha_i)
    out_last,  # [I, H, W] int32 written: bucket position of the last contributor, -1 if none
):
    """Front to back per pixel: alpha_i = min(0.999, o_i exp(-sigma_i)), skip if sigma_i < 0
    or alpha_i < 1/255, stop before the first i with T (1 - alpha_i) <= 1e-4,
    C += c_i alpha_i T, T *= 1 - alpha_i."""
    I = means2d.shape[0]
    H, W, D = out_colors.shape[1], out_colors.shape[2], out_colors.shape[3]
    zero, half, one = consts[C_ZERO], consts[C_HALF], consts[C_ONE]
    max_alpha, alpha_min, t_eps = consts[C_MAX_ALPHA], consts[C_ALPHA_MIN], consts[C_T_EPS]
    TT = tiles_x * tiles_y
    for gt in prange(I * TT):
        i, t = gt // TT, gt % TT
        start, end = offsets[gt], offsets[gt + 1]
        y0, x0 = (t // tiles_x) * tile_size, (t % tiles_x) * tile_size
        if end == start:
            for py in range(y0, min(y0 + tile_size, H)):
                for px in range(x0, min(x0 + tile_size, W)):
                    out_T[i, py, px] = one
                    out_last[i, py, px] = -1
            continue
        buf = _gather(means2d, conics, colors, opacities, i, ids, start, end)
        for py in range(y0, min(y0 + tile_size, H)):
            fy = pix_y[py]
            for px in range(x0, min(x0 + tile_size, W)):
                fx = pix_x[px]
                T = one
                last = -1
                for k in range(end - start):
                    dx, dy = buf[k, 0] - fx, buf[k, 1] - fy
                    sigma = half * (buf[k, 2] * dx * dx + buf[k, 4] * dy * dy) + buf[k, 3] * dx * dy
                    if sigma < zero:
                        continue
                    alpha = min(max_alpha, buf[k, 5] * math.exp(-sigma))
                    if alpha < alpha_min:
                        continue
                    next_T = T * (one - alpha)
                    if next_T <= t_eps:
                        break
                    w = alpha * T
                    for d in range(D):
                        out_colors[i, py, px, d] += buf[k, R_COLOR + d] * w
                    last = k
                    T = next_T
                out_T[i, py, px] = T
                out_last[i, py, px] = last


@njit(cache=True, parallel=True, fastmath=False)
def rasterize_bwd(
    means2d, conics, colors, opacities,  # [I, N, 2], [I, N, 3], [I, N, D], [I, N]
    offsets, ids, pix_x, pix_y, consts, tile_size, tiles_x, tiles_y,
    out_T, out_last,  # saved by rasterize_fwd: [I, H, W], [I, H, W]
    v_colors,  # [I, H, W, D] dL/d render_colors
    v_alphas,  # [I, H, W] dL/d render_alphas
    s_means2d, s_conics, s_colors, s_opacities,  # [M, 2], [M, 3], [M, D], [M] zeroed slots
):
    """Back to front per pixel (3DGS backward), recovering T_i = T_{i+1} / (1 - alpha_i) from
    the saved final T. With ``S_i = sum_{j>i} c_j alpha_j T_j`` (colour behind i):

        dL/dc_i     = alpha_i T_i dL/dC
        dL/dalpha_i = (c_i T_i - S_i / (1 - alpha_i)) . dL/dC + T_final / (1 - alpha_i) dL/dA
        (A = 1 - T_final), and, unless alpha_i was clamped at 0.999 (then constant):
        dL/do_i     = exp(-sigma_i) dL/dalpha_i,  dL/dsigma_i = -o_i exp(-sigma_i) dL/dalpha_i
        dL/dmean    = dL/dsigma (a dx + b dy, b dx + c dy),   dx = mean_x - px
        dL/dconic   = dL/dsigma (dx^2 / 2, dx dy, dy^2 / 2)
    """
    I = means2d.shape[0]
    H, W, D = v_colors.shape[1], v_colors.shape[2], v_colors.shape[3]
    zero, half, one = consts[C_ZERO], consts[C_HALF], consts[C_ONE]
    max_alpha, alpha_min = consts[C_MAX_ALPHA], consts[C_ALPHA_MIN]
    TT = tiles_x * tiles_y
    for gt in prange(I * TT):
        i, t = gt // TT, gt % TT
        start, end = offsets[gt], offsets[gt + 1]
        if end == start:
            continue
        y0, x0 = (t // tiles_x) * tile_size, (t % tiles_x) * tile_size
        buf = _gather(means2d, conics, colors, opacities, i, ids, start, end)
        behind = np.empty(D, means2d.dtype)
        for py in range(y0, min(y0 + tile_size, H)):
            fy = pix_y[py]
            for px in range(x0, min(x0 + tile_size, W)):
                last = out_last[i, py, px]
                if last < 0:
                    continue
                fx = pix_x[px]
                T_final = out_T[i, py, px]
                T = T_final
                v_a = v_alphas[i, py, px]
                for d in range(D):
                    behind[d] = zero
                for k in range(last, -1, -1):
                    dx, dy = buf[k, 0] - fx, buf[k, 1] - fy
                    a, b, c, o = buf[k, 2], buf[k, 3], buf[k, 4], buf[k, 5]
                    sigma = half * (a * dx * dx + c * dy * dy) + b * dx * dy
                    if sigma < zero:
                        continue
                    vis = math.exp(-sigma)
                    alpha = min(max_alpha, o * vis)
                    if alpha < alpha_min:
                        continue
                    ra = one / (one - alpha)
                    T = T * ra  # transmittance in front of Gaussian k
                    fac = alpha * T
                    s = start + k
                    v_alpha = T_final * ra * v_a
                    for d in range(D):
                        v_c = v_colors[i, py, px, d]
                        s_colors[s, d] += fac * v_c
                        v_alpha += (buf[k, R_COLOR + d] * T - behind[d] * ra) * v_c
                        behind[d] += buf[k, R_COLOR + d] * fac
                    if o * vis <= max_alpha:
                        v_sigma = -o * vis * v_alpha
                        s_conics[s, 0] += half * v_sigma * dx * dx
                        s_conics[s, 1] += v_sigma * dx * dy
                        s_conics[s, 2] += half * v_sigma * dy * dy
                        s_means2d[s, 0] += v_sigma * (a * dx + b * dy)
                        s_means2d[s, 1] += v_sigma * (b * dx + c * dy)
                        s_opacities[s] += vis * v_alpha


@njit(cache=True, parallel=True, fastmath=False)
def reduce_slots(
    offsets, ids, tiles_per_image,
    s_means2d, s_conics, s_colors, s_opacities,  # [M, ...] per-intersection gradients
    v_means2d, v_conics, v_colors, v_opacities,  # [I, N, ...] zeroed, written
):
    """Sum each Gaussian's per-tile gradient slots (an image's slots are contiguous)."""
    I, D = v_means2d.shape[0], v_colors.shape[2]
    for i in prange(I):
        for s in range(offsets[i * tiles_per_image], offsets[(i + 1) * tiles_per_image]):
            n = ids[s]
            v_means2d[i, n, 0] += s_means2d[s, 0]
            v_means2d[i, n, 1] += s_means2d[s, 1]
            for q in range(3):
                v_conics[i, n, q] += s_conics[s, q]
            for d in range(D):
                v_colors[i, n, d] += s_colors[s, d]
            v_opacities[i, n] += s_opacities[s]
