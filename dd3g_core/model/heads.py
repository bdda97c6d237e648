"""Progressive Gaussian heads of PEPD phase 2 and their activations.

Each *view token* owns a ``g x g`` cell of its view's pixel grid (``g = gaussian_grid``; the
grid has ``feature_resolution * g`` cells per side) and emits one Gaussian per cell. The
Gaussians are **pixel-aligned**: a Gaussian sits on the camera ray through its cell centre, at
a predicted depth, plus a small free offset (choice recorded in ``docs/student.md``: aligned
rays make the first renders land on the right pixels, the offset lets surfaces leave the ray
grid). Attributes are read out *progressively* (DESIGN §1):

=============  ===========================  ==================================================
head           reads tokens after block     activation (raw head output z)
=============  ===========================  ==================================================
``mu``         ``mu_block``                 ``depth = radius + depth_extent * tanh(z_d)``;
                                            ``mu = o + depth * d + max_offset * tanh(z_o)``
``shape``      ``shape_block``              ``s = min_scale + (max_scale - min_scale) * sigmoid(z_s)``,
                                            then ``sqrt(s² + (footprint_filter * depth * cell)²)``;
                                            ``q = normalize(z_q + (1, 0, 0, 0))`` (wxyz)
``appearance`` last block                   ``alpha = sigmoid(z_a + logit(init_opacity))``;
                                            ``rgb = sigmoid(z_c)``, stored as SH degree 0
=============  ===========================  ==================================================

The final linear layers start at zero, so an untrained model places every view's Gaussians on
the plane through the orbit centre facing its camera, with ``init_scale`` and ``init_opacity``
(grey): a well-conditioned start for rendering losses.

**The seen view** (``input_view >= 0``): the view whose camera took II gets a direct path from the
input. Its Gaussians' colour logits start at ``logit(II rgb)`` (II resized to that view's Gaussian grid
through premultiplied colour) and the colour head predicts a residual, instead of re-deriving every
pixel of the input from 8 px patch tokens. Opacity gets no such prior: starting the seen view's
Gaussians opaque from II's alpha let them take over the whole object (the other views' Gaussians
faded to a mean opacity of 0.02 and the unseen views lost 1.5 dB; ``docs/experiments/solid_student.md``).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..gaussians import SH_C0
from .config import PEPDConfig

__all__ = ["GaussianHeads", "tokens_to_grid"]

SEEN_CLAMP = 0.02  # II's colour and alpha are clamped to [0.02, 0.98] before the logit (|prior| <= 3.9)


def tokens_to_grid(
    x: Tensor,  # [B, V * T, g * g * n] per-token outputs, tokens row-major over an f x f map
    num_views: int,
    f: int,
    g: int,
) -> Tensor:  # [B, V, f * g, f * g, n]
    b = x.shape[0]
    n = x.shape[-1] // (g * g)
    x = x.reshape(b, num_views, f, f, g, g, n).permute(0, 1, 2, 4, 3, 5, 6)
    return x.reshape(b, num_views, f * g, f * g, n)


class GaussianHeads(nn.Module):
    """The three read-out heads (LayerNorm -> Linear, zero-initialised) and the activations."""

    ATTRS = {
        "mu": 4,
        "shape": 7,
        "appearance": 4,
    }  # per Gaussian: (depth, offset xyz) / (scale xyz, quat) / (opacity, rgb)

    def __init__(self, config: PEPDConfig):
        super().__init__()
        self.config = c = config
        k = c.gaussians_per_token
        self.norms = nn.ModuleDict({name: nn.LayerNorm(c.width) for name in self.ATTRS})
        self.linears = nn.ModuleDict({name: nn.Linear(c.width, k * n) for name, n in self.ATTRS.items()})
        for lin in self.linears.values():
            nn.init.zeros_(lin.weight)
            nn.init.zeros_(lin.bias)

    def read(self, name: str, tokens: Tensor) -> Tensor:  # [B, V*T, D] -> [B, V, G, G, n]
        c = self.config
        out = self.linears[name](self.norms[name](tokens))
        return tokens_to_grid(out, c.num_views, c.feature_resolution, c.gaussian_grid)

    def activate(
        self,
        raw_mu: Tensor,  # [B, V, G, G, 4]
        raw_shape: Tensor,  # [B, V, G, G, 7]
        raw_appearance: Tensor,  # [B, V, G, G, 4]
        origins: Tensor,  # [B, V, G, G, 3]
        directions: Tensor,  # [B, V, G, G, 3]
        seen: Tensor | None = None,  # [B, G, G, 4] II as straight RGBA on the grid of view ``input_view``
        cell_angle: Tensor | None = None,  # [B, V] angular size of one grid cell (radians) per view
    ) -> dict[str, Tensor]:  # Gaussians fields, each [B, V*G*G, ...]
        c = self.config
        if seen is not None and c.input_view >= 0:  # the seen view's colour head predicts residuals on II's
            prior = torch.logit(seen[..., :3].clamp(SEEN_CLAMP, 1 - SEEN_CLAMP))  # [B, G, G, 3]
            offset = torch.zeros_like(raw_appearance)
            offset[:, c.input_view, ..., 1:] = prior
            raw_appearance = raw_appearance + offset
        b = raw_mu.shape[0]
        flat = lambda t: t.reshape(b, -1, *t.shape[5:]) if t.ndim > 5 else t.reshape(b, -1)
        depth = c.radius + c.depth_extent * torch.tanh(raw_mu[..., :1])
        means = origins + depth * directions + c.max_offset * torch.tanh(raw_mu[..., 1:4])
        lo, hi = c.min_scale, c.max_scale
        init = (c.init_scale - lo) / (hi - lo)
        scales = lo + (hi - lo) * torch.sigmoid(raw_shape[..., :3] + math.log(init / (1 - init)))
        if c.footprint_filter > 0 and cell_angle is not None:  # 3D smoothing filter: no sub-footprint Gaussian
            footprint = c.footprint_filter * depth * cell_angle[:, :, None, None, None]  # [B, V, G, G, 1] world
            scales = torch.sqrt(scales.square() + footprint.square())
        quats = raw_shape[..., 3:7] + raw_shape.new_tensor([1.0, 0.0, 0.0, 0.0])
        quats = F.normalize(quats, dim=-1)
        opacity_logits = raw_appearance[..., 0] + math.log(c.init_opacity / (1 - c.init_opacity))
        rgb = torch.sigmoid(raw_appearance[..., 1:4])
        return {
            "means": means.reshape(b, -1, 3),
            "quats": quats.reshape(b, -1, 4),
            "log_scales": torch.log(scales).reshape(b, -1, 3),
            "opacity_logits": opacity_logits.reshape(b, -1),
            "sh": ((rgb - 0.5) / SH_C0).reshape(b, -1, 1, 3),
            "depth": flat(depth[..., 0]),
        }
