"""The multi-view teacher interface (``MultiViewTeacher``) shared by ImageDream and the tiny teacher.

A teacher turns an input image II into V views OI at the cameras C of its ``ViewLayout``
with a deterministic DDIM sampler: OI is a function of (N, C, II) only (DESIGN §1). Both
implementations run the same ``MultiViewUNet`` with F = V + 1 slots per object, the last slot
being the image view (ImageDream's "pixel controller", overwritten by the clean ``ip_img``
inside the U-Net). Shapes used throughout:

    images (input II)   [B, 4|3|2|1, H, W]  RGBA / RGB / gray+alpha / gray, float in [0, 1] or uint8
    latents, noise N    [B, F, C, h, w]      F = V + 1, slot F-1 = image view (its values are ignored)
    camera embedding    [F, camera_dim] or [B, F, camera_dim], last row zeros (the image view)
    output views OI     [B, V, 3, H, W]      float in [0, 1]

Input images: RGBA (straight alpha) is composited on the teacher's ``background`` (white by
default, as LGM does for ImageDream); RGB is taken as already composited on that background;
gray is repeated to RGB. Images must be square (recentring is the ``rgba_images`` stage's job)
and are resized (bilinear, antialiased) to the size each encoder needs.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from ..cameras import ViewLayout, imagedream_camera_embedding
from ..io import stable_hash
from ..weights import state_dict_digest
from . import sampler as ddim

__all__ = ["Condition", "TeacherCameras", "SampleOutput", "MultiViewTeacher", "MissingWeightsError"]


class MissingWeightsError(FileNotFoundError):
    """A teacher's weights folder or some of its files are missing (the message says which and how to get them)."""


# ----------------------------------------------------------------------------------------- data


@dataclass
class Condition:
    """Everything the U-Net sees of the input image, per object (conditional branch).

    The unconditional branch (classifier-free guidance, reference §3.5 / §5 pitfall 12) is
    ``uncond_context`` (or ``context`` when None: ImageDream encodes the empty prompt for both),
    zero image tokens and a zero image latent: see :meth:`unconditional`.
    """

    context: Tensor  # [B, T, context_dim] text tokens
    ip: Tensor  # [B, T_ip, ip_embed_dim] image-encoder tokens (CLIP hidden_states[-2] / tiny encoder)
    ip_img: Tensor  # [B, C, h, w] clean input view in latent space (slot F-1 of every object)
    uncond_context: Tensor | None = None  # [B, T, context_dim]; None = same as ``context``

    def __post_init__(self) -> None:
        b = self.context.shape[0]
        others = [self.ip, self.ip_img] + ([self.uncond_context] if self.uncond_context is not None else [])
        if any(t.shape[0] != b for t in others):
            raise ValueError(
                f"Condition tensors disagree on the batch size: {[list(t.shape) for t in [self.context, *others]]}"
            )

    @property
    def batch_size(self) -> int:
        return self.context.shape[0]

    def to(self, device=None, dtype: torch.dtype | None = None) -> Condition:
        f = lambda t: None if t is None else t.to(device=device, dtype=dtype)
        return Condition(f(self.context), f(self.ip), f(self.ip_img), f(self.uncond_context))

    def unconditional(self) -> Condition:
        """The CFG null condition: uncond text, zero image tokens, zero image latent."""
        ctx = self.context if self.uncond_context is None else self.uncond_context
        return Condition(ctx, torch.zeros_like(self.ip), torch.zeros_like(self.ip_img))

    def drop(self, mask: Tensor) -> Condition:  # mask [B] bool: True -> unconditional (CFG dropout)
        """Replace the objects selected by ``mask`` with the null condition (training-time CFG dropout)."""
        u = self.unconditional()
        m = mask.to(self.context.device).bool()

        def pick(a: Tensor, b: Tensor) -> Tensor:
            return torch.where(m.reshape(-1, *[1] * (a.ndim - 1)), b, a)

        return Condition(
            pick(self.context, u.context), pick(self.ip, u.ip), pick(self.ip_img, u.ip_img), self.uncond_context
        )

    def select(self, index) -> Condition:
        """Subset of objects (``index``: slice, list or tensor of object indices)."""
        f = lambda t: None if t is None else t[index]
        return Condition(f(self.context), f(self.ip), f(self.ip_img), f(self.uncond_context))


@dataclass
class TeacherCameras:
    """The cameras C of one view layout: U-Net conditioning plus gsplat render cameras.

    ``embedding[i]`` conditions output view i, which is rendered with ``viewmats[i]``/``Ks[i]``;
    the extra last row (zeros) is the image view.
    """

    embedding: Tensor  # [V+1, camera_dim] (ImageDream 16-d flattened pose; last row zeros)
    viewmats: Tensor  # [V, 4, 4] world -> camera, OpenCV axes (gsplat)
    Ks: Tensor  # [V, 3, 3] intrinsics in pixels at ``resolution``
    resolution: int
    azimuths_deg: tuple[float, ...]  # render azimuths (ours: 0 = input view, from +z)
    elevation_deg: float

    @property
    def num_views(self) -> int:
        return self.viewmats.shape[0]


@dataclass
class SampleOutput:
    images: Tensor | None  # [B, V, 3, H, W] OI in [0, 1] (image slot dropped); None if decode=False
    latents: Tensor  # [B, F, C, h, w] final DDIM state, all F slots (float32, teacher device)
    trajectory: dict[int, Tensor] = field(default_factory=dict)  # {step index i: x before step i} on CPU
    timesteps: Tensor | None = None  # [steps] int64, the scheduler timesteps in sampling order
    steps: int = 0
    guidance: float = 1.0


# ------------------------------------------------------------------------------- the interface


class MultiViewTeacher(nn.Module, abc.ABC):
    """A multi-view diffusion teacher: ``MultiViewUNet`` + DDIM scheduler + encoders.

    Subclasses set ``unet``, ``scheduler`` (a diffusers ``DDIMScheduler``, never stepped
    directly: sampling uses a fresh copy), ``layout``, ``background``, ``teacher_id``,
    ``default_steps``/``default_guidance`` and implement the encoders. ``sample``,
    ``predict_noise`` and ``cameras`` are shared.
    """

    teacher_id: str = "teacher"
    # Added to the layout's render azimuths to get the azimuths fed to the camera embedding
    # (ImageDream: +90, its output conditioned on azimuth 90 is the input view; docs/teacher.md).
    embedding_azimuth_offset_deg: float = 0.0
    default_steps: int = 25
    default_guidance: float = 1.0
    layout: ViewLayout
    background: tuple[float, float, float] = (1.0, 1.0, 1.0)

    # ---- to implement ------------------------------------------------------------------
    @abc.abstractmethod
    def encode_condition(self, images: Tensor) -> Condition:  # [B, 4|3|2|1, H, W] -> Condition (batch B)
        """Image tokens, image-view latent and text context of input images (see module doc)."""

    @abc.abstractmethod
    def encode_latents(self, images: Tensor) -> Tensor:  # [N, 3, H, W] in [0, 1] -> [N, C, h, w]
        """Images to the diffusion space (deterministic: posterior mode for a VAE)."""

    @abc.abstractmethod
    def decode_latents(self, latents: Tensor) -> Tensor:  # [N, C, h, w] -> [N, 3, H, W] in [0, 1]
        """Diffusion space to images, clamped to [0, 1]."""

    @property
    @abc.abstractmethod
    def latent_channels(self) -> int: ...

    @property
    @abc.abstractmethod
    def latent_resolution(self) -> int: ...

    @abc.abstractmethod
    def config_dict(self) -> dict[str, Any]:
        """Everything that determines the outputs besides the weights (json-serialisable)."""

    def _weight_modules(self) -> list[nn.Module]:
        return [self]

    # ---- shared ------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return next(self.unet.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.unet.parameters()).dtype

    @property
    def prediction_type(self) -> str:
        return self.scheduler.config.prediction_type

    @property
    def num_views(self) -> int:
        return self.layout.num_views

    def latent_shape(self, num_views: int | None = None) -> tuple[int, int, int, int]:  # (F, C, h, w)
        """Per-object latent shape, F = num_views + 1 (the image slot)."""
        v = self.layout.num_views if num_views is None else int(num_views)
        return (v + 1, self.latent_channels, self.latent_resolution, self.latent_resolution)

    def draw_noise(
        self, batch_size: int, seed: int | torch.Generator, num_views: int | None = None
    ) -> Tensor:  # [B, F, C, h, w] float32 on the teacher device
        """Initial noise N from an explicit CPU generator (same seed -> same N on any device)."""
        return ddim.draw_noise((batch_size, *self.latent_shape(num_views)), seed, device=self.device)

    def cameras(
        self, azimuth_offset_deg: float = 0.0, elevation_offset_deg: float = 0.0, resolution: int | None = None
    ) -> TeacherCameras:
        """The layout's cameras, optionally rotated (implicit verification renders off the cached set)."""
        lay = self.layout
        az = [a + azimuth_offset_deg for a in lay.azimuths_deg]
        el = lay.elevation_deg + elevation_offset_deg
        emb = imagedream_camera_embedding([a + self.embedding_azimuth_offset_deg for a in az], el, extra_view=True)
        viewmats, Ks = lay.cameras(azimuth_offset_deg, elevation_offset_deg, resolution)
        return TeacherCameras(emb, viewmats, Ks, resolution or lay.resolution, tuple(az), el)

    def config_hash(self) -> str:
        """Hash of ``config_dict()`` + the weights digest (for cache records)."""
        return stable_hash(
            {"teacher_id": self.teacher_id, "config": self.config_dict(), "weights": self.weights_digest()}, length=16
        )

    def weights_digest(self) -> str:
        return state_dict_digest(self._weight_modules())

    def describe(self) -> dict[str, Any]:
        """What a cache record stores about the teacher."""
        return {
            "teacher_id": self.teacher_id,
            "config_hash": self.config_hash(),
            "eta": 0.0,
            "prediction_type": self.prediction_type,
            "default_steps": self.default_steps,
            "default_guidance": self.default_guidance,
            "config": self.config_dict(),
        }

    def camera_embedding(
        self, cameras: TeacherCameras | Tensor | None, batch_size: int, num_frames: int
    ) -> Tensor:  # -> [B, F, camera_dim] float32 on the device
        """Normalise ``cameras`` (None = the layout's) to one embedding block per object."""
        emb = self.cameras().embedding if cameras is None else getattr(cameras, "embedding", cameras)
        emb = torch.as_tensor(emb, dtype=torch.float32, device=self.device)
        if emb.ndim == 2:
            emb = emb.expand(batch_size, -1, -1)
        if emb.ndim != 3 or emb.shape[:2] != (batch_size, num_frames):
            raise ValueError(
                f"camera embedding must be [F, D] or [B, F, D] with B={batch_size}, F={num_frames} "
                f"(V views + the image view), got {list(emb.shape)}"
            )
        return emb

    def model_output(
        self,
        x_t: Tensor,  # [B, F, C, h, w]
        t: int | Tensor,  # scalar or [B] timesteps
        condition: Condition,
        cameras: TeacherCameras | Tensor | None = None,
        guidance: float = 1.0,
    ) -> Tensor:  # [B, F, C, h, w] float32, in the scheduler's prediction_type (CFG applied)
        """One (CFG-batched) U-Net call; see ``sampler.guided_unet_output``."""
        b, f = x_t.shape[:2]
        emb = self.camera_embedding(cameras, b, f)
        return ddim.guided_unet_output(self.unet, x_t, t, condition, emb, guidance)

    def predict_noise(
        self,
        x_t: Tensor,  # [B, F, C, h, w] (or [B, V, C, h, w]: a zero image slot is appended and dropped)
        t: int | Tensor,  # scalar or [B] integer timesteps in [0, num_train_timesteps)
        condition: Condition,
        cameras: TeacherCameras | Tensor | None = None,
        guidance: float = 1.0,
    ) -> Tensor:  # epsilon, same shape and dtype as x_t
        """Epsilon for any ``prediction_type`` (SDS verifier): for v-prediction
        ``eps = sqrt(abar_t) v + sqrt(1 - abar_t) x_t``; for x0-prediction
        ``eps = (x_t - sqrt(abar_t) x0) / sqrt(1 - abar_t)``. Gradient mode is the caller's."""
        b = x_t.shape[0]
        padded = x_t.shape[1] == self._frames(cameras) - 1
        x = (torch.cat([x_t, torch.zeros_like(x_t[:, :1])], 1) if padded else x_t).to(self.device)
        tt = ddim.as_timesteps(t, b, self.device)
        out = self.model_output(x, tt, condition, cameras, guidance)
        abar = ddim.alpha_bar(self.scheduler, tt).to(out.device)
        eps = ddim.to_epsilon(out, x.float(), abar, self.prediction_type)
        return (eps[:, :-1] if padded else eps).to(x_t.dtype)

    def _frames(self, cameras) -> int:
        emb = self.cameras().embedding if cameras is None else getattr(cameras, "embedding", cameras)
        return int(emb.shape[-2])

    @torch.no_grad()
    def sample(
        self,
        condition: Condition | Tensor,  # a Condition or input images [B, 4|3|2|1, H, W]
        noise: Tensor,  # N [B, F, C, h, w]
        cameras: TeacherCameras | Tensor | None = None,  # C (None = the layout's)
        steps: int | None = None,
        guidance: float | None = None,
        record_steps: Sequence[int] = (),
        decode: bool = True,
    ) -> SampleOutput:
        """Deterministic DDIM (eta = 0) from N; OI = decoded slots 0..V-1. See ``sampler.ddim_sample``."""
        steps = self.default_steps if steps is None else int(steps)
        guidance = self.default_guidance if guidance is None else float(guidance)
        was_training = self.training
        self.eval()  # dropout off: no RNG inside the U-Net
        try:
            cond = condition if isinstance(condition, Condition) else self.encode_condition(condition)
            if (
                noise.ndim != 5
                or tuple(noise.shape[2:]) != self.latent_shape(noise.shape[1] - 1)[1:]
                or noise.shape[0] != cond.batch_size
            ):
                raise ValueError(
                    f"noise must be [B={cond.batch_size}, F, C, h, w] with (F, C, h, w) = "
                    f"{self.latent_shape()} (or another view count), got {list(noise.shape)}"
                )
            b, f = noise.shape[:2]
            emb = self.camera_embedding(cameras, b, f)
            cond = cond.to(self.device)

            def model_fn(x: Tensor, t: int) -> Tensor:
                return ddim.guided_unet_output(self.unet, x, t, cond, emb, guidance)

            x0, traj, timesteps = ddim.ddim_sample(
                model_fn, self.scheduler.config, noise.to(self.device), steps, record_steps
            )
            images = None
            if decode:
                v = f - 1
                flat = x0[:, :v].reshape(b * v, *x0.shape[2:]).to(self.dtype)
                dec = self.decode_latents(flat).float()
                images = dec.reshape(b, v, *dec.shape[1:])
        finally:
            self.train(was_training)
        return SampleOutput(images, x0, traj, timesteps, steps, guidance)
