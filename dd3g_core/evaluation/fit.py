"""The per-sample fit ceiling: Gaussians optimised directly to each sample's teacher views.

What a 3D-consistent reproduction of the teacher's OI reaches with the student's own budget: the
same number of Gaussians, rendered by the same renderer at the same cameras C, optimised with Adam
on the RGB error against OI (on the teacher's background) for each object separately. A student
cannot beat it at C by being 3D-consistent; its novel views against ground truth say what the
teacher's four views allow a reconstruction to recover.

Start: ``num_gaussians`` points uniform in a ball of radius ``init_radius`` (the procedural objects
fit in a ball of ~0.5), isotropic scale ``init_scale``, opacity 0.1, grey. Every object of a batch is
fitted at once (one batched render per step); the objects are independent.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ..gaussians import Gaussians

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
) -> tuple[Gaussians, list[float]]:  # (batched Gaussians [B, N], loss per step)
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
    losses: list[float] = []
    for step in range(steps):
        for group in opt.param_groups:  # cosine decay to 10 %: coarse placement first, then detail
            group.setdefault("initial_lr", group["lr"])
            group["lr"] = group["initial_lr"] * (0.1 + 0.45 * (1 + math.cos(math.pi * step / max(steps, 1))))
        g = Gaussians(**params)
        out = render(g, vm, ks, r, r, background=bg, backend=backend)
        loss = (out.rgb.permute(0, 1, 4, 2, 3) - targets).pow(2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    with torch.no_grad():
        fitted = Gaussians(**{k: p.detach().clone() for k, p in params.items()})
    return fitted, losses
