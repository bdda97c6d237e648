"""PEPD: Pattern Extraction + Progressive Decoding (DESIGN §1, ``reference/dd3g_framework.png``).

``PEPD(noise N, cameras C, condition of II, image II) -> 3D Gaussians`` in one pass:

1. **Pattern extraction.** The teacher's :class:`~dd3g_core.teacher.MultiViewUNet` (same class,
   same config, initialised from the teacher's weights by :meth:`PEPD.init_from_teacher`) runs
   once on N at ``phase1_timestep`` with the teacher's camera embedding and condition (II's
   image tokens by cross-attention, II's latent as the extra view). Its decoder is truncated
   after ``phase1_output_blocks`` blocks; the hidden maps of the V views are the patterns
   (the image slot's row is dropped).
2. **Fusion (⊕).** Each view's feature map becomes ``f x f`` tokens (a linear map of the
   features plus a linear embedding of the Plücker rays of the token's ``g x g`` cells). II,
   as straight RGBA resized to ``image_resolution``, is patch-embedded (conv ``image_patch`` px,
   stride = patch) plus a learned position and source embedding; these tokens are concatenated
   after the view tokens.
3. **Progressive decoding.** ``depth`` pre-LN transformer blocks attend over all tokens; the μ
   head reads the view tokens after ``mu_block`` blocks, (s, q) after ``shape_block``, (α, c)
   after the last (``heads.py``): geometry settles before appearance.

The condition is computed by the frozen teacher's encoders (``teacher.encode_condition``), so
student and teacher see II through the same features; the student owns no image encoder.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from ..cameras import pixel_rays, plucker
from ..gaussians import Gaussians
from ..images import resize_square
from ..io import atomic_directory, atomic_write_json
from ..teacher.interface import Condition
from ..weights import check_state_dict, config_errors, load_weights_file, read_json_config
from .config import PEPDConfig
from .heads import GaussianHeads
from .phase1 import Phase1UNet, freeze_phase1
from .transformer import TransformerBlock

__all__ = ["PEPD", "PEPDOutput", "ConfigMismatchError"]

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"


class ConfigMismatchError(ValueError):
    """A checkpoint was made for another PEPD config (the message lists the differing keys)."""


class PEPDOutput(dict):
    """``gaussians`` (batched :class:`Gaussians` [B, N]) and ``depth`` [B, N] (ray depths)."""

    @property
    def gaussians(self) -> Gaussians:
        return self["gaussians"]


def _resize_straight(x: Tensor, size: int) -> Tensor:  # [B, 4, H, H] straight RGBA -> [B, 4, size, size]
    """Resize through premultiplied colour, so transparent pixels' (arbitrary) colour does not bleed into edges."""
    if x.shape[-1] == size:
        return x
    premul = torch.cat([x[:, :3] * x[:, 3:], x[:, 3:]], 1)
    y = resize_square(premul, size)
    alpha = y[:, 3:].clamp(0, 1)
    return torch.cat([(y[:, :3] / alpha.clamp_min(1e-4)).clamp(0, 1), alpha], 1)


class PEPD(nn.Module):
    def __init__(self, config: PEPDConfig | str = "tiny", *, _meta: bool = False):
        super().__init__()
        self.config = c = PEPDConfig.preset(config) if isinstance(config, str) else config
        ctx = torch.device("meta") if _meta else torch.device("cpu")
        with ctx:
            unet = Phase1UNet(c.unet)
            unet.output_blocks = unet.output_blocks[: c.phase1_output_blocks]
            unet.out = nn.Identity()  # phase 1 returns features, not noise
            self.phase1 = unet
            self.feature_proj = nn.Linear(c.feature_channels, c.width)
            self.ray_embed = nn.Linear(6 * c.gaussians_per_token, c.width)
            self.image_embed = nn.Conv2d(4, c.width, c.image_patch, stride=c.image_patch)
            self.image_pos = nn.Parameter(torch.randn(1, c.num_image_tokens, c.width) * 0.02)
            self.image_source = nn.Parameter(torch.randn(1, 1, c.width) * 0.02)
            self.blocks = nn.ModuleList(TransformerBlock(c.width, c.heads, c.mlp_ratio) for _ in range(c.depth))
            self.heads = GaussianHeads(c)
            if c.seen_refine:  # II's cells -> residual (opacity, rgb, scale xyz) logits of the seen view
                h = c.seen_refine
                self.seen_refine = nn.Sequential(
                    nn.Conv2d(4, h, 3, padding=1),
                    nn.GELU(),
                    nn.Conv2d(h, h, 3, padding=1),
                    nn.GELU(),
                    nn.Conv2d(h, 7, 1),
                )
                nn.init.zeros_(self.seen_refine[-1].weight)  # starts as the model without it
                nn.init.zeros_(self.seen_refine[-1].bias)

    # ------------------------------------------------------------------ forward
    def forward(
        self,
        noise: Tensor,  # N [B, V+1, C, h, w] (slot V = the image slot, replaced by II's latent)
        camera_embedding: Tensor,  # C [B, V+1, camera_dim] or [V+1, camera_dim] (teacher layout)
        condition: Condition,  # teacher.encode_condition(II), batch B
        image: Tensor,  # II [B, 4, H, W] straight RGBA in [0, 1] (or uint8)
        viewmats: Tensor,  # [B, V, 4, 4] or [V, 4, 4] render cameras of the V views
        Ks: Tensor,  # [B, V, 3, 3] or [V, 3, 3] intrinsics in pixels at ``image_size``
        image_size: int,  # the size ``Ks`` refer to (e.g. OI's resolution)
    ) -> PEPDOutput:
        c = self.config
        b, f = noise.shape[:2]
        if noise.ndim != 5 or f != c.num_views + 1 or noise.shape[3] != c.latent_resolution:
            raise ValueError(
                f"noise must be [B, {c.num_views + 1}, C, {c.latent_resolution}, "
                f"{c.latent_resolution}], got {list(noise.shape)}"
            )
        dev, dt = self.feature_proj.weight.device, self.feature_proj.weight.dtype
        if camera_embedding.ndim == 2:
            camera_embedding = camera_embedding.expand(b, -1, -1)
        if viewmats.ndim == 3:
            viewmats, Ks = viewmats.expand(b, -1, -1, -1), Ks.expand(b, -1, -1, -1)
        if viewmats.shape[:2] != (b, c.num_views) or Ks.shape[:2] != (b, c.num_views):
            raise ValueError(
                f"viewmats/Ks must be [B={b}, V={c.num_views}, ...], got {list(viewmats.shape)} / {list(Ks.shape)}"
            )

        # 1. pattern extraction: the teacher's U-Net on N (one pass, truncated decoder)
        cond = condition.to(dev, dt)
        per_view = lambda z: z.repeat_interleave(f, dim=0)
        rows = noise.reshape(b * f, *noise.shape[2:]).to(dev, dt)
        if not c.noise_input:  # ablation: the same network without N (one output per image)
            rows = torch.zeros_like(rows)
        t = torch.full((b * f,), float(c.phase1_timestep), device=dev)
        feats = self.phase1.forward_features(
            rows,
            t,
            context=per_view(cond.context),
            camera=camera_embedding.reshape(b * f, -1).to(dev, dt),
            num_frames=f,
            ip=per_view(cond.ip),
            ip_img=cond.ip_img,
        )  # [B*F, Cf, fr, fr]
        feats = feats.reshape(b, f, *feats.shape[1:])[:, : c.num_views]  # drop the image slot
        view_tokens = self.feature_proj(feats.flatten(3).transpose(-1, -2))  # [B, V, fr², D]

        # 2. fusion: + Plücker rays of each token's cells; ⊕ II patch tokens
        grid = (c.grid_resolution, c.grid_resolution)
        origins, dirs = pixel_rays(
            viewmats.to(dev, torch.float32), Ks.to(dev, torch.float32), image_size, image_size, grid
        )
        rays = plucker(origins, dirs)  # [B, V, G, G, 6]
        fr, g = c.feature_resolution, c.gaussian_grid
        cells = rays.reshape(b, c.num_views, fr, g, fr, g, 6).permute(0, 1, 2, 4, 3, 5, 6)
        view_tokens = view_tokens + self.ray_embed(cells.reshape(b, c.num_views, fr * fr, g * g * 6).to(dt))
        view_tokens = view_tokens.reshape(b, c.num_views * fr * fr, c.width)
        img = self._image_input(image).to(dev, dt)
        image_tokens = self.image_embed(img).flatten(2).transpose(1, 2) + self.image_pos + self.image_source
        tokens = torch.cat([view_tokens, image_tokens], dim=1)

        # 3. progressive decoding: mu, then (s, q), then (alpha, c) from increasing depth
        n_view = view_tokens.shape[1]
        raw: dict[str, Tensor] = {}
        checkpointed = self.phase1.gradient_checkpointing and torch.is_grad_enabled()
        for i, block in enumerate(self.blocks, start=1):
            tokens = checkpoint(block, tokens, use_reentrant=False) if checkpointed else block(tokens)
            if i == c.mu_block:
                raw["mu"] = self.heads.read("mu", tokens[:, :n_view])
            if i == c.shape_block:
                raw["shape"] = self.heads.read("shape", tokens[:, :n_view])
        raw["appearance"] = self.heads.read("appearance", tokens[:, :n_view])
        seen = None
        if c.input_view >= 0:  # II on the seen view's Gaussian grid (one Gaussian per grid cell)
            seen = _resize_straight(self._straight_rgba(image).to(dev), c.grid_resolution).permute(0, 2, 3, 1)
            if c.seen_refine:
                refine = self.seen_refine(seen.permute(0, 3, 1, 2).to(dt)).permute(0, 2, 3, 1)  # [B, G, G, 7]
                one_hot = torch.zeros(c.num_views, device=dev, dtype=dt)
                one_hot[c.input_view] = 1.0
                one_hot = one_hot.reshape(1, -1, 1, 1, 1)  # the residuals reach the seen view only
                raw["appearance"] = raw["appearance"] + one_hot * refine[:, None, ..., :4]
                scale_pad = refine.new_zeros(*refine.shape[:-1], 4)  # the quaternion gets no residual
                raw["shape"] = raw["shape"] + one_hot * torch.cat([refine[..., 4:7], scale_pad], -1)[:, None]
        cell_angle = (image_size / c.grid_resolution) / Ks[..., 0, 0].to(dev, torch.float32)  # [B, V] radians
        fields = self.heads.activate(
            raw["mu"].float(), raw["shape"].float(), raw["appearance"].float(), origins, dirs, seen, cell_angle
        )
        depth = fields.pop("depth")
        return PEPDOutput(gaussians=Gaussians(**fields), depth=depth)

    def _image_input(self, image: Tensor) -> Tensor:  # -> [B, 4, R, R] straight RGBA in [0, 1]
        c = self.config
        x = resize_square(self._straight_rgba(image), c.image_resolution)
        return x.clamp(0, 1)

    @staticmethod
    def _straight_rgba(image: Tensor) -> Tensor:  # [B, 3|4, H, H] (float or uint8) -> [B, 4, H, H] float in [0, 1]
        if image.ndim != 4 or image.shape[1] not in (3, 4):
            raise ValueError(f"image must be [B, 4 (RGBA) or 3 (RGB), H, W], got {list(image.shape)}")
        x = image.float() / 255.0 if image.dtype == torch.uint8 else image.float()
        if x.shape[1] == 3:
            x = torch.cat([x, torch.ones_like(x[:, :1])], 1)
        if x.shape[-1] != x.shape[-2]:
            raise ValueError(f"image must be square (recentre/pad first), got {x.shape[-2]}x{x.shape[-1]}")
        return x.clamp(0, 1)

    # ------------------------------------------------------------------ memory options (training only, not saved)
    @property
    def gradient_checkpointing(self) -> bool:
        return self.phase1.gradient_checkpointing

    def set_gradient_checkpointing(self, enabled: bool = True) -> PEPD:
        """Recompute the activations of every phase-1 block and phase-2 transformer block in the backward
        instead of keeping them (``Phase1UNet``): the same loss and gradients, much less activation memory,
        one more forward of those blocks per step. Off under ``torch.no_grad`` anyway (inference)."""
        self.phase1.gradient_checkpointing = bool(enabled)
        return self

    def freeze_phase1(self, num_blocks: int) -> list[str]:
        """``requires_grad=False`` for phase 1's embeddings and its first ``num_blocks`` blocks
        (:func:`~dd3g_core.model.phase1.freeze_phase1`); returns the frozen parameter names."""
        return [f"phase1.{n}" for n in freeze_phase1(self.phase1, num_blocks)]

    # ------------------------------------------------------------------ initialisation / sizes
    def init_from_teacher(self, teacher_unet: nn.Module | Mapping[str, Tensor]) -> list[str]:
        """Copy the teacher U-Net's weights into phase 1 (the kept blocks); returns the keys copied."""
        sd = teacher_unet.state_dict() if isinstance(teacher_unet, nn.Module) else dict(teacher_unet)
        own = self.phase1.state_dict()
        missing = sorted(k for k in own if k not in sd)
        wrong = sorted(k for k in own if k in sd and tuple(sd[k].shape) != tuple(own[k].shape))
        if missing or wrong:
            raise ConfigMismatchError(
                f"teacher U-Net does not match phase 1 (config {self.config.unet}): "
                f"missing {missing[:10]}, wrong shapes {wrong[:10]}"
            )
        self.phase1.load_state_dict({k: sd[k] for k in own}, strict=True)
        return sorted(own)

    def num_parameters(self) -> dict[str, int]:
        count = lambda m: sum(p.numel() for p in m.parameters())
        total = count(self)
        p1 = count(self.phase1)
        return {"phase1": p1, "phase2": total - p1, "total": total}

    # ------------------------------------------------------------------ (de)serialisation
    def save_pretrained(
        self, path: str | Path, state_dict: Mapping[str, Tensor] | None = None, extra: Mapping[str, Any] | None = None
    ) -> Path:
        """``config.json`` + ``model.safetensors`` atomically (``state_dict``: e.g. the EMA copy)."""
        from safetensors.torch import save_file

        sd = self.state_dict() if state_dict is None else dict(state_dict)
        check_state_dict(self, sd)
        path = Path(path)
        with atomic_directory(path) as tmp:
            cfg = {**self.config.to_dict(), "parameters": self.num_parameters(), **(dict(extra or {}))}
            atomic_write_json(tmp / CONFIG_NAME, cfg)
            save_file(
                {k: v.detach().cpu().contiguous() for k, v in sd.items()},
                str(tmp / WEIGHTS_NAME),
                metadata={"format": "pt"},
            )  # one key: safetensors orders metadata by a randomised hash map
        return path

    @staticmethod
    def read_config(path: str | Path) -> tuple[PEPDConfig, dict[str, Any]]:
        """(config, extra metadata such as the teacher and training record) of a saved folder."""
        path = Path(path)
        missing = [n for n in (CONFIG_NAME, WEIGHTS_NAME) if not (path / n).is_file()]
        if missing:
            raise FileNotFoundError(
                f"{path} is not a PEPD checkpoint folder: missing {missing} "
                f"(train one with the `distill` job's pepd_student asset or `python -m dd3g_core.distill.train`, "
                f"or pass --checkpoint)"
            )
        d = read_json_config(path / CONFIG_NAME)
        keys = {f for f in PEPDConfig.__dataclass_fields__}
        with config_errors(path / CONFIG_NAME, "PEPD"):
            cfg = PEPDConfig.from_dict({k: v for k, v in d.items() if k in keys or k in ("format", "format_version")})
        return cfg, {k: v for k, v in d.items() if k not in keys and k not in ("format", "format_version")}

    @classmethod
    def from_pretrained(
        cls, path: str | Path, expected: PEPDConfig | None = None, device: torch.device | str | None = None
    ) -> PEPD:
        """Load a folder; with ``expected``, a checkpoint of another config is refused with the differing keys."""
        path = Path(path)
        cfg, _ = cls.read_config(path)
        if expected is not None and (diff := expected.diff(cfg)):
            raise ConfigMismatchError(
                f"{path} was trained with another PEPD config; differing keys "
                f"(expected, checkpoint): {dict(list(diff.items())[:10])}"
            )
        with config_errors(path / CONFIG_NAME, "PEPD"):
            skeleton = cls(cfg, _meta=True)
        model = load_weights_file(skeleton, path / WEIGHTS_NAME, ConfigMismatchError)
        return model.to(device or "cpu").eval()
