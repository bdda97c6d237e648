"""``ImageDreamTeacher``: ImageDream (ipmv) from a local diffusers folder, no remote code.

Folder = ``ashawkey/imagedream-ipmv-diffusers`` (reference ``imagedream.md`` §1): every component
is a stock class (``AutoencoderKL``, ``CLIPTextModel``, ``CLIPTokenizer``, ``CLIPVisionModel``,
``CLIPImageProcessor``, ``DDIMScheduler``, all with ``local_files_only=True``) except the U-Net,
which is our ``MultiViewUNet`` built from ``unet/config.json`` and filled strictly from
``unet/diffusion_pytorch_model.safetensors``. ``from_pretrained`` also accepts the repo id
when the Hugging Face cache already holds it (offline lookup only).

Condition (§3.2), deliberate differences in *italics*:

* ip tokens: the input composited on white, ``(x * 255)`` truncated to uint8 (as the reference),
  ``CLIPImageProcessor`` (bicubic 224, centre crop, CLIP normalisation), ``CLIPVisionModel``
  ``hidden_states[-2]`` -> [B, 257, 1280]; unconditional = zeros.
* ip_img: the image resized to the layout's 256 px (*bilinear with antialiasing*; the reference
  does not antialias), ``x * 2 - 1``, VAE posterior *mode* (the reference calls ``.sample()`` on
  the global RNG, §5 pitfall 1) times ``scaling_factor`` 0.18215; unconditional = zeros.
* text: the empty prompt for both branches (LGM), ``last_hidden_state`` [B, 77, 1024].

Cameras: ``embedding_azimuth_offset_deg = 90`` — LGM takes ImageDream's outputs [1, 2, 3, 0]
(embedded azimuths 90, 180, 270, 0) as its views at azimuths 0, 90, 180, 270 (§3.6), i.e. the
view conditioned on azimuth 90 is the input viewpoint. Feeding ``layout azimuth + 90`` makes
output i the view at the layout's azimuth i (output 0 = the input view).
The sampling state stays float32; the U-Net/VAE run in ``dtype`` (reference: all fp16, §5 pitfall 6).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..cameras import ViewLayout, get_layout
from ..images import composite_rgb, resize_square
from ..weights import load_unet_state_dict
from .config import MultiViewUNetConfig
from .interface import Condition, MissingWeightsError, MultiViewTeacher
from .sampler import make_scheduler
from .unet import MultiViewUNet

__all__ = [
    "RELEASE_SCHEDULER_CONFIG",
    "ImageDreamTeacher",
    "IMAGEDREAM_REPO",
    "missing_imagedream_files",
    "resolve_imagedream_path",
    "check_imagedream_folder",
]

# scheduler/scheduler_config.json of the ImageDream ipmv release: what the real folder holds, and
# what the random-weight stand-ins of the tests and benchmarks/gpu_check.py build their scheduler from
RELEASE_SCHEDULER_CONFIG = {
    "num_train_timesteps": 1000,
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "clip_sample": False,
    "set_alpha_to_one": False,
    "steps_offset": 1,
    "prediction_type": "epsilon",
    "timestep_spacing": "leading",
}

IMAGEDREAM_REPO = "ashawkey/imagedream-ipmv-diffusers"
HOWTO = (
    f"Download {IMAGEDREAM_REPO} on a connected machine (e.g. `hf download {IMAGEDREAM_REPO} "
    f"--local-dir imagedream-ipmv-diffusers`) and copy the whole folder here; the remote-code files "
    f"(pipeline_mvdream.py, unet/mv_unet.py) are not needed, only safetensors weights are read."
)

# Each requirement: alternatives, each a tuple of files that must all exist.
_REQUIRED: list[list[tuple[str, ...]]] = [
    [("model_index.json",)],
    [("unet/config.json",)],
    [("unet/diffusion_pytorch_model.safetensors",)],
    [("vae/config.json",)],
    [("vae/diffusion_pytorch_model.safetensors",)],
    [("text_encoder/config.json",)],
    [("text_encoder/model.safetensors",), ("text_encoder/model.safetensors.index.json",)],
    [("tokenizer/vocab.json", "tokenizer/merges.txt"), ("tokenizer/tokenizer.json",)],
    [("image_encoder/config.json",)],
    [("image_encoder/model.safetensors",), ("image_encoder/model.safetensors.index.json",)],
    [("feature_extractor/preprocessor_config.json",)],
    [("scheduler/scheduler_config.json",)],
]


def missing_imagedream_files(root: str | Path) -> list[str]:
    """Relative paths the folder lacks (first alternative of each unmet requirement, 'or' the others)."""
    root = Path(root)
    missing = []
    for alternatives in _REQUIRED:
        if any(all((root / f).is_file() for f in alt) for alt in alternatives):
            continue
        first = [f for f in alternatives[0] if not (root / f).is_file()]
        others = " or ".join("+".join(a) for a in alternatives[1:])
        text = ", ".join(first) + (f" (or {others})" if others else "")
        pickled = Path(first[0]).with_suffix(".bin")
        if first[0].endswith(".safetensors") and (root / pickled).is_file():
            text += f" [{pickled} exists but pickle checkpoints are not loaded]"
        missing.append(text)
    return missing


def resolve_imagedream_path(path: str | Path) -> Path:
    """A local folder, or a repo id already in the Hugging Face cache (never downloads)."""
    p = Path(path).expanduser()
    if p.is_dir():
        return p
    if isinstance(path, str) and path.count("/") == 1 and not p.exists():
        try:
            from huggingface_hub import snapshot_download

            return Path(snapshot_download(path, local_files_only=True))
        except Exception:  # not cached (or hub lib missing): fall through to the clear error
            pass
    raise MissingWeightsError(f"ImageDream weights folder {path} does not exist. {HOWTO}")


def check_imagedream_folder(path: str | Path) -> dict[str, Any]:
    """Validate a local ImageDream folder without loading its weights (seconds, on any machine).

    Every component is present (:func:`missing_imagedream_files`), every ``*.json`` config parses,
    ``unet/config.json`` is a valid ``MultiViewUNetConfig`` and the U-Net weights have exactly the
    state-dict layout that config implies (names and shapes, read from the safetensors header).
    Returns ``{"path", "unet": config dict, "unet_parameters"}``; raises ``MissingWeightsError`` for
    missing files and ``ValueError`` naming the file for a bad config or layout.
    """
    from safetensors import safe_open

    from ..weights import diff_shapes, format_diff, state_dict_shapes

    root = resolve_imagedream_path(path)
    missing = missing_imagedream_files(root)
    if missing:
        raise MissingWeightsError(
            f"ImageDream weights folder {root} is incomplete; missing: {'; '.join(missing)}. {HOWTO}"
        )
    for cfg_file in sorted(root.rglob("*.json")):
        try:
            json.loads(cfg_file.read_text())
        except (ValueError, UnicodeDecodeError) as e:
            raise ValueError(f"{cfg_file} is not valid JSON: {e}") from None
    cfg_file, weights = root / "unet" / "config.json", root / "unet" / "diffusion_pytorch_model.safetensors"
    unet = _meta_unet(cfg_file)
    try:
        with safe_open(str(weights), framework="pt") as f:
            shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}  # noqa: SIM118 - a safetensors handle, not a dict
    except Exception as e:  # noqa: BLE001 - a truncated or foreign file: say which
        raise ValueError(f"{weights} is not a readable safetensors file: {type(e).__name__}: {e}") from None
    diff = diff_shapes(state_dict_shapes(unet.state_dict()), shapes)
    if any(diff):
        raise ValueError(f"{weights} does not match {cfg_file}:\n{format_diff(*diff)}")
    return {
        "path": str(root),
        "unet": unet.config.to_dict(),
        "unet_parameters": sum(p.numel() for p in unet.parameters()),
    }


class ImageDreamTeacher(MultiViewTeacher):
    """ImageDream ipmv: latent space (VAE /8), 4 views + image view at 256 px (see module doc)."""

    teacher_id = "imagedream-ipmv"
    embedding_azimuth_offset_deg = 90.0
    vae_batch = 8  # images per VAE call (memory bound)

    def __init__(
        self,
        unet: MultiViewUNet,
        vae: nn.Module,
        text_encoder: nn.Module,
        tokenizer: Any,
        image_encoder: nn.Module,
        feature_extractor: Any,
        scheduler: Any,
        layout: ViewLayout | str = "imagedream",
        background: Sequence[float] = (1.0, 1.0, 1.0),
        default_steps: int = 30,
        default_guidance: float = 5.0,
    ):
        super().__init__()
        self.unet, self.vae, self.text_encoder, self.image_encoder = unet, vae, text_encoder, image_encoder
        self.tokenizer, self.feature_extractor = tokenizer, feature_extractor
        self.scheduler = make_scheduler(scheduler.config if hasattr(scheduler, "config") else scheduler)
        self.layout = get_layout(layout) if isinstance(layout, str) else layout
        self.background = tuple(float(c) for c in background)
        self.default_steps, self.default_guidance = int(default_steps), float(default_guidance)
        self._text_cache: dict[tuple, Tensor] = {}
        self._digest: tuple | None = None
        cfg = unet.config
        checks = [
            ("U-Net in_channels", cfg.in_channels, "VAE latent_channels", vae.config.latent_channels),
            ("U-Net context_dim", cfg.context_dim, "text encoder hidden_size", text_encoder.config.hidden_size),
        ]
        if cfg.ip_dim > 0:
            checks.append(
                ("U-Net ip_embed_dim", cfg.ip_embed_dim, "image encoder hidden_size", image_encoder.config.hidden_size)
            )
        for a, va, b, vb in checks:
            if va != vb:
                raise ValueError(f"incompatible ImageDream components: {a} = {va} but {b} = {vb}")
        if self.layout.resolution % self.vae_scale_factor:
            raise ValueError(
                f"layout resolution {self.layout.resolution} is not a multiple of the VAE factor "
                f"{self.vae_scale_factor}"
            )
        self.requires_grad_(False)
        self.eval()

    # ------------------------------------------------------------------ loading
    @classmethod
    def from_pretrained(
        cls,
        path: str | Path,  # local diffusers folder (or a repo id present in the HF cache)
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,  # default float32; fp16/bf16 for CUDA
        layout: ViewLayout | str = "imagedream",
    ) -> ImageDreamTeacher:
        from diffusers import AutoencoderKL, DDIMScheduler
        from transformers import CLIPImageProcessor, CLIPTextModel, CLIPTokenizer, CLIPVisionModel

        root = resolve_imagedream_path(path)
        missing = missing_imagedream_files(root)
        if missing:
            raise MissingWeightsError(
                f"ImageDream weights folder {root} is incomplete; missing: {'; '.join(missing)}. {HOWTO}"
            )
        dtype = dtype or torch.float32
        common = dict(local_files_only=True)
        unet = load_multiview_unet(root / "unet", dtype)
        vae = AutoencoderKL.from_pretrained(
            str(root), subfolder="vae", use_safetensors=True, torch_dtype=dtype, **common
        )
        text_encoder = CLIPTextModel.from_pretrained(
            str(root), subfolder="text_encoder", use_safetensors=True, dtype=dtype, **common
        )
        tokenizer = CLIPTokenizer.from_pretrained(str(root), subfolder="tokenizer", **common)
        image_encoder = CLIPVisionModel.from_pretrained(
            str(root), subfolder="image_encoder", use_safetensors=True, dtype=dtype, **common
        )
        feature_extractor = CLIPImageProcessor.from_pretrained(str(root), subfolder="feature_extractor", **common)
        scheduler = DDIMScheduler.from_pretrained(str(root), subfolder="scheduler", **common)
        teacher = cls(unet, vae, text_encoder, tokenizer, image_encoder, feature_extractor, scheduler, layout)
        return teacher.to(device=device)

    # ------------------------------------------------------------------ sizes
    @property
    def vae_scale_factor(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def latent_channels(self) -> int:
        return int(self.vae.config.latent_channels)

    @property
    def latent_resolution(self) -> int:
        return self.layout.resolution // self.vae_scale_factor

    # ------------------------------------------------------------------ encoders
    @torch.no_grad()
    def encode_text(self, prompts: Sequence[str]) -> Tensor:  # -> [n, 77, context_dim] (cached per prompt)
        """``text_encoder(ids)[0]`` (last_hidden_state), ids padded/truncated to 77 tokens."""
        enc = self.text_encoder
        dev, dt = enc.device, enc.dtype
        rows = []
        for prompt in prompts:
            key = (prompt, str(dev), dt)
            if key not in self._text_cache:
                n = min(int(self.tokenizer.model_max_length), int(enc.config.max_position_embeddings))
                ids = self.tokenizer(
                    [prompt], padding="max_length", max_length=n, truncation=True, return_tensors="pt"
                ).input_ids.to(dev)
                self._text_cache[key] = enc(ids)[0]
            rows.append(self._text_cache[key])
        return torch.cat(rows)

    @torch.no_grad()
    def encode_image_tokens(self, rgb: Tensor) -> Tensor:  # [B, 3, H, W] in [0, 1] -> [B, 257, 1280]
        """CLIP penultimate hidden states of the uint8-truncated image (§3.2)."""
        u8 = (rgb.clamp(0, 1) * 255).to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()  # truncation, as reference
        pixels = self.feature_extractor(images=list(u8), return_tensors="pt").pixel_values
        enc = self.image_encoder
        out = enc(pixel_values=pixels.to(enc.device, enc.dtype), output_hidden_states=True)
        return out.hidden_states[-2]

    @torch.no_grad()
    def encode_condition(
        self,
        images: Tensor,  # [B, 4|3|2|1, H, W] square, float [0, 1] or uint8, any size
        prompt: str = "",
        negative_prompt: str = "",
    ) -> Condition:  # context [B, 77, 1024], ip [B, 257, 1280], ip_img [B, 4, 32, 32]
        rgb = composite_rgb(images, self.background)
        resized = resize_square(rgb, self.layout.resolution).clamp(0.0, 1.0)  # also rejects non-square
        b = rgb.shape[0]
        context = self.encode_text([prompt]).expand(b, -1, -1)
        uncond = None if negative_prompt == prompt else self.encode_text([negative_prompt]).expand(b, -1, -1)
        return Condition(
            context=context,
            ip=self.encode_image_tokens(rgb),
            ip_img=self.encode_latents(resized),
            uncond_context=uncond,
        )

    def encode_latents(self, images: Tensor) -> Tensor:  # [N, 3, H, W] in [0, 1] -> [N, 4, H/8, W/8]
        """``mode(vae.encode(2x - 1)) * scaling_factor`` (differentiable; no posterior sampling)."""
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"encode_latents expects RGB [N, 3, H, W] in [0, 1], got {list(images.shape)}")
        x = resize_square(images.to(self.vae.device, self.vae.dtype), self.layout.resolution) * 2.0 - 1.0
        cfg = self.vae.config
        lat = torch.cat([self.vae.encode(c).latent_dist.mode() for c in x.split(self.vae_batch)])
        shift = getattr(cfg, "shift_factor", None) or 0.0
        return (lat - shift) * cfg.scaling_factor

    def decode_latents(self, latents: Tensor) -> Tensor:  # [N, 4, h, w] -> [N, 3, 8h, 8w] in [0, 1]
        cfg = self.vae.config
        shift = getattr(cfg, "shift_factor", None) or 0.0
        z = latents.to(self.vae.device, self.vae.dtype) / cfg.scaling_factor + shift
        img = torch.cat([self.vae.decode(c).sample for c in z.split(self.vae_batch)])
        return (img / 2 + 0.5).clamp(0.0, 1.0)

    # ------------------------------------------------------------------ identity
    def _weight_modules(self) -> list[nn.Module]:
        return [self.unet, self.vae, self.text_encoder, self.image_encoder]

    def weights_digest(self) -> str:
        """Cached per (device, dtype): the teacher is frozen and hashing ~2 G parameters takes seconds."""
        key = (str(self.device), self.dtype)
        if self._digest is None or self._digest[0] != key:
            self._digest = (key, super().weights_digest())
        return self._digest[1]

    def config_dict(self) -> dict[str, Any]:
        import dataclasses

        vae, fe = self.vae.config, self.feature_extractor
        layout = dataclasses.asdict(self.layout)
        layout["azimuths_deg"] = list(layout["azimuths_deg"])
        return {
            "unet": self.unet.config.to_dict(),
            "scheduler": {k: v for k, v in dict(self.scheduler.config).items() if not k.startswith("_")},
            "vae": {
                k: getattr(vae, k, None)
                for k in ("scaling_factor", "shift_factor", "latent_channels", "block_out_channels")
            },
            "feature_extractor": {k: getattr(fe, k, None) for k in ("size", "crop_size", "image_mean", "image_std")},
            "layout": layout,
            "background": list(self.background),
            "embedding_azimuth_offset_deg": self.embedding_azimuth_offset_deg,
            "dtype": str(self.dtype),
            "preprocessing": "v1: clip=uint8-trunc+processor, vae=antialiased-bilinear+mode, text=empty-prompt",
        }


def load_multiview_unet(folder: Path, dtype: torch.dtype = torch.float32) -> MultiViewUNet:
    """``config.json`` -> MultiViewUNet on the meta device, then a strict safetensors load."""
    from safetensors.torch import load_file

    cfg_file, weights = folder / "config.json", folder / "diffusion_pytorch_model.safetensors"
    unet = _meta_unet(cfg_file)
    try:
        load_unet_state_dict(unet, load_file(str(weights), device="cpu"), assign=True)
    except ValueError as e:
        raise ValueError(f"{weights} does not match {cfg_file}: {e}") from None
    return unet.to(dtype=dtype)


def _meta_unet(cfg_file: Path) -> MultiViewUNet:
    """The U-Net ``unet/config.json`` describes, on the meta device (no memory); a bad config names the file."""
    try:
        cfg = MultiViewUNetConfig.from_dict(json.loads(cfg_file.read_text()))
    except (ValueError, TypeError) as e:
        raise ValueError(f"{cfg_file}: {e}") from None
    with torch.device("meta"):
        return MultiViewUNet(cfg)
