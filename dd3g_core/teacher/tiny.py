"""``TinyTeacher``: the CPU world's teacher — the same MultiViewUNet in pixel space (DESIGN §2).

* Diffusion space = pixels: ``latent = 2 * image - 1``, 3 channels, the ``"tiny"`` ViewLayout's
  32x32 resolution, F = 4 views + 1 image view. With ``latent_patch`` p > 1 the same pixels are
  regrouped space-to-depth (``pixel_unshuffle``): 3p² channels at 32/p. That is a permutation of
  the pixels, so the diffusion process (and every sample's distribution) is unchanged; only the
  U-Net sees p x p pixel blocks as one position, which lets joint attention run at full image
  detail at a quarter of the tokens (preset ``tiny_s2d``, docs/teacher.md).
* U-Net: ``MultiViewUNetConfig.preset("tiny")``. Image tokens: ``TinyImageEncoder`` (patch
  tokens [B, 64, 64], ``image_encoder.py``). Image view ``ip_img``: the input itself, 2x - 1.
* Text: there is no prompt. The context is ``null_context``, ``null_context_tokens`` (2) learned
  tokens shared by all objects, identical in the conditional and unconditional branch (as
  ImageDream's empty prompt). Two tokens rather than a zero one: a single/zero token makes the
  text cross-attention inert and its ``to_k`` gradients exactly zero (``docs/teacher.md``).
* Scheduler: DDIM, ``v_prediction``, ``squaredcos_cap_v2`` betas, ``trailing`` spacing, final
  alpha 1 (``TINY_SCHEDULER_CONFIG``; the reasoning is in ``docs/teacher.md``).

Checkpoint folder (``save_pretrained`` / ``from_pretrained``): ``config.json`` (format version,
U-Net / image-encoder / scheduler configs, layout, background, null-context size, sampling
defaults) and ``model.safetensors`` (keys ``unet.*``, ``image_encoder.*``, ``null_context``;
ship the EMA weights by passing them as ``state_dict``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from ..cameras import ViewLayout, get_layout
from ..images import prepare_images, resize_square
from ..io import atomic_directory, atomic_write_json
from ..paths import TINY_TEACHER_DIR
from ..weights import check_state_dict, config_errors, load_weights_file, read_json_config
from .config import MultiViewUNetConfig
from .image_encoder import TinyImageEncoder, TinyImageEncoderConfig
from .interface import Condition, MissingWeightsError, MultiViewTeacher
from .sampler import make_scheduler
from .unet import MultiViewUNet

__all__ = ["TinyTeacher", "TINY_SCHEDULER_CONFIG", "default_tiny_teacher_path", "FORMAT", "FORMAT_VERSION"]

FORMAT = "dd3g.tiny_teacher"
FORMAT_VERSION = 1
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"

TINY_SCHEDULER_CONFIG: dict[str, Any] = {
    "num_train_timesteps": 1000,
    "beta_schedule": "squaredcos_cap_v2",  # cosine abar (Nichol & Dhariwal): made for 32-64 px pixel space
    "beta_start": 0.0001,  # unused by the cosine schedule (kept for a complete config)
    "beta_end": 0.02,  # unused by the cosine schedule
    "trained_betas": None,
    "clip_sample": False,  # pure DDIM ODE: no clamping of the x0 estimate
    "set_alpha_to_one": True,  # the last step lands on abar = 1: the output is the clean estimate
    "steps_offset": 0,
    "prediction_type": "v_prediction",  # well-posed at abar_999 ~ 2e-9, where eps-prediction is not
    "timestep_spacing": "trailing",  # first step at t = 999 (pure noise), matching training
    "thresholding": False,
    "rescale_betas_zero_snr": False,
}


def default_tiny_teacher_path(must_exist: bool = True) -> Path:
    """The shipped tiny teacher, ``assets/models/tiny-teacher`` (:data:`dd3g_core.paths.TINY_TEACHER_DIR`)."""
    path = TINY_TEACHER_DIR
    if must_exist:
        _check_files(path)
    return path


def _check_files(path: Path) -> None:
    missing = [n for n in (CONFIG_NAME, WEIGHTS_NAME) if not (path / n).is_file()]
    if missing:
        where = "folder does not exist" if not path.is_dir() else f"missing {', '.join(missing)}"
        raise MissingWeightsError(
            f"tiny teacher checkpoint not found at {path} ({where}). Train it with `dd3g teacher pretrain` "
            f"(it writes {CONFIG_NAME} + {WEIGHTS_NAME} there), or pass the folder of a trained one."
        )


class TinyTeacher(MultiViewTeacher):
    """Pixel-space multi-view teacher for the CPU world (see module doc)."""

    teacher_id = "tiny"

    def __init__(
        self,
        unet_config: MultiViewUNetConfig | str | Mapping[str, Any] = "tiny",
        encoder_config: TinyImageEncoderConfig | Mapping[str, Any] | None = None,  # None: from layout + U-Net
        scheduler_config: Mapping[str, Any] | None = None,  # None: TINY_SCHEDULER_CONFIG
        layout: ViewLayout | str = "tiny",
        background: Sequence[float] = (1.0, 1.0, 1.0),
        null_context_tokens: int = 2,
        default_steps: int = 25,
        default_guidance: float = 1.0,
        latent_patch: int = 1,  # space-to-depth factor p: latents [3p², R/p, R/p] (1 = plain pixels)
        seed: int = 0,  # initialisation seed (own generator state; the global RNG is left alone)
        *,
        _meta: bool = False,  # build on the meta device (from_pretrained fills it)
    ):
        super().__init__()
        ucfg = (
            unet_config
            if isinstance(unet_config, MultiViewUNetConfig)
            else (
                MultiViewUNetConfig.preset(unet_config)
                if isinstance(unet_config, str)
                else MultiViewUNetConfig.from_dict(unet_config)
            )
        )
        self.layout = get_layout(layout) if isinstance(layout, str) else layout
        if encoder_config is None:
            encoder_config = TinyImageEncoderConfig(resolution=self.layout.resolution, embed_dim=ucfg.ip_embed_dim)
        ecfg = (
            encoder_config
            if isinstance(encoder_config, TinyImageEncoderConfig)
            else TinyImageEncoderConfig.from_dict(encoder_config)
        )
        self.latent_patch = int(latent_patch)
        if self.latent_patch < 1 or self.layout.resolution % self.latent_patch:
            raise ValueError(
                f"latent_patch {latent_patch} must be >= 1 and divide the layout resolution {self.layout.resolution}"
            )
        lat_c = 3 * self.latent_patch**2
        if ucfg.in_channels != lat_c or ucfg.out_channels != lat_c:
            raise ValueError(
                f"the tiny teacher is pixel space (latent_patch {self.latent_patch}): U-Net in/out "
                f"channels must be {lat_c}, got {ucfg.in_channels}/{ucfg.out_channels}"
            )
        if ucfg.ip_dim <= 0 or ecfg.embed_dim != ucfg.ip_embed_dim:
            raise ValueError(
                f"image encoder width {ecfg.embed_dim} must equal the U-Net's ip_embed_dim "
                f"{ucfg.ip_embed_dim} (and ip_dim must be > 0)"
            )
        if null_context_tokens < 1:
            raise ValueError("null_context_tokens must be >= 1")
        self.background = tuple(float(c) for c in background)
        self.default_steps, self.default_guidance = int(default_steps), float(default_guidance)
        self.scheduler = make_scheduler(scheduler_config or TINY_SCHEDULER_CONFIG)
        self.null_context_tokens = int(null_context_tokens)

        def build() -> None:
            self.unet = MultiViewUNet(ucfg)
            self.image_encoder = TinyImageEncoder(ecfg)
            self.null_context = nn.Parameter(torch.randn(1, self.null_context_tokens, ucfg.context_dim) * 0.02)

        if _meta:
            with torch.device("meta"):
                build()
        else:
            with torch.random.fork_rng(devices=[]):
                torch.default_generator.manual_seed(int(seed))  # CPU only; CUDA RNG untouched
                build()

    # ------------------------------------------------------------------ sizes / encoders
    @property
    def latent_channels(self) -> int:
        return 3 * self.latent_patch**2

    @property
    def latent_resolution(self) -> int:
        return self.layout.resolution // self.latent_patch

    @property
    def encoder_config(self) -> TinyImageEncoderConfig:
        return self.image_encoder.config

    def encode_condition(
        self,
        images: Tensor,  # [B, 4|3|2|1, H, W] square, float [0, 1] or uint8 (any size: resized)
    ) -> Condition:  # context [B, 2, 64], ip [B, 64, 64], ip_img [B, 3p², 32/p, 32/p]
        """Tokens from ``image_encoder``; ``ip_img`` = the composited image in pixel space.
        Differentiable w.r.t. the encoder and ``null_context`` (teacher training)."""
        rgb = prepare_images(images, self.encoder_config.resolution, self.background).to(self.device, self.dtype)
        b = rgb.shape[0]
        return Condition(
            context=self.null_context.expand(b, -1, -1),
            ip=self.image_encoder(rgb),
            ip_img=self.encode_latents(rgb),
        )

    def encode_latents(self, images: Tensor) -> Tensor:  # [N, 3, H, W] in [0, 1] -> [N, 3p², R/p, R/p] in [-1, 1]
        """``2 x - 1`` after an antialiased resize to the layout resolution R, then space-to-depth
        by ``latent_patch`` (differentiable)."""
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"encode_latents expects RGB [N, 3, H, W] in [0, 1], got {list(images.shape)}")
        x = resize_square(images.to(self.device, self.dtype), self.layout.resolution) * 2.0 - 1.0
        return F.pixel_unshuffle(x, self.latent_patch) if self.latent_patch > 1 else x

    def decode_latents(self, latents: Tensor) -> Tensor:  # [N, 3p², R/p, R/p] -> [N, 3, R, R] in [0, 1]
        if self.latent_patch > 1:
            latents = F.pixel_shuffle(latents, self.latent_patch)
        return ((latents + 1.0) / 2.0).clamp(0.0, 1.0)

    # ------------------------------------------------------------------ (de)serialisation
    def to_config(self) -> dict[str, Any]:
        """The ``config.json`` content."""
        sched = {k: v for k, v in dict(self.scheduler.config).items() if not k.startswith("_")}
        layout = dataclasses.asdict(self.layout)
        layout["azimuths_deg"] = list(layout["azimuths_deg"])
        return {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "teacher_id": self.teacher_id,
            "unet": self.unet.config.to_dict(),
            "image_encoder": self.encoder_config.to_dict(),
            "scheduler": sched,
            "layout": layout,
            "background": list(self.background),
            "null_context_tokens": self.null_context_tokens,
            "default_steps": self.default_steps,
            "default_guidance": self.default_guidance,
            # written only when used, so plain-pixel configs (and their config hashes) stay as they were
            **({"latent_patch": self.latent_patch} if self.latent_patch != 1 else {}),
        }

    def config_dict(self) -> dict[str, Any]:
        return self.to_config()

    @classmethod
    def from_config(cls, config: Mapping[str, Any], seed: int = 0, _meta: bool = False) -> TinyTeacher:
        if config.get("format") != FORMAT or config.get("format_version") != FORMAT_VERSION:
            raise ValueError(
                f"not a {FORMAT} v{FORMAT_VERSION} config (format={config.get('format')!r}, "
                f"format_version={config.get('format_version')!r})"
            )
        lay = dict(config["layout"])
        lay["azimuths_deg"] = tuple(lay["azimuths_deg"])
        return cls(
            unet_config=config["unet"],
            encoder_config=config["image_encoder"],
            scheduler_config=config["scheduler"],
            layout=ViewLayout(**lay),
            background=config["background"],
            null_context_tokens=config["null_context_tokens"],
            default_steps=config["default_steps"],
            default_guidance=config["default_guidance"],
            latent_patch=int(config.get("latent_patch", 1)),
            seed=seed,
            _meta=_meta,
        )

    def save_pretrained(self, path: str | Path, state_dict: Mapping[str, Tensor] | None = None) -> Path:
        """Write ``config.json`` + ``model.safetensors`` atomically (the folder is replaced).

        ``state_dict`` (e.g. the EMA copy) defaults to the current weights; names/shapes are checked.
        """
        from safetensors.torch import save_file

        sd = self.state_dict() if state_dict is None else dict(state_dict)
        check_state_dict(self, sd)
        tensors = {k: v.detach().to("cpu").contiguous() for k, v in sd.items()}
        path = Path(path)
        with atomic_directory(path) as tmp:
            atomic_write_json(tmp / CONFIG_NAME, self.to_config())
            # one metadata key only: safetensors writes the metadata map in a random order, so two keys
            # made the file bytes (and its sha256, the DataVersion) differ from run to run
            save_file(tensors, str(tmp / WEIGHTS_NAME), metadata={"format": "pt"})
        return path

    @classmethod
    def from_pretrained(
        cls,
        path: str | Path | None = None,  # None: default_tiny_teacher_path()
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,  # default float32
    ) -> TinyTeacher:
        """Load a ``save_pretrained`` folder (strict: any key/shape difference is listed)."""
        path = default_tiny_teacher_path() if path is None else Path(path)
        _check_files(path)
        config = read_json_config(path / CONFIG_NAME)
        with config_errors(path / CONFIG_NAME, "tiny teacher"):
            skeleton = cls.from_config(config, _meta=True)
        teacher = load_weights_file(skeleton, path / WEIGHTS_NAME)
        teacher.to(device=device, dtype=dtype or torch.float32)
        return teacher.eval()
