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

Resuming (:func:`resume`) takes the newest checkpoint that loads. Each is checked before anything
is restored (:func:`checkpoint_problems`: ``trainer_state.json`` parses, every safetensors file is as
long as its header says, every pickle holds only objects ``torch.load(weights_only=True)`` accepts); a
damaged one is moved to ``damaged-step_…`` (kept, never loaded again) and the previous one is tried,
saying so. When none loads, the run starts over from step 0 if no load touched the model, else stops.
"""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from pickle import UnpicklingError  # the exception type only: nothing is unpickled here
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
    "checkpoint_problems",
    "resume",
    "ema_state_dict",
    "ResumeMismatchError",
    "CheckpointDamagedError",
]

CHECKPOINT_RE = re.compile(r"^step_(\d{8})$")
STATE_NAME = "trainer_state.json"
EMA_NAME = "ema.safetensors"
REQUIRED = ("model.safetensors", "optimizer.bin", "scheduler.bin", EMA_NAME)  # Accelerate's save_state + ours
DAMAGED_PREFIX = "damaged-"


class ResumeMismatchError(ValueError):
    """The run directory holds checkpoints of a different config."""


class CheckpointDamagedError(RuntimeError):
    """A checkpoint cannot be loaded (truncated, unreadable, or holding objects dd3g does not load)."""


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


def read_trainer_state(checkpoint: str | Path) -> dict[str, Any]:
    """``trainer_state.json`` of a checkpoint, or :class:`CheckpointDamagedError` saying what is wrong."""
    path = Path(checkpoint) / STATE_NAME
    try:
        record = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointDamagedError(f"{path}: unreadable ({type(e).__name__}: {e})") from None
    if not isinstance(record, dict) or not isinstance(record.get("step"), int):
        raise CheckpointDamagedError(f"{path}: not a trainer state (an object with an integer 'step')")
    m = CHECKPOINT_RE.match(Path(checkpoint).name)
    if m and int(m.group(1)) != record["step"]:
        raise CheckpointDamagedError(f"{path}: says step {record['step']}, its directory says {int(m.group(1))}")
    return record


def checkpoint_problems(checkpoint: str | Path) -> list[str]:
    """What would make loading ``checkpoint`` fail or half-succeed, found without loading it: missing
    files, truncated safetensors, unreadable pickles or pickles holding objects dd3g does not load."""
    checkpoint = Path(checkpoint)
    out = [f"{checkpoint / name}: missing" for name in REQUIRED if not (checkpoint / name).is_file()]
    for p in sorted(checkpoint.iterdir()):
        if p.suffix == ".safetensors":
            problem = _safetensors_problem(p)
        elif p.suffix in (".bin", ".pkl"):
            problem = _pickle_problem(p)
        else:
            continue
        if problem:
            out.append(f"{p}: {problem}")
    return out


def _safetensors_problem(path: Path) -> str | None:
    size = path.stat().st_size
    try:
        with open(path, "rb") as f:
            n = int.from_bytes(f.read(8), "little")
            if size < 8 or n > size - 8:
                return f"truncated ({size} bytes, shorter than its header)"
            header = json.loads(f.read(n))
        end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
    except (OSError, ValueError, TypeError, KeyError, IndexError, AttributeError) as e:
        return f"not a safetensors file ({type(e).__name__})"
    if 8 + n + end != size:
        return f"{'truncated' if size < 8 + n + end else 'damaged'} ({size} bytes, its header says {8 + n + end})"
    return None


def _pickle_problem(path: Path) -> str | None:
    from accelerate.utils.other import TORCH_SAFE_GLOBALS  # what Accelerate's load_state allows besides torch's

    allowed = {f"{g.__module__}.{g.__qualname__}" for g in TORCH_SAFE_GLOBALS}
    try:
        unsafe = torch.serialization.get_unsafe_globals_in_checkpoint(str(path))
    except Exception as e:  # noqa: BLE001 - whatever a truncated or foreign file raises
        return f"unreadable, truncated or not a torch.save file ({type(e).__name__}: {_first_line(e)})"
    blocked = sorted(set(unsafe) - allowed)
    if blocked:
        return f"holds Python objects dd3g does not load ({', '.join(blocked)}); not a checkpoint dd3g wrote"
    return None


def _first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [""])[0][:300]


def load_checkpoint(
    accelerator, model: nn.Module, ema, checkpoint: str | Path, identity: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Restore model/optimizer/scheduler/RNG (Accelerate) and the EMA; returns the trainer record.

    With ``identity`` (``DistillConfig.identity()``), a checkpoint of another config is refused
    with the differing keys before anything is loaded. A checkpoint that fails to load raises
    :class:`CheckpointDamagedError` (a blocked pickle is named as such, without PyTorch's advice to
    turn the safety off)."""
    from safetensors.torch import load_file

    checkpoint = Path(checkpoint)
    record = read_trainer_state(checkpoint)
    if identity is not None:
        theirs = record.get("config_identity", {})
        theirs = theirs if isinstance(theirs, dict) else {}
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
    try:
        accelerator.load_state(str(checkpoint))
        ema_sd = load_file(str(checkpoint / EMA_NAME))
    except UnpicklingError as e:
        blocked = re.findall(r"GLOBAL ([\w.]+)", str(e))
        raise CheckpointDamagedError(
            f"{checkpoint}: holds Python objects dd3g does not load ({', '.join(sorted(set(blocked))) or 'a pickle'}"
            "); not a checkpoint dd3g wrote"
        ) from None
    except Exception as e:  # noqa: BLE001 - truncated / foreign files raise many types
        raise CheckpointDamagedError(f"{checkpoint}: cannot be loaded ({type(e).__name__}: {_first_line(e)})") from None
    names = [n for n, _ in accelerator.unwrap_model(model).named_parameters()]
    if sorted(ema_sd) != sorted(names):
        raise ResumeMismatchError(f"{checkpoint / EMA_NAME} does not match the model's parameters")
    for name, shadow in zip(names, ema.shadow_params):
        shadow.data.copy_(ema_sd[name].to(shadow.device, shadow.dtype))
    ema.optimization_step = int(record.get("ema_optimization_step", record["step"]))
    return record


def resume(
    accelerator, model: nn.Module, ema, out: str | Path, identity: dict[str, Any] | None, say: Callable[[str], None]
) -> tuple[Path, dict[str, Any]] | None:
    """Load the newest checkpoint of ``out`` that loads (collective: every rank loads the same one).

    Returns ``(checkpoint, record)``, or None to start from step 0 (no checkpoint, or none loads and no
    load touched the model). Each damaged checkpoint is reported through ``say`` and moved to
    ``damaged-step_…``; :class:`CheckpointDamagedError` if none loads after a load changed the model."""
    failures: list[str] = []
    touched = False  # did load_state run (it may have restored the model before failing)?
    for _, ckpt in reversed(list_checkpoints(out)):
        problem, record = None, None
        try:
            read_trainer_state(ckpt)
            problems = checkpoint_problems(ckpt)
            if problems:
                raise CheckpointDamagedError("; ".join(problems))
            touched = True
            record = load_checkpoint(accelerator, model, ema, ckpt, identity)
        except CheckpointDamagedError as e:
            problem = str(e)
        if _all_ranks(accelerator, problem is None):
            _set_aside(accelerator, out, failures, ckpt)
            return ckpt, record
        failures.append(problem or f"{ckpt}: another process could not load it")
        say(f"WARNING: checkpoint {ckpt} is damaged ({failures[-1]}); trying the previous one")
    if not failures:
        return None
    if _any_rank(accelerator, touched):
        raise CheckpointDamagedError(
            f"no checkpoint of {out} loads ({' | '.join(failures)}); a failed load may have changed the model, so "
            f"not starting over: move {Path(out) / 'checkpoints'} aside to train from step 0"
        )
    _set_aside(accelerator, out, failures, None)
    say(f"WARNING: no checkpoint of {out} loads; starting over from step 0 (damaged ones kept as {DAMAGED_PREFIX}*)")
    return None


def _all_ranks(accelerator, flag: bool) -> bool:
    t = torch.tensor(float(flag), device=accelerator.device)
    return int(accelerator.reduce(t, reduction="sum").item()) == accelerator.num_processes


def _any_rank(accelerator, flag: bool) -> bool:
    t = torch.tensor(float(flag), device=accelerator.device)
    return int(accelerator.reduce(t, reduction="sum").item()) > 0


def _set_aside(accelerator, out: str | Path, failures: list[str], loaded: Path | None) -> None:
    """Rename the checkpoints newer than ``loaded`` (the damaged ones) to ``damaged-step_…``: kept for a
    look, never resumed from or pruned. Rank 0, once every rank has finished reading them."""
    if not failures:
        return
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        for step, ckpt in list_checkpoints(out):
            if loaded is None or step > int(CHECKPOINT_RE.match(loaded.name).group(1)):
                target, n = ckpt.with_name(DAMAGED_PREFIX + ckpt.name), 1
                while target.exists():
                    target, n = ckpt.with_name(f"{DAMAGED_PREFIX}{ckpt.name}.{n}"), n + 1
                ckpt.rename(target)
    accelerator.wait_for_everyone()
