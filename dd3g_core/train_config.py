"""``DistillConfig``: every option of a distillation run, with named presets, read from JSON.

A run is fully described by its config file (``assets/configs/distill_*.json``) plus ``--set
key=value`` overrides; the resolved config is stored in every checkpoint (``trainer_state.json``)
so a run describes itself and ``--resume`` refuses to continue a run with another config.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Mapping, get_args

__all__ = ["DistillConfig", "PRESETS", "load_config", "apply_overrides"]

MixedPrecision = Literal["no", "fp16", "bf16"]
Init = Literal["teacher", "scratch"]


@dataclass(frozen=True)
class DistillConfig:
    # --- data and models ---
    trajectories: str = ""  # teacher_trajectories dir: a version dir, a shard set, or tar paths
    out: str = ""  # run directory: checkpoints/, pepd/, log.jsonl
    teacher: str | None = None  # teacher folder (None: the shipped tiny teacher)
    model: str = "tiny"  # PEPD preset
    model_overrides: Mapping[str, Any] = field(default_factory=dict)  # PEPDConfig fields to change
    init: Init = "teacher"  # phase 1 from the teacher's U-Net weights, or from scratch (ablation)
    # --- optimisation ---
    steps: int = 1500  # optimizer steps (each = grad_accum micro-batches per process)
    batch_size: int = 8  # per process and micro-batch
    grad_accum: int = 1
    lr: float = 4e-4
    phase1_lr_scale: float = 0.25  # phase 1 starts from the teacher: smaller steps keep its patterns
    weight_decay: float = 0.01
    warmup_steps: int = 50
    min_lr_ratio: float = 0.1  # cosine decays to lr * min_lr_ratio
    grad_clip: float = 1.0
    mixed_precision: MixedPrecision = "no"  # fp16/bf16 on CUDA
    ema_decay: float = 0.995
    # --- objective (dd3g_core.losses) ---
    alpha_weight: float = 0.1
    alpha_softness: float = 0.08
    perceptual_weights: str | None = None  # local VGG16 safetensors (dd3g_core.perceptual); None = no term
    perceptual_weight: float = 0.0
    implicit_weight: float = 0.05  # lambda_imp
    implicit_ramp: tuple[int, int] = (300, 900)  # ramp(step): 0 before, linear, 1 after
    implicit_every: int = 2  # verify every k-th micro-batch (it costs a teacher forward + a render)
    implicit_t_range: tuple[float, float] = (0.02, 0.98)
    implicit_guidance: float | None = None  # None: the teacher's default
    implicit_weighting: Literal["sds", "uniform"] = "sds"
    implicit_azimuth_range: tuple[float, float] = (-20.0, 20.0)  # degrees added to the teacher's cameras
    implicit_elevation_range: tuple[float, float] = (-5.0, 10.0)
    max_bad_steps: int = 20  # abort after this many consecutive non-finite steps
    # --- data loading ---
    num_workers: int = 1
    shuffle_buffer: int = 256
    render_backend: Literal["auto", "gsplat", "cpu"] = "auto"
    # --- bookkeeping ---
    seed: int = 0
    log_every: int = 10
    checkpoint_every: int = 100
    keep_checkpoints: int = 2
    torch_threads: int = 0  # CPU threads per process (0: leave torch's default)

    def __post_init__(self) -> None:
        for name, lit in (("mixed_precision", MixedPrecision), ("init", Init)):
            if getattr(self, name) not in get_args(lit):
                raise ValueError(f"{name} must be one of {get_args(lit)}, got {getattr(self, name)!r}")
        for name in ("steps", "batch_size", "grad_accum", "log_every", "checkpoint_every", "keep_checkpoints",
                     "implicit_every", "max_bad_steps"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("implicit_ramp", "implicit_t_range", "implicit_azimuth_range", "implicit_elevation_range"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        if self.implicit_ramp[0] > self.implicit_ramp[1]:
            raise ValueError(f"implicit_ramp must be (start, end) with start <= end, got {self.implicit_ramp}")
        if self.lr <= 0 or not 0 <= self.ema_decay < 1:
            raise ValueError("need lr > 0 and 0 <= ema_decay < 1")

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in d.items()}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "DistillConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known - {"preset", "_comment"})
        if unknown:
            raise ValueError(f"unknown DistillConfig keys {unknown}; known keys: {sorted(known)}")
        base = PRESETS[d["preset"]] if "preset" in d else cls()
        return dataclasses.replace(base, **{k: v for k, v in d.items() if k in known})

    def replace(self, **changes: Any) -> "DistillConfig":
        return dataclasses.replace(self, **changes)

    def identity(self) -> dict[str, Any]:
        """The fields that define what is being trained (a resumed run must match them)."""
        skip = {"out", "steps", "log_every", "checkpoint_every", "keep_checkpoints", "num_workers", "torch_threads"}
        return {k: v for k, v in self.to_dict().items() if k not in skip}


PRESETS: dict[str, DistillConfig] = {
    # The default tiny budget (docs/student.md): ~25 min on 2 CPU cores for 1 process.
    "tiny": DistillConfig(),
    # CI / tests: a handful of steps, frequent checkpoints.
    "smoke": DistillConfig(steps=6, batch_size=2, warmup_steps=1, checkpoint_every=2, log_every=1,
                           implicit_ramp=(2, 4), implicit_every=1, num_workers=0, shuffle_buffer=8),
    # GPU clusters: ImageDream teacher, bf16, per-GPU batch 4 x accumulation 4.
    "full": DistillConfig(model="full", steps=30000, batch_size=4, grad_accum=4, lr=1e-4, warmup_steps=1000,
                          mixed_precision="bf16", ema_decay=0.9999, implicit_ramp=(5000, 15000),
                          implicit_weight=0.05, implicit_every=1, implicit_guidance=5.0,
                          implicit_azimuth_range=(0.0, 360.0), implicit_elevation_range=(-10.0, 20.0),
                          num_workers=4, checkpoint_every=1000, log_every=50, keep_checkpoints=3),
}


def _parse_value(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text  # bare strings: --set out=/runs/a


def apply_overrides(config: DistillConfig, overrides: list[str]) -> DistillConfig:
    """``["steps=100", "implicit_ramp=[0,50]", "model_overrides.depth=2"]`` -> a new config."""
    changes: dict[str, Any] = {}
    model_over = dict(config.model_overrides)
    for item in overrides:
        if "=" not in item:
            raise ValueError(f"--set expects key=value, got {item!r}")
        key, value = item.split("=", 1)
        if key.startswith("model_overrides."):
            model_over[key.split(".", 1)[1]] = _parse_value(value)
        else:
            changes[key] = _parse_value(value)
    if model_over != dict(config.model_overrides):
        changes["model_overrides"] = model_over
    return DistillConfig.from_dict({**config.to_dict(), **changes})


def load_config(path: str | Path | None = None, preset: str | None = None,
                overrides: list[str] | None = None) -> DistillConfig:
    """Config from a JSON file (which may name a ``preset`` to start from), a preset, then overrides."""
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise FileNotFoundError(f"config file {p} does not exist (see assets/configs/ for examples)")
        cfg = DistillConfig.from_dict(json.loads(p.read_text()))
    else:
        if preset is not None and preset not in PRESETS:
            raise ValueError(f"unknown preset {preset!r}; choose from {sorted(PRESETS)}")
        cfg = PRESETS[preset or "tiny"]
    return apply_overrides(cfg, list(overrides or []))
