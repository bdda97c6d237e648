"""Student vs teacher latency per image, in one process, same machine, same resolution.

    python benchmarks/latency.py [--student assets/models/tiny-pepd] [--teacher ...] [--batch 1 8]
                                 [--repeats 5] [--threads 1]

Teacher: ``teacher.sample`` (condition encoding + its default DDIM steps x CFG forwards + decode)
from N to OI. Student: condition encoding + one PEPD forward from N to Gaussians (no rendering;
the renders are the Gaussians' consumer, not part of generating them). Both run the same inputs
(64 px RGBA of held-out procedural objects), interleaved, best-of-``--repeats`` wall time after a
warm-up. Also printed: student ms/image, Gaussians/s, and the rasterizer's cost of one 4-view render.

BAR ``speedup_batch{B}``: teacher time / student time per image >= 50 (issue #5), for each batch size.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from dd3g_core.evaluation import heldout_set  # noqa: E402
from dd3g_core.model import PEPD  # noqa: E402
from dd3g_core.render import render  # noqa: E402
from dd3g_core.teacher.loading import load_teacher  # noqa: E402


def best_of(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--student", default=str(REPO / "assets" / "models" / "tiny-pepd"))
    p.add_argument("--teacher", default=None)
    p.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=1)
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    teacher = load_teacher(a.teacher)
    model = PEPD.from_pretrained(a.student)
    cams = teacher.cameras()
    data = heldout_set(max(a.batch), teacher)
    print(
        f"teacher: {teacher.teacher_id}, {teacher.default_steps} DDIM steps, guidance {teacher.default_guidance} "
        f"({'CFG: 2 rows per forward' if teacher.default_guidance != 1 else 'no CFG'}); student: "
        f"{model.num_parameters()['total']:,} parameters, {model.config.num_gaussians} Gaussians; "
        f"{a.threads} thread(s)"
    )
    print(
        f"{'batch':>5s} {'teacher ms/img':>15s} {'student ms/img':>15s} {'speedup':>8s} {'Gaussians/s':>12s} "
        f"{'render ms/img':>14s}"
    )
    bars = []
    with torch.no_grad():
        for b in a.batch:
            images = data.inputs[:b]
            noise = torch.cat([teacher.draw_noise(1, 1000 + i) for i in range(b)])

            def run_teacher():
                return teacher.sample(images, noise)

            def run_student():
                cond = teacher.encode_condition(images)
                return model(noise, cams.embedding, cond, images, cams.viewmats, cams.Ks, cams.resolution)

            g = run_student().gaussians
            bg = torch.ones(3)
            t_teacher = best_of(run_teacher, max(1, a.repeats // 2)) / b
            t_student = best_of(run_student, a.repeats) / b
            t_render = (
                best_of(
                    lambda: render(g, cams.viewmats, cams.Ks, cams.resolution, cams.resolution, background=bg),
                    a.repeats,
                )
                / b
            )
            speedup = t_teacher / t_student
            print(
                f"{b:5d} {t_teacher * 1e3:15.1f} {t_student * 1e3:15.2f} {speedup:8.1f} "
                f"{model.config.num_gaussians / t_student:12.0f} {t_render * 1e3:14.2f}"
            )
            bars.append((b, speedup))
    for b, s in bars:
        print(f"BAR speedup_batch{b} {s:.1f} 50 {'PASS' if s >= 50 else 'FAIL'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
