"""The trajectory sample: one record of the ``teacher_trajectories`` cache, defined once.

The writer (:func:`make_sample`), the trainer (:func:`to_batch`), the checks and the evaluation
(:class:`SampleSpec`, :func:`student_inputs`) all use these names, dtypes and shapes.
F = V + 1 latent slots per object (the last is the image view), (C, h, w) the teacher's latent
shape, R its render resolution, S the number of recorded DDIM states. Arrays are saved with
``allow_pickle=False``.

=================  ========================================  ==================================
field              content                                   dtype / shape
=================  ========================================  ==================================
``input.png``      II, the RGBA image exactly as upstream     uint8 [H, W, 4]
``noise.npy``      N, the initial DDIM state, all slots       float32 [F, C, h, w]
``cameras.npy``    C, the U-Net camera embedding              float32 [F, D] (last row zeros)
``viewmats.npy``   render cameras of the V views (gsplat)     float32 [V, 4, 4] world -> camera
``ks.npy``         their intrinsics Ks (pixels, at OI size)  float32 [V, 3, 3]
``views.npy``      OI, the decoded output views in [0, 1]     ``store_dtype`` [V, 3, R, R]
``xt.npy``         x before DDIM step i, i in ``xt_steps``    ``store_dtype`` [S, F, C, h, w]
``json``           the record (teacher, sampler, seeds, batch; ``dd3g_core.trajectories.cache``)
=================  ========================================  ==================================
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

__all__ = [
    "INPUT",
    "NOISE",
    "CAMERAS",
    "VIEWMATS",
    "KS",
    "VIEWS",
    "XT",
    "RECORD",
    "ARRAY_FIELDS",
    "FIELDS",
    "SampleSpec",
    "recorded_steps",
    "make_sample",
    "to_batch",
    "student_inputs",
]

INPUT = "input.png"
NOISE = "noise.npy"
CAMERAS = "cameras.npy"
VIEWMATS = "viewmats.npy"
KS = "ks.npy"
VIEWS = "views.npy"
XT = "xt.npy"
RECORD = "json"
ARRAY_FIELDS = (NOISE, CAMERAS, VIEWMATS, KS, VIEWS, XT)
FIELDS = (INPUT, *ARRAY_FIELDS, RECORD)


@dataclass(frozen=True)
class SampleSpec:
    """The shapes a teacher and a cache config imply for every sample of a shard set.

    ``problems`` is also the training reader's per-sample validator (``make_train_loader(validate_sample=
    spec.problems)``): a sample it finds anything wrong with is skipped and recorded, never batched."""

    num_views: int  # V
    latent: tuple[int, int, int]  # (C, h, w) per slot
    camera_dim: int  # D
    resolution: int  # R of OI
    num_recorded: int | None  # S; None: unknown (bare .tar paths, no manifest), xt.npy's S is not checked

    @classmethod
    def for_teacher(cls, teacher, num_recorded: int | None) -> SampleSpec:
        f, c, h, w = teacher.latent_shape()
        return cls(
            f - 1,
            (c, h, w),
            int(teacher.cameras().embedding.shape[-1]),
            int(teacher.layout.resolution),
            None if num_recorded is None else int(num_recorded),
        )

    def shapes(self) -> dict[str, tuple[int | None, ...]]:
        v, f = self.num_views, self.num_views + 1
        return {
            NOISE: (f, *self.latent),
            CAMERAS: (f, self.camera_dim),
            VIEWMATS: (v, 4, 4),
            KS: (v, 3, 3),
            VIEWS: (v, 3, self.resolution, self.resolution),
            XT: (self.num_recorded, f, *self.latent),
        }

    def problems(self, sample: Mapping[str, Any]) -> list[str]:
        """What is wrong with one decoded sample (missing fields, dtypes, shapes, non-finite values); [] if
        nothing. Never raises on odd data: whatever a corrupt or foreign sample holds is a problem."""
        where = str(sample.get("__key__", "?"))
        out = []
        image = sample.get(INPUT)
        if image is None:
            out.append(f"{where}: missing {INPUT}")
        elif not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or image.shape[-1] != 4:
            out.append(f"{where}: {INPUT} is {_describe(image)}, not uint8 [H, W, 4]")
        for name, shape in self.shapes().items():
            arr = sample.get(name)
            if arr is None:
                out.append(f"{where}: missing {name}")
            elif not isinstance(arr, np.ndarray) or arr.dtype.kind not in "fiu":
                out.append(f"{where}: {name} is {_describe(arr)}, not a numeric array")
            elif arr.ndim != len(shape) or any(want not in (None, got) for got, want in zip(arr.shape, shape)):
                want = tuple("S" if d is None else d for d in shape)
                out.append(f"{where}: {name} shape {tuple(arr.shape)} != {want}")
            elif arr.dtype.kind == "f" and not np.isfinite(arr).all():  # integers are always finite
                out.append(f"{where}: {name} has non-finite values")
        if not isinstance(sample.get(RECORD), dict):
            out.append(f"{where}: {RECORD} is {_describe(sample.get(RECORD))}, not the sample's record (an object)")
        return out


def _describe(v: Any) -> str:
    if v is None:
        return "missing"
    if isinstance(v, np.ndarray):
        return f"{v.dtype} {list(v.shape)}"
    return f"a {type(v).__name__}"


def recorded_steps(manifests: list[Mapping[str, Any]]) -> int | None:
    """S, the number of recorded DDIM states, from the shard sets' manifests (their cache config's
    ``record_steps``); None if no manifest says. Shard sets that disagree are refused."""
    counts = {
        len(m["config"]["record_steps"])
        for m in manifests
        if isinstance(m.get("config"), Mapping) and isinstance(m["config"].get("record_steps"), list)
    }
    if len(counts) > 1:
        raise ValueError(
            f"the trajectory shard sets record different numbers of DDIM states {sorted(counts)} "
            "(config.record_steps in their manifests); train on shard sets of one cache config"
        )
    return counts.pop() if counts else None


def make_sample(
    key: str,
    image: np.ndarray,  # uint8 [H, W, 4]
    noise: np.ndarray,  # float32 [F, C, h, w]
    cameras: np.ndarray,  # float32 [F, D]
    viewmats: np.ndarray,  # float32 [V, 4, 4]
    Ks: np.ndarray,  # float32 [V, 3, 3]
    views: np.ndarray,  # store dtype [V, 3, R, R]
    xt: np.ndarray,  # store dtype [S, F, C, h, w]
    record: dict,
) -> dict:
    """One sample as ``write_shards`` takes it (field order fixed: it decides the tar's bytes)."""
    return {
        "__key__": key,
        INPUT: image,
        NOISE: noise,
        CAMERAS: cameras,
        VIEWMATS: viewmats,
        KS: Ks,
        VIEWS: views,
        XT: xt,
        RECORD: record,
    }


def to_batch(batch: Mapping[str, Any], device) -> dict[str, Any]:
    """Tensors of a collated batch of samples on ``device`` (the trainer's view of the sample)."""
    for name in (INPUT, NOISE, CAMERAS, VIEWMATS, KS, VIEWS):
        if not isinstance(batch.get(name), torch.Tensor):
            raise ValueError(
                f"batch {list(batch.get('__key__', []))}: field {name} did not stack into one tensor (missing, or "
                "shapes differ between samples); read with make_train_loader(validate_sample=SampleSpec.problems)"
            )
    return {
        "keys": list(batch["__key__"]),
        "image": batch[INPUT].permute(0, 3, 1, 2).contiguous().to(device),  # [B, 4, H, W] uint8
        "noise": batch[NOISE].float().to(device),  # [B, F, C, h, w]
        "cameras": batch[CAMERAS].float().to(device),  # [B, F, D]
        "viewmats": batch[VIEWMATS].float().to(device),  # [B, V, 4, 4]
        "Ks": batch[KS].float().to(device),  # [B, V, 3, 3]
        "views": batch[VIEWS].float().to(device),  # [B, V, 3, R, R] OI
    }


def student_inputs(sample: Mapping[str, Any]) -> dict[str, Any]:
    """One decoded sample as a batch of one (:func:`to_batch` on CPU): what PEPD takes, plus OI."""
    from ..shards.reader import collate_samples

    fields = {k: sample[k] for k in ("__key__", INPUT, NOISE, CAMERAS, VIEWMATS, KS, VIEWS)}
    return to_batch(
        collate_samples([{k: (np.array(v) if isinstance(v, np.ndarray) else v) for k, v in fields.items()}]),
        torch.device("cpu"),
    )
