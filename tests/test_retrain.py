"""The nightly retrain: the regression gate, the accepted-student pointer, the schedule's ticks, and the
``retrain`` job through the real CLI (smoke profile).

The end-to-end flow (one module fixture, three CLI runs): a tick on a fresh instance asks for a retrain;
that run promotes its student (the first promotion); the next tick, with nothing changed upstream, is
skipped; ``dd3g generate`` then uses the accepted student by default; a planted regression (the accepted
student's recorded PSNR raised above what any smoke student reaches) makes the next retrain's candidate fail
the blocking gate, so the old student stays; a partial evaluation is refused by ``accepted_student`` itself.
"""

import json
import math
import multiprocessing
import os
import shutil
import subprocess
import sys
from pathlib import Path

import dagster as dg
import pytest

from dd3g_core.profiles import get_profile, profile_from_dict
from dd3g_core.promotion import (
    AcceptedPointerError,
    accepted_dir,
    compare,
    promote,
    read_accepted,
    read_history,
    source_fingerprint,
)
from dd3g_core.teacher import TinyTeacher
from pipelines.resources import DD3GSettings
from pipelines.schedules import nightly_retrain
from pipelines.sources_tag import SOURCES_TAG

ROOT = Path(__file__).resolve().parents[1]
DAGSTER = Path(sys.executable).with_name("dagster")
SHIPPED = ROOT / "assets" / "models" / "tiny-pepd"
GATE = {"psnr_{display}": 0.3, "fog_alpha_{display}": 0.005, "agree_unseen": 0.3}


def metrics(psnr: float, fog: float = 0.01, agree: float = 20.0, display: int = 128) -> dict:
    return {
        "headline": {f"psnr_{display}": psnr, f"fog_alpha_{display}": fog, "agree_unseen": agree},
        "resolutions": {"display": display, "teacher": 32},
    }


# ------------------------------------------------------------------------------------------------ the gate


def test_the_gate_knows_which_way_is_better_and_allows_its_tolerance():
    assert compare(metrics(18.0), None, GATE).passed  # nothing accepted yet: the first promotion
    assert compare(metrics(17.8), metrics(18.0), GATE).passed  # -0.2 dB within 0.3
    worse = compare(metrics(17.5, fog=0.02), metrics(18.0, fog=0.01), GATE)
    assert not worse.passed and len(worse.reasons) == 2
    assert "psnr_128 regressed" in worse.reasons[0] and "higher is better" in worse.reasons[0]
    assert "fog_alpha_128 regressed" in worse.reasons[1] and "lower is better" in worse.reasons[1]
    assert compare(metrics(18.0, fog=0.001), metrics(18.0, fog=0.01), GATE).passed  # less fog is better
    partial = compare({"headline": {"psnr_128": math.nan}, "resolutions": {"display": 128}}, None, GATE)
    assert not partial.passed and "partial evaluation" in partial.reasons[0]
    with pytest.raises(ValueError, match="unknown metric 'sharpness'"):
        compare(metrics(18.0), None, {"sharpness": 1.0})
    with pytest.raises(ValueError, match=r"promotion.gate.psnr_\{display\}: the allowed regression"):
        compare(metrics(18.0), None, {"psnr_{display}": -1})


def test_the_gate_on_a_folder_evaluation_compares_what_a_folder_measures():
    gate = {"psnr_{display}": 0.3, "iou_{display}": 0.01, "agree_unseen": 0.3}
    folder = {"mode": "folder", "means": {"psnr": 21.0, "ssim": 0.9}}  # views without alpha: no IoU
    first = compare(folder, None, gate)
    assert first.passed and first.compared["psnr"]["candidate"] == 21.0
    assert any("agree_unseen: not measured" in n for n in first.notes)
    worse = compare({"mode": "folder", "means": {"psnr": 20.0}}, folder, gate)
    assert not worse.passed and "psnr regressed" in worse.reasons[0]
    lost = compare(folder, {"mode": "folder", "means": {"psnr": 21.0, "iou": 0.8}}, gate)
    assert not lost.passed and "iou is missing" in lost.reasons[0]  # measured before, missing now: partial
    other_set = compare(folder, metrics(30.0), gate)  # accepted on procedural objects: not comparable
    assert other_set.passed and "not compared" in other_set.summary()


@pytest.mark.parametrize(
    "change, message",
    [
        ({"cron": "every night"}, "promotion.cron must be a 5-field cron"),
        ({"timezone": "Mars/Olympus"}, "promotion.timezone must be an IANA time zone"),
        ({"gate": {"vibes": 0.1}}, "unknown metric 'vibes'"),
        ({"max_attempts": 0}, "promotion.max_attempts must be an integer >= 1"),
        ({"warm_start": "yes"}, "promotion.warm_start must be true or false"),
        ({"nightly": True}, "unknown promotion settings"),
    ],
)
def test_bad_promotion_settings_name_the_field(change, message):
    with pytest.raises(ValueError, match=message):
        profile_from_dict({"base": "smoke", "promotion": change})


def test_a_profile_file_sets_when_and_how_the_retrain_runs():
    p = profile_from_dict(
        {"base": "tiny", "promotion": {"cron": "30 3 * * 1-5", "timezone": "Europe/Paris", "warm_start": False}}
    )
    assert (p.promotion.cron, p.promotion.timezone, p.promotion.warm_start) == ("30 3 * * 1-5", "Europe/Paris", False)
    assert get_profile("tiny").promotion.cron == "0 2 * * *"


# ------------------------------------------------------------------------------------------------ the pointer


def _promote_one(args):
    root, model, psnr, index = args
    decision = promote(root, model, metrics(psnr), GATE, sources=f"s{index}", run_id=f"run{index}")
    return decision.promoted


@pytest.mark.slow
def test_concurrent_promotions_never_corrupt_the_pointer(tmp_path):
    """Eight processes promote at once (four distinct students, better and worse ones): every decision is
    recorded, the pointer is always whole, each promotion was gated against the one before it, and the final
    pointer names a verified copy."""
    models = []
    for i in range(4):  # four distinct weight files (promotion hashes and copies them; it never loads them)
        d = tmp_path / f"m{i}"
        shutil.copytree(SHIPPED, d)
        with open(d / "model.safetensors", "ab") as f:
            f.write(b" " * (i + 1))
        models.append(d)
    root = tmp_path / "data"
    jobs = [(root, models[i % 4], 17.0 + (i % 4) * 0.5 - (i // 4) * 1.0, i) for i in range(8)]
    with multiprocessing.get_context("spawn").Pool(8) as pool:
        results = pool.map(_promote_one, jobs)
        # let the workers exit on their own before the with-block's terminate(): terminate() racing a
        # worker still starting up (spawn, 8 imports of torch on 2 cores) once left a worker waiting forever
        pool.close()
        pool.join()
    pointer = read_accepted(root)  # verifies the copy's bytes
    history = read_history(root)
    assert len(history) <= 8 and {h["decision"] for h in history} <= {"accepted", "refused"}
    accepted = [h for h in history if h["decision"] == "accepted"]
    assert sum(results) == len(accepted) >= 1
    psnrs = [jobs[int(h["run_id"][3:])][2] for h in accepted]
    assert all(b >= a - GATE["psnr_{display}"] for a, b in zip(psnrs, psnrs[1:]))  # each gated by its predecessor
    assert pointer["run_id"] == accepted[-1]["run_id"] and pointer["weights_sha256"] == accepted[-1]["weights_sha256"]
    assert json.loads((accepted_dir(root) / "current.json").read_text())["format"] == "dd3g-accepted-student-1"
    assert not list(accepted_dir(root).glob(".tmp*"))  # no temporary left behind


def test_a_damaged_copy_is_refused_and_generate_says_so(tmp_path):
    root = tmp_path / "data"
    assert promote(root, SHIPPED, metrics(18.0), GATE).promoted
    pointer = read_accepted(root)
    weights = Path(pointer["path"]) / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-8] + b"\0" * 8)
    with pytest.raises(AcceptedPointerError, match="does not match the accepted hash"):
        read_accepted(root)
    proc = subprocess.run(
        [sys.executable, "-m", "dd3g_core.cli", "generate", str(ROOT / "assets/samples/bird_rgba.png"), "-o", "out"],
        cwd=tmp_path,
        env={**os.environ, "DD3G_DATA_ROOT": str(root)},
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2 and "does not match the accepted hash" in proc.stderr, proc.stderr[-2000:]


# ------------------------------------------------------------------------------------------------ end to end


def IN_PROCESS(tmp: Path) -> Path:  # noqa: N802 - one run config file, like a constant
    """Steps in one process: the same graph without a process start (torch import) per step, to keep CI short."""
    path = tmp / "in_process.yaml"
    path.write_text(json.dumps({"execution": {"config": {"in_process": {}}}}))
    return path


def dagster(args: list[str], env: dict, ok: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run([str(DAGSTER), *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    if ok:
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def tick(instance, settings: DD3GSettings):
    with dg.build_schedule_context(instance=instance, resources={"settings": settings}) as context:
        return nightly_retrain(context)


@pytest.fixture(scope="module")
def retrained(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("retrain")
    TinyTeacher(seed=0).save_pretrained(tmp / "teacher")
    (tmp / "home").mkdir()
    env = {
        **os.environ,
        "DD3G_DATA_ROOT": str(tmp / "data"),
        "DD3G_PROFILE": "smoke",
        "DAGSTER_HOME": str(tmp / "home"),
        "DD3G_TEACHER_PATH": str(tmp / "teacher"),
    }
    settings = DD3GSettings(data_root=str(tmp / "data"), profile="smoke", teacher_path=str(tmp / "teacher"))
    os.environ["DAGSTER_HOME"], old_home = str(tmp / "home"), os.environ.get("DAGSTER_HOME")
    try:
        instance = dg.DagsterInstance.get()
        first = tick(instance, settings)
        assert isinstance(first, dg.RunRequest), first
        dagster(
            [
                "job",
                "execute",
                "-m",
                "pipelines.definitions",
                "-j",
                "retrain",
                "-c",
                str(IN_PROCESS(tmp)),
                "--tags",
                json.dumps(first.tags),
            ],
            env,
        )
        yield tmp, env, settings, instance, first
    finally:
        if old_home is None:
            os.environ.pop("DAGSTER_HOME", None)
        else:
            os.environ["DAGSTER_HOME"] = old_home


def latest(instance, key: str):
    return instance.get_latest_materialization_event(dg.AssetKey(key))


@pytest.mark.slow
def test_a_tick_retrains_and_promotes_then_an_unchanged_tick_is_skipped(retrained):
    tmp, env, settings, instance, first = retrained
    sources = source_fingerprint(get_profile("smoke"), str(tmp / "teacher"), settings.hash_cache())
    assert first.tags[SOURCES_TAG] == sources and first.tags["dd3g/warm_start"] == "true"
    (run,) = instance.get_runs(filters=dg.RunsFilter(job_name="retrain"))
    assert run.status == dg.DagsterRunStatus.SUCCESS and run.tags[SOURCES_TAG] == sources
    student = json.loads((tmp / "data/.records/pepd_student/_.json").read_text())
    pointer = read_accepted(tmp / "data")
    assert pointer["weights_sha256"] == student["weights_sha256"] and pointer["sources"] == sources
    assert pointer["previous"] is None and pointer["run_id"] == run.run_id
    meta = latest(instance, "accepted_student").asset_materialization.metadata
    assert meta["promoted"].value is True and isinstance(meta["agree_unseen"], dg.FloatMetadataValue)
    warm = latest(instance, "pepd_student").asset_materialization.metadata["warm_start_from"].value
    assert warm == "none"  # nothing was accepted before the first retrain
    skipped = tick(instance, settings)
    assert isinstance(skipped, dg.SkipReason) and "nothing changed upstream" in skipped.skip_message

    # dd3g generate takes the accepted student (and its teacher) by default
    out = tmp / "gen"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "dd3g_core.cli",
            "generate",
            str(ROOT / "assets/samples/bird_rgba.png"),
            "-o",
            str(out),
            "--frames",
            "2",
            "--resolution",
            "32",
        ],
        cwd=tmp,
        env=env,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "using the accepted student " + pointer["weights_sha256"][:16] in proc.stdout
    summary = json.loads((out / "generate.json").read_text())
    assert any(str(pointer["path"]) in json.dumps(v) for v in summary.values())


@pytest.mark.slow
def test_a_regression_is_blocked_by_the_gate_and_the_old_student_stays(retrained):
    tmp, env, settings, instance, _ = retrained
    pointer_file = accepted_dir(tmp / "data") / "current.json"
    pointer = json.loads(pointer_file.read_text())
    display = pointer["metrics"]["resolutions"]["display"]
    pointer["metrics"]["headline"][f"psnr_{display}"] += 5.0  # planted: the accepted student "was" 5 dB better
    pointer_file.write_text(json.dumps(pointer))
    before = pointer_file.read_bytes()
    # the retrain warm-starts from the accepted student: a new candidate, evaluated, then gated
    job = ["job", "execute", "-m", "pipelines.definitions", "-j", "retrain", "-c", str(IN_PROCESS(tmp))]
    proc = dagster(job, env, ok=False)
    assert proc.returncode != 0
    assert pointer_file.read_bytes() == before  # not promoted
    last = instance.get_runs(filters=dg.RunsFilter(job_name="retrain"), limit=1)[0]
    assert last.status == dg.DagsterRunStatus.FAILURE
    check = instance.event_log_storage.get_latest_asset_check_execution_by_key(
        [dg.AssetCheckKey(dg.AssetKey("evaluation"), "no_regression_vs_accepted")]
    )
    evaluation = next(iter(check.values())).event.dagster_event.event_specific_data
    assert not evaluation.passed and evaluation.severity == dg.AssetCheckSeverity.ERROR
    assert f"psnr_{display} regressed" in json.dumps(evaluation.metadata["regressions"].value)
    student = latest(instance, "pepd_student").asset_materialization.metadata
    assert student["warm_start_from"].value == pointer["weights_sha256"][:16]
    assert latest(instance, "accepted_student").run_id != last.run_id


def test_a_partial_evaluation_never_promotes(retrained):
    tmp, env, _, _, _ = retrained
    pointer_file = accepted_dir(tmp / "data") / "current.json"
    before = pointer_file.read_bytes()
    record = json.loads((tmp / "data/.records/evaluation/_.json").read_text())
    metrics_file = Path(record["path"]) / "metrics.json"
    m = json.loads(metrics_file.read_text())
    m["headline"][next(iter(m["headline"]))] = None  # a number went missing
    metrics_file.write_text(json.dumps(m))
    proc = dagster(
        ["asset", "materialize", "-m", "pipelines.definitions", "--select", "accepted_student"], env, ok=False
    )
    assert proc.returncode != 0 and "is partial" in proc.stdout + proc.stderr
    assert pointer_file.read_bytes() == before


def test_a_bad_run_config_is_refused_before_any_work_naming_the_field(tmp_path):
    (tmp_path / "home").mkdir()
    env = {
        **os.environ,
        "DD3G_DATA_ROOT": str(tmp_path / "data"),
        "DD3G_PROFILE": "smoke",
        "DAGSTER_HOME": str(tmp_path / "home"),
    }
    (tmp_path / "bad.yaml").write_text(json.dumps({"ops": {"pepd_student": {"config": {"warm_start": "maybe"}}}}))
    proc = dagster(
        ["job", "execute", "-m", "pipelines.definitions", "-j", "retrain", "-c", str(tmp_path / "bad.yaml")],
        env,
        ok=False,
    )
    assert proc.returncode != 0 and "warm_start" in proc.stdout + proc.stderr
    assert not (tmp_path / "data").exists() or not any((tmp_path / "data").rglob("manifest.json"))


def test_a_warm_start_loads_every_weight_and_refuses_another_architecture():
    import torch

    from dd3g_core.distill import DistillConfig
    from dd3g_core.distill.config import preset_config
    from dd3g_core.distill.train import build_student
    from dd3g_core.model import PEPD
    from dd3g_core.model.pepd import ConfigMismatchError
    from dd3g_core.teacher import load_teacher

    teacher = load_teacher(None)
    recipe = preset_config("tiny")  # the shipped student's architecture is the tiny profile's (seen_refine)
    warm = build_student(recipe.replace(init_from=str(SHIPPED)), teacher)
    shipped = PEPD.from_pretrained(SHIPPED)
    assert warm.training  # ready to train
    for (name, a), (_, b) in zip(warm.state_dict().items(), shipped.state_dict().items()):
        assert torch.equal(a, b), name
    assert DistillConfig().identity() == {k: v for k, v in DistillConfig().identity().items() if k != "init_from"}
    assert "init_from" in DistillConfig(init_from=str(SHIPPED)).identity()  # a warm start is another run
    with pytest.raises(ConfigMismatchError, match="differing keys"):
        build_student(recipe.replace(init_from=str(SHIPPED), model_overrides={"gaussian_grid": 2}), teacher)
    with pytest.raises(ConfigMismatchError, match="seen_refine"):  # the class defaults: no refinement CNN
        build_student(DistillConfig(init_from=str(SHIPPED)), teacher)
