"""Evaluation on a user's own images (no ground truth): ``dd3g eval --inputs GLOB``.

Without ground truth the measurable things are the teacher and the student themselves: per image
(prepared like ``dd3g generate`` prepares it) and noise draw (``noise_seed(f"input-{name}", d)``)

* agreement of the student's renders at the teacher's cameras C with the teacher's OI from the
  same N, seen view and unseen views;
* at the input's own view and display resolution, the student's silhouette against the input's
  alpha (``iou_seen``) and fog in a band around the input's silhouette (``fog_alpha_seen``,
  ``fog_black_seen``): the one view where the input is the ground truth;
* Gaussian statistics, diversity across draws (student and teacher), latency;
* pictures: input | the teacher's views | the student's at the same cameras on white and on black,
  and the student around the object on black.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..exports import save_png, views_grid
from ..io import atomic_write_bytes, atomic_write_json
from .gaussian_stats import gaussian_statistics
from .metrics import fog, foreground_iou, psnr, ssim
from .references import teacher_sampling
from .report import finite_json

__all__ = ["evaluate_inputs"]


def _rows(x: torch.Tensor) -> np.ndarray:  # [N, 3, H, W] -> uint8 [N, H, W, 3]
    return np.clip(np.rint(x.permute(0, 2, 3, 1).numpy() * 255), 0, 255).astype(np.uint8)


@torch.no_grad()
def evaluate_inputs(
    model,
    teacher,
    images: Sequence[tuple[str, np.ndarray]],  # (name, uint8 [S, S, 4] prepared RGBA)
    settings,
    out_dir: str | Path,
    header: dict | None = None,
    log: Callable[[str], None] = print,
    backend: str = "auto",
) -> dict:
    from ..render import render
    from ..trajectories import noise_seed
    from .suite import check_student_matches_teacher, measure_latency

    check_student_matches_teacher(model, teacher)
    t0 = time.perf_counter()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    cams = teacher.cameras()
    res = cams.resolution
    d = res * settings.display_scale
    bg = torch.tensor(teacher.background, dtype=torch.float32)
    dev = teacher.device
    vm_d, ks_d = teacher.layout.cameras(resolution=d)
    lay = teacher.layout
    from ..cameras import orbit_cameras

    ring_az = torch.arange(8, dtype=torch.float32) * 45.0 + float(lay.azimuths_deg[0])
    ring_vm, ring_ks = orbit_cameras(ring_az, float(lay.elevation_deg), lay.radius, lay.fov_deg, d, d)
    per_image, kept, tiles, rings = [], [], [], []
    for name, rgba in images:
        image = torch.from_numpy(np.ascontiguousarray(rgba)).permute(2, 0, 1)[None].to(dev)
        cond = teacher.encode_condition(image)
        row: dict = {"name": name}
        at_c, oi_draws = [], []
        for draw in range(settings.draws):
            noise = teacher.draw_noise(1, noise_seed(f"input-{name}", draw))
            oi = teacher.sample(cond, noise, cameras=cams, **teacher_sampling(settings)).images.float().cpu()
            g = model(noise, cams.embedding, cond, image, cams.viewmats, cams.Ks, res).gaussians
            r = render(
                g, cams.viewmats[None].to(dev), cams.Ks[None].to(dev), res, res, background=bg.to(dev), backend=backend
            )
            pred = r.rgb.permute(0, 1, 4, 2, 3).float().cpu().clamp(0, 1)
            a, s = psnr(pred, oi)[0], ssim(pred, oi)[0]
            for k, v in (
                ("agree_seen", a[0]),
                ("agree_unseen", a[1:].mean()),
                ("agree_seen_ssim", s[0]),
                ("agree_unseen_ssim", s[1:].mean()),
            ):
                row[k] = row.get(k, 0.0) + float(v) / settings.draws
            at_c.append(pred)
            oi_draws.append(oi)
            if draw == 0:
                kept.append(g.to("cpu"))
                view = render(g, vm_d[None, :1].to(dev), ks_d[None, :1].to(dev), d, d, background=None, backend=backend)
                premul = view.rgb.permute(0, 1, 4, 2, 3).float().cpu().clamp(0, 1)
                alpha = view.alpha.permute(0, 1, 4, 2, 3).float().cpu().clamp(0, 1)
                straight = image.float().cpu() / 255.0
                in_alpha = F.interpolate(straight[:, 3:], size=(d, d), mode="bilinear", antialias=True)[:, None]
                row["iou_seen"] = float(foreground_iou(alpha, in_alpha)[0, 0])
                f = fog(alpha, premul, in_alpha, max(1, round(settings.fog_band * d)))
                row["fog_alpha_seen"], row["fog_black_seen"] = float(f["fog_alpha"][0, 0]), float(f["fog_black"][0, 0])
                both = render(g, vm_d[None].to(dev), ks_d[None].to(dev), d, d, background=None, backend=backend)
                p, al = both.rgb[0].permute(0, 3, 1, 2).float().cpu(), both.alpha[0].permute(0, 3, 1, 2).float().cpu()
                inp = F.interpolate(
                    straight[:, :3] * straight[:, 3:] + bg.reshape(1, 3, 1, 1) * (1 - straight[:, 3:]),
                    size=(d, d),
                    mode="bilinear",
                    antialias=True,
                ).clamp(0, 1)
                up = F.interpolate(oi[0], size=(d, d), mode="bicubic", align_corners=False).clamp(0, 1)
                on_white = (p + bg.reshape(1, 3, 1, 1) * (1 - al)).clamp(0, 1)
                tiles.append(np.concatenate([_rows(inp), _rows(up), _rows(on_white), _rows(p.clamp(0, 1))]))
                ring = render(g, ring_vm[None].to(dev), ring_ks[None].to(dev), d, d, background=None, backend=backend)
                rings.append(_rows(ring.rgb[0].permute(0, 3, 1, 2).float().cpu().clamp(0, 1)))
        if settings.draws > 1:
            row["diversity"] = float(psnr(at_c[0], at_c[1]).mean())
            row["teacher_diversity"] = float(psnr(oi_draws[0], oi_draws[1]).mean())
        per_image.append(row)
        log(
            f"{name}: agree seen {row['agree_seen']:.2f} dB, unseen {row['agree_unseen']:.2f} dB, "
            f"fog alpha {row['fog_alpha_seen']:.3f}"
        )
    keys = [k for k in per_image[0] if k != "name"]
    means = {}
    for k in keys:
        vals = torch.tensor([r[k] for r in per_image if k in r])
        ok = torch.isfinite(vals)
        means[k] = float(vals[ok].mean()) if ok.any() else float("nan")
    nonfinite = {k: [r["name"] for r in per_image if not np.isfinite(r.get(k, 0.0))] for k in keys}
    nonfinite = {k: v for k, v in nonfinite.items() if v}
    from ..gaussians import Gaussians
    from .references import GAUSSIAN_FIELDS

    g_all = Gaussians(**{k: torch.cat([getattr(g, k) for g in kept]) for k in GAUSSIAN_FIELDS})
    stats = gaussian_statistics(g_all, lay.radius, lay.fov_deg, res, d)
    first = torch.from_numpy(np.ascontiguousarray(images[0][1])).permute(2, 0, 1)[None]
    latency = measure_latency(model, teacher, first, repeats=2)
    n_tiles = 1 + 3 * cams.num_views  # input | the teacher's V views | V on white | V on black
    save_png(views_grid(np.concatenate(tiles), ncols=n_tiles, pad=2, pad_value=128), out / "inputs_compare.png")
    save_png(views_grid(np.concatenate(rings), ncols=8, pad=2, pad_value=128), out / "inputs_sides_black.png")
    metrics = {
        "header": dict(header or {}),
        "mode": "inputs",
        "means": means,
        "nonfinite": nonfinite,
        "per_image": per_image,
        "gaussian_statistics": stats,
        "latency": latency,
        "parameters": model.num_parameters()["total"],
        "seconds": round(time.perf_counter() - t0, 1),
    }
    atomic_write_json(out / "metrics.json", finite_json(metrics))
    lines = [
        "# Evaluation on your images (no ground truth)",
        "",
        *(f"- **{k}**: {v}" for k, v in (header or {}).items()),
        "",
        "| image | agree seen dB | agree unseen dB | IoU seen | fog α seen | fog on black seen | diversity dB |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in [*per_image, {"name": "**mean**", **means}]:
        lines.append(
            f"| {r['name']} | {r['agree_seen']:.2f} | {r['agree_unseen']:.2f} | {r['iou_seen']:.3f} | "
            f"{r['fog_alpha_seen']:.3f} | {r['fog_black_seen']:.3f} | {r.get('diversity', float('nan')):.2f} |"
        )
    lines += [
        "",
        f"Gaussians: median opacity {stats.get('opacity_median', float('nan')):.3f}, "
        f"{stats.get('transparent_share', float('nan')):.1%} below 0.05; largest σ median "
        f"{stats.get('scale_px_median', float('nan')):.2f} px at {res} px. Student {latency['student_ms']:.1f} ms, "
        f"teacher {latency['teacher_ms']:.0f} ms per image ({latency['speedup']:.0f}x).",
        "",
        "Rows: input | the teacher's 4 views | the student at those cameras on white | on black.",
        "",
        "![compare](inputs_compare.png)",
        "",
        "The student from 8 sides on black:",
        "",
        "![sides](inputs_sides_black.png)",
        "",
    ]
    if nonfinite:
        lines += ["Non-finite scores (excluded from the means): " + str(nonfinite), ""]
    atomic_write_bytes(out / "report.md", "\n".join(lines).encode())
    return metrics
