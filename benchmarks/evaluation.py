"""The evaluation stage on the tiny profile: every number side by side, its cost, issue #5's bars.

    python benchmarks/evaluation.py [--student assets/models/tiny-pepd] [--teacher DIR]
                                    [--compare NAME=DIR ...] [--objects 64] [--threads 2]
                                    [--references DIR] [-o OUT]

Runs ``dd3g_core.evaluation`` with the tiny profile's evaluation settings (64 held-out objects x 2
noise draws, 16 azimuths x 2 elevations at 32 and 128 px, the fit ceiling on 16 objects): the
references (held-out ground truth, the teacher's views, the fit ceiling; cached in ``--references``)
then the students (``--compare`` adds e.g. the ablations), and prints the report's tables.

BARs:
* ``evaluation_s_{N}_objects``: the student's evaluation step (everything but the cached
  references) <= 300 s on 2 cores (issue #13); the references' own time is printed;
* issue #14's quality bars at display resolution on the held-out objects: ``fog_alpha_{D}`` (haze) <= 0.02,
  ``psnr_{D}`` >= 19.5, ``ssim_{D}`` >= 0.85, ``iou_{D}`` >= 0.80, ``psnr_{D}_minus_fit_ceiling`` >= -1.5
  (on the fitted objects), ``agree_unseen_minus_copy_input_db`` >= 3, ``agree_seen_db`` >= 28.
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

from dd3g_core.evaluation.run import evaluate_checkpoints, get_references  # noqa: E402
from dd3g_core.model import PEPD  # noqa: E402
from dd3g_core.profiles import get_profile  # noqa: E402
from dd3g_core.teacher.loading import load_teacher  # noqa: E402

BUDGET_S = 300.0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--student", default=str(REPO / "assets" / "models" / "tiny-pepd"))
    p.add_argument("--teacher", default=None)
    p.add_argument("--compare", action="append", default=[], metavar="NAME=DIR")
    p.add_argument("--objects", type=int, default=None)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--references", default=str(REPO / ".cache" / "evaluation_references"))
    p.add_argument("-o", "--out", default=None)
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    settings = get_profile("tiny").evaluation
    if a.objects:
        settings = dataclasses.replace(settings, heldout_objects=a.objects)
    teacher = load_teacher(a.teacher)
    n_gauss = PEPD.read_config(a.student)[0].num_gaussians
    t0 = time.perf_counter()
    refs = get_references(teacher, settings, n_gauss, a.references)
    t_refs = time.perf_counter() - t0
    out = Path(a.out or tempfile.mkdtemp(prefix="dd3g-eval-"))
    checkpoints = {"student": a.student, **dict(c.split("=", 1) for c in a.compare)}
    t1 = time.perf_counter()
    m = evaluate_checkpoints(checkpoints, teacher, settings, out, references=refs, log=lambda s: None)
    t_eval = time.perf_counter() - t1
    per_student = t_eval / len(checkpoints)
    report = (out / "report.md").read_text()
    print(report.split("## Pictures")[0])
    print(
        f"references {t_refs:.0f} s (built or loaded: {refs.meta['seconds']}); students {t_eval:.0f} s "
        f"({per_student:.0f} s each); report {out}"
    )
    h = m["headline"]
    d = m["resolutions"]["display"]
    n = settings.heldout_objects

    def bar(name: str, value: float, target: float, higher: bool = True) -> None:
        ok = value >= target if higher else value <= target
        print(f"BAR {name} {value:.3f} {target:g} {'PASS' if ok else 'FAIL'}")

    bar(f"evaluation_s_{n}_objects", per_student, BUDGET_S, higher=False)
    bar(f"fog_alpha_{d}", h[f"fog_alpha_{d}"], 0.02, higher=False)
    print(f"outside_alpha_{d} {h.get(f'outside_alpha_{d}', float('nan')):.3f} (silhouette errors included; no bar)")
    bar(f"psnr_{d}", h[f"psnr_{d}"], 19.5)
    bar(f"ssim_{d}", h[f"ssim_{d}"], 0.85)
    bar(f"iou_{d}", h[f"iou_{d}"], 0.80)
    if f"psnr_{d}_minus_fit_ceiling" in h:
        bar(f"psnr_{d}_minus_fit_ceiling", h[f"psnr_{d}_minus_fit_ceiling"], -1.5)
    bar("agree_unseen_minus_copy_input_db", h["agree_unseen_minus_copy_input"], 3.0)
    bar("agree_seen_db", h["agree_seen"], 28.0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
