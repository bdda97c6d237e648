"""Configuration of the multi-view U-Net (``MultiViewUNetConfig``) and its named presets.

The field names of the first block are exactly the keys of ImageDream's ``unet/config.json``
(reference ``imagedream.md`` §1, "unet/config.json"), so that file loads with
``MultiViewUNetConfig.from_dict(json.load(f))``. The second block holds what the original
constructor takes as defaults and the JSON does not store (``ip_weight``, the perceiver
resampler's fixed shape, §2.5); the ``imagedream`` values are the real ones, other presets may
change them.

Presets:

* ``"imagedream"`` — the real ImageDream (ipmv) U-Net: latent space, 4 channels, 320 base
  channels, 941,672,900 parameters.
* ``"tiny"`` — the same class, sized for a CPU pixel-space teacher (3 channels, 32x32 views,
  attention only at 8x8 and 4x4; see ``docs/teacher.md`` for the reasoning).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["MultiViewUNetConfig", "PRESETS"]


@dataclass(frozen=True)
class MultiViewUNetConfig:
    # --- keys of ImageDream's unet/config.json (reference §1) ---
    image_size: int = 32  # spatial size the model was trained at (informational)
    in_channels: int = 4
    out_channels: int = 4
    model_channels: int = 320  # base width; time/camera embedding width is 4x this
    attention_resolutions: tuple[int, ...] = (4, 2, 1)  # downsample factors that get a SpatialTransformer3D
    num_res_blocks: int = 2  # ResBlocks per level on the way down (+1 on the way up)
    channel_mult: tuple[int, ...] = (1, 2, 4, 4)
    num_head_channels: int = 64  # attention head width; heads = channels // this
    transformer_depth: int = 1  # BasicTransformerBlock3D per SpatialTransformer3D
    context_dim: int = 1024  # width of text tokens and of the resampler's ip tokens
    camera_dim: int = 16  # flattened 4x4 camera; 0 disables the camera embedding
    ip_dim: int = 16  # number of image-prompt tokens (resampler queries); 0 disables the IP branch
    # --- constructor defaults not stored in the JSON (reference §1 last line, §2.5) ---
    ip_weight: float = 1.0  # scale of the IP cross-attention branch
    ip_embed_dim: int = 1280  # width of the image-encoder features fed to the resampler (CLIP ViT-H)
    resampler_depth: int = 4
    resampler_heads: int = 12
    resampler_dim_head: int = 64
    resampler_ff_mult: int = 4
    norm_num_groups: int = 32  # GroupNorm groups in ResBlocks / transformers / output head
    dropout: float = 0.0
    # not in ImageDream: a fixed 2D sin-cos position encoding on every transformer's tokens
    # (attention.position_encoding_2d; parameter-free). The tiny_s2d teacher uses it.
    position_encoding: bool = False
    # not in ImageDream: the clean input-image latent (``ip_img``) is also concatenated to the
    # channels of every view (Zero123-style), so the stem conv takes 2 x in_channels. Zeros when
    # ``ip_img`` is None (the unconditional branch). The tiny teacher uses it (docs/teacher.md).
    concat_image: bool = False

    def __post_init__(self) -> None:
        # JSON gives lists; keep tuples so the config is hashable and compares equal.
        object.__setattr__(self, "attention_resolutions", tuple(int(a) for a in self.attention_resolutions))
        object.__setattr__(self, "channel_mult", tuple(int(m) for m in self.channel_mult))
        positive = (
            "image_size",
            "in_channels",
            "out_channels",
            "model_channels",
            "num_res_blocks",
            "num_head_channels",
            "transformer_depth",
            "context_dim",
            "norm_num_groups",
        )
        for name in positive:
            if int(getattr(self, name)) <= 0:
                raise ValueError(f"MultiViewUNetConfig.{name} must be positive, got {getattr(self, name)!r}")
        for name in ("camera_dim", "ip_dim"):
            if int(getattr(self, name)) < 0:
                raise ValueError(f"MultiViewUNetConfig.{name} must be >= 0, got {getattr(self, name)!r}")
        if not self.channel_mult or min(self.channel_mult) <= 0:
            raise ValueError(f"channel_mult must be non-empty and positive, got {self.channel_mult}")
        if self.ip_dim > 0:
            for name in (
                "ip_embed_dim",
                "resampler_depth",
                "resampler_heads",
                "resampler_dim_head",
                "resampler_ff_mult",
            ):
                if int(getattr(self, name)) <= 0:
                    raise ValueError(f"MultiViewUNetConfig.{name} must be positive when ip_dim > 0")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        for level, mult in enumerate(self.channel_mult):
            ch = self.model_channels * mult
            if ch % self.norm_num_groups:
                raise ValueError(
                    f"level {level}: {ch} channels not divisible by norm_num_groups={self.norm_num_groups}"
                )
            if 2**level in self.attention_resolutions and ch % self.num_head_channels:
                raise ValueError(
                    f"level {level}: {ch} channels not divisible by num_head_channels={self.num_head_channels}"
                )

    # ---------------------------------------------------------------- derived
    @property
    def time_embed_dim(self) -> int:
        return 4 * self.model_channels

    @property
    def down_factors(self) -> tuple[int, ...]:
        """Downsample factor of each level (1, 2, 4, ...)."""
        return tuple(2**i for i in range(len(self.channel_mult)))

    # ---------------------------------------------------------------- (de)serialisation
    @classmethod
    def preset(cls, name: str) -> MultiViewUNetConfig:
        if name not in PRESETS:
            raise ValueError(f"unknown MultiViewUNet preset {name!r}; choose from {sorted(PRESETS)}")
        return PRESETS[name]

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["attention_resolutions"] = list(self.attention_resolutions)
        d["channel_mult"] = list(self.channel_mult)
        for key in _OPTIONAL_EXTENSIONS:  # written only when on: older configs (and their hashes) stay as they were
            if not d[key]:
                del d[key]
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> MultiViewUNetConfig:
        """Build from a dict such as ImageDream's ``unet/config.json``.

        Keys starting with ``_`` (``_class_name``, ``_diffusers_version``) are ignored; any other
        unknown key is an error (a typo must not silently fall back to a default).
        """
        known = {f.name for f in dataclasses.fields(cls)}
        kwargs = {k: v for k, v in d.items() if not k.startswith("_")}
        unknown = sorted(set(kwargs) - known)
        if unknown:
            raise ValueError(f"unknown MultiViewUNetConfig keys {unknown}; known keys: {sorted(known)}")
        return cls(**kwargs)

    def to_json(self) -> str:
        return json.dumps({"_class_name": "MultiViewUNet", **self.to_dict()}, indent=2, sort_keys=False)

    def save(self, path: str | Path) -> None:
        """Write ``config.json`` (atomically: temp file then rename)."""
        path = Path(path)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(self.to_json() + "\n")
        tmp.replace(path)

    @classmethod
    def load(cls, path: str | Path) -> MultiViewUNetConfig:
        return cls.from_dict(json.loads(Path(path).read_text()))

    def replace(self, **changes: Any) -> MultiViewUNetConfig:
        return dataclasses.replace(self, **changes)


# tiny-world extensions that ImageDream does not have; omitted from to_dict() while off
_OPTIONAL_EXTENSIONS = ("position_encoding", "concat_image")

PRESETS: dict[str, MultiViewUNetConfig] = {
    # The real ImageDream (ipmv) U-Net: unet/config.json plus the constructor defaults.
    "imagedream": MultiViewUNetConfig(),
    # CPU pixel-space teacher: 3-channel 32x32 views (4 + 1 image view), ~3.4M parameters.
    # Four levels (32, 16, 8, 4 px) with joint cross-view attention at 8x8 and 4x4 only: at
    # 16x16 the 5 views are 1280 tokens per object and a training step of 32 objects took
    # ~22 s on 2 cores; at 8x8/4x4 (320/80 tokens) it takes ~2.2 s (docs/teacher.md).
    "tiny": MultiViewUNetConfig(
        image_size=32,
        in_channels=3,
        out_channels=3,
        model_channels=32,
        attention_resolutions=(4, 8),
        num_res_blocks=2,
        channel_mult=(1, 2, 2, 2),
        num_head_channels=32,
        transformer_depth=1,
        context_dim=64,
        camera_dim=16,
        ip_dim=8,
        ip_embed_dim=64,
        resampler_depth=2,
        resampler_heads=2,
        resampler_dim_head=32,
        resampler_ff_mult=2,
        norm_num_groups=8,
    ),
}
# The tiny teacher on 2x2 space-to-depth pixels (TinyTeacher latent_patch=2: 12 x 16x16, a
# permutation of the 32x32 RGB pixels). Joint cross-view attention at every level (16, 8, 4),
# so the input view reaches the others at full image detail (the "tiny" preset mixes views only
# at 8x8/4x4 pixels, which left the seen view a blur: docs/experiments/teacher_training.md, "diagnosis"). ~7.6 M
# parameters, ~1.7 s per training step of 16 objects on 2 cores.
PRESETS["tiny_s2d"] = PRESETS["tiny"].replace(
    image_size=16,
    in_channels=12,
    out_channels=12,
    model_channels=64,
    attention_resolutions=(1, 2, 4),
    channel_mult=(1, 1, 2),
    norm_num_groups=16,
    position_encoding=True,
)
