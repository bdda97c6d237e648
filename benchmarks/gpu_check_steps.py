"""Sections 3 and 4 of ``gpu_check.py``: one full-size distillation step (time, peak memory, memory options)
and a short real training run that checkpoints and resumes. See ``gpu_check.py`` for what they judge."""

from __future__ import annotations

import dataclasses
import gc
import json
import math
import time

import torch
from gpu_world import synchronize
from torch import nn

from dd3g_core.distill.memory import fit_line, largest_batch, set_encoder_checkpointing, synthetic_batch
from dd3g_core.distill.train import _param_groups, compute_losses
from dd3g_core.profiles import get_profile

STEP_BATCHES = {("cuda", "full"): (1, 2, 4), ("cuda", "tiny"): (1, 2), ("cpu", "tiny"): (1,)}
CARDS_GB = (24, 48, 80)
HEADROOM = 0.9  # of a card's memory: the CUDA context, cuBLAS/cuDNN workspaces, allocator fragmentation
SAME_LOSS_TOL = 1e-3  # relative: checkpointing recomputes the same forward


class AutocastStudent(nn.Module):
    """What Accelerate's ``mixed_precision`` does to the prepared student: autocast around its forward only
    (the teacher runs in its own bf16 weights, the renders in fp32, exactly as in ``train``)."""

    def __init__(self, module: nn.Module, device_type: str, dtype: torch.dtype):
        super().__init__()
        self.module, self.device_type, self.dtype = module, device_type, dtype

    def forward(self, *args, **kwargs):
        with torch.autocast(self.device_type, dtype=self.dtype, enabled=self.dtype != torch.float32):
            return self.module(*args, **kwargs)


def _options(student) -> list[tuple[str, bool, int]]:
    encoder = len(student.phase1.input_blocks) + 1  # the U-Net's encoder and middle block; the decoder trains
    return [("default", False, 0), ("checkpointing", True, 0), (f"checkpointing+freeze{encoder}", True, encoder)]


def oom_message(label: str, batch: int, freeze: int, gpu_gib: float) -> str:
    """What to do when a step does not fit: a smaller batch, the memory options (docs/gpu.md)."""
    return (
        f"CUDA out of memory at batch {batch} with options '{label}' on a {gpu_gib:.0f} GiB GPU: use a smaller batch "
        f"(--set batch_size={max(1, batch // 2)}, with grad_accum to keep the effective batch) and/or the memory "
        f"options --set gradient_checkpointing=true --set freeze_phase1_blocks={freeze} (docs/gpu.md)"
    )


def distill_step(check) -> None:
    from diffusers.training_utils import EMAModel

    cfg, dev, teacher, student = check.cfg, check.device, check.teacher(), check.student()
    mixed = {"no": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[cfg.mixed_precision]
    wrapped = AutocastStudent(student, dev.type, mixed)
    pristine = {k: v.detach().to("cpu", copy=True) for k, v in student.state_dict().items()}  # off the GPU
    params = list(student.parameters())
    step_at = cfg.implicit_ramp[1]  # the ramp at 1: explicit + implicit terms, every micro-batch

    def one_step(batch, opt, ema) -> dict[str, float]:
        losses = compute_losses(wrapped, teacher, batch, cfg, step_at, 0, torch.Generator().manual_seed(0))
        losses["total"].backward()
        torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        ema.step(params)
        return {k: float(v.detach()) for k, v in losses.items()}

    batches = STEP_BATCHES[(dev.type, check.size)]
    print(
        f"{cfg.model} student, {cfg.mixed_precision} autocast, render backend {cfg.render_backend}; batches {batches}"
    )
    results: dict[str, dict[int, dict]] = {}
    first_loss: dict[str, float] = {}
    finite = True
    for label, checkpointing, frozen in _options(student):
        student.load_state_dict(pristine)
        student.requires_grad_(True)
        student.set_gradient_checkpointing(checkpointing)
        set_encoder_checkpointing(teacher, checkpointing)  # as train() does
        student.freeze_phase1(frozen)
        opt = torch.optim.AdamW(
            _param_groups(student, cfg), lr=cfg.lr, weight_decay=cfg.weight_decay, betas=(0.9, 0.99)
        )
        ema = EMAModel(params, decay=cfg.ema_decay)
        ema.to(dev)
        results[label] = {}
        for b in batches:
            batch = synthetic_batch(teacher, b, seed=b, device=dev)
            try:
                if check.cuda:
                    torch.cuda.reset_peak_memory_stats(dev)
                losses = one_step(batch, opt, ema)  # allocates the optimizer state: the second step is timed
                synchronize(dev)
                t0 = time.perf_counter()
                if check.cuda:
                    one_step(batch, opt, ema)
                synchronize(dev)
                seconds = time.perf_counter() - t0 if check.cuda else float("nan")
            except torch.cuda.OutOfMemoryError:
                gpu_gib = torch.cuda.get_device_properties(dev).total_memory / 2**30
                message = oom_message(label, b, max(frozen, _options(student)[-1][2]), gpu_gib)
                print("  " + message)
                results[label][b] = {"oom": message}
                opt.zero_grad(set_to_none=True)
                break
            finally:
                del batch
            first_loss.setdefault(label, losses["total"])
            finite &= all(math.isfinite(v) for v in losses.values())
            peak = torch.cuda.max_memory_allocated(dev) if check.cuda else float("nan")
            results[label][b] = {"seconds": seconds, "peak_bytes": peak, "total": losses["total"]}
            print(f"  {label:28s} batch {b}: loss {losses['total']:.4f}, {seconds:.3f} s/step, {peak / 2**30:.1f} GiB")
        del opt, ema
        gc.collect()
        if check.cuda:
            torch.cuda.empty_cache()
    student.load_state_dict(pristine)  # leave the shared student as it was given
    student.requires_grad_(True)
    student.set_gradient_checkpointing(False)
    student.freeze_phase1(0)
    set_encoder_checkpointing(teacher, False)
    check.report.note("distill_step", results)
    check.report.bar("distill_step_finite", int(finite), 1, finite)
    if {"default", "checkpointing"} <= set(first_loss):
        gap = abs(first_loss["checkpointing"] - first_loss["default"]) / max(abs(first_loss["default"]), 1e-12)
    else:  # one of them did not fit even one sample
        gap = float("inf")
    check.report.bar("checkpointing_same_loss_rel", gap, SAME_LOSS_TOL, gap <= SAME_LOSS_TOL)
    _fit_report(check, results, cfg.batch_size)


def _fit_report(check, results: dict[str, dict[int, dict]], profile_batch: int) -> None:
    """Peak = static + per-sample x batch (least squares over the measured batches) -> the largest batch per card."""
    fits = {}
    for label, rows in results.items():
        points = [(b, r["peak_bytes"]) for b, r in rows.items() if math.isfinite(r.get("peak_bytes", math.nan))]
        if len({b for b, _ in points}) < 2:
            continue
        static, per_sample = fit_line(points)
        fits[label] = {gb: largest_batch(static, per_sample, HEADROOM * gb * 2**30) for gb in CARDS_GB}
        print(
            f"  {label:28s} peak ~ {static / 2**30:.1f} GiB + {per_sample / 2**30:.2f} GiB x batch (fit over "
            f"{sorted(rows)}); largest batch: " + ", ".join(f"{gb} GB: {fits[label][gb]}" for gb in CARDS_GB)
        )
    check.report.note("largest_batch", fits)
    value = fits.get("default", {}).get(80, 0)
    check.report.bar("distill_max_batch_80gb", value, profile_batch, value >= profile_batch, speed=True)


# ------------------------------------------------------------------------------------------ 4. training


class _Lines:
    def __init__(self):
        self.lines: list[str] = []

    def log(self, message: str) -> None:
        self.lines.append(message)

    def materialize(self, metadata, data_version) -> None:
        pass


def training_run(check) -> None:
    """The smoke recipe end to end on this device: teacher -> rgba shard -> trajectory cache -> train -> resume."""
    from dd3g_core import trajectories as tr
    from dd3g_core.distill.checkpoint import list_checkpoints
    from dd3g_core.distill.train import train
    from dd3g_core.synthesis.config import shard_dir
    from dd3g_core.synthesis.stage import synthesize_shard
    from dd3g_core.teacher.loading import load_teacher

    smoke = get_profile("smoke")
    teacher_dir = check.smoke_teacher_dir()
    data = check.workdir / "data"
    rgba = dataclasses.replace(smoke.rgba, num_shards=1)
    synthesize_shard(data, rgba, 0, log=lambda _: None)
    traj, _ = tr.cache_shard(
        data, shard_dir(data, rgba, 0), load_teacher(teacher_dir), smoke.trajectories, 0, log=lambda _: None
    )
    first, last = (2, 3) if check.size == "tiny" and not check.cuda else (4, 6)
    cfg = smoke.distill.replace(
        trajectories=str(traj.directory), out=str(check.workdir / "run"), teacher=str(teacher_dir), steps=first
    )
    t0 = time.perf_counter()
    train(cfg, _Lines())
    saved = [s for s, _ in list_checkpoints(cfg.out)]
    second = _Lines()
    result = train(cfg.replace(steps=last, gradient_checkpointing=True), second)  # a memory option may change on resume
    log = [json.loads(x) for x in (check.workdir / "run" / "log.jsonl").read_text().splitlines()]
    print(f"{len(log)} logged steps in {time.perf_counter() - t0:.0f} s on {check.device}; checkpoints at {saved}")
    print("  " + "\n  ".join(line for line in second.lines if line.startswith("resumed")))
    finite = bool(log) and all(math.isfinite(e["total"]) for e in log)
    resumed = any(line.startswith("resumed from") and line.endswith(f"at step {first}") for line in second.lines)
    resumed &= result["step"] == last and {e["step"] for e in log} >= set(range(first + 1, last + 1))
    check.report.bar("train_losses_finite", int(finite), 1, finite)
    check.report.bar("train_checkpoint_written", int(first in saved), 1, first in saved)
    check.report.bar("train_resumed", int(resumed), 1, resumed)
