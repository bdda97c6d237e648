"""``dd3g teacher pretrain | recipe | export``: the tiny CPU teacher's training (``dd3g_core.teacher.training``)."""

from __future__ import annotations

import argparse
import json
import sys

from .options import bounded_int

__all__ = ["add_teacher"]


def _say(line: str) -> None:
    """Progress lines on stderr (stdout keeps the one JSON result)."""
    print(line, file=sys.stderr, flush=True)


def _run_teacher_pretrain(args) -> int:
    from ..teacher.training.config import TeacherTrainConfig
    from ..teacher.training.train import pretrain_tiny_teacher

    changes = {}
    if args.data_dir is not None:
        changes["data_dir"] = args.data_dir
    if args.threads is not None:
        changes["threads"] = args.threads
    if args.init_from is not None:
        changes["init_from"] = args.init_from
    if args.cooldown is not None:
        changes["cooldown_start"], changes["cooldown_steps"] = args.cooldown
    cfg = TeacherTrainConfig.preset(args.preset, **changes)
    res = pretrain_tiny_teacher(
        cfg, args.out, resume=args.resume, export_to=args.export, max_steps=args.max_steps, log=_say
    )
    print(
        json.dumps(
            {
                "out": str(res.out_dir),
                "step": res.step,
                "checkpoint": str(res.checkpoint),
                "train_time_s": round(res.train_time_s, 1),
                "exported": None if res.exported is None else str(res.exported),
            }
        )
    )
    return 0


def _run_teacher_recipe(args) -> int:
    from ..teacher.training.recipe import train_teacher_recipe

    res = train_teacher_recipe(args.recipe, args.out, resume=args.resume, log=_say)
    print(
        json.dumps(
            {
                "out": str(args.out),
                "step": res.step,
                "checkpoint": str(res.checkpoint),
                "exported": None if res.exported is None else str(res.exported),
            }
        )
    )
    return 0


def _run_teacher_export(args) -> int:
    from ..teacher.training.train import export_teacher

    print(export_teacher(args.checkpoint, args.out, use_ema=not args.raw))
    return 0


def add_teacher(sub) -> None:
    p = sub.add_parser("teacher", help="the tiny multi-view teacher (see docs/teacher.md)")
    teacher = p.add_subparsers(dest="teacher_command", metavar="{pretrain,recipe,export}", required=True)
    t = teacher.add_parser("pretrain", help="train (or resume training) the tiny teacher on the procedural world")
    t.add_argument(
        "--preset",
        choices=["tiny", "tiny16", "tiny_s2d", "tiny_concat", "smoke"],
        default="tiny",
        help="training preset (docs/teacher.md); tiny16/tiny_concat grow a trained teacher",
    )
    t.add_argument(
        "--init-from",
        default=None,
        help="teacher folder to grow from when there is no checkpoint yet (tiny16/tiny_concat; "
        "default: the shipped assets/models/tiny-teacher)",
    )
    t.add_argument("--out", default="teacher_run", help="run directory (checkpoints, log.jsonl, data cache)")
    t.add_argument(
        "--resume",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="continue from the newest checkpoint in --out (default) or start over",
    )
    t.add_argument(
        "--export", default=None, help="write the EMA teacher here at the end (e.g. assets/models/tiny-teacher)"
    )
    t.add_argument("--max-steps", type=bounded_int("steps"), default=None, help="stop at this total step count")
    t.add_argument("--data-dir", default=None, help="multi-view cache directory (default: OUT/data)")
    t.add_argument("--threads", type=bounded_int("threads", lo=1), default=None, help="torch threads (preset default)")
    t.add_argument(
        "--cooldown",
        type=bounded_int("steps"),
        nargs=2,
        metavar=("START", "STEPS"),
        default=None,
        help="decay the LR linearly to 0.1x over STEPS steps from step START (set when resuming "
        "a background run whose end is now chosen; pair with --max-steps START+STEPS)",
    )
    t.set_defaults(func=_run_teacher_pretrain)
    r = teacher.add_parser("recipe", help="rerun the staged recipe that made the shipped teacher (resumable)")
    r.add_argument(
        "--recipe",
        choices=["shipped", "smoke"],
        default="shipped",
        help="shipped: ~4 h on 2 cores (docs/teacher.md); smoke: seconds",
    )
    r.add_argument(
        "--out", default="teacher_recipe", help="run directory (one sub-directory per stage, data/, teacher/)"
    )
    r.add_argument(
        "--resume",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="continue every stage from its newest checkpoint (default) or start over",
    )
    r.set_defaults(func=_run_teacher_recipe)
    e = teacher.add_parser("export", help="write a training checkpoint's EMA weights as a TinyTeacher folder")
    e.add_argument("--checkpoint", required=True, help="a run directory (newest checkpoint) or a step_* directory")
    e.add_argument("--out", required=True, help="output folder, e.g. assets/models/tiny-teacher")
    e.add_argument("--raw", action="store_true", help="export the raw weights instead of the EMA")
    e.set_defaults(func=_run_teacher_export)
