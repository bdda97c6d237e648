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
    """The shapes a teacher and a cache config imply for every sample of a shard set."""

    num_views: int  # V
    latent: tuple[int, int, int]  # (C, h, w) per slot
    camera_dim: int  # D
    resolution: int  # R of OI
    num_recorded: int  # S

    @classmethod
    def for_teacher(cls, teacher, num_recorded: int) -> SampleSpec:
        f, c, h, w = teacher.latent_shape()
        return cls(
            f - 1,
            (c, h, w),
            int(teacher.cameras().embedding.shape[-1]),
            int(teacher.layout.resolution),
            int(num_recorded),
        )

    def shapes(self) -> dict[str, tuple[int, ...]]:
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
        """What is wrong with one decoded sample (missing fields, shapes, non-finite values); [] if nothing."""
        where = str(sample.get("__key__", "?"))
        out = []
        image = sample.get(INPUT)
        if image is None:
            out.append(f"{where}: missing {INPUT}")
        elif np.asarray(image).ndim != 3 or np.asarray(image).shape[-1] != 4:
            out.append(f"{where}: {INPUT} shape {tuple(np.asarray(image).shape)} is not [H, W, 4]")
        for name, shape in self.shapes().items():
            arr = sample.get(name)
            if arr is None:
                out.append(f"{where}: missing {name}")
            elif tuple(np.shape(arr)) != shape:
                out.append(f"{where}: {name} shape {tuple(np.shape(arr))} != {shape}")
            elif not np.isfinite(np.asarray(arr, dtype=np.float64)).all():
                out.append(f"{where}: {name} has non-finite values")
        return out


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
