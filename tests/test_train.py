"""Distillation training: a smoke run end to end, resume after kill -9, refusal of a foreign
config, non-finite steps refused with their batch keys, and 2 gloo processes staying in sync."""

import dataclasses
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from dd3g_core import trajectories as tr
from dd3g_core.distill.checkpoint import ResumeMismatchError, list_checkpoints
from dd3g_core.distill.config import DistillConfig, apply_overrides, load_config
from dd3g_core.model import PEPD
from dd3g_core.profiles import get_profile
from dd3g_core.shards import write_shards
from dd3g_core.teacher import TinyTeacher

from stand_ins import RecordingReporter

ROOT = Path(__file__).resolve().parents[1]
FAST = dataclasses.replace(get_profile("smoke").trajectories, steps=2, record_steps=(0,), guidance=1.0)


def rgba_image(i, size=64):
    a = np.zeros((size, size, 4), np.uint8)
    a[12 + i : 44 + i, 16:48] = [(50 * i) % 256, 120, 200 - 20 * i, 255]
    return a


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """A random tiny teacher and 2 trajectory shard sets of 4 images x 2 draws."""
    root = tmp_path_factory.mktemp("distill")
    teacher_dir = root / "teacher"
    teacher = TinyTeacher(seed=0).eval()
    teacher.save_pretrained(teacher_dir)
    for s in range(2):
        rgba = root / "rgba_images" / "v1" / f"shard-{s:05d}"
        write_shards(
            [{"__key__": f"s{s}_obj{i}", "rgba.png": rgba_image(i + 4 * s), "json": {}} for i in range(4)],
            rgba,
            samples_per_shard=4,
        )
        tr.cache_shard(root, rgba, teacher, FAST, s)
    traj = next((root / "teacher_trajectories").iterdir())
    return {"root": root, "teacher": teacher_dir, "trajectories": traj}


def smoke_config(data, out, **changes) -> DistillConfig:
    cfg = load_config(preset="smoke").replace(
        trajectories=str(data["trajectories"]), out=str(out), teacher=str(data["teacher"]), torch_threads=1
    )
    return cfg.replace(**changes)


def test_config_files_and_overrides(tmp_path):
    for name in ("tiny", "smoke", "full"):
        assert load_config(preset=name) == get_profile(name).distill
    run = tmp_path / "run.json"
    run.write_text('{"_comment": "a run config", "preset": "smoke", "steps": 3}')
    assert load_config(run) == get_profile("smoke").distill.replace(steps=3)
    cfg = apply_overrides(
        load_config(preset="tiny"),
        [
            "steps=7",
            "implicit_ramp=[1,2]",
            "model_overrides.depth=2",
            "model_overrides.shape_block=2",
            "model_overrides.mu_block=1",
        ],
    )
    assert cfg.steps == 7 and cfg.implicit_ramp == (1, 2) and cfg.model_overrides["depth"] == 2
    with pytest.raises(ValueError, match="unknown DistillConfig keys"):
        apply_overrides(cfg, ["stepz=3"])
    with pytest.raises(ValueError, match="mixed_precision"):
        DistillConfig(mixed_precision="fp8")


def test_smoke_run_exports_a_loadable_student(tmp_path, data, monkeypatch):
    from dd3g_core.distill.train import train

    monkeypatch.delenv("DD3G_PROGRESS_SECONDS", raising=False)  # the default: a line every 30 s
    cfg = smoke_config(data, tmp_path / "run")
    said = RecordingReporter()
    result = train(cfg, said)
    out = Path(cfg.out)
    assert result["step"] == cfg.steps
    # a run of seconds: the reporter gets the first and the last step (done/total, s/step, ETA, losses), then done
    step_lines = [line for line in said.lines if line.startswith("distill")]
    line = r"distill: {}/6 steps \({}%\), [\d.]+ s/step, ETA \d+:\d\d; total -?[\d.]+ rgb [\d.]+"
    assert re.fullmatch(line.format(1, 16), step_lines[0]) and re.fullmatch(line.format(6, 100), step_lines[-2])
    assert all(re.fullmatch(line.format(r"\d", r"\d+"), x) for x in step_lines[1:-2])  # only on a slow machine
    assert re.fullmatch(r"distill done: 6 steps in \d+:\d\d \([\d.]+ s/step\)", step_lines[-1])
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [e["step"] for e in log] == list(range(1, cfg.steps + 1))
    assert all(np.isfinite(e["total"]) for e in log)
    assert any("imp_sds" in e for e in log)  # the ramp switched verification on
    assert [s for s, _ in list_checkpoints(out)] == [4, 6]  # keep_checkpoints=2, every 2
    model = PEPD.from_pretrained(out / "pepd")
    _, meta = PEPD.read_config(out / "pepd")
    assert meta["train_step"] == cfg.steps and meta["distill_config"]["steps"] == cfg.steps
    assert (out / "pepd" / "model_raw.safetensors").is_file()
    res = json.loads((out / "result.json").read_text())
    assert res["metadata"]["loss_curve"][-1][0] == cfg.steps and res["metadata"]["bad_steps"] == 0
    assert model.config.num_gaussians == 4096
    # a finished run resumes to a no-op; another config in the same directory is refused
    again = train(cfg)
    assert again["step"] == cfg.steps
    with pytest.raises(ResumeMismatchError, match="lr"):
        train(cfg.replace(lr=1e-3))


def test_non_finite_losses_skip_the_step_and_name_the_batch(tmp_path, data, monkeypatch):
    import dd3g_core.distill.train as train_mod

    real = train_mod.compute_losses
    calls = {"n": 0}

    def poisoned(model, teacher, b, cfg, step, micro, generator, perceptual=None):
        out = real(model, teacher, b, cfg, step, micro, generator, perceptual)
        calls["n"] += 1
        if calls["n"] == 2:
            out["total"] = out["total"] * float("nan")
        return out

    monkeypatch.setattr(train_mod, "compute_losses", poisoned)
    cfg = smoke_config(data, tmp_path / "run", steps=3)
    result = train_mod.train(cfg)
    record = json.loads((list_checkpoints(cfg.out)[-1][1] / "trainer_state.json").read_text())
    assert result["step"] == 3 and len(record["bad_steps"]) == 1
    assert "non-finite loss" in record["bad_steps"][0]["error"] and "_d0" in record["bad_steps"][0]["error"]
    weights = PEPD.from_pretrained(Path(cfg.out) / "pepd").state_dict()
    assert all(torch.isfinite(v).all() for v in weights.values())

    def always_nan(*args, **kwargs):
        out = real(*args, **kwargs)
        out["total"] = out["total"] * float("nan")
        return out

    monkeypatch.setattr(train_mod, "compute_losses", always_nan)
    with pytest.raises(FloatingPointError, match="non-finite loss"):
        train_mod.train(smoke_config(data, tmp_path / "run2", max_bad_steps=3))


def _train_cmd(cfg: DistillConfig) -> list[str]:
    cmd = [sys.executable, "-m", "dd3g_core.distill.train", "--preset", "smoke"]
    for k, v in cfg.to_dict().items():
        if v != dataclasses.asdict(load_config(preset="smoke")).get(k, object()):
            cmd += ["--set", f"{k}={json.dumps(v) if not isinstance(v, str) else v}"]
    return cmd


@pytest.mark.slow
def test_resume_after_kill_loses_at_most_one_checkpoint_interval(tmp_path, data):
    cfg = smoke_config(data, tmp_path / "run", steps=40, checkpoint_every=5, log_every=1)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.Popen(_train_cmd(cfg), cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    out = Path(cfg.out)
    deadline = time.time() + 300
    try:
        while time.time() < deadline and not any(s >= 10 for s, _ in list_checkpoints(out)):
            assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
            time.sleep(0.05)
        logged = [json.loads(x)["step"] for x in (out / "log.jsonl").read_text().splitlines()]
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
    killed_at = max(logged)
    saved = max(s for s, _ in list_checkpoints(out))
    assert killed_at - saved < cfg.checkpoint_every  # at most one interval of work lost
    res = subprocess.run(_train_cmd(cfg), cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    assert f"resumed from {out / 'checkpoints' / f'step_{saved:08d}'} at step {saved}" in res.stdout + res.stderr
    final = json.loads((out / "result.json").read_text())
    assert final["step"] == 40
    steps = [json.loads(x)["step"] for x in (out / "log.jsonl").read_text().splitlines()]
    assert steps[-1] == 40 and set(range(1, 41)) <= set(steps)


@pytest.mark.slow
def test_two_gloo_processes_keep_parameters_in_sync(tmp_path, data):
    """`accelerate launch --multi_gpu --num_processes 2` on a CPU machine: two gloo ranks."""
    cfg = smoke_config(data, tmp_path / "run", steps=4, checkpoint_every=2)
    cmd = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--multi_gpu",
        "--num_processes",
        "2",
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        "--main_process_port",
        "29517",
        "-m",
    ] + _train_cmd(cfg)[2:]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    res = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-3000:]
    out = Path(cfg.out)
    d0 = json.loads((out / "param_digest_rank0.json").read_text())
    d1 = json.loads((out / "param_digest_rank1.json").read_text())
    assert d0["world_size"] == d1["world_size"] == 2 and d0["step"] == d1["step"] == 4
    assert d0["digest"] == d1["digest"]
    ckpt = list_checkpoints(out)[-1][1]
    assert (ckpt / "random_states_0.pkl").is_file() and (ckpt / "random_states_1.pkl").is_file()
    assert json.loads((out / "result.json").read_text())["metadata"]["world_size"] == 2


def test_build_student_takes_phase1_from_the_teacher_unet():
    """Phase 1 is the teacher's U-Net: a teacher trained with image concatenation (6-channel stem)
    gives a student with the same stem, initialised from its weights; an explicit override wins."""
    from dd3g_core.distill.train import build_student
    from dd3g_core.model import PEPDConfig

    base = PEPDConfig.preset("tiny").unet
    teacher = TinyTeacher(unet_config=base.replace(concat_image=True), seed=0).eval()
    student = build_student(load_config(preset="tiny"), teacher)
    assert student.config.unet.concat_image and student.config.unet == teacher.unet.config
    assert torch.equal(student.phase1.input_blocks[0][0].weight, teacher.unet.input_blocks[0][0].weight)
    assert student.phase1.input_blocks[0][0].weight.shape[1] == 6
    plain = build_student(load_config(preset="tiny").replace(init="scratch", model_overrides={"unet": base}), teacher)
    assert not plain.config.unet.concat_image


def test_a_collapsed_student_stops_naming_the_step_and_exports_nothing(tmp_path, data):
    """Gaussians that are all but invisible (mean opacity < 1e-3) are a degenerate run even with finite
    losses: the trainer stops at the first logged step with a message naming it, before any checkpoint
    or export; the command line gives that message as one line (exit 2)."""
    from dd3g_core.distill.health import DegenerateStudentError
    from dd3g_core.distill.train import train

    collapsed = {"init_opacity": 1e-5, "input_view": -1}  # every Gaussian starts (and stays, lr 1e-7) invisible
    cfg = smoke_config(data, tmp_path / "run", lr=1e-7, model_overrides=collapsed)
    with pytest.raises(DegenerateStudentError, match=r"step 1: the student's Gaussians collapsed \(mean opacity"):
        train(cfg)
    out = Path(cfg.out)
    assert not (out / "pepd").exists() and not list_checkpoints(out)
    cfg_file = tmp_path / "collapsed.json"
    cfg_file.write_text(json.dumps({**cfg.to_dict(), "out": str(tmp_path / "cli")}))
    proc = subprocess.run(
        [sys.executable, "-m", "dd3g_core.distill.train", "--config", str(cfg_file)],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "step 1: the student's Gaussians collapsed" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "cli" / "pepd").exists()


def test_gaussian_health_flags_saturated_scales():
    from dd3g_core.distill.health import DegenerateStudentError, check_health, gaussian_health

    logits = torch.zeros(1, 10)
    pinned = torch.full((1, 10, 3), 0.08).log()  # every scale at max_scale
    stats = {k: float(v) for k, v in gaussian_health(logits, pinned, 0.002, 0.08).items()}
    assert stats == {"stat_opacity_mean": 0.5, "stat_scale_at_bound": 1.0}
    with pytest.raises(DegenerateStudentError, match="step 7: 100.0% of the Gaussians' scales sit at a bound"):
        check_health(stats, 7)
    check_health({"stat_opacity_mean": 0.3, "stat_scale_at_bound": 0.1}, 7)  # healthy: no error
