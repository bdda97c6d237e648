"""``load_teacher``: open a teacher folder of either kind (the one place that dispatches on it)."""

from __future__ import annotations

from pathlib import Path

import torch

from .interface import MissingWeightsError, MultiViewTeacher

__all__ = ["load_teacher", "teacher_kind"]


def teacher_kind(path: str | Path) -> str:
    """``"imagedream"`` (a diffusers folder with ``model_index.json``) or ``"tiny"`` (``config.json``
    of format ``dd3g-tiny-teacher``)."""
    path = Path(path)
    if (path / "model_index.json").is_file():
        return "imagedream"
    if (path / "config.json").is_file():
        return "tiny"
    raise MissingWeightsError(
        f"{path} is not a teacher folder: expected model_index.json (ImageDream, diffusers layout; see "
        f"docs/teacher.md for what to fetch) or config.json + model.safetensors (tiny teacher, e.g. "
        f"assets/models/tiny-teacher)")


def load_teacher(
    path: str | Path | None = None,  # None: the shipped tiny teacher
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
) -> MultiViewTeacher:
    """A frozen teacher in eval mode with ``requires_grad`` off (distillation never trains it)."""
    from .imagedream import ImageDreamTeacher
    from .tiny import TinyTeacher

    if path is None or teacher_kind(path) == "tiny":
        teacher = TinyTeacher.from_pretrained(path, device=device, dtype=dtype)
    else:
        teacher = ImageDreamTeacher.from_pretrained(path, device=device, dtype=dtype)
    teacher.requires_grad_(False)
    return teacher.eval()

