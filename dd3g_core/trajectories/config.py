"""``TrajectoryCacheConfig`` (how the teacher's trajectories are cached) and the stage's versions.

``version`` hashes :data:`CODE_VERSION`, the resolved config, ``teacher.config_hash()`` (config +
weights) and the upstream ``rgba_images`` version; the output of one rgba shard lives in
``<data_root>/teacher_trajectories/<version>/shard-NNNNN/``. The per-profile values are in
``dd3g_core.profiles``.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from ..io import stable_hash
from ..shards import content_hash, read_manifest

STAGE = "teacher_trajectories"
CODE_VERSION = "1"  # bump when the content of a cached sample changes for the same config + teacher
STORE_DTYPES = {"float32": np.float32, "float16": np.float16}

__all__ = [
    "TrajectoryCacheConfig",
    "STAGE",
    "CODE_VERSION",
    "STORE_DTYPES",
    "stage_version",
    "stage_dir",
    "shard_dir",
    "noise_seed",
    "content_hash",
    "upstream_version",
]


@dataclass(frozen=True)
class TrajectoryCacheConfig:
    """How the teacher's trajectories are cached (see the module doc).

    ``steps``/``guidance`` None = the teacher's ``default_steps``/``default_guidance`` (resolved
    values are recorded per sample; the version covers them through ``teacher.config_hash()``).
    ``record_steps``: DDIM step indices i whose input state x_i is kept (0 = the noise itself,
    must be < steps). ``batch_size``: (image, draw) pairs per ``teacher.sample`` call.
    ``samples_per_shard``: samples per tar file of the output shard set. ``seed``: mixed into
    every noise seed (another seed = another set of draws).
    """

    num_noise_draws: int = 4
    steps: int | None = 25
    guidance: float | None = None
    record_steps: tuple[int, ...] = (5, 10, 15, 20)
    batch_size: int = 16
    samples_per_shard: int = 256
    seed: int = 0
    store_dtype: str = "float32"

    def __post_init__(self) -> None:
        if self.num_noise_draws < 1:
            raise ValueError("num_noise_draws must be >= 1")
        if self.steps is not None and self.steps < 1:
            raise ValueError("steps must be >= 1")
        if self.batch_size < 1 or self.samples_per_shard < 1:
            raise ValueError("batch_size and samples_per_shard must be >= 1")
        if self.store_dtype not in STORE_DTYPES:
            raise ValueError(f"store_dtype must be one of {sorted(STORE_DTYPES)}, got {self.store_dtype!r}")
        rs = tuple(int(i) for i in self.record_steps)
        if list(rs) != sorted(set(rs)) or any(i < 0 for i in rs):
            raise ValueError(f"record_steps must be increasing, distinct and >= 0, got {self.record_steps}")
        if self.steps is not None and rs and rs[-1] >= self.steps:
            raise ValueError(f"record_steps {rs} must be < steps={self.steps}")
        object.__setattr__(self, "record_steps", rs)

    def resolved(self, teacher) -> TrajectoryCacheConfig:
        steps = teacher.default_steps if self.steps is None else self.steps
        guidance = teacher.default_guidance if self.guidance is None else self.guidance
        if self.record_steps and self.record_steps[-1] >= steps:
            raise ValueError(f"record_steps {self.record_steps} must be < the teacher's {steps} steps")
        return replace(self, steps=int(steps), guidance=float(guidance))

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["record_steps"] = list(self.record_steps)
        return d


# ------------------------------------------------------------------------------------ versions


def upstream_version(rgba_shard_dir: str | Path, manifest: dict | None = None) -> str:
    """The ``rgba_images`` version of a shard dir: its manifest's ``stage_version`` if recorded,
    else the name of its parent (``rgba_images/<version>/shard-NNNNN``)."""
    manifest = read_manifest(rgba_shard_dir) if manifest is None else manifest
    return str(manifest.get("stage_version") or manifest.get("version") or Path(rgba_shard_dir).resolve().parent.name)


def stage_version(config: TrajectoryCacheConfig, teacher_config_hash: str, rgba_version: str) -> str:
    return stable_hash(
        {
            "stage": STAGE,
            "code_version": CODE_VERSION,
            "config": config.to_dict(),
            "teacher": teacher_config_hash,
            "upstream": {"rgba_images": rgba_version},
        }
    )


def stage_dir(
    data_root: str | Path, config: TrajectoryCacheConfig, teacher_config_hash: str, rgba_version: str
) -> Path:
    return Path(data_root) / STAGE / stage_version(config, teacher_config_hash, rgba_version)


def shard_dir(
    data_root: str | Path, config: TrajectoryCacheConfig, teacher_config_hash: str, rgba_version: str, shard_index: int
) -> Path:
    return stage_dir(data_root, config, teacher_config_hash, rgba_version) / f"shard-{int(shard_index):05d}"


def noise_seed(rgba_key: str, draw: int, base_seed: int = 0) -> int:
    """63-bit seed of noise draw ``draw`` for image ``rgba_key`` (independent of batch/shard layout)."""
    digest = hashlib.sha256(f"{base_seed}/{rgba_key}/{int(draw)}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)
