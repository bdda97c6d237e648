"""``TeacherTrainConfig``: every option of a tiny-teacher training run, and its named presets.

``tiny`` is the real (hours-long) budget; ``tiny16`` / ``tiny_concat`` grow a trained teacher
(``grow.py``); ``tiny_s2d`` is the space-to-depth teacher; ``smoke`` takes seconds, for tests. The
staged recipe that made the shipped teacher is ``recipe.py``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ..config import MultiViewUNetConfig
from .data import RenderSpec

__all__ = ["TeacherTrainConfig", "TRAIN_PRESETS"]


@dataclass(frozen=True)
class TeacherTrainConfig:
    unet_preset: str = "tiny"
    latent_patch: int = 1  # TinyTeacher space-to-depth factor (the U-Net's in/out channels must be 3p²)
    unet_overrides: Mapping[str, Any] = field(default_factory=dict)  # replace() on the preset (smoke: smaller)
    data_dir: str | None = None  # None: <out_dir>/data
    num_objects: int = 16000  # train-split seeds in the cache (~23 ms each to render on one core)
    shard_size: int = 500
    input_resolution: int = 64
    num_gaussians: int = 3000
    batch_size: int = 32
    lr: float = 3e-4
    warmup_steps: int = 300
    # optional linear cooldown (warmup-stable-decay): from ``cooldown_start`` the LR falls linearly to
    # ``lr * cooldown_min_ratio`` over ``cooldown_steps``, then stays there. A background run has no
    # planned end, so it is set when one is chosen (resume with it: the steps before are unchanged).
    cooldown_start: int | None = None
    cooldown_steps: int = 0
    cooldown_min_ratio: float = 0.1
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.99)
    grad_clip: float = 1.0
    ema_decay: float = 0.999
    cond_drop: float = 0.1
    max_steps: int = 1_000_000  # "until stopped" for the real run
    checkpoint_every: int = 100
    keep_checkpoints: int = 2
    log_every: int = 10
    seed: int = 0
    threads: int = 2
    zero_init: bool = True
    generate_data: bool = True  # render missing cache shards before training (in-process)
    # start (when there is no checkpoint yet) from a trained teacher folder ("shipped" = assets/models/
    # tiny-teacher), grown into this config's attention levels (teacher/grow.py: function-preserving)
    init_from: str | None = None

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["unet_overrides"] = dict(self.unet_overrides)
        d["betas"] = list(self.betas)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> TeacherTrainConfig:
        d = dict(d)
        if "betas" in d:
            d["betas"] = tuple(d["betas"])
        return cls(**d)

    @classmethod
    def preset(cls, name: str, **changes: Any) -> TeacherTrainConfig:
        if name not in TRAIN_PRESETS:
            raise ValueError(f"unknown teacher training preset {name!r}; choose from {sorted(TRAIN_PRESETS)}")
        return dataclasses.replace(TRAIN_PRESETS[name], **changes)

    def unet_config(self) -> MultiViewUNetConfig:
        cfg = MultiViewUNetConfig.preset(self.unet_preset)
        ov = dict(self.unet_overrides)
        return cfg.replace(**ov) if ov else cfg

    def render_spec(self) -> RenderSpec:
        return RenderSpec(input_resolution=self.input_resolution, num_gaussians=self.num_gaussians)


TRAIN_PRESETS: dict[str, TeacherTrainConfig] = {
    # The real budget: hours of background training on 2 cores (~2.2 s per step of 32 objects).
    "tiny": TeacherTrainConfig(),
    # The shipped teacher grown to joint attention at 16x16 too (docs/experiments/teacher_training.md, "diagnosis"),
    # trained on: batch 16 keeps a step near the tiny preset's cost.
    "tiny16": TeacherTrainConfig(
        unet_overrides={"attention_resolutions": (2, 4, 8)}, init_from="shipped", batch_size=16, warmup_steps=100
    ),
    # The space-to-depth teacher (U-Net preset tiny_s2d, latents 12 x 16x16): joint attention at
    # full image detail; trained from scratch.
    "tiny_s2d": TeacherTrainConfig(unet_preset="tiny_s2d", latent_patch=2, batch_size=16, warmup_steps=200),
    # The pixel teacher with the input image concatenated to every view, grown from a trained
    # pixel teacher (new stem channels zero: the start computes the old function).
    "tiny_concat": TeacherTrainConfig(unet_overrides={"concat_image": True}, init_from="shipped", warmup_steps=100),
    # Seconds, for tests: a small U-Net, 8 objects, checkpoints every 2 steps.
    "smoke": TeacherTrainConfig(
        unet_overrides={
            "model_channels": 16,
            "channel_mult": (1, 2),
            "attention_resolutions": (2,),
            "num_res_blocks": 1,
            "num_head_channels": 16,
            "context_dim": 32,
            "resampler_depth": 1,
        },
        num_objects=8,
        shard_size=4,
        num_gaussians=400,
        batch_size=2,
        lr=1e-3,
        warmup_steps=2,
        max_steps=6,
        checkpoint_every=2,
        log_every=1,
        threads=1,
        ema_decay=0.9,
    ),
}
