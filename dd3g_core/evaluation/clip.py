"""CLIP image-image similarity, the way peers report it for image-to-3D (docs/evaluation_folder.md).

Protocol: render the generated object at 8 azimuths at elevation 0 on white, embed each render
and the reference (the input image, or the ground-truth view at the same camera) with a CLIP
image encoder, and report the cosine similarity of the projected embeddings (``image_embeds``).

Weights come only from a local Hugging Face ``transformers`` folder (nothing is downloaded):
``config.json`` of a ``CLIPModel`` (``model_type: clip``, e.g. openai/clip-vit-large-patch14) or
of a ``CLIPVisionModelWithProjection`` (``clip_vision_model``, e.g. an ``image_encoder/`` folder),
safetensors weights (pickle ``.bin`` files are refused), and ``preprocessor_config.json``
(resize / centre crop / mean / std; CLIP's defaults at the model's image size without it). Only
the vision tower and its projection are loaded. The preprocessing is done in torch on [0, 1]
tensors (bicubic, antialiased), so renders need no PIL round trip.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["ClipScorer", "clip_scorer_or_none", "CLIP_MEAN", "CLIP_STD"]

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)  # OpenAI CLIP's, the processor default
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
EMBED_BATCH = 32  # images per encoder call (bounds activation memory for ViT-L at 224 px)


@contextlib.contextmanager
def _quiet_transformers():
    """Loading only the vision tower from a CLIPModel file reports every text weight as
    "unexpected" and draws a progress bar; we check the loading info ourselves instead."""
    from transformers.utils import logging as tl

    verbosity, bar = tl.get_verbosity(), tl.is_progress_bar_enabled()
    tl.set_verbosity_error()
    tl.disable_progress_bar()
    try:
        yield
    finally:
        tl.set_verbosity(verbosity)
        if bar:
            tl.enable_progress_bar()


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


def _side(x, key: str, where: Path) -> int:  # size / crop_size entry -> one side in pixels
    if isinstance(x, int) and not isinstance(x, bool):
        side = x
    elif isinstance(x, dict) and ("shortest_edge" in x or "height" in x):
        side = x.get("shortest_edge", x.get("height"))
        if "width" in x and x["width"] != side:
            raise ValueError(f"{where}: non-square {key} {x} is not supported")
    else:
        side = None
    if not isinstance(side, int) or isinstance(side, bool) or not 1 <= side <= 4096:
        raise ValueError(f"{where}: {key} must be an int or {{'shortest_edge'|'height': int}}, got {x!r}")
    return side


class ClipScorer:
    """A CLIP image encoder from a local folder; :meth:`image_similarity` scores renders."""

    def __init__(
        self,
        model,  # transformers CLIPVisionModelWithProjection, eval mode
        name: str,
        resize: int | None,  # shortest edge after resizing (None: no resize)
        crop: int | None,  # centre crop side (None: no crop)
        mean: tuple[float, float, float] | None,  # None: no normalisation
        std: tuple[float, float, float] | None,
        device: str | torch.device = "cpu",
    ):
        self.model = model
        self.name = name
        self.resize, self.crop = resize, crop
        self.device = torch.device(device)
        self.mean = None if mean is None else torch.tensor(mean, dtype=torch.float32).reshape(1, 3, 1, 1)
        self.std = None if std is None else torch.tensor(std, dtype=torch.float32).reshape(1, 3, 1, 1)

    @classmethod
    def from_folder(cls, path: str | os.PathLike, device: str | torch.device = "cpu") -> ClipScorer:
        """Load a local CLIP folder (see the module docstring); clear errors for anything else."""
        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"CLIP model folder {path} does not exist")
        if not path.is_dir():
            raise ValueError(f"CLIP model path {path} is not a folder (expected a transformers CLIP folder)")
        if not (path / "config.json").is_file():
            raise ValueError(f"{path} is not a transformers model folder: no config.json (expected a CLIP folder)")
        raw = _read_json(path / "config.json")
        kind = raw.get("model_type")
        if kind not in ("clip", "clip_vision_model"):
            raise ValueError(
                f"{path}/config.json: model_type {kind!r} is not CLIP (expected 'clip' or 'clip_vision_model')"
            )
        if not any((path / f).is_file() for f in ("model.safetensors", "model.safetensors.index.json")):
            found = sorted(p.name for p in path.iterdir() if p.suffix in (".bin", ".pt", ".pth", ".ckpt"))
            hint = f" (found {found}: pickle-based weights are refused; convert them to safetensors)" if found else ""
            raise ValueError(f"{path}: no model.safetensors{hint}")
        from transformers import CLIPConfig, CLIPVisionConfig, CLIPVisionModelWithProjection

        if kind == "clip":
            full = CLIPConfig.from_pretrained(path, local_files_only=True)
            config = full.vision_config
            # the projection width lives at the top of a CLIPConfig; the vision config's own default is wrong
            config.projection_dim = full.projection_dim
        else:
            config = CLIPVisionConfig.from_pretrained(path, local_files_only=True)
        with _quiet_transformers():
            model, info = CLIPVisionModelWithProjection.from_pretrained(
                path, config=config, local_files_only=True, use_safetensors=True, output_loading_info=True
            )
        # A vision tower without its projection (CLIPVisionModel) would load with a random
        # projection and still give plausible numbers: refuse any missing or reshaped weight.
        missing, mismatched = sorted(info.get("missing_keys") or []), sorted(info.get("mismatched_keys") or [])
        if missing or mismatched:
            raise ValueError(
                f"{path}: not a complete CLIP image encoder: missing weights {missing[:4]}, "
                f"wrongly shaped {[str(m) for m in mismatched[:4]]}"
            )
        model = model.to(device).eval().requires_grad_(False)
        resize, crop, mean, std = cls._preprocessing(path, config.image_size)
        source = str(raw.get("_name_or_path") or "")
        base = source if source and not os.path.isabs(source) and not Path(source).exists() else path.name
        name = f"{base} (CLIP vision width {config.hidden_size}, patch {config.patch_size}, {config.image_size} px)"
        return cls(model, name, resize, crop, mean, std, device)

    @staticmethod
    def _preprocessing(path: Path, image_size: int):  # -> resize, crop, mean, std
        pp = path / "preprocessor_config.json"
        if not pp.is_file():
            return image_size, image_size, CLIP_MEAN, CLIP_STD
        cfg = _read_json(pp)
        resize = _side(cfg.get("size", image_size), "size", pp) if cfg.get("do_resize", True) else None
        crop = _side(cfg.get("crop_size", image_size), "crop_size", pp) if cfg.get("do_center_crop", True) else None
        mean = std = None
        if cfg.get("do_normalize", True):
            mean, std = cfg.get("image_mean", CLIP_MEAN), cfg.get("image_std", CLIP_STD)
            ok = all(
                isinstance(v, (list, tuple)) and len(v) == 3 and all(isinstance(x, (int, float)) for x in v)
                for v in (mean, std)
            )
            if not ok or min(std) <= 0:
                raise ValueError(f"{pp}: image_mean/image_std must be 3 numbers each (std > 0), got {mean}, {std}")
            mean, std = tuple(float(x) for x in mean), tuple(float(x) for x in std)
        return resize, crop, mean, std

    def preprocess(self, images: Tensor) -> Tensor:  # [N, 3, H, W] in [0, 1] -> [N, 3, crop, crop] normalised
        x = images.float()
        if self.resize is not None:
            h, w = x.shape[-2:]
            s = self.resize / min(h, w)
            size = (max(1, round(h * s)), max(1, round(w * s)))
            if size != (h, w):
                # CLIP's processor resizes with PIL bicubic on uint8 (so clipped to [0, 1]); antialias as PIL does
                x = F.interpolate(x, size=size, mode="bicubic", antialias=True, align_corners=False).clamp(0.0, 1.0)
        if self.crop is not None:
            h, w = x.shape[-2:]
            if h < self.crop or w < self.crop:  # the processor pads with zeros before cropping
                ph, pw = max(0, self.crop - h), max(0, self.crop - w)
                x = F.pad(x, (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2))
                h, w = x.shape[-2:]
            top, left = (h - self.crop) // 2, (w - self.crop) // 2
            x = x[..., top : top + self.crop, left : left + self.crop]
        if self.mean is not None:
            x = (x - self.mean.to(x.device)) / self.std.to(x.device)
        return x

    @torch.no_grad()
    def embed(self, images: Tensor) -> Tensor:  # [N, 3, H, W] in [0, 1] -> [N, D] unit length, float32 on CPU
        _check_images(images, "images", 4)
        out = []
        for start in range(0, images.shape[0], EMBED_BATCH):
            x = self.preprocess(images[start : start + EMBED_BATCH].to(self.device))
            e = self.model(pixel_values=x).image_embeds.float()
            out.append(F.normalize(e, dim=-1).cpu())
        return torch.cat(out) if out else torch.zeros(0, self.model.config.projection_dim)

    def image_similarity(
        self,
        images: Tensor,  # [B, V, 3, H, W] in [0, 1]
        references: Tensor,  # [B, 3, H', W'] (one per object) or [B, V, 3, H', W'] (one per view), in [0, 1]
    ) -> Tensor:  # [B, V] cosine similarity of the CLIP image embeddings
        _check_images(images, "images", 5)
        b, v = images.shape[:2]
        if references.ndim == 4:
            _check_images(references, "references", 4)
            if references.shape[0] != b:
                raise ValueError(f"references [B, 3, H, W] need B = {b}, got {list(references.shape)}")
            ref = self.embed(references)[:, None]  # [B, 1, D]: each reference embedded once
        else:
            _check_images(references, "references", 5)
            if references.shape[:2] != images.shape[:2]:
                raise ValueError(
                    f"references [B, V, 3, H, W] must match images' [B, V] = {[b, v]}, got {list(references.shape)}"
                )
            ref = self.embed(references.flatten(0, 1)).reshape(b, v, -1)
        emb = self.embed(images.flatten(0, 1)).reshape(b, v, -1)
        return (emb * ref).sum(-1)


def _check_images(x: Tensor, what: str, ndim: int) -> None:
    if not isinstance(x, Tensor) or x.ndim != ndim or x.shape[-3] != 3 or not x.is_floating_point():
        dims = "[B, V, 3, H, W]" if ndim == 5 else "[N, 3, H, W]"
        got = list(x.shape) if isinstance(x, Tensor) else type(x).__name__
        raise ValueError(f"{what} must be float {dims} in [0, 1], got {got}")
    if x.numel() and (not torch.isfinite(x).all() or x.min() < -1e-3 or x.max() > 1 + 1e-3):
        raise ValueError(f"{what} must lie in [0, 1], got [{x.min().item():.3g}, {x.max().item():.3g}]")


def clip_scorer_or_none(
    path: str | os.PathLike | None, device: str | torch.device = "cpu"
) -> tuple[ClipScorer | None, str]:
    """``(scorer, scorer.name)``, or ``(None, "unavailable: <why>")`` when no folder is given or it
    does not exist, so a report can say why the CLIP column is empty. A folder that exists but is
    not a usable CLIP model raises (the user pointed at the wrong thing)."""
    if path is None or str(path) == "":
        return None, "unavailable: no CLIP model folder given"
    if not Path(path).exists():
        return None, f"unavailable: CLIP model folder {path} does not exist"
    scorer = ClipScorer.from_folder(path, device)
    return scorer, scorer.name
