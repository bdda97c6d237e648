"""Distil a multi-view teacher into PEPD (DESIGN §1) with Accelerate.

    accelerate launch [--multi_gpu --num_processes N] -m dd3g_core.distill.train \
        (--preset tiny|smoke|full | --config run.json) [--set key=value ...]

Reads top to bottom:

1. config + Accelerator (gradient accumulation, mixed precision, per-rank seeding);
2. the frozen teacher (condition encoder, verifier) and PEPD (phase 1 from the teacher's U-Net);
3. optimizer (AdamW, phase 1 at ``phase1_lr_scale``), cosine LR with warm-up, EMA; ``prepare``;
4. resume from the newest checkpoint of ``out`` that loads (a killed run loses at most one interval;
   a damaged newest one is set aside, saying so: ``checkpoint.resume``);
5. the loop: the objective (``objective.compute_losses``: explicit supervision on the cached
   (N, C, II) -> OI, ramped implicit verification at rotated cameras), non-finite steps refused with
   their batch keys, EMA, logs, checkpoints;
6. ``<out>/pepd/``: ``save_pretrained`` of the EMA weights (+ ``model_raw.safetensors``).

One run per ``out`` (a lock on ``<out>/.lock``) and no orphans (a trainer whose launching process dies
stops): ``lifecycle``. Samples that do not match the trajectory schema (``SampleSpec``) are skipped and
recorded in ``<out>/skipped_rank<r>.jsonl``; data of which nothing is readable stops the run with one
message (``dd3g_core.shards.health``).

A ``reporter`` (rank 0 only) receives log lines and the final materialization: loss curve,
checkpoint path, parameter counts. The ``pepd_student`` asset launches ``pipelines.pipes_train``,
which passes one that speaks Dagster Pipes; this library never imports Dagster.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from typing import Any, Protocol

import torch

from ..model import PEPD, PEPDConfig
from ..trajectories.sample import SampleSpec, recorded_steps, to_batch
from .checkpoint import resume, save_checkpoint
from .config import DistillConfig, load_config
from .export import export
from .health import check_health
from .lifecycle import check_parent, exit_with_parent, run_directory_lock
from .losses import NonFiniteLossError
from .memory import out_of_memory_advice, set_encoder_checkpointing
from .objective import compute_losses  # the joint loss of one micro-batch; re-exported: callers import it from here

__all__ = ["main", "train", "build_student", "compute_losses"]


def build_student(cfg: DistillConfig, teacher) -> PEPD:
    """PEPD of preset ``cfg.model`` whose phase 1 is the teacher's own U-Net architecture.

    The teacher's U-Net config replaces the preset's (unless ``model_overrides`` sets ``unet``), so a
    teacher trained with an option such as ``concat_image`` gives a student with the same phase 1;
    with ``init == "teacher"`` phase 1 then starts from the teacher's weights. ``init_from`` (an exported
    student folder) warm-starts every weight instead; a folder of another architecture is refused. The memory
    options (``gradient_checkpointing``, ``freeze_phase1_blocks``) are applied to the model returned."""
    overrides = dict(cfg.model_overrides)
    overrides.setdefault("unet", teacher.unet.config)
    pcfg = PEPDConfig.preset(cfg.model).replace(**overrides)
    if pcfg.input_view >= 0 and "input_view" not in cfg.model_overrides:  # the teacher's layout says which view is II's
        pcfg = pcfg.replace(input_view=max(int(teacher.layout.input_view), -1))
    if cfg.init_from:  # a warm start (e.g. the last accepted student): same architecture, its weights
        model = PEPD.from_pretrained(cfg.init_from, expected=pcfg).train()
    else:
        model = PEPD(pcfg)
        if cfg.init == "teacher":
            model.init_from_teacher(teacher.unet)
    # memory options (docs/gpu.md): frozen weights stay out of the optimizer (_param_groups)
    model.set_gradient_checkpointing(cfg.gradient_checkpointing)
    model.freeze_phase1(cfg.freeze_phase1_blocks)
    return model


class Reporter(Protocol):
    """Where rank 0 sends progress besides ``log.jsonl`` (e.g. Dagster Pipes: ``pipelines/pipes_train.py``)."""

    def log(self, message: str) -> None: ...

    def materialize(self, metadata: dict[str, Any], data_version: str) -> None: ...


class _NoReporter:
    def log(self, message: str) -> None:
        pass

    def materialize(self, metadata: dict[str, Any], data_version: str) -> None:
        pass


class _WarmupCosine:
    """LR factor: linear warm-up over ``warmup`` steps, then cosine from 1 to ``floor`` at ``total``.

    A callable object (not a lambda) so ``LambdaLR.state_dict`` stays plain numbers."""

    def __init__(self, warmup: int, total: int, floor: float):
        self.warmup, self.total, self.floor = int(warmup), int(total), float(floor)

    def __call__(self, step: int) -> float:
        if step < self.warmup:
            return (step + 1) / self.warmup
        progress = min(1.0, (step - self.warmup) / max(1, self.total - self.warmup))
        return self.floor + (1 - self.floor) * 0.5 * (1 + math.cos(math.pi * progress))


def _param_groups(model: PEPD, cfg: DistillConfig) -> list[dict]:
    """Phase 1 at ``phase1_lr_scale``, the rest at ``lr``; frozen parameters (``freeze_phase1_blocks``) are left
    out, so they get no optimizer state and weight decay never moves them."""
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    phase1 = [p for n, p in trainable if n.startswith("phase1.")]
    rest = [p for n, p in trainable if not n.startswith("phase1.")]
    return [{"params": phase1, "lr": cfg.lr * cfg.phase1_lr_scale}, {"params": rest, "lr": cfg.lr}]


def train(cfg: DistillConfig, reporter: Reporter | None = None) -> dict[str, Any]:
    from accelerate import Accelerator

    from ..shards.reader import resolve_shard_urls

    if not cfg.trajectories or not cfg.out:
        raise ValueError("config needs `trajectories` (teacher_trajectories dir) and `out` (run dir)")
    if cfg.render_backend == "gsplat" and not torch.cuda.is_available():
        raise ValueError(
            "render_backend='gsplat' needs a CUDA GPU and none is visible: run on a GPU machine, or "
            "--set render_backend=auto (the CPU rasterizer here, gsplat on CUDA)"
        )
    resolve_shard_urls(cfg.trajectories, validate=False)  # a missing / non-tar path fails now, not in a worker
    if cfg.torch_threads:
        torch.set_num_threads(cfg.torch_threads)
    # 1. Accelerator and per-rank seeding (seed + rank for model-side randomness)
    # cpu=True on a CUDA-less machine: with LOCAL_RANK set (`accelerate launch --multi_gpu`) Accelerate
    # then initialises gloo (MULTI_CPU); without it every rank would train alone.
    accelerator = Accelerator(
        gradient_accumulation_steps=cfg.grad_accum,
        mixed_precision=cfg.mixed_precision,
        cpu=not torch.cuda.is_available(),
    )
    with run_directory_lock(accelerator, cfg.out):  # before anything is read or written in `out`
        try:
            return _train(accelerator, cfg, reporter)
        except torch.cuda.OutOfMemoryError as e:  # the newest checkpoint stays; a rerun with less memory resumes
            raise RuntimeError(out_of_memory_advice(cfg)) from e


def _train(accelerator, cfg: DistillConfig, reporter: Reporter | None) -> dict[str, Any]:
    from accelerate.utils import set_seed
    from diffusers.training_utils import EMAModel

    from ..shards.reader import make_train_loader, shard_set_manifests
    from ..teacher.loading import load_teacher

    out = Path(cfg.out)
    set_seed(cfg.seed, device_specific=True)
    rank, world = accelerator.process_index, accelerator.num_processes
    reporter = reporter if (reporter is not None and accelerator.is_main_process) else _NoReporter()
    # 2. frozen teacher + student
    weight_dtype = {"no": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[cfg.mixed_precision]
    teacher = load_teacher(cfg.teacher, device=accelerator.device, dtype=weight_dtype)
    set_encoder_checkpointing(teacher, cfg.gradient_checkpointing)  # the SDS term backpropagates through it
    model = build_student(cfg, teacher)
    perceptual = None
    if cfg.perceptual_weights and cfg.perceptual_weight > 0:
        from .perceptual import PerceptualLoss

        perceptual = PerceptualLoss.from_file(cfg.perceptual_weights).to(accelerator.device)
    # 3. optimizer, schedule, EMA; prepare
    opt = torch.optim.AdamW(_param_groups(model, cfg), lr=cfg.lr, weight_decay=cfg.weight_decay, betas=(0.9, 0.99))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _WarmupCosine(cfg.warmup_steps, cfg.steps, cfg.min_lr_ratio))
    model, opt, sched = accelerator.prepare(model, opt, sched)
    ema = EMAModel(accelerator.unwrap_model(model).parameters(), decay=cfg.ema_decay)
    ema.to(accelerator.device)
    # 4. resume
    record: dict[str, Any] = {
        "config": cfg.to_dict(),
        "config_identity": cfg.identity(),
        "history": [],
        "bad_steps": [],
        "world_size": world,
    }
    step = 0

    def say(message: str) -> None:
        accelerator.print(message)
        reporter.log(message)

    resumed = resume(accelerator, model, ema, out, cfg.identity(), say)
    if resumed is not None:
        ckpt, prev = resumed
        step = int(prev["step"])
        record["history"], record["bad_steps"] = prev.get("history", []), prev.get("bad_steps", [])
        accelerator.print(f"resumed from {ckpt} at step {step}")
        reporter.log(f"resumed from {ckpt} at step {step}")
    out.mkdir(parents=True, exist_ok=True)  # every rank: each writes its own skip log and digest here
    n_micro = cfg.batch_size * cfg.grad_accum
    loader = make_train_loader(
        cfg.trajectories,
        cfg.batch_size,
        num_workers=cfg.num_workers,
        shuffle_buffer=cfg.shuffle_buffer,
        epoch_samples=(cfg.steps - step) * n_micro // max(cfg.num_workers, 1) + n_micro,
        seed=cfg.seed * 7919 + step,
        decode="rgba8",
        drop_last=True,
        skip_log=out / f"skipped_rank{rank}.jsonl",
        # a sample off the schema (shape, missing field, non-finite) is skipped and recorded, never batched
        validate_sample=SampleSpec.for_teacher(teacher, recorded_steps(shard_set_manifests(cfg.trajectories))).problems,
    )
    generator = torch.Generator().manual_seed(cfg.seed * 1_000_003 + rank * 10_007 + step)
    # 5. the loop
    from tqdm.auto import tqdm

    from ..progress import Progress

    bar = tqdm(total=cfg.steps, initial=step, disable=not accelerator.is_local_main_process, desc="distill")
    # the reporter's (Dagster run log's) progress lines: at a log step, the first, then every ~30 s, and the last
    progress = Progress("distill", cfg.steps, reporter.log, unit="steps", initial=step, seconds_per_unit=True)
    model.train()
    micro, consecutive_bad, t_last, window = 0, 0, time.perf_counter(), []
    data, batches_this_epoch = iter(loader), 0
    while step < cfg.steps:
        check_parent()  # an orphaned trainer stops here, between steps: no half-written checkpoint
        try:
            raw = next(data)
            batches_this_epoch += 1
        except StopIteration:
            if not batches_this_epoch:  # a new epoch would read the same nothing again
                raise RuntimeError(f"{cfg.trajectories}: an epoch of the reader gave no batch; no progress") from None
            data, batches_this_epoch = iter(loader), 0
            continue
        b = to_batch(raw, accelerator.device)
        with accelerator.accumulate(model):
            losses = compute_losses(model, teacher, b, cfg, step, micro, generator, perceptual)
            finite = torch.tensor(float(bool(torch.isfinite(losses["total"]).item())), device=accelerator.device)
            if accelerator.reduce(finite, reduction="sum").item() < world:  # every rank skips together
                err = NonFiniteLossError({k: float(v.detach()) for k, v in losses.items()}, b["keys"], step)
                record["bad_steps"].append({"step": step, "rank": rank, "error": str(err)})
                accelerator.print(f"WARNING: {err}")
                reporter.log(f"skipped step: {err}")
                opt.zero_grad(set_to_none=True)
                consecutive_bad += 1
                if consecutive_bad >= cfg.max_bad_steps:
                    raise err
                micro += 1
                continue
            consecutive_bad = 0
            accelerator.backward(losses["total"])
            grad_norm = None
            if accelerator.sync_gradients:
                grad_norm = accelerator.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
        micro += 1
        window.append({k: float(v.detach()) for k, v in losses.items()})
        if not accelerator.sync_gradients:
            continue
        ema.step(accelerator.unwrap_model(model).parameters())
        step += 1
        bar.update(1)
        if step % cfg.log_every == 0 or step == cfg.steps:
            now = time.perf_counter()
            mean = {k: sum(w[k] for w in window if k in w) / max(1, sum(k in w for w in window)) for k in window[-1]}
            entry = {
                "step": step,
                **{k: round(v, 6) for k, v in mean.items()},
                "lr": sched.get_last_lr()[-1],
                "grad_norm": float(grad_norm) if grad_norm is not None else None,
                "s_per_step": (now - t_last) / cfg.log_every,
                "time": time.time(),
            }
            t_last, window = now, []
            health = {k: entry[k] for k in ("stat_opacity_mean", "stat_scale_at_bound") if k in entry}
            if health:  # every rank sees the same (mean) numbers, so all stop together
                mean_health = accelerator.reduce(torch.tensor(list(health.values()), device=accelerator.device), "mean")
                check_health(dict(zip(health, mean_health.tolist())), step)  # a collapse stops here: no export
            record["history"].append(entry)
            if accelerator.is_main_process:
                with open(out / "log.jsonl", "a") as f:
                    f.write(json.dumps(entry) + "\n")
            bar.set_postfix(loss=f"{entry['total']:.4f}", rgb=f"{entry['exp_rgb']:.4f}")
            progress.update(
                step - progress.done,
                note=f"total {entry['total']:.5f} rgb {entry['exp_rgb']:.5f}",
                force=step == cfg.steps,
            )
        if step % cfg.checkpoint_every == 0 or step == cfg.steps:
            save_checkpoint(accelerator, model, ema, step, out, record, keep=cfg.keep_checkpoints)
    bar.close()
    progress.close()
    # 6. export the EMA weights (what `dd3g generate` loads) + the raw weights
    accelerator.wait_for_everyone()
    result = export(accelerator, model, ema, cfg, out, record, step)
    if "metadata" in result:  # rank 0 only
        reporter.materialize(result["metadata"], result["data_version"])
    return result


def main(argv: list[str] | None = None, reporter: Reporter | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m dd3g_core.distill.train", description=__doc__.split("\n\n")[0])
    p.add_argument("--config", help='JSON run config: DistillConfig fields, optionally a "preset" to start from')
    p.add_argument(
        "--preset", help="a profile's distill settings instead of a file (tiny, smoke, full, or a profile file)"
    )
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config field")
    args = p.parse_args(argv)
    cfg = load_config(args.config, args.preset, args.set)
    exit_with_parent()  # under Dagster Pipes (or DD3G_EXIT_WITH_PARENT=1) a trainer whose launcher dies stops too
    result = train(cfg, reporter)
    if "metadata" in result:
        print(json.dumps({k: v for k, v in result["metadata"].items() if k != "loss_curve"}))
    return 0


if __name__ == "__main__":  # bad input: one line and exit 2; a bug: one line naming its crash log, exit 1
    from ..cli.errors import run_guarded

    sys.exit(run_guarded(main, "dd3g distill"))
