"""``dd3g`` command line.

    dd3g render-turntable MODEL.ply -o spin.gif [--frames 36 --resolution 256 --elevation 15
                                                  --background white|black|R,G,B --fps 12]
    dd3g render-grid MODEL.ply -o grid.png [--azimuths 0,90,180,270 --elevation 15 ...]
    dd3g world sample --seed 3 -o obj.ply [--num-gaussians 3000] [--preview obj.png]
    dd3g world show-spec --seed 3
    dd3g teacher pretrain [--preset tiny|smoke] [--out DIR] [--resume/--no-resume] [--export DIR]
    dd3g teacher export --checkpoint RUN_OR_STEP_DIR --out assets/models/tiny-teacher
    dd3g generate IMAGE [--seed S] [--num-samples K] [--checkpoint DIR] -o OUT/ [--interpolate SEED2]

Each subcommand registers itself in ``COMMANDS`` (name -> function adding its parser), so
later stages (teacher, generate, ...) plug in with one ``COMMANDS[...] = ...`` line. Expected
failures (missing file, bad PLY, bad extension, bad option value) print one line
``dd3g: error: ...`` to stderr and return exit code 2, without a traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

PROG = "dd3g"
EXIT_USAGE = 2


class CLIError(Exception):
    """An expected, user-facing failure: printed as one line, exit code 2."""


def parse_background(text: str) -> tuple[float, float, float]:
    """``white`` | ``black`` | ``R,G,B`` (0..255 integers) -> RGB floats in 0..1."""
    named = {"white": (1.0, 1.0, 1.0), "black": (0.0, 0.0, 0.0)}
    if text.lower() in named:
        return named[text.lower()]
    try:
        rgb = [int(v) for v in text.split(",")]
    except ValueError:
        rgb = []
    if len(rgb) != 3 or not all(0 <= v <= 255 for v in rgb):
        raise argparse.ArgumentTypeError(f"background must be white, black or R,G,B with 0..255 values, got {text!r}")
    return tuple(v / 255.0 for v in rgb)


def _float_list(text: str) -> list[float]:
    try:
        return [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _add_view_options(p: argparse.ArgumentParser, resolution: int) -> None:
    p.add_argument("--resolution", type=_positive_int, default=resolution, help="square image size in pixels")
    p.add_argument("--elevation", type=float, default=15.0, help="camera elevation in degrees (> 0: above)")
    p.add_argument("--background", type=parse_background, default="white", help="white, black or R,G,B")
    p.add_argument("--backend", default="auto", choices=["auto", "cpu", "gsplat", "reference"], help=argparse.SUPPRESS)


def _load(path: str):
    from ..ply import load_ply

    return load_ply(path)


# -- render-turntable -----------------------------------------------------------------------


def _run_turntable(args) -> int:
    from ..exports import _turntable_format, save_turntable

    _turntable_format(args.output)  # refuse a bad extension before loading or rendering
    g = _load(args.model)
    save_turntable(
        g,
        args.output,
        num_frames=args.frames,
        elevation_deg=args.elevation,
        resolution=args.resolution,
        background=args.background,
        fps=args.fps,
        backend=args.backend,
    )
    print(args.output)
    return 0


def _add_turntable(sub) -> None:
    p = sub.add_parser("render-turntable", help="spin a Gaussian PLY into a GIF or MP4")
    p.add_argument("model", help="Gaussians in the 3DGS PLY layout")
    p.add_argument("-o", "--output", required=True, help="output .gif or .mp4")
    p.add_argument("--frames", type=_positive_int, default=36)
    p.add_argument("--fps", type=float, default=12.0)
    _add_view_options(p, resolution=256)
    p.set_defaults(func=_run_turntable)


# -- render-grid ----------------------------------------------------------------------------


def _run_grid(args) -> int:
    from ..exports import save_views_grid

    if Path(args.output).suffix.lower() != ".png":
        raise CLIError(f"grid output must end in .png, got {args.output!r}")
    g = _load(args.model)
    save_views_grid(
        g,
        args.output,
        azimuths=args.azimuths,
        elevation_deg=args.elevation,
        resolution=args.resolution,
        background=args.background,
        ncols=args.ncols,
        backend=args.backend,
    )
    print(args.output)
    return 0


def _add_grid(sub) -> None:
    p = sub.add_parser("render-grid", help="render a Gaussian PLY from several azimuths into one PNG")
    p.add_argument("model", help="Gaussians in the 3DGS PLY layout")
    p.add_argument("-o", "--output", required=True, help="output .png")
    p.add_argument("--azimuths", type=_float_list, default=[0.0, 90.0, 180.0, 270.0], help="e.g. 0,90,180,270")
    p.add_argument("--ncols", type=_positive_int, default=None, help="views per row (default: all in one row)")
    _add_view_options(p, resolution=256)
    p.set_defaults(func=_run_grid)


# -- world ----------------------------------------------------------------------------------


def _run_world_sample(args) -> int:
    from ..ply import save_ply
    from ..world import sample_object

    if Path(args.output).suffix.lower() != ".ply":
        raise CLIError(f"world sample writes a .ply file, got {args.output!r}")
    if args.preview is not None and Path(args.preview).suffix.lower() != ".png":
        raise CLIError(f"--preview must end in .png, got {args.preview!r}")
    g = sample_object(args.seed, args.num_gaussians)
    save_ply(g, args.output)
    print(args.output)
    if args.preview is not None:
        from ..exports import save_views_grid

        save_views_grid(
            g,
            args.preview,
            resolution=args.resolution,
            elevation_deg=args.elevation,
            background=args.background,
            backend=args.backend,
        )
        print(args.preview)
    return 0


def _run_world_spec(args) -> int:
    from ..world import object_spec

    print(_format_json(object_spec(args.seed)))
    return 0


def _format_json(obj) -> str:
    """Indented JSON with short number lists (vectors, colours) kept on one line."""
    text = json.dumps(obj, indent=2)
    join = lambda m: "[" + ", ".join(v.strip() for v in m.group(1).split(",")) + "]"  # noqa: E731
    return re.sub(r"\[\s+([-0-9.eE,\s]+?)\s+\]", join, text)


def _add_world(sub) -> None:
    p = sub.add_parser("world", help="the procedural object world (see docs/world.md)")
    world = p.add_subparsers(dest="world_command", metavar="{sample,show-spec}", required=True)
    s = world.add_parser("sample", help="write procedural object SEED as a Gaussian PLY")
    s.add_argument("--seed", type=int, required=True)
    s.add_argument("-o", "--output", required=True, help="output .ply")
    s.add_argument("--num-gaussians", type=_positive_int, default=3000)
    s.add_argument("--preview", default=None, help="also write a 4-view PNG grid here")
    _add_view_options(s, resolution=128)
    s.set_defaults(func=_run_world_sample)
    q = world.add_parser("show-spec", help="print the json description of object SEED")
    q.add_argument("--seed", type=int, required=True)
    q.set_defaults(func=_run_world_spec)


# -- teacher --------------------------------------------------------------------------------


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
    res = pretrain_tiny_teacher(cfg, args.out, resume=args.resume, export_to=args.export, max_steps=args.max_steps)
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

    res = train_teacher_recipe(args.recipe, args.out, resume=args.resume)
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


def _add_teacher(sub) -> None:
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
    t.add_argument("--max-steps", type=_positive_int, default=None, help="stop at this total step count")
    t.add_argument("--data-dir", default=None, help="multi-view cache directory (default: OUT/data)")
    t.add_argument("--threads", type=_positive_int, default=None, help="torch threads (preset default)")
    t.add_argument(
        "--cooldown",
        type=_positive_int,
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


COMMANDS: dict[str, Callable[[argparse._SubParsersAction], None]] = {
    "render-turntable": _add_turntable,
    "render-grid": _add_grid,
    "world": _add_world,
}
COMMANDS["teacher"] = _add_teacher


def _add_generate(sub) -> None:
    from .generate import add_generate

    add_generate(sub)


COMMANDS["generate"] = _add_generate


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description="DD3G: multi-view diffusion distilled into 3D Gaussians")
    sub = parser.add_subparsers(dest="command", metavar="{" + ",".join(COMMANDS) + "}", required=True)
    for add in COMMANDS.values():
        add(sub)
    return parser


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split()) or type(e).__name__


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit code (``console_scripts`` passes it to ``sys.exit``)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # argparse already printed usage and "dd3g: error: ..."
        return int(e.code or 0) if not isinstance(e.code, str) else EXIT_USAGE
    try:
        return int(args.func(args) or 0)
    except (CLIError, ValueError, OSError, ImportError) as e:
        print(f"{PROG}: error: {_one_line(e)}", file=sys.stderr)
        return EXIT_USAGE
    except BrokenPipeError:  # e.g. `dd3g world show-spec --seed 3 | head`
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - keep the interpreter's final flush quiet
        return 0
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
