"""What one distillation step keeps in memory, measured where it can be and counted where it must be.

* :func:`static_memory` — bytes that do not grow with the batch: the student's weights (fp32 master
  weights under mixed precision), their gradients and AdamW's two moments (trainable parameters only:
  ``freeze_phase1_blocks`` removes the rest), the EMA copy the trainer keeps on the device, and the
  frozen teacher's weights (bf16 in the ``full`` profile).
* :class:`SavedTensorBytes` — bytes autograd saves for the backward while code runs
  (``torch.autograd.graph.saved_tensors_hooks``), per storage (a tensor saved twice counts once),
  parameters left out (they are static memory). Saved tensors that are autocast's bf16 copies of
  trainable weights are counted apart (``weight_copies``): they scale with the model, not the batch.
  Scopes (``meter.scope(label)``, :func:`block_scopes`) attribute the bytes to parts of the step.
* :func:`set_encoder_checkpointing` — the other network the step backpropagates through: the implicit (SDS)
  term encodes the renders with the teacher's image encoder (ImageDream: the VAE encoder, whose 256 px
  activations are the largest per-sample item once the student is checkpointed). ``gradient_checkpointing``
  checkpoints it too (diffusers' own per-block checkpointing); the pixel-space tiny teacher has none.
* :func:`synthetic_batch` — a batch with the trainer's shapes (``trajectories.sample.to_batch``) for a
  teacher: object-like discs as II and OI, N from the teacher's own noise.
* :func:`fit_line` / :func:`largest_batch` — peak memory is ``static + per_sample x batch`` to a good
  approximation; two or more measured batch sizes give both, and the largest batch under a budget.

``benchmarks/memory_table.py`` (CPU) and ``benchmarks/gpu_check.py`` (CUDA peak memory) use these; the
numbers are in ``docs/gpu.md``.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor, nn

__all__ = [
    "static_memory",
    "SavedTensorBytes",
    "block_scopes",
    "module_scopes",
    "checkpointable_blocks",
    "set_encoder_checkpointing",
    "synthetic_batch",
    "fit_line",
    "largest_batch",
    "out_of_memory_advice",
]

# autograd nodes that only view or transpose their input: a saved weight is often such a view of the cast copy
_VIEW_NODES = {"TBackward0", "TransposeBackward0", "PermuteBackward0", "ViewBackward0", "UnsafeViewBackward0"}


def _nbytes(params: Iterable[Tensor]) -> int:
    return sum(p.numel() * p.element_size() for p in params)


def static_memory(student: nn.Module, teacher: nn.Module | None = None, ema: bool = True) -> dict[str, int]:
    """Bytes by kind: ``student_weights``, ``gradients`` and ``optimizer`` (AdamW: 2 moments in the weights'
    dtype) of the trainable parameters, ``ema`` (a copy of every weight), ``teacher_weights``."""
    params = list(student.parameters())
    trainable = [p for p in params if p.requires_grad]
    return {
        "student_weights": _nbytes(params),
        "gradients": _nbytes(trainable),
        "optimizer": 2 * _nbytes(trainable),
        "ema": _nbytes(params) if ema else 0,
        "teacher_weights": _nbytes(teacher.parameters()) if teacher is not None else 0,
    }


def _is_weight_copy(t: Tensor) -> bool:
    """A dtype cast of a parameter (autocast's bf16 weight), possibly seen through a transpose or view."""
    fn = t.grad_fn
    while fn is not None and type(fn).__name__ in _VIEW_NODES:
        fn = fn.next_functions[0][0]
    if fn is None or not type(fn).__name__.startswith("ToCopyBackward"):
        return False
    return any(type(n).__name__ == "AccumulateGrad" for n, _ in fn.next_functions if n is not None)


class SavedTensorBytes:
    """``with SavedTensorBytes(params) as meter: loss = step()`` -> ``meter.bytes[(label, kind)]``.

    ``kind`` is ``activations`` or ``weight_copies``; ``label`` is the innermost open scope (``"other"``
    outside any). Tensors are kept as they are (the hooks only look), so the backward still runs."""

    def __init__(self, exclude: Iterable[Tensor] = ()):  # typically every parameter of student and teacher
        self._excluded = {p.untyped_storage().data_ptr() for p in exclude}
        self._seen: set[int] = set()
        self._labels = ["other"]
        self.bytes: dict[tuple[str, str], int] = defaultdict(int)

    def __enter__(self) -> SavedTensorBytes:
        self._hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, lambda t: t)
        self._hooks.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._hooks.__exit__(*exc)

    @contextmanager
    def scope(self, label: str) -> Iterator[None]:
        self.push(label)
        try:
            yield
        finally:
            self.pop()

    def push(self, label: str) -> None:
        self._labels.append(label)

    def pop(self) -> None:
        self._labels.pop()

    def _pack(self, t: Tensor) -> Tensor:
        storage = t.untyped_storage()
        ptr = storage.data_ptr()
        if not ptr or ptr in self._excluded or ptr in self._seen:
            return t
        self._seen.add(ptr)  # saved tensors stay alive until the backward: no address is reused meanwhile
        kind = "weight_copies" if _is_weight_copy(t) else "activations"
        self.bytes[(self._labels[-1], kind)] += storage.nbytes()
        return t

    def total(self, kind: str | None = None, prefix: str = "") -> int:
        return sum(v for (label, k), v in self.bytes.items() if label.startswith(prefix) and kind in (None, k))

    def per_label(self, prefix: str = "") -> dict[str, int]:
        out: dict[str, int] = defaultdict(int)
        for (label, _), v in self.bytes.items():
            if label.startswith(prefix):
                out[label] += v
        return dict(out)


def checkpointable_blocks(student: nn.Module) -> dict[str, nn.Module]:
    """The blocks ``gradient_checkpointing`` recomputes: phase 1's U-Net blocks and phase 2's transformer blocks."""
    from ..model.phase1 import phase1_blocks

    blocks = {f"phase1.{i}": b for i, b in enumerate(phase1_blocks(student.phase1))}
    blocks.update({f"phase2.{i}": b for i, b in enumerate(student.blocks)})
    return blocks


@contextmanager
def module_scopes(meter: SavedTensorBytes, modules: dict[str, nn.Module]) -> Iterator[None]:
    """Attribute saved bytes to ``label`` while ``modules[label]`` runs (forward hooks)."""
    handles = []
    for label, module in modules.items():
        handles.append(module.register_forward_pre_hook(lambda *_, n=label: meter.push(n)))
        handles.append(module.register_forward_hook(lambda *_: meter.pop()))
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def block_scopes(student: nn.Module, meter: SavedTensorBytes):
    """:func:`module_scopes` with ``block:<name>`` for each checkpointable block of the student."""
    return module_scopes(meter, {f"block:{n}": b for n, b in checkpointable_blocks(student).items()})


def set_encoder_checkpointing(teacher, enabled: bool) -> bool:
    """Checkpoint the teacher's latent encoder block by block (same gradients, its activations recomputed in
    the backward); returns whether the teacher has one that supports it."""
    vae = getattr(teacher, "vae", None)
    if vae is None or not getattr(vae, "_supports_gradient_checkpointing", False):
        return False
    if enabled:
        vae.enable_gradient_checkpointing()
    else:
        vae.disable_gradient_checkpointing()
    return True


def synthetic_batch(teacher, batch_size: int, seed: int = 0, device: torch.device | str = "cpu") -> dict[str, Any]:
    """A trainer batch (``to_batch``'s keys and shapes) at the teacher's layout: per sample a coloured disc
    as II (RGBA uint8) and as the V views OI (shifted a little per view, on the teacher's background)."""
    g = torch.Generator().manual_seed(int(seed))
    cams = teacher.cameras()
    res, views = cams.resolution, cams.num_views
    ys, xs = torch.meshgrid(torch.arange(res) + 0.5, torch.arange(res) + 0.5, indexing="ij")
    centre = res * (0.5 + 0.1 * (torch.rand(batch_size, views + 1, 2, generator=g) - 0.5))
    radius = res * (0.2 + 0.1 * torch.rand(batch_size, 1, 1, 1, generator=g))
    inside = (xs - centre[..., 0, None, None]) ** 2 + (ys - centre[..., 1, None, None]) ** 2 <= radius**2
    colour = torch.rand(batch_size, 1, 3, 1, 1, generator=g)
    mask = inside[:, :, None].float()  # [B, V+1, 1, R, R]; slot 0 is II, slots 1.. the views
    background = torch.tensor(teacher.background).reshape(1, 1, 3, 1, 1)
    on_background = mask * colour + (1 - mask) * background
    image = torch.cat([colour.expand(-1, 1, -1, res, res)[:, 0], mask[:, 0]], 1)  # straight RGBA [B, 4, R, R]
    return {
        "keys": [f"synthetic_{seed}_{i}" for i in range(batch_size)],
        "image": (image * 255).round().to(torch.uint8).to(device),
        "noise": teacher.draw_noise(batch_size, seed).float().to(device),
        "cameras": cams.embedding.float().expand(batch_size, -1, -1).to(device),
        "viewmats": cams.viewmats.float().expand(batch_size, -1, -1, -1).to(device),
        "Ks": cams.Ks.float().expand(batch_size, -1, -1, -1).to(device),
        "views": on_background[:, 1:].contiguous().to(device),
    }


def fit_line(points: Sequence[tuple[float, float]]) -> tuple[float, float]:
    """Least-squares ``y = a + b x`` through ``(x, y)`` points (two or more distinct x) -> ``(a, b)``."""
    if len({x for x, _ in points}) < 2:
        raise ValueError(f"need two or more distinct batch sizes to fit a line, got {[x for x, _ in points]}")
    n = len(points)
    mx, my = sum(x for x, _ in points) / n, sum(y for _, y in points) / n
    b = sum((x - mx) * (y - my) for x, y in points) / sum((x - mx) ** 2 for x, _ in points)
    return my - b * mx, b


def largest_batch(static: float, per_sample: float, budget: float) -> int:
    """The largest integer batch with ``static + per_sample x batch <= budget`` (0: not even one sample)."""
    if per_sample <= 0:
        raise ValueError(f"per-sample memory must be > 0, got {per_sample}")
    return max(0, math.floor((budget - static) / per_sample))


def out_of_memory_advice(cfg) -> str:  # cfg: DistillConfig
    """What to change when a step does not fit the GPU (docs/gpu.md has the memory table)."""
    fixes = []
    if not cfg.gradient_checkpointing:
        fixes.append("--set gradient_checkpointing=true (the same loss; one more forward of phase 1 per step)")
    fixes.append("--set freeze_phase1_blocks=13 (phase 1's encoder stays the teacher's)")
    if cfg.batch_size > 1:
        smaller = max(1, cfg.batch_size // 2)
        fixes.append(
            f"--set batch_size={smaller} --set grad_accum={cfg.grad_accum * cfg.batch_size // smaller} "
            "(the same effective batch)"
        )
    return f"CUDA out of memory at batch_size={cfg.batch_size}: try " + "; or ".join(fixes) + " (docs/gpu.md)"
