"""What a student is compared with, computed once per teacher and evaluation settings.

``build_references(teacher, settings, num_gaussians)``:

1. the held-out objects and their ground truth (:func:`.heldout.heldout_set`);
2. the teacher's own views: OI from every object's N for each of ``settings.draws`` draws (DDIM with
   ``settings.teacher_steps`` / ``teacher_guidance``, None = the teacher's defaults: as the trajectory
   cache samples);
3. the per-sample fit ceiling (:mod:`.fit`) on the first ``settings.fit_objects`` objects, fitted to
   draw 0's OI with the student's number of Gaussians.

They depend on the teacher and the settings, not on the student, so the Dagster
``evaluation_references`` asset caches them across students (``<dir>/references.safetensors`` +
``references.json``; tensors only, no pickle) and every student of a run (the main one, the
ablations) is scored against the same OI.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..gaussians import Gaussians
from ..progress import Progress
from .heldout import HeldoutSet, NovelCameras, heldout_noise, heldout_set

__all__ = [
    "References",
    "build_references",
    "teacher_sampling",
    "save_references",
    "load_references",
    "REFERENCES_FORMAT",
]

# 2: the fit ceiling on the student's objective (matte, random backgrounds); 3: its matte's edges unmixed
REFERENCES_FORMAT = "dd3g-eval-references-3"
TENSORS = "references.safetensors"
META = "references.json"
GAUSSIAN_FIELDS = ("means", "quats", "log_scales", "opacity_logits", "sh")


@dataclass
class References:
    data: HeldoutSet
    teacher_views: Tensor  # [D, B, V, 3, R, R] float16 OI per draw
    fit: Gaussians | None  # batched [F, N]: the fit ceiling of the first F objects
    meta: dict[str, Any]  # settings, teacher description, timings, fit losses

    @property
    def draws(self) -> int:
        return int(self.teacher_views.shape[0])

    def oi(self, draw: int, index) -> Tensor:  # [b, V, 3, R, R] float32
        return self.teacher_views[draw][index].float()


def teacher_sampling(settings) -> dict[str, Any]:
    """``teacher.sample``'s steps and guidance for the teacher's own views (None: its defaults)."""
    return {"steps": getattr(settings, "teacher_steps", None), "guidance": getattr(settings, "teacher_guidance", None)}


def build_references(
    teacher, settings, num_gaussians: int, log: Callable[[str], None] = print, backend: str = "auto"
) -> References:
    from .fit import fit_gaussians

    t0 = time.perf_counter()
    data = heldout_set(
        settings.heldout_objects, teacher, settings.novel_azimuths, settings.novel_elevations, settings.display_scale
    )
    t_data = time.perf_counter() - t0
    log(f"held-out set: {len(data)} objects, {data.novel.num_views} novel cameras ({t_data:.0f} s)")
    cams = teacher.cameras()
    views = []
    progress = Progress("teacher views", settings.draws * len(data), log)
    for draw in range(settings.draws):
        for start in range(0, len(data), settings.batch_size):
            sl = slice(start, start + settings.batch_size)
            cond = teacher.encode_condition(data.inputs[sl].to(teacher.device))
            noise = heldout_noise(teacher, data.seeds[sl], draw)
            oi = teacher.sample(cond, noise, cameras=cams, **teacher_sampling(settings)).images
            views.append(oi.float().cpu().to(torch.float16))
            progress.update(len(oi))
    progress.close()
    teacher_views = torch.cat(views).reshape(settings.draws, len(data), *views[0].shape[1:])
    t_teacher = time.perf_counter() - t0 - t_data
    fit, losses, t_fit = None, [], 0.0
    nf = min(settings.fit_objects, len(data))
    if nf and settings.fit_steps:
        t1 = time.perf_counter()
        fit, losses = fit_gaussians(
            teacher_views[0, :nf].float().to(teacher.device),
            cams.viewmats,
            cams.Ks,
            tuple(teacher.background),
            num_gaussians,
            settings.fit_steps,
            backend=backend,
            log=log,
        )
        fit = fit.to("cpu")
        t_fit = time.perf_counter() - t1
        log(f"fit ceiling: {nf} objects x {settings.fit_steps} steps, final RGB MSE {losses[-1]:.5f} ({t_fit:.0f} s)")
    meta = {
        "format": REFERENCES_FORMAT,
        "settings": settings.to_dict(),
        "teacher": {k: v for k, v in teacher.describe().items() if k != "config"},
        "background": list(teacher.background),
        "num_gaussians": int(num_gaussians),
        "fit_objects": nf if fit is not None else 0,
        "fit_losses": [round(x, 7) for x in losses[:: max(1, len(losses) // 50)]] + ([losses[-1]] if losses else []),
        "seconds": {"heldout": round(t_data, 1), "teacher": round(t_teacher, 1), "fit": round(t_fit, 1)},
        "novel": {
            "azimuths_deg": data.novel.azimuths_deg.tolist(),
            "elevations_deg": data.novel.elevations_deg.tolist(),
            "radius": data.novel.radius,
            "fov_deg": data.novel.fov_deg,
        },
        "seeds": data.seeds,
        "resolutions": sorted(data.novel_premul),
    }
    return References(data, teacher_views, fit, meta)


def save_references(refs: References, directory: str | Path) -> Path:
    """Write into ``directory`` (the caller publishes it atomically)."""
    from safetensors.torch import save_file

    from ..io import atomic_write_json

    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    t = {
        "inputs": refs.data.inputs,
        "layout_gt": refs.data.layout_gt,
        "teacher_views": refs.teacher_views,
    }
    for r in refs.data.novel_premul:
        t[f"novel_premul_{r}"] = refs.data.novel_premul[r]
        t[f"novel_alpha_{r}"] = refs.data.novel_alpha[r]
    if refs.fit is not None:
        t.update({f"fit_{k}": getattr(refs.fit, k) for k in GAUSSIAN_FIELDS})
    save_file({k: v.contiguous() for k, v in t.items()}, str(d / TENSORS))
    atomic_write_json(d / META, refs.meta)
    return d


def load_references(directory: str | Path) -> References:
    from safetensors.torch import load_file

    d = Path(directory)
    if not (d / META).is_file() or not (d / TENSORS).is_file():
        raise FileNotFoundError(f"{d} holds no evaluation references (expected {META} and {TENSORS})")
    try:
        meta = json.loads((d / META).read_text(encoding="utf-8"))
        if meta.get("format") != REFERENCES_FORMAT:
            raise ValueError(f"format {meta.get('format')!r}, expected {REFERENCES_FORMAT!r}")
        t = load_file(str(d / TENSORS))
        n = meta["novel"]
        novel = NovelCameras(
            torch.tensor(n["azimuths_deg"]), torch.tensor(n["elevations_deg"]), n["radius"], n["fov_deg"]
        )
        res = [int(r) for r in meta["resolutions"]]
        data = HeldoutSet(
            seeds=[int(s) for s in meta["seeds"]],
            inputs=t["inputs"],
            layout_gt=t["layout_gt"],
            novel=novel,
            novel_premul={r: t[f"novel_premul_{r}"] for r in res},
            novel_alpha={r: t[f"novel_alpha_{r}"] for r in res},
        )
        fit = Gaussians(**{k: t[f"fit_{k}"] for k in GAUSSIAN_FIELDS}) if "fit_means" in t else None
    except (KeyError, TypeError, ValueError, OSError) as e:
        raise ValueError(
            f"{d}: damaged evaluation references ({type(e).__name__}: {e}); delete it to rebuild"
        ) from None
    return References(data, t["teacher_views"], fit, meta)
