"""Teacher training checkpoints: atomic safetensors + ``state.json`` (no pickle), resume, export.

A checkpoint is ``<out_dir>/checkpoints/step_XXXXXXXX/`` with ``model.safetensors``,
``ema.safetensors``, ``optimizer.safetensors`` and ``state.json`` (step, optimizer param groups,
generator state, configs); it is written under a temporary directory and renamed.
"""

from __future__ import annotations

import base64
import json
import shutil
import time
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from ...io import atomic_directory, atomic_write_bytes
from ..tiny import TinyTeacher

if TYPE_CHECKING:
    from .config import TeacherTrainConfig

CKPT_DIR = "checkpoints"


def latest_checkpoint(out_dir: str | Path) -> Path | None:
    d = Path(out_dir) / CKPT_DIR
    if not d.is_dir():
        return None
    cands = sorted(p for p in d.iterdir() if p.is_dir() and p.name.startswith("step_") and (p / "state.json").is_file())
    return cands[-1] if cands else None


def _gen_state_to_str(gen: torch.Generator) -> str:
    return base64.b64encode(gen.get_state().numpy().tobytes()).decode()


def _gen_state_from_str(s: str) -> Tensor:
    import numpy as np

    return torch.from_numpy(np.frombuffer(base64.b64decode(s), dtype=np.uint8).copy())


def _optimizer_tensors(opt: torch.optim.Optimizer) -> tuple[dict[str, Tensor], list[dict]]:
    sd = opt.state_dict()
    tensors = {}
    for idx, st in sd["state"].items():
        for k, v in st.items():
            t = v if isinstance(v, Tensor) else torch.tensor(v)
            tensors[f"{idx}.{k}"] = t.detach().cpu().contiguous()
    groups = [{k: (list(v) if isinstance(v, tuple) else v) for k, v in g.items()} for g in sd["param_groups"]]
    return tensors, groups


def _load_optimizer(opt: torch.optim.Optimizer, tensors: Mapping[str, Tensor], groups: list[dict]) -> None:
    state: dict[int, dict[str, Tensor]] = {}
    for key, t in tensors.items():
        idx, name = key.split(".", 1)
        state.setdefault(int(idx), {})[name] = t
    for g in groups:
        if "betas" in g:
            g["betas"] = tuple(g["betas"])
    opt.load_state_dict({"state": state, "param_groups": groups})


def save_checkpoint(
    out_dir: Path,
    step: int,
    teacher: TinyTeacher,
    ema: dict[str, Tensor],
    opt: torch.optim.Optimizer,
    gen: torch.Generator,
    config: TeacherTrainConfig,
    train_time_s: float,
    keep: int,
) -> Path:
    from safetensors.torch import save_file

    path = out_dir / CKPT_DIR / f"step_{step:08d}"
    opt_tensors, groups = _optimizer_tensors(opt)
    with atomic_directory(path) as tmp:
        save_file({k: v.detach().contiguous() for k, v in teacher.state_dict().items()}, str(tmp / "model.safetensors"))
        save_file({k: v.contiguous() for k, v in ema.items()}, str(tmp / "ema.safetensors"))
        save_file(opt_tensors, str(tmp / "optimizer.safetensors"))
        state = {
            "step": step,
            "generator_state": _gen_state_to_str(gen),
            "param_groups": groups,
            "train_time_s": train_time_s,
            "config": config.to_dict(),
            "teacher_config": teacher.to_config(),
            "torch_version": torch.__version__,
            "saved_at": time.time(),
        }
        atomic_write_bytes(tmp / "state.json", (json.dumps(state, indent=1) + "\n").encode())
    ckpts = sorted(p for p in (out_dir / CKPT_DIR).iterdir() if p.is_dir() and p.name.startswith("step_"))
    for old in ckpts[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    return path


def _truncate_log(log_path: Path, step: int) -> None:
    """Drop log lines past ``step`` (they belong to steps the resumed run will redo)."""
    if not log_path.exists():
        return
    keep = []
    for line in log_path.read_text().splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue  # a torn last line of a killed run
        if rec.get("step", 0) <= step:
            keep.append(line)
    atomic_write_bytes(log_path, ("\n".join(keep) + "\n" if keep else "").encode())


def export_teacher(checkpoint: str | Path, out: str | Path, use_ema: bool = True) -> Path:
    """Write a checkpoint's EMA (or raw) weights as a ``TinyTeacher.save_pretrained`` folder.

    ``checkpoint``: a ``step_*`` directory or a training ``out_dir`` (its latest checkpoint).
    """
    from safetensors.torch import load_file

    ck = Path(checkpoint)
    if not (ck / "state.json").is_file():
        latest = latest_checkpoint(ck)
        if latest is None:
            raise FileNotFoundError(
                f"no teacher training checkpoint in {ck} (expected state.json or {CKPT_DIR}/step_*/state.json)"
            )
        ck = latest
    state = json.loads((ck / "state.json").read_text())
    teacher = TinyTeacher.from_config(state["teacher_config"])
    sd = load_file(str(ck / ("ema.safetensors" if use_ema else "model.safetensors")))
    return teacher.save_pretrained(out, state_dict=sd)


def checkpoint_step(checkpoint: str | Path) -> int:
    return int(json.loads((Path(checkpoint) / "state.json").read_text())["step"])
