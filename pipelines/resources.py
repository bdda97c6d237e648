"""Resources shared by every asset: where data lives and which profile runs."""

from __future__ import annotations

import os
from pathlib import Path

import dagster as dg

PROFILES = ("tiny", "smoke", "full")


class DD3GSettings(dg.ConfigurableResource):
    """``data_root``: where stage outputs are written (``<data_root>/<stage>/<version>/``).
    ``profile``: ``tiny`` (embedded CPU default), ``smoke`` (seconds, for tests), ``full`` (GPU)."""

    data_root: str = os.environ.get("DD3G_DATA_ROOT", "data")
    profile: str = os.environ.get("DD3G_PROFILE", "tiny")

    def root(self) -> Path:
        if self.profile not in PROFILES:
            raise ValueError(f"unknown profile {self.profile!r}; choose from {PROFILES}")
        path = Path(self.data_root).expanduser().resolve()
        path.mkdir(parents=True, exist_ok=True)
        return path
