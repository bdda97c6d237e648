"""``StageRecordIOManager``: what each stage produced travels along the graph's edges as a JSON record.

Every asset returns a small record of its output (paths, content hashes, versions); the data itself
stays in ``<data_root>/<stage>/<version>/``. This IO manager stores the records as JSON (never
pickle) under ``<data_root>/.records/<asset>/<partition>.json`` and hands them to downstream assets
as inputs, so a stage loads exactly what its upstream materialization produced instead of
recomputing upstream paths from settings.

A partitioned asset returns ``{partition_key: record}`` for the partitions of its run (one record
per partition is written); a downstream input of a partitioned asset is ``{partition_key: record}``
for the partitions it depends on; an unpartitioned asset's record is the record itself.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import dagster as dg

from dd3g_core.io import atomic_write_json

from .resources import DD3GSettings

__all__ = ["StageRecordIOManager", "RECORDS_DIR"]

RECORDS_DIR = ".records"
UNPARTITIONED = "_"


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
        if not path.is_file():
            what = key.to_user_string() + ("" if partition is None else f" partition {partition}")
            raise FileNotFoundError(
                f"no record of {what} under {path.parent}: materialize {what} first (with the same data_root)"
            )
        try:
            return json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise ValueError(f"record {path} is damaged ({e}): materialize {key.to_user_string()} again") from None


def _write(path: Path, record: Any) -> None:
    """Atomically; an identical record is left alone (a cache hit changes no file)."""
    if path.is_file():
        try:
            if json.loads(path.read_text()) == json.loads(json.dumps(record, default=str)):
                return
        except (OSError, ValueError):
            pass  # unreadable: replaced below
    atomic_write_json(path, record)
