"""``dd3g generate``: image -> 3D Gaussians with a trained PEPD student (``dd3g_core.generate``).

dd3g generate IMAGE [--seed S] [--num-samples K] [--checkpoint DIR] [--teacher DIR] -o OUT/
              [--interpolate SEED2 [--interp-steps 8]] [--matting auto|colorkey|rembg|none]
              [--rembg-model PATH] [--resolution 128] [--frames 36] [--mp4]
"""

from __future__ import annotations

import time
from pathlib import Path

from ..paths import TINY_STUDENT_DIR as DEFAULT_CHECKPOINT


def _run_generate(args) -> int:
    import numpy as np
    import torch

    from ..exports import save_png, save_turntable, views_grid
    from ..generate import Generator, prepare_image, slerp, write_sample, write_summary
    from ..ply import save_ply
    from ..render.views import orbit_views, to_uint8

    if args.num_samples < 1 or args.interp_steps < 2:
        raise ValueError("--num-samples must be >= 1 and --interp-steps >= 2")
    if args.threads:
        torch.set_num_threads(args.threads)
    image = Path(args.image)
    if not image.is_file():
        raise FileNotFoundError(f"input image {image} does not exist")
    ckpt = Path(args.checkpoint)
    gen = Generator.load(ckpt, args.teacher)
    rgba, record = prepare_image(
        image, resolution=args.input_resolution, matting=args.matting, rembg_model=args.rembg_model
    )
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    save_png(rgba, out / f"{image.stem}_input.png")
    ext = ".mp4" if args.mp4 else ".gif"
    bg = tuple(gen.teacher.background)
    summary = {"image": str(image), "checkpoint": str(ckpt), "prepare": record, "samples": []}
    seeds = [args.seed + k for k in range(args.num_samples)]
    for seed in seeds:
        t0 = time.perf_counter()
        g = gen(rgba, gen.noise(seed))
        dt = time.perf_counter() - t0
        paths = write_sample(g, out, f"{image.stem}_s{seed}", args.resolution, args.frames, bg, ext)
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
            stem = f"{image.stem}_interp_{args.seed}_{args.interpolate}_{i:02d}"
            save_ply(g, out / f"{stem}.ply")
            stems.append(stem)
            rgb, _ = orbit_views(g, [0.0, 90.0, 180.0, 270.0], 15.0, 1.5, 49.1, args.resolution, bg)
            frames.append(to_uint8(rgb))
        strip = np.concatenate([views_grid(f, ncols=1) for f in frames], axis=1)  # columns = interpolation steps
        save_png(strip, out / f"{image.stem}_interp_{args.seed}_{args.interpolate}.png")
        mid = gen(rgba, slerp(a, b, 0.5))
        save_turntable(
            mid,
            out / f"{image.stem}_interp_{args.seed}_{args.interpolate}_mid{ext}",
            num_frames=args.frames,
            resolution=args.resolution,
            background=bg,
        )
        summary["interpolation"] = {
            "seeds": [args.seed, args.interpolate],
            "steps": args.interp_steps,
            "plys": [f"{s}.ply" for s in stems],
            "strip": f"{image.stem}_interp_{args.seed}_{args.interpolate}.png",
        }
        print(
            f"interpolation {args.seed} -> {args.interpolate}: {args.interp_steps} steps -> "
            f"{out / summary['interpolation']['strip']}"
        )
    write_summary(out, summary)
    return 0


def add_generate(sub) -> None:
    p = sub.add_parser("generate", help="image -> 3D Gaussians with a trained PEPD student (.ply, turntable, views)")
    p.add_argument("image", help="RGBA or RGB image (no alpha: background removal)")
    p.add_argument("-o", "--output", required=True, help="output directory")
    p.add_argument("--seed", type=int, default=0, help="noise seed of the first sample")
    p.add_argument("--num-samples", type=int, default=1, help="noise draws (seeds S, S+1, ...)")
    p.add_argument(
        "--checkpoint",
        default=str(DEFAULT_CHECKPOINT),
        help="PEPD folder (config.json + model.safetensors); default: the shipped tiny student",
    )
    p.add_argument("--teacher", default=None, help="teacher folder the student was distilled from (default: tiny)")
    p.add_argument(
        "--interpolate",
        type=int,
        default=None,
        metavar="SEED2",
        help="also walk from --seed to SEED2 by slerp of the noise",
    )
    p.add_argument("--interp-steps", type=int, default=8)
    p.add_argument("--matting", choices=["auto", "colorkey", "rembg", "none"], default="auto")
    p.add_argument("--rembg-model", default=None, help="local rembg/u2net .onnx (for photos without alpha)")
    p.add_argument("--input-resolution", type=int, default=64, help="recentred input size (the rgba_images stage's)")
    p.add_argument("--resolution", type=int, default=128, help="turntable / grid render size")
    p.add_argument("--frames", type=int, default=36)
    p.add_argument("--mp4", action="store_true", help="turntables as MP4 instead of GIF")
    p.add_argument("--threads", type=int, default=0)
    p.set_defaults(func=_run_generate)
