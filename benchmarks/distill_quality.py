"""Distillation quality of the tiny student: teacher agreement and novel views vs ground truth.

    python benchmarks/distill_quality.py [--student assets/models/tiny-pepd] [--teacher ...]
                                         [--objects 64] [--draws 2] [--threads 2] [--json out.json]

Held-out procedural objects (never seen by teacher or student), each with its own noise N
(``dd3g_core.evaluation``: data, cameras and metric definitions). Everything is computed in this
run, side by side: the teacher's DDIM sample OI from N, the student's one-pass Gaussians from the
same N rendered at the teacher's cameras C and at novel cameras, and the copy-input baseline.

BARs (issue #5):
* ``agreement_minus_copy_input_db``: PSNR(student at C, OI) - PSNR(copy input, OI) >= 3 dB;
* ``novel_minus_teacher_db``: PSNR(student at novel views, GT) - PSNR(teacher OI, GT) >= -1.5 dB
  (both averaged over all their views).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from dd3g_core.evaluation import evaluate_student, heldout_set  # noqa: E402
from dd3g_core.model import PEPD  # noqa: E402
from dd3g_core.teacher.loading import load_teacher  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--student", default=str(REPO / "assets" / "models" / "tiny-pepd"))
    p.add_argument("--teacher", default=None, help="teacher folder (default: the shipped tiny teacher)")
    p.add_argument("--objects", type=int, default=64)
    p.add_argument("--draws", type=int, default=2, help="noise draws per object (>= 2 also measures diversity)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", default=None)
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    t0 = time.perf_counter()
    teacher = load_teacher(a.teacher)
    model = PEPD.from_pretrained(a.student)
    _, meta = PEPD.read_config(a.student)
    data = heldout_set(a.objects, teacher)
    t_data = time.perf_counter() - t0
    m = evaluate_student(model, teacher, data, draws=a.draws)
    t_eval = time.perf_counter() - t0 - t_data

    print(
        f"student {a.student}: {model.num_parameters()['total']:,} parameters, "
        f"{model.config.num_gaussians} Gaussians, trained {meta.get('train_step')} steps"
    )
    print(
        f"{int(m['objects'])} held-out objects x {int(m['draws'])} noise draws "
        f"(data {t_data:.0f} s, evaluation {t_eval:.0f} s)\n"
    )
    print(f"{'PSNR dB':34s} {'all':>7s} {'seen':>7s} {'unseen':>7s}")
    for k in ("student_vs_teacher", "copy_input_vs_teacher", "teacher_vs_gt", "student_vs_gt", "copy_input_vs_gt"):
        print(f"{k:34s} {m[k]:7.2f} {m[k + '_seen']:7.2f} {m[k + '_unseen']:7.2f}")
    print(f"{'student_novel_vs_gt (az 45+90k, el 0)':34s} {m['student_novel_vs_gt_el0']:7.2f}")
    print(f"{'student_novel_vs_gt (layout az, el 20)':34s} {m['student_novel_vs_gt_el20']:7.2f}")
    print(f"{'student_novel_vs_gt (all novel)':34s} {m['student_novel_vs_gt']:7.2f}")
    print(
        f"SSIM student vs teacher {m['student_vs_teacher_ssim']:.3f}, student novel vs GT "
        f"{m['student_novel_vs_gt_ssim']:.3f}"
    )
    if "student_diversity" in m:
        print(f"diversity: PSNR between two noise draws of the student {m['student_diversity']:.2f} dB")
    if a.json:
        Path(a.json).write_text(json.dumps({"metrics": m, "student": a.student, "meta": meta}, indent=2))
    agree = m["student_vs_teacher"] - m["copy_input_vs_teacher"]
    novel = m["student_novel_vs_gt"] - m["teacher_vs_gt"]
    print(f"BAR agreement_minus_copy_input_db {agree:.2f} 3 {'PASS' if agree >= 3 else 'FAIL'}")
    print(f"BAR novel_minus_teacher_db {novel:.2f} -1.5 {'PASS' if novel >= -1.5 else 'FAIL'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
