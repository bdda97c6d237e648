"""Teacher trajectory caching throughput, the teacher's share of it, and the shard reader's rate.

    python benchmarks/cache_throughput.py [--teacher DIR] [--images 8] [--workers 2] [--threads N]

1. Caching: one ``rgba_images`` shard of the ``tiny`` synthesis preset with ``--images`` images
   (64 px procedural objects) goes through ``trajectories.cache_shard`` with the ``tiny`` cache
   preset (K = 4 noise draws, 25 DDIM steps, x_t at 4 steps, 16 pairs per ``teacher.sample`` call).
   samples/s = cached samples / wall time of ``cache_shard`` (decode, noise, sampling, encoding,
   hashing, writing). The teacher's share = time inside ``teacher.unet`` forwards (pre/post
   forward hooks, ``time.perf_counter``) / that wall time.
   ``BAR cache_teacher_share <share> 0.90 PASS|FAIL``.
2. Reader: ``dd3g_core.shards.make_train_loader`` over the cached shard set with ``--workers`` DataLoader
   workers (resampled, shuffled, every field decoded, batches of 16), samples/s over
   ``--reader-samples`` samples per worker, worker start-up included. Training does not exist yet,
   so its consumption rate (the 10x bar of issue 4) cannot be measured in the same run: printed only.

Teacher: ``--teacher`` or the shipped ``assets/models/tiny-teacher``; if that is missing, a
random-weight TinyTeacher of the same architecture (the cost of a forward does not depend on the
weights; the script says which one it used).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from dd3g_core import synthesis, trajectories  # noqa: E402
from dd3g_core.profiles import get_profile  # noqa: E402
from dd3g_core.shards.reader import make_train_loader  # noqa: E402
from dd3g_core.teacher import TinyTeacher, default_tiny_teacher_path  # noqa: E402


class UNetTimer:
    """Accumulates wall time inside ``module.forward`` (outermost calls only)."""

    def __init__(self, module: torch.nn.Module):
        self.total, self.calls, self._t0, self._depth = 0.0, 0, 0.0, 0
        self._h = [module.register_forward_pre_hook(self._pre), module.register_forward_hook(self._post)]

    def _pre(self, *_):
        if self._depth == 0:
            self._t0 = time.perf_counter()
        self._depth += 1

    def _post(self, *_):
        self._depth -= 1
        if self._depth == 0:
            self.total += time.perf_counter() - self._t0
            self.calls += 1

    def remove(self):
        for h in self._h:
            h.remove()


def load_teacher(path: str | None):
    folder = Path(path) if path else default_tiny_teacher_path(must_exist=False)
    if (folder / "model.safetensors").is_file():
        return TinyTeacher.from_pretrained(folder), f"checkpoint {folder}"
    if path:
        raise SystemExit(f"no teacher checkpoint at {folder}")
    return TinyTeacher(seed=0).eval(), f"RANDOM-WEIGHT TinyTeacher (shipped checkpoint {folder} missing)"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--teacher", default=None)
    ap.add_argument("--images", type=int, default=8, help="images in the benchmark rgba shard")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--reader-samples", type=int, default=512, help="samples per worker for the reader")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--data-root", default=None, help="default: a temp dir")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    teacher, source = load_teacher(args.teacher)
    cfg = get_profile("tiny").trajectories
    print(f"teacher: {source}; threads {torch.get_num_threads()}")
    print(f"cache preset 'tiny': {cfg.to_dict()}")

    with tempfile.TemporaryDirectory(prefix="dd3g-cache-bench-") as tmp:
        root = Path(args.data_root or tmp)
        rcfg = dataclasses.replace(get_profile("tiny").rgba, samples_per_shard=args.images, num_shards=1)
        t0 = time.perf_counter()
        rgba, _ = synthesis.synthesize_shard(root, rcfg, 0)
        print(
            f"rgba shard: {rgba.num_samples} images at {rcfg.resolution} px in {time.perf_counter() - t0:.1f} s "
            f"(not part of the caching time)"
        )

        timer = UNetTimer(teacher.unet)
        t0 = time.perf_counter()
        summary, hit = trajectories.cache_shard(root, rgba.directory, teacher, cfg, 0, force=True)
        wall = time.perf_counter() - t0
        timer.remove()
        n = summary.num_samples
        share = timer.total / wall
        stats = summary.manifest["stats"]
        print(
            f"cached {n} samples ({len(summary.manifest['rejects'])} rejects) in {wall:.2f} s: "
            f"{n / wall:.3f} samples/s; {stats['batches']} teacher.sample calls "
            f"({stats['teacher_seconds']:.2f} s), {timer.calls} U-Net forwards ({timer.total:.2f} s)"
        )
        print(f"METRIC cache_samples_per_s {n / wall:.4f}")
        print(f"BAR cache_teacher_share {share:.4f} 0.90 {'PASS' if share >= 0.90 else 'FAIL'}")

        per_worker = args.reader_samples
        loader = make_train_loader(
            summary.directory,
            batch_size=16,
            num_workers=args.workers,
            shuffle_buffer=64,
            epoch_samples=per_worker,
            seed=0,
        )
        t0 = time.perf_counter()
        count = sum(len(b["__key__"]) for b in loader)
        rwall = time.perf_counter() - t0
        print(
            f"reader: {count} samples with {args.workers} workers in {rwall:.2f} s (start-up included): "
            f"{count / rwall:.1f} samples/s"
        )
        print(f"METRIC reader_samples_per_s {count / rwall:.2f}")
        print("reader bar (>= 10x training consumption): not measurable yet, training does not exist")


if __name__ == "__main__":
    main()
