"""The full profile on one CUDA GPU, checked in one command (issue #16; budget: 8 minutes on one H200).

    python benchmarks/gpu_check.py [--out check.json] [--teacher IMAGEDREAM_DIR] [--only raster,latency]
    python benchmarks/gpu_check.py --cpu --tiny [--out check.json]      # the same checks at toy sizes, on a CPU

Random weights at full size (``gpu_world.random_imagedream``; ``--teacher`` loads a real ImageDream folder
instead). Sections, each printing its table and BAR lines; a section that crashes is one FAIL and the next
still runs:

1. ``raster`` — gsplat (CUDA) against our CPU rasterizer on object-like scenes (``blob_scene``: 2,000-4,000
   Gaussians at 64, 128 and 256 px, 4 orbit cameras, white background): images and the gradients of a fixed
   random weighting of RGB and alpha w.r.t. means, log-scales, quaternions, opacity logits and colours (SH).
   Tolerances: ``max |image difference| <= 1e-2`` (one Gaussian at gsplat's alpha threshold 1/255, included
   by one implementation and not the other through float rounding, changes a pixel by up to ~4e-3) and
   ``|grad_gsplat - grad_cpu| / |grad_cpu| <= 1e-2`` (L2 over all Gaussians, each parameter apart). With
   ``--cpu`` the second rasterizer is the dense pure-torch reference (``render/reference.py``).
2. ``latency`` — the student (condition encoding + PEPD forward: image + N -> Gaussians, bf16) and the
   teacher's DDIM sampling (30 steps, CFG 5, decode included) in the same process at batch 1 and 8: ms per
   image (bar: <= 60 at batch 1) and the speed-up (bar: >= 50x), with a breakdown of the student's time.
3. ``distill_step`` — one full-size step of the ``full`` profile (explicit + implicit terms, bf16 autocast
   around the student as Accelerate does, fp32 master weights, AdamW, EMA, gsplat) at batch 1, 2 and 4,
   for the default, gradient checkpointing, and checkpointing + a frozen U-Net encoder: time, peak memory
   (``torch.cuda.max_memory_allocated``), and the largest batch in 24/48/80 GB from a linear fit of peak
   memory over the measured batches (budget: 90% of the card). Bar: the profile's batch (4) fits 80 GB.
4. ``training`` — ``dd3g_core.distill.train.train`` with the ``smoke`` settings on a trajectory cache made
   here with the ``smoke`` teacher recipe: finite losses, a checkpoint, and a second call (gradient
   checkpointing switched on) that resumes from it and finishes.

Output lines: ``BAR <name> <value> <target> PASS|FAIL`` (judged), ``SKIP <name> <value> <target> (why)``
(timings and memory measured on a CPU run are not judged). ``--out``: all of it as JSON. Exit 0 when every
BAR passes, 1 when one fails, 2 for bad input (no CUDA without ``--cpu``, a missing ``--teacher`` folder).
gsplat compiles its CUDA kernels on first use (minutes, once; cached under ``~/.cache/torch_extensions``):
that time is reported apart (``gsplat_ready_s``). How to run it on a GPU machine: ``docs/gpu.md``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
import traceback
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE)]  # the repository (dd3g_core) and the sibling gpu_* modules

from gpu_check_steps import distill_step, oom_message, training_run  # noqa: E402
from gpu_world import PartTimer, best_time, blob_scene, random_imagedream, student_for  # noqa: E402

from dd3g_core.cameras import orbit_cameras  # noqa: E402
from dd3g_core.distill.memory import synthetic_batch  # noqa: E402
from dd3g_core.gaussians import Gaussians  # noqa: E402
from dd3g_core.model.phase1 import phase1_blocks  # noqa: E402
from dd3g_core.profiles import get_profile  # noqa: E402
from dd3g_core.render import render  # noqa: E402

SECTIONS = ("raster", "latency", "distill_step", "training")
IMAGE_TOL, GRAD_TOL = 1e-2, 1e-2
SCENES = {"full": [(2000, 64), (4000, 128), (4000, 256)], "tiny": [(300, 32), (600, 64)]}
LATENCY_BATCHES = {"full": (1, 8), "tiny": (1, 2)}
TEACHER_STEPS, TEACHER_GUIDANCE = 30, 5.0
CPU_TEACHER_STEPS = 2  # a CPU run samples 2 steps and scales the time to 30 (informational: not judged)
STUDENT_MS_TARGET, SPEEDUP_TARGET = 60.0, 50.0
WEIGHT_DTYPES = {"no": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


class BadInput(Exception):
    """Something the user can fix: printed as one line, exit 2."""


class Report:
    """BAR / SKIP lines as they come, plus everything for ``--out``."""

    def __init__(self, judge_speed: bool):
        self.judge_speed = judge_speed
        self.bars: list[dict] = []
        self.skipped: list[dict] = []
        self.info: dict[str, object] = {}

    def bar(self, name: str, value: float, target: float, ok: bool, speed: bool = False) -> None:
        """A judged line; ``speed``: timings and memory, judged on CUDA only (a CPU run prints SKIP)."""
        if speed and not self.judge_speed:
            self.skipped.append({"name": name, "value": value, "target": target})
            print(f"SKIP {name} {_fmt(value)} {_fmt(target)} (CPU run: timings and memory are judged on CUDA)")
            return
        self.bars.append({"name": name, "value": value, "target": target, "status": "PASS" if ok else "FAIL"})
        print(f"BAR {name} {_fmt(value)} {_fmt(target)} {'PASS' if ok else 'FAIL'}", flush=True)

    def note(self, key: str, value: object) -> None:
        self.info[key] = value

    @property
    def failed(self) -> bool:
        return any(b["status"] == "FAIL" for b in self.bars)


def _fmt(v: float) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


class Check:
    """What the sections share: device, sizes, the report, a work folder, and the models (built once)."""

    def __init__(self, device: torch.device, tiny: bool, report: Report, workdir: Path, teacher_path: str | None):
        self.device, self.tiny, self.report = device, tiny, report
        self.workdir, self.teacher_path = workdir, teacher_path
        self.size = "tiny" if tiny else "full"
        self.cfg = get_profile(self.size).distill  # the step's settings and the student's preset
        self.infer_dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
        self._teacher = self._student = self._smoke_dir = None

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"

    def smoke_teacher_dir(self) -> Path:
        """The ``smoke`` recipe's teacher (seconds on a CPU), for the training run."""
        if self._smoke_dir is None:
            from dd3g_core.teacher.training.recipe import train_teacher_recipe

            self._smoke_dir = train_teacher_recipe("smoke", self.workdir / "teacher_run", log=lambda _: None).exported
        return self._smoke_dir

    def teacher(self):
        """Frozen, on the device, in the trainer's weight dtype (bf16 for the full profile)."""
        if self._teacher is None:
            from dd3g_core.teacher.loading import load_teacher

            weight_dtype = WEIGHT_DTYPES[self.cfg.mixed_precision]  # as train() loads the teacher
            if self.tiny:  # the tiny profile's teacher with random weights, like the full one
                from dd3g_core.teacher import TinyTeacher

                self._teacher = TinyTeacher(seed=0).requires_grad_(False).to(self.device, weight_dtype).eval()
            elif self.teacher_path:
                self._teacher = load_teacher(self.teacher_path, device=self.device, dtype=weight_dtype)
            else:
                self._teacher = random_imagedream(self.device, weight_dtype)
        return self._teacher

    def student(self):
        """The trainer's student for this teacher, fp32 master weights on the device (training keeps it)."""
        if self._student is None:
            self._student = student_for(self.teacher(), self.cfg, self.device)
        return self._student


# ------------------------------------------------------------------------------------------- 1. raster


def _render_with_grads(g: Gaussians, viewmats, Ks, res: int, backend: str, device: torch.device):
    """Images and gradients of a fixed random weighting of RGB and alpha (the same weights for every backend)."""
    leaves = {k: v.detach().to(device).requires_grad_() for k, v in vars(g).items()}
    out = render(Gaussians(**leaves), viewmats.to(device), Ks.to(device), res, res, torch.ones(3), backend=backend)
    gen = torch.Generator().manual_seed(res)
    w_rgb, w_alpha = torch.randn(out.rgb.shape, generator=gen), torch.randn(out.alpha.shape, generator=gen)
    ((out.rgb * w_rgb.to(device)).sum() + (out.alpha * w_alpha.to(device)).sum()).backward()
    return out.rgb.detach().cpu(), out.alpha.detach().cpu(), {k: v.grad.cpu() for k, v in leaves.items()}


def raster(check: Check) -> None:
    other = "gsplat" if check.cuda else "reference"
    if check.cuda:  # gsplat builds its kernels on first use: timed apart from the comparison
        t0 = time.perf_counter()
        _render_with_grads(blob_scene(10), *orbit_cameras([0.0], 15.0, 1.5, 49.1, 16, 16), 16, "gsplat", check.device)
        check.report.note("gsplat_ready_s", round(time.perf_counter() - t0, 1))
        print(f"gsplat kernels ready in {time.perf_counter() - t0:.1f} s (a first use compiles them)")
    print(f"cpu rasterizer vs {other}: max |image diff|, then |grad diff| / |grad| per parameter")
    worst_image, worst_grad = 0.0, 0.0
    for n, res in SCENES[check.size]:
        g = blob_scene(n, seed=res)
        viewmats, Ks = orbit_cameras([0.0, 90.0, 180.0, 270.0], 15.0, 1.5, 49.1, res, res)
        rgb_a, alpha_a, grads_a = _render_with_grads(g, viewmats, Ks, res, "cpu", torch.device("cpu"))
        rgb_b, alpha_b, grads_b = _render_with_grads(g, viewmats, Ks, res, other, check.device)
        image = max((rgb_a - rgb_b).abs().max().item(), (alpha_a - alpha_b).abs().max().item())
        rel = {k: ((grads_a[k] - grads_b[k]).norm() / grads_a[k].norm().clamp_min(1e-30)).item() for k in grads_a}
        worst_image, worst_grad = max(worst_image, image), max(worst_grad, *rel.values())
        print(
            f"  {n:5d} Gaussians 4x{res:3d}^2: image {image:.2e}; " + ", ".join(f"{k} {v:.1e}" for k, v in rel.items())
        )
    check.report.bar("raster_image_max_abs", worst_image, IMAGE_TOL, worst_image <= IMAGE_TOL)
    check.report.bar("raster_grad_rel_err", worst_grad, GRAD_TOL, worst_grad <= GRAD_TOL)


# ------------------------------------------------------------------------------------------ 2. latency


def latency(check: Check) -> None:
    import copy

    teacher, dev = check.teacher(), check.device
    student = copy.deepcopy(check.student()).to(check.infer_dtype).eval()  # inference copy; training keeps fp32
    cams = teacher.cameras()
    emb, viewmats, Ks = cams.embedding.to(dev), cams.viewmats.to(dev), cams.Ks.to(dev)
    parts = {
        "teacher image encoder": [teacher.image_encoder],
        "VAE encoder": [teacher.vae.encoder] if hasattr(teacher, "vae") else [],
        "phase-1 resampler": [student.phase1.image_embed] if hasattr(student.phase1, "image_embed") else [],
        "phase-1 U-Net blocks": phase1_blocks(student.phase1),
        "phase-2 blocks": list(student.blocks),
    }
    print(
        f"student: {student.num_parameters()['total']:,} parameters, {student.config.num_gaussians:,} Gaussians, "
        f"{check.infer_dtype}; teacher: {teacher.teacher_id}, {TEACHER_STEPS} DDIM steps, CFG {TEACHER_GUIDANCE}"
    )
    steps = TEACHER_STEPS if check.cuda else CPU_TEACHER_STEPS
    if steps != TEACHER_STEPS:
        print(f"(CPU run: the teacher samples {steps} steps; its time is scaled to {TEACHER_STEPS})")
    per_image = {}
    for b in LATENCY_BATCHES[check.size]:
        data = synthetic_batch(teacher, b, seed=b, device=dev)
        images, noise = data["image"], data["noise"]

        def run_student():
            cond = teacher.encode_condition(images)
            return student(noise, emb, cond, images, viewmats, Ks, cams.resolution)

        def run_teacher():
            return teacher.sample(images, noise, cams, steps=steps, guidance=TEACHER_GUIDANCE)

        with torch.no_grad():
            t_student = best_time(run_student, dev, repeats=5 if check.cuda else 2) / b
            t_teacher = best_time(run_teacher, dev, repeats=2 if b == 1 else 1, warmup=int(check.cuda)) / b
            t_teacher *= TEACHER_STEPS / steps
            with PartTimer(dev, parts) as timer:
                t_parts = best_time(run_student, dev, repeats=1, warmup=0)
        per_image[b] = t_student
        speedup = t_teacher / t_student
        check.report.note(f"latency_batch{b}", {"student_ms": t_student * 1e3, "teacher_ms": t_teacher * 1e3})
        shares = {k: v for k, v in timer.seconds.items() if v > 0}
        shares["other (CPU preprocessing, embeddings, heads, glue)"] = max(0.0, t_parts - sum(shares.values()))
        print(f"batch {b}: student {t_student * 1e3:.1f} ms/image, teacher {t_teacher * 1e3:.0f} ms/image")
        for k, v in sorted(shares.items(), key=lambda kv: -kv[1]):
            print(f"    {v / t_parts:6.1%}  {k}")
        limit = max(shares, key=shares.get)
        print(f"  what limits the student at batch {b}: {limit} ({shares[limit] / t_parts:.0%} of its time)")
        if b == 1:
            check.report.bar("student_ms_per_image_batch1", t_student * 1e3, STUDENT_MS_TARGET,
                             t_student * 1e3 <= STUDENT_MS_TARGET, speed=True)  # fmt: skip
        check.report.bar(f"speedup_batch{b}", speedup, SPEEDUP_TARGET, speedup >= SPEEDUP_TARGET, speed=True)
    small, large = min(per_image), max(per_image)
    if small == large:
        return
    gain = per_image[small] / per_image[large]
    print(f"batch {large} makes each image {gain:.1f}x cheaper than batch {small}", end="")
    if check.cuda and gain > 2:  # the same work in fewer, bigger kernels: the GPU idles between launches at batch 1
        print(f": batch {small} is bound by kernel launches and CPU-side work, not by the GPU's arithmetic")
    else:
        print()


# ------------------------------------------------------------------------------------------- main


def check_inputs(args) -> torch.device:
    """Refuse what cannot work, each with one line saying what to do instead."""
    if args.cpu and not args.tiny:
        raise BadInput("--cpu runs the toy sizes only (full sizes on a CPU take hours): add --tiny")
    if args.teacher:
        if args.tiny:
            raise BadInput("--teacher is an ImageDream folder for the full-size check: leave it out with --tiny")
        from dd3g_core.teacher.imagedream import check_imagedream_folder

        try:
            check_imagedream_folder(args.teacher)
        except (OSError, ValueError) as e:
            raise BadInput(
                f"--teacher {args.teacher}: {' '.join(str(e).split())} Provide that folder (the "
                "imagedream-ipmv-diffusers layout, docs/teacher.md), or leave --teacher out to check with random "
                "weights at full size"
            ) from None
    if not args.cpu and not torch.cuda.is_available():
        raise BadInput(
            "CUDA is not available (torch.cuda.is_available() is False): run on a CUDA GPU, "
            "or pass --cpu --tiny for the same checks at toy sizes on this CPU"
        )
    unknown = sorted(set(args.only) - set(SECTIONS))
    if unknown:
        raise BadInput(f"--only: unknown sections {unknown}; choose from {list(SECTIONS)}")
    return torch.device("cpu") if args.cpu else torch.device("cuda")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cpu", action="store_true", help="run on the CPU (with --tiny)")
    p.add_argument(
        "--tiny", action="store_true", help="toy sizes: the tiny profile (random weights) and the smoke training run"
    )
    p.add_argument("--teacher", help="a local ImageDream folder to use instead of random weights")
    p.add_argument("--only", type=lambda s: [x.strip() for x in s.split(",") if x.strip()], default=list(SECTIONS))
    p.add_argument("--out", help="write every measurement and BAR as JSON here")
    p.add_argument("--workdir", help="keep the training run's data and checkpoints here (default: a temp folder)")
    args = p.parse_args(argv)
    try:
        device = check_inputs(args)
    except BadInput as e:
        print(f"gpu_check: error: {e}", file=sys.stderr)
        return 2
    started = time.perf_counter()
    report = Report(judge_speed=device.type == "cuda")
    workdir = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="dd3g-gpu-check-"))
    workdir.mkdir(parents=True, exist_ok=True)
    check = Check(device, args.tiny, report, workdir, args.teacher)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"gpu_check: {name}, torch {torch.__version__}, {'tiny' if args.tiny else 'full'} sizes, work in {workdir}")
    run = {"raster": raster, "latency": latency, "distill_step": distill_step, "training": training_run}
    seconds = {}
    for section in SECTIONS:
        if section not in args.only:
            continue
        print(f"\n== {section}", flush=True)
        t0 = time.perf_counter()
        try:
            run[section](check)
        except Exception as e:  # noqa: BLE001 - one broken section is one FAIL; the others still run
            traceback.print_exc()
            if isinstance(e, torch.cuda.OutOfMemoryError):  # the distill step handles its own; this is the rest
                gib = torch.cuda.get_device_properties(device).total_memory / 2**30
                print(f"{section}: {oom_message(section, check.cfg.batch_size, 13, gib)}", file=sys.stderr)
            report.note(f"{section}_error", f"{type(e).__name__}: {e}")
            report.bar(f"{section}_completed", 0, 1, False)
        seconds[section] = round(time.perf_counter() - t0, 1)
        print(f"({section}: {seconds[section]:.0f} s)", flush=True)
    total = time.perf_counter() - started
    checked = total - float(report.info.get("gsplat_ready_s", 0.0))
    print(f"\ntotal {total:.0f} s ({checked:.0f} s without gsplat's one-time kernel build)")
    if set(args.only) == set(SECTIONS):
        report.bar("gpu_check_seconds", checked, 480.0, checked <= 480.0, speed=True)
    if args.out:
        out = {"device": name, "torch": torch.__version__, "tiny": args.tiny, "seconds": seconds, "total_s": total}
        out.update(bars=report.bars, skipped=report.skipped, info=report.info)
        Path(args.out).write_text(json.dumps(out, indent=2, default=str))
    if not args.workdir:
        shutil.rmtree(workdir, ignore_errors=True)
    return 1 if report.failed else 0


if __name__ == "__main__":
    sys.exit(main())
