"""Scoring a student on a folder of rendered objects (``dd3g eval --folder``; the full profile's
``evaluation.folder``): the peers' GSO protocol on the user's own renders.

Per object (:mod:`.folder` reads them; the objects must be rendered in the project's frame: centred,
within the teacher's orbit, see docs/evaluation_folder.md): the student's Gaussians from the input and
noise draw 0 are rendered at every view's camera at the views' resolution and compared with them
(PSNR, SSIM, LPIPS when local weights exist, foreground IoU and fog when the views have alpha); the
copy-input floor next to it; CLIP image similarity between the renders at the views at elevation 0
(8 of them when there are more) on white and the input, when local CLIP weights exist.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from ..exports import save_png, views_grid
from ..io import atomic_write_bytes, atomic_write_json
from .metrics import fog, foreground_iou, lpips_or_none, psnr, ssim
from .report import finite_json

__all__ = ["evaluate_folder"]

CLIP_VIEWS = 8


def _clip_views(obj) -> torch.Tensor:  # indices of the views at elevation ~0, at most 8, evenly spread
    el = obj.elevation_deg if obj.elevation_deg is not None else torch.zeros(obj.num_views)
    idx = (el.abs() < 5.0).nonzero().flatten()
    if len(idx) == 0:
        idx = torch.arange(obj.num_views)
    return idx[:: max(1, len(idx) // CLIP_VIEWS)][:CLIP_VIEWS]


@torch.no_grad()
def evaluate_folder(
    checkpoint,
    teacher,
    root,
    settings,
    out_dir,
    header: dict | None = None,
    log: Callable[[str], None] = print,
    backend: str = "auto",
) -> dict:
    from ..model import PEPD
    from ..render import render
    from ..trajectories import noise_seed
    from .clip import clip_scorer_or_none
    from .folder import load_eval_folder
    from .suite import check_student_matches_teacher

    t0 = time.perf_counter()
    model = PEPD.from_pretrained(checkpoint, device=teacher.device)
    check_student_matches_teacher(model, teacher, checkpoint)
    res = teacher.layout.resolution * settings.display_scale
    white = (1.0, 1.0, 1.0)
    objects = load_eval_folder(root, res, background=white, input_size=max(64, teacher.layout.resolution))
    for name, why in objects.rejects:
        log(f"rejected {name}: {why}")
    lpips, lpips_name = lpips_or_none(settings.lpips_weights, teacher.device)
    clip, clip_name = clip_scorer_or_none(settings.clip_weights, teacher.device)
    cams = teacher.cameras()
    dev = teacher.device
    rows, tiles = [], []
    band = max(1, round(settings.fog_band * res))
    for obj in objects:
        image = obj.input_rgba[None].to(dev)
        noise = teacher.draw_noise(1, noise_seed(f"folder-{obj.name}", 0))
        g = model(
            noise, cams.embedding, teacher.encode_condition(image), image, cams.viewmats, cams.Ks, cams.resolution
        ).gaussians
        r = render(g, obj.viewmats[None].to(dev), obj.Ks[None].to(dev), res, res, background=None, backend=backend)
        premul = r.rgb[0].permute(0, 3, 1, 2).float().cpu().clamp(0, 1)[None]
        alpha = r.alpha[0].permute(0, 3, 1, 2).float().cpu().clamp(0, 1)[None]
        pred = (premul + torch.tensor(white).reshape(1, 1, 3, 1, 1) * (1 - alpha)).clamp(0, 1)
        gt = obj.views[None].float()
        row = {
            "name": obj.name,
            "views": obj.num_views,
            "psnr": float(psnr(pred, gt).mean()),
            "ssim": float(ssim(pred, gt).mean()),
        }
        if lpips is not None:
            row["lpips"] = float(lpips(pred, gt).mean())
        if obj.views_have_alpha:
            gt_alpha = obj.alpha[None].float()
            row["iou"] = float(foreground_iou(alpha, gt_alpha).mean())
            f = fog(alpha, premul, gt_alpha, band)
            row["fog_alpha"], row["fog_black"] = float(f["fog_alpha"].mean()), float(f["fog_black"].mean())
        straight = obj.input_rgba.float() / 255.0
        from ..images import resize_square

        inp = resize_square(straight[None], res)[0]
        copy = (inp[:3] * inp[3:] + (1 - inp[3:])).clamp(0, 1)
        row["copy_input_psnr"] = float(psnr(copy.expand(obj.num_views, -1, -1, -1)[None], gt).mean())
        if clip is not None:
            idx = _clip_views(obj)
            row["clip"] = float(clip.image_similarity(pred[:, idx], copy[None]).mean())
        rows.append(row)
        if len(tiles) < settings.grid_objects * 2:
            idx = _clip_views(obj)[:4]
            to8 = lambda x: np.clip(np.rint(x.permute(0, 2, 3, 1).numpy() * 255), 0, 255).astype(np.uint8)  # noqa: E731
            tiles.append(np.concatenate([to8(copy[None]), to8(gt[0, idx]), to8(pred[0, idx])]))
            # the views were composited on white: on black they are views - (1 - alpha)
            gt_black = (obj.views[idx] - (1 - obj.alpha[idx])).clamp(0, 1) if obj.views_have_alpha else obj.views[idx]
            tiles.append(np.concatenate([to8(inp[None, :3] * inp[None, 3:]), to8(gt_black), to8(premul[0, idx])]))
        log(f"{obj.name}: PSNR {row['psnr']:.2f} dB over {obj.num_views} views")
    keys = sorted({k for r in rows for k in r if k not in ("name", "views")})
    means = {k: float(np.nanmean([r[k] for r in rows if k in r])) for k in keys}
    nonfinite = {k: [r["name"] for r in rows if k in r and not np.isfinite(r[k])] for k in keys}
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if tiles:
        save_png(
            views_grid(np.concatenate(tiles), ncols=len(tiles[0]), pad=2, pad_value=128), out / "folder_compare.png"
        )
    metrics = {
        "header": {**(header or {}), "folder": str(root)},
        "mode": "folder",
        "means": means,
        "nonfinite": {k: v for k, v in nonfinite.items() if v},
        "per_object": rows,
        "rejects": [list(r) for r in objects.rejects],
        "LPIPS": lpips_name,
        "CLIP": clip_name,
        "seconds": round(time.perf_counter() - t0, 1),
    }
    atomic_write_json(out / "metrics.json", finite_json(metrics))
    lines = [
        f"# Evaluation on {root}",
        "",
        f"- checkpoint: {checkpoint}",
        f"- LPIPS: {lpips_name}",
        f"- CLIP: {clip_name} (renders at up to {CLIP_VIEWS} views at elevation 0 on white vs the input)",
        f"- objects: {len(rows)} scored, {len(objects.rejects)} rejected",
        "",
        "| object | " + " | ".join(keys) + " |",
        "|---|" + "---|" * len(keys),
    ]
    for r in [*rows, {"name": "**mean**", **means}]:
        lines.append(f"| {r['name']} | " + " | ".join(f"{r[k]:.3f}" if k in r else "—" for k in keys) + " |")
    lines += [
        "",
        "Rows per object: input | ground truth | student on white, then on black.",
        "",
        "![compare](folder_compare.png)",
        "",
    ]
    atomic_write_bytes(out / "report.md", "\n".join(lines).encode())
    return metrics
