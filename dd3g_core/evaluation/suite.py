"""The evaluation recipe: a student (and optional others, e.g. the ablations) against the references.

1. load every student and check it was made for this teacher (:func:`check_student_matches_teacher`);
2. the references (:mod:`.references`, built here or loaded from a cache);
3. the reference rows: the teacher's own views, the copy-input floor, the per-sample fit ceiling;
4. each student: agreement at C, novel cameras at the teacher's and the display resolution, fog,
   Gaussian statistics, diversity (:mod:`.scoring`); latency and parameters next to the teacher's,
   measured in this run;
5. ``metrics.json``, ``report.md`` and the images (:mod:`.report`) into ``out_dir``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from pathlib import Path

import torch

from ..gaussians import Gaussians
from .references import References
from .scoring import MethodScores, score_copy_input, score_gaussians, score_student, score_teacher, summarize

__all__ = ["evaluate_students", "check_student_matches_teacher", "measure_latency", "StudentMismatchError"]


class StudentMismatchError(ValueError):
    """A student made for another teacher (phase 1's U-Net, views, latents) is refused."""


def check_student_matches_teacher(model, teacher, path: str | Path = "student") -> None:
    """Refuse a student whose phase 1 is not the teacher's U-Net, naming the differing keys."""
    c = model.config
    diff = {}
    teacher_unet = getattr(getattr(teacher, "unet", None), "config", None)
    if teacher_unet is not None:
        a, b = c.unet.to_dict(), teacher_unet.to_dict()
        diff.update({f"unet.{k}": (a.get(k), b.get(k)) for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)})
    if c.num_views != teacher.num_views:
        diff["num_views"] = (c.num_views, teacher.num_views)
    if c.latent_resolution != teacher.latent_resolution:
        diff["latent_resolution"] = (c.latent_resolution, teacher.latent_resolution)
    if diff:
        raise StudentMismatchError(
            f"{path} was distilled from another teacher or config; differing keys (student, teacher): "
            f"{dict(list(diff.items())[:10])}"
        )


def _subset(g: Gaussians, sl: slice) -> Gaussians:
    return Gaussians(**{k: getattr(g, k)[sl] for k in ("means", "quats", "log_scales", "opacity_logits", "sh")})


@torch.no_grad()
def measure_latency(
    model,
    teacher,
    image: torch.Tensor,  # [1, 4, H, W] uint8 RGBA: one input
    repeats: int = 3,
) -> dict[str, float]:
    """Best-of-``repeats`` wall time per image at batch 1 (after a warm-up), student and teacher in
    the same process: condition encoding + one PEPD forward vs condition encoding + DDIM + decode."""
    cams = teacher.cameras()
    dev = teacher.device
    image = image.to(dev)
    noise = teacher.draw_noise(1, 0)

    def student():
        model(noise, cams.embedding, teacher.encode_condition(image), image, cams.viewmats, cams.Ks, cams.resolution)

    def teacher_sample():
        teacher.sample(teacher.encode_condition(image), noise, cameras=cams)

    def best(fn, n):
        fn()
        times = []
        for _ in range(n):
            if dev.type == "cuda":
                torch.cuda.synchronize(dev)
            t0 = time.perf_counter()
            fn()
            if dev.type == "cuda":
                torch.cuda.synchronize(dev)
            times.append(time.perf_counter() - t0)
        return min(times) * 1000.0

    s_ms = best(student, max(repeats, 5))
    t_ms = best(teacher_sample, repeats)
    return {"student_ms": s_ms, "teacher_ms": t_ms, "speedup": t_ms / s_ms}


def evaluate_students(
    students: Mapping[str, object],  # name -> PEPD (the first is the main student)
    teacher,
    refs: References,
    settings,
    lpips=None,
    backend: str = "auto",
    log: Callable[[str], None] = print,
    latency_repeats: int = 3,
) -> dict:
    """Scores of every student and of the references, and the per-method summaries."""
    t0 = time.perf_counter()
    methods: list[MethodScores] = []
    teacher_params = sum(p.numel() for p in teacher.unet.parameters())
    for name, model in students.items():
        check_student_matches_teacher(model, teacher, name)
        model = model.to(teacher.device).eval()
        s = score_student(model, teacher, refs, settings, name, lpips, backend, log)
        s.info["parameters"] = model.num_parameters()["total"]
        s.info.update(measure_latency(model, teacher, refs.data.inputs[:1], latency_repeats))
        log(f"{name}: {s.info['student_ms']:.1f} ms per image, teacher {s.info['teacher_ms']:.0f} ms")
        methods.append(s)
    if refs.fit is not None:
        nf = refs.fit.means.shape[0]
        fit = refs.fit.to(teacher.device)
        ceiling = score_gaussians(
            "fit ceiling",
            lambda sl, draw: _subset(fit, sl),
            refs,
            settings,
            teacher,
            nf,
            1,
            lpips,
            backend,
            "reference",
            log,
        )
        ceiling.info["note"] = f"{nf} objects, {refs.meta['num_gaussians']} Gaussians fitted to draw 0's OI"
        methods.append(ceiling)
    teacher_row = score_teacher(refs, settings, teacher)
    teacher_row.info.update({"parameters": teacher_params})
    if methods and "teacher_ms" in methods[0].info:
        teacher_row.info["ms"] = methods[0].info["teacher_ms"]
    methods.append(teacher_row)
    methods.append(score_copy_input(refs, settings, teacher))
    summaries = {m.name: summarize(m) for m in methods}
    nf = refs.fit.means.shape[0] if refs.fit is not None else 0
    on_fit_subset = {m.name: summarize(m, nf) for m in methods if m.kind == "student"} if nf else {}
    log(f"evaluation scored {len(methods)} rows in {time.perf_counter() - t0:.0f} s")
    return {"methods": methods, "summaries": summaries, "on_fit_subset": on_fit_subset}
