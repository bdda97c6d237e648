"""CPU rasterizer benchmark: the numba backend vs a straightforward tiled pure-torch compositor.

    python benchmarks/rasterizer.py [--quick]

What is timed: forward + backward of the *rasterization step only* — both contestants take the
same projected inputs (means2d, conics, colours = RGB + depth, opacities, depths, radii from
``project_gaussians`` + ``eval_sh_colors``) and backpropagate the loss
``sum(w_c * colours) + sum(w_a * alphas)`` to means2d / conics / colours / opacities.
"ours" is :func:`dd3g_core.render.cpu.rasterize_to_pixels_cpu`; the column ``render()`` adds,
for ours only, the full ``render(..., backend="cpu")`` (projection + SH + compositing) with the
backward to the raw Gaussian parameters. Median of several repeats after a warm-up call (the
warm-up also loads numba's cached machine code, so JIT compilation is never timed); the
scaling exponents are fitted to the fastest repeat of ours, since the machine's cores are
shared and a burst of outside load can inflate even a median.

Timings depend on what else runs: on a 2-core machine shared with other busy processes,
torch's OpenMP workers spin-wait and everything (baseline and ours) slows 2-10x; the load
average is printed, and ``OMP_WAIT_POLICY=PASSIVE`` makes the numbers far steadier there.

The scene is object-like: Gaussians uniform in a ball of radius 0.5 (a unit-size object),
scales log-uniform in [0.01, 0.05], random rotations, opacities in [0.1, 0.9], seen by 4 orbit
cameras (azimuth 0/90/180/270, elevation 15, radius 1.5, fov 49.1) — the object covers about
half of each image, like the views a multi-view teacher produces.

Baseline ("tiled torch", written below): per image, 16x16 tiles; the K nearest Gaussians whose
screen box overlaps each tile (``topk`` by depth), gathered into [tiles, K] tensors; per tile a
dense [256 pixels, K] alpha tensor, cumprod transmittance, gsplat's thresholds (sigma < 0,
alpha < 1/255, clamp 0.999, T <= 1e-4); autograd does the backward. K is the longest tile
list of the image ("exact"), which makes the baseline faithful (max |diff| vs ours ~1e-6 is
printed). A top-256 cap is the usual shortcut, but in this scene the tile lists hold ~650
Gaussians on average (up to ~1600 at 4k), so it renders wrong images (max |diff| ~0.8);
it is timed once at 4k / 4x64^2 for reference only. The exact baseline needs ~8 GB at 16k
Gaussians and is skipped there.

Peak memory: a fresh subprocess imports everything, builds the 4k scene, loads the kernels on
a tiny scene, resets the kernel's high-water mark (``/proc/self/clear_refs`` = 5), runs three
forward+backward passes at 4x64^2 and reads ``VmHWM`` (peak RSS; tracemalloc does not see
torch/numpy buffers, and ``ru_maxrss`` survives fork+exec from this big parent). The BAR uses
the whole process' peak, torch and numba runtimes included; the rasterizer's own share is
printed as the delta over the RSS just before.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from dd3g_core.cameras import camera_centers, orbit_cameras  # noqa: E402
from dd3g_core.gaussians import Gaussians  # noqa: E402
from dd3g_core.render import render  # noqa: E402
from dd3g_core.render.cpu import rasterize_to_pixels_cpu  # noqa: E402
from dd3g_core.render.projection import ALPHA_THRESHOLD, covariance_3d, project_gaussians  # noqa: E402
from dd3g_core.render.sh import eval_sh_colors  # noqa: E402

AZIMUTHS = [0.0, 90.0, 180.0, 270.0]
BASELINE_K = 256


def make_scene(n: int, seed: int = 0) -> Gaussians:  # unbatched, N = n
    g = torch.Generator().manual_seed(seed)
    d = torch.nn.functional.normalize(torch.randn(n, 3, generator=g), dim=-1)
    means = d * 0.5 * torch.rand(n, 1, generator=g) ** (1 / 3)  # uniform in a ball of radius 0.5
    scales = torch.exp(torch.empty(n, 3).uniform_(math.log(0.01), math.log(0.05), generator=g))
    quats = torch.randn(n, 4, generator=g)
    opac = torch.empty(n).uniform_(0.1, 0.9, generator=g)
    rgb = torch.rand(n, 3, generator=g)
    return Gaussians.from_activated(means, quats, scales, opac, rgb)


def cameras(res: int) -> tuple[torch.Tensor, torch.Tensor]:  # [4, 4, 4], [4, 3, 3]
    return orbit_cameras(AZIMUTHS, 15.0, 1.5, 49.1, res, res)


def projected_inputs(g: Gaussians, res: int) -> tuple:  # rasterizer args, leaves detached
    viewmats, Ks = cameras(res)
    with torch.no_grad():
        p = project_gaussians(g.means, covariance_3d(g.quats, g.scales), g.opacities, viewmats, Ks, res, res)
        colors = eval_sh_colors(g.sh, g.means, camera_centers(viewmats))
    feats = torch.cat([colors, p.depths[..., None]], -1)  # [C, N, 4]
    return p.means2d, p.conics, feats, p.opacities, p.depths, p.radii


def fwd_bwd(raster, args, res: int) -> tuple[torch.Tensor, torch.Tensor]:
    leaves = [t.detach().clone().requires_grad_() for t in args[:4]]
    img, alpha = raster(*leaves, args[4], args[5], res, res)
    g = torch.Generator().manual_seed(1)
    wc = torch.randn(img.shape, generator=g)
    wa = torch.randn(alpha.shape, generator=g)
    ((img * wc).sum() + (alpha * wa).sum()).backward()
    return img.detach(), alpha.detach()


def render_fwd_bwd(g: Gaussians, res: int) -> None:
    g = g.clone().requires_grad_()
    viewmats, Ks = cameras(res)
    out = render(g, viewmats, Ks, res, res, backend="cpu")
    (out.rgb.sum() + out.alpha.sum() + out.depth.sum()).backward()


def tiled_torch(
    means2d: torch.Tensor,  # [I, N, 2]
    conics: torch.Tensor,  # [I, N, 3]
    colors: torch.Tensor,  # [I, N, D]
    opacities: torch.Tensor,  # [I, N]
    depths: torch.Tensor,  # [I, N]
    radii: torch.Tensor,  # [I, N, 2]
    width: int,
    height: int,
    K: int | None = None,
    ts: int = 16,
) -> tuple[torch.Tensor, torch.Tensor]:  # [I, H, W, D], [I, H, W, 1]
    """The baseline: ts x ts tiles, the K nearest Gaussians whose box overlaps each tile
    (``topk`` by depth; K=None: the longest tile list, i.e. exact), then per tile a dense
    [pixels, K] alpha tensor, cumprod transmittance, gsplat's thresholds; autograd backward."""
    I, N, D = colors.shape
    tx, ty = -(-width // ts), -(-height // ts)
    T = tx * ty
    tile_x0 = (torch.arange(T) % tx) * ts  # [T]
    tile_y0 = (torch.arange(T) // tx) * ts
    off = torch.arange(ts * ts)
    px = tile_x0[:, None] + off[None] % ts  # [T, P] pixel column
    py = tile_y0[:, None] + off[None] // ts
    inside = (px < width) & (py < height)
    pix = (py.clamp(max=height - 1) * width + px.clamp(max=width - 1))[inside]  # flat pixel ids
    fx, fy = px.to(colors.dtype) + 0.5, py.to(colors.dtype) + 0.5
    out_c, out_a = [], []
    for i in range(I):
        with torch.no_grad():  # binning + top-K selection: no gradients needed
            vis = (radii[i] > 0).any(-1)
            lo, hi = means2d[i] - radii[i], means2d[i] + radii[i]  # [N, 2]
            overlap = (
                vis[None]
                & (hi[None, :, 0] > tile_x0[:, None])
                & (lo[None, :, 0] < tile_x0[:, None] + ts)
                & (hi[None, :, 1] > tile_y0[:, None])
                & (lo[None, :, 1] < tile_y0[:, None] + ts)
            )  # [T, N]
            k = max(1, min(K or int(overlap.sum(1).max()), N))
            key = torch.where(overlap, depths[i][None], torch.full_like(depths[i][None], torch.inf))
            dsel, idx = key.topk(k, dim=1, largest=False, sorted=True)  # [T, K] front to back
            valid = torch.isfinite(dsel)
        m, q = means2d[i][idx], conics[i][idx]  # [T, K, 2], [T, K, 3]
        dx = m[:, None, :, 0] - fx[:, :, None]  # [T, P, K]
        dy = m[:, None, :, 1] - fy[:, :, None]
        sigma = 0.5 * (q[:, None, :, 0] * dx * dx + q[:, None, :, 2] * dy * dy) + q[:, None, :, 1] * dx * dy
        alpha = torch.clamp(opacities[i][idx][:, None, :] * torch.exp(-sigma), max=0.999)
        keep = valid[:, None, :] & (sigma >= 0) & (alpha >= ALPHA_THRESHOLD)
        alpha = torch.where(keep, alpha, torch.zeros_like(alpha))
        t_incl = torch.cumprod(1.0 - alpha, dim=-1)
        t_excl = torch.cat([torch.ones_like(t_incl[..., :1]), t_incl[..., :-1]], -1)
        w = alpha * t_excl * (t_incl > 1e-4)  # [T, P, K]
        img = torch.einsum("tpk,tkd->tpd", w, colors[i][idx])  # [T, P, D]
        acc = w.sum(-1, keepdim=True)
        out_c.append(img.new_zeros(height * width, D).index_copy(0, pix, img[inside]).reshape(height, width, D))
        out_a.append(acc.new_zeros(height * width, 1).index_copy(0, pix, acc[inside]).reshape(height, width, 1))
    return torch.stack(out_c), torch.stack(out_a)


def timings(fn, repeats: int, warmup: bool = True) -> tuple[float, float]:  # (median, min) seconds
    if warmup:
        fn()  # numba cache load, allocator warm-up
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts), min(ts)


def _status_mb(field: str) -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    return float("nan")


def peak_memory_child() -> None:
    """Run in a fresh subprocess: peak RSS during 3 fwd+bwd passes at 4k / 4x64^2."""
    args = projected_inputs(make_scene(4000), 64)
    fwd_bwd(rasterize_to_pixels_cpu, projected_inputs(make_scene(10), 16), 16)  # load kernels
    before = _status_mb("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:  # reset VmHWM (the peak) to the current RSS
        f.write("5")
    for _ in range(3):
        fwd_bwd(rasterize_to_pixels_cpu, args, 64)
    peak = _status_mb("VmHWM")
    print(json.dumps({"delta_mb": peak - before, "peak_mb": peak}))


def loglog_fit(ns, ps, ts) -> tuple[float, float]:
    """Least squares log t = c + a log N + b log P -> (a, b)."""
    A = np.stack([np.ones(len(ts)), np.log(ns), np.log(ps)], 1)
    coef, *_ = np.linalg.lstsq(A, np.log(ts), rcond=None)
    return float(coef[1]), float(coef[2])


def max_diff(a, b) -> float:
    return max((a[0] - b[0]).abs().max().item(), (a[1] - b[1]).abs().max().item())


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="fewer repeats, baseline only at 4k/64")
    ap.add_argument("--peak-memory-child", action="store_true", help=argparse.SUPPRESS)
    opts = ap.parse_args()
    if opts.peak_memory_child:
        return peak_memory_child()
    t_start = time.perf_counter()
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} torch threads, {os.cpu_count()} CPUs, "
        f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', '(unset)')}, load average {os.getloadavg()[0]:.2f} "
        f"before starting"
    )
    fwd_bwd(rasterize_to_pixels_cpu, projected_inputs(make_scene(10), 16), 16)  # cached numba code loads here
    reps = 3 if opts.quick else 7
    rows, fit = {}, []
    header = (
        f"{'gaussians':>9} {'images':>8} {'isects':>7} {'max K':>6} {'ours ms':>8} {'(min)':>6} {'render() ms':>11} "
        f"{'torch ms':>9} {'speedup':>8} {'max|diff|':>9}"
    )
    print(header + "\n" + "-" * len(header))
    for res in (64, 128):
        for n in (1000, 4000, 16000):
            g = make_scene(n)
            args = projected_inputs(g, res)
            with torch.no_grad():  # tile intersections, longest tile list (the exact baseline's K)
                tiles = torch.stack([torch.floor((args[0] - args[5]) / 16), torch.ceil((args[0] + args[5]) / 16)], -2)
                tiles = tiles.clamp(0, -(-res // 16))
                isects = int(((tiles[..., 1, :] - tiles[..., 0, :]).prod(-1) * (args[5] > 0).any(-1)).sum())
            t_ours, t_ours_min = timings(lambda: fwd_bwd(rasterize_to_pixels_cpu, args, res), reps)
            t_render = timings(lambda: render_fwd_bwd(g, res), max(1, reps // 2))[0]
            fit.append((n, 4 * res * res, t_ours_min))
            # The exact baseline's [tiles, 256, K] tensors reach ~8 GB at 16k Gaussians: skipped.
            run_base = (n, res) == (4000, 64) or (not opts.quick and n <= 4000)
            t_base, diff = float("nan"), float("nan")
            if run_base:
                key = (n, res) == (4000, 64)
                t_base = timings(lambda: fwd_bwd(tiled_torch, args, res), 3 if key else 1, warmup=key)[0]
                diff = max_diff(fwd_bwd(rasterize_to_pixels_cpu, args, res), fwd_bwd(tiled_torch, args, res))
            rows[(n, res)] = (t_ours, t_base)
            print(
                f"{n:>9} {'4x' + str(res) + '^2':>8} {isects:>7} {'exact' if run_base else '-':>6} "
                f"{t_ours * 1e3:>8.1f} {t_ours_min * 1e3:>6.1f} {t_render * 1e3:>11.1f} {t_base * 1e3:>9.0f} "
                f"{t_base / t_ours:>8.1f} {diff:>9.1e}",
                flush=True,
            )
    # The same baseline truncated to the 256 nearest Gaussians per tile: faster, but wrong images.
    args = projected_inputs(make_scene(4000), 64)
    top256 = lambda *x: tiled_torch(*x, K=256)  # noqa: E731
    t_256 = timings(lambda: fwd_bwd(top256, args, 64), 3)[0]
    diff_256 = max_diff(fwd_bwd(rasterize_to_pixels_cpu, args, 64), fwd_bwd(top256, args, 64))
    print(
        f"{4000:>9} {'4x64^2':>8} {'':>7} {256:>6} {rows[(4000, 64)][0] * 1e3:>8.1f} {'':>6} {'':>11} "
        f"{t_256 * 1e3:>9.0f} "
        f"{t_256 / rows[(4000, 64)][0]:>8.1f} {diff_256:>9.1e}   <- top-256 truncated baseline (not faithful)"
    )

    child = subprocess.run(
        [sys.executable, os.path.abspath(__file__), "--peak-memory-child"], capture_output=True, text=True, check=True
    )
    mem = json.loads(child.stdout.strip().splitlines()[-1])
    print(
        f"\npeak memory, ours at 4k / 4x64^2 (fwd+bwd, fresh process): {mem['peak_mb']:.0f} MB peak RSS of the whole "
        f"process (torch + numba runtime included), +{mem['delta_mb']:.1f} MB above its RSS before rasterizing"
    )
    ex_n, ex_p = loglog_fit(*map(np.array, zip(*fit)))
    print(
        f"fitted time ~ N^{ex_n:.2f} * pixels^{ex_p:.2f} (ours, fwd+bwd, log-log least squares over {len(fit)} runs, "
        f"on the min of the repeats: bursts of load from other processes inflate single repeats)"
    )
    print(f"benchmark wall time {time.perf_counter() - t_start:.0f} s, load average now {os.getloadavg()[0]:.2f}\n")
    speedup = rows[(4000, 64)][1] / rows[(4000, 64)][0]
    for name, value, target, ok in (
        ("speedup_4k_4x64", speedup, 10, speedup >= 10),
        ("peak_mem_mb_4k_4x64", mem["peak_mb"], 1024, mem["peak_mb"] <= 1024),
        ("exponent_gaussians", ex_n, 1.3, ex_n <= 1.3),
        ("exponent_pixels", ex_p, 1.3, ex_p <= 1.3),
    ):
        print(f"BAR {name} {value:.2f} {target} {'PASS' if ok else 'FAIL'}")


if __name__ == "__main__":
    main()
