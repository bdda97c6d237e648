"""2D generators: what produces the RGB object image that background removal then cuts out.

Both emit what a text-to-image model emits: an **RGB image of one object on a plain
background**, no alpha. The interface is ``generate(seeds, prompts) -> list[GeneratedImage]``
(a batch; results depend only on each sample's own seed, not on the batch composition).

* :class:`ProceduralGenerator` (tiny profile): a procedural object of :mod:`dd3g_core.world`
  rendered at the input camera and composited on its plain colour-key backdrop
  (``background_color_for(seed)``). The exact render (true alpha and straight colours) is
  kept aside in ``GeneratedImage.true_rgba`` for *evaluation only* (colour-key IoU) and for
  the ``exact`` matting reference; the pipeline's matting sees only the RGB.
* :class:`SDXLGenerator` (full profile): diffusers' ``StableDiffusionXLPipeline`` loaded from a
  local folder (``local_files_only=True``: nothing downloads), one ``torch.Generator`` per
  sample seeded with that sample's seed, fp16 on CUDA / fp32 on CPU, prompts wrapped in
  ``prompt_template`` (recorded in every sample's json).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .config import DEFAULT_NEGATIVE_PROMPT, DEFAULT_PROMPT_TEMPLATE, check_sdxl_folder


@dataclass
class GeneratedImage:
    rgb: np.ndarray  # uint8 [H, W, 3]
    record: dict  # json-serialisable: prompt / object spec, seeds, backend settings
    true_rgba: np.ndarray | None = field(default=None, repr=False)  # evaluation only (procedural)


class ProceduralGenerator:
    name = "procedural"

    def __init__(
        self,
        resolution: int = 128,
        num_gaussians: int = 3000,
        azimuth_deg: float = 0.0,
        elevation_deg: float = 0.0,
        split: str = "train",
    ):
        from ..world import SPLITS

        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; choose from {sorted(SPLITS)}")
        self.resolution, self.num_gaussians = int(resolution), int(num_gaussians)
        self.azimuth_deg, self.elevation_deg, self.split = float(azimuth_deg), float(elevation_deg), split

    def describe(self) -> dict:
        return {
            "name": self.name,
            "resolution": self.resolution,
            "num_gaussians": self.num_gaussians,
            "camera": {"azimuth_deg": self.azimuth_deg, "elevation_deg": self.elevation_deg},
        }

    def object_seed(self, seed: int) -> int:
        """Sample seed -> world object seed inside this generator's split."""
        from ..world import split_seeds

        return split_seeds(self.split, 1, start=int(seed))[0]

    def generate_one(self, seed: int) -> GeneratedImage:
        from ..render.views import composite_on_background, render_rgba
        from ..world import background_color_for, object_spec, sample_object

        obj_seed = self.object_seed(seed)
        gaussians = sample_object(obj_seed, num_gaussians=self.num_gaussians)
        rgba = render_rgba(
            gaussians, azimuth_deg=self.azimuth_deg, elevation_deg=self.elevation_deg, resolution=self.resolution
        )
        background = background_color_for(obj_seed)
        rgb = composite_on_background(rgba, background)
        record = {
            "prompt": None,
            "object_seed": obj_seed,
            "generator_seed": obj_seed,
            "spec": object_spec(obj_seed),
            "camera": {"azimuth_deg": self.azimuth_deg, "elevation_deg": self.elevation_deg},
            "background_rgb": list(background),
        }
        return GeneratedImage(rgb=rgb, record=record, true_rgba=rgba)

    def generate(self, seeds: Sequence[int], prompts: Sequence[str | None] | None = None) -> list[GeneratedImage]:
        return [self.generate_one(s) for s in seeds]


class SDXLGenerator:
    name = "sdxl"

    def __init__(
        self,
        path: str | Path,
        steps: int = 30,
        guidance: float = 5.0,
        size: int = 1024,
        prompt_template: str = DEFAULT_PROMPT_TEMPLATE,
        negative_prompt: str = DEFAULT_NEGATIVE_PROMPT,
        device: str | None = None,
        dtype=None,
        variant: str | None = None,
    ):
        import torch
        from diffusers import StableDiffusionXLPipeline

        self.path = check_sdxl_folder(path)
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.dtype = dtype or (torch.float16 if self.device.type == "cuda" else torch.float32)
        self.steps, self.guidance, self.size = int(steps), float(guidance), int(size)
        self.prompt_template, self.negative_prompt, self.variant = prompt_template, negative_prompt, variant
        try:
            with warnings.catch_warnings():  # diffusers >= 0.36 renames torch_dtype; older ones lack dtype
                warnings.filterwarnings("ignore", message=".*torch_dtype.*", category=FutureWarning)
                kwargs = {"variant": variant} if variant else {}
                pipe = StableDiffusionXLPipeline.from_pretrained(
                    str(self.path), local_files_only=True, torch_dtype=self.dtype, **kwargs
                )
        except (OSError, ValueError) as e:
            raise ValueError(f"could not load a StableDiffusionXLPipeline from {self.path}: {e}") from e
        pipe.set_progress_bar_config(disable=True)
        self.pipe = pipe.to(self.device)

    def describe(self) -> dict:
        return {
            "name": self.name,
            "pipeline": "StableDiffusionXLPipeline",
            "model": self.path.name,
            "steps": self.steps,
            "guidance": self.guidance,
            "size": self.size,
            "scheduler": type(self.pipe.scheduler).__name__,
            "dtype": str(self.dtype).replace("torch.", ""),
            "variant": self.variant,
            "prompt_template": self.prompt_template,
            "negative_prompt": self.negative_prompt,
        }

    def generate(self, seeds: Sequence[int], prompts: Sequence[str]) -> list[GeneratedImage]:
        import torch

        if len(seeds) != len(prompts):
            raise ValueError("one prompt per seed")
        if not seeds:
            return []
        full = [self.prompt_template.format(prompt=p) for p in prompts]
        generators = [torch.Generator(device=self.device).manual_seed(int(s)) for s in seeds]
        with torch.inference_mode():
            out = self.pipe(
                prompt=full,
                negative_prompt=[self.negative_prompt] * len(full) if self.negative_prompt else None,
                num_inference_steps=self.steps,
                guidance_scale=self.guidance,
                height=self.size,
                width=self.size,
                generator=generators,
                output_type="np",
            )
        images = np.asarray(out.images, dtype=np.float32)  # [B, H, W, 3] in 0..1
        if not np.isfinite(images).all():
            raise FloatingPointError("SDXL produced non-finite pixels (fp16 VAE overflow?)")
        rgb = np.clip(np.rint(images * 255.0), 0, 255).astype(np.uint8)
        return [
            GeneratedImage(rgb=rgb[i], record={"prompt": prompts[i], "full_prompt": full[i], "generator_seed": int(s)})
            for i, s in enumerate(seeds)
        ]
