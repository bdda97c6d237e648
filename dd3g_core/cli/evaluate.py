"""``dd3g eval``: score a trained PEPD student (``dd3g_core.evaluation``; docs/evaluation.md).

dd3g eval --checkpoint DIR [--teacher DIR] [--profile tiny] [--objects N] [--draws D] [--fit-objects F]
          [--compare NAME=DIR ...] [--references DIR] -o OUT       held-out procedural objects
dd3g eval --checkpoint DIR --inputs GLOB [--inputs GLOB ...] -o OUT  your own images (no ground truth)
dd3g eval --checkpoint DIR --folder ROOT -o OUT                      a folder of rendered objects

OUT gets ``metrics.json``, ``report.md`` and the pictures, published at once (a killed run leaves
the previous OUT as it was). The settings start from the profile's ``evaluation`` settings.
"""

from __future__ import annotations

import dataclasses
import glob
from pathlib import Path

from ..paths import TINY_STUDENT_DIR as DEFAULT_CHECKPOINT
from .errors import CLIError
from .options import bounded_int

MAX_OBJECTS = 4096


def _named_dir(text: str) -> tuple[str, str]:
    if "=" not in text:
        raise CLIError(f"--compare expects NAME=DIR, got {text!r}")
    name, path = text.split("=", 1)
    if not name or not Path(path).is_dir():
        raise CLIError(f"--compare {text}: {path} is not a folder")
    return name, path


def _settings(args):
    from ..profiles import get_profile

    s = get_profile(args.profile).evaluation
    changes = {}
    for opt, field in (
        ("objects", "heldout_objects"),
        ("draws", "draws"),
        ("fit_objects", "fit_objects"),
        ("fit_steps", "fit_steps"),
        ("lpips_weights", "lpips_weights"),
        ("clip_weights", "clip_weights"),
    ):
        if getattr(args, opt) is not None:
            changes[field] = getattr(args, opt)
    return dataclasses.replace(s, **changes)


def _input_images(patterns: list[str]) -> list[Path]:
    files: list[Path] = []
    for pattern in patterns:
        hits = sorted(Path(p) for p in glob.glob(pattern, recursive=True) if Path(p).is_file())
        if not hits and Path(pattern).is_file():
            hits = [Path(pattern)]
        if not hits:
            raise CLIError(f"--inputs {pattern}: no image file matches")
        files += [h for h in hits if h not in files]
    return files


def _run_eval(args) -> int:
    out = Path(args.output)
    if out.exists() and not out.is_dir():
        raise CLIError(f"-o {out} is a file: pass a folder for the report")
    if args.inputs and args.folder:
        raise CLIError("give --inputs or --folder, not both")
    settings = _settings(args)
    compare = dict(_named_dir(c) for c in args.compare)
    files = _input_images(args.inputs) if args.inputs else []

    import torch

    from ..io import atomic_directory
    from ..model import PEPD
    from ..teacher.loading import load_teacher

    if args.threads:
        torch.set_num_threads(args.threads)
    PEPD.read_config(args.checkpoint)  # a missing or foreign checkpoint fails before the teacher loads
    teacher = load_teacher(args.teacher, device=args.device)
    header = {"checkpoint": str(args.checkpoint), "profile": args.profile or "(DD3G_PROFILE or tiny)"}
    with atomic_directory(out) as tmp:
        if files:
            from ..evaluation.inputs import evaluate_inputs
            from ..generate import prepare_image

            images = []
            for f in files:
                try:
                    rgba, _ = prepare_image(f, resolution=teacher.layout.resolution * 2)
                except ValueError as e:
                    raise CLIError(f"{f}: {' '.join(str(e).split())}") from e
                images.append((f.stem if f.stem not in {n for n, _ in images} else f"{f.stem}-{len(images)}", rgba))
            model = PEPD.from_pretrained(args.checkpoint, device=teacher.device)
            evaluate_inputs(model, teacher, images, settings, tmp, header)
        elif args.folder:
            from ..evaluation.folder_eval import evaluate_folder

            evaluate_folder(args.checkpoint, teacher, args.folder, settings, tmp, header)
        else:
            from ..evaluation.run import evaluate_checkpoints

            evaluate_checkpoints(
                {"student": args.checkpoint, **compare},
                teacher,
                settings,
                tmp,
                references_dir=args.references,
                header=header,
            )
    print(f"report: {out / 'report.md'}")
    return 0


def add_eval(sub) -> None:
    p = sub.add_parser("eval", help="score a student: held-out objects, your images (--inputs) or a folder (--folder)")
    p.add_argument("--checkpoint", default=str(DEFAULT_CHECKPOINT), help="PEPD folder (default: the shipped tiny one)")
    p.add_argument("--teacher", default=None, help="the teacher it was distilled from (default: the shipped tiny one)")
    p.add_argument("-o", "--output", required=True, help="report folder (replaced when the run completes)")
    p.add_argument("--profile", default=None, help="profile whose evaluation settings to start from")
    p.add_argument("--objects", type=bounded_int("objects", 1, MAX_OBJECTS), default=None, help="held-out objects")
    p.add_argument("--draws", type=bounded_int("draws", 1, 16), default=None, help="noise draws per object")
    p.add_argument(
        "--fit-objects",
        type=bounded_int("fit_objects", 0, MAX_OBJECTS),
        default=None,
        help="objects of the per-sample fit ceiling (0: none)",
    )
    p.add_argument("--fit-steps", type=bounded_int("fit_steps", 0, 100_000), default=None)
    p.add_argument(
        "--compare",
        action="append",
        default=[],
        metavar="NAME=DIR",
        help="another checkpoint scored in the same run (e.g. an ablation)",
    )
    p.add_argument("--references", default=None, help="cache folder for the references (reused when it matches)")
    p.add_argument("--inputs", action="append", default=[], metavar="GLOB", help="your own images (no ground truth)")
    p.add_argument("--folder", default=None, help="a folder of rendered objects (docs/evaluation_folder.md)")
    p.add_argument("--lpips-weights", default=None, help="local VGG16 + LPIPS lin weights (safetensors)")
    p.add_argument("--clip-weights", default=None, help="local transformers CLIP folder (--folder only)")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:1 (auto: the first GPU, else the CPU)")
    p.add_argument("--threads", type=bounded_int("threads", 0, 256), default=0, help="CPU threads (0: torch's)")
    p.set_defaults(func=_run_eval)
