"""``dd3g rgba``: your own images as ``rgba_images`` shards (``dd3g_core.synthesis.folder``; docs/own_data.md).

dd3g rgba --folder DIR_OR_GLOB -o DATA_ROOT [--profile tiny|smoke|full|FILE.json] [--matting colorkey|rembg]
          [--rembg-model PATH] [--resolution R] [--num-shards N] [--shard K ...]

Writes ``DATA_ROOT/rgba_images/<version>/shard-NNNNN/`` exactly as the pipeline's ``rgba_images`` asset
does with the same profile settings (so a later ``dagster`` run over the same data root reuses them), and
prints one line per partition and per rejected file. Partitions whose images did not change are reused.
No reject limit applies here: every usable image is kept, every other one is listed with its reason.
"""

from __future__ import annotations

from collections import Counter

from .errors import CLIError
from .options import bounded_int

MAX_SHARDS = 100_000


def _config(args):
    from ..profiles import get_profile

    changes = {"generator": "folder", "folder": args.folder}
    for opt, field in (
        ("matting", "matting"),
        ("rembg_model", "rembg_model_path"),
        ("resolution", "resolution"),
        ("num_shards", "num_shards"),
    ):
        if getattr(args, opt) is not None:
            changes[field] = getattr(args, opt)
    base = get_profile(args.profile).rgba
    if "matting" not in changes and base.matting == "exact":  # the procedural reference matting needs a true alpha
        changes["matting"] = "colorkey"
    return base.replace(**changes).resolved()


def _run_rgba(args) -> int:
    from ..synthesis import list_images, stage_dir, synthesize_shard

    config = _config(args)
    images = list_images(config.folder)  # no image: one NoImagesError line naming the path, before any work
    shards = args.shard or range(config.num_shards)
    bad = [k for k in shards if not 0 <= k < config.num_shards]
    if bad:
        last = config.num_shards - 1
        raise CLIError(f"--shard {bad[0]} is not a partition of {config.num_shards} shards (0..{last})")
    print(f"{len(images)} image file(s) in {config.folder} over {config.num_shards} partition(s)")
    accepted, reasons = 0, Counter()
    for k in shards:
        summary, cache_hit = synthesize_shard(args.output, config, k)
        m = summary.manifest
        accepted += summary.num_samples
        print(
            f"shard {k:05d}: {'reused' if cache_hit else 'wrote'} {summary.num_samples} image(s), "
            f"{m.get('num_rejected', 0)} rejected, of {m.get('attempted', 0)}"
        )
        for r in m.get("rejected", []):
            names = ", ".join(str(x.get("filter")) for x in r.get("reasons", []))
            reasons.update(x.get("filter") for x in r.get("reasons", []))
            print(f"  rejected {r.get('path')}: {names}" + (f" ({r['error']})" if r.get("error") else ""))
    tally = ", ".join(f"{n} {why}" for why, n in reasons.most_common())
    print(f"{accepted} image(s) accepted" + (f", rejected: {tally}" if tally else ""))
    print(f"shards: {stage_dir(args.output, config)}")
    return 0


def add_rgba(sub) -> None:
    p = sub.add_parser("rgba", help="turn a folder (or glob) of your own images into rgba_images shards")
    p.add_argument("--folder", required=True, help="a folder (searched recursively), a glob or one image")
    p.add_argument("-o", "--output", required=True, help="data root: shards go to OUT/rgba_images/<version>/")
    p.add_argument("--profile", default=None, help="profile whose rgba settings to start from ($DD3G_PROFILE, tiny)")
    p.add_argument("--matting", choices=("colorkey", "rembg"), default=None, help="for images without alpha")
    p.add_argument("--rembg-model", default=None, help="local u2net-style .onnx for --matting rembg")
    p.add_argument("--resolution", type=bounded_int("resolution", 8, 4096), default=None, help="output side")
    p.add_argument("--num-shards", type=bounded_int("num_shards", 1, MAX_SHARDS), default=None)
    p.add_argument(
        "--shard",
        type=bounded_int("shard", 0, MAX_SHARDS - 1),
        action="append",
        default=[],
        help="only this partition (repeatable; default: all)",
    )
    p.set_defaults(func=_run_rgba)
