"""``StageRecordIOManager``: what each stage produced travels along the graph's edges as a JSON record.

Every asset returns a small record of its output (paths, content hashes, versions); the data itself
stays in ``<data_root>/<stage>/<version>/``. This IO manager stores the records as JSON (never
pickle) under ``<data_root>/.records/<asset>/<partition>.json`` and hands them to downstream assets
as inputs, so a stage loads exactly what its upstream materialization produced instead of
recomputing upstream paths from settings.

A partitioned asset returns ``{partition_key: record}`` for the partitions of its run (one record
per partition is written); a downstream input of a partitioned asset is ``{partition_key: record}``
for the partitions it depends on; an unpartitioned asset's record is the record itself.

A record is checked when it is loaded, so nothing malformed or refused flows on: it must be a JSON
object with the fields its asset's records carry (:data:`REQUIRED_FIELDS`, non-empty strings), and a
record marked ``failed_checks`` (its partition failed a blocking check when it was materialized,
:func:`mark_failed_checks`) is refused with the names of those checks, in any later run as well.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import dagster as dg

from dd3g_core.io import atomic_write_json

from .resources import DD3GSettings

__all__ = ["StageRecordIOManager", "RECORDS_DIR", "REQUIRED_FIELDS", "FAILED_CHECKS", "mark_failed_checks"]

RECORDS_DIR = ".records"
UNPARTITIONED = "_"
FAILED_CHECKS = "failed_checks"
REQUIRED_FIELDS = {  # what downstream stages read from each asset's record
    "rgba_images": ("path", "content_hash"),
    "teacher": ("path", "kind", "content_hash"),
    "teacher_trajectories": ("path", "content_hash"),
    "pepd_student": ("path", "run_dir", "trajectories", "weights_sha256", "version"),
    "student_ablations": ("path", "run_dir", "trajectories", "weights_sha256", "version", "ablation"),
    "evaluation_references": ("version",),  # path is empty when evaluation.folder replaces them
    "evaluation": ("path", "version"),
}


def mark_failed_checks(records: dict[str, dict], failed: dict[str, list[str]]) -> dict[str, dict]:
    """``records`` (``{partition: record}``) with the blocking checks each partition failed recorded in it:
    such a record is stored (the materialization happened) but never loaded downstream."""
    return {k: ({**r, FAILED_CHECKS: sorted(failed[k])} if failed.get(k) else r) for k, r in records.items()}


class StageRecordIOManager(dg.ConfigurableIOManager):
    settings: DD3GSettings

    def _path(self, key: dg.AssetKey, partition: str | None) -> Path:
        name = UNPARTITIONED if partition is None else partition
        if "/" in name or name.startswith("."):
            raise ValueError(f"partition key {name!r} cannot name a record file")
        return self.settings.root() / RECORDS_DIR / "/".join(key.path) / f"{name}.json"

    def handle_output(self, context: dg.OutputContext, obj: Any) -> None:
        if obj is None:
            return
        if not context.has_asset_partitions:
            _write(self._path(context.asset_key, None), obj)
            return
        keys = list(context.asset_partition_keys)
        if not isinstance(obj, dict) or set(obj) != set(keys):
            raise TypeError(
                f"{context.asset_key.to_user_string()} must return {{partition_key: record}} for the "
                f"partitions of its run {keys}, got {sorted(obj) if isinstance(obj, dict) else type(obj)}"
            )
        for key in keys:
            _write(self._path(context.asset_key, key), obj[key])

    def load_input(self, context: dg.InputContext) -> Any:
        key = context.asset_key
        if not context.has_asset_partitions:
            return self._read(key, None)
        return {p: self._read(key, p) for p in context.asset_partition_keys}

    def _read(self, key: dg.AssetKey, partition: str | None) -> Any:
        path = self._path(key, partition)
        asset = key.to_user_string()
        what = asset + ("" if partition is None else f" partition {partition}")
        if not path.is_file():
            raise FileNotFoundError(
                f"no record of {what} under {path.parent}: materialize {what} first (with the same data_root)"
            )
        try:
            record = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ValueError(f"record {path} is damaged ({e}): materialize {asset} again") from None
        if not isinstance(record, dict):
            raise ValueError(
                f"record {path} is damaged (a JSON {type(record).__name__}, not an object): materialize {asset} again"
            )
        missing = [f for f in REQUIRED_FIELDS.get(asset, ()) if not isinstance(record.get(f), str) or not record[f]]
        if missing:
            raise ValueError(f"record {path} lacks {missing} (or they are not strings): materialize {asset} again")
        if record.get(FAILED_CHECKS):
            raise ValueError(
                f"{what} failed its blocking check(s) {record[FAILED_CHECKS]} when it was materialized (record "
                f"{path}): its data must not flow on; see that run's check results, fix the cause and "
                f"materialize {what} again"
            )
        return record


def _write(path: Path, record: Any) -> None:
    """Atomically; an identical record is left alone (a cache hit changes no file)."""
    if path.is_file():
        try:
            if json.loads(path.read_text()) == json.loads(json.dumps(record, default=str)):
                return
        except (OSError, ValueError):
            pass  # unreadable: replaced below
    atomic_write_json(path, record)
