"""The distillation objective of one micro-batch (DESIGN §1): ``L = L_exp + ramp(step) * lambda * L_imp``.

Explicit supervision against the teacher's cached views (optionally on random backgrounds, the seen view
weighted), the Gaussian health statistics, the optional surface / solid / opacity-decision terms, and the
ramped implicit (SDS) verification at a rotated camera. Its own module (the loss terms themselves are
:mod:`.losses`) because the trainer (:mod:`.train`, which re-exports it) and the GPU benchmarks
(``benchmarks/memory_table.py``, ``benchmarks/gpu_check_steps.py``) all call this one function.
"""

from __future__ import annotations

from typing import Any

import torch

from ..render import render
from .config import DistillConfig
from .health import gaussian_health
from .losses import (
    explicit_supervision_loss,
    implicit_verification_loss,
    opacity_decision_loss,
    ramp_weight,
    recomposite,
    sample_timesteps,
    surface_consistency_loss,
)
from .matte import teacher_matte

__all__ = ["compute_losses"]


def compute_losses(
    model,
    teacher,
    b: dict[str, Any],
    cfg: DistillConfig,
    step: int,
    micro: int,
    generator: torch.Generator,
    perceptual=None,
) -> dict[str, torch.Tensor]:
    """The joint objective of one micro-batch: ``L = L_exp + ramp(step) * lambda * L_imp``."""
    res = b["views"].shape[-1]
    bg = torch.tensor(teacher.background, dtype=torch.float32, device=b["noise"].device)
    with torch.no_grad():
        condition = teacher.encode_condition(b["image"])
    out = model(b["noise"], b["cameras"], condition, b["image"], b["viewmats"], b["Ks"], res)
    g = out.gaussians
    with torch.autocast(device_type=b["noise"].device.type, enabled=False):  # rasterize in fp32
        r = render(g, b["viewmats"], b["Ks"], res, res, background=None, backend=cfg.render_backend)  # premultiplied
    alpha_t = teacher_matte(  # the colour key, or its edges unmixed (a light rim otherwise: distill.matte)
        b["views"],
        tuple(teacher.background),
        cfg.alpha_softness,
        cfg.alpha_floor,
        cfg.alpha_connected,
        cfg.alpha_unmix_rings,
    )
    bsz, nv = b["views"].shape[:2]
    backgrounds = bg.expand(bsz, nv, 3)
    target = b["views"]
    if cfg.random_background > 0:  # fog cannot hide on a background that is not the teacher's
        pick = torch.rand((bsz, nv, 1), generator=generator) < cfg.random_background
        colours = torch.rand((bsz, nv, 3), generator=generator)
        backgrounds = torch.where(pick, colours, backgrounds.cpu()).to(bg.device)
        target = recomposite(b["views"], alpha_t, tuple(teacher.background), backgrounds)
    on_background = r.rgb + (1 - r.alpha) * backgrounds[:, :, None, None, :]
    pcfg = getattr(model, "module", model).config
    view_weights = None
    if cfg.seen_view_weight != 1.0 and 0 <= pcfg.input_view < nv:  # the input's own view: a sharper copy of II
        view_weights = torch.ones(nv, device=bg.device)
        view_weights[pcfg.input_view] = cfg.seen_view_weight
    terms = explicit_supervision_loss(
        on_background, r.alpha, target, alpha_t, cfg.alpha_weight, perceptual, cfg.perceptual_weight, view_weights
    )
    losses = {"exp_" + k: v for k, v in terms.items()}
    losses.update(gaussian_health(g.opacity_logits, g.log_scales, pcfg.min_scale, pcfg.max_scale))
    ramp = ramp_weight(step, *cfg.implicit_ramp)
    total = terms["total"]
    if cfg.surface_weight > 0:
        grid = pcfg.grid_resolution
        means = g.means.reshape(bsz, nv, grid * grid, 3)
        rot, trans = b["viewmats"][..., 2:3, :3], b["viewmats"][..., 2:3, 3]  # camera z row
        own_z = (means @ rot.transpose(-1, -2))[..., 0] + trans  # [B, V, G*G]
        losses["surface"] = surface_consistency_loss(own_z.reshape(bsz, nv, grid, grid), r.depth, r.alpha, alpha_t)
        total = total + cfg.surface_weight * losses["surface"]
    if cfg.solid_weight > 0:  # seen from anywhere, every pixel is the object or empty: no half-transparent shell
        az = 360.0 * torch.rand((), generator=generator).item()
        lo, hi = cfg.solid_elevation_range
        el = lo + (hi - lo) * torch.rand((), generator=generator).item()
        around = teacher.cameras(az, el, resolution=res)
        with torch.autocast(device_type=b["noise"].device.type, enabled=False):
            r3 = render(g, around.viewmats.to(bg.device), around.Ks.to(bg.device), res, res, backend=cfg.render_backend)
        losses["solid"] = opacity_decision_loss(r3.alpha.flatten(1))
        total = total + cfg.solid_weight * losses["solid"]
    if cfg.opacity_weight > 0:
        losses["opacity_decision"] = opacity_decision_loss(torch.sigmoid(g.opacity_logits.float()))
        total = total + cfg.opacity_weight * losses["opacity_decision"]
    if ramp > 0 and cfg.implicit_weight > 0 and micro % cfg.implicit_every == 0:
        lo, hi = cfg.implicit_azimuth_range
        az = lo + (hi - lo) * torch.rand((), generator=generator).item()
        lo, hi = cfg.implicit_elevation_range
        el = lo + (hi - lo) * torch.rand((), generator=generator).item()
        cams = teacher.cameras(az, el, resolution=res)
        with torch.autocast(device_type=b["noise"].device.type, enabled=False):
            r2 = render(
                g,
                cams.viewmats.to(bg.device),
                cams.Ks.to(bg.device),
                res,
                res,
                background=bg,
                backend=cfg.render_backend,
            )
        bsz, v = r2.rgb.shape[:2]
        latent = teacher.latent_shape(v)
        eps = torch.randn((bsz, v, *latent[1:]), generator=generator).to(bg.device)
        t = sample_timesteps(bsz, teacher.scheduler.config.num_train_timesteps, cfg.implicit_t_range, generator)
        guidance = teacher.default_guidance if cfg.implicit_guidance is None else cfg.implicit_guidance
        imp = implicit_verification_loss(
            teacher, r2.rgb.permute(0, 1, 4, 2, 3), condition, cams.embedding, t, eps, guidance, cfg.implicit_weighting
        )
        losses["imp_sds"], losses["imp_grad_rms"] = imp["sds"], imp["grad_norm"]
        total = total + ramp * cfg.implicit_weight * imp["sds"]
    losses["ramp"] = torch.tensor(ramp)
    losses["total"] = total
    return losses
