"""Stage 2, ``teacher_trajectories``: the teacher's deterministic DDIM answers cached as shards.

* :mod:`.config` — ``TrajectoryCacheConfig`` and the stage's versions and noise seeds;
* :mod:`.sample` — the cached sample's fields, dtypes and shapes (writer, trainer, checks);
* :mod:`.cache` — ``cache_shard`` (one rgba shard -> one trajectory shard set) and reading back.
"""

from .cache import cache_shard, load_sample, reproduce_views
from .config import (
    CODE_VERSION,
    STAGE,
    TrajectoryCacheConfig,
    content_hash,
    noise_seed,
    shard_dir,
    stage_dir,
    stage_version,
    upstream_version,
)
from .sample import SampleSpec

__all__ = [
    "TrajectoryCacheConfig",
    "STAGE",
    "CODE_VERSION",
    "stage_version",
    "stage_dir",
    "shard_dir",
    "cache_shard",
    "noise_seed",
    "content_hash",
    "upstream_version",
    "load_sample",
    "reproduce_views",
    "SampleSpec",
]
