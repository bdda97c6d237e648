"""``dd3g generate``: image -> 3D Gaussians with a trained PEPD student (``dd3g_core.generate``).

dd3g generate IMAGE [IMAGE ...] [--seed S] [--num-samples K] [--checkpoint DIR] [--teacher DIR] -o OUT/
              [--data-root DIR]
              [--interpolate SEED2 [--interp-steps 8]] [--matting auto|colorkey|rembg|none]
              [--rembg-model PATH] [--input-resolution 64] [--resolution 128] [--frames 36] [--mp4]

The student is ``--checkpoint``, else the accepted student of the pipeline's data root (the
``accepted_student`` asset, ``dd3g_core.promotion``), else the shipped tiny student.
Every input is loaded and prepared before the model is (a bad image fails in a second); outputs
are named ``<name>_...`` with ``<name>`` unique in OUT (``claim_output_names``: ``x``, ``x-2``,
... for two different ``x.png``), and ``OUT/generate.json`` maps each name to its image.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from ..paths import TINY_STUDENT_DIR as DEFAULT_CHECKPOINT
from .errors import CLIError
from .options import bounded_int, check_render_budget

# (lowest, highest) of generate's own size options (the render options use dd3g_core.cli.options.LIMITS)
NUM_SAMPLES = (1, 256)
INTERP_STEPS = (2, 64)
INPUT_RESOLUTION = (1, 1024)  # dd3g_core.generate.MAX_INPUT_RESOLUTION (not imported here: it pulls in torch)
GRID_VIEWS = 8  # the views grid of every sample
STRIP_VIEWS = 4  # views per interpolation step in the strip


def resolve_student(checkpoint: str | None, teacher: str | None, data_root: str | None) -> tuple[Path, str | None]:
    """``--checkpoint`` when given; else the accepted student (``dd3g_core.promotion``: its bytes verified,
    with the teacher it was distilled from), else the shipped tiny student."""
    if checkpoint:
        return Path(checkpoint), teacher
    from ..promotion import read_accepted

    root = Path(data_root or os.environ.get("DD3G_DATA_ROOT") or "data")
    accepted = read_accepted(root)  # a damaged pointer or copy: AcceptedPointerError, one line, exit 2
    if accepted is None:
        print(f"no accepted student under {root}: using the shipped tiny student {DEFAULT_CHECKPOINT}")
        return Path(DEFAULT_CHECKPOINT), teacher
    print(
        f"using the accepted student {accepted['weights_sha256'][:16]} ({accepted['path']}, accepted "
        f"{accepted['accepted_at']})"
    )
    return Path(accepted["path"]), teacher or accepted.get("teacher")


BACKGROUNDS = {"white": (1.0, 1.0, 1.0), "black": (0.0, 0.0, 0.0)}


def parse_background(text: str) -> tuple[float, float, float]:
    """``white``, ``black`` or ``R,G,B`` with each channel in [0, 1]."""
    if text in BACKGROUNDS:
        return BACKGROUNDS[text]
    try:
        rgb = tuple(float(x) for x in text.split(","))
    except ValueError:
        rgb = ()
    if len(rgb) != 3 or not all(0.0 <= c <= 1.0 for c in rgb):
        raise CLIError(f"--background {text!r}: use teacher, white, black or R,G,B with each channel in [0, 1]")
    return rgb


def _check_inputs(args) -> None:
    for text in args.image:
        image = Path(text)
        if not image.is_file():
            what = "is a folder, not an image" if image.is_dir() else "does not exist"
            raise FileNotFoundError(f"input image {image} {what}")


def _prepare_all(args) -> list[tuple[Path, object, dict]]:
    from ..generate import prepare_image

    prepared, seen = [], set()
    for text in args.image:
        image = Path(text)
        if image.resolve() in seen:  # the same file twice: generate it once
            continue
        seen.add(image.resolve())
        try:
            rgba, record = prepare_image(
                image, resolution=args.input_resolution, matting=args.matting, rembg_model=args.rembg_model
            )
        except ValueError as e:  # name the input when the message does not (several inputs)
            if str(image) in str(e):
                raise
            raise CLIError(f"{image}: {' '.join(str(e).split())}") from e
        prepared.append((image, rgba, record))
    return prepared


def _run_generate(args) -> int:
    # everything that can be refused cheaply is, before the model is loaded
    if args.background != "teacher":
        parse_background(args.background)
    check_render_budget(max(args.frames, GRID_VIEWS), args.resolution, "--frames")
    if args.interpolate is not None:
        check_render_budget(STRIP_VIEWS * args.interp_steps, args.resolution, "--interp-steps")
    out = Path(args.output)
    if out.exists() and not out.is_dir():
        raise CLIError(f"-o {out} is a file: pass a folder for the outputs")
    _check_inputs(args)

    import numpy as np
    import torch

    from ..exports import save_png, save_turntable, views_grid
    from ..generate import Generator, claim_output_names, slerp, write_sample, write_summary
    from ..ply import save_ply
    from ..render.views import orbit_views, to_uint8

    if args.threads:
        torch.set_num_threads(args.threads)
    prepared = _prepare_all(args)
    names = claim_output_names(out, [image for image, _, _ in prepared])
    ckpt, teacher = resolve_student(args.checkpoint, args.teacher, args.data_root)
    gen = Generator.load(ckpt, teacher)
    out.mkdir(parents=True, exist_ok=True)
    ext = ".mp4" if args.mp4 else ".gif"
    bg = tuple(gen.teacher.background) if args.background == "teacher" else parse_background(args.background)
    for (image, rgba, record), name in zip(prepared, names):
        if name != image.stem:
            print(f"{image}: {out / image.stem}_* belongs to another image; writing {out / name}_* instead")
        save_png(rgba, out / f"{name}_input.png")
        summary = {"image": str(image), "checkpoint": str(ckpt), "prepare": record, "samples": []}
        for seed in [args.seed + k for k in range(args.num_samples)]:
            t0 = time.perf_counter()
            g = gen(rgba, gen.noise(seed))
            dt = time.perf_counter() - t0
            paths = write_sample(g, out, f"{name}_s{seed}", args.resolution, args.frames, bg, ext)
            summary["samples"].append(
                {"seed": seed, "gaussians": int(g.means.shape[0]), "forward_s": round(dt, 4), **paths}
            )
            print(f"seed {seed}: {g.means.shape[0]} Gaussians in {dt * 1000:.0f} ms -> {paths['ply']}")
        if args.interpolate is not None:
            a, b = gen.noise(args.seed), gen.noise(args.interpolate)
            frames, stems = [], []
            for i in range(args.interp_steps):
                t = i / (args.interp_steps - 1)
                g = gen(rgba, slerp(a, b, t))
                stem = f"{name}_interp_{args.seed}_{args.interpolate}_{i:02d}"
                save_ply(g, out / f"{stem}.ply")
                stems.append(stem)
                rgb, _ = orbit_views(g, [0.0, 90.0, 180.0, 270.0], 15.0, 1.5, 49.1, args.resolution, bg)
                frames.append(to_uint8(rgb))
            strip = np.concatenate([views_grid(f, ncols=1) for f in frames], axis=1)  # columns = interpolation steps
            save_png(strip, out / f"{name}_interp_{args.seed}_{args.interpolate}.png")
            mid = gen(rgba, slerp(a, b, 0.5))
            save_turntable(
                mid,
                out / f"{name}_interp_{args.seed}_{args.interpolate}_mid{ext}",
                num_frames=args.frames,
                resolution=args.resolution,
                background=bg,
            )
            summary["interpolation"] = {
                "seeds": [args.seed, args.interpolate],
                "steps": args.interp_steps,
                "plys": [f"{s}.ply" for s in stems],
                "strip": f"{name}_interp_{args.seed}_{args.interpolate}.png",
            }
            print(
                f"interpolation {args.seed} -> {args.interpolate}: {args.interp_steps} steps -> "
                f"{out / summary['interpolation']['strip']}"
            )
        write_summary(out, summary, name)  # after every input: a later failure loses nothing written
    return 0


def add_generate(sub) -> None:
    p = sub.add_parser("generate", help="image -> 3D Gaussians with a trained PEPD student (.ply, turntable, views)")
    p.add_argument("image", nargs="+", help="RGBA or RGB image(s) (no alpha: background removal)")
    p.add_argument("-o", "--output", required=True, help="output directory")
    p.add_argument("--seed", type=bounded_int("seed"), default=0, help="noise seed of the first sample")
    p.add_argument("--num-samples", type=bounded_int("num_samples", *NUM_SAMPLES), default=1, help="seeds S, S+1, ...")
    p.add_argument(
        "--checkpoint",
        default=None,
        help="PEPD folder (config.json + model.safetensors); default: the accepted student of --data-root "
        "(the pipeline's accepted_student), else the shipped tiny student",
    )
    p.add_argument(
        "--teacher",
        default=None,
        help="teacher folder the student was distilled from (default: the accepted student's, else tiny)",
    )
    p.add_argument(
        "--data-root",
        default=None,
        help="the pipeline's data root, where accepted_student/ lives (default: $DD3G_DATA_ROOT, else ./data)",
    )
    p.add_argument(
        "--interpolate",
        type=bounded_int("seed"),
        default=None,
        metavar="SEED2",
        help="also walk from --seed to SEED2 by slerp of the noise",
    )
    p.add_argument("--interp-steps", type=bounded_int("interp_steps", *INTERP_STEPS), default=8)
    p.add_argument("--matting", choices=["auto", "colorkey", "rembg", "none"], default="auto")
    p.add_argument("--rembg-model", default=None, help="local rembg/u2net .onnx (for photos without alpha)")
    p.add_argument(
        "--input-resolution",
        type=bounded_int("input_resolution", *INPUT_RESOLUTION),
        default=64,
        help="recentred input size (the rgba_images stage's)",
    )
    p.add_argument("--resolution", type=bounded_int("resolution"), default=128, help="turntable / grid render size")
    p.add_argument(
        "--background",
        default="teacher",
        help="render background: teacher (its own, white for tiny), white, black, or R,G,B in [0, 1]",
    )
    p.add_argument("--frames", type=bounded_int("frames"), default=36)
    p.add_argument("--mp4", action="store_true", help="turntables as MP4 instead of GIF")
    p.add_argument("--threads", type=bounded_int("threads"), default=0, help="torch threads (0: torch's default)")
    p.set_defaults(func=_run_generate)
