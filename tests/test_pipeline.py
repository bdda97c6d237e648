"""The Dagster graph: loads, materialises partitions, versions, caches, checks, and runs from the real CLI.

Tests use the ``smoke`` profile (2 rgba shards x 4 images, 2 noise draws, 3 DDIM steps) and a
random-weight TinyTeacher saved to a temp dir (``teacher_path`` / ``$DD3G_TEACHER_PATH``), so they
never depend on the shipped checkpoint.
"""

import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import dagster as dg
import numpy as np
import pytest

from dd3g_core import synthesis
from dd3g_core import trajectories as traj
from dd3g_core.shards import iter_samples, validate_shards
from dd3g_core.teacher import TinyTeacher
from pipelines.definitions import defs
from pipelines.resources import DD3GSettings, shard_partition_keys, shard_range_tags

warnings.filterwarnings("ignore", category=dg.BetaWarning)
ROOT = Path(__file__).resolve().parents[1]
SMOKE_SHARDS = synthesis.PRESETS["smoke"].num_shards


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("teacher") / "tiny-random"
    TinyTeacher(seed=0).save_pretrained(path)
    return path


def settings(tmp_path, teacher_dir):
    return DD3GSettings(data_root=str(tmp_path / "data"), profile="smoke", teacher_path=str(teacher_dir))


def materialization(result, node, partition):
    mats = [m for m in result.asset_materializations_for_node(node) if m.partition == partition]
    assert len(mats) == 1, [m.partition for m in result.asset_materializations_for_node(node)]
    return mats[0]


def test_definitions_load_and_distill_job_covers_all_partitions():
    job = defs.resolve_job_def("distill")
    keys = {k.to_user_string() for k in defs.resolve_asset_graph().get_all_asset_keys()}
    assert {"rgba_images", "teacher_trajectories", "tiny_teacher", "pepd_student"} <= keys
    pkeys = job.partitions_def.get_partition_keys()
    assert pkeys == shard_partition_keys(os.environ.get("DD3G_PROFILE", "tiny"))
    assert job.tags["dagster/asset_partition_range_start"] == pkeys[0]
    assert job.tags["dagster/asset_partition_range_end"] == pkeys[-1]
    assert shard_partition_keys("smoke") == [f"{i:05d}" for i in range(SMOKE_SHARDS)]
    assert shard_range_tags(dg.StaticPartitionsDefinition(["00000", "00001", "00002"])) == {
        "dagster/asset_partition_range_start": "00000", "dagster/asset_partition_range_end": "00002"}
    graph = defs.resolve_asset_graph()
    parents = {k.to_user_string() for k in graph.get(dg.AssetKey("teacher_trajectories")).parent_keys}
    assert parents == {"rgba_images", "tiny_teacher"}
    parents = {k.to_user_string() for k in graph.get(dg.AssetKey("pepd_student")).parent_keys}
    assert parents == {"teacher_trajectories", "tiny_teacher"}


def test_materialize_partitions_cache_and_checks(tmp_path, teacher_dir):
    from pipelines.assets import rgba_images, teacher_trajectories

    res_settings = {"settings": settings(tmp_path, teacher_dir)}
    instance = dg.DagsterInstance.ephemeral()
    assets = [rgba_images, teacher_trajectories]
    res = dg.materialize(assets, resources=res_settings, instance=instance, partition_key="00001")
    assert res.success
    rgba_mat = materialization(res, "rgba_images", "00001")
    traj_mat = materialization(res, "teacher_trajectories", "00001")
    assert rgba_mat.metadata["cache_hit"].value is False and traj_mat.metadata["cache_hit"].value is False
    checks = res.get_asset_check_evaluations()
    assert {(c.asset_key.to_user_string(), c.check_name) for c in checks} == {
        ("rgba_images", "shards_match_manifest"), ("rgba_images", "alpha_coverage_in_range"),
        ("teacher_trajectories", "counts_match_manifest"), ("teacher_trajectories", "finite_and_shaped")}
    assert all(c.passed for c in checks), [(c.check_name, c.metadata) for c in checks]

    # only partition 1 exists: one shard dir on each side, the upstream one is the identity-mapped shard
    config = synthesis.PRESETS["smoke"]
    rgba_dir = synthesis.shard_dir(tmp_path / "data", config, 1)
    assert not synthesis.shard_dir(tmp_path / "data", config, 0).exists()
    rgba = validate_shards(rgba_dir)
    samples = list(iter_samples(rgba_dir))
    assert len(samples) == rgba.num_samples == rgba_mat.metadata["num_samples"].value
    traj_dir = Path(traj_mat.metadata["path"].value)
    assert traj_dir.name == "shard-00001" and traj_dir.parent.parent.name == "teacher_trajectories"
    cached = validate_shards(traj_dir)
    assert cached.manifest["upstream"]["shard_dir"] == str(rgba_dir)
    pc = traj.PRESETS["smoke"]
    assert cached.num_samples == rgba.num_samples * pc.num_noise_draws
    s = next(iter(iter_samples(traj_dir)))
    assert s["views.npy"].shape == (4, 3, 32, 32) and np.isfinite(s["views.npy"]).all()
    # DataVersion = the partition's manifest hash
    assert rgba_mat.tags["dagster/data_version"] == traj.content_hash(rgba)
    assert traj_mat.tags["dagster/data_version"] == traj.content_hash(cached)

    # re-materialising unchanged inputs: cache hits with the same data versions
    again = dg.materialize(assets, resources=res_settings, instance=instance, partition_key="00001")
    for node, mat in (("rgba_images", rgba_mat), ("teacher_trajectories", traj_mat)):
        m2 = materialization(again, node, "00001")
        assert m2.metadata["cache_hit"].value is True
        assert m2.tags["dagster/data_version"] == mat.tags["dagster/data_version"]
    assert all(c.passed for c in again.get_asset_check_evaluations())


def test_distill_job_runs_from_the_dagster_cli(tmp_path, teacher_dir):
    """The real CLI, no extra flags: one run covers every shard partition plus the unpartitioned
    tiny_teacher asset (the smoke profile trains its seconds-long teacher there)."""
    home = tmp_path / "dagster_home"
    home.mkdir()
    env = dict(os.environ, DD3G_DATA_ROOT=str(tmp_path / "data"), DD3G_PROFILE="smoke",
               DD3G_TEACHER_PATH=str(teacher_dir), DAGSTER_HOME=str(home))
    dagster = Path(sys.executable).with_name("dagster")
    proc = subprocess.run(
        [str(dagster), "job", "execute", "-m", "pipelines.definitions", "-j", "distill"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    config = synthesis.PRESETS["smoke"]
    for i in range(SMOKE_SHARDS):
        manifest = json.loads((synthesis.shard_dir(tmp_path / "data", config, i) / "manifest.json").read_text())
        assert manifest["num_samples"] == config.samples_per_shard - manifest["num_rejected"]
    traj_root = tmp_path / "data" / "teacher_trajectories"
    shard_dirs = sorted(p.name for p in traj_root.glob("*/shard-*"))
    assert shard_dirs == [f"shard-{i:05d}" for i in range(SMOKE_SHARDS)]

    old_home = os.environ.get("DAGSTER_HOME")
    os.environ["DAGSTER_HOME"] = str(home)
    try:
        with dg.DagsterInstance.get() as instance:
            runs = instance.get_runs()
            assert len(runs) == 1 and runs[0].job_name == "distill"  # one run for everything
            for key in ("rgba_images", "teacher_trajectories"):
                assert sorted(instance.get_materialized_partitions(dg.AssetKey(key))) == shard_partition_keys("smoke")
            assert instance.get_latest_materialization_event(dg.AssetKey("tiny_teacher")) is not None
            # pepd_student ran `accelerate launch -m dd3g_core.train` through Pipes; rank 0 reported
            student = instance.get_latest_materialization_event(dg.AssetKey("pepd_student"))
            meta = student.asset_materialization.metadata
            steps = [p[0] for p in meta["loss_curve"].value]
            assert steps[-1] == 6 and meta["cache_hit"].value is False and meta["bad_steps"].value == 0
            assert Path(meta["checkpoint"].value, "model.safetensors").is_file()
            assert student.asset_materialization.tags["dagster/data_version"] == meta["weights_sha256"].value[:16]
            checks = {name: instance.event_log_storage.get_latest_asset_check_execution_by_key(
                [dg.AssetCheckKey(dg.AssetKey("pepd_student"), name)])
                for name in ("student_renders_finite", "student_beats_copy_input")}
            for name, by_key in checks.items():
                record = next(iter(by_key.values()))
                evaluation = record.event.dagster_event.event_specific_data
                assert evaluation.check_name == name
                if name == "student_renders_finite":
                    assert evaluation.passed
                else:  # random smoke teacher: only that it ran and reported its numbers
                    assert "student_vs_teacher" in evaluation.metadata
    finally:
        if old_home is None:
            os.environ.pop("DAGSTER_HOME", None)
        else:
            os.environ["DAGSTER_HOME"] = old_home


def test_teacher_folder_resolution(tmp_path, monkeypatch):
    from dd3g_core.teacher import MissingWeightsError, default_tiny_teacher_path

    explicit = DD3GSettings(data_root=str(tmp_path), profile="smoke", teacher_path=str(tmp_path / "t"))
    assert explicit.teacher_folder() == (tmp_path / "t").resolve()
    smoke = DD3GSettings(data_root=str(tmp_path), profile="smoke", teacher_path="")
    assert smoke.teacher_folder() == tmp_path.resolve() / "tiny_teacher" / "smoke" / "teacher"
    tiny = DD3GSettings(data_root=str(tmp_path), profile="tiny", teacher_path="")
    assert tiny.teacher_folder() == default_tiny_teacher_path(must_exist=False)
    with pytest.raises(MissingWeightsError, match="DD3G_TEACHER_PATH"):
        DD3GSettings(data_root=str(tmp_path), profile="full", teacher_path="").teacher_folder()
    with pytest.raises(MissingWeightsError):
        smoke.load_teacher()  # nothing trained there yet: a clear error, not a random teacher
