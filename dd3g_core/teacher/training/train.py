"""Training recipe of the tiny teacher (``pretrain_tiny_teacher``), the CPU analogue of training
ImageDream on Objaverse renders (see ``docs/teacher.md``, "Training the tiny teacher").

One step, batch of B objects from ``data.MultiViewDataset``:

1. condition = ``teacher.encode_condition(input RGBA 64 px)`` (composite on white, antialias
   resize to 32 px, image tokens, ``ip_img``); with probability ``cond_drop`` an object's
   condition is replaced by ``Condition.unconditional()`` (zero image tokens, zero ``ip_img``,
   the shared null text) — classifier-free guidance dropout, as ImageDream.
2. x0 = the V = 4 layout views in pixel space (2x - 1) plus an image slot (overwritten by
   ``ip_img`` inside the U-Net); t ~ U{0..999} per object; N ~ N(0, I) per view;
   x_t = ``sampler.add_noise``; target = ``sampler.training_target`` (the scheduler's
   ``v_prediction``).
3. loss = MSE(U-Net output, target) over the V generated views only (the image slot's output
   is meaningless), AdamW, linear warmup then constant LR (the real run has no fixed length:
   it runs in the background until stopped, so a cosine decay has no end to aim at; once an end
   is chosen, ``cooldown_start`` adds a linear decay, set on resume), gradient
   clipping, EMA of all weights (decay ``min(ema_decay, (1 + step) / (10 + step))``).

Initialisation: the teacher's own seeded init, then (``zero_init``, LDM-style) the last conv of
every ResBlock, every SpatialTransformer3D ``proj_out`` and the U-Net's output conv are set to
zero, so every residual block starts as the identity — faster early training. This lives here,
not in the U-Net class, so a freshly built U-Net (tests, ImageDream loading) is unaffected.

All randomness (init, batch indices, timesteps, noise, dropout masks) comes from one explicit
CPU ``torch.Generator`` whose state is checkpointed, so resuming gives the same subsequent
steps as an uninterrupted run (bitwise on the same machine and thread count, as long as the
data cache does not grow in between: ``MultiViewDataset.refresh`` runs at every checkpoint).

Checkpoints: ``<out>/checkpoints/step_XXXXXXXX/`` written atomically (temp dir + rename) with
``model.safetensors`` (raw weights), ``ema.safetensors``, ``optimizer.safetensors`` (AdamW
moments and step counts) and ``state.json`` (step, generator state, AdamW param groups,
accumulated train time, config, teacher config). No pickle anywhere. The newest
``keep_checkpoints`` are kept; a ``kill -9`` loses at most ``checkpoint_every`` steps. The loss
log ``<out>/log.jsonl`` is cut back to the resumed step. ``export_teacher`` writes the EMA
weights with ``TinyTeacher.save_pretrained``.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ...progress import Progress
from .. import sampler as ddim
from ..tiny import TinyTeacher
from .checkpoint import (
    CKPT_DIR,
    _gen_state_from_str,
    _load_optimizer,
    _truncate_log,
    checkpoint_step,
    export_teacher,
    latest_checkpoint,
    save_checkpoint,
)
from .config import TRAIN_PRESETS, TeacherTrainConfig
from .data import MultiViewDataset, generate_cache

__all__ = [
    "TeacherTrainConfig",
    "TRAIN_PRESETS",
    "pretrain_tiny_teacher",
    "export_teacher",
    "latest_checkpoint",
    "TrainResult",
    "checkpoint_step",
]

LOG_NAME = "log.jsonl"

_log = logging.getLogger(__name__)


@dataclass
class TrainResult:
    out_dir: Path
    step: int
    checkpoint: Path | None
    losses: list[float]  # per step, this call only
    train_time_s: float
    exported: Path | None = None


# ------------------------------------------------------------------------------ helpers


def build_teacher(config: TeacherTrainConfig) -> TinyTeacher:
    teacher = TinyTeacher(unet_config=config.unet_config(), latent_patch=config.latent_patch, seed=config.seed)
    if config.zero_init:
        zero_init_residuals(teacher)
    if config.init_from:
        from ..tiny import default_tiny_teacher_path
        from .grow import grow_unet

        src = TinyTeacher.from_pretrained(
            default_tiny_teacher_path() if config.init_from == "shipped" else config.init_from
        )
        target = config.unet_config()
        grown = grow_unet(src.unet, target.attention_resolutions, target.concat_image)
        if grown.config != teacher.unet.config:
            raise ValueError(
                f"init_from {config.init_from}: its U-Net grown ({grown.config}) differs from the "
                f"configured one ({teacher.unet.config}) beyond attention levels and image concatenation"
            )
        teacher.unet.load_state_dict(grown.state_dict(), strict=True)
        teacher.image_encoder.load_state_dict(src.image_encoder.state_dict(), strict=True)
        with torch.no_grad():
            teacher.null_context.copy_(src.null_context)
    return teacher


def zero_init_residuals(teacher: TinyTeacher) -> None:
    """Zero the last conv of every ResBlock, every transformer ``proj_out`` and the output conv."""
    from ..attention import SpatialTransformer3D
    from ..blocks import ResBlock

    with torch.no_grad():
        for m in teacher.unet.modules():
            if isinstance(m, ResBlock):
                last = m.out_layers[-1]
            elif isinstance(m, SpatialTransformer3D):
                last = m.proj_out
            else:
                continue
            last.weight.zero_()
            if last.bias is not None:
                last.bias.zero_()
        teacher.unet.out[-1].weight.zero_()
        teacher.unet.out[-1].bias.zero_()


def lr_at(config: TeacherTrainConfig, step: int) -> float:
    """Linear warmup over ``warmup_steps``, constant, then the optional linear cooldown (``step`` from 0)."""
    if config.warmup_steps > 0 and step < config.warmup_steps:
        return config.lr * (step + 1) / config.warmup_steps
    start = config.cooldown_start
    if start is None or step < start:
        return config.lr
    frac = 1.0 if config.cooldown_steps <= 0 else min(1.0, (step - start + 1) / config.cooldown_steps)
    return config.lr * (1.0 - frac * (1.0 - config.cooldown_min_ratio))


class _Stop:
    """SIGTERM/SIGINT -> finish the current step, checkpoint, return."""

    def __init__(self) -> None:
        self.requested = False
        self._old: dict[int, Any] = {}

    def __enter__(self) -> _Stop:
        import threading

        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame) -> None:  # noqa: ARG002
        self.requested = True

    def __exit__(self, *exc) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)


# ------------------------------------------------------------------------------ training


def pretrain_tiny_teacher(
    config: TeacherTrainConfig | str = "tiny",
    out_dir: str | Path = "teacher_run",
    resume: bool = True,
    export_to: str | Path | None = None,  # also write the EMA teacher here (save_pretrained) at the end
    max_steps: int | None = None,  # override config.max_steps (e.g. a bounded run)
    on_step: Callable[[int, float], None] | None = None,  # (step, loss) after every step (tests)
    log: Callable[[str], None] | None = None,  # progress lines (None: this module's logger at INFO)
) -> TrainResult:
    """Train (or continue training) the tiny teacher; see the module doc for the recipe.

    Outputs in ``out_dir``: ``checkpoints/``, ``log.jsonl``, ``data/`` (unless ``config.data_dir``),
    ``teacher/`` (EMA export, written at the end). ``resume=False`` starts over (old checkpoints
    and log in ``out_dir`` are removed). ``log`` gets progress lines (data rendering: objects; training:
    steps done / ``max_steps``, s/step, ETA, loss) every ``$DD3G_PROGRESS_SECONDS`` (30 s by default).
    """
    from safetensors.torch import load_file

    cfg = TeacherTrainConfig.preset(config) if isinstance(config, str) else config
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    total_steps = cfg.max_steps if max_steps is None else int(max_steps)
    torch.set_num_threads(max(1, int(cfg.threads)))

    data_dir = Path(cfg.data_dir) if cfg.data_dir else out / "data"
    log = log or _log.info
    if cfg.generate_data:
        generate_cache(data_dir, cfg.num_objects, cfg.shard_size, cfg.render_spec(), progress_log=log)
    data = MultiViewDataset(data_dir, max_objects=cfg.num_objects)

    teacher = build_teacher(cfg)
    teacher.train()
    params = [p for p in teacher.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, betas=tuple(cfg.betas), weight_decay=cfg.weight_decay)
    gen = torch.Generator("cpu").manual_seed(int(cfg.seed) + 1)
    step, train_time = 0, 0.0
    log_path = out / LOG_NAME

    ckpt = latest_checkpoint(out) if resume else None
    if not resume:
        shutil.rmtree(out / CKPT_DIR, ignore_errors=True)
        log_path.unlink(missing_ok=True)
    if ckpt is not None:
        state = json.loads((ckpt / "state.json").read_text())
        teacher.load_state_dict(load_file(str(ckpt / "model.safetensors")), strict=True)
        ema = load_file(str(ckpt / "ema.safetensors"))
        _load_optimizer(opt, load_file(str(ckpt / "optimizer.safetensors")), state["param_groups"])
        gen.set_state(_gen_state_from_str(state["generator_state"]))
        step, train_time = int(state["step"]), float(state["train_time_s"])
        _truncate_log(log_path, step)
    else:
        ema = {k: v.detach().clone() for k, v in teacher.state_dict().items()}

    sched = teacher.scheduler
    num_t = int(sched.config.num_train_timesteps)
    v_views = teacher.num_views
    emb = teacher.cameras().embedding  # [F, D]
    losses: list[float] = []
    window: list[float] = []
    win_t0, win_steps = time.perf_counter(), 0
    last_ckpt = ckpt
    progress = Progress(
        f"teacher training {out.name}", total_steps, log, unit="steps", initial=step, seconds_per_unit=True
    )

    with _Stop() as stop, open(log_path, "a") as log_file:
        if ckpt is None:
            log_file.write(
                json.dumps(
                    {
                        "event": "start",
                        "step": 0,
                        "config": cfg.to_dict(),
                        "objects": len(data),
                        "parameters": sum(p.numel() for p in params),
                    }
                )
                + "\n"
            )
        else:
            log_file.write(
                json.dumps({"event": "resume", "step": step, "from": str(ckpt), "objects": len(data)}) + "\n"
            )
        log_file.flush()
        while step < total_steps and not stop.requested:
            t0 = time.perf_counter()
            b = cfg.batch_size
            idx = torch.randint(0, len(data), (b,), generator=gen)
            t = torch.randint(0, num_t, (b,), generator=gen)
            noise = torch.randn((b, *teacher.latent_shape()), generator=gen)
            drop = torch.rand((b,), generator=gen) < cfg.cond_drop
            inputs, views = data.batch(idx)

            cond = teacher.encode_condition(inputs)
            if cfg.cond_drop > 0:
                cond = cond.drop(drop)
            rgb = views.float().div(255.0)  # [B, V, 3, R, R]
            x0 = teacher.encode_latents(rgb.flatten(0, 1)).unflatten(0, (b, v_views))  # [B, V, C, h, w]
            x0 = torch.cat([x0, torch.zeros_like(x0[:, :1])], dim=1)  # image slot (replaced by ip_img)
            abar = ddim.alpha_bar(sched, t)
            x_t = ddim.add_noise(x0, noise, abar)
            target = ddim.training_target(x0, noise, abar, teacher.prediction_type)
            out_ = ddim.guided_unet_output(teacher.unet, x_t, t, cond, emb.expand(b, -1, -1), 1.0)
            loss = torch.nn.functional.mse_loss(out_[:, :v_views], target[:, :v_views])

            lr = lr_at(cfg, step)
            for g in opt.param_groups:
                g["lr"] = lr
            opt.zero_grad(set_to_none=True)
            loss.backward()
            gnorm = torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip) if cfg.grad_clip > 0 else torch.tensor(0.0)
            opt.step()
            step += 1
            with torch.no_grad():
                decay = min(cfg.ema_decay, (1.0 + step) / (10.0 + step))
                sd = teacher.state_dict()
                for k, e in ema.items():
                    e.lerp_(sd[k].detach(), 1.0 - decay)
            dt = time.perf_counter() - t0
            train_time += dt
            lv = float(loss.detach())
            if not math.isfinite(lv):
                raise FloatingPointError(f"non-finite loss {lv} at step {step}")
            losses.append(lv)
            window.append(lv)
            win_steps += 1
            if on_step is not None:
                on_step(step, lv)
            progress.update(1, note=f"loss {sum(window) / len(window):.4f}", force=step == total_steps)
            if step % cfg.log_every == 0 or step == total_steps:
                el = time.perf_counter() - win_t0
                log_file.write(
                    json.dumps(
                        {
                            "step": step,
                            "loss": sum(window) / len(window),
                            "lr": lr,
                            "grad_norm": float(gnorm),
                            "s_per_step": el / win_steps,
                            "samples_per_s": win_steps * b / el,
                            "objects": len(data),
                            "train_time_s": round(train_time, 2),
                            "time": time.time(),
                        }
                    )
                    + "\n"
                )
                log_file.flush()
                window, win_t0, win_steps = [], time.perf_counter(), 0
            if step % cfg.checkpoint_every == 0 or step == total_steps or stop.requested:
                last_ckpt = save_checkpoint(out, step, teacher, ema, opt, gen, cfg, train_time, cfg.keep_checkpoints)
                data.refresh()
        if stop.requested and (last_ckpt is None or not last_ckpt.name.endswith(f"{step:08d}")):
            last_ckpt = save_checkpoint(out, step, teacher, ema, opt, gen, cfg, train_time, cfg.keep_checkpoints)
        if stop.requested:
            log_file.write(json.dumps({"event": "stopped", "step": step}) + "\n")
    progress.close(f"stopped by a signal at step {step}" if stop.requested else f"step {step}")

    exported = None
    if export_to is not None and last_ckpt is not None:
        exported = export_teacher(last_ckpt, export_to)
    return TrainResult(out, step, last_ckpt, losses, train_time, exported)
