"""Colour-key matting quality on procedural images (issue 4's bar: mean IoU >= 0.95).

    python benchmarks/colorkey_matting.py [--count 200] [--resolution 128] [--quick]

What is measured: for ``count`` procedural objects of the **held-out** split (seeds never used
by the tiny profile's training shards), :class:`ProceduralGenerator` renders the object at the
input camera and composites it on its plain colour-key backdrop — the RGB a 2D generator
would emit. :class:`ColorKeyMatting` (the tiny profile's settings, from ``get_profile("tiny").rgba``)
estimates the alpha from that RGB alone; the IoU of ``alpha > 0.5`` against the renderer's
true ``alpha > 0.5`` is scored per image. Matting runs at the generator's resolution (the
tiny profile's ``render_resolution``, 128 px), i.e. before recentring/resizing, which is where
the matte is made. For reference the same images are also scored with the plain soft ramp
(no edge refinement) — the baseline the refinement has to beat — and at 64 px.

Prints mean / min / percentiles, the share of images with IoU >= 0.9, the mean absolute alpha
error on edge pixels, timing, and::

    BAR colorkey_iou_mean <value> 0.95 PASS|FAIL
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dd3g_core.profiles import get_profile  # noqa: E402
from dd3g_core.synthesis import ColorKeyMatting, ProceduralGenerator, alpha_iou  # noqa: E402


def score(resolution: int, count: int, cfg, refine: bool = True) -> dict:
    gen = ProceduralGenerator(resolution=resolution, num_gaussians=cfg.num_gaussians, split="heldout")
    matting = ColorKeyMatting(
        cfg.colorkey_low, cfg.colorkey_high, despill=cfg.despill, refine_radius=3.0 if refine else -1.0
    )
    ious, edge_err, t_gen, t_mat = [], [], 0.0, 0.0
    for seed in range(count):
        t0 = time.perf_counter()
        img = gen.generate_one(seed)
        t1 = time.perf_counter()
        alpha, _ = matting.alpha(img.rgb)
        t_mat += time.perf_counter() - t1
        t_gen += t1 - t0
        true = img.true_rgba[..., 3]
        est8 = np.clip(np.rint(alpha * 255), 0, 255)
        ious.append(alpha_iou(est8, true))
        edge = (true > 0) & (true < 255)
        if edge.any():
            edge_err.append(float(np.abs(est8[edge] - true[edge]).mean() / 255.0))
    ious = np.asarray(ious)
    return {"ious": ious, "edge_err": float(np.mean(edge_err)), "t_gen": t_gen / count, "t_mat": t_mat / count}


def report(name: str, r: dict) -> None:
    ious = r["ious"]
    p = np.percentile(ious, [1, 5, 25, 50])
    print(
        f"{name:<28} n={len(ious)} mean={ious.mean():.4f} min={ious.min():.4f} p1={p[0]:.4f} p5={p[1]:.4f} "
        f"p25={p[2]:.4f} median={p[3]:.4f} share>=0.9={np.mean(ious >= 0.9):.3f} "
        f"edge|da|={r['edge_err']:.3f} matting {1000 * r['t_mat']:.1f} ms/img"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--count", type=int, default=200)
    ap.add_argument("--resolution", type=int, default=None, help="default: the tiny preset's render_resolution")
    ap.add_argument("--quick", action="store_true", help="40 images, for a smoke run")
    args = ap.parse_args()
    cfg = get_profile("tiny").rgba
    count = 40 if args.quick else args.count
    res = args.resolution or cfg.render_resolution
    print(
        f"colour-key matting vs true alpha: {count} held-out procedural objects, {res} px, "
        f"low={cfg.colorkey_low} high={cfg.colorkey_high} (load avg {os.getloadavg()[0]:.2f})"
    )
    main_r = score(res, count, cfg)
    report(f"ColorKeyMatting @{res}", main_r)
    report(f"soft ramp only @{res}", score(res, count, cfg, refine=False))
    if res != 64:
        report("ColorKeyMatting @64", score(64, count, cfg))
    ious = main_r["ious"]
    worst = np.argsort(ious)[:5]
    print("worst held-out seeds (offset in split):", ", ".join(f"{int(i)}:{ious[i]:.3f}" for i in worst))
    value = float(ious.mean())
    print(f"BAR colorkey_iou_mean {value:.4f} 0.95 {'PASS' if value >= 0.95 else 'FAIL'}")
    share = float(np.mean(ious >= 0.9))
    print(f"BAR colorkey_share_iou_ge_0.9 {share:.3f} 0.95 {'PASS' if share >= 0.95 else 'FAIL'}")


if __name__ == "__main__":
    main()
