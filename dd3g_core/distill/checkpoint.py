"""Checkpoints of a distillation run: Accelerate's ``save_state`` plus our EMA and trainer record.

Layout of ``<out>/checkpoints/step_XXXXXXXX/``:

* Accelerate's state (``save_state``): ``model.safetensors``, ``optimizer.bin``, ``scheduler.bin``,
  ``random_states_<rank>.pkl``. Accelerate writes the last three with ``torch.save`` and reads
  them back with ``torch.load(weights_only=True)`` (plus an allow-list of numpy types), so no
  arbitrary pickle is ever executed. We never register custom objects, which Accelerate would
  load with ``weights_only=False``.
* ``ema.safetensors`` — the EMA weights by parameter name; ``trainer_state.json`` — step, EMA
  step, the run's config and its loss history.

A checkpoint directory is written under ``.tmp-step_…`` and renamed when complete, so a run
killed mid-save (``kill -9``) leaves the previous checkpoint as the latest; the stale temp dir
is removed at the next save.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..io import atomic_write_json

__all__ = [
    "CHECKPOINT_RE",
    "list_checkpoints",
    "latest_checkpoint",
    "save_checkpoint",
    "load_checkpoint",
    "ema_state_dict",
    "ResumeMismatchError",
]

CHECKPOINT_RE = re.compile(r"^step_(\d{8})$")
STATE_NAME = "trainer_state.json"
EMA_NAME = "ema.safetensors"


class ResumeMismatchError(ValueError):
    """The run directory holds checkpoints of a different config."""


def list_checkpoints(out: str | Path) -> list[tuple[int, Path]]:
    root = Path(out) / "checkpoints"
    if not root.is_dir():
        return []
    found = []
    for d in root.iterdir():
        m = CHECKPOINT_RE.match(d.name)
        if m and d.is_dir() and (d / STATE_NAME).is_file():
            found.append((int(m.group(1)), d))
    return sorted(found)


def latest_checkpoint(out: str | Path) -> Path | None:
    ckpts = list_checkpoints(out)
    return ckpts[-1][1] if ckpts else None


def ema_state_dict(model: nn.Module, ema) -> dict[str, torch.Tensor]:
    """EMA shadow parameters keyed by the model's parameter names."""
    names = [n for n, _ in model.named_parameters()]
    return {n: p.detach().cpu().contiguous() for n, p in zip(names, ema.shadow_params)}


def save_checkpoint(
    accelerator, model: nn.Module, ema, step: int, out: str | Path, record: dict[str, Any], keep: int = 2
) -> Path:
    """Collective: every rank calls it (Accelerate saves per-rank RNG states)."""
    from safetensors.torch import save_file

    root = Path(out) / "checkpoints"
    final = root / f"step_{step:08d}"
    tmp = root / f".tmp-step_{step:08d}"
    if accelerator.is_main_process:
        for stale in root.glob(".tmp-step_*") if root.is_dir() else []:
            shutil.rmtree(stale, ignore_errors=True)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp), safe_serialization=True)
    if accelerator.is_main_process:
        save_file(ema_state_dict(accelerator.unwrap_model(model), ema), str(tmp / EMA_NAME))
        atomic_write_json(
            tmp / STATE_NAME, {**record, "step": step, "ema_optimization_step": int(ema.optimization_step)}
        )
        if final.exists():
            shutil.rmtree(final)
        tmp.rename(final)
        for _, old in list_checkpoints(out)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def load_checkpoint(
    accelerator, model: nn.Module, ema, checkpoint: str | Path, identity: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Restore model/optimizer/scheduler/RNG (Accelerate) and the EMA; returns the trainer record.

    With ``identity`` (``DistillConfig.identity()``), a checkpoint of another config is refused
    with the differing keys before anything is loaded."""
    from safetensors.torch import load_file

    checkpoint = Path(checkpoint)
    record = json.loads((checkpoint / STATE_NAME).read_text())
    if identity is not None:
        theirs = record.get("config_identity", {})
        diff = {
            k: (identity.get(k), theirs.get(k))
            for k in sorted(set(identity) | set(theirs))
            if identity.get(k) != theirs.get(k)
        }
        if diff:
            raise ResumeMismatchError(
                f"{checkpoint} belongs to a run with another config; differing keys "
                f"(this run, checkpoint): {diff}. Use a new --out or delete the run."
            )
    accelerator.load_state(str(checkpoint))
    ema_sd = load_file(str(checkpoint / EMA_NAME))
    names = [n for n, _ in accelerator.unwrap_model(model).named_parameters()]
    if sorted(ema_sd) != sorted(names):
        raise ResumeMismatchError(f"{checkpoint / EMA_NAME} does not match the model's parameters")
    for name, shadow in zip(names, ema.shadow_params):
        shadow.data.copy_(ema_sd[name].to(shadow.device, shadow.dtype))
    ema.optimization_step = int(record.get("ema_optimization_step", record["step"]))
    return record
