"""Tiny teacher training recipe (smoke preset): data cache, steps, atomic checkpoints, exact resume,
EMA, export. Runs in seconds with one thread."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from dd3g_core.images import prepare_images
from dd3g_core.teacher.tiny import TinyTeacher
from dd3g_core.teacher.training.data import MultiViewDataset, RenderSpec, generate_cache, list_shards, render_example
from dd3g_core.teacher.training.train import (
    TeacherTrainConfig,
    checkpoint_step,
    export_teacher,
    latest_checkpoint,
    pretrain_tiny_teacher,
)

os.environ.setdefault("OMP_NUM_THREADS", "1")


@pytest.fixture(scope="module")
def smoke_data(tmp_path_factory):
    cfg = TeacherTrainConfig.preset("smoke")
    d = tmp_path_factory.mktemp("teacher_data")
    generate_cache(d, cfg.num_objects, cfg.shard_size, cfg.render_spec())
    return d


@pytest.fixture(scope="module")
def smoke_cfg(smoke_data):
    return TeacherTrainConfig.preset("smoke", data_dir=str(smoke_data), generate_data=False)


@pytest.fixture(scope="module")
def full_run(smoke_cfg, tmp_path_factory):
    out = tmp_path_factory.mktemp("run_full")
    return pretrain_tiny_teacher(smoke_cfg, out)


def test_dataset_shapes_dtype_and_determinism(smoke_data, tmp_path):
    cfg = TeacherTrainConfig.preset("smoke")
    ds = MultiViewDataset(smoke_data)
    assert len(ds) == cfg.num_objects and ds.num_shards == cfg.num_objects // cfg.shard_size
    inputs, views = ds.batch([0, 3])
    assert inputs.dtype == torch.uint8 and inputs.shape == (2, 4, 64, 64)
    assert views.dtype == torch.uint8 and views.shape == (2, 4, 3, 32, 32)
    assert ds.seeds.tolist() == list(range(cfg.num_objects))  # the first train-split seeds, in order
    # the cache holds exactly what render_example makes for that seed (deterministic by seed)
    i3, v3 = render_example(3, cfg.render_spec())
    assert np.array_equal(i3, inputs[1].numpy()) and np.array_equal(v3, views[1].numpy())
    i3b, v3b = render_example(3, cfg.render_spec())
    assert np.array_equal(i3, i3b) and np.array_equal(v3, v3b)
    assert not np.array_equal(ds.views[0], ds.views[1])
    # the seen view (the input camera) equals the teacher's view of its input up to rounding
    seen = prepare_images(inputs[:1], 32)[0] * 255
    assert (seen - views[0, 0].float()).abs().max() <= 2.0
    # shards are plain .npy (no pickle); re-running generation skips existing shards
    for shard in list_shards(smoke_data):
        for name in ("input.npy", "views.npy", "seeds.npy"):
            np.load(shard / name, allow_pickle=False)
    assert generate_cache(smoke_data, cfg.num_objects, cfg.shard_size, cfg.render_spec()) == []
    with pytest.raises(ValueError, match="cache made with"):
        generate_cache(smoke_data, cfg.num_objects, cfg.shard_size, dataclasses.replace(RenderSpec(), num_gaussians=7))
    with pytest.raises(FileNotFoundError):
        MultiViewDataset(tmp_path / "empty")


def test_training_steps_checkpoints_and_ema(full_run, smoke_cfg):
    res = full_run
    assert res.step == smoke_cfg.max_steps and len(res.losses) == smoke_cfg.max_steps
    assert all(np.isfinite(res.losses))
    ckpts = sorted((res.out_dir / "checkpoints").iterdir())
    assert [p.name for p in ckpts] == ["step_00000004", "step_00000006"]  # keep_checkpoints = 2
    assert not [p for p in res.out_dir.rglob("*") if p.name.startswith(".tmp-")]  # nothing half-written
    ck = latest_checkpoint(res.out_dir)
    assert ck == ckpts[-1] and checkpoint_step(ck) == 6
    assert {p.name for p in ck.iterdir()} == {
        "model.safetensors",
        "ema.safetensors",
        "optimizer.safetensors",
        "state.json",
    }
    from safetensors.torch import load_file

    raw, ema = load_file(str(ck / "model.safetensors")), load_file(str(ck / "ema.safetensors"))
    assert raw.keys() == ema.keys()
    assert any(not torch.equal(raw[k], ema[k]) for k in raw)
    log = [json.loads(line) for line in (res.out_dir / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log if "loss" in r] == list(range(1, 7))


def test_resume_after_kill_matches_uninterrupted_run(full_run, smoke_cfg, tmp_path):
    out = tmp_path / "run"

    class Killed(Exception):
        pass

    def crash(step, loss):  # die after step 5, i.e. after the step-4 checkpoint and before step 6's
        if step == 5:
            raise Killed

    with pytest.raises(Killed):
        pretrain_tiny_teacher(smoke_cfg, out, on_step=crash)
    assert checkpoint_step(latest_checkpoint(out)) == 4
    res = pretrain_tiny_teacher(smoke_cfg, out)  # resume
    assert res.step == 6 and res.losses == full_run.losses[4:]  # identical steps 5 and 6
    from safetensors.torch import load_file

    for name in ("model.safetensors", "ema.safetensors", "optimizer.safetensors"):
        a = load_file(str(latest_checkpoint(full_run.out_dir) / name))
        b = load_file(str(latest_checkpoint(out) / name))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name
    state_a = json.loads((latest_checkpoint(full_run.out_dir) / "state.json").read_text())
    state_b = json.loads((latest_checkpoint(out) / "state.json").read_text())
    assert state_a["generator_state"] == state_b["generator_state"]
    steps = [
        json.loads(line).get("step")
        for line in (out / "log.jsonl").read_text().splitlines()
        if "loss" in json.loads(line)
    ]
    assert steps == [1, 2, 3, 4, 5, 6]  # the lost step 5 was logged once more, not twice
    # a finished run resumed again is a no-op
    again = pretrain_tiny_teacher(smoke_cfg, out)
    assert again.step == 6 and again.losses == []


def test_export_loads_and_samples(full_run, tmp_path):
    from safetensors.torch import load_file

    path = export_teacher(full_run.out_dir, tmp_path / "tiny-teacher")
    teacher = TinyTeacher.from_pretrained(path)
    ema = load_file(str(latest_checkpoint(full_run.out_dir) / "ema.safetensors"))
    sd = teacher.state_dict()
    assert all(torch.equal(sd[k], ema[k]) for k in ema)
    inputs, _ = MultiViewDataset(_data_dir(full_run)).batch([0, 1])
    out = teacher.sample(inputs, teacher.draw_noise(2, seed=0), steps=2)
    assert out.images.shape == (2, 4, 3, 32, 32) and torch.isfinite(out.images).all()
    again = teacher.sample(inputs, teacher.draw_noise(2, seed=0), steps=2)
    assert torch.equal(out.images, again.images)


def _data_dir(run):
    state = json.loads((latest_checkpoint(run.out_dir) / "state.json").read_text())
    return state["config"]["data_dir"]


def test_cli_export(full_run, tmp_path, capsys):
    from dd3g_core.cli import main

    assert main(["teacher", "export", "--checkpoint", str(full_run.out_dir), "--out", str(tmp_path / "t")]) == 0
    assert (tmp_path / "t" / "model.safetensors").is_file() and (tmp_path / "t" / "config.json").is_file()
    assert main(["teacher", "export", "--checkpoint", str(tmp_path / "nothing"), "--out", str(tmp_path / "u")]) == 2
    assert "no teacher training checkpoint" in capsys.readouterr().err


def test_dagster_teacher_asset_smoke_trains_and_tiny_uses_shipped(tmp_path, monkeypatch):
    import dagster as dg

    from dd3g_core.teacher.tiny import default_tiny_teacher_path
    from pipelines.assets import ALL_ASSETS, teacher
    from pipelines.io_managers import StageRecordIOManager
    from pipelines.resources import DD3GSettings

    monkeypatch.delenv("DD3G_TEACHER_PATH", raising=False)

    def materialize(profile):
        settings = DD3GSettings(data_root=str(tmp_path / "data"), profile=profile, teacher_path="")
        res = dg.materialize(
            [teacher], resources={"settings": settings, "io_manager": StageRecordIOManager(settings=settings)}
        )
        return res.asset_materializations_for_node("teacher")[0].metadata

    assert teacher in ALL_ASSETS
    meta = materialize("smoke")
    assert meta["source"].value == "recipe:smoke"
    assert (tmp_path / "data" / "teacher" / "smoke" / "teacher" / "model.safetensors").is_file()
    meta2 = materialize("smoke")  # a finished run: no retraining
    assert meta2["content_hash"].value == meta["content_hash"].value
    if (default_tiny_teacher_path(must_exist=False) / "model.safetensors").is_file():
        meta = materialize("tiny")
        assert meta["source"].value == "shipped" and len(meta["content_hash"].value) == 64
        assert meta["path"].value == str(default_tiny_teacher_path())


def test_cli_offers_every_training_preset_and_init_from():
    from dd3g_core.cli import build_parser
    from dd3g_core.teacher.training.train import TRAIN_PRESETS

    parser = build_parser()
    teacher = next(a for a in parser._actions if a.dest == "command").choices["teacher"]
    pretrain = next(a for a in teacher._actions if a.dest == "teacher_command").choices["pretrain"]
    preset = next(a for a in pretrain._actions if a.dest == "preset")
    assert sorted(preset.choices) == sorted(TRAIN_PRESETS)
    args = parser.parse_args(["teacher", "pretrain", "--preset", "tiny_concat", "--init-from", "/runs/t"])
    assert (args.preset, args.init_from) == ("tiny_concat", "/runs/t")
    from dd3g_core.teacher.training.recipe import RECIPES

    recipe = next(a for a in teacher._actions if a.dest == "teacher_command").choices["recipe"]
    assert sorted(next(a for a in recipe._actions if a.dest == "recipe").choices) == sorted(RECIPES)
    assert parser.parse_args(["teacher", "recipe", "--recipe", "smoke", "--out", "/r"]).out == "/r"


def test_lr_schedule_warmup_stable_then_optional_cooldown():
    from dd3g_core.teacher.training.train import TeacherTrainConfig, lr_at

    plain = TeacherTrainConfig(lr=1e-3, warmup_steps=10)
    assert lr_at(plain, 0) == pytest.approx(1e-4) and lr_at(plain, 9) == pytest.approx(1e-3)
    assert lr_at(plain, 10_000) == pytest.approx(1e-3)  # no planned end: constant
    cool = TeacherTrainConfig(lr=1e-3, warmup_steps=10, cooldown_start=100, cooldown_steps=50, cooldown_min_ratio=0.1)
    assert lr_at(cool, 99) == pytest.approx(1e-3)  # the steps before the cooldown are unchanged (resume-safe)
    assert lr_at(cool, 124) == pytest.approx(1e-3 * (1 - 0.5 * 0.9))  # halfway down
    assert lr_at(cool, 149) == pytest.approx(1e-4) and lr_at(cool, 500) == pytest.approx(1e-4)
    lrs = [lr_at(cool, s) for s in range(95, 160)]
    assert all(a >= b for a, b in zip(lrs, lrs[1:]))


def test_cli_cooldown_flag_reaches_the_config(tmp_path, monkeypatch):
    from dd3g_core import cli
    from dd3g_core.teacher.training import train as teacher_train

    seen = {}

    def fake_pretrain(cfg, out, **kw):  # records the config the CLI built; training itself is tested above
        seen["cfg"] = cfg
        return teacher_train.TrainResult(Path(out), 0, None, [], 0.0)

    monkeypatch.setattr(teacher_train, "pretrain_tiny_teacher", fake_pretrain)
    rc = cli.main(["teacher", "pretrain", "--preset", "smoke", "--out", str(tmp_path), "--cooldown", "3000", "600"])
    assert rc == 0 and (seen["cfg"].cooldown_start, seen["cfg"].cooldown_steps) == (3000, 600)


def test_recipe_runs_its_stages_grows_the_base_and_resumes_as_a_no_op(tmp_path):
    """The staged recipe (smoke-sized): stage 2 starts from stage 1's EMA export grown to image
    concatenation, its LR cools down, the final export is a concat teacher, and a rerun changes nothing."""
    from dd3g_core.teacher.training.recipe import RECIPES, train_teacher_recipe

    res = train_teacher_recipe("smoke", tmp_path)
    stages = RECIPES["smoke"]
    assert res.step == stages[-1].steps and res.exported == tmp_path / "teacher"
    base = TinyTeacher.from_pretrained(tmp_path / "base" / "teacher")
    final = TinyTeacher.from_pretrained(res.exported)
    assert not base.unet.config.concat_image and final.unet.config.concat_image
    start = json.loads((tmp_path / "concat" / "log.jsonl").read_text().splitlines()[0])
    assert start["config"]["init_from"] == str(tmp_path / "base" / "teacher")
    lrs = [
        json.loads(line)["lr"]
        for line in (tmp_path / "concat" / "log.jsonl").read_text().splitlines()[1:]
        if "lr" in json.loads(line)
    ]
    assert lrs[-1] == pytest.approx(0.1 * max(lrs))  # the cooldown reached its floor on the last step
    weights = (res.exported / "model.safetensors").read_bytes()
    again = train_teacher_recipe("smoke", tmp_path)
    assert again.step == res.step and (again.exported / "model.safetensors").read_bytes() == weights
    with pytest.raises(ValueError, match="unknown teacher recipe"):
        train_teacher_recipe("nope", tmp_path)
