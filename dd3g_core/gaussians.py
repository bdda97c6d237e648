"""The 3D Gaussian container.

Parameters are stored *raw* (the values an optimiser or a network head produces, and the
values the standard 3DGS PLY stores); activations live in exactly one place, the properties
below:

    means      [..., N, 3]   world positions, used as-is
    quats      [..., N, 4]   rotation quaternion, **wxyz**, unnormalised; ``rotations`` normalises
    log_scales [..., N, 3]   ``scales = exp(log_scales)``
    opacity_logits [..., N]  ``opacities = sigmoid(opacity_logits)``
    sh         [..., N, K, 3] spherical-harmonic colour coefficients, K = (degree + 1)^2;
                             degree 0 means plain RGB through ``rgb = sh[..., 0, :] * C0 + 0.5``

A leading batch dimension ``[B, ...]`` holds B scenes with the same N (padding a scene is done
with fully transparent Gaussians, see :func:`pad_to`).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, fields

import torch
from torch import Tensor

SH_C0 = 0.28209479177387814  # Y_0^0 = 1 / (2 sqrt(pi))


def rgb_to_sh0(rgb: Tensor) -> Tensor:
    """[..., 3] RGB in [0, 1] -> [..., 3] degree-0 SH coefficient (the PLY ``f_dc``)."""
    return (rgb - 0.5) / SH_C0


def sh0_to_rgb(sh0: Tensor) -> Tensor:
    """Inverse of :func:`rgb_to_sh0`."""
    return sh0 * SH_C0 + 0.5


def sh_degree_from_count(k: int) -> int:
    degree = int(round(math.sqrt(k))) - 1
    if (degree + 1) ** 2 != k or degree < 0 or degree > 3:
        raise ValueError(f"SH coefficient count {k} is not (d+1)^2 for a degree d in 0..3")
    return degree


@dataclass
class Gaussians:
    means: Tensor  # [..., N, 3]
    quats: Tensor  # [..., N, 4] wxyz
    log_scales: Tensor  # [..., N, 3]
    opacity_logits: Tensor  # [..., N]
    sh: Tensor  # [..., N, K, 3]

    def __post_init__(self) -> None:
        self.validate()

    # -- construction -------------------------------------------------------------------
    @classmethod
    def from_activated(
        cls,
        means: Tensor,  # [..., N, 3]
        quats: Tensor,  # [..., N, 4] wxyz
        scales: Tensor,  # [..., N, 3] > 0
        opacities: Tensor,  # [..., N] in (0, 1)
        rgb: Tensor,  # [..., N, 3] in [0, 1]
    ) -> Gaussians:
        """Build from post-activation values (what a human or a renderer thinks in)."""
        eps = 1e-6
        return cls(
            means=means,
            quats=quats,
            log_scales=torch.log(scales.clamp_min(1e-12)),
            opacity_logits=torch.logit(opacities.clamp(eps, 1 - eps)),
            sh=rgb_to_sh0(rgb)[..., None, :],
        )

    @classmethod
    def cat(cls, parts: Sequence[Gaussians], dim: int = -1) -> Gaussians:
        """Concatenate along the Gaussian axis (``dim=-1``) or stack scenes (``dim=0``)."""
        if not parts:
            raise ValueError("Gaussians.cat needs at least one part")
        if dim == 0:
            return cls(**{f.name: torch.stack([getattr(p, f.name) for p in parts]) for f in fields(cls)})
        if dim != -1:
            raise ValueError("dim must be -1 (Gaussian axis) or 0 (new scene axis)")
        k = max(p.sh.shape[-2] for p in parts)
        out = {}
        for f in fields(cls):
            ts = [getattr(p, f.name) for p in parts]
            if f.name == "sh":
                ts = [torch.nn.functional.pad(t, (0, 0, 0, k - t.shape[-2])) for t in ts]
            axis = -1 if f.name == "opacity_logits" else (-3 if f.name == "sh" else -2)
            out[f.name] = torch.cat(ts, dim=axis)
        return cls(**out)

    # -- validation ---------------------------------------------------------------------
    def validate(self) -> None:
        """Shape and dtype checks with messages a user can act on (called on construction)."""
        lead = self.means.shape[:-1]
        if self.means.ndim < 2 or self.means.shape[-1] != 3:
            raise ValueError(f"means must be [..., N, 3], got {tuple(self.means.shape)}")
        expect = {
            "quats": lead + (4,),
            "log_scales": lead + (3,),
            "opacity_logits": lead,
        }
        for name, shape in expect.items():
            got = tuple(getattr(self, name).shape)
            if got != tuple(shape):
                raise ValueError(f"{name} must have shape {tuple(shape)} to match means, got {got}")
        if self.sh.shape[:-2] != lead or self.sh.shape[-1] != 3:
            raise ValueError(f"sh must be [..., N, K, 3] with [...,N]={tuple(lead)}, got {tuple(self.sh.shape)}")
        sh_degree_from_count(self.sh.shape[-2])
        for f in fields(self):
            t = getattr(self, f.name)
            if not torch.is_floating_point(t):
                raise ValueError(f"{f.name} must be a floating-point tensor, got {t.dtype}")

    def check_finite(self) -> None:
        """Raise ``ValueError`` naming the field and the first bad row if anything is NaN/Inf."""
        for f in fields(self):
            t = getattr(self, f.name).detach()
            bad = ~torch.isfinite(t)
            if bad.any():
                idx = bad.reshape(*self.means.shape[:-1], -1).any(-1).nonzero()[0].tolist()
                raise ValueError(f"Gaussians.{f.name} has non-finite values (first at index {idx})")

    # -- activations (the only place they are defined) ----------------------------------
    @property
    def rotations(self) -> Tensor:  # [..., N, 4] unit wxyz
        return torch.nn.functional.normalize(self.quats, dim=-1, eps=1e-12)

    @property
    def scales(self) -> Tensor:  # [..., N, 3]
        return torch.exp(self.log_scales)

    @property
    def opacities(self) -> Tensor:  # [..., N]
        return torch.sigmoid(self.opacity_logits)

    @property
    def rgb(self) -> Tensor:  # [..., N, 3] view-independent (DC) colour, clamped to [0, 1]
        return sh0_to_rgb(self.sh[..., 0, :]).clamp(0.0, 1.0)

    @property
    def sh_degree(self) -> int:
        return sh_degree_from_count(self.sh.shape[-2])

    # -- bookkeeping --------------------------------------------------------------------
    @property
    def num_gaussians(self) -> int:
        return self.means.shape[-2]

    @property
    def batch_shape(self) -> torch.Size:
        return self.means.shape[:-2]

    @property
    def device(self) -> torch.device:
        return self.means.device

    @property
    def dtype(self) -> torch.dtype:
        return self.means.dtype

    def __len__(self) -> int:
        return self.num_gaussians

    def _map(self, fn) -> Gaussians:
        return Gaussians(**{f.name: fn(getattr(self, f.name)) for f in fields(self)})

    def to(self, *args, **kwargs) -> Gaussians:
        return self._map(lambda t: t.to(*args, **kwargs))

    def detach(self) -> Gaussians:
        return self._map(lambda t: t.detach())

    def clone(self) -> Gaussians:
        return self._map(lambda t: t.clone())

    def requires_grad_(self, flag: bool = True) -> Gaussians:
        for f in fields(self):
            getattr(self, f.name).requires_grad_(flag)
        return self

    def parameters(self) -> Iterator[Tensor]:
        return (getattr(self, f.name) for f in fields(self))

    def __getitem__(self, index) -> Gaussians:
        """Index scenes of a batched container (``g[0]``, ``g[1:3]``)."""
        if self.means.ndim < 3:
            raise IndexError("indexing selects scenes; this container is unbatched (use .select)")
        return self._map(lambda t: t[index])

    def select(self, mask_or_index: Tensor) -> Gaussians:
        """Keep the Gaussians picked by a bool mask ``[N]`` or an index ``[M]`` (unbatched)."""
        if self.means.ndim != 2:
            raise ValueError("select works on an unbatched container [N, ...]; index a scene first")
        m = mask_or_index
        return Gaussians(
            means=self.means[m],
            quats=self.quats[m],
            log_scales=self.log_scales[m],
            opacity_logits=self.opacity_logits[m],
            sh=self.sh[m],
        )

    def prune(self, min_opacity: float = 0.005, max_scale: float | None = None) -> Gaussians:
        """Drop nearly transparent (and optionally oversized) Gaussians of an unbatched container."""
        keep = self.opacities > min_opacity
        if max_scale is not None:
            keep &= self.scales.amax(-1) <= max_scale
        return self.select(keep)

    def pad_to(self, n: int) -> Gaussians:
        """Pad an unbatched container with invisible Gaussians (opacity ~0) up to ``n``."""
        extra = n - self.num_gaussians
        if extra < 0:
            raise ValueError(f"cannot pad {self.num_gaussians} Gaussians down to {n}")
        if extra == 0:
            return self
        z = self.means.new_zeros
        filler = Gaussians(
            means=z(extra, 3),
            quats=torch.cat([self.means.new_ones(extra, 1), z(extra, 3)], -1),
            log_scales=z(extra, 3) - 6.0,
            opacity_logits=z(extra) - 30.0,
            sh=z(extra, self.sh.shape[-2], 3),
        )
        return Gaussians.cat([self, filler])
