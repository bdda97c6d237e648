"""The ``student_ablations`` asset and the ``ablations`` job (smoke profile), and the refactor it came with.

The pytest process loads the definitions with ``$DD3G_PROFILE`` (``tiny`` by default: 8 shard partitions),
so the smoke graph runs through the real Dagster CLI with ``DD3G_PROFILE=smoke``: the teacher (a
random-weight TinyTeacher given as ``DD3G_TEACHER_PATH``, no training), both trajectory partitions, then
one ``ablations`` run that trains all four ablations (``steps=2``: what is tested is the wiring, not
the numbers). About 3 minutes on 2 busy CPU cores, most of it four trainer launches.
"""

import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import dagster as dg
import pytest

from dd3g_core.distill import apply_overrides
from dd3g_core.distill.ablations import ABLATIONS, ablation_config
from dd3g_core.io import stable_hash
from dd3g_core.model import PEPD
from dd3g_core.profiles import get_profile
from dd3g_core.teacher import TinyTeacher
from pipelines.assets.ablations import ABLATION_PARTITIONS, student_ablations
from pipelines.definitions import defs
from pipelines.student_training import CODE_VERSION, student_version, student_version_inputs

warnings.filterwarnings("ignore", category=dg.BetaWarning)
ROOT = Path(__file__).resolve().parents[1]
DAGSTER = Path(sys.executable).with_name("dagster")
STEPS = 2
RUN_CONFIG = {"ops": {"student_ablations": {"config": {"overrides": [f"steps={STEPS}"]}}}}  # `-c` file (JSON is YAML)
STUDENT_CONFIG = {"ops": {"pepd_student": {"config": {"overrides": [f"steps={STEPS}"]}}}}


def job_assets(name: str) -> set[str]:
    return {k.to_user_string() for k in defs.resolve_job_def(name).asset_layer.executable_asset_keys}


def test_distill_leaves_the_ablations_to_the_ablations_job():
    assert "student_ablations" not in job_assets("distill")
    assert {"rgba_images", "teacher", "teacher_trajectories", "pepd_student"} <= job_assets("distill")
    assert job_assets("ablations") == {"student_ablations", "ablation_evaluation"}
    job = defs.resolve_job_def("ablations")
    keys = list(ABLATIONS)
    assert job.partitions_def.get_partition_keys() == keys == ABLATION_PARTITIONS.get_partition_keys()
    # one run over every ablation: the range tags plus the asset's single-run backfill policy
    assert job.tags["dagster/asset_partition_range_start"] == keys[0]
    assert job.tags["dagster/asset_partition_range_end"] == keys[-1]
    assert student_ablations.backfill_policy == dg.BackfillPolicy.single_run()
    graph = defs.resolve_asset_graph()
    node = graph.get(dg.AssetKey("student_ablations"))
    assert node.group_name == "ablations"
    assert {k.to_user_string() for k in node.parent_keys} == {"teacher", "teacher_trajectories"}


def test_pepd_student_versions_are_pinned():
    """The version formula is pinned, so a refactor cannot silently turn on-disk pepd_student runs into
    misses (or, worse, hits of another recipe). Issue #14's recipe changed the distill config, so its
    versions changed on purpose: 452596319e36590d -> ac6b4a075a4c48f4 (smoke), bc666a8d7b557547 ->
    a9a0d048ef30d8e0 (full); the unmixed matte in the full profile (session 18): -> f868c1ad0cef2486."""
    teacher, traj = {"content_hash": "a" * 64}, Path("/data/teacher_trajectories/v123")
    smoke = get_profile("smoke").distill
    full = apply_overrides(get_profile("full").distill, ["steps=7", "lr=0.001"])
    assert CODE_VERSION == "2"
    assert student_version(student_version_inputs(CODE_VERSION, smoke, teacher, traj)) == "ac6b4a075a4c48f4"
    assert student_version(student_version_inputs(CODE_VERSION, full, teacher, traj)) == "f868c1ad0cef2486"
    inputs = student_version_inputs(CODE_VERSION, full, teacher, traj)
    assert inputs == {
        "code": "2",
        "config": full.replace(teacher=None, trajectories="").identity(),
        "steps": 7,
        "teacher": "a" * 64,
        "trajectories": "v123",
    }
    assert student_version(inputs) == stable_hash(inputs, length=16)


def run(args: list[str], env: dict) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        [str(DAGSTER), *args, "-m", "pipelines.definitions"], cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


@pytest.fixture(scope="module")
def ablations_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ablations")
    TinyTeacher(seed=0).save_pretrained(tmp / "teacher")
    (tmp / "home").mkdir()
    (tmp / "run_config.yaml").write_text(json.dumps(RUN_CONFIG))
    (tmp / "student_config.yaml").write_text(json.dumps(STUDENT_CONFIG))
    env = {
        **os.environ,
        "DD3G_DATA_ROOT": str(tmp / "data"),
        "DD3G_PROFILE": "smoke",
        "DAGSTER_HOME": str(tmp / "home"),
        "DD3G_TEACHER_PATH": str(tmp / "teacher"),
    }
    # the CLI runs a partition range in one run only if every selected asset has a single-run policy: the
    # unpartitioned teacher goes first
    shards = get_profile("smoke").shard_partition_keys()
    run(["asset", "materialize", "--select", "teacher"], env)
    every_shard = f"{shards[0]}...{shards[-1]}"
    run(["asset", "materialize", "--select", "rgba_images,teacher_trajectories", "--partition-range", every_shard], env)
    # what distill leaves for the ablation table: the main student (same budget) and the references
    run(["asset", "materialize", "--select", "pepd_student", "-c", str(tmp / "student_config.yaml")], env)
    run(["asset", "materialize", "--select", "evaluation_references"], env)
    run(["job", "execute", "-j", "ablations", "-c", str(tmp / "run_config.yaml")], env)
    return tmp, env


def record_of(data: Path, name: str) -> dict:
    return json.loads((data / ".records" / "student_ablations" / f"{name}.json").read_text())


def instance_of(home: Path):
    old = os.environ.get("DAGSTER_HOME")
    os.environ["DAGSTER_HOME"] = str(home)
    try:
        return dg.DagsterInstance.get()
    finally:
        if old is None:
            os.environ.pop("DAGSTER_HOME", None)
        else:
            os.environ["DAGSTER_HOME"] = old


@pytest.mark.slow
def test_the_ablations_job_trains_every_ablation_in_one_run(ablations_run):
    tmp, _ = ablations_run
    data = tmp / "data"
    base = apply_overrides(get_profile("smoke").distill, [f"steps={STEPS}"])
    with instance_of(tmp / "home") as instance:
        runs = [r for r in instance.get_runs() if r.job_name == "ablations"]
        assert len(runs) == 1  # one run, one step, four partitions
        assert instance.get_materialized_partitions(dg.AssetKey("student_ablations")) == set(ABLATIONS)
    for name in ABLATIONS:
        record = record_of(data, name)
        assert set(record) == {"path", "run_dir", "trajectories", "weights_sha256", "version", "ablation"}
        run_dir = Path(record["run_dir"])
        assert record["ablation"] == name and run_dir == data.resolve() / "student_ablations" / name / record["version"]
        assert Path(record["path"]) == run_dir / "pepd" and (run_dir / "export_manifest.json").is_file()
        ran = json.loads((run_dir / "distill_config.json").read_text())
        expected = ablation_config(base, name)
        assert ran["steps"] == STEPS  # the main student's budget
        assert {k: v for k, v in ran.items() if k not in ("teacher", "trajectories", "out")} == {
            k: v for k, v in expected.to_dict().items() if k not in ("teacher", "trajectories", "out")
        }
        assert ran["teacher"] == str((tmp / "teacher").resolve()) and ran["trajectories"] == record["trajectories"]
    configs = {name: PEPD.read_config(record_of(data, name)["path"])[0] for name in ABLATIONS}
    assert configs["no_noise"].noise_input is False and configs["single_head"].noise_input is True
    head = configs["single_head"]
    assert head.mu_block == head.shape_block == head.depth
    assert (configs["no_noise"].mu_block, configs["no_noise"].shape_block) != (head.depth, head.depth)
    assert len({record_of(data, name)["version"] for name in ABLATIONS}) == len(ABLATIONS)


@pytest.mark.slow
def test_a_finished_ablation_is_a_cache_hit(ablations_run):
    tmp, env = ablations_run
    before = record_of(tmp / "data", "single_head")
    config = ["-c", str(tmp / "run_config.yaml")]
    run(["asset", "materialize", "--select", "student_ablations", "--partition", "single_head", *config], env)
    assert record_of(tmp / "data", "single_head") == before
    with instance_of(tmp / "home") as instance:
        records = instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=dg.AssetKey("student_ablations"), asset_partitions=["single_head"]),
            limit=1,
        ).records
        meta = records[0].asset_materialization.metadata
        assert meta["cache_hit"].value is True and meta["ablation"].value == "single_head"
        assert meta["weights_sha256"].value == before["weights_sha256"]


def test_the_ablation_table_scores_every_ablation_next_to_the_full_method(ablations_run):
    tmp, _ = ablations_run
    record = json.loads((tmp / "data" / ".records" / "ablation_evaluation" / "_.json").read_text())
    out = Path(record["path"])
    metrics = json.loads((out / "metrics.json").read_text())
    students = ["full method", *sorted(ABLATIONS)]
    assert [n for n in metrics["summaries"] if n in students] == students
    assert set(metrics["deltas"]) == set(ABLATIONS)  # each ablation minus the full method
    report = (out / "report.md").read_text()
    assert "## Ablations: difference to the full method" in report
    assert all(f"| {name} |" in report for name in ABLATIONS)
