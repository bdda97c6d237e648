"""Student evaluation on held-out procedural objects (DESIGN §5): teacher agreement, novel views
against ground truth, diversity across noise draws.

Data (``heldout_set``): the first ``n`` seeds of the ``heldout`` split, rendered as the teacher's
training data (``teacher.data.render_example``): the 64 px RGBA input of the layout's input
camera and the layout's views; plus ground truth at *novel* cameras the teacher never produces
(azimuths 45/135/225/315 at elevation 0, and the layout azimuths at elevation 20), rendered the
same way (2x supersampled, composited on the teacher's background, antialias-resized).
Each object gets its noise N from ``trajectories.noise_seed(f"heldout-{seed}", draw)``: the same
rule the trajectory cache uses, so a run is reproducible.

Numbers (PSNR in dB, per image then averaged):

* ``student_vs_teacher`` — student renders at C vs the teacher's OI from the same N;
* ``copy_input_vs_teacher`` — the input (composited, resized) copied to every view vs OI;
* ``teacher_vs_gt`` / ``student_vs_gt`` at the layout views (seen = view 0, unseen = the rest);
* ``student_novel_vs_gt`` — renders at the novel cameras;
* ``student_diversity`` — PSNR between the student's renders for two noise draws (lower = more diverse).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ..cameras import orbit_cameras
from ..images import prepare_images, resize_square
from .metrics import psnr, ssim

__all__ = ["HeldoutSet", "heldout_set", "evaluate_student", "NOVEL_AZIMUTHS", "NOVEL_ELEVATION"]

NOVEL_AZIMUTHS = (45.0, 135.0, 225.0, 315.0)
NOVEL_ELEVATION = 20.0


@dataclass
class HeldoutSet:
    seeds: list[int]
    inputs: Tensor  # [B, 4, 64, 64] uint8 RGBA
    gt: Tensor  # [B, V, 3, R, R] layout views
    novel_gt: Tensor  # [B, Vn, 3, R, R] novel views
    novel_viewmats: Tensor  # [Vn, 4, 4]
    novel_Ks: Tensor  # [Vn, 3, 3]


def _novel_cameras(layout, resolution: int) -> tuple[Tensor, Tensor]:
    az = list(NOVEL_AZIMUTHS) + list(layout.azimuths_deg)
    el = [layout.elevation_deg] * len(NOVEL_AZIMUTHS) + [layout.elevation_deg + NOVEL_ELEVATION] * layout.num_views
    return orbit_cameras(torch.tensor(az), torch.tensor(el), layout.radius, layout.fov_deg, resolution, resolution)


def heldout_set(n: int, teacher, num_gaussians: int = 3000, supersample: int = 2) -> HeldoutSet:
    from ..render.views import render_views
    from ..teacher.training.data import RenderSpec, render_example
    from ..world import sample_object, split_seeds

    layout = teacher.layout
    spec = RenderSpec(layout=_layout_name(layout), background=tuple(teacher.background), num_gaussians=num_gaussians)
    seeds = [int(s) for s in split_seeds("heldout", n)]
    big = layout.resolution * supersample
    vm_big, ks_big = _novel_cameras(layout, big)
    bg = torch.tensor(teacher.background, dtype=torch.float32)
    inputs, gts, novel = [], [], []
    for s in seeds:
        rgba, views = render_example(s, spec)
        inputs.append(torch.from_numpy(rgba))
        gts.append(torch.from_numpy(views).float() / 255.0)
        g = sample_object(s, num_gaussians)
        premul, alpha = render_views(g, vm_big, ks_big, big, background=None)
        comp = (premul + bg.reshape(1, 1, 1, 3) * (1 - alpha)).clamp(0, 1).permute(0, 3, 1, 2)
        novel.append((resize_square(comp, layout.resolution).clamp(0, 1) * 255).round() / 255.0)
    vm, ks = _novel_cameras(layout, layout.resolution)
    return HeldoutSet(seeds, torch.stack(inputs), torch.stack(gts), torch.stack(novel), vm, ks)


def _layout_name(layout) -> str:
    from ..cameras import LAYOUTS

    for name, lay in LAYOUTS.items():
        if lay == layout:
            return name
    raise ValueError(f"the teacher's layout {layout} is not a named layout")


@torch.no_grad()
def evaluate_student(
    model, teacher, data: HeldoutSet, draws: int = 2, batch: int = 16, backend: str = "auto"
) -> dict[str, float]:
    from ..render import render
    from ..trajectories import noise_seed

    cams = teacher.cameras()
    res = teacher.layout.resolution
    bg = torch.tensor(teacher.background, dtype=torch.float32)
    v = cams.num_views
    rows: dict[str, list[Tensor]] = {}

    def add(name: str, x: Tensor) -> None:
        rows.setdefault(name, []).append(x)

    for s in range(0, len(data.seeds), batch):
        sl = slice(s, s + batch)
        inputs, gt, ngt = data.inputs[sl], data.gt[sl], data.novel_gt[sl]
        cond = teacher.encode_condition(inputs)
        copy = prepare_images(inputs, res, teacher.background)[:, None].expand(-1, v, -1, -1, -1)
        renders = []
        for d in range(draws):
            noise = torch.cat([teacher.draw_noise(1, noise_seed(f"heldout-{seed}", d)) for seed in data.seeds[sl]])
            oi = teacher.sample(cond, noise, cameras=cams).images
            out = model(noise, cams.embedding, cond, inputs, cams.viewmats, cams.Ks, res)
            r = render(out.gaussians, cams.viewmats, cams.Ks, res, res, background=bg, backend=backend)
            pred = r.rgb.permute(0, 1, 4, 2, 3)
            rn = render(out.gaussians, data.novel_viewmats, data.novel_Ks, res, res, background=bg, backend=backend)
            pred_n = rn.rgb.permute(0, 1, 4, 2, 3)
            renders.append(pred)
            add("student_vs_teacher", psnr(pred, oi))
            add("student_vs_teacher_ssim", ssim(pred, oi))
            add("copy_input_vs_teacher", psnr(copy, oi))
            add("teacher_vs_gt", psnr(oi, gt))
            add("student_vs_gt", psnr(pred, gt))
            add("copy_input_vs_gt", psnr(copy, gt))
            add("student_novel_vs_gt", psnr(pred_n, ngt))
            add("student_novel_vs_gt_ssim", ssim(pred_n, ngt))
        if draws > 1:
            add("student_diversity", psnr(renders[0], renders[1]))
    cat = {k: torch.cat(x) for k, x in rows.items()}  # [B*draws, V]
    nv = len(NOVEL_AZIMUTHS)
    out: dict[str, float] = {}
    for k, x in cat.items():
        out[k] = x.mean().item()
        if x.shape[1] == v and "ssim" not in k and k != "student_diversity":
            out[k + "_seen"] = x[:, 0].mean().item()
            out[k + "_unseen"] = x[:, 1:].mean().item()
        if k == "student_novel_vs_gt":
            out[k + "_el0"] = x[:, :nv].mean().item()
            out[k + f"_el{int(NOVEL_ELEVATION)}"] = x[:, nv:].mean().item()
    out["objects"] = float(len(data.seeds))
    out["draws"] = float(draws)
    return out
