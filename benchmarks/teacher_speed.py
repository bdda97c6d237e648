"""Tiny teacher sampling speed: DDIM samples per second and the share of time in U-Net forwards.

    python benchmarks/teacher_speed.py [--teacher assets/models/tiny-teacher] [--batches 1,64]
                                       [--repeats 3] [--threads 2]

What is timed: ``TinyTeacher.sample(images, N)`` end to end — condition encoding (composite,
resize, image tokens), ``--steps`` deterministic DDIM steps (default: the checkpoint's
``default_steps``, 25) at the checkpoint's ``default_guidance`` (1.0: no CFG batch doubling) and
decoding — for B held-out objects' 64 px RGBA inputs, after one warm-up call; the best of
``--repeats`` (the cores are shared). samples/s = B / wall time (one sample = one object's 4
views). U-Net time is measured with forward pre-/post-hooks on ``teacher.unet``
(``time.perf_counter``); overhead = 1 - U-Net time / wall time (scheduler steps, CFG
bookkeeping, encoders, decoding, Python). BAR: overhead <= 10% at every batch size.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from dd3g_core.teacher.tiny import TinyTeacher  # noqa: E402
from dd3g_core.teacher.training.data import RenderSpec, render_example  # noqa: E402
from dd3g_core.world import split_seeds  # noqa: E402


class UNetTimer:
    def __init__(self, module: torch.nn.Module):
        self.total, self.calls, self._t0 = 0.0, 0, 0.0
        self._h = [module.register_forward_pre_hook(self._pre), module.register_forward_hook(self._post)]

    def _pre(self, *_):
        self._t0 = time.perf_counter()

    def _post(self, *_):
        self.total += time.perf_counter() - self._t0
        self.calls += 1

    def reset(self):
        self.total, self.calls = 0.0, 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--teacher", default=str(REPO / "assets" / "models" / "tiny-teacher"))
    p.add_argument("--batches", default="1,64")
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--guidance", type=float, default=None)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    teacher = TinyTeacher.from_pretrained(a.teacher)
    steps = teacher.default_steps if a.steps is None else a.steps
    guidance = teacher.default_guidance if a.guidance is None else a.guidance
    batches = [int(x) for x in a.batches.split(",")]
    seeds = split_seeds("heldout", max(batches))
    inputs = torch.from_numpy(np.stack([render_example(s, RenderSpec())[0] for s in seeds]))
    timer = UNetTimer(teacher.unet)
    print(
        f"teacher: {a.teacher} ({sum(p.numel() for p in teacher.parameters()):,} parameters); "
        f"{steps} DDIM steps, guidance {guidance:g}, {a.threads} threads"
    )
    print(
        f"{'batch':>5s} {'wall s':>8s} {'samples/s':>10s} {'s/sample':>9s} {'unet calls':>10s} "
        f"{'unet share':>10s} {'overhead':>8s}"
    )
    bars = []
    with torch.no_grad():
        for b in batches:
            x = inputs[:b]
            noise = teacher.draw_noise(b, seed=0)
            teacher.sample(x, noise, steps=steps, guidance=guidance)  # warm-up
            best = None
            for _ in range(a.repeats):
                timer.reset()
                t0 = time.perf_counter()
                teacher.sample(x, noise, steps=steps, guidance=guidance)
                wall = time.perf_counter() - t0
                if best is None or wall < best[0]:
                    best = (wall, timer.total, timer.calls)
            wall, unet, calls = best
            overhead = 1.0 - unet / wall
            print(
                f"{b:5d} {wall:8.3f} {b / wall:10.2f} {wall / b:9.4f} {calls:10d} {unet / wall:10.1%} {overhead:8.1%}"
            )
            bars.append((f"sampling_overhead_batch{b}", overhead, 0.10, overhead <= 0.10))
    for name, value, target, ok in bars:
        print(f"BAR {name} {value:.3f} {target:g} {'PASS' if ok else 'FAIL'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
