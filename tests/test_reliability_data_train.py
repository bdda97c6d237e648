"""Issue #12 in the trainer, each fault reproduced for real: unreadable trajectories stop the run with one
line (1), samples off the schema are skipped and recorded instead of crashing every resume (6), damaged
newest checkpoints are set aside and an older one resumed (7), a second trainer on the same run directory
refuses and a trainer whose parent is killed with ``kill -9`` stops and is resumable (8)."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from test_reliability_data import truncated_tars
from test_train import ROOT, _train_cmd, data, smoke_config  # noqa: F401 - `data` is the module's fixture

from dd3g_core.distill.checkpoint import CheckpointDamagedError, list_checkpoints
from dd3g_core.shards import count_skips, iter_samples, read_manifest, read_skip_log, write_shards

from stand_ins import RecordingReporter

ENV = dict(os.environ, OMP_NUM_THREADS="1", DD3G_EXIT_WITH_PARENT="1")  # as under Dagster Pipes


class Evil:
    """Not a thing a checkpoint of dd3g holds: pickling it stores a reference to this class."""


# ------------------------------------------------------------------------------ 1: unreadable trajectories


def test_trainer_on_unreadable_trajectories_stops_with_one_line(tmp_path, data):  # noqa: F811
    truncated_tars(tmp_path, 3)
    for trajectories, expected in (
        (tmp_path / "no-such-dir", f"{tmp_path / 'no-such-dir'}: no such file"),
        (tmp_path / "broken-{000000..000002}.tar", ""),
    ):
        cfg = smoke_config(data, tmp_path / "run", trajectories=str(trajectories))
        res = subprocess.run(_train_cmd(cfg), cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=300)
        assert res.returncode == 2, res.stderr[-3000:]
        (line,) = [x for x in res.stderr.splitlines() if x.startswith("dd3g distill: ")]  # one line, no traceback
        assert line.startswith(f"dd3g distill: error: {expected}") and "Traceback" not in res.stderr, res.stderr[-3000:]
    assert "none of its 3 shard(s) gives a readable sample" in line
    assert not list_checkpoints(tmp_path / "run")


# --------------------------------------------------------------------------------- 6: off-schema samples


def off_schema_shard_set(data, out: Path) -> tuple[Path, dict[str, str]]:  # noqa: F811
    """A trajectory shard set of 2 good samples and 4 bad ones (what each should be skipped for)."""
    src = sorted(Path(data["trajectories"]).glob("shard-*"))[0]
    rows = [{k: v for k, v in s.items() if k == "__key__" or not k.startswith("__")} for s in iter_samples(src)][:6]
    bad = {}
    rows[0]["noise.npy"] = rows[0]["noise.npy"][:, :2]  # wrong shape
    bad[rows[0]["__key__"]] = "noise.npy shape"
    del rows[1]["views.npy"]  # missing field
    bad[rows[1]["__key__"]] = "missing views.npy"
    rows[2]["cameras.npy"] = np.full_like(rows[2]["cameras.npy"], np.nan)  # non-finite
    bad[rows[2]["__key__"]] = "cameras.npy has non-finite values"
    rows[3]["xt.npy"] = np.concatenate([rows[3]["xt.npy"]] * 2)  # 2 recorded states, the cache recorded 1
    bad[rows[3]["__key__"]] = "xt.npy shape"
    write_shards(rows, out, samples_per_shard=6, config=read_manifest(src)["config"])
    return out, bad


def test_training_skips_and_records_samples_off_the_schema(tmp_path, data):  # noqa: F811
    from dd3g_core.distill.train import train

    traj, bad = off_schema_shard_set(data, tmp_path / "traj")
    cfg = smoke_config(data, tmp_path / "run", trajectories=str(traj), steps=3)
    result = train(cfg)  # 4 of 6 samples are bad: without validation the first batch already crashes
    assert result["step"] == 3
    log = tmp_path / "run" / "skipped_rank0.jsonl"
    reasons = {r["key"]: r["reason"] for r in read_skip_log(log)}
    assert set(reasons) == set(bad)
    for key, why in bad.items():
        assert why in reasons[key], reasons[key]
    assert result["metadata"]["skipped_samples"] == count_skips(log) >= 4


# ------------------------------------------------------------------------------- 7: damaged checkpoints


@pytest.fixture(scope="module")
def three_checkpoints(tmp_path_factory, data):  # noqa: F811
    from dd3g_core.distill.train import train

    out = tmp_path_factory.mktemp("ckpts") / "run"
    train(smoke_config(data, out, keep_checkpoints=3))
    assert [s for s, _ in list_checkpoints(out)] == [2, 4, 6]
    return out


def _copy_run(src: Path, dst: Path) -> dict[int, Path]:
    shutil.copytree(src, dst)
    return dict(list_checkpoints(dst))


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def test_resume_falls_back_past_damaged_checkpoints(tmp_path, data, three_checkpoints):  # noqa: F811
    from dd3g_core.distill.train import train

    out = tmp_path / "run"
    ck = _copy_run(three_checkpoints, out)
    _truncate(ck[6] / "model.safetensors")
    (ck[4] / "trainer_state.json").write_text('{"step": 4, "hist')
    said = RecordingReporter()
    result = train(smoke_config(data, out, keep_checkpoints=3, steps=8), said)
    assert result["step"] == 8
    text = "\n".join(said.lines)
    assert f"checkpoint {ck[6]} is damaged" in text and "model.safetensors: truncated" in text
    assert f"checkpoint {ck[4]} is damaged" in text and "trainer_state.json: unreadable" in text
    assert f"resumed from {ck[2]} at step 2" in text
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == [
        "damaged-step_00000004",
        "damaged-step_00000006",
        "step_00000004",
        "step_00000006",
        "step_00000008",
    ]  # the damaged ones are kept aside, never resumed from again (nor pruned)


def test_resume_starts_over_when_no_checkpoint_loads_and_none_was_loaded(tmp_path, data, three_checkpoints):  # noqa: F811
    from dd3g_core.distill.train import train

    out = tmp_path / "run"
    ck = _copy_run(three_checkpoints, out)
    torch.save({"state": Evil(), "param_groups": []}, ck[6] / "optimizer.bin")  # a blocked pickle
    _truncate(ck[4] / "model.safetensors")
    (ck[2] / "trainer_state.json").write_text("[]")
    said = RecordingReporter()
    result = train(smoke_config(data, out, steps=2), said)
    assert result["step"] == 2 and not any(line.startswith("resumed from") for line in said.lines)
    text = "\n".join(said.lines)
    assert (
        f"{ck[6] / 'optimizer.bin'}: holds Python objects dd3g does not load (test_reliability_data_train.Evil)" in text
    )
    assert "weights_only" not in text  # not PyTorch's advice to turn the check off
    assert f"no checkpoint of {out} loads; starting over from step 0" in text
    assert len(list((out / "checkpoints").glob("damaged-step_*"))) == 3


def test_resume_refuses_to_start_over_after_a_load_changed_the_model(tmp_path, data, three_checkpoints):  # noqa: F811
    from dd3g_core.distill.train import train

    out = tmp_path / "run"
    ck = _copy_run(three_checkpoints, out)
    shutil.rmtree(ck[2])
    shutil.rmtree(ck[4])
    # a well-formed optimizer state of another model: Accelerate restores the weights, then fails on it
    torch.save({"state": {}, "param_groups": []}, ck[6] / "optimizer.bin")
    with pytest.raises(CheckpointDamagedError, match="may have changed the model, so not starting over"):
        train(smoke_config(data, out, steps=8))
    assert list_checkpoints(out) == [(6, ck[6])]  # left where it was for a look


# ---------------------------------------------------------------------- 8: second writers and orphans


def _gone(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except (OSError, IndexError):
        return True


@pytest.mark.slow
def test_second_trainer_refuses_and_an_orphaned_trainer_stops(tmp_path, data):  # noqa: F811
    cfg = smoke_config(data, tmp_path / "run", steps=400, checkpoint_every=2, log_every=1)
    out = Path(cfg.out)
    launcher = (
        "import subprocess, sys\n"
        f"child = subprocess.Popen({_train_cmd(cfg)!r}, stdout=open({str(tmp_path / 'a.log')!r}, 'w'), "
        "stderr=subprocess.STDOUT)\n"
        "print(child.pid, flush=True)\n"
        "child.wait()\n"
    )
    parent = subprocess.Popen([sys.executable, "-c", launcher], cwd=ROOT, env=ENV, stdout=subprocess.PIPE, text=True)
    trainer = int(parent.stdout.readline())
    try:
        deadline = time.time() + 300
        while time.time() < deadline and not list_checkpoints(out):
            assert not _gone(trainer), (tmp_path / "a.log").read_text()[-3000:]
            time.sleep(0.1)
        # a second trainer on the same directory refuses, naming the first, and writes nothing
        second = subprocess.run(_train_cmd(cfg), cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=180)
        assert second.returncode == 2, second.stderr[-3000:]
        assert f"dd3g distill: error: {out}: another dd3g process (pid {trainer} on " in second.stderr
        # kill -9 the trainer's parent: the trainer notices and stops within a bounded time
        os.kill(parent.pid, signal.SIGKILL)
        parent.wait()
        t0 = time.time()
        while time.time() - t0 < 60 and not _gone(trainer):
            time.sleep(0.1)
        assert _gone(trainer), "the orphaned trainer is still running 60 s after its parent died"
    finally:
        if not _gone(trainer):
            os.kill(trainer, signal.SIGKILL)
        if parent.poll() is None:
            parent.kill()
    log = (tmp_path / "a.log").read_text()
    assert "died; stopping at the next step" in log and "dd3g distill: error: the parent process" in log, log[-3000:]
    assert not list((out / "checkpoints").glob(".tmp-*"))  # it stopped between steps: nothing half-written
    saved = max(s for s, _ in list_checkpoints(out))
    # a later run takes the lock the dead trainer held and resumes from its last checkpoint
    again = subprocess.run(
        _train_cmd(cfg.replace(steps=saved + 2)), cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=300
    )
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"resumed from {out / 'checkpoints' / f'step_{saved:08d}'} at step {saved}" in again.stdout + again.stderr
    assert json.loads((out / "result.json").read_text())["step"] == saved + 2
