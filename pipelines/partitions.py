"""Shard partitions of ``rgba_images`` and ``teacher_trajectories``: one partition per shard.

:data:`SHARD_PARTITIONS` has one key per shard of the profile named by ``DD3G_PROFILE`` when the
definitions load (``"00000"`` .. ``f"{num_shards - 1:05d}"``). A run may cover a range of partitions
(``BackfillPolicy.single_run``: one step loops over ``context.partition_keys``); the ``distill`` job's
tags select the whole range, so one run covers every partition.
"""

from __future__ import annotations

import warnings

import dagster as dg

from dd3g_core.io import stable_hash
from dd3g_core.profiles import get_profile
from dd3g_core.shards.rules import RejectShareError

__all__ = [
    "SHARD_PARTITIONS",
    "shard_partition_keys",
    "shard_range_tags",
    "shard_asset",
    "shard_indices",
    "run_data_version",
    "PartitionFailures",
]


def shard_partition_keys(profile: str | None = None) -> list[str]:
    """The partition keys of a profile (``None``: ``$DD3G_PROFILE``)."""
    return get_profile(profile).shard_partition_keys()


SHARD_PARTITIONS = dg.StaticPartitionsDefinition(shard_partition_keys())


def shard_range_tags(partitions: dg.StaticPartitionsDefinition = SHARD_PARTITIONS) -> dict[str, str]:
    """Run tags selecting every shard partition in one run: Dagster runs a partition range as one step
    per asset when the assets have ``BackfillPolicy.single_run()``; unpartitioned assets run once."""
    keys = partitions.get_partition_keys()
    return {"dagster/asset_partition_range_start": keys[0], "dagster/asset_partition_range_end": keys[-1]}


def shard_asset(**asset_kwargs):
    """``dg.asset`` for a stage partitioned by shard, with a single-run backfill policy."""
    with warnings.catch_warnings():  # backfill_policy is a beta parameter in dagster 1.13
        warnings.simplefilter("ignore", dg.BetaWarning)
        return dg.asset(partitions_def=SHARD_PARTITIONS, backfill_policy=dg.BackfillPolicy.single_run(), **asset_kwargs)


def shard_indices(context: dg.AssetExecutionContext, num_shards: int) -> list[tuple[str, int]]:
    """The (partition key, shard index) pairs of this run, checked against the profile."""
    out = []
    for key in context.partition_keys:
        index = int(key)
        if not 0 <= index < num_shards:
            raise ValueError(
                f"partition {key!r} does not exist in this profile ({num_shards} shards): the "
                f"definitions were loaded with another DD3G_PROFILE than the settings resource"
            )
        out.append((key, index))
    return out


class PartitionFailures:
    """The partitions of a run that failed their stage's reject limit (``RejectShareError``): each is
    recorded and the loop goes on (partitions are independent, each is published or not on its own);
    :meth:`raise_if_any` then fails the step with one message, one line per failed partition."""

    def __init__(self, asset: str):
        self.asset, self.errors = asset, {}

    def add(self, key: str, error: Exception) -> None:
        self.errors[key] = error

    def raise_if_any(self, done: int) -> None:
        if not self.errors:
            return
        lines = "\n".join(f"- {e}" for e in self.errors.values())
        others = f"; the {done} other partition(s) of this run are published and will be reused" if done else ""
        raise RejectShareError(
            f"{self.asset}: {len(self.errors)} partition(s) failed ({', '.join(self.errors)}){others}:\n{lines}"
        )


def run_data_version(hashes: dict[str, str]) -> dg.DataVersion:
    """One partition: its content hash; several: the hash of (key, hash) pairs (Dagster stamps one data
    version on every partition a step materialises; each partition's own hash is in its metadata)."""
    if len(hashes) == 1:
        return dg.DataVersion(next(iter(hashes.values())))
    return dg.DataVersion(stable_hash(sorted(hashes.items())))
