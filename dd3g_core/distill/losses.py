"""DD3G's joint objective (DESIGN §1): explicit supervision + ramped implicit verification.

    L = L_exp + ramp(step) * lambda_imp * L_imp

Each term is one function; tensors are renders of the student's Gaussians (``dd3g_core.render``)
and the teacher's cached outputs. Shapes follow the renderer: images ``[B, V, H, W, 3]``,
alpha ``[B, V, H, W, 1]``; teacher views OI are ``[B, V, 3, H, W]`` as cached.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal, get_args

import torch
import torch.nn.functional as F
from torch import Tensor

from ..teacher import sampler as ddim

__all__ = [
    "alpha_from_background",
    "explicit_supervision_loss",
    "implicit_verification_loss",
    "ramp_weight",
    "sample_timesteps",
    "NonFiniteLossError",
    "SDSWeighting",
]

SDSWeighting = Literal["sds", "uniform"]


class NonFiniteLossError(FloatingPointError):
    """A loss term is NaN/Inf: the step is skipped and the batch keys are reported."""

    def __init__(self, terms: dict[str, float], keys: list[str], step: int):
        self.terms, self.keys, self.step = terms, keys, step
        bad = {k: v for k, v in terms.items() if not torch.isfinite(torch.tensor(v))}
        super().__init__(
            f"non-finite loss at step {step}: {bad}; batch keys {keys[:16]}{' ...' if len(keys) > 16 else ''}"
        )


def alpha_from_background(
    views: Tensor,  # [B, V, 3, H, W] OI in [0, 1], composited on ``background``
    background: tuple[float, float, float] = (1.0, 1.0, 1.0),
    softness: float = 0.08,
) -> Tensor:  # [B, V, 1, H, W] in [0, 1]
    """Alpha target for views the teacher paints on a plain background (the tiny teacher's white):

        A(x) = clamp(max_c |x_c - bg_c| / softness, 0, 1)

    A colour-key matte, as the ``rgba_images`` stage does for its inputs. Object pixels within
    ``softness`` of the background colour read as partly transparent; the RGB term still pulls
    those pixels to the right colour, so keep ``alpha_weight`` modest. The same matte serves the
    ImageDream teacher, which also paints its views on a plain background; running a matting
    model (rembg) on OI instead would handle object colours close to the background better.
    """
    bg = views.new_tensor(background).reshape(1, 1, 3, 1, 1)
    return ((views - bg).abs().amax(dim=2, keepdim=True) / softness).clamp(0.0, 1.0)


def explicit_supervision_loss(
    render_rgb: Tensor,  # [B, V, H, W, 3] student renders at C, composited on the teacher's background
    render_alpha: Tensor,  # [B, V, H, W, 1]
    target_rgb: Tensor,  # [B, V, 3, H, W] OI
    target_alpha: Tensor | None = None,  # [B, V, 1, H, W] (None: no alpha term)
    alpha_weight: float = 0.1,
    perceptual: Callable[[Tensor, Tensor], Tensor] | None = None,  # (x, y) [N, 3, H, W] in [0, 1] -> scalar
    perceptual_weight: float = 0.0,
) -> dict[str, Tensor]:
    """Explicit supervision: the Gaussians rendered at the teacher's cameras C must reproduce OI.

        L_exp = ||R_rgb(G, C) - OI||^2 + lambda_a ||R_a(G, C) - A(OI)||^2 + lambda_p LPIPS(R_rgb, OI)

    (means over pixels). Returns ``{"rgb", "alpha", "perceptual", "total"}`` (unused terms are 0).
    """
    pred = render_rgb.permute(0, 1, 4, 2, 3)  # -> [B, V, 3, H, W]
    if pred.shape != target_rgb.shape:
        raise ValueError(f"render {list(pred.shape)} and OI {list(target_rgb.shape)} differ (render at OI's size)")
    terms = {"rgb": F.mse_loss(pred, target_rgb.to(pred))}
    zero = pred.new_zeros(())
    terms["alpha"] = zero
    if target_alpha is not None and alpha_weight > 0:
        terms["alpha"] = F.mse_loss(render_alpha.permute(0, 1, 4, 2, 3), target_alpha.to(pred))
    terms["perceptual"] = zero
    if perceptual is not None and perceptual_weight > 0:
        terms["perceptual"] = perceptual(pred.flatten(0, 1), target_rgb.to(pred).flatten(0, 1))
    terms["total"] = terms["rgb"] + alpha_weight * terms["alpha"] + perceptual_weight * terms["perceptual"]
    return terms


def sample_timesteps(
    batch_size: int,
    num_train_timesteps: int,
    t_range: tuple[float, float] = (0.02, 0.98),
    generator: torch.Generator | None = None,
) -> Tensor:  # [B] int64
    """t ~ U[t_min * T, t_max * T) (DreamFusion's range avoids the degenerate ends)."""
    lo, hi = int(t_range[0] * num_train_timesteps), int(t_range[1] * num_train_timesteps)
    if not 0 <= lo < hi <= num_train_timesteps:
        raise ValueError(f"bad t_range {t_range}")
    return torch.randint(lo, hi, (batch_size,), generator=generator)


def implicit_verification_loss(
    teacher,  # a frozen MultiViewTeacher
    renders: Tensor,  # [B, V, 3, H, W] student renders in [0, 1] at the (rotated) cameras
    condition,  # teacher Condition for the batch (II)
    camera_embedding: Tensor,  # [V+1, D] or [B, V+1, D] teacher embedding of the render cameras
    t: Tensor,  # [B] int64 timesteps
    noise: Tensor,  # [B, V, C, h, w] epsilon
    guidance: float = 1.0,
    weighting: SDSWeighting = "sds",
) -> dict[str, Tensor]:
    """Implicit verification (score distillation, DreamFusion eq. 3, applied to multi-view renders):

        x0 = E(R(G, C')),   x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps
        grad_x0 = w(t) (eps_hat(x_t; t, C', II) - eps),   w(t) = 1 - abar_t  ("sds") or 1

    The teacher runs without gradients; the gradient reaches G only through the renders via the
    surrogate ``L_imp = 0.5 * mean((x0 - sg(x0 - grad))^2)``, whose derivative w.r.t. x0 is
    ``grad / numel``. Returns ``{"sds", "grad_norm"}`` (the loss value itself is not meaningful;
    ``grad_norm`` = rms of w(t)(eps_hat - eps) is the number to watch).
    """
    if weighting not in get_args(SDSWeighting):
        raise ValueError(f"weighting must be one of {get_args(SDSWeighting)}, got {weighting!r}")
    b, v = renders.shape[:2]
    x0 = teacher.encode_latents(renders.flatten(0, 1))
    x0 = x0.reshape(b, v, *x0.shape[1:]).float()
    if noise.shape != x0.shape:
        raise ValueError(f"noise {list(noise.shape)} must match the latents {list(x0.shape)}")
    abar = ddim.alpha_bar(teacher.scheduler, t.cpu()).to(x0.device)
    x_t = abar.sqrt() * x0 + (1 - abar).sqrt() * noise.to(x0)
    with torch.no_grad():
        eps_hat = teacher.predict_noise(
            x_t.detach().to(teacher.dtype), t, condition, camera_embedding, guidance=guidance
        ).float()
    w = (1 - abar) if weighting == "sds" else torch.ones_like(abar)
    grad = w * (eps_hat - noise.to(x0))  # NaN/Inf propagate: the trainer refuses the step
    target = (x0 - grad).detach()
    return {"sds": 0.5 * F.mse_loss(x0, target, reduction="mean"), "grad_norm": grad.pow(2).mean().sqrt()}


def ramp_weight(step: int, start: int, end: int) -> float:
    """The implicit term's ramp: 0 before ``start``, linear to 1 at ``end``, then 1.

    Explicit supervision shapes the Gaussians first; verification joins once renders resemble
    objects (an SDS gradient on a random blob mostly pushes noise)."""
    if end < start or start < 0:
        raise ValueError(f"need 0 <= start <= end, got {start}, {end}")
    if step < start:
        return 0.0
    if end == start:
        return 1.0
    return min(1.0, (step - start) / float(end - start))
