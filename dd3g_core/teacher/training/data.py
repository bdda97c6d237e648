"""Multi-view training data for the tiny teacher, made from the procedural world.

The tiny teacher plays ImageDream, whose training data is Objaverse renders; ours is the
procedural world (DESIGN §2). One training example is one train-split object seed:

* ``input``  uint8 [4, R_in, R_in] — straight-alpha RGBA of the input camera (the layout's
  input view: azimuth 0, elevation 0), rendered at ``input_resolution`` (64 px by default: the
  resolution of the tiny profile's ``rgba_images`` stage, so the teacher sees its inputs the way
  distillation will feed them — composited on white and antialias-resized to 32 px by
  ``TinyTeacher.encode_condition``);
* ``views``  uint8 [V, 3, R, R] — the layout's V views (``ViewLayout("tiny")``: azimuths
  0/90/180/270, elevation 0, radius 1.5, fov 49.1, 32 px) on the teacher's background (white),
  rendered at 2x (64 px) and antialias-resized to 32 px — the same resize the teacher applies
  to its 64 px input, so view 0 (the input camera) equals the teacher's view of its input up to
  uint8 rounding. (Rendering directly at 32 px gives aliased splats: the copy of the resized
  input then scores only ~20 dB against its own camera's render.)

There is no augmentation: the world is already random, and an azimuth jitter of the input
would break the fixed view layout the teacher is trained for.

Cache layout (``generate_cache``): ``<data_dir>/shard_XXXXX/`` with ``input.npy``,
``views.npy`` and ``seeds.npy`` (plain uint8 / int64 arrays; read with ``allow_pickle=False``).
Shard ``i`` holds train seeds ``[i*S, (i+1)*S)`` of the split (``S = shard_size``). Each shard
directory is written atomically (temp dir + rename), so a killed generator never leaves a
half shard, and generation resumes by skipping shards that exist. Several generator processes
can split the shards (``worker``/``num_workers``); ``MultiViewDataset.refresh`` picks up
shards that appeared since the last call, so training can start while the cache still grows.

Cost on this machine: ~25 ms per object (3000 Gaussians, one 4-camera render at 64 px) on one core.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from ...cameras import ViewLayout, get_layout
from ...io import atomic_directory

__all__ = ["RenderSpec", "render_example", "generate_cache", "MultiViewDataset", "list_shards", "shard_name"]

SHARD_RE = re.compile(r"^shard_(\d{5})$")
META_NAME = "cache.json"


@dataclass(frozen=True)
class RenderSpec:
    """How one example is rendered (part of the cache's identity)."""

    layout: str = "tiny"
    input_resolution: int = 64
    num_gaussians: int = 3000
    background: tuple[float, float, float] = (1.0, 1.0, 1.0)
    split: str = "train"
    supersample: int = 2  # views rendered at this multiple of the layout resolution, then resized

    def to_dict(self) -> dict:
        return {
            "layout": self.layout,
            "input_resolution": self.input_resolution,
            "num_gaussians": self.num_gaussians,
            "background": list(self.background),
            "split": self.split,
            "supersample": self.supersample,
        }


def render_example(seed: int, spec: RenderSpec = RenderSpec()) -> tuple[np.ndarray, np.ndarray]:
    """(input uint8 [4, R_in, R_in] RGBA, views uint8 [V, 3, R, R] on the background) of one object.

    The views are rendered at ``supersample`` x the layout resolution, composited on the
    background and antialias-resized to R (``interface.resize_square``, the resize the teacher
    applies to its inputs): supersampled ground truth, and the seen view equals the composited,
    resized input up to uint8 rounding. When ``input_resolution`` equals the supersampled size
    the input is taken from the same render (the layout's input view has the input camera).
    """
    from ...images import resize_square
    from ...render.views import render_rgba, render_views, to_uint8
    from ...world import sample_object

    layout: ViewLayout = get_layout(spec.layout)
    g = sample_object(int(seed), spec.num_gaussians)
    big = layout.resolution * spec.supersample
    viewmats, Ks = layout.cameras(resolution=big)
    premul, alpha = render_views(g, viewmats, Ks, big, background=None)  # [V, S, S, 3] premultiplied, [V, S, S, 1]
    if spec.input_resolution == big and layout.input_view >= 0:
        pm, a = premul[layout.input_view], alpha[layout.input_view]
        straight = torch.where(a > 1e-6, pm / a.clamp_min(1e-6), torch.zeros_like(pm)).clamp(0, 1)
        a8 = to_uint8(a)
        rgba = np.concatenate([np.where(a8 > 0, to_uint8(straight), 0).astype(np.uint8), a8], axis=-1)
    else:
        rgba = render_rgba(
            g,
            azimuth_deg=layout.azimuths_deg[max(layout.input_view, 0)] if layout.input_view >= 0 else 0.0,
            elevation_deg=layout.elevation_deg,
            radius=layout.radius,
            fov_deg=layout.fov_deg,
            resolution=spec.input_resolution,
        )  # [R_in, R_in, 4]
    bg = torch.as_tensor(spec.background, dtype=torch.float32).reshape(1, 1, 1, 3)
    comp = (premul + bg * (1.0 - alpha)).clamp(0, 1).permute(0, 3, 1, 2)  # [V, 3, S, S]
    views = resize_square(comp, layout.resolution).clamp(0, 1)
    return (np.ascontiguousarray(rgba.transpose(2, 0, 1)), np.ascontiguousarray(to_uint8(views)))


def shard_name(index: int) -> str:
    return f"shard_{index:05d}"


def list_shards(data_dir: str | Path) -> list[Path]:
    """Complete shard directories, sorted by index."""
    d = Path(data_dir)
    if not d.is_dir():
        return []
    return sorted(p for p in d.iterdir() if p.is_dir() and SHARD_RE.match(p.name))


def _write_meta(data_dir: Path, spec: RenderSpec, shard_size: int) -> None:
    meta = {"format": "dd3g.teacher_multiview_cache", "version": 1, "spec": spec.to_dict(), "shard_size": shard_size}
    path = data_dir / META_NAME
    if path.exists():
        old = json.loads(path.read_text())
        if old != meta:
            raise ValueError(f"{data_dir} holds a cache made with {old}, not {meta}; use another directory")
        return
    from ...io import atomic_write_json

    atomic_write_json(path, meta)


def generate_cache(
    data_dir: str | Path,
    num_objects: int,
    shard_size: int = 500,
    spec: RenderSpec = RenderSpec(),
    worker: int = 0,
    num_workers: int = 1,
    log: bool = False,
    progress_log: Callable[[str], None] | None = None,
) -> list[Path]:
    """Render the first ``num_objects`` seeds of ``spec.split`` into shards (skipping existing ones).

    ``progress_log``: where progress lines go (objects done / to render, rate, ETA, every
    ``$DD3G_PROGRESS_SECONDS``) when there is something to render."""
    from ...progress import Progress
    from ...world import split_seeds

    data_dir = Path(data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    _write_meta(data_dir, spec, shard_size)
    num_shards = -(-int(num_objects) // int(shard_size))
    todo = [i for i in range(num_shards) if i % num_workers == worker and not (data_dir / shard_name(i)).is_dir()]
    counts = {i: min(shard_size, num_objects - i * shard_size) for i in todo}
    progress = None
    if progress_log is not None and todo:
        progress = Progress(f"teacher data {data_dir}", sum(counts.values()), progress_log, unit="objects")
    written = []
    for i in todo:
        out = data_dir / shard_name(i)
        if out.is_dir():  # appeared since the listing (another process)
            continue
        count = counts[i]
        seeds = split_seeds(spec.split, count, start=i * shard_size)
        inputs, views = zip(*(render_example(s, spec) for s in seeds))
        with atomic_directory(out) as tmp:
            np.save(tmp / "input.npy", np.stack(inputs), allow_pickle=False)
            np.save(tmp / "views.npy", np.stack(views), allow_pickle=False)
            np.save(tmp / "seeds.npy", np.asarray(seeds, dtype=np.int64), allow_pickle=False)
        written.append(out)
        if log:
            print(f"wrote {out} ({count} objects)", flush=True)
        if progress is not None:
            progress.update(count)
    if progress is not None:
        progress.close()
    return written


class MultiViewDataset:
    """In-memory view of a cache directory (all complete shards, in shard order).

    ``batch(indices)`` -> (input uint8 [B, 4, R_in, R_in], views uint8 [B, V, 3, R, R]). Indexing is
    by position in shard order, so with a fixed set of shards it is deterministic.
    """

    def __init__(self, data_dir: str | Path, max_objects: int | None = None):
        self.data_dir = Path(data_dir)
        self.max_objects = max_objects
        self._shards: list[str] = []
        self._inputs: list[np.ndarray] = []
        self._views: list[np.ndarray] = []
        self._seeds: list[np.ndarray] = []
        self.inputs = np.zeros((0, 4, 1, 1), np.uint8)
        self.views = np.zeros((0, 1, 3, 1, 1), np.uint8)
        self.seeds = np.zeros((0,), np.int64)
        self.refresh()
        if len(self) == 0:
            raise FileNotFoundError(f"no complete shards in {self.data_dir} (run generate_cache first)")

    def refresh(self) -> int:
        """Load shards that appeared since the last call (only a contiguous prefix, so indices are
        stable while the cache grows). Returns the number of objects."""
        shards = list_shards(self.data_dir)
        names = [p.name for p in shards]
        expected = [shard_name(i) for i in range(len(names))]
        prefix = 0
        while prefix < len(names) and names[prefix] == expected[prefix]:
            prefix += 1
        new = shards[len(self._shards) : prefix]
        if self.max_objects is not None and len(self) >= self.max_objects:
            new = []
        for p in new:
            self._inputs.append(np.load(p / "input.npy", allow_pickle=False))
            self._views.append(np.load(p / "views.npy", allow_pickle=False))
            self._seeds.append(np.load(p / "seeds.npy", allow_pickle=False))
            self._shards.append(p.name)
            if self.max_objects is not None and sum(len(s) for s in self._seeds) >= self.max_objects:
                break
        if new:
            n = self.max_objects
            self.inputs = np.concatenate(self._inputs)[:n]
            self.views = np.concatenate(self._views)[:n]
            self.seeds = np.concatenate(self._seeds)[:n]
        return len(self)

    def __len__(self) -> int:
        return int(self.seeds.shape[0])

    @property
    def num_shards(self) -> int:
        return len(self._shards)

    def batch(self, indices: Sequence[int] | Tensor | np.ndarray) -> tuple[Tensor, Tensor]:
        idx = np.asarray(indices.cpu() if isinstance(indices, Tensor) else indices, dtype=np.int64)
        return torch.from_numpy(self.inputs[idx]), torch.from_numpy(self.views[idx])

    def mean_views(self, count: int | None = None) -> Tensor:
        """Per-view mean image over the first ``count`` objects: float [V, 3, R, R] in [0, 1]."""
        v = self.views[: count or len(self)]
        return torch.from_numpy(v.astype(np.float64).mean(0)).float() / 255.0
