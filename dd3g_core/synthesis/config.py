"""Configuration of the ``rgba_images`` stage: one frozen dataclass and its versioning (the values of
each profile are in ``dd3g_core.profiles``).

A config says which 2D generator and which background-removal backend to use, how many
shards of how many samples to make, and how to post-process and filter them. Its hash (with
:data:`CODE_VERSION`) names the output directory ``<data_root>/rgba_images/<version>/``.

Local model paths are *not* part of the version: moving the same weights to another folder
or machine must not invalidate a finished stage. The version includes a fingerprint of the
model instead (:func:`model_fingerprint`): the sha256 of the rembg ``.onnx`` file, and for an
SDXL folder the contents of its ``*.json`` / ``*.txt`` configs plus the names and byte sizes
of its weight files (hashing 7 GB of weights on every call would be too slow).

``sdxl_path`` / ``rembg_model_path`` left at ``None`` are read from the environment variables
``DD3G_SDXL_PATH`` / ``DD3G_REMBG_MODEL`` when the config is resolved (:meth:`resolved`);
a backend that needs a path nobody gave fails with an error that says how to provide it.

The ``folder`` generator (the user's own images, :mod:`.folder`) is versioned by its *settings only*:
neither the folder's location nor its contents enter the stage version. Each partition instead records
the relative paths and sha256s of the images it was built from and is rebuilt when they change, so
adding images re-caches only the partitions they land in, here and downstream (docs/own_data.md).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..io import stable_hash
from ..paths import ASSETS_DIR

STAGE = "rgba_images"
CODE_VERSION = "2"  # bump when the output of this stage changes for the same config

GENERATORS = ("procedural", "sdxl", "folder")
MATTINGS = ("exact", "colorkey", "rembg")
SDXL_PATH_ENV = "DD3G_SDXL_PATH"
REMBG_MODEL_ENV = "DD3G_REMBG_MODEL"
PROMPTS_DIR = ASSETS_DIR / "prompts"
DEFAULT_PROMPT_TEMPLATE = "a 3D render of {prompt}, plain white background, centered, full object, studio lighting"
DEFAULT_NEGATIVE_PROMPT = "cropped, out of frame, multiple objects, text, watermark, busy background, shadow"


class MissingModelError(FileNotFoundError):
    """A backend needs local weights that are not where the config (or environment) says."""


@dataclass(frozen=True)
class QualityFilters:
    """Rejection rules applied to the matted image before it is recentred (see postprocess.py).

    ``alpha_threshold``: alpha (0..1) above which a pixel counts as object. ``min_pixels``:
    fewer object pixels than this is ``empty``. ``min_coverage``/``max_coverage``: the object's
    share of the generated frame (too small = too few pixels to upscale, too large = the
    background was probably not removed). ``border_px``: an object bbox within this many pixels
    of the frame edge is ``touches_border`` (the object is likely cut off).
    """

    alpha_threshold: float = 0.5
    min_pixels: int = 16
    min_coverage: float = 0.02
    max_coverage: float = 0.85
    border_px: int = 1
    reject_border_touch: bool = True

    def __post_init__(self) -> None:
        if not 0.0 < self.alpha_threshold < 1.0:
            raise ValueError(f"alpha_threshold must be in (0, 1), got {self.alpha_threshold}")
        if not 0.0 <= self.min_coverage < self.max_coverage <= 1.0:
            raise ValueError(
                f"need 0 <= min_coverage < max_coverage <= 1, got {self.min_coverage}, {self.max_coverage}"
            )
        if self.min_pixels < 1 or self.border_px < 0:
            raise ValueError("min_pixels must be >= 1 and border_px >= 0")


@dataclass(frozen=True)
class RGBASynthesisConfig:
    """Everything that decides the bytes of the ``rgba_images`` stage (see module docstring).

    Sample ``i`` of shard ``k`` uses seed ``s = seed_start + k * samples_per_shard + i``;
    the procedural object seed is ``s`` offset into ``split``'s seed range
    (:data:`dd3g_core.world.SPLITS`), and the SDXL generator seed is that same number.
    The ``folder`` generator has no seeds: ``folder`` (a folder or a glob of images) is split over
    ``num_shards`` by a hash of each image's relative path, and ``samples_per_shard`` is the most
    samples per tar file of a partition (:mod:`.folder`).
    """

    generator: str = "procedural"
    matting: str = "colorkey"
    prompts_file: str = "objects.txt"  # under assets/prompts/ (or an absolute path)
    sdxl_path: str | None = None  # local diffusers folder; None = $DD3G_SDXL_PATH
    rembg_model_path: str | None = None  # local .onnx; None = $DD3G_REMBG_MODEL
    resolution: int = 64  # output side R of rgba.png
    margin: float = 0.1  # empty border on each side of the object's bbox, as a fraction of R
    samples_per_shard: int = 32
    num_shards: int = 8
    seed_start: int = 0
    split: str = "train"
    filters: QualityFilters = field(default_factory=QualityFilters)
    # procedural generator
    render_resolution: int = 128  # side of the generated image (before recentring and resizing)
    num_gaussians: int = 3000
    azimuth_deg: float = 0.0
    elevation_deg: float = 0.0
    # SDXL generator
    sdxl_steps: int = 30
    sdxl_guidance: float = 5.0
    sdxl_size: int = 1024
    sdxl_batch_size: int = 1
    sdxl_variant: str | None = None  # e.g. "fp16" for a folder holding only *.fp16.safetensors
    prompt_template: str = DEFAULT_PROMPT_TEMPLATE
    negative_prompt: str = DEFAULT_NEGATIVE_PROMPT
    # colour-key matting (see matting.ColorKeyMatting)
    colorkey_low: float = 16.0
    colorkey_high: float = 64.0
    despill: bool = True
    # folder generator: a folder (searched recursively) or a glob of the user's images
    folder: str | None = None

    def __post_init__(self) -> None:
        if self.generator not in GENERATORS:
            raise ValueError(f"generator must be one of {GENERATORS}, got {self.generator!r}")
        if (self.generator == "folder") != bool(self.folder):
            raise ValueError(
                "the 'folder' generator needs rgba.folder (a folder or a glob of your images), and rgba.folder "
                f"is only read by it; got generator {self.generator!r}, folder {self.folder!r}"
            )
        if self.matting not in MATTINGS:
            raise ValueError(f"matting must be one of {MATTINGS}, got {self.matting!r}")
        if self.matting == "exact" and self.generator != "procedural":
            raise ValueError("matting 'exact' needs the procedural generator (the only one with a true alpha)")
        if not 8 <= self.resolution <= 4096:
            raise ValueError(f"resolution must be in [8, 4096], got {self.resolution}")
        if not 0.0 <= self.margin < 0.45:
            raise ValueError(f"margin must be in [0, 0.45), got {self.margin}")
        if self.samples_per_shard < 1 or self.num_shards < 1:
            raise ValueError("samples_per_shard and num_shards must be >= 1")
        if self.seed_start < 0:
            raise ValueError("seed_start must be >= 0")
        if not 8 <= self.render_resolution <= 4096 or not 8 <= self.sdxl_size <= 4096:
            raise ValueError("render_resolution and sdxl_size must be in [8, 4096]")
        if self.sdxl_steps < 1 or self.sdxl_batch_size < 1:
            raise ValueError("sdxl_steps and sdxl_batch_size must be >= 1")
        if "{prompt}" not in self.prompt_template:
            raise ValueError(f"prompt_template must contain '{{prompt}}', got {self.prompt_template!r}")
        if not 0.0 <= self.colorkey_low < self.colorkey_high:
            raise ValueError("need 0 <= colorkey_low < colorkey_high")
        if isinstance(self.filters, dict):  # from json / a dict-built config
            object.__setattr__(self, "filters", QualityFilters(**self.filters))

    # --- derived -----------------------------------------------------------------------------
    @property
    def num_samples(self) -> int:
        """Samples *attempted* (accepted + rejected) over all shards."""
        return self.num_shards * self.samples_per_shard

    def shard_seeds(self, shard_index: int) -> list[int]:
        if not 0 <= shard_index < self.num_shards:
            raise ValueError(f"shard_index {shard_index} out of range [0, {self.num_shards})")
        first = self.seed_start + shard_index * self.samples_per_shard
        return list(range(first, first + self.samples_per_shard))

    def replace(self, **changes) -> RGBASynthesisConfig:
        return dataclasses.replace(self, **changes)

    def resolved(self) -> RGBASynthesisConfig:
        """Fill model paths from the environment and check that the backends' files exist."""
        cfg = self
        if cfg.generator == "sdxl":
            path = cfg.sdxl_path or os.environ.get(SDXL_PATH_ENV)
            if not path:
                raise MissingModelError(
                    f"the 'sdxl' generator needs a local StableDiffusionXLPipeline folder: set sdxl_path or "
                    f"${SDXL_PATH_ENV} (e.g. `huggingface-cli download stabilityai/stable-diffusion-xl-base-1.0 "
                    f"--local-dir /models/sdxl` on a machine with internet, then copy it here)"
                )
            check_sdxl_folder(path)
            cfg = dataclasses.replace(cfg, sdxl_path=str(Path(path).expanduser().resolve()))
        if cfg.matting == "rembg":
            path = cfg.rembg_model_path or os.environ.get(REMBG_MODEL_ENV)
            if not path:
                raise MissingModelError(
                    f"the 'rembg' matting needs a local u2net-style .onnx file: set rembg_model_path or "
                    f"${REMBG_MODEL_ENV} (e.g. download u2net.onnx from "
                    f"https://github.com/danielgatis/rembg/releases on a machine with internet)"
                )
            check_rembg_model(path)
            cfg = dataclasses.replace(cfg, rembg_model_path=str(Path(path).expanduser().resolve()))
        if cfg.generator == "folder":  # where the images are; whether any are there is decided when listing
            cfg = dataclasses.replace(cfg, folder=str(Path(cfg.folder).expanduser().absolute()))
        else:
            prompts_path(cfg.prompts_file)  # a missing prompt file is an error for every generator that reads it
        return cfg

    def to_record(self) -> dict:
        """The config as stored in manifests (model and folder paths included, for humans)."""
        rec = asdict(self)
        if self.generator != "folder":
            rec.pop("folder")  # the manifests of the other generators stay as they were
        return rec


def check_sdxl_folder(path: str | os.PathLike) -> Path:
    p = Path(path).expanduser()
    if not (p / "model_index.json").is_file():
        raise MissingModelError(
            f"no SDXL pipeline at {p} (expected a diffusers folder with model_index.json, unet/, vae/, "
            f"text_encoder/, text_encoder_2/, tokenizer/, tokenizer_2/, scheduler/); save one with "
            f"StableDiffusionXLPipeline.save_pretrained or `huggingface-cli download "
            f"stabilityai/stable-diffusion-xl-base-1.0 --local-dir {p}` where there is internet"
        )
    return p


def check_rembg_model(path: str | os.PathLike) -> Path:
    p = Path(path).expanduser()
    if not p.is_file():
        raise MissingModelError(
            f"rembg model file {p} does not exist; copy a u2net-style ONNX model there (e.g. u2net.onnx "
            f"from https://github.com/danielgatis/rembg/releases/download/v0.0.0/u2net.onnx, fetched on a "
            f"machine with internet). Nothing is downloaded at run time."
        )
    if p.suffix.lower() != ".onnx":
        raise MissingModelError(f"rembg model {p} is not an .onnx file")
    return p


# --------------------------------------------------------------------------------------
# Versioning
# --------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=32)
def _file_sha256(path: str, size: int, mtime_ns: int) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def model_fingerprint(config: RGBASynthesisConfig) -> dict:
    """Identity of the local models a (resolved) config uses, independent of where they live."""
    out: dict = {}
    if config.generator == "sdxl" and config.sdxl_path:
        root = Path(config.sdxl_path)
        items = []
        for p in sorted(root.rglob("*")):
            if not p.is_file():
                continue
            rel = p.relative_to(root).as_posix()
            if p.suffix in (".json", ".txt"):
                items.append([rel, hashlib.sha256(p.read_bytes()).hexdigest()])
            else:
                items.append([rel, p.stat().st_size])
        out["sdxl"] = stable_hash(items)
    if config.matting == "rembg" and config.rembg_model_path:
        p = Path(config.rembg_model_path)
        st = p.stat()
        out["rembg"] = _file_sha256(str(p), st.st_size, st.st_mtime_ns)[:16]
    return out


_SDXL_FIELDS = (
    "prompts_file",
    "sdxl_steps",
    "sdxl_guidance",
    "sdxl_size",
    "sdxl_batch_size",
    "sdxl_variant",
    "prompt_template",
    "negative_prompt",
)
_PROCEDURAL_FIELDS = ("render_resolution", "num_gaussians", "azimuth_deg", "elevation_deg")
_COLORKEY_FIELDS = ("colorkey_low", "colorkey_high")
_SEED_FIELDS = ("split", "seed_start")  # the folder generator has no seeds
FOLDER_CODE_VERSION = "1"  # bump when the folder source's output changes for the same images and config


def version_record(config: RGBASynthesisConfig) -> dict:
    """What the stage version hashes: code version, config without local paths, model identity,
    and the prompt list's contents (for the SDXL generator). For the folder generator neither the
    folder's location nor its contents: each partition records and checks its own inputs (module doc)."""
    cfg = asdict(config)
    cfg.pop("sdxl_path")
    cfg.pop("rembg_model_path")
    cfg.pop("folder")
    # settings of backends this config does not use do not change its output
    unused = _PROCEDURAL_FIELDS if config.generator != "procedural" else _SDXL_FIELDS
    if config.generator == "folder":
        unused = unused + _SDXL_FIELDS + _SEED_FIELDS
    if config.matting != "colorkey":
        unused = unused + _COLORKEY_FIELDS
    for name in unused:
        cfg.pop(name, None)
    rec = {"stage": STAGE, "code_version": CODE_VERSION, "config": cfg, "models": model_fingerprint(config)}
    if config.generator == "folder":
        rec["folder_code_version"] = FOLDER_CODE_VERSION
    if config.generator == "sdxl":
        from .prompts import load_prompts

        rec["prompts"] = stable_hash(load_prompts(config.prompts_file))
    return rec


def stage_version(config: RGBASynthesisConfig) -> str:
    """Hash of code version + resolved config (see :func:`version_record`)."""
    return stable_hash(version_record(config.resolved()))


def stage_dir(data_root: str | os.PathLike, config: RGBASynthesisConfig) -> Path:
    """``<data_root>/rgba_images/<version>/``; shard ``k`` lives in ``shard-{k:05d}/`` below it."""
    return Path(data_root) / STAGE / stage_version(config)


def shard_dir(data_root: str | os.PathLike, config: RGBASynthesisConfig, shard_index: int) -> Path:
    config.shard_seeds(shard_index)  # range check
    return stage_dir(data_root, config) / f"shard-{shard_index:05d}"


def prompts_path(prompts_file: str) -> Path:
    p = Path(prompts_file).expanduser()
    if not p.is_absolute():
        p = PROMPTS_DIR / p
    if not p.is_file():
        raise FileNotFoundError(f"prompt list {p} does not exist (prompt lists live in {PROMPTS_DIR})")
    return p
