"""The ``settings`` resource: where data lives, which profile runs, and an explicit teacher override.

The profile (``dd3g_core.profiles``: ``tiny``, ``smoke``, ``full`` or a JSON profile file) is read
once, from ``DD3G_PROFILE`` when the definitions load (it sizes the shard partitions,
``pipelines.partitions``) and by :meth:`DD3GSettings.profile_config` inside a run. Keep the
resource's ``profile`` equal to the variable; an asset refuses a partition key its profile lacks.
"""

from __future__ import annotations

import os
from pathlib import Path

import dagster as dg

from dd3g_core.profiles import PROFILE_ENV, TEACHER_PATH_ENV, Profile, get_profile

__all__ = ["DD3GSettings"]


class DD3GSettings(dg.ConfigurableResource):
    """``data_root``: stage outputs go to ``<data_root>/<stage>/<version>/`` (env ``DD3G_DATA_ROOT``).
    ``profile``: a profile name or a JSON profile file (env ``DD3G_PROFILE``, default ``tiny``).
    ``teacher_path``: a teacher folder that replaces the profile's (env ``DD3G_TEACHER_PATH``); the
    ``teacher`` asset validates and records it, and every downstream stage loads what it recorded."""

    data_root: str = os.environ.get("DD3G_DATA_ROOT", "data")
    profile: str = os.environ.get(PROFILE_ENV, "tiny")
    teacher_path: str = os.environ.get(TEACHER_PATH_ENV, "")

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        """Every step uses this resource: in a step process of the multiprocess executor it starts the
        watchdog that stops the step, and what it launched, if the run's coordinator dies
        (:mod:`pipelines.orphans`)."""
        from .orphans import start_orphan_watchdog

        run = context.run
        start_orphan_watchdog(context.instance, run.run_id if run is not None else None)

    def profile_config(self) -> Profile:
        return get_profile(self.profile)

    def root(self) -> Path:
        self.profile_config()  # an unknown profile fails before anything is written
        path = Path(self.data_root).expanduser().resolve()
        path.mkdir(parents=True, exist_ok=True)
        return path

    def hash_cache(self) -> Path:
        """Where folder content hashes are remembered by (path, size, mtime) (``dd3g_core.io.tree_sha256``)."""
        return self.root() / ".records" / "file-hashes.json"
