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
    "border_connected",
    "explicit_supervision_loss",
    "opacity_decision_loss",
    "recomposite",
    "surface_consistency_loss",
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
    floor: float = 0.0,
    connected: bool = False,
) -> Tensor:  # [B, V, 1, H, W] in [0, 1]
    """Alpha target for views the teacher paints on a plain background (the tiny teacher's white):

        A(x) = clamp((max_c |x_c - bg_c| - floor) / (softness - floor), 0, 1)

    A colour-key matte, as the ``rgba_images`` stage does for its inputs. ``floor`` is a dead zone
    for the teacher's background noise: its "white" is not exactly white (the tiny teacher's
    background pixels: median 0.006 and 99th percentile 0.026 away from it). Without the dead zone
    every background pixel asked for alpha ~0.1 and the student learned a faint haze of
    near-white Gaussians: fog.

    ``connected``: only background-coloured pixels connected to the image border (8-neighbours) are
    background; a near-white part enclosed by the object (a white face, a highlight) stays opaque
    instead of becoming a hole that random-background supervision would then teach the student to cut.
    Object colours close to the background at the silhouette still read as partly transparent; a
    matting model (rembg) on OI would handle those better.
    """
    if not 0 <= floor < softness:
        raise ValueError(f"need 0 <= floor < softness, got floor {floor}, softness {softness}")
    bg = views.new_tensor(background).reshape(1, 1, 3, 1, 1)
    distance = (views - bg).abs().amax(dim=2, keepdim=True)
    alpha = ((distance - floor) / (softness - floor)).clamp(0.0, 1.0)
    if connected:
        region = border_connected(distance.flatten(0, 1) < softness).reshape(alpha.shape)
        alpha = torch.where(region, alpha, torch.ones_like(alpha))
    return alpha


def border_connected(mask: Tensor) -> Tensor:  # [N, 1, H, W] bool -> [N, 1, H, W] bool
    """The pixels of ``mask`` connected (8-neighbours, through ``mask``) to the image border: a flood
    fill by repeated 3x3 dilation, one ring per step, until nothing changes."""
    reached = torch.zeros_like(mask)
    for edge in (
        (..., 0, slice(None)),
        (..., -1, slice(None)),
        (..., slice(None), 0),
        (..., slice(None), -1),
    ):
        reached[edge] = mask[edge]
    for _ in range(mask.shape[-1] * mask.shape[-2]):  # a bound, never reached: each step adds a pixel or stops
        grown = (F.max_pool2d(reached.float(), 3, stride=1, padding=1) > 0) & mask
        if torch.equal(grown, reached):
            break
        reached = grown
    return reached


def recomposite(
    views: Tensor,  # [B, V, 3, H, W] OI composited on ``background``
    alpha: Tensor,  # [B, V, 1, H, W] its matte (``alpha_from_background``)
    background: tuple[float, float, float],  # the teacher's background
    new_background: Tensor,  # [B, V, 3] a colour per view
) -> Tensor:  # [B, V, 3, H, W]
    """OI moved onto another background: ``OI + (1 - A) (b' - b)``.

    Explicit supervision on random backgrounds: on the teacher's white a faint white Gaussian costs
    nothing; on a random colour it is an error the RGB term sees (fog cannot hide)."""
    bg = views.new_tensor(background).reshape(1, 1, 3, 1, 1)
    return (views + (1 - alpha) * (new_background[..., None, None].to(views) - bg)).clamp(0.0, 1.0)


def surface_consistency_loss(
    own_depth: Tensor,  # [B, V, G, G] camera z of each view's own pixel-aligned Gaussians (in its camera)
    render_depth: Tensor,  # [B, V, H, W, 1] expected depth of the render of all Gaussians at the same cameras
    render_alpha: Tensor,  # [B, V, H, W, 1]
    target_alpha: Tensor,  # [B, V, 1, H, W] the teacher's matte: where the view shows the object
) -> Tensor:  # scalar
    """Each view's Gaussians are that view's visible surface: ``sum A (z_own - ED / alpha)^2 / sum A``.

    A pixel-aligned Gaussian of view k should be what camera k sees at its pixel. Without this term it
    may sit anywhere along its ray that the other three views do not see (inside the 4-view visual
    hull), where no explicit gradient reaches it: it keeps the heads' grey and shows up as a ghost at
    every other angle; and the other views' Gaussians may cover the seen view's. The expected depth of
    the full render at camera k is pulled to the own Gaussian's depth and back, so in the consistent
    state the own Gaussian is in front and the rest are occluded. ``H`` and ``G`` may differ by an integer
    factor: both are average-pooled to the coarser grid."""
    b, v, g = own_depth.shape[:3]
    h = render_depth.shape[2]
    if h % g and g % h:
        raise ValueError(f"render size {h} and Gaussian grid {g}: one must be a multiple of the other")
    side = min(g, h)  # compare on the coarser of the two grids
    pool = lambda x: F.avg_pool2d(x.flatten(0, 1), x.shape[-1] // side).reshape(b, v, side, side)  # [B, V, 1, n, n]
    own_depth = pool(own_depth[:, :, None])
    alpha = pool(render_alpha.permute(0, 1, 4, 2, 3))
    weighted = pool((render_depth * render_alpha).permute(0, 1, 4, 2, 3))  # alpha-weighted depth sum
    expected = weighted / alpha.clamp_min(1e-3)
    weight = pool(target_alpha.to(own_depth)) * (alpha > 1e-3)
    return (weight * (own_depth - expected).square()).sum() / weight.sum().clamp_min(1.0)


def opacity_decision_loss(opacities: Tensor) -> Tensor:  # [B, N] in [0, 1] -> scalar
    """Mean ``alpha (1 - alpha)``: zero for what is fully there or fully gone, largest at one half.

    On the Gaussians' opacities (``opacity_weight``): a solid object is made of opaque Gaussians, a
    half-transparent one is haze or a blur standing in for a sharper surface. On rendered alpha at
    cameras all round the object (``solid_weight``, pixels flattened to ``N``): seen from anywhere, a
    pixel is the object or empty."""
    return (opacities * (1 - opacities)).mean()


def explicit_supervision_loss(
    render_rgb: Tensor,  # [B, V, H, W, 3] student renders at C, composited on the teacher's background
    render_alpha: Tensor,  # [B, V, H, W, 1]
    target_rgb: Tensor,  # [B, V, 3, H, W] OI
    target_alpha: Tensor | None = None,  # [B, V, 1, H, W] (None: no alpha term)
    alpha_weight: float = 0.1,
    perceptual: Callable[[Tensor, Tensor], Tensor] | None = None,  # (x, y) [N, 3, H, W] in [0, 1] -> scalar
    perceptual_weight: float = 0.0,
    view_weights: Tensor | None = None,  # [V] weight of each view in the RGB and alpha terms (None: all 1)
) -> dict[str, Tensor]:
    """Explicit supervision: the Gaussians rendered at the teacher's cameras C must reproduce OI.

        L_exp = ||R_rgb(G, C) - OI||^2 + lambda_a ||R_a(G, C) - A(OI)||^2 + lambda_p LPIPS(R_rgb, OI)

    (means over pixels; with ``view_weights`` w, the mean over views is ``sum_v w_v L_v / V``).
    Returns ``{"rgb", "alpha", "perceptual", "total"}`` (unused terms are 0).
    """
    pred = render_rgb.permute(0, 1, 4, 2, 3)  # -> [B, V, 3, H, W]
    if pred.shape != target_rgb.shape:
        raise ValueError(f"render {list(pred.shape)} and OI {list(target_rgb.shape)} differ (render at OI's size)")
    if view_weights is not None and tuple(view_weights.shape) != (pred.shape[1],):
        raise ValueError(f"view_weights must be [V={pred.shape[1]}], got {list(view_weights.shape)}")

    def mse(x: Tensor, y: Tensor) -> Tensor:
        if view_weights is None:
            return F.mse_loss(x, y)
        per_view = (x - y).square().mean(dim=(0, 2, 3, 4))  # [V]
        return (per_view * view_weights.to(per_view)).mean()

    terms = {"rgb": mse(pred, target_rgb.to(pred))}
    zero = pred.new_zeros(())
    terms["alpha"] = zero
    if target_alpha is not None and alpha_weight > 0:
        terms["alpha"] = mse(render_alpha.permute(0, 1, 4, 2, 3), target_alpha.to(pred))
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
