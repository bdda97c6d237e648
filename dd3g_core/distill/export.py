"""The end of a distillation run: ``<out>/pepd/`` (the EMA weights, what ``dd3g generate`` loads, plus the
raw weights), per-rank parameter digests and ``result.json`` with the materialization's metadata."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from ..io import atomic_write_json
from ..shards import count_skips

__all__ = ["export"]


def export(accelerator, model, ema, cfg, out: Path, record: dict[str, Any], step: int) -> dict[str, Any]:
    """Collective: every rank writes its parameter digest; rank 0 writes ``pepd/`` and ``result.json`` and
    gets the Dagster metadata (``result["metadata"]``) and data version back."""
    from ..io import sha256_file
    from ..weights import state_dict_digest
    from .checkpoint import ema_state_dict

    unwrapped = accelerator.unwrap_model(model)
    digest = state_dict_digest([unwrapped])  # ranks compare these: DDP must keep them identical
    atomic_write_json(
        out / f"param_digest_rank{accelerator.process_index}.json",
        {"step": step, "digest": digest, "world_size": accelerator.num_processes},
    )
    result: dict[str, Any] = {"step": step, "out": str(out), "pepd": str(out / "pepd")}
    if accelerator.is_main_process:
        from safetensors.torch import save_file

        raw_sd = {k: v.detach().cpu().contiguous() for k, v in unwrapped.state_dict().items()}
        extra = {
            "teacher": cfg.teacher or "tiny (assets/models/tiny-teacher)",
            "train_step": step,
            "distill_config": cfg.to_dict(),
        }
        unwrapped.save_pretrained(out / "pepd", state_dict={**raw_sd, **ema_state_dict(unwrapped, ema)}, extra=extra)
        save_file(raw_sd, str(out / "pepd" / "model_raw.safetensors"))
        weights_sha = sha256_file(out / "pepd" / "model.safetensors")
        skipped = sum(count_skips(p) for p in out.glob("skipped_rank*.jsonl"))
        hist = record["history"]
        result.update(
            {
                "data_version": weights_sha[:16],
                "metadata": {
                    "checkpoint": str(out / "pepd"),
                    "step": step,
                    "world_size": accelerator.num_processes,
                    "final_loss": hist[-1]["total"] if hist else math.nan,
                    "final_rgb_mse": hist[-1]["exp_rgb"] if hist else math.nan,
                    "loss_curve": [[h["step"], h["total"]] for h in hist],
                    "parameters": unwrapped.num_parameters(),
                    "bad_steps": len(record["bad_steps"]),
                    "skipped_samples": skipped,
                    "weights_sha256": weights_sha,
                },
            }
        )
        atomic_write_json(out / "result.json", result)
    return result
