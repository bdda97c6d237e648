"""numba kernels of the tiled CPU rasterizer (see :mod:`dd3g_core.render.cpu` for the maths).

Every kernel is serial, releases the GIL (``nogil=True``) and works on a range of images or
(image, tile) pairs; ``cpu.py`` runs the ranges on a small thread pool. Work items never
write the same memory:

* :func:`bin_count` / :func:`bin_fill`  per image: which 16x16 tiles each Gaussian's screen
  box touches (gsplat's ``isect_tiles``), bucketed per (image, tile) in front-to-back order.
* :func:`rasterize_fwd`   per tile: front-to-back alpha compositing of its pixels.
* :func:`rasterize_bwd`   per tile: back-to-front gradients; tile-intersection ``s`` owns
  gradient slot ``s`` (a Gaussian touching several tiles has one slot per tile, filled by
  different threads), and :func:`reduce_slots` then sums the slots per Gaussian, per image
  (an image's slots only touch that image's Gaussians).

Why not ``parallel=True``/``prange``: numba's OpenMP layer loads the system libgomp next to
the copy torch bundles, and the two thread pools spin-wait against each other; on a 2-core
machine shared with other processes that made a forward+backward 5-10x slower. Python
threads over nogil kernels keep one spinning pool (torch's) and hand out chunks dynamically.

Inside a tile two exact shortcuts keep the per-pixel loops short: 4x4 pixel blocks get their
own sub-lists of the tile's Gaussians (:func:`_block_lists`), and a per-Gaussian sigma
cut-off skips the exp() of pairs that cannot reach alpha = 1/255 (:func:`_gather`). Neither
changes a result: both only drop pairs whose alpha is below the threshold anyway (for the
block lists this assumes, like tile binning itself, that the radii bound the alpha >= 1/255
region, as the opacity-aware radii of :mod:`.projection` do).

Float scalars come from the ``consts`` array, which has the dtype of the inputs, so float32
inputs are composited in float32 (as gsplat does) and float64 inputs in float64 (gradcheck);
a bare Python literal would silently promote every float32 expression to float64.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

# Layout of `consts` (built by cpu.py in the input dtype).
C_ZERO, C_HALF, C_ONE, C_MAX_ALPHA, C_ALPHA_MIN, C_T_EPS = range(6)
# Layout of one gathered row: x, y, conic a, b, c, opacity, sigma cut-off, radius x, y, colour.
R_CUT, R_RX, R_RY, R_COLOR = 6, 7, 8, 9
# Pixel blocks (BLOCK x BLOCK) inside a tile get their own Gaussian lists (see _block_lists).
BLOCK = 4
# Layout of a gradient slot: d mean (x, y), d conic (a, b, c), d opacity, d colour (D).
S_COLOR = 6


@njit(cache=True, nogil=True, fastmath=False)
def bin_count(
    means2d,  # [I, N, 2] float
    radii,  # [I, N, 2] int32, 0 = culled
    tile_size,
    tiles_x,
    tiles_y,  # ints
    rect,  # [I, N, 4] int64 written: tile range x0, x1, y0, y1 (half-open), empty if culled
    counts,  # [I * tiles_y * tiles_x + 1] int64 zeroed, written: counts[1 + tile] = bucket size
    i0,
    i1,  # image range
):
    """Tiles ``[floor((m - r) / ts), ceil((m + r) / ts))`` per axis, clamped to the grid."""
    N = radii.shape[1]
    TT = tiles_x * tiles_y
    ts = float(tile_size)
    for i in range(i0, i1):
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


@njit(cache=True, nogil=True, fastmath=False)
def bin_fill(
    depths,  # [I, N] float
    rect,  # [I, N, 4] from bin_count
    offsets,  # [I * TT + 1] int64: cumsum of bin_count's counts (bucket starts)
    tiles_x,
    tiles_y,
    ids,  # [M] int32 written: Gaussian index (within its image) per tile-intersection
    i0,
    i1,  # image range
):
    """Visit Gaussians front to back (stable sort: ties by index) and append each to every
    bucket it touches: depth-sorted buckets with no per-tile sort (a counting sort)."""
    N = depths.shape[1]
    TT = tiles_x * tiles_y
    key = np.empty(N, np.float64)
    for i in range(i0, i1):
        for n in range(N):
            visible = rect[i, n, 1] > rect[i, n, 0] and rect[i, n, 3] > rect[i, n, 2]
            key[n] = depths[i, n] if visible else np.inf
        order = np.argsort(key, kind="mergesort")
        cursor = offsets[i * TT : (i + 1) * TT].copy()
        for j in range(N):
            n = order[j]
            for ty in range(rect[i, n, 2], rect[i, n, 3]):
                for tx in range(rect[i, n, 0], rect[i, n, 1]):
                    t = ty * tiles_x + tx
                    ids[cursor[t]] = n
                    cursor[t] += 1


@njit(cache=True, nogil=True, fastmath=False)
def _gather(means2d, conics, colors, opacities, radii, alpha_min, i, ids, start, end):  # -> [L, 9 + D]
    """Copy a tile's Gaussians into one contiguous block (the CPU analogue of gsplat's
    shared-memory batch): the per-pixel loops then stream through memory.

    Column R_CUT holds ``ln(o / alpha_min) + 1e-3``: a pixel with a larger sigma has
    ``o exp(-sigma) < alpha_min`` for certain (the 1e-3 margin covers exp/rounding error), so
    the loops skip it without calling exp. The exact test still runs on every pair that
    passes, so results are unchanged."""
    D = colors.shape[2]
    buf = np.empty((end - start, R_COLOR + D), means2d.dtype)
    for k in range(end - start):
        n = ids[start + k]
        o = float(opacities[i, n])
        buf[k, 0], buf[k, 1] = means2d[i, n, 0], means2d[i, n, 1]
        buf[k, 2], buf[k, 3], buf[k, 4] = conics[i, n, 0], conics[i, n, 1], conics[i, n, 2]
        buf[k, 5] = opacities[i, n]
        buf[k, R_CUT] = math.log(o / alpha_min) + 1e-3 if o >= alpha_min else -1.0
        buf[k, R_RX], buf[k, R_RY] = radii[i, n, 0], radii[i, n, 1]
        for d in range(D):
            buf[k, R_COLOR + d] = colors[i, n, d]
    return buf


@njit(cache=True, nogil=True, fastmath=False)
def _block_lists(buf, x0, y0, tile_size):  # -> counts [NB] int64, lists [NB, L] int32
    """Split the tile into BLOCK x BLOCK pixel blocks and list, per block and in depth order,
    the tile positions of the Gaussians whose box [mean - r, mean + r] overlaps it.

    A pixel centre outside a Gaussian's box has alpha < 1/255 (the box is the opacity-aware
    3DGS bound, the same one tile binning relies on), so a pixel only needs its block's list:
    typically a third of the tile's, at the cost of one pass over the tile's Gaussians."""
    nb = (tile_size + BLOCK - 1) // BLOCK
    L = buf.shape[0]
    counts = np.zeros(nb * nb, np.int64)
    lists = np.empty((nb * nb, L), np.int32)
    for k in range(L):
        mx, my = float(buf[k, 0]) - x0, float(buf[k, 1]) - y0
        rx, ry = float(buf[k, R_RX]), float(buf[k, R_RY])
        bx0 = int(max(np.floor((mx - rx) / BLOCK), 0.0))
        bx1 = int(min(np.floor((mx + rx) / BLOCK), nb - 1.0))
        by0 = int(max(np.floor((my - ry) / BLOCK), 0.0))
        by1 = int(min(np.floor((my + ry) / BLOCK), nb - 1.0))
        for by in range(by0, by1 + 1):
            for bx in range(bx0, bx1 + 1):
                b = by * nb + bx
                lists[b, counts[b]] = k
                counts[b] += 1
    return counts, lists


@njit(cache=True, nogil=True, fastmath=False)
def rasterize_fwd(
    means2d,
    conics,
    colors,
    opacities,
    radii,  # [I, N, 2], [I, N, 3], [I, N, D], [I, N], [I, N, 2]
    offsets,
    ids,  # from bin_count + cumsum + bin_fill
    pix_x,
    pix_y,  # [W], [H] pixel centres (j + 0.5, i + 0.5) in the input dtype
    consts,  # see C_* above
    tile_size,
    tiles_x,
    tiles_y,
    out_colors,  # [I, H, W, D] zero-initialised, written
    out_T,  # [I, H, W] one-initialised, written: final transmittance prod (1 - alpha_i)
    out_last,  # [I, H, W] int32 -1-initialised, written: tile position of the last contributor
    g0,
    g1,  # range of (image, tile) pairs, flattened as i * tiles + t
):
    """Front to back per pixel: alpha_i = min(0.999, o_i exp(-sigma_i)), skip if sigma_i < 0
    or alpha_i < 1/255, stop before the first i with T (1 - alpha_i) <= 1e-4,
    C += c_i alpha_i T, T *= 1 - alpha_i."""
    H, W, D = out_colors.shape[1], out_colors.shape[2], out_colors.shape[3]
    zero, half, one = consts[C_ZERO], consts[C_HALF], consts[C_ONE]
    max_alpha, alpha_min, t_eps = consts[C_MAX_ALPHA], consts[C_ALPHA_MIN], consts[C_T_EPS]
    TT = tiles_x * tiles_y
    nb = (tile_size + BLOCK - 1) // BLOCK
    for gt in range(g0, g1):
        i, t = gt // TT, gt % TT
        start, end = offsets[gt], offsets[gt + 1]
        if end == start:
            continue
        y0, x0 = (t // tiles_x) * tile_size, (t % tiles_x) * tile_size
        buf = _gather(means2d, conics, colors, opacities, radii, float(alpha_min), i, ids, start, end)
        counts, lists = _block_lists(buf, x0, y0, tile_size)
        acc = np.empty(D, means2d.dtype)
        for b in range(nb * nb):
            bx, by = x0 + (b % nb) * BLOCK, y0 + (b // nb) * BLOCK
            for py in range(by, min(by + BLOCK, y0 + tile_size, H)):
                fy = pix_y[py]
                for px in range(bx, min(bx + BLOCK, x0 + tile_size, W)):
                    fx = pix_x[px]
                    T = one
                    last = -1
                    for d in range(D):
                        acc[d] = zero
                    for j in range(counts[b]):
                        k = lists[b, j]
                        dx, dy = buf[k, 0] - fx, buf[k, 1] - fy
                        sigma = half * (buf[k, 2] * dx * dx + buf[k, 4] * dy * dy) + buf[k, 3] * dx * dy
                        if not (sigma >= zero and sigma <= buf[k, R_CUT]):  # NaN-safe
                            continue
                        alpha = min(max_alpha, buf[k, 5] * math.exp(-sigma))
                        if alpha < alpha_min:
                            continue
                        next_T = T * (one - alpha)
                        if next_T <= t_eps:
                            break
                        w = alpha * T
                        for d in range(D):
                            acc[d] += buf[k, R_COLOR + d] * w
                        last = k
                        T = next_T
                    for d in range(D):
                        out_colors[i, py, px, d] = acc[d]
                    out_T[i, py, px] = T
                    out_last[i, py, px] = last


@njit(cache=True, nogil=True, fastmath=False)
def rasterize_bwd(
    means2d,
    conics,
    colors,
    opacities,
    radii,  # [I, N, 2], [I, N, 3], [I, N, D], [I, N], [I, N, 2]
    offsets,
    ids,
    pix_x,
    pix_y,
    consts,
    tile_size,
    tiles_x,
    tiles_y,
    out_T,
    out_last,  # saved by rasterize_fwd: [I, H, W], [I, H, W]
    v_colors,  # [I, H, W, D] dL/d render_colors
    v_alphas,  # [I, H, W] dL/d render_alphas
    slots,  # [M, 6 + D] zeroed, written: per tile-intersection (d mean, conic, opacity, colour)
    g0,
    g1,  # range of (image, tile) pairs
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
    H, W, D = v_colors.shape[1], v_colors.shape[2], v_colors.shape[3]
    zero, half, one = consts[C_ZERO], consts[C_HALF], consts[C_ONE]
    max_alpha, alpha_min = consts[C_MAX_ALPHA], consts[C_ALPHA_MIN]
    TT = tiles_x * tiles_y
    nb = (tile_size + BLOCK - 1) // BLOCK
    for gt in range(g0, g1):
        i, t = gt // TT, gt % TT
        start, end = offsets[gt], offsets[gt + 1]
        if end == start:
            continue
        y0, x0 = (t // tiles_x) * tile_size, (t % tiles_x) * tile_size
        buf = _gather(means2d, conics, colors, opacities, radii, float(alpha_min), i, ids, start, end)
        counts, lists = _block_lists(buf, x0, y0, tile_size)
        g = slots[start:end]  # this tile's slots: written by this thread only
        behind = np.empty(D, means2d.dtype)
        v_c = np.empty(D, means2d.dtype)
        for b in range(nb * nb):
            bx, by = x0 + (b % nb) * BLOCK, y0 + (b // nb) * BLOCK
            for py in range(by, min(by + BLOCK, y0 + tile_size, H)):
                fy = pix_y[py]
                for px in range(bx, min(bx + BLOCK, x0 + tile_size, W)):
                    last = out_last[i, py, px]
                    if last < 0:
                        continue
                    fx = pix_x[px]
                    T_final = out_T[i, py, px]
                    T = T_final
                    v_a = v_alphas[i, py, px]
                    for d in range(D):
                        behind[d] = zero
                        v_c[d] = v_colors[i, py, px, d]
                    for j in range(counts[b] - 1, -1, -1):
                        k = lists[b, j]
                        if k > last:  # behind the last contributor: not composited
                            continue
                        dx, dy = buf[k, 0] - fx, buf[k, 1] - fy
                        a, bb, c, o = buf[k, 2], buf[k, 3], buf[k, 4], buf[k, 5]
                        sigma = half * (a * dx * dx + c * dy * dy) + bb * dx * dy
                        if not (sigma >= zero and sigma <= buf[k, R_CUT]):  # NaN-safe
                            continue
                        vis = math.exp(-sigma)
                        alpha = min(max_alpha, o * vis)
                        if alpha < alpha_min:
                            continue
                        ra = one / (one - alpha)
                        T = T * ra  # transmittance in front of Gaussian k
                        fac = alpha * T
                        v_alpha = T_final * ra * v_a
                        for d in range(D):
                            ck = buf[k, R_COLOR + d]
                            g[k, S_COLOR + d] += fac * v_c[d]
                            v_alpha += (ck * T - behind[d] * ra) * v_c[d]
                            behind[d] += ck * fac
                        if o * vis <= max_alpha:
                            v_sigma = -o * vis * v_alpha
                            g[k, 0] += v_sigma * (a * dx + bb * dy)
                            g[k, 1] += v_sigma * (bb * dx + c * dy)
                            g[k, 2] += half * v_sigma * dx * dx
                            g[k, 3] += v_sigma * dx * dy
                            g[k, 4] += half * v_sigma * dy * dy
                            g[k, 5] += vis * v_alpha


@njit(cache=True, nogil=True, fastmath=False)
def reduce_slots(
    offsets,
    ids,
    tiles_per_image,
    slots,  # [M, 6 + D] per tile-intersection gradients
    grads,  # [I, N, 6 + D] zeroed, written: per-Gaussian sums
    i0,
    i1,  # image range
):
    """Sum each Gaussian's per-tile gradient slots (an image's slots are contiguous)."""
    Q = grads.shape[2]
    for i in range(i0, i1):
        for s in range(offsets[i * tiles_per_image], offsets[(i + 1) * tiles_per_image]):
            n = ids[s]
            for q in range(Q):
                grads[i, n, q] += slots[s, q]
