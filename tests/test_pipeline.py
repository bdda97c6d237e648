"""The Dagster graph (smoke profile): loads, materialises partitions, versions, caches, checks, passes each
stage's record to the next, and runs from the real CLI.

Tests use the ``smoke`` profile (2 rgba shards x 4 images, 2 noise draws, 3 DDIM steps). Where they need
a fixed teacher they use a random-weight TinyTeacher saved to a temp dir, so they never depend on the
shipped checkpoint. The full profile on CPU stand-ins is ``tests/test_pipeline_full.py``.
"""

import json
import math
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
from dd3g_core.profiles import get_profile
from dd3g_core.shards import iter_samples, validate_shards
from dd3g_core.teacher import MissingWeightsError, TinyTeacher
from pipelines.assets import ALL_ASSETS, rgba_images, teacher, teacher_trajectories
from pipelines.definitions import defs
from pipelines.io_managers import StageRecordIOManager
from pipelines.partitions import shard_partition_keys, shard_range_tags
from pipelines.resources import DD3GSettings

warnings.filterwarnings("ignore", category=dg.BetaWarning)
ROOT = Path(__file__).resolve().parents[1]
SMOKE = get_profile("smoke")


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("teacher") / "tiny-random"
    TinyTeacher(seed=0).save_pretrained(path)
    return path


def resources(tmp_path, teacher_path="", profile="smoke") -> dict:
    settings = DD3GSettings(data_root=str(tmp_path / "data"), profile=str(profile), teacher_path=str(teacher_path))
    return {"settings": settings, "io_manager": StageRecordIOManager(settings=settings)}


def materialization(result, node, partition=None):
    mats = [m for m in result.asset_materializations_for_node(node) if m.partition == partition]
    assert len(mats) == 1, [m.partition for m in result.asset_materializations_for_node(node)]
    return mats[0]


def test_definitions_load_and_distill_job_covers_all_partitions():
    job = defs.resolve_job_def("distill")
    keys = {k.to_user_string() for k in defs.resolve_asset_graph().get_all_asset_keys()}
    assert keys == {a.key.to_user_string() for a in ALL_ASSETS}
    in_job = {k.to_user_string() for k in job.asset_layer.selected_asset_keys} if hasattr(job, "asset_layer") else None
    if in_job is not None:  # the recipe and its evaluation; the ablations run on demand (their own job)
        assert in_job == keys - {"student_ablations", "ablation_evaluation"}
    pkeys = job.partitions_def.get_partition_keys()
    assert pkeys == shard_partition_keys(os.environ.get("DD3G_PROFILE", "tiny"))
    assert job.tags["dagster/asset_partition_range_start"] == pkeys[0]
    assert job.tags["dagster/asset_partition_range_end"] == pkeys[-1]
    assert shard_partition_keys("smoke") == [f"{i:05d}" for i in range(SMOKE.num_shards)]
    assert shard_range_tags(dg.StaticPartitionsDefinition(["00000", "00001", "00002"])) == {
        "dagster/asset_partition_range_start": "00000",
        "dagster/asset_partition_range_end": "00002",
    }
    graph = defs.resolve_asset_graph()
    parents = lambda key: {k.to_user_string() for k in graph.get(dg.AssetKey(key)).parent_keys}  # noqa: E731
    assert parents("teacher_trajectories") == {"rgba_images", "teacher"}
    assert parents("pepd_student") == {"teacher_trajectories", "teacher"}
    assert parents("teacher") == set() and parents("rgba_images") == set()
    assert parents("evaluation_references") == {"teacher", "pepd_student"}
    assert parents("evaluation") == {"pepd_student", "teacher", "evaluation_references"}
    assert parents("ablation_evaluation") == {"student_ablations", "pepd_student", "teacher", "evaluation_references"}
    checks = {k.name for k in defs.resolve_asset_graph().asset_check_keys}
    assert {
        "shards_match_manifest",
        "alpha_coverage_in_range",
        "counts_match_manifest",
        "finite_and_shaped",
        "student_renders_finite",
        "evaluation_complete",
        "student_beats_copy_input",
        "student_is_not_fog",
        "no_regression_vs_accepted",
    } <= checks
    assert parents("accepted_student") == {"pepd_student", "evaluation", "teacher"}
    assert {s.name for s in defs.schedules} == {"nightly_retrain"}
    assert defs.resolve_job_def("retrain").tags["dd3g/warm_start"] == "true"


def test_materialize_partitions_cache_and_checks(tmp_path, teacher_dir):
    res = resources(tmp_path, teacher_dir)
    instance = dg.DagsterInstance.ephemeral()
    assets = [rgba_images, teacher, teacher_trajectories]
    result = dg.materialize(assets, resources=res, instance=instance, partition_key="00001")
    assert result.success
    rgba_mat = materialization(result, "rgba_images", "00001")
    traj_mat = materialization(result, "teacher_trajectories", "00001")
    teacher_mat = materialization(result, "teacher")
    assert rgba_mat.metadata["cache_hit"].value is False and traj_mat.metadata["cache_hit"].value is False
    assert teacher_mat.metadata["source"].value == "override" and teacher_mat.metadata["kind"].value == "tiny"
    checks = result.get_asset_check_evaluations()
    assert {(c.asset_key.to_user_string(), c.check_name) for c in checks} == {
        ("rgba_images", "shards_match_manifest"),
        ("rgba_images", "alpha_coverage_in_range"),
        ("teacher_trajectories", "counts_match_manifest"),
        ("teacher_trajectories", "finite_and_shaped"),
    }
    assert all(c.passed for c in checks), [(c.check_name, c.metadata) for c in checks]
    # progress in the run log (issue #15): the first batch's line (done/total, rate, ETA), then the done line
    said = [e.user_message for e in instance.all_logs(result.run_id) if e.user_message]
    for what, total in (("rgba_images shard 00001", 4), ("teacher_trajectories shard 00001", 8)):
        assert any(m.startswith(f"{what}: ") and f"/{total} samples (" in m and ", ETA " in m for m in said), said
        assert any(m.startswith(f"{what} done: {total} samples in ") for m in said), said

    # only partition 1 exists: one shard dir on each side, the upstream one is the identity-mapped shard
    config = SMOKE.rgba
    rgba_dir = synthesis.shard_dir(tmp_path / "data", config, 1)
    assert not synthesis.shard_dir(tmp_path / "data", config, 0).exists()
    rgba = validate_shards(rgba_dir)
    samples = list(iter_samples(rgba_dir))
    assert len(samples) == rgba.num_samples == rgba_mat.metadata["num_samples"].value
    traj_dir = Path(traj_mat.metadata["path"].value)
    assert traj_dir.name == "shard-00001" and traj_dir.parent.parent.name == "teacher_trajectories"
    cached = validate_shards(traj_dir)
    assert cached.manifest["upstream"]["shard_dir"] == str(rgba_dir)  # the path rgba_images recorded
    assert cached.manifest["teacher"]["config_hash"] == TinyTeacher.from_pretrained(teacher_dir).config_hash()
    assert cached.num_samples == rgba.num_samples * SMOKE.trajectories.num_noise_draws
    s = next(iter(iter_samples(traj_dir)))
    assert s["views.npy"].shape == (4, 3, 32, 32) and np.isfinite(s["views.npy"]).all()
    # DataVersion = the partition's manifest hash; the teacher's = its folder's content hash
    assert rgba_mat.tags["dagster/data_version"] == traj.content_hash(rgba)
    assert traj_mat.tags["dagster/data_version"] == traj.content_hash(cached)
    assert teacher_mat.tags["dagster/data_version"] == teacher_mat.metadata["content_hash"].value[:16]
    # the records that travel along the edges
    records = tmp_path / "data" / ".records"
    assert json.loads((records / "rgba_images" / "00001.json").read_text())["path"] == str(rgba_dir)
    assert json.loads((records / "teacher" / "_.json").read_text())["path"] == str(teacher_dir.resolve())

    # re-materialising unchanged inputs: cache hits with the same data versions
    again = dg.materialize(assets, resources=res, instance=instance, partition_key="00001")
    for node, mat in (("rgba_images", rgba_mat), ("teacher_trajectories", traj_mat)):
        m2 = materialization(again, node, "00001")
        assert m2.metadata["cache_hit"].value is True
        assert m2.tags["dagster/data_version"] == mat.tags["dagster/data_version"]
    assert all(c.passed for c in again.get_asset_check_evaluations())


def test_retrained_teacher_flows_into_the_trajectories(tmp_path, teacher_dir, monkeypatch):
    """``retrain: true`` makes the teacher asset record the recipe's export, and the trajectories use it, with no
    path override anywhere (a profile file gives a smoke-sized profile a 'shipped' teacher folder)."""
    monkeypatch.delenv("DD3G_TEACHER_PATH", raising=False)
    profile = tmp_path / "smoke_shipped.json"
    profile.write_text(json.dumps({"base": "smoke", "teacher": {"path": str(teacher_dir), "recipe": "smoke"}}))
    res = resources(tmp_path, "", profile)
    instance = dg.DagsterInstance.ephemeral()
    assets = [rgba_images, teacher, teacher_trajectories]

    def run(retrain: bool):
        cfg = {"ops": {"teacher": {"config": {"retrain": retrain}}}}
        result = dg.materialize(assets, resources=res, instance=instance, partition_key="00000", run_config=cfg)
        assert result.success
        record = json.loads((tmp_path / "data" / ".records" / "teacher" / "_.json").read_text())
        traj_dir = Path(materialization(result, "teacher_trajectories", "00000").metadata["path"].value)
        return record, validate_shards(traj_dir).manifest["teacher"]["config_hash"]

    shipped, used = run(retrain=False)
    assert shipped["source"] == "shipped" and shipped["path"] == str(teacher_dir.resolve())
    assert used == TinyTeacher.from_pretrained(teacher_dir).config_hash()
    retrained, used = run(retrain=True)
    assert retrained["source"] == "recipe:smoke"
    assert Path(retrained["path"]) == (tmp_path / "data" / "teacher" / "smoke" / "teacher").resolve()
    assert used == TinyTeacher.from_pretrained(retrained["path"]).config_hash() != shipped["config_hash"]


def test_teacher_asset_fails_first_with_a_clear_message(tmp_path, monkeypatch):
    """Full profile, no ImageDream folder: the teacher asset fails naming what to set and fetch."""
    monkeypatch.delenv("DD3G_TEACHER_PATH", raising=False)
    result = dg.materialize([teacher], resources=resources(tmp_path, "", "full"), raise_on_error=False)
    assert not result.success
    failure = next(e for e in result.all_events if e.event_type_value == "STEP_FAILURE")
    message = (
        failure.step_failure_data.error.cause.message
        if failure.step_failure_data.error.cause
        else failure.step_failure_data.error.message
    )
    assert "DD3G_TEACHER_PATH" in message and "hf download" in message
    with pytest.raises(MissingWeightsError, match="holds a tiny teacher"):
        from dd3g_core.teacher import describe_teacher_folder

        describe_teacher_folder(ROOT / "assets" / "models" / "tiny-teacher", kind="imagedream")


def test_profile_files(tmp_path):
    f = tmp_path / "p.json"
    f.write_text(
        json.dumps(
            {
                "base": "full",
                "rgba": {"num_shards": 3, "filters": {"border_px": 5}},
                "trajectories": {"record_steps": [1, 2], "steps": 4},
                "distill": {"steps": 9, "model_overrides": {"depth": 2}},
                "evaluation": {"heldout_objects": 2},
            }
        )
    )
    p = get_profile(str(f))
    full = get_profile("full")
    assert p.name == "full:p" and p.num_shards == 3 and p.rgba.generator == "sdxl"
    assert p.rgba.filters.border_px == 5 and p.rgba.filters.min_coverage == full.rgba.filters.min_coverage
    assert p.trajectories.record_steps == (1, 2) and p.distill.steps == 9 and p.distill.mixed_precision == "bf16"
    assert p.evaluation.heldout_objects == 2 and p.teacher == full.teacher
    assert p.shard_partition_keys() == ["00000", "00001", "00002"]
    for bad, match in (
        ({"base": "huge"}, "base"),
        ({"base": "tiny", "rgba": {"resolutoin": 3}}, "resolutoin"),
        ({"base": "tiny", "stages": {}}, "unknown keys"),
        ({"base": "tiny", "teacher": {"kind": "imagedream", "recipe": "smoke"}}, "not trained"),
    ):
        f.write_text(json.dumps(bad))
        with pytest.raises(ValueError, match=match):
            get_profile(str(f))
    with pytest.raises(ValueError, match="unknown profile"):
        get_profile("medium")
    with pytest.raises(FileNotFoundError, match="profile file"):
        get_profile(str(tmp_path / "missing.json"))


@pytest.mark.slow
def test_distill_job_runs_from_the_dagster_cli(tmp_path):
    """The real CLI, no extra flags and no teacher override: one run covers every shard partition, the smoke
    profile trains its seconds-long teacher, and every stage loads what the previous one recorded."""
    home = tmp_path / "dagster_home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "DD3G_TEACHER_PATH"}
    env.update(DD3G_DATA_ROOT=str(tmp_path / "data"), DD3G_PROFILE="smoke", DAGSTER_HOME=str(home))
    dagster = Path(sys.executable).with_name("dagster")
    proc = subprocess.run(
        [str(dagster), "job", "execute", "-m", "pipelines.definitions", "-j", "distill"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    config = SMOKE.rgba
    for i in range(SMOKE.num_shards):
        manifest = json.loads((synthesis.shard_dir(tmp_path / "data", config, i) / "manifest.json").read_text())
        assert manifest["num_samples"] == config.samples_per_shard - manifest["num_rejected"]
    traj_root = tmp_path / "data" / "teacher_trajectories"
    shard_dirs = sorted(p.name for p in traj_root.glob("*/shard-*"))
    assert shard_dirs == [f"shard-{i:05d}" for i in range(SMOKE.num_shards)]
    trained = (tmp_path / "data" / "teacher" / "smoke" / "teacher").resolve()
    teacher_hash = TinyTeacher.from_pretrained(trained).config_hash()
    assert {validate_shards(d).manifest["teacher"]["config_hash"] for d in traj_root.glob("*/shard-*")} == {
        teacher_hash
    }

    old_home = os.environ.get("DAGSTER_HOME")
    os.environ["DAGSTER_HOME"] = str(home)
    try:
        with dg.DagsterInstance.get() as instance:
            runs = instance.get_runs()
            assert len(runs) == 1 and runs[0].job_name == "distill"  # one run for everything
            for key in ("rgba_images", "teacher_trajectories"):
                assert sorted(instance.get_materialized_partitions(dg.AssetKey(key))) == shard_partition_keys("smoke")
            teacher_event = instance.get_latest_materialization_event(dg.AssetKey("teacher"))
            assert teacher_event.asset_materialization.metadata["path"].value == str(trained)
            assert teacher_event.asset_materialization.metadata["source"].value == "recipe:smoke"
            # pepd_student ran `accelerate launch -m pipelines.pipes_train` through Pipes; rank 0 reported
            student = instance.get_latest_materialization_event(dg.AssetKey("pepd_student"))
            meta = student.asset_materialization.metadata
            steps = [p[0] for p in meta["loss_curve"].value]
            assert (
                steps[-1] == SMOKE.distill.steps and meta["cache_hit"].value is False and meta["bad_steps"].value == 0
            )
            assert Path(meta["checkpoint"].value, "model.safetensors").is_file()
            assert student.asset_materialization.tags["dagster/data_version"] == meta["weights_sha256"].value[:16]
            run_config = json.loads((Path(meta["run_dir"].value) / "distill_config.json").read_text())
            assert run_config["teacher"] == str(trained)  # the folder the teacher asset recorded
            checks = {
                (asset, name): instance.event_log_storage.get_latest_asset_check_execution_by_key(
                    [dg.AssetCheckKey(dg.AssetKey(asset), name)]
                )
                for asset, name in (
                    ("pepd_student", "student_renders_finite"),
                    ("evaluation", "evaluation_complete"),
                    ("evaluation", "student_beats_copy_input"),
                    ("evaluation", "student_is_not_fog"),
                )
            }
            for (_asset, name), by_key in checks.items():
                record = next(iter(by_key.values()))
                evaluation = record.event.dagster_event.event_specific_data
                assert evaluation.check_name == name
                if name in ("student_renders_finite", "evaluation_complete"):
                    assert evaluation.passed, evaluation.metadata
                # the rest: a seconds-trained smoke teacher, only that they ran and reported their numbers
            assert (
                "agree_unseen_minus_copy_input_db"
                in checks[("evaluation", "student_beats_copy_input")][
                    next(iter(checks[("evaluation", "student_beats_copy_input")]))
                ].event.dagster_event.event_specific_data.metadata
            )
            # the evaluation stage: versioned folder, every file, finite numbers, numeric metadata in the UI
            ev = instance.get_latest_materialization_event(dg.AssetKey("evaluation")).asset_materialization
            out = Path(ev.metadata["report"].value).parent
            assert out.parent.name == "evaluation" and out.name == ev.metadata["version"].value
            metrics = json.loads((out / "metrics.json").read_text())
            assert metrics["images"] and all((out / n).is_file() for n in metrics["images"])
            assert all(isinstance(v, float) and math.isfinite(v) for v in metrics["headline"].values())
            assert isinstance(ev.metadata["agree_unseen"], dg.FloatMetadataValue)
            assert "data:image/png;base64," in ev.metadata["report_preview"].value
            assert {"student", "fit ceiling", "teacher (OI)", "copy-input"} == set(metrics["summaries"])
            # the first run's student passed the gate (nothing accepted before): it is the accepted student
            from dd3g_core.promotion import read_accepted

            accepted = read_accepted(tmp_path / "data")
            assert accepted["weights_sha256"] == meta["weights_sha256"].value and accepted["previous"] is None
    finally:
        if old_home is None:
            os.environ.pop("DAGSTER_HOME", None)
        else:
            os.environ["DAGSTER_HOME"] = old_home


def test_all_assets_are_in_the_graph():
    assert {a.key.to_user_string() for a in ALL_ASSETS} == {
        "rgba_images",
        "teacher",
        "teacher_trajectories",
        "pepd_student",
        "evaluation_references",
        "evaluation",
        "accepted_student",
        "student_ablations",
        "ablation_evaluation",
    }


def test_student_refuses_overrides_the_graph_decides(tmp_path):
    from pipelines.assets.student import PEPDStudentConfig, pepd_student

    context = dg.build_asset_context()
    with pytest.raises(ValueError, match="come from the graph"):
        pepd_student(
            context=context,
            config=PEPDStudentConfig(overrides=["steps=3", "teacher=/elsewhere"]),
            settings=resources(tmp_path)["settings"],
            pipes_subprocess_client=dg.PipesSubprocessClient(),
            teacher={},
            teacher_trajectories={},
        )
