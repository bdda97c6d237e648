"""Issue #12 through the real Dagster CLI (smoke profile): faults of whole processes and of finished outputs.

* ``kill -9`` of ``dagster job execute`` while ``pepd_student`` trains: within a bounded time no step
  worker or trainer of that run is left, the run is marked failed, and the next run resumes the student
  from its checkpoint and finishes (``pipelines.orphans``);
* a deleted, damaged or malformed file of a finished student run is not a cache hit: the next
  materialization sees it and exports again, with the same weights (``pipelines.export_manifest``).
"""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg
import psutil
import pytest

ROOT = Path(__file__).resolve().parents[1]
DAGSTER = Path(sys.executable).with_name("dagster")
STEPS = 12  # smoke trains 6; a few more so the kill lands mid-training (~2.5 s per step on 2 cores)


def environment(tmp_path: Path, **extra: str) -> dict:
    home = tmp_path / "dagster_home"
    home.mkdir(exist_ok=True)
    env = {k: v for k, v in os.environ.items() if k != "DD3G_TEACHER_PATH"}
    env.update(DD3G_DATA_ROOT=str(tmp_path / "data"), DD3G_PROFILE="smoke", DAGSTER_HOME=str(home))
    return {**env, **extra}


def run_config(tmp_path: Path, steps: int) -> Path:
    path = tmp_path / "run.yaml"  # JSON is YAML
    path.write_text(json.dumps({"ops": {"pepd_student": {"config": {"overrides": [f"steps={steps}"]}}}}))
    return path


def job(tmp_path: Path, steps: int) -> list[str]:
    return [str(DAGSTER), "job", "execute", "-m", "pipelines.definitions", "-j", "distill"] + (
        ["-c", str(run_config(tmp_path, steps))]
    )


def student_only(tmp_path: Path, steps: int) -> list[str]:
    return [str(DAGSTER), "asset", "materialize", "-m", "pipelines.definitions", "--select", "pepd_student"] + (
        ["-c", str(run_config(tmp_path, steps))]
    )


def run(tmp_path: Path, cmd: list[str]) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, cwd=ROOT, env=environment(tmp_path), capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def alive(p: psutil.Process) -> bool:
    try:
        return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def cmdline(p: psutil.Process) -> str:
    try:
        return " ".join(p.cmdline())
    except psutil.Error:
        return "?"


def instance(tmp_path: Path):
    return dg.DagsterInstance.from_config(str(tmp_path / "dagster_home"))


def student_materialization(tmp_path: Path):
    with instance(tmp_path) as inst:
        return inst.get_latest_materialization_event(dg.AssetKey("pepd_student")).asset_materialization


def wait_gone(tree: list[psutil.Process], seconds: float) -> list[tuple[int, str]]:
    t0 = time.monotonic()
    while any(alive(p) for p in tree) and time.monotonic() - t0 < seconds:
        time.sleep(0.25)
    return [(p.pid, cmdline(p)) for p in tree if alive(p)]


@pytest.mark.slow
def test_kill_9_while_a_step_computes_stops_its_worker_within_seconds(tmp_path):
    """The step worker itself (here ``rgba_images`` making 5000 images, about two minutes) stops when the CLI is
    killed, instead of computing on unobserved; the run is marked failed."""
    profile = tmp_path / "long_rgba.json"
    profile.write_text(json.dumps({"base": "smoke", "rgba": {"num_shards": 1, "samples_per_shard": 5000}}))
    log_path = tmp_path / "killed.log"
    cmd = [str(DAGSTER), "asset", "materialize", "-m", "pipelines.definitions", "--select", "rgba_images"]
    env = environment(tmp_path, DD3G_PROFILE=str(profile))
    with log_path.open("w") as log:
        proc = subprocess.Popen(cmd + ["--partition", "00000"], cwd=ROOT, env=env, stdout=log, stderr=log)
    tree = []
    try:
        deadline = time.monotonic() + 300
        while 'Started execution of step "rgba_images"' not in log_path.read_text():
            assert proc.poll() is None and time.monotonic() < deadline, log_path.read_text()[-3000:]
            time.sleep(0.25)
        time.sleep(3)  # well inside the step
        tree = psutil.Process(proc.pid).children(recursive=True)
        assert any("multiprocessing.spawn" in cmdline(p) for p in tree), [cmdline(p) for p in tree]
        proc.kill()
        proc.wait()
        left = wait_gone(tree, 15)  # the watchdog polls every second; nothing here needs a grace period
        assert not left, f"still running 15 s after the kill: {left}"
    finally:
        for p in tree:
            if alive(p):
                p.kill()
    assert not list((tmp_path / "data" / "rgba_images").glob("*/shard-00000"))  # stopped, not finished
    with instance(tmp_path) as inst:
        assert inst.get_runs(limit=1)[0].status == dg.DagsterRunStatus.FAILURE


@pytest.fixture(scope="module")
def killed_and_resumed(tmp_path_factory):
    """The smoke ``distill`` job killed (``kill -9`` of ``dagster job execute``) while ``pepd_student`` trains,
    then run again: ``(tmp_path, killed-run log, processes alive 60 s after the kill, the rerun)``. Both tests
    below read it, so the job runs twice per session instead of four times."""
    tmp_path = tmp_path_factory.mktemp("killed")
    data = tmp_path / "data"
    log = (tmp_path / "killed.log").open("w")
    proc = subprocess.Popen(job(tmp_path, STEPS), cwd=ROOT, env=environment(tmp_path), stdout=log, stderr=log)
    cli, tree, left = psutil.Process(proc.pid), [], []
    try:
        deadline = time.monotonic() + 600
        while not list(data.glob("pepd_student/*/checkpoints/step_*")):  # the student has trained a few steps
            assert proc.poll() is None, (tmp_path / "killed.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "the student never wrote a checkpoint"
            time.sleep(0.5)
        tree = cli.children(recursive=True)
        trainers = [p for p in tree if "pipelines.pipes_train" in cmdline(p)]
        workers = [p for p in tree if "multiprocessing.spawn" in cmdline(p)]
        assert len(trainers) == 2 and workers, [cmdline(p) for p in tree]  # accelerate launch + the trainer

        proc.kill()  # kill -9 of `dagster job execute`
        proc.wait()
        left = wait_gone(tree, 60)  # 1 s to notice + at most GRACE_S (20 s) for the trainer, then SIGKILL
    finally:
        log.close()
        for p in tree:  # whatever the outcome, nothing of this test outlives it
            if alive(p):
                p.kill()
    with instance(tmp_path) as inst:
        killed_status = inst.get_runs(limit=1)[0].status
    again = run(tmp_path, job(tmp_path, STEPS))
    return tmp_path, (tmp_path / "killed.log").read_text(), left, killed_status, again


@pytest.mark.slow
def test_kill_9_of_dagster_job_execute_leaves_no_orphans_and_the_rerun_resumes(killed_and_resumed):
    tmp_path, stopped, left, killed_status, again = killed_and_resumed
    assert not left, f"still running 60 s after the kill: {left}"
    assert killed_status == dg.DagsterRunStatus.FAILURE  # not STARTED forever
    assert "stopped itself and the processes it launched" in stopped
    assert "resumed from" in again.stdout + again.stderr
    meta = student_materialization(tmp_path).metadata
    assert meta["step"].value == STEPS and meta["cache_hit"].value is False
    assert [p[0] for p in meta["loss_curve"].value][-1] == STEPS
    with instance(tmp_path) as inst:
        assert inst.get_runs(limit=1)[0].status == dg.DagsterRunStatus.SUCCESS


@pytest.mark.slow
def test_a_deleted_or_damaged_student_export_is_rebuilt_not_a_cache_hit(killed_and_resumed):
    """Every kind of damage is seen by the check a cache hit must pass (in-process, each restored after); one
    of them goes through the real CLI: the trainer resumes from its final checkpoint and exports the same
    weights, and the intact run is a verified cache hit again."""
    from pipelines.export_manifest import finished_run_problem

    tmp_path = killed_and_resumed[0]
    first = student_materialization(tmp_path).metadata
    run_dir = Path(first["run_dir"].value)
    weights = first["weights_sha256"].value
    assert finished_run_problem(run_dir, STEPS)[1] == ""
    for damage in ("delete model.safetensors", "truncate model_raw.safetensors", "malformed result.json"):
        name = {"delete": "pepd/model.safetensors", "truncate": "pepd/model_raw.safetensors"}.get(
            damage.split()[0], "result.json"
        )
        path = run_dir / name
        kept = path.read_bytes()
        if damage.startswith("delete"):
            path.unlink()
        elif damage.startswith("truncate"):
            path.write_bytes(kept[:-100])
        else:
            path.write_text("[]")
        result, why = finished_run_problem(run_dir, STEPS)
        assert result is None and why, damage
        path.write_bytes(kept)
    assert finished_run_problem(run_dir, STEPS)[1] == ""

    (run_dir / "pepd" / "model.safetensors").unlink()
    proc = run(tmp_path, student_only(tmp_path, STEPS))
    meta = student_materialization(tmp_path).metadata
    assert meta["cache_hit"].value is False  # seen and rebuilt: the trainer resumed and exported again
    assert meta["weights_sha256"].value == weights  # from the final checkpoint: the same weights
    assert "not a cache hit" in proc.stdout + proc.stderr
    assert (run_dir / "pepd" / "model.safetensors").is_file()
    assert finished_run_problem(run_dir, STEPS)[1] == ""  # intact again: the next materialization is a cache hit
