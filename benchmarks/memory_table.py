"""Memory of one full-size distillation step, by kind, per memory option, measured on a CPU (docs/gpu.md).

    python benchmarks/memory_table.py [--threads 2] [--out memory.json]       # ~4 min on 2 cores, ~20 GB RAM

Models: the ``full`` profile's student (PEPD ``full``) and a random-weight ImageDream at full size
(``gpu_world.random_imagedream``, bf16), as ``train`` holds them on a GPU. Counted exactly from the models:
the student's fp32 master weights, gradients and AdamW moments of the trainable parameters, the EMA copy,
the teacher's bf16 weights. Measured: bytes autograd saves for the backward (``SavedTensorBytes``) in one
``compute_losses`` call at batch 1 under bf16 autocast around the student (what Accelerate does), split
into the student's forward and the rest (renders, the VAE encoding of the SDS term, losses), and the
student's forward again for each option, and the VAE encoding of one sample's renders (the SDS term) with and
without its checkpointing. With gradient checkpointing a forward keeps only each block's input; the backward
then recomputes one block at a time, so the largest block's own saved bytes (measured without checkpointing)
are added as its peak. Autocast's bf16 copies of the trainable weights live through the whole forward (and
through the backward without checkpointing): counted as 2 bytes per trainable weight.

Not counted (the GPU measures them: ``gpu_check.py``): gsplat's buffers (the CPU rasterizer's saved tensors
stand in for them), gradient buffers alive during the backward, cuBLAS/cuDNN workspaces, the CUDA context
and the allocator's fragmentation; hence the 90% budget per card. Activations are taken as linear in the
batch (measured at batch 1).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE)]

from gpu_check_steps import AutocastStudent  # noqa: E402
from gpu_world import random_imagedream, student_for  # noqa: E402

from dd3g_core.distill.memory import (  # noqa: E402
    SavedTensorBytes,
    block_scopes,
    largest_batch,
    module_scopes,
    set_encoder_checkpointing,
    static_memory,
    synthetic_batch,
)
from dd3g_core.distill.train import compute_losses  # noqa: E402
from dd3g_core.model.phase1 import phase1_blocks  # noqa: E402
from dd3g_core.profiles import get_profile  # noqa: E402

GiB = 2**30
CARDS_GB = (24, 48, 80)
HEADROOM = 0.9


class _Scoped(AutocastStudent):
    """The autocast student under a meter scope, so its saved bytes are told apart from the rest of the step."""

    def __init__(self, module, meter: SavedTensorBytes):
        super().__init__(module, "cpu", torch.bfloat16)
        self.meter = meter

    def forward(self, *args, **kwargs):
        with self.meter.scope("student"):
            return super().forward(*args, **kwargs)


def _parameters(student, teacher) -> dict[str, int]:
    count = lambda mods: sum(p.numel() for m in mods for p in m.parameters())  # noqa: E731
    p1 = student.phase1
    return {
        "student": count([student]),
        "phase1_embeddings": count(
            [m for m in (p1.time_embed, p1.camera_embed, getattr(p1, "image_embed", None)) if m]
        ),
        "phase1_encoder": count([p1.input_blocks]),
        "phase1_middle": count([p1.middle_block]),
        "phase1_decoder": count([p1.output_blocks]),
        "phase2_and_heads": count([student]) - count([p1]),
        **{f"teacher_{n}": count([getattr(teacher, n)]) for n in ("unet", "vae", "text_encoder", "image_encoder")},
    }


def _student_forward(student, teacher, batch, condition, meter_args) -> SavedTensorBytes:
    """Saved bytes of the student's forward alone (autocast bf16), per block."""
    wrapped = AutocastStudent(student, "cpu", torch.bfloat16)
    with SavedTensorBytes(meter_args) as meter, block_scopes(student, meter):
        wrapped(batch["noise"], batch["cameras"], condition, batch["image"], batch["viewmats"], batch["Ks"], 256)
    return meter


def _encoder_saved(teacher, views: int, every_weight) -> tuple[int, int]:
    """Bytes the SDS term's VAE encoding of one sample's renders keeps for the backward: (plain, checkpointed,
    the latter with the largest block's own bytes added for its recomputation)."""
    renders = torch.rand(views, 3, 256, 256, requires_grad=True)
    blocks = {f"vae:{i}": b for i, b in enumerate([*teacher.vae.encoder.down_blocks, teacher.vae.encoder.mid_block])}
    with SavedTensorBytes([*every_weight, renders]) as plain, module_scopes(plain, blocks):
        teacher.encode_latents(renders)
    set_encoder_checkpointing(teacher, True)
    with SavedTensorBytes([*every_weight, renders]) as ckpt:
        teacher.encode_latents(renders)
    set_encoder_checkpointing(teacher, False)
    return plain.total(), ckpt.total() + max(plain.per_label(prefix="vae:").values())


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", help="write the numbers as JSON here")
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    t0 = time.perf_counter()
    cfg = get_profile("full").distill.replace(render_backend="cpu")
    teacher = random_imagedream("cpu", torch.bfloat16)
    student = student_for(teacher, cfg, "cpu")
    params = _parameters(student, teacher)
    every_weight = [*student.parameters(), *teacher.parameters()]
    batch = synthetic_batch(teacher, 1, seed=1)
    encoder = len(student.phase1.input_blocks) + 1
    every_block = len(phase1_blocks(student.phase1))
    print(f"models built in {time.perf_counter() - t0:.0f} s; parameters: {json.dumps(params)}", flush=True)

    # 1. the whole step at batch 1, default options: the student's share and the rest
    meter = SavedTensorBytes(every_weight)
    with meter, block_scopes(student, meter), module_scopes(meter, {"vae_encoder": teacher.vae.encoder}):
        step = cfg.implicit_ramp[1]  # the ramp at 1: the SDS term runs too
        losses = compute_losses(_Scoped(student, meter), teacher, batch, cfg, step, 0, torch.Generator().manual_seed(0))
    vae, rest = meter.total(prefix="vae_encoder"), meter.total(prefix="other") + meter.total(prefix="vae_encoder")
    print(f"step measured in {time.perf_counter() - t0:.0f} s: loss {float(losses['total'].detach()):.4f}", flush=True)
    del losses
    with torch.no_grad():
        condition = teacher.encode_condition(batch["image"])
    vae_plain, vae_ckpt = _encoder_saved(teacher, batch["views"].shape[1], every_weight)
    print(f"VAE encoder of one sample's renders: {vae_plain / GiB:.2f} GiB kept, {vae_ckpt / GiB:.2f} checkpointed")

    # 2. the student's forward per option: (checkpointing, frozen blocks)
    options = {
        "default": (False, 0),
        "checkpointing": (True, 0),
        f"checkpointing + freeze {encoder} (U-Net encoder)": (True, encoder),
        f"checkpointing + freeze {every_block} (all of phase 1)": (True, every_block),
    }
    rows = {}
    for label, (checkpointing, frozen) in options.items():
        student.requires_grad_(True)
        student.freeze_phase1(frozen)
        student.set_gradient_checkpointing(False)
        plain = meter if label == "default" else _student_forward(student, teacher, batch, condition, every_weight)
        kept_plain = plain.total(prefix="student") + plain.total(prefix="block:")
        copies = plain.total("weight_copies", prefix="student") + plain.total("weight_copies", prefix="block:")
        acts = kept_plain - copies
        if checkpointing:
            student.set_gradient_checkpointing(True)
            ckpt = _student_forward(student, teacher, batch, condition, every_weight)
            recompute = max(plain.per_label(prefix="block:").values(), default=0)  # one block's, in the backward
            acts, copies = ckpt.total("activations") + recompute, ckpt.total("weight_copies")
        static = static_memory(student, teacher)
        # autocast caches a bf16 copy of every trainable weight for the whole forward: kept for the backward
        # without checkpointing (measured), only until the forward ends with it (counted)
        copies = max(copies, static["gradients"] // 2)
        vae_kept = vae_ckpt if checkpointing else vae
        per_sample = acts + rest - vae + vae_kept
        fixed = sum(static.values()) + copies
        rows[label] = {
            **static,
            "weight_copies": copies,
            "student_activations": acts,
            "vae_encoder_activations": vae_kept,
            "renders_losses_activations": rest - vae,
            "per_sample": per_sample,
            "largest_batch": {gb: largest_batch(fixed, per_sample, HEADROOM * gb * GiB) for gb in CARDS_GB},
        }
        shown = {k: (round(v / GiB, 2) if isinstance(v, int) else v) for k, v in rows[label].items()}
        print(f"{label}: {json.dumps(shown)}", flush=True)
    student.requires_grad_(True)
    student.freeze_phase1(0)
    student.set_gradient_checkpointing(False)

    columns = {
        "weights": "student_weights",
        "grads": "gradients",
        "AdamW": "optimizer",
        "EMA": "ema",
        "teacher": "teacher_weights",
        "bf16 copies": "weight_copies",
        "student act.": "student_activations",
        "VAE enc. act.": "vae_encoder_activations",
        "renders+losses act.": "renders_losses_activations",
        "per sample": "per_sample",
    }
    print("\n| option | " + " | ".join(columns) + " | " + " | ".join(f"batch in {gb} GB" for gb in CARDS_GB) + " |")
    print("|---" * (1 + len(columns) + len(CARDS_GB)) + "|")
    for label, r in rows.items():
        cells = [f"{r[k] / GiB:.2f}" for k in columns.values()] + [str(r["largest_batch"][gb]) for gb in CARDS_GB]
        print(f"| {label} | " + " | ".join(cells) + " |")
    print(f"\n(GiB; budget per card: {HEADROOM:.0%} of its memory; {time.perf_counter() - t0:.0f} s)")
    if a.out:
        Path(a.out).write_text(json.dumps({"parameters": params, "options": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
