"""The full (GPU) profile, proven on CPU: the whole ``distill`` job through the real Dagster CLI with
``DD3G_PROFILE`` = the full profile, on tiny random stand-ins of every real component.

* SDXL: a tiny random ``StableDiffusionXLPipeline`` folder whose VAE paints a plain light backdrop
  (``$DD3G_SDXL_PATH``);
* rembg: a u2net-shaped ONNX model that mattes a centred disc (``$DD3G_REMBG_MODEL``; random SDXL
  weights paint no object a real matting model could find);
* ImageDream: a complete diffusers folder (CLIP text + image encoders, VAE /8, DDIM scheduler, our
  multi-view U-Net) at the real 256 px layout with 32x32 latents (``$DD3G_TEACHER_PATH``);
* the renderer: the CPU rasterizer (gsplat where CUDA exists), the student in bf16 as on GPUs.

A profile file based on ``full`` only shrinks sizes (shards, steps, the student's width): the same asset
code, configs classes and code paths a GPU user runs.
"""

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import dagster as dg
import numpy as np
import pytest

from dd3g_core.shards import iter_samples, validate_shards

from stand_ins import build_disc_onnx, build_tiny_sdxl, write_eval_folder, write_tiny_clip, write_tiny_imagedream

ROOT = Path(__file__).resolve().parents[1]

SMALL_FULL = {
    "base": "full",
    "description": "the full profile at stand-in sizes (tests/test_pipeline_full.py)",
    "rgba": {
        "num_shards": 1,
        "samples_per_shard": 2,
        "sdxl_size": 64,
        "sdxl_steps": 2,
        "sdxl_batch_size": 2,
        "resolution": 64,
    },
    "trajectories": {"num_noise_draws": 1, "steps": 2, "record_steps": [1], "batch_size": 2, "samples_per_shard": 2},
    "distill": {
        "steps": 2,
        "batch_size": 1,
        "grad_accum": 2,
        "warmup_steps": 1,
        "implicit_ramp": [0, 1],
        "num_workers": 0,
        "shuffle_buffer": 2,
        "checkpoint_every": 1,
        "log_every": 1,
        "model_overrides": {
            "width": 64,
            "depth": 2,
            "heads": 2,
            "mu_block": 1,
            "shape_block": 2,
            "mlp_ratio": 2.0,
            "gaussian_grid": 2,
        },
    },
    # + "folder" and "clip_weights": the stand-in GSO-style folder and CLIP; the teacher sampled as its cache
    "evaluation": {"grid_objects": 2, "teacher_steps": 2},
}


@pytest.fixture(scope="module")
def stand_ins(tmp_path_factory):
    root = tmp_path_factory.mktemp("stand_ins")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    return {
        "sdxl": build_tiny_sdxl(root / "sdxl_src", plain=True),
        "rembg": build_disc_onnx(root / "rembg" / "disc-u2net.onnx"),
        "imagedream": write_tiny_imagedream(root / "id" / "imagedream-ipmv-diffusers", vae_factor=8, latent=32),
        "eval_folder": write_eval_folder(root / "gso"),
        "clip": write_tiny_clip(root / "clip"),
    }


def run_distill(tmp_path: Path, stand_ins: dict, teacher: Path) -> subprocess.CompletedProcess:
    profile = tmp_path / "small_full.json"
    evaluation = {
        **SMALL_FULL["evaluation"],
        "folder": str(stand_ins["eval_folder"]),
        "clip_weights": str(stand_ins["clip"]),
    }
    profile.write_text(json.dumps({**SMALL_FULL, "evaluation": evaluation}))
    home = tmp_path / "dagster_home"
    home.mkdir(exist_ok=True)
    env = dict(
        os.environ,
        DD3G_PROFILE=str(profile),
        DD3G_DATA_ROOT=str(tmp_path / "data"),
        DAGSTER_HOME=str(home),
        DD3G_SDXL_PATH=str(stand_ins["sdxl"]),
        DD3G_REMBG_MODEL=str(stand_ins["rembg"]),
        DD3G_TEACHER_PATH=str(teacher),
        HF_HUB_OFFLINE="1",
        CUDA_VISIBLE_DEVICES="",
    )
    dagster = Path(sys.executable).with_name("dagster")
    return subprocess.run(
        [str(dagster), "job", "execute", "-m", "pipelines.definitions", "-j", "distill"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=1200,
    )


def latest(instance, key: str):
    event = instance.get_latest_materialization_event(dg.AssetKey(key))
    return None if event is None else event.asset_materialization


@pytest.mark.slow
def test_full_profile_distill_job_on_cpu_stand_ins(tmp_path, stand_ins):
    proc = run_distill(tmp_path, stand_ins, stand_ins["imagedream"])
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    data = tmp_path / "data"
    rgba = validate_shards(next((data / "rgba_images").glob("*/shard-00000")))
    assert rgba.manifest["generator"]["name"] == "sdxl" and rgba.manifest["matting_backend"]["name"] == "rembg"
    assert rgba.num_samples == 2, rgba.manifest["rejected"]
    shard_set = next((data / "teacher_trajectories").glob("*/shard-00000"))
    cached = validate_shards(shard_set)
    assert cached.manifest["teacher"]["teacher_id"] == "imagedream-ipmv" and cached.num_samples == 2
    s = next(iter(iter_samples(shard_set)))
    assert s["views.npy"].shape == (4, 3, 256, 256) and s["views.npy"].dtype == np.float16  # the real layout
    assert s["noise.npy"].shape == (5, 4, 32, 32) and np.isfinite(s["views.npy"]).all()
    run_config = json.loads(next((data / "pepd_student").glob("*/distill_config.json")).read_text())
    assert run_config["mixed_precision"] == "bf16" and run_config["model"] == "full"
    assert run_config["teacher"] == str(stand_ins["imagedream"].resolve())
    with dg.DagsterInstance.from_config(str(tmp_path / "dagster_home")) as instance:
        runs = instance.get_runs()
        assert len(runs) == 1 and runs[0].job_name == "distill"
        teacher = latest(instance, "teacher")
        assert teacher.metadata["kind"].value == "imagedream" and teacher.metadata["source"].value == "override"
        student = latest(instance, "pepd_student")
        assert student.metadata["bad_steps"].value == 0 and student.metadata["step"].value == 2
        finite = instance.event_log_storage.get_latest_asset_check_execution_by_key(
            [dg.AssetCheckKey(dg.AssetKey("pepd_student"), "student_renders_finite")]
        )
        assert next(iter(finite.values())).event.dagster_event.event_specific_data.passed
        # the evaluation stage on the user's folder of rendered objects, with CLIP from local weights
        ev = latest(instance, "evaluation")
        metrics = json.loads((Path(ev.metadata["report"].value).parent / "metrics.json").read_text())
        assert metrics["mode"] == "folder" and len(metrics["per_object"]) == 2 and not metrics["rejects"]
        assert all(math.isfinite(metrics["means"][k]) for k in ("psnr", "ssim", "iou", "fog_alpha", "clip"))
        assert "CLIP vision" in metrics["CLIP"] and "unavailable" in metrics["LPIPS"]
        complete = instance.event_log_storage.get_latest_asset_check_execution_by_key(
            [dg.AssetCheckKey(dg.AssetKey("evaluation"), "evaluation_complete")]
        )
        assert next(iter(complete.values())).event.dagster_event.event_specific_data.passed
        # the first promotion, gated on what a folder evaluation measures (no resolution suffix, no agreement)
        accepted = latest(instance, "accepted_student")
        assert (
            accepted.metadata["promoted"].value is True and accepted.metadata["psnr"].value == metrics["means"]["psnr"]
        )

    # Bad input: the same data root, now with a partial ImageDream folder. The teacher asset fails first,
    # naming the missing file and how to get it; nothing downstream runs and no earlier output changes.
    before = snapshot(data)
    partial = Path(shutil.copytree(stand_ins["imagedream"], tmp_path / "partial" / "imagedream-ipmv-diffusers"))
    (partial / "vae" / "diffusion_pytorch_model.safetensors").unlink()
    proc = run_distill(tmp_path, stand_ins, partial)
    assert proc.returncode != 0
    out = proc.stdout + proc.stderr
    assert "vae/diffusion_pytorch_model.safetensors" in out and "hf download" in out
    assert snapshot(data) == before
    with dg.DagsterInstance.from_config(str(tmp_path / "dagster_home")) as instance:
        last = instance.get_runs(limit=1)[0]
        failed = {
            e.step_key
            for e in instance.all_logs(last.run_id)
            if e.is_dagster_event and e.dagster_event.event_type_value == "STEP_FAILURE"
        }
        done = {
            e.step_key
            for e in instance.all_logs(last.run_id)
            if e.is_dagster_event and e.dagster_event.event_type_value == "STEP_SUCCESS"
        }
        assert failed == {"teacher"} and not done & {"teacher_trajectories", "pepd_student"}


def snapshot(root: Path) -> dict[str, tuple[int, int]]:
    """(size, mtime) of every file under ``root`` (outputs and the records that travel between stages)."""
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*") if p.is_file()}
