"""Deterministic DDIM sampling and the diffusion maths shared by every teacher.

Notation: ``abar_t`` = ``scheduler.alphas_cumprod[t]``; forward process
``x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps``; velocity ``v = sqrt(abar_t) eps - sqrt(1 - abar_t) x0``.

DDIM with eta = 0 (Song et al., eq. 12 without noise), one step t -> t_prev:

    x0     = (x_t - sqrt(1 - abar_t) eps) / sqrt(abar_t)
    x_prev = sqrt(abar_prev) x0 + sqrt(1 - abar_prev) eps

where a v- or x0-predicting model is first converted (``to_epsilon`` / ``to_x0``). The step
itself is diffusers' ``DDIMScheduler.step(..., eta=0.0)``, so no noise is ever drawn. The only
randomness of sampling is the initial noise N, an argument; ``draw_noise`` builds it from an
explicit CPU ``torch.Generator`` (then moves it), so a seed gives the same N on any device.

Rows of a U-Net batch are ``(half, object, view)``: with classifier-free guidance the
unconditional half comes first (reference ``imagedream.md`` §3.5) and each half holds B
consecutive blocks of F = V + 1 rows. Per-object tensors (text, image tokens) are
``repeat_interleave``d over views; per-view cameras are laid out per object (``[B, F, D]``
flattened), not ``repeat_interleave``d (the reference's B > 1 bug, §5 pitfall 9).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

if TYPE_CHECKING:  # pragma: no cover
    from .interface import Condition

__all__ = [
    "draw_noise",
    "make_scheduler",
    "as_timesteps",
    "alpha_bar",
    "to_epsilon",
    "to_x0",
    "training_target",
    "add_noise",
    "guided_unet_output",
    "ddim_sample",
    "PREDICTION_TYPES",
]

PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")


def draw_noise(
    shape: Sequence[int],  # e.g. [B, F, C, h, w]
    seed: int | torch.Generator,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> Tensor:  # standard normal, `shape`
    """Standard normal noise from an explicit CPU generator (drawn in float32, then moved/cast).

    The global RNG is never touched. Pass a generator to draw several tensors in sequence.
    """
    if isinstance(seed, torch.Generator):
        gen = seed
        if gen.device.type != "cpu":
            raise ValueError("draw_noise needs a CPU generator (noise is drawn on CPU, then moved)")
    else:
        gen = torch.Generator("cpu").manual_seed(int(seed))
    return torch.randn(tuple(int(s) for s in shape), generator=gen, dtype=torch.float32).to(device=device, dtype=dtype)


def make_scheduler(config: Mapping[str, Any]):
    """A fresh diffusers ``DDIMScheduler`` from a config (sampling mutates its step count)."""
    from diffusers import DDIMScheduler

    cfg = {k: v for k, v in dict(config).items() if not k.startswith("_")}
    if cfg.get("prediction_type", "epsilon") not in PREDICTION_TYPES:
        raise ValueError(f"prediction_type must be one of {PREDICTION_TYPES}, got {cfg['prediction_type']!r}")
    return DDIMScheduler.from_config(cfg)


def as_timesteps(t: int | Tensor, batch_size: int, device=None) -> Tensor:  # -> [B] int64
    """A scalar or per-object timestep as an int64 tensor [B]."""
    tt = torch.as_tensor(t, device=device)
    if tt.is_floating_point() and not torch.equal(tt, tt.round()):
        raise ValueError("timesteps must be integers (training timesteps of the scheduler)")
    tt = tt.long().to(device)
    if tt.ndim == 0:
        tt = tt.expand(batch_size)
    if tt.shape != (batch_size,):
        raise ValueError(f"timesteps must be a scalar or [{batch_size}], got {list(tt.shape)}")
    return tt


def alpha_bar(scheduler, t: Tensor) -> Tensor:  # t [B] int64 -> [B, 1, 1, 1, 1] float32
    """``abar_t`` per object, shaped to broadcast over [B, F, C, h, w]."""
    ac = scheduler.alphas_cumprod
    if t.min() < 0 or t.max() >= ac.shape[0]:
        raise ValueError(f"timesteps must be in [0, {ac.shape[0]}), got [{t.min().item()}, {t.max().item()}]")
    return ac.to(torch.float32)[t.cpu()].reshape(-1, 1, 1, 1, 1)


def to_epsilon(out: Tensor, x_t: Tensor, abar: Tensor, prediction_type: str) -> Tensor:
    """Model output -> epsilon. v: ``sqrt(abar) v + sqrt(1-abar) x_t``; x0: ``(x_t - sqrt(abar) x0)/sqrt(1-abar)``."""
    if prediction_type == "epsilon":
        return out
    if prediction_type == "v_prediction":
        return abar.sqrt() * out + (1 - abar).sqrt() * x_t
    if prediction_type == "sample":
        return (x_t - abar.sqrt() * out) / (1 - abar).sqrt()
    raise ValueError(f"unknown prediction_type {prediction_type!r}; expected one of {PREDICTION_TYPES}")


def to_x0(out: Tensor, x_t: Tensor, abar: Tensor, prediction_type: str) -> Tensor:
    """Model output -> x0. eps: ``(x_t - sqrt(1-abar) eps)/sqrt(abar)``; v: ``sqrt(abar) x_t - sqrt(1-abar) v``."""
    if prediction_type == "epsilon":
        return (x_t - (1 - abar).sqrt() * out) / abar.sqrt()
    if prediction_type == "v_prediction":
        return abar.sqrt() * x_t - (1 - abar).sqrt() * out
    if prediction_type == "sample":
        return out
    raise ValueError(f"unknown prediction_type {prediction_type!r}; expected one of {PREDICTION_TYPES}")


def add_noise(x0: Tensor, noise: Tensor, abar: Tensor) -> Tensor:
    """``x_t = sqrt(abar) x0 + sqrt(1 - abar) noise`` (same as ``scheduler.add_noise``)."""
    return abar.sqrt() * x0 + (1 - abar).sqrt() * noise


def training_target(x0: Tensor, noise: Tensor, abar: Tensor, prediction_type: str) -> Tensor:
    """What the model should output at ``x_t = add_noise(x0, noise, abar)``: eps, v or x0."""
    if prediction_type == "epsilon":
        return noise
    if prediction_type == "v_prediction":
        return abar.sqrt() * noise - (1 - abar).sqrt() * x0
    if prediction_type == "sample":
        return x0
    raise ValueError(f"unknown prediction_type {prediction_type!r}; expected one of {PREDICTION_TYPES}")


def guided_unet_output(
    unet: nn.Module,  # MultiViewUNet
    x_t: Tensor,  # [B, F, C, h, w], slot F-1 = image view (overwritten by ip_img inside the U-Net)
    t: int | Tensor,  # scalar or [B]
    condition: Condition,  # batch B
    camera: Tensor,  # [B, F, camera_dim]
    guidance: float = 1.0,
) -> Tensor:  # [B, F, C, h, w] float32, raw model output with CFG applied
    """One U-Net forward; with ``guidance != 1`` the uncond and cond halves share that forward
    (uncond first) and ``out = out_u + guidance * (out_c - out_u)``; ``guidance == 1`` runs the
    conditional rows only. CFG is linear, so combining v or x0 outputs equals combining eps."""
    b, f = x_t.shape[:2]
    if condition.batch_size != b:
        raise ValueError(f"condition has {condition.batch_size} objects but x_t has {b}")
    param = next(unet.parameters())
    dev, dt = param.device, param.dtype
    rows = x_t.reshape(b * f, *x_t.shape[2:]).to(dev, dt)
    tt = as_timesteps(t, b, dev).repeat_interleave(f).to(torch.float32)
    cam = camera.reshape(b * f, -1).to(dev, dt)
    cond = condition.to(dev, dt)
    per_view = lambda z: z.repeat_interleave(f, dim=0)  # [B, ...] -> [B*F, ...] object-major
    if float(guidance) == 1.0:
        out = unet(
            rows, tt, context=per_view(cond.context), camera=cam, num_frames=f, ip=per_view(cond.ip), ip_img=cond.ip_img
        )
        return out.float().reshape(x_t.shape)
    unc = cond.unconditional()
    out = unet(
        torch.cat([rows, rows]),
        torch.cat([tt, tt]),
        context=torch.cat([per_view(unc.context), per_view(cond.context)]),
        camera=torch.cat([cam, cam]),
        num_frames=f,
        ip=torch.cat([per_view(unc.ip), per_view(cond.ip)]),
        ip_img=torch.cat([unc.ip_img, cond.ip_img]),
    ).float()
    out_u, out_c = out.chunk(2)
    return (out_u + float(guidance) * (out_c - out_u)).reshape(x_t.shape)


def ddim_sample(
    model_fn: Callable[[Tensor, int], Tensor],  # (x_t [B, F, C, h, w] float32, t) -> model output, same shape
    scheduler_config: Mapping[str, Any],
    noise: Tensor,  # N [B, F, C, h, w]
    steps: int,
    record_steps: Sequence[int] = (),
) -> tuple[Tensor, dict[int, Tensor], Tensor]:  # x0 [B, F, C, h, w] float32, {i: x_i on CPU}, timesteps [steps]
    """Run ``steps`` DDIM steps (eta = 0) from ``noise``; the state is kept in float32.

    ``record_steps`` are indices i in ``[0, steps]``: ``trajectory[i]`` is the state fed to step i
    (``trajectory[0]`` = N), ``trajectory[steps]`` the final output; copies on CPU.
    ``init_noise_sigma`` is 1 and ``scale_model_input`` the identity for DDIM.
    """
    if int(steps) < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    steps = int(steps)
    record = {int(i) for i in record_steps}
    bad = sorted(i for i in record if not 0 <= i <= steps)
    if bad:
        raise ValueError(f"record_steps must be in [0, {steps}], got {bad}")
    sched = make_scheduler(scheduler_config)
    sched.set_timesteps(steps)
    x = noise.to(torch.float32).clone()
    trajectory: dict[int, Tensor] = {}
    for i, t in enumerate(sched.timesteps.tolist()):
        if i in record:
            trajectory[i] = x.detach().cpu().clone()
        out = model_fn(x, int(t))
        x = sched.step(out.to(torch.float32), int(t), x, eta=0.0, return_dict=True).prev_sample
    if steps in record:
        trajectory[steps] = x.detach().cpu().clone()
    return x, trajectory, sched.timesteps.clone()
