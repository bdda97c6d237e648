"""The per-sample fit ceiling: Gaussians optimised directly to each sample's teacher views.

What a 3D-consistent reproduction of the teacher's OI reaches with the student's own budget: the
same number of Gaussians, rendered by the same renderer at the same cameras C, optimised with Adam
for each object separately on the student's explicit objective: the RGB error against OI, half of the
views moved onto random background colours, plus the alpha error against OI's matte (with the
student's dead zone for the teacher's background noise, and its silhouette unmixed from the background:
:mod:`dd3g_core.distill.matte`; ``alpha_unmix_rings=0`` is the plain colour key). On the teacher's
background alone, faint white Gaussians would cost nothing and the ceiling would be fog. A student
cannot beat it at C by being 3D-consistent; its novel views against ground truth say what the
teacher's four views allow a reconstruction to recover.

Start: ``num_gaussians`` points uniform in a ball of radius ``init_radius`` (the procedural objects
fit in a ball of ~0.5), isotropic scale ``init_scale``, opacity 0.1, grey. Every object of a batch is
fitted at once (one batched render per step); the objects are independent.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from ..gaussians import Gaussians
from ..progress import Progress

__all__ = ["fit_gaussians"]

LEARNING_RATES = {"means": 0.01, "log_scales": 0.03, "quats": 0.02, "opacity_logits": 0.1, "sh": 0.05}


def fit_gaussians(
    targets: Tensor,  # [B, V, 3, R, R] OI in [0, 1]
    viewmats: Tensor,  # [V, 4, 4] the teacher's cameras C
    Ks: Tensor,  # [V, 3, 3] at R
    background: tuple[float, float, float],
    num_gaussians: int,
    steps: int,
    seed: int = 0,
    init_radius: float = 0.5,
    init_scale: float = 0.03,
    backend: str = "auto",
    alpha_floor: float = 0.03,
    alpha_softness: float = 0.08,
    alpha_weight: float = 1.0,
    random_background: float = 0.5,
    alpha_unmix_rings: int = 2,
    log: Callable[[str], None] | None = None,
) -> tuple[Gaussians, list[float]]:  # (batched Gaussians [B, N], RGB MSE on the teacher's background per step)
    """``log``: where progress lines go (steps done / total, s/step, ETA and the last RGB MSE, every
    ``$DD3G_PROGRESS_SECONDS``); ``None``: none."""
    from ..distill.losses import recomposite
    from ..distill.matte import teacher_matte
    from ..render import render

    b, v, _, r, _ = targets.shape
    gen = torch.Generator().manual_seed(seed)
    direction = torch.nn.functional.normalize(torch.randn(b, num_gaussians, 3, generator=gen), dim=-1)
    radius = init_radius * torch.rand(b, num_gaussians, 1, generator=gen).pow(1 / 3)
    dev = targets.device
    params = {
        "means": direction * radius,
        "log_scales": torch.full((b, num_gaussians, 3), math.log(init_scale)),
        "quats": torch.tensor([1.0, 0.0, 0.0, 0.0]).expand(b, num_gaussians, 4).clone(),
        "opacity_logits": torch.full((b, num_gaussians), math.log(0.1 / 0.9)),
        "sh": torch.zeros(b, num_gaussians, 1, 3),
    }
    params = {k: p.to(dev).requires_grad_(True) for k, p in params.items()}
    opt = torch.optim.Adam([{"params": [p], "lr": LEARNING_RATES[k]} for k, p in params.items()])
    bg = torch.tensor(background, dtype=torch.float32, device=dev)
    vm, ks = viewmats.to(dev).expand(b, -1, -1, -1), Ks.to(dev).expand(b, -1, -1, -1)
    matte = teacher_matte(targets, tuple(background), alpha_softness, alpha_floor, unmix_rings=alpha_unmix_rings)
    losses: list[float] = []
    progress = Progress(f"fit ceiling ({b} objects)", steps, log, unit="steps") if log is not None else None
    for step in range(steps):
        for group in opt.param_groups:  # cosine decay to 10 %: coarse placement first, then detail
            group.setdefault("initial_lr", group["lr"])
            group["lr"] = group["initial_lr"] * (0.1 + 0.45 * (1 + math.cos(math.pi * step / max(steps, 1))))
        g = Gaussians(**params)
        out = render(g, vm, ks, r, r, background=None, backend=backend)  # premultiplied
        pick = torch.rand((b, v, 1), generator=gen) < random_background
        backgrounds = torch.where(pick, torch.rand((b, v, 3), generator=gen), bg.cpu().expand(b, v, 3)).to(dev)
        pred = (out.rgb + (1 - out.alpha) * backgrounds[:, :, None, None, :]).permute(0, 1, 4, 2, 3)
        target = recomposite(targets, matte, tuple(background), backgrounds)
        alpha_error = (out.alpha.permute(0, 1, 4, 2, 3) - matte).pow(2).mean()
        loss = (pred - target).pow(2).mean() + alpha_weight * alpha_error
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        with torch.no_grad():  # the number reported: RGB error on the teacher's own background
            on_bg = out.rgb + (1 - out.alpha) * bg
            losses.append(float((on_bg.permute(0, 1, 4, 2, 3) - targets).pow(2).mean()))
        if progress is not None:
            progress.update(1, note=f"RGB MSE {losses[-1]:.5f}")
    if progress is not None:
        progress.close()
    with torch.no_grad():
        fitted = Gaussians(**{k: p.detach().clone() for k, p in params.items()})
    return fitted, losses
