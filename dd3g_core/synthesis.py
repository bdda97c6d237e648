"""Stage 1, ``rgba_images``: RGBA object images for distillation, as webdataset shards.

Tiny profile (this module today): procedural objects from :mod:`dd3g_core.world`, rendered
at the input camera with their exact alpha. The full profile (SDXL + background removal)
plugs into the same ``synthesize_rgba`` entry point.

Each sample: ``rgba.png`` (uint8 [R, R, 4], straight alpha, object centred with a margin by
construction of the world and camera) and ``json`` (seed, split, source, camera, background
colour the 2D-generator stage would have used, alpha coverage).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from .io import stable_hash
from .shards import ShardSetSummary, ShardValidationError, validate_shards, write_shards

STAGE = "rgba_images"
CODE_VERSION = "1"  # bump when the output of this stage changes for the same config


@dataclass(frozen=True)
class ProceduralRGBAConfig:
    num_samples: int = 64
    resolution: int = 64
    split: str = "train"
    seed_start: int = 0
    num_gaussians: int = 3000
    azimuth_deg: float = 0.0
    elevation_deg: float = 0.0
    samples_per_shard: int = 32

    def __post_init__(self) -> None:
        if self.num_samples < 1:
            raise ValueError("num_samples must be >= 1")
        if not 8 <= self.resolution <= 4096:
            raise ValueError(f"resolution must be in [8, 4096], got {self.resolution}")


PRESETS: dict[str, ProceduralRGBAConfig] = {
    "tiny": ProceduralRGBAConfig(),
    "smoke": ProceduralRGBAConfig(num_samples=8, resolution=32, num_gaussians=800, samples_per_shard=4),
}


def stage_version(config: ProceduralRGBAConfig) -> str:
    return stable_hash({"stage": STAGE, "code_version": CODE_VERSION, "config": asdict(config)})


def stage_dir(data_root: str | Path, config: ProceduralRGBAConfig) -> Path:
    return Path(data_root) / STAGE / stage_version(config)


def procedural_rgba_samples(config: ProceduralRGBAConfig) -> Iterator[dict]:
    """Yield one shard sample per seed of the configured split range."""
    from .world import background_color_for, object_spec, render_rgba, sample_object, split_seeds

    for seed in split_seeds(config.split, config.num_samples, start=config.seed_start):
        gaussians = sample_object(seed, num_gaussians=config.num_gaussians)
        rgba = render_rgba(
            gaussians, azimuth_deg=config.azimuth_deg, elevation_deg=config.elevation_deg,
            resolution=config.resolution,
        )
        coverage = float((rgba[..., 3] > 127).mean())
        yield {
            "__key__": f"obj{seed:08d}",
            "rgba.png": rgba,
            "json": {
                "seed": seed,
                "split": config.split,
                "source": "procedural",
                "matting": "exact",
                "camera": {"azimuth_deg": config.azimuth_deg, "elevation_deg": config.elevation_deg},
                "background_rgb": list(background_color_for(seed)),
                "alpha_coverage": coverage,
                "spec": object_spec(seed),
            },
        }


def synthesize_rgba(data_root: str | Path, config: ProceduralRGBAConfig) -> tuple[ShardSetSummary, bool]:
    """Build (or reuse) the stage output for ``config``. Returns (summary, cache_hit)."""
    out = stage_dir(data_root, config)
    if out.exists():
        try:
            return validate_shards(out), True
        except ShardValidationError:
            pass  # a damaged earlier output is rebuilt, atomically replacing it
    summary = write_shards(
        procedural_rgba_samples(config), out, samples_per_shard=config.samples_per_shard,
        config={"stage": STAGE, "code_version": CODE_VERSION, **asdict(config)},
    )
    return summary, False


def preview_grid(summary: ShardSetSummary, count: int = 8) -> np.ndarray:  # uint8 [R, count*R, 4]
    from .shards import iter_samples

    tiles = []
    for sample in iter_samples(summary.directory, validate=False):
        tiles.append(sample["rgba.png"])
        if len(tiles) == count:
            break
    return np.concatenate(tiles, axis=1)
