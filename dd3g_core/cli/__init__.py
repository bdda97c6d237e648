"""``dd3g`` command line.

    dd3g render-turntable MODEL.ply -o spin.gif [--frames 36 --resolution 256 --elevation 15
                                                  --background white|black|R,G,B --fps 12]
    dd3g render-grid MODEL.ply -o grid.png [--azimuths 0,90,180,270 --elevation 15 ...]
    dd3g world sample --seed 3 -o obj.ply [--num-gaussians 3000] [--preview obj.png]
    dd3g world show-spec --seed 3
    dd3g teacher pretrain [--preset tiny|smoke] [--out DIR] [--resume/--no-resume] [--export DIR]
    dd3g teacher export --checkpoint RUN_OR_STEP_DIR --out assets/models/tiny-teacher
    dd3g generate IMAGE [IMAGE ...] [--seed S] [--num-samples K] [--checkpoint DIR] -o OUT/ [--interpolate SEED2]
    dd3g rgba --folder DIR_OR_GLOB -o DATA_ROOT [--profile P] [--matting colorkey|rembg] [--num-shards N]

Each subcommand registers itself in ``COMMANDS`` (name -> function adding its parser), so
later stages (teacher, generate, ...) plug in with one ``COMMANDS[...] = ...`` line.

Failures go through one mechanism, :func:`dd3g_core.cli.errors.run_guarded`: expected ones
(missing or corrupt file, bad PLY, bad extension, bad option value, including argparse's own
usage errors) print one line ``dd3g: error: ...`` to stderr and return exit code 2, without a
traceback; anything else prints ``dd3g: internal error: ...`` naming the log file that holds the
traceback and returns 1.

Every size option is bounded (:mod:`.options`: ``LIMITS``, checked while parsing, and a render's
frames x resolution² by ``MAX_RENDER_PIXELS``), so no option value can ask for unbounded memory.
The teacher's subcommands live in :mod:`.teacher`, ``generate`` in :mod:`.generate`, ``rgba`` (your own
images as ``rgba_images`` shards) in :mod:`.rgba`.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from .errors import EXIT_USAGE, CLIError, run_guarded
from .options import (
    ArgumentParser,
    add_view_options,
    azimuth_list,
    bounded_float,
    bounded_int,
    check_render_budget,
)
from .teacher import add_teacher

PROG = "dd3g"


def _load(path: str):
    from ..ply import load_ply

    return load_ply(path)


# -- render-turntable -----------------------------------------------------------------------


def _run_turntable(args) -> int:
    check_render_budget(args.frames, args.resolution)
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
    p.add_argument("--frames", type=bounded_int("frames"), default=36)
    p.add_argument("--fps", type=bounded_float("fps", open_low=True), default=12.0, help="frames per second")
    add_view_options(p, resolution=256)
    p.set_defaults(func=_run_turntable)


# -- render-grid ----------------------------------------------------------------------------


def _run_grid(args) -> int:
    from ..exports import save_views_grid

    if Path(args.output).suffix.lower() != ".png":
        raise CLIError(f"grid output must end in .png, got {args.output!r}")
    check_render_budget(len(args.azimuths), args.resolution, "--azimuths")
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
    p.add_argument("--azimuths", type=azimuth_list, default=[0.0, 90.0, 180.0, 270.0], help="e.g. 0,90,180,270")
    p.add_argument("--ncols", type=bounded_int("ncols"), default=None, help="views per row (default: all in one row)")
    add_view_options(p, resolution=256)
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
    s.add_argument("--seed", type=bounded_int("seed"), required=True)
    s.add_argument("-o", "--output", required=True, help="output .ply")
    s.add_argument("--num-gaussians", type=bounded_int("num_gaussians"), default=3000)
    s.add_argument("--preview", default=None, help="also write a 4-view PNG grid here")
    add_view_options(s, resolution=128)
    s.set_defaults(func=_run_world_sample)
    q = world.add_parser("show-spec", help="print the json description of object SEED")
    q.add_argument("--seed", type=bounded_int("seed"), required=True)
    q.set_defaults(func=_run_world_spec)


COMMANDS: dict[str, Callable[[argparse._SubParsersAction], None]] = {
    "render-turntable": _add_turntable,
    "render-grid": _add_grid,
    "world": _add_world,
}
COMMANDS["teacher"] = add_teacher


def _add_generate(sub) -> None:
    from .generate import add_generate

    add_generate(sub)


COMMANDS["generate"] = _add_generate


def _add_eval(sub) -> None:
    from .evaluate import add_eval

    add_eval(sub)


COMMANDS["eval"] = _add_eval


def _add_rgba(sub) -> None:
    from .rgba import add_rgba

    add_rgba(sub)


COMMANDS["rgba"] = _add_rgba


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(prog=PROG, description="DD3G: multi-view diffusion distilled into 3D Gaussians")
    sub = parser.add_subparsers(dest="command", metavar="{" + ",".join(COMMANDS) + "}", required=True)
    for add in COMMANDS.values():
        add(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit code (``console_scripts`` passes it to ``sys.exit``).

    0: done; 2: an expected failure, one ``dd3g: error: ...`` line; 1: an internal error, one line
    naming the log file with the traceback (:mod:`dd3g_core.cli.errors`); 130: interrupted."""

    def run() -> int:
        try:
            args = build_parser().parse_args(argv)
        except SystemExit as e:  # --help printed the usage
            return int(e.code or 0) if not isinstance(e.code, str) else EXIT_USAGE
        return int(args.func(args) or 0)

    return run_guarded(run, PROG, argv)


if __name__ == "__main__":
    sys.exit(main())
