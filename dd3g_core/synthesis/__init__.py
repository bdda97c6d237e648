"""Stage 1, ``rgba_images``: RGBA object images for distillation, as webdataset shards.

    prompts / seeds -> 2D generator -> background removal -> filters -> recentre -> shards

* generator (:mod:`.generators`): tiny :class:`ProceduralGenerator` (a procedural object on a colour key),
  full :class:`SDXLGenerator` (a local diffusers folder); or the user's own images, ``generator="folder"``
  (:mod:`.folder`, docs/own_data.md);
* matting (:mod:`.matting`): tiny :class:`ColorKeyMatting`, full :class:`RembgMatting` (a local ``.onnx``).

Config in :mod:`.config` (each profile's values in ``dd3g_core.profiles``), post-processing in
:mod:`.postprocess`, robust image loading in :mod:`.image_io`, the partitioned stage in :mod:`.stage`.
See docs/synthesis.md.

    from dd3g_core import synthesis
    from dd3g_core.profiles import get_profile
    cfg = get_profile("tiny").rgba
    summary, cache_hit = synthesis.synthesize_shard("data", cfg, shard_index=0)
"""

from ..io import stable_hash
from .config import (
    CODE_VERSION,
    STAGE,
    MissingModelError,
    QualityFilters,
    RGBASynthesisConfig,
    shard_dir,
    stage_dir,
    stage_version,
)
from .folder import FolderSource, NoImagesError, folder_fingerprint, list_images
from .generators import GeneratedImage, ProceduralGenerator, SDXLGenerator
from .image_io import ImageInfo, ImageLoadError, load_image_rgba
from .matting import ColorKeyMatting, MattingResult, RembgMatting
from .postprocess import QualityResult, check_quality, recentre
from .prompts import EmptyPromptListError, load_prompts, parse_prompts
from .stage import alpha_iou, preview_grid, shard_summaries, synthesize_rgba, synthesize_shard

__all__ = [
    "CODE_VERSION",
    "STAGE",
    "ColorKeyMatting",
    "EmptyPromptListError",
    "FolderSource",
    "GeneratedImage",
    "ImageInfo",
    "ImageLoadError",
    "MattingResult",
    "MissingModelError",
    "NoImagesError",
    "ProceduralGenerator",
    "QualityFilters",
    "QualityResult",
    "RGBASynthesisConfig",
    "RembgMatting",
    "SDXLGenerator",
    "alpha_iou",
    "check_quality",
    "folder_fingerprint",
    "list_images",
    "load_image_rgba",
    "load_prompts",
    "parse_prompts",
    "preview_grid",
    "recentre",
    "shard_dir",
    "shard_summaries",
    "stable_hash",
    "stage_dir",
    "stage_version",
    "synthesize_rgba",
    "synthesize_shard",
]
