"""Resources shared by every asset: where data lives, which profile runs, which teacher to use.

The profile also sizes the shard partitions of ``rgba_images`` / ``teacher_trajectories``:
:data:`PROFILE` is read from ``DD3G_PROFILE`` (default ``tiny``) when the definitions are
loaded, and :data:`SHARD_PARTITIONS` has one key per shard of that profile's rgba preset
(``"00000"`` .. ``f"{num_shards - 1:05d}"``). The ``settings`` resource's ``profile`` defaults to
the same variable; keep them equal (an asset refuses a partition key its profile does not have).
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import dagster as dg

PROFILES = ("tiny", "smoke", "full")
PROFILE = os.environ.get("DD3G_PROFILE", "tiny")
TEACHER_PATH_ENV = "DD3G_TEACHER_PATH"


def num_shards(profile: str) -> int:
    """Shards of the profile's ``rgba_images`` preset (= partitions of the shard stages)."""
    from dd3g_core.synthesis import PRESETS

    if profile not in PRESETS:
        raise ValueError(f"unknown profile {profile!r}; choose from {PROFILES}")
    return int(PRESETS[profile].num_shards)


def shard_partition_keys(profile: str) -> list[str]:
    return [f"{i:05d}" for i in range(num_shards(profile))]


SHARD_PARTITIONS = dg.StaticPartitionsDefinition(shard_partition_keys(PROFILE))


class DD3GSettings(dg.ConfigurableResource):
    """``data_root``: where stage outputs are written (``<data_root>/<stage>/<version>/``).
    ``profile``: ``tiny`` (embedded CPU default), ``smoke`` (seconds, for tests), ``full`` (GPU).
    ``teacher_path``: the teacher checkpoint for ``teacher_trajectories`` (env ``DD3G_TEACHER_PATH``);
    empty = the profile's default (:meth:`teacher_folder`)."""

    data_root: str = os.environ.get("DD3G_DATA_ROOT", "data")
    profile: str = os.environ.get("DD3G_PROFILE", "tiny")
    teacher_path: str = os.environ.get(TEACHER_PATH_ENV, "")

    def root(self) -> Path:
        if self.profile not in PROFILES:
            raise ValueError(f"unknown profile {self.profile!r}; choose from {PROFILES}")
        path = Path(self.data_root).expanduser().resolve()
        path.mkdir(parents=True, exist_ok=True)
        return path

    def teacher_folder(self) -> Path:
        """Which teacher checkpoint the profile uses.

        ``teacher_path`` / ``$DD3G_TEACHER_PATH`` wins. Otherwise: ``tiny`` -> the shipped tiny
        teacher (``assets/models/tiny-teacher``); ``smoke`` -> the smoke teacher the
        ``tiny_teacher`` asset trains into ``<data_root>/tiny_teacher/smoke/teacher``; ``full`` ->
        no default (ImageDream weights must be given as a local folder).
        """
        from dd3g_core.teacher import MissingWeightsError, default_tiny_teacher_path

        if self.teacher_path:
            return Path(self.teacher_path).expanduser().resolve()
        if self.profile == "tiny":
            return default_tiny_teacher_path(must_exist=False)
        if self.profile == "smoke":
            return self.root() / "tiny_teacher" / "smoke" / "teacher"
        raise MissingWeightsError(f"profile 'full' needs the ImageDream folder: set {TEACHER_PATH_ENV} or the "
                                  f"settings resource's teacher_path (see docs/teacher.md for what to fetch)")

    def load_teacher(self):
        """The teacher model (eval mode, CPU or the first CUDA device in the full profile)."""
        folder = self.teacher_folder()
        if self.profile == "full":
            import torch

            from dd3g_core.teacher import ImageDreamTeacher

            device = "cuda" if torch.cuda.is_available() else None
            return ImageDreamTeacher.from_pretrained(folder, device=device).eval()
        from dd3g_core.teacher import TinyTeacher

        return TinyTeacher.from_pretrained(folder)


def shard_range_tags(partitions: dg.StaticPartitionsDefinition = SHARD_PARTITIONS) -> dict[str, str]:
    """Run tags selecting every shard partition in one run (``distill``): Dagster runs a
    partition range as one step per asset when the assets have ``BackfillPolicy.single_run()``;
    unpartitioned assets of the same job run once, as usual."""
    keys = partitions.get_partition_keys()
    return {"dagster/asset_partition_range_start": keys[0], "dagster/asset_partition_range_end": keys[-1]}


def shard_asset(**asset_kwargs):
    """``dg.asset`` for a stage partitioned by shard: one partition per shard, and a single-run
    backfill policy so a whole partition range (the ``distill`` job) runs as one step."""
    with warnings.catch_warnings():  # backfill_policy is a beta parameter in dagster 1.13
        warnings.simplefilter("ignore", dg.BetaWarning)
        return dg.asset(partitions_def=SHARD_PARTITIONS, backfill_policy=dg.BackfillPolicy.single_run(), **asset_kwargs)
