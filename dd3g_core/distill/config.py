"""``DistillConfig``: every option of a distillation run, read from a profile and JSON.

A run is fully described by a profile's ``distill`` settings (``--preset tiny|smoke|full``, see
``dd3g_core.profiles``) or a JSON config file (which may name a ``preset`` to start from), plus ``--set
key=value`` overrides; the resolved config is stored in every checkpoint (``trainer_state.json``)
so a run describes itself and ``--resume`` refuses to continue a run with another config.

Every field is checked against its annotation when a config is made (``check_field_types``), and
``model_overrides`` against ``PEPDConfig``'s fields, so a bad value from a file, a profile or a
``--set`` is a ``ValueError`` naming the field and what it accepts (``--set steps=abc`` ->
``--set steps=abc: DistillConfig.steps must be an integer, got 'abc'``), never a later crash.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

__all__ = ["DistillConfig", "load_config", "apply_overrides", "preset_config"]

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
    init_from: str | None = None  # warm start: an exported student folder (pepd/) whose weights replace `init`'s
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
    # --- objective (dd3g_core.distill.losses; the solid-student recipe, docs/experiments/solid_student.md) ---
    alpha_weight: float = 1.0
    alpha_softness: float = 0.08
    alpha_floor: float = 0.03  # dead zone of the matte for the teacher's background noise (alpha_from_background)
    alpha_connected: bool = False  # only border-connected background-coloured pixels are background (the matte)
    alpha_unmix_rings: int = 0  # > 0: edge pixels' coverage by unmixing the interior colour (distill.matte)
    random_background: float = 0.5  # share of views supervised on a random colour instead of the teacher's
    surface_weight: float = 0.5  # each view's Gaussians on its visible surface (surface_consistency_loss)
    solid_weight: float = 0.3  # renders at random cameras all round: mean alpha(1 - alpha) per pixel
    solid_elevation_range: tuple[float, float] = (-10.0, 30.0)  # degrees of those cameras (any azimuth)
    opacity_weight: float = 0.0  # mean alpha(1 - alpha) over the Gaussians' opacities (opacity_decision_loss)
    seen_view_weight: float = 1.0  # the input's view's weight in the explicit terms (the others: 1)
    perceptual_weights: str | None = None  # local VGG16 safetensors (dd3g_core.distill.perceptual); None = no term
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
    # --- memory (docs/gpu.md); at their defaults neither appears in to_dict() / identity(): versions unchanged ---
    gradient_checkpointing: bool = False  # recompute the student's block activations in the backward
    freeze_phase1_blocks: int = 0  # phase 1's embeddings + its first k blocks get no gradient (0: none)
    # --- bookkeeping ---
    seed: int = 0
    log_every: int = 10
    checkpoint_every: int = 100
    keep_checkpoints: int = 2
    torch_threads: int = 0  # CPU threads per process (0: leave torch's default)

    def __post_init__(self) -> None:
        from ..model.config import PEPDConfig, check_field_types, check_value, field_types

        for name, lit in (("mixed_precision", MixedPrecision), ("init", Init)):
            if getattr(self, name) not in get_args(lit):
                raise ValueError(f"DistillConfig.{name} must be one of {get_args(lit)}, got {getattr(self, name)!r}")
        check_field_types(self)
        model_fields = field_types(PEPDConfig)
        for key, value in self.model_overrides.items():
            if key not in model_fields:
                raise ValueError(
                    f"DistillConfig.model_overrides has an unknown PEPDConfig key {key!r}; known keys: "
                    f"{sorted(model_fields)}"
                )
            check_value(model_fields[key], value, f"DistillConfig.model_overrides.{key}")
        for name in (
            "steps",
            "batch_size",
            "grad_accum",
            "log_every",
            "checkpoint_every",
            "keep_checkpoints",
            "implicit_every",
            "max_bad_steps",
        ):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"DistillConfig.{name} must be >= 1, got {getattr(self, name)}")
        for name in (
            "implicit_ramp",
            "implicit_t_range",
            "implicit_azimuth_range",
            "implicit_elevation_range",
            "solid_elevation_range",
        ):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        if self.implicit_ramp[0] > self.implicit_ramp[1]:
            raise ValueError(
                f"DistillConfig.implicit_ramp must be [start, end] with start <= end, got {list(self.implicit_ramp)}"
            )
        if not 0 <= self.alpha_floor < self.alpha_softness:
            raise ValueError(
                f"DistillConfig.alpha_floor must be in [0, alpha_softness={self.alpha_softness}), "
                f"got {self.alpha_floor}"
            )
        if not 0 <= self.random_background <= 1:
            raise ValueError(f"DistillConfig.random_background must be in [0, 1], got {self.random_background}")
        if self.seen_view_weight < 0:
            raise ValueError(f"DistillConfig.seen_view_weight must be >= 0, got {self.seen_view_weight}")
        if self.lr <= 0:
            raise ValueError(f"DistillConfig.lr must be > 0, got {self.lr}")
        if not 0 <= self.ema_decay < 1:
            raise ValueError(f"DistillConfig.ema_decay must be in [0, 1), got {self.ema_decay}")
        counts = ("warmup_steps", "num_workers", "shuffle_buffer", "torch_threads", "freeze_phase1_blocks")
        for name in (*counts, "alpha_unmix_rings"):
            if getattr(self, name) < 0:
                raise ValueError(f"DistillConfig.{name} must be >= 0, got {getattr(self, name)}")

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        for name, default in _OMITTED_AT_DEFAULT.items():  # configs (and exported students) from before the options
            if d[name] == default:
                del d[name]
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in d.items()}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> DistillConfig:
        if not isinstance(d, Mapping):
            raise ValueError(f"a DistillConfig must be a JSON object of fields, got {type(d).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known - {"preset", "_comment"})
        if unknown:
            raise ValueError(f"unknown DistillConfig keys {unknown}; known keys: {sorted(known)}")
        base = preset_config(d["preset"]) if "preset" in d else cls()
        return dataclasses.replace(base, **{k: v for k, v in d.items() if k in known})

    def replace(self, **changes: Any) -> DistillConfig:
        return dataclasses.replace(self, **changes)

    def identity(self) -> dict[str, Any]:
        """The fields that define what is being trained (a resumed run must match them)."""
        skip = {"out", "steps", "log_every", "checkpoint_every", "keep_checkpoints", "num_workers", "torch_threads"}
        # checkpointing changes how memory is spent, not what is trained: a run may resume with it on or off
        skip.add("gradient_checkpointing")
        if self.init_from is None:  # no warm start: the identity (and every run's version) as before the option
            skip.add("init_from")
        return {k: v for k, v in self.to_dict().items() if k not in skip}


# Fields left out of to_dict() while they hold these values, so every config, version and exported student
# made before the field existed stays byte-identical.
_OMITTED_AT_DEFAULT = {
    "gradient_checkpointing": False,
    "freeze_phase1_blocks": 0,
    "seen_view_weight": 1.0,
    "alpha_unmix_rings": 0,
}


def preset_config(name: str) -> DistillConfig:
    """The ``distill`` settings of a profile (``dd3g_core.profiles``: tiny, smoke, full or a profile file)."""
    from ..profiles import get_profile

    return get_profile(name).distill


def _text_field(hint: Any) -> bool:
    """A field whose ``--set`` value is taken as written (a string, a path, a choice of names)."""
    args = [a for a in get_args(hint) if a is not type(None)]
    if hint is str or (args and all(a is str for a in args)):
        return True
    return get_origin(hint) is Literal and all(isinstance(a, str) for a in get_args(hint))


def _parse_value(text: str, hint: Any, label: str) -> Any:
    """A ``--set`` value: as written for text fields (``null`` for None where allowed), else JSON."""
    from ..model.config import describe_type

    if _text_field(hint):
        return None if text == "null" and type(None) in get_args(hint) else text
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        if hint is Any:
            return text  # bare strings: --set out=/runs/a
        note = " (not valid JSON)" if text.strip()[:1] in ("[", "{", '"') else ""
        raise ValueError(f"{label} must be {describe_type(hint)}, got {text!r}{note}") from None


def apply_overrides(config: DistillConfig, overrides: list[str]) -> DistillConfig:
    """``["steps=100", "implicit_ramp=[0,50]", "model_overrides.depth=2"]`` -> a new config.

    Every error is a ``ValueError`` naming the ``--set`` item, the field and what it accepts, e.g.
    ``--set steps=abc: DistillConfig.steps must be an integer, got 'abc'``."""
    from ..model.config import PEPDConfig, field_types

    hints, model_hints = field_types(DistillConfig), field_types(PEPDConfig)
    changes: dict[str, Any] = {}
    model_over = dict(config.model_overrides)
    for item in overrides:
        if "=" not in item:
            raise ValueError(f"--set expects key=value, got {item!r}")
        key, value = item.split("=", 1)
        key = key.strip()
        try:
            if key.startswith("model_overrides."):
                sub = key.split(".", 1)[1]
                if sub not in model_hints:
                    raise ValueError(
                        f"unknown PEPDConfig key {sub!r} in model_overrides; known keys: {sorted(model_hints)}"
                    )
                model_over[sub] = _parse_value(value, model_hints[sub], f"DistillConfig.{key}")
            elif key not in hints:
                raise ValueError(f"unknown DistillConfig keys [{key!r}]; known keys: {sorted(hints)}")
            else:
                changes[key] = _parse_value(value, hints[key], f"DistillConfig.{key}")
        except ValueError as e:
            raise ValueError(f"--set {item}: {e}") from None
    if model_over != dict(config.model_overrides):
        changes["model_overrides"] = model_over
    try:
        return DistillConfig.from_dict({**config.to_dict(), **changes})
    except (ValueError, TypeError) as e:
        message = " ".join(str(e).split())
        named = [o for o in overrides if re.search(rf"\b{re.escape(o.split('=', 1)[0].strip())}\b", message)]
        raise ValueError(f"--set {(named or overrides)[0]}: {message}") from None


def load_config(
    path: str | Path | None = None, preset: str | None = None, overrides: list[str] | None = None
) -> DistillConfig:
    """Config from a JSON file (which may name a ``preset`` to start from), a preset, then overrides."""
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise FileNotFoundError(
                f"config file {p} does not exist (a JSON object of DistillConfig fields, optionally "
                f'naming a "preset": tiny, smoke or full)'
            )
        try:
            d = json.loads(p.read_text(encoding="utf-8"))
        except ValueError as e:  # JSONDecodeError, UnicodeDecodeError
            raise ValueError(f"config file {p} is not valid JSON ({' '.join(str(e).split())})") from None
        try:
            cfg = DistillConfig.from_dict(d)
        except (ValueError, TypeError) as e:
            raise ValueError(f"config file {p}: {' '.join(str(e).split())}") from None
    else:
        cfg = preset_config(preset or "tiny")
    return apply_overrides(cfg, list(overrides or []))
