"""The one teacher loader: describe a teacher folder of either kind, and open it.

* :func:`describe_teacher_folder` validates a folder without running it (tiny: config + strict
  weights; ImageDream: every component, configs, the U-Net's state-dict layout) and returns its
  record: path, kind and content hash (what the ``teacher`` asset materializes).
* :func:`load_teacher` opens a folder as a frozen teacher; given the recorded content hash it first
  checks that the folder still holds those bytes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ..io import tree_sha256
from .interface import MissingWeightsError, MultiViewTeacher

__all__ = [
    "load_teacher",
    "teacher_kind",
    "describe_teacher_folder",
    "verify_teacher_folder",
    "TeacherChangedError",
    "resolve_device",
]

KINDS = ("tiny", "imagedream")


class TeacherChangedError(RuntimeError):
    """The teacher folder no longer holds the bytes its record was made from."""


def teacher_kind(path: str | Path) -> str:
    """``"imagedream"`` (a diffusers folder with ``model_index.json``) or ``"tiny"`` (``config.json``
    of format ``dd3g.tiny_teacher``)."""
    path = Path(path)
    if (path / "model_index.json").is_file():
        return "imagedream"
    if (path / "config.json").is_file():
        return "tiny"
    raise MissingWeightsError(
        f"{path} is not a teacher folder: expected model_index.json (ImageDream, diffusers layout; see "
        f"docs/teacher.md for what to fetch) or config.json + model.safetensors (tiny teacher, e.g. "
        f"assets/models/tiny-teacher)"
    )


def resolve_device(device: str | torch.device | None) -> torch.device | None:
    """``"auto"``: the first CUDA device when there is one, else the CPU; anything else as given."""
    if device in (None, "auto"):
        return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
    return torch.device(device)


def describe_teacher_folder(
    path: str | Path,
    kind: str | None = None,  # the kind the caller expects (None: whatever the folder holds)
    hash_cache: str | Path | None = None,  # see ``dd3g_core.io.tree_sha256``
) -> dict[str, Any]:
    """Validate a teacher folder without running it and return its record:
    ``{"path", "kind", "content_hash", "files", "bytes", ...}`` (tiny adds ``config_hash``, the
    teacher's ``config_hash()``; ImageDream adds the U-Net config and parameter count)."""
    from .imagedream import check_imagedream_folder, resolve_imagedream_path
    from .tiny import TinyTeacher

    if kind is not None and kind not in KINDS:
        raise ValueError(f"teacher kind must be one of {KINDS}, got {kind!r}")
    root = Path(path).expanduser()
    if kind == "imagedream" or (kind is None and not root.exists()):
        root = resolve_imagedream_path(path)  # a local folder or a repo id already in the HF cache
    if not root.is_dir():
        raise MissingWeightsError(f"teacher folder {root} does not exist")
    found = teacher_kind(root)
    if kind is not None and found != kind:
        raise MissingWeightsError(
            f"{root} holds a {found} teacher, but this profile expects a {kind} teacher "
            f"(see dd3g_core.profiles and docs/teacher.md)"
        )
    record: dict[str, Any] = {"path": str(root.resolve()), "kind": found}
    if found == "tiny":
        teacher = TinyTeacher.from_pretrained(root)  # validates config + weights strictly
        record.update(
            config_hash=teacher.config_hash(),
            parameters=sum(p.numel() for p in teacher.parameters()),
            default_steps=teacher.default_steps,
            default_guidance=teacher.default_guidance,
        )
    else:
        info = check_imagedream_folder(root)
        record.update(unet=info["unet"], unet_parameters=info["unet_parameters"])
    tree = tree_sha256(root, cache=hash_cache)
    record.update(content_hash=tree["sha256"], files=tree["files"], bytes=tree["bytes"])
    return record


def verify_teacher_folder(path: str | Path, content_hash: str, hash_cache: str | Path | None = None) -> None:
    """Raise :class:`TeacherChangedError` unless ``path`` still holds the bytes its record hashed."""
    now = tree_sha256(path, cache=hash_cache)["sha256"]
    if now != content_hash:
        raise TeacherChangedError(
            f"teacher folder {path} changed since it was recorded (content hash {now[:16]}, "
            f"recorded {content_hash[:16]}): materialize the teacher asset again"
        )


def load_teacher(
    path: str | Path | None = None,  # None: the shipped tiny teacher
    device: torch.device | str | None = None,  # "auto": CUDA when available
    dtype: torch.dtype | None = None,
    content_hash: str | None = None,  # the recorded ``describe_teacher_folder`` hash to verify first
    hash_cache: str | Path | None = None,
) -> MultiViewTeacher:
    """A frozen teacher in eval mode with ``requires_grad`` off (distillation never trains it)."""
    from .imagedream import ImageDreamTeacher
    from .tiny import TinyTeacher

    if content_hash is not None:
        if path is None:
            raise ValueError("content_hash needs the teacher path it was recorded for")
        verify_teacher_folder(path, content_hash, hash_cache)
    device = resolve_device(device) if device == "auto" else device
    if path is None or teacher_kind(path) == "tiny":
        teacher = TinyTeacher.from_pretrained(path, device=device, dtype=dtype)
    else:
        teacher = ImageDreamTeacher.from_pretrained(path, device=device, dtype=dtype)
    teacher.requires_grad_(False)
    # channels-last convolutions: oneDNN (CPU) and cuDNN (tensor cores) run them without a layout reorder
    # per call; 1.24x on the tiny teacher's sampling on 2 CPU cores (docs/experiments/pipeline_runs.md)
    teacher.unet.to(memory_format=torch.channels_last)
    return teacher.eval()
