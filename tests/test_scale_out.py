"""Issue #15, scale-out (smoke profile): the shard stages run on several processes, then on several Celery workers.

* ``test_shard_partitions_run_concurrently_under_the_multiprocess_executor``: two runs, one per shard
  partition, started at the same time with the real CLI; their steps overlap in time and both partitions'
  outputs validate.
* ``test_shard_stages_on_two_celery_workers_with_redis``: a local Redis (installed from apt when missing),
  two ``dagster-celery`` workers, and ``shards_celery`` (``pipelines/scale_out.py``) run through the
  ``celery_executor``: steps run on both workers, the outputs validate, and once the workers and Redis are
  stopped no process of the test is left.

Both use a random-weight TinyTeacher (``DD3G_TEACHER_PATH``), as ``tests/test_pipeline.py`` does, so no
teacher is trained here. docs/scaling.md describes the commands these tests run.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
import warnings
from pathlib import Path

import dagster as dg
import psutil
import pytest

from dd3g_core import synthesis
from dd3g_core.profiles import get_profile
from dd3g_core.shards import validate_shards
from dd3g_core.teacher import TinyTeacher

warnings.filterwarnings("ignore", category=dg.BetaWarning)
Event = dg.DagsterEventType
ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
SMOKE = get_profile("smoke")
KEYS = SMOKE.shard_partition_keys()  # ["00000", "00001"]
SHARD_STEPS = {"rgba_images", "teacher_trajectories"}
RUN_TIMEOUT_S = 300
START_TIMEOUT_S = 120  # two loaded cores: a worker imports dagster and the Celery app before it is ready
STOP_TIMEOUT_S = 60


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("teacher") / "tiny-random"
    TinyTeacher(seed=0).save_pretrained(path)
    return path


def dagster_home(tmp_path: Path) -> Path:
    """A persistent instance every process of the test shares. Its storage is created here, once: processes
    that open a new sqlite instance at the same moment race on its schema (two alembic heads)."""
    home = tmp_path / "dagster_home"
    home.mkdir()
    with dg.DagsterInstance.from_config(str(home)) as instance:
        instance.get_runs(limit=1)
    return home


def environment(tmp_path: Path, home: Path, teacher_dir: Path, **extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        DD3G_PROFILE="smoke",
        DD3G_DATA_ROOT=str(tmp_path / "data"),
        DD3G_TEACHER_PATH=str(teacher_dir),
        DAGSTER_HOME=str(home),
        OMP_NUM_THREADS="1",  # several step processes share two cores
        PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",  # `dagster-celery worker start` runs `celery`
        PYTHONUNBUFFERED="1",
    )
    return {**env, **extra}


def events(instance: dg.DagsterInstance, run_id: str, kind: dg.DagsterEventType) -> list:
    return [e for e in instance.all_logs(run_id, of_type=kind) if e.dagster_event is not None]


def assert_outputs_validate(data_root: Path, teacher_dir: Path) -> None:
    """Every shard partition: the rgba shard set and the trajectory shard set validate (sizes, sha256s,
    counts), the trajectories were made from that rgba shard set and that teacher, and no record is refused."""
    records = data_root / ".records"
    teacher_hash = TinyTeacher.from_pretrained(teacher_dir).config_hash()
    for key in KEYS:
        rgba_dir = synthesis.shard_dir(data_root, SMOKE.rgba, int(key))
        rgba = validate_shards(rgba_dir)
        assert rgba.num_samples > 0
        rgba_record = json.loads((records / "rgba_images" / f"{key}.json").read_text())
        assert rgba_record["path"] == str(rgba_dir) and "failed_checks" not in rgba_record
        record = json.loads((records / "teacher_trajectories" / f"{key}.json").read_text())
        assert "failed_checks" not in record, record
        traj = validate_shards(record["path"])
        assert Path(record["path"]).name == f"shard-{key}"
        assert traj.num_samples == rgba.num_samples * SMOKE.trajectories.num_noise_draws
        assert traj.manifest["upstream"]["shard_dir"] == str(rgba_dir)
        assert traj.manifest["teacher"]["config_hash"] == teacher_hash


def log_tail(path: Path, n: int = 4000) -> str:
    return f"--- {path.name} ---\n" + (path.read_text(errors="replace")[-n:] if path.exists() else "(no log)")


@pytest.mark.slow
def test_shard_partitions_run_concurrently_under_the_multiprocess_executor(tmp_path, teacher_dir):
    """Where partition-level concurrency comes from. ``rgba_images`` and ``teacher_trajectories`` have
    ``BackfillPolicy.single_run()``: a run over a partition *range* (the ``distill`` job's tags, a UI backfill)
    has one step per asset, and that step loops over the range's partitions one after another. The
    multiprocess executor (the default, one process per step) can only run different *steps* side by side
    (``rgba_images`` next to ``teacher``), never two partitions of one asset. Partitions run in parallel when
    each is its own run: here two ``dagster asset materialize --partition K`` started at once (in a deployment:
    one run per key from a sensor, a script or the UI, queued by the run coordinator), each under the
    multiprocess executor. They share nothing but the instance and the data root.

    The teacher is materialized first, in this process, into the same instance and data root: both runs read
    its record. Then: both runs succeed, each materialized exactly its partition, each step ran in a process
    of its own (not the run's), the two runs' step windows (first STEP_START to last STEP_SUCCESS in the
    instance's event log) overlap, and both partitions' outputs validate.
    """
    from pipelines.assets import teacher
    from pipelines.io_managers import StageRecordIOManager
    from pipelines.resources import DD3GSettings

    home = dagster_home(tmp_path)
    data_root = (tmp_path / "data").resolve()
    env = environment(tmp_path, home, teacher_dir)
    settings = DD3GSettings(data_root=str(data_root), profile="smoke", teacher_path=str(teacher_dir))
    with dg.DagsterInstance.from_config(str(home)) as instance:
        resources = {"settings": settings, "io_manager": StageRecordIOManager(settings=settings)}
        assert dg.materialize([teacher], instance=instance, resources=resources).success

    select = ",".join(sorted(SHARD_STEPS))
    procs, logs = {}, {}
    for key in KEYS:
        logs[key] = tmp_path / f"materialize-{key}.log"
        cmd = [str(BIN / "dagster"), "asset", "materialize", "-m", "pipelines.definitions", "--select", select]
        with open(logs[key], "wb") as log:
            procs[key] = subprocess.Popen(
                [*cmd, "--partition", key], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT
            )
    try:
        for key, proc in procs.items():
            assert proc.wait(RUN_TIMEOUT_S) == 0, log_tail(logs[key])
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)

    windows = {}
    with dg.DagsterInstance.from_config(str(home)) as instance:
        runs = {r.tags.get("dagster/partition"): r for r in instance.get_runs() if "dagster/partition" in r.tags}
        assert sorted(runs) == KEYS
        for key, run in runs.items():
            assert run.status == dg.DagsterRunStatus.SUCCESS
            run_pid = events(instance, run.run_id, Event.RUN_START)[0].dagster_event.pid
            starts = {e.dagster_event.step_key: e for e in events(instance, run.run_id, Event.STEP_START)}
            ends = {e.dagster_event.step_key: e for e in events(instance, run.run_id, Event.STEP_SUCCESS)}
            assert set(starts) == set(ends) == SHARD_STEPS
            step_pids = {e.dagster_event.pid for e in starts.values()}
            assert len(step_pids) == len(SHARD_STEPS) and run_pid not in step_pids  # a process per step
            mats = events(instance, run.run_id, Event.ASSET_MATERIALIZATION)
            assert sorted(e.dagster_event.partition for e in mats) == [key, key]  # this run's partition only
            windows[key] = (min(e.timestamp for e in starts.values()), max(e.timestamp for e in ends.values()))
    overlap = min(end for _, end in windows.values()) - max(start for start, _ in windows.values())
    assert overlap > 0, f"the partition runs did not overlap: {windows}"

    assert_outputs_validate(data_root, teacher_dir)


# --- Celery -----------------------------------------------------------------------------------------------


def ensure_redis_server() -> str:
    """``redis-server`` on PATH, installed from the OS packages when missing."""
    found = shutil.which("redis-server")
    if found:
        return found
    if shutil.which("apt-get") is None:
        pytest.skip("redis-server is missing and there is no apt-get to install it (package redis-server)")
    if os.geteuid() != 0:
        pytest.skip("redis-server is missing; installing it needs root: apt-get install redis-server")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    install = ["apt-get", "install", "-y", "--no-install-recommends", "redis-server"]
    if subprocess.run(install, env=env, capture_output=True).returncode != 0:  # no package lists yet
        subprocess.run(["apt-get", "update"], check=True, env=env, capture_output=True)
        subprocess.run(install, check=True, env=env, capture_output=True)
    found = shutil.which("redis-server") or "/usr/bin/redis-server"
    assert os.path.exists(found), "apt-get installed redis-server but there is no redis-server binary"
    return found


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def processes_with_env(entry: str) -> dict[int, str]:
    """pid -> command line of the live (non-zombie) processes whose environment holds ``entry``."""
    found = {}
    needle = entry.encode() + b"\0"
    for p in psutil.process_iter(["pid"]):
        with contextlib.suppress(psutil.Error, OSError):
            if p.status() == psutil.STATUS_ZOMBIE:
                continue
            if needle in Path(f"/proc/{p.pid}/environ").read_bytes():
                found[p.pid] = " ".join(p.cmdline())
    return found


def alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def wait_for(predicate, timeout_s: float, what: str, proc: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if proc.poll() is not None:
            pytest.fail(f"no {what}: the process exited with {proc.returncode}\n{log_tail(log)}")
        if time.monotonic() > deadline:
            pytest.fail(f"no {what} after {timeout_s} s\n{log_tail(log)}")
        time.sleep(0.25)


def redis_answers(port: int) -> bool:
    import redis

    try:
        return bool(redis.Redis(host="127.0.0.1", port=port, socket_timeout=1).ping())
    except redis.exceptions.ConnectionError:
        return False


def worker_ready(log: Path, name: str) -> bool:
    return log.exists() and re.search(rf"\b{name}@\S+ ready\.", log.read_text(errors="replace")) is not None


@pytest.mark.slow
def test_shard_stages_on_two_celery_workers_with_redis(tmp_path, teacher_dir):
    """``shards_celery`` (rgba_images, teacher, teacher_trajectories over both shard partitions, one run) on
    ``celery_executor``: each step is a Celery task on a local Redis broker (127.0.0.1, a free port, no
    persistence, data in tmp), run by one of two ``dagster-celery worker start`` workers (concurrency 1 each).

    ``rgba_images`` and ``teacher`` are ready at once and are submitted together; with late acks and a
    prefetch of one task, a worker holds one task at a time, so the second goes to the other worker. The steps
    share the instance (``DAGSTER_HOME``, created first) and the data root (``DD3G_DATA_ROOT``), as machines
    would share Postgres and a file system. Checks: the run succeeds; every step ran in a worker, named in the
    instance's "Executing steps ... in celery worker" events, and its STEP_START came from a process of that
    worker; both workers ran steps; both partitions' outputs validate. Then ``dagster-celery worker terminate
    --all`` stops the workers (clean exits), SIGTERM stops Redis, and no process of the test is left (found by
    a marker variable in their environment, and Redis, which overwrites its environment, by pid).
    """
    redis_server = ensure_redis_server()
    import dagster_celery  # noqa: F401 - the celery extra (in dev); fails here rather than in a worker

    home = dagster_home(tmp_path)
    data_root = (tmp_path / "data").resolve()
    marker = f"DD3G_SCALE_OUT_TEST={uuid.uuid4().hex}"
    env = environment(tmp_path, home, teacher_dir, **dict([marker.split("=", 1)]))
    port = free_port()
    config = tmp_path / "celery.yaml"  # JSON is YAML: the run config, also read by the workers (-y)
    execution = {
        "broker": f"redis://127.0.0.1:{port}/0",
        "backend": f"redis://127.0.0.1:{port}/1",
        "config_source": {"task_acks_late": True, "worker_prefetch_multiplier": 1},
    }
    config.write_text(json.dumps({"execution": {"config": execution}}, indent=2))
    (tmp_path / "redis").mkdir()
    celery_cli = str(BIN / "dagster-celery")

    started: list[subprocess.Popen] = []

    def start(cmd: list[str], log: Path) -> subprocess.Popen:
        with open(log, "wb") as out:
            proc = subprocess.Popen(
                cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )
        started.append(proc)
        return proc

    redis_log = tmp_path / "redis.log"
    worker_logs = {name: tmp_path / f"worker-{name}.log" for name in ("w1", "w2")}
    try:
        redis_proc = start(
            [redis_server, "--bind", "127.0.0.1", "--port", str(port), "--save", "", "--appendonly", "no"]
            + ["--dir", str(tmp_path / "redis"), "--daemonize", "no"],
            redis_log,
        )
        wait_for(lambda: redis_answers(port), 30, "answer from redis-server", redis_proc, redis_log)
        workers = {
            name: start(
                [celery_cli, "worker", "start", "-A", "dagster_celery.app", "-y", str(config), "-n", name]
                + ["--", "--concurrency=1"],
                log,
            )
            for name, log in worker_logs.items()
        }
        for name, log in worker_logs.items():
            ready = lambda n=name, lg=log: worker_ready(lg, n)
            wait_for(ready, START_TIMEOUT_S, f"ready {name}", workers[name], log)
        trees = {name: {p.pid for p in psutil.Process(w.pid).children(recursive=True)} for name, w in workers.items()}

        run_log = tmp_path / "run.log"
        cmd = [str(BIN / "dagster"), "job", "execute", "-m", "pipelines.scale_out", "-a", "defs", "-j"]
        with open(run_log, "wb") as out:
            rc = subprocess.run(
                [*cmd, "shards_celery", "-c", str(config)],
                cwd=ROOT,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                timeout=RUN_TIMEOUT_S,
            ).returncode
        assert rc == 0, "\n".join(log_tail(p) for p in [run_log, *worker_logs.values()])

        with dg.DagsterInstance.from_config(str(home)) as instance:
            (run,) = instance.get_runs()
            assert run.status == dg.DagsterRunStatus.SUCCESS and run.job_name == "shards_celery"
            assert run.tags["dagster/asset_partition_range_start"] == KEYS[0]
            assert run.tags["dagster/asset_partition_range_end"] == KEYS[-1]
            ran_on = {}  # step -> worker name, from the workers' own engine events
            for e in events(instance, run.run_id, Event.ENGINE_EVENT):
                metadata = e.dagster_event.engine_event_data.metadata
                if "Celery worker" in metadata:
                    ran_on[metadata["step_keys"].value] = metadata["Celery worker"].value.split("@")[0]
            assert ran_on.keys() == SHARD_STEPS | {"teacher"}, ran_on
            assert set(ran_on.values()) == set(workers), f"steps did not run on both workers: {ran_on}"
            for e in events(instance, run.run_id, Event.STEP_START):
                step, pid = e.dagster_event.step_key, e.dagster_event.pid
                assert pid in trees[ran_on[step]], f"{step} started in pid {pid}, not in {ran_on[step]}: {trees}"
            mats = events(instance, run.run_id, Event.ASSET_MATERIALIZATION)
            by_asset = {}
            for e in mats:
                by_asset.setdefault(e.dagster_event.asset_key.to_user_string(), []).append(e.dagster_event.partition)
            assert {k: sorted(v, key=str) for k, v in by_asset.items()} == {
                "rgba_images": KEYS,
                "teacher": [None],
                "teacher_trajectories": KEYS,
            }
        assert_outputs_validate(data_root, teacher_dir)

        # the leftover check below sees what it should: the workers and their pool processes by the marker
        # variable (redis-server writes its process title over its environment: it is checked by pid)
        worker_pids = {*(w.pid for w in workers.values()), *set().union(*trees.values())}
        assert worker_pids <= processes_with_env(marker).keys()
        # stop: the workers through the broker (warm shutdown), then Redis
        stop = subprocess.run(
            [celery_cli, "worker", "terminate", "--all", "-y", str(config)],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=STOP_TIMEOUT_S,
        )
        assert stop.returncode == 0, stop.stdout + stop.stderr
        for name, worker in workers.items():
            try:
                assert worker.wait(STOP_TIMEOUT_S) == 0, log_tail(worker_logs[name])
            except subprocess.TimeoutExpired:
                pytest.fail(
                    f"worker {name} still running {STOP_TIMEOUT_S} s after terminate\n{log_tail(worker_logs[name])}"
                )
        redis_proc.terminate()
        assert redis_proc.wait(STOP_TIMEOUT_S) == 0, log_tail(redis_log)
        left = lambda: {**processes_with_env(marker), **{p: "?" for p in worker_pids | {redis_proc.pid} if alive(p)}}
        deadline = time.monotonic() + 10  # the workers' pool processes exit with them
        while left() and time.monotonic() < deadline:
            time.sleep(0.25)
        assert left() == {}
    finally:  # never leave a worker or Redis running, even when the test fails
        for proc in started:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(10)
        for pid in processes_with_env(marker):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
