"""The Dagster graph: loads, materialises, versions, caches, and runs from the real CLI."""

import json
import os
import subprocess
import sys
from pathlib import Path

import dagster as dg
import numpy as np
import pytest

from dd3g_core import synthesis
from dd3g_core.shards import iter_samples, validate_shards
from pipelines.definitions import defs
from pipelines.resources import DD3GSettings

ROOT = Path(__file__).resolve().parents[1]


def settings(tmp_path):
    return DD3GSettings(data_root=str(tmp_path / "data"), profile="smoke")


def test_definitions_load_and_distill_job_exists():
    job = defs.resolve_job_def("distill")
    assert "rgba_images" in {n.name for n in job.graph.node_defs} or job is not None
    keys = {k.to_user_string() for k in defs.resolve_asset_graph().get_all_asset_keys()}
    assert "rgba_images" in keys


def test_materialize_rgba_images_writes_valid_shards_and_caches(tmp_path):
    from pipelines.assets import rgba_images, rgba_images_checks

    instance = dg.DagsterInstance.ephemeral()
    res = dg.materialize([rgba_images, rgba_images_checks], resources={"settings": settings(tmp_path)}, instance=instance)
    assert res.success
    mat = res.asset_materializations_for_node("rgba_images")[0]
    assert mat.metadata["cache_hit"].value is False
    config = synthesis.PRESETS["smoke"]
    out = synthesis.stage_dir(tmp_path / "data", config)
    summary = validate_shards(out)
    assert summary.num_samples == config.num_samples
    samples = list(iter_samples(out))
    assert len(samples) == config.num_samples
    for s in samples:
        rgba = s["rgba.png"]
        assert rgba.shape == (config.resolution, config.resolution, 4) and rgba.dtype == np.uint8
        assert 0.02 < (rgba[..., 3] > 127).mean() < 0.9
        assert s["json"]["split"] == "train" and s["json"]["source"] == "procedural"
    checks = res.get_asset_check_evaluations()
    assert checks and all(c.passed for c in checks)

    again = dg.materialize([rgba_images], resources={"settings": settings(tmp_path)}, instance=instance)
    mat2 = again.asset_materializations_for_node("rgba_images")[0]
    assert mat2.metadata["cache_hit"].value is True
    assert mat2.tags["dagster/data_version"] == mat.tags["dagster/data_version"]


def test_distill_job_runs_from_the_dagster_cli(tmp_path):
    env = dict(os.environ, DD3G_DATA_ROOT=str(tmp_path / "data"), DD3G_PROFILE="smoke",
               DAGSTER_HOME=str(tmp_path / "dagster_home"))
    (tmp_path / "dagster_home").mkdir()
    dagster = Path(sys.executable).with_name("dagster")
    proc = subprocess.run(
        [str(dagster), "job", "execute", "-m", "pipelines.definitions", "-j", "distill"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = synthesis.stage_dir(tmp_path / "data", synthesis.PRESETS["smoke"])
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["num_samples"] == synthesis.PRESETS["smoke"].num_samples
