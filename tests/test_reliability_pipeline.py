"""Issue #12, the pipeline's part: every bad input a clear error, every fault survived, nothing lost.

Each test reproduces one fault for real (smoke profile, a random-weight TinyTeacher saved to a temp
dir) and checks the general mechanism that answers it:

* keys from data: a key the shard writer refuses is one recorded reject where it enters a stage;
* a broken stage: a partition that rejects more than the profile's ``limits`` allow fails, naming
  the partition, its counts and the most common reasons, and is never published nor a cache hit;
  the data-guarding checks are blocking and ``finite_and_shaped`` reads every sample;
* damaged outputs: every cache hit verifies the files it vouches for (sizes, sha256) and rebuilds
  otherwise; a malformed manifest or record is a rebuild or a clear error, never a ``KeyError``;
* bad settings: negative process counts and unknown profiles are refused with a message.

The Dagster-CLI faults (``kill -9`` of ``dagster job execute``, a deleted exported student) are in
``tests/test_reliability_pipeline_cli.py``.
"""

import dataclasses
import io
import json
import os
import subprocess
import sys
import tarfile
import warnings
from pathlib import Path

import dagster as dg
import numpy as np
import pytest
import torch

from dd3g_core import synthesis
from dd3g_core import trajectories as tr
from dd3g_core.io import sha256_file
from dd3g_core.profiles import get_profile
from dd3g_core.shards import encode_field, iter_samples, read_manifest, validate_shards, write_shards
from dd3g_core.synthesis.stage import SynthesisBackends
from dd3g_core.teacher import TinyTeacher
from pipelines.assets import rgba_images, teacher, teacher_trajectories
from pipelines.checks import RGBA_CHECKS, TRAJECTORY_CHECKS, evaluation_checks, student_checks
from pipelines.checks.trajectories import check_trajectory_shard
from pipelines.io_managers import StageRecordIOManager
from pipelines.partitions import shard_partition_keys
from pipelines.resources import DD3GSettings

warnings.filterwarnings("ignore", category=dg.BetaWarning)
SMOKE = get_profile("smoke")
FAST = dataclasses.replace(SMOKE.trajectories, steps=1, record_steps=(0,), guidance=1.0)
SHARD_ASSETS = [rgba_images, teacher, teacher_trajectories]
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def teacher_model():
    return TinyTeacher(seed=0).eval()


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory, teacher_model):
    path = tmp_path_factory.mktemp("teacher") / "tiny-random"
    teacher_model.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def nan_teacher_dir(tmp_path_factory):
    """A teacher whose weights are all NaN: it loads and validates, and every output it makes is NaN."""
    model = TinyTeacher(seed=0)
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(float("nan"))
    path = tmp_path_factory.mktemp("teacher") / "tiny-nan"
    model.save_pretrained(path)
    return path


def resources(tmp_path, teacher_path="", profile="smoke") -> dict:
    settings = DD3GSettings(data_root=str(tmp_path / "data"), profile=str(profile), teacher_path=str(teacher_path))
    return {"settings": settings, "io_manager": StageRecordIOManager(settings=settings)}


def failure_message(result) -> str:
    """The text of the run's step failures (error, causes and chained errors)."""
    out = []
    for e in result.all_events:
        if e.event_type_value != "STEP_FAILURE":
            continue
        err = e.step_failure_data.error
        while err is not None:
            out.append(err.message)
            err = err.cause or err.context
    return "\n".join(out)


def rgba_image(i, size=32):
    a = np.zeros((size, size, 4), np.uint8)
    a[6 + i % 8 : 22 + i % 8, 8:24] = [(50 * i) % 256, 120, 200 - 5 * i, 255]
    return a


def raw_rgba_shards(directory: Path, tars: list[list[str]]) -> Path:
    """An rgba shard set written member by member, as another tool would (no key rule), with a manifest
    ``validate_shards`` accepts: one tar per list of keys."""
    directory.mkdir(parents=True)
    files, n = [], 0
    for t, keys in enumerate(tars):
        path = directory / f"shard-{t:06d}.tar"
        with tarfile.open(path, "w") as tar:
            for key in keys:
                data = encode_field("rgba.png", rgba_image(n))
                info = tarfile.TarInfo(f"{key}.rgba.png")
                info.size, info.mtime = len(data), 946684800
                tar.addfile(info, io.BytesIO(data))
                n += 1
        files.append(
            {"name": path.name, "samples": len(keys), "bytes": path.stat().st_size, "sha256": sha256_file(path)}
        )
    manifest = {"format": "dd3g-shards/1", "num_samples": n, "num_shards": len(files), "files": files, "config": {}}
    (directory / "manifest.json").write_text(json.dumps({**manifest, "stage_version": "external"}))
    return directory


# ----------------------------------------------------------------------------------- keys from data


def test_a_bad_rgba_key_is_one_recorded_reject_not_a_failed_partition(tmp_path, teacher_model):
    """Keys with '/' or '.' (a tar with folders) and a duplicate key (the same object in two tars) used to make
    ``write_shards`` refuse the whole trajectory partition; now each is a reject with its reason."""
    rgba = raw_rgba_shards(
        tmp_path / "rgba_images" / "external" / "shard-00000",
        [["obj0000", "dir/obj0001", "a.b/obj0002"], ["obj0003", "obj0000"]],
    )
    assert [s["__key__"] for s in iter_samples(rgba)] == ["obj0000", "dir/obj0001", "a.b/obj0002", "obj0003", "obj0000"]
    summary, hit = tr.cache_shard(tmp_path, rgba, teacher_model, FAST, 0)
    assert not hit
    keys = [s["__key__"] for s in iter_samples(summary.directory)]
    assert keys == [f"obj{i:04d}_d{d:02d}" for i in (0, 3) for d in range(FAST.num_noise_draws)]
    rejects = {r["key"]: r for r in summary.manifest["rejects"]}
    assert set(rejects) == {"dir/obj0001", "a.b/obj0002", "obj0000"}
    assert all(r["stage"] == "input" for r in rejects.values())
    assert "'/'" in rejects["dir/obj0001"]["reason"] and "'.'" in rejects["a.b/obj0002"]["reason"]
    assert "duplicate" in rejects["obj0000"]["reason"]
    # webdataset never yields an empty key from a tar, but the rule refuses one wherever it comes from
    from dd3g_core.shards.rules import sample_key_problem

    assert "empty sample key" in sample_key_problem("") and "empty sample key" in sample_key_problem(None)


def test_keys_built_by_synthesis_are_checked_where_they_are_built(tmp_path):
    """rgba keys are ``<split><seed>``: a split that cannot name a sample rejects every sample with that reason
    (a systematic failure: raised, nothing written), instead of a writer error deep inside the shard writer."""
    cfg = get_profile("smoke").rgba.replace(split="train/v2", num_shards=1, samples_per_shard=2)
    gen = synthesis.ProceduralGenerator(resolution=cfg.render_resolution, num_gaussians=cfg.num_gaussians)
    with pytest.raises(RuntimeError, match=r"every sample of shard 0 failed.*'train/v200000000'.*'/'"):
        synthesis.synthesize_shard(tmp_path, cfg, 0, backends=SynthesisBackends(cfg, generator=gen))
    assert not synthesis.shard_dir(tmp_path, cfg, 0).exists()


@pytest.mark.slow
def test_bad_keys_through_the_pipeline_reject_and_write_the_rest(tmp_path, teacher_dir):
    res = resources(tmp_path, teacher_dir)
    instance = dg.DagsterInstance.ephemeral()
    assert dg.materialize([teacher], resources=res, instance=instance).success
    good = [f"obj{i:04d}" for i in range(19)]
    rgba = raw_rgba_shards(tmp_path / "external" / "shard-00000", [good[:10] + ["dir/obj9"], good[10:] + ["x.y/z"]])
    records = tmp_path / "data" / ".records" / "rgba_images"
    records.mkdir(parents=True)
    (records / "00000.json").write_text(
        json.dumps({"path": str(rgba), "content_hash": "x", "num_samples": 21, "stage_version": "external"})
    )
    result = dg.materialize(
        SHARD_ASSETS, selection=[teacher_trajectories], resources=res, instance=instance, partition_key="00000"
    )
    assert result.success  # 2 of 21 images rejected: under the trajectories' 10% limit
    mat = next(iter(result.asset_materializations_for_node("teacher_trajectories")))
    assert mat.metadata["num_rejects"].value == 2
    assert mat.metadata["num_samples"].value == 19 * SMOKE.trajectories.num_noise_draws
    assert {r["key"] for r in mat.metadata["rejects"].value} == {"dir/obj9", "x.y/z"}


# ------------------------------------------------------------------------- a broken stage must fail


def test_a_nan_teacher_fails_the_partition_and_is_never_a_cache_hit(tmp_path, nan_teacher_dir):
    """A teacher with NaN weights used to give partitions with 0 samples, both checks passing, cached."""
    res = resources(tmp_path, nan_teacher_dir)
    instance = dg.DagsterInstance.ephemeral()
    for attempt in range(2):  # the failed partition is not published, so the second run fails the same way
        result = dg.materialize(
            SHARD_ASSETS, resources=res, instance=instance, partition_key="00000", raise_on_error=False
        )
        assert not result.success
        message = failure_message(result)
        assert "teacher_trajectories partition 00000" in message, message
        assert "0 of 8 samples accepted" in message and "8 rejected" in message
        assert "non-finite teacher output" in message
        assert not list((tmp_path / "data" / "teacher_trajectories").glob("*/shard-00000")), attempt
        assert not (tmp_path / "data" / ".records" / "teacher_trajectories").exists()
        assert not result.asset_materializations_for_node("teacher_trajectories")


def test_an_empty_partition_published_before_the_limit_existed_is_not_a_cache_hit(tmp_path, nan_teacher_dir):
    """A 0-sample partition on disk (made by the library without a limit, as the old pipeline did) is
    rebuilt by the next run, which then fails without publishing anything new."""
    res = resources(tmp_path, nan_teacher_dir)
    instance = dg.DagsterInstance.ephemeral()
    assert dg.materialize([rgba_images], resources=res, instance=instance, partition_key="00000").success
    rgba_dir = synthesis.shard_dir(tmp_path / "data", SMOKE.rgba, 0)
    nan_model = TinyTeacher.from_pretrained(nan_teacher_dir)
    old, _ = tr.cache_shard(tmp_path / "data", rgba_dir, nan_model, SMOKE.trajectories, 0)
    assert old.num_samples == 0  # what the library still does when no limit is given
    result = dg.materialize(SHARD_ASSETS, resources=res, instance=instance, partition_key="00000", raise_on_error=False)
    assert not result.success
    assert "0 of 8 samples accepted" in failure_message(result)
    assert not result.asset_materializations_for_node("teacher_trajectories")
    # the library's own answer to the same limit
    from dd3g_core.shards.rules import RejectShareError

    with pytest.raises(RejectShareError, match=r"teacher_trajectories partition 00000: 0 of 8 samples accepted"):
        tr.cache_shard(tmp_path / "data", rgba_dir, nan_model, SMOKE.trajectories, 0, max_reject_share=0.1)


def test_an_rgba_partition_rejecting_more_than_its_limit_fails_unpublished(tmp_path):
    """Filters that reject most images: the rgba partition fails with the counts and the top reasons."""
    profile = tmp_path / "strict.json"
    profile.write_text(json.dumps({"base": "smoke", "rgba": {"filters": {"min_coverage": 0.8, "max_coverage": 0.85}}}))
    result = dg.materialize(
        [rgba_images], resources=resources(tmp_path, "", profile), partition_key="00001", raise_on_error=False
    )
    assert not result.success
    message = failure_message(result)
    assert "rgba_images partition 00001" in message and "0 of 4 samples accepted" in message, message
    assert "coverage" in message and "limit 50%" in message
    assert not list((tmp_path / "data" / "rgba_images").glob("*/shard-00001"))
    # the limit is a profile setting outside the hashed stage configs: raising it lets the same data through
    profile.write_text(
        json.dumps(
            {
                "base": "smoke",
                "rgba": {"filters": {"min_coverage": 0.05, "max_coverage": 0.85}},
                "limits": {"rgba_max_reject_share": 1.0},
            }
        )
    )
    loose = get_profile(str(profile))
    assert synthesis.stage_version(loose.rgba) == synthesis.stage_version(
        SMOKE.rgba.replace(filters=loose.rgba.filters)
    )
    assert loose.limits.rgba_max_reject_share == 1.0 and SMOKE.limits.rgba_max_reject_share == 0.5
    assert SMOKE.limits.trajectories_max_reject_share == 0.1


def test_data_guarding_checks_are_blocking():
    blocking = {s.name: s.blocking for s in RGBA_CHECKS + TRAJECTORY_CHECKS}
    blocking.update({s.key.name: s.blocking for s in student_checks.check_specs})
    blocking.update({s.key.name: s.blocking for s in evaluation_checks.check_specs})
    assert blocking == {
        "shards_match_manifest": True,
        "alpha_coverage_in_range": False,  # a distribution warning: the filters already bound each image
        "counts_match_manifest": True,
        "finite_and_shaped": True,
        "student_renders_finite": True,
        "evaluation_complete": True,  # a broken evaluation must not look done
        "student_beats_copy_input": False,
        "student_is_not_fog": False,
    }


def poison_sample(shard_dir: Path, index: int) -> None:
    """Rewrite a published trajectory partition with NaN in the views of sample ``index``, keeping its manifest
    (upstream hash included), so the stage sees a valid cache hit whose data is bad."""
    manifest = read_manifest(shard_dir)
    samples = list(iter_samples(shard_dir))
    samples[index]["views.npy"] = np.full_like(samples[index]["views.npy"], np.nan)
    keep = {k: v for k, v in manifest.items() if k not in ("format", "created", "num_samples", "num_shards", "files")}
    for s in samples:
        s.pop("__url__", None)
        s.pop("__local_path__", None)
    write_shards(
        samples,
        shard_dir,
        samples_per_shard=manifest["config"]["samples_per_shard"],
        config=keep.pop("config"),
        extra=keep,
    )


def test_finite_and_shaped_reads_every_sample_and_blocks_the_run(tmp_path, teacher_dir, teacher_model):
    res = resources(tmp_path, teacher_dir)
    instance = dg.DagsterInstance.ephemeral()
    first = dg.materialize(SHARD_ASSETS, resources=res, instance=instance, partition_key="00000")
    assert first.success
    path = Path(next(iter(first.asset_materializations_for_node("teacher_trajectories"))).metadata["path"].value)
    summary = validate_shards(path)
    spec = tr.SampleSpec.for_teacher(teacher_model, len(SMOKE.trajectories.record_steps))
    assert check_trajectory_shard(summary, spec, SMOKE.trajectories) == ([], [], summary.num_samples)
    poison_sample(path, summary.num_samples - 1)  # the last sample, not the first
    counts, samples, checked = check_trajectory_shard(validate_shards(path), spec, SMOKE.trajectories)
    assert not counts and samples and "views.npy has non-finite values" in samples[0]
    assert checked == summary.num_samples

    again = dg.materialize(SHARD_ASSETS, resources=res, instance=instance, partition_key="00000", raise_on_error=False)
    assert not again.success  # blocking: the step fails after reporting the check
    evaluations = {c.check_name: c for c in again.get_asset_check_evaluations()}
    assert not evaluations["finite_and_shaped"].passed
    assert evaluations["finite_and_shaped"].metadata["samples_checked"].value == summary.num_samples
    assert "blocking" in failure_message(again)
    # and the record of that partition does not flow on into a later run either
    settings = res["settings"]
    with pytest.raises(ValueError, match="finite_and_shaped"):
        StageRecordIOManager(settings=settings).load_input(
            dg.build_input_context(
                asset_key=dg.AssetKey("teacher_trajectories"),
                asset_partitions_def=dg.StaticPartitionsDefinition(["00000"]),
                partition_key="00000",
            )
        )


# ---------------------------------------------------------------------------- damaged outputs


@pytest.mark.parametrize(
    "damage",
    [
        "manifest_not_json",
        "manifest_a_list",
        "files_entry_without_sha",
        "num_samples_missing",
        "shard_truncated",
        "upstream_not_an_object",
    ],
)
def test_a_damaged_shard_partition_is_rebuilt_not_a_key_error(tmp_path, teacher_model, damage):
    rgba_cfg = SMOKE.rgba.replace(num_shards=1, samples_per_shard=2)
    rgba, _ = synthesis.synthesize_shard(tmp_path, rgba_cfg, 0)
    built, _ = tr.cache_shard(tmp_path, rgba.directory, teacher_model, FAST, 0)
    only_trajectories = damage == "upstream_not_an_object"  # the trajectory cache hit reads manifest["upstream"]
    for summary in (built,) if only_trajectories else (rgba, built):
        m = summary.directory / "manifest.json"
        good = json.loads(m.read_text())
        if damage == "manifest_not_json":
            m.write_text(m.read_text()[:50])
        elif damage == "manifest_a_list":
            m.write_text("[]")
        elif damage == "files_entry_without_sha":
            m.write_text(json.dumps({**good, "files": [{"name": good["files"][0]["name"]}]}))
        elif damage == "num_samples_missing":
            m.write_text(json.dumps({k: v for k, v in good.items() if k != "num_samples"}))
        elif damage == "upstream_not_an_object":
            m.write_text(json.dumps({**good, "upstream": "rgba_images"}))
        else:
            tar = summary.shard_paths[0]
            tar.write_bytes(tar.read_bytes()[:-1024])
    again, hit = synthesis.synthesize_shard(tmp_path, rgba_cfg, 0)
    assert hit == only_trajectories and validate_shards(again.directory).manifest["files"] == rgba.manifest["files"]
    again_t, hit = tr.cache_shard(tmp_path, rgba.directory, teacher_model, FAST, 0)
    assert not hit and validate_shards(again_t.directory).manifest["files"] == built.manifest["files"]


def test_a_malformed_record_is_a_clear_error(tmp_path):
    settings = DD3GSettings(data_root=str(tmp_path / "data"), profile="smoke")
    manager = StageRecordIOManager(settings=settings)
    path = tmp_path / "data" / ".records" / "teacher" / "_.json"
    path.parent.mkdir(parents=True)
    for bad in ("[]", json.dumps({"path": "/somewhere"}), "{"):
        path.write_text(bad)
        with pytest.raises(ValueError, match=r"record .* (is damaged|lacks).*materialize teacher again"):
            manager.load_input(dg.build_input_context(asset_key=dg.AssetKey("teacher")))


# ------------------------------------------------------------------------------------ bad settings


def test_negative_process_counts_are_refused_with_a_message(tmp_path):
    from pipelines.assets.student import PEPDStudentConfig, pepd_student

    records = tmp_path / "data" / ".records"  # inputs load before the config is built: give it records
    (records / "teacher").mkdir(parents=True)
    (records / "teacher" / "_.json").write_text(json.dumps({"path": "t", "kind": "tiny", "content_hash": "h"}))
    (records / "teacher_trajectories").mkdir()
    for key in shard_partition_keys():
        (records / "teacher_trajectories" / f"{key}.json").write_text(json.dumps({"path": "p", "content_hash": "h"}))
    for field, value in (("num_processes", -2), ("num_processes", 0), ("threads_per_process", -1)):
        with pytest.raises(Exception, match=rf"{field} must be"):
            PEPDStudentConfig(**{field: value})
        result = dg.materialize(
            [*SHARD_ASSETS, pepd_student],
            selection=[pepd_student],
            resources={**resources(tmp_path), "pipes_subprocess_client": dg.PipesSubprocessClient()},
            run_config={"ops": {"pepd_student": {"config": {field: value}}}},
            raise_on_error=False,
        )
        assert not result.success and f"{field} must be" in failure_message(result), failure_message(result)
    assert PEPDStudentConfig(num_processes=2, threads_per_process=0).num_processes == 2


def test_an_unknown_profile_is_answered_with_the_known_ones(tmp_path):
    with pytest.raises(ValueError, match=r"unknown profile 'bogus'.*tiny.*smoke.*full"):
        DD3GSettings(data_root=str(tmp_path / "data"), profile="bogus").root()
    result = dg.materialize(
        [rgba_images], resources=resources(tmp_path, "", "bogus"), partition_key="00000", raise_on_error=False
    )
    assert not result.success and "unknown profile 'bogus'" in failure_message(result)
    assert not (tmp_path / "data" / "rgba_images").exists()
    # the real CLI: the definitions refuse to load, and the last line says why
    env = {**os.environ, "DD3G_PROFILE": "bogus", "DAGSTER_HOME": str(tmp_path), "DD3G_DATA_ROOT": str(tmp_path)}
    cmd = [
        str(Path(sys.executable).with_name("dagster")),
        "job",
        "execute",
        "-m",
        "pipelines.definitions",
        "-j",
        "distill",
    ]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    last = (proc.stdout + proc.stderr).strip().splitlines()[-1]
    assert last.startswith("ValueError: unknown profile 'bogus': choose one of ['tiny', 'smoke', 'full']"), last
