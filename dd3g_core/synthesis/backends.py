"""What makes and mattes one ``rgba_images`` sample: the generator, matting and prompts of a config.

Kept apart from the partitioned stage (:mod:`.stage`) because the backends are the expensive, lazily
loaded part (SDXL takes a minute): a cache hit must load nothing, and :func:`~.stage.synthesize_rgba`
shares one :class:`SynthesisBackends` across shards so the models load once. Also here: the procedural
generator's reference matting (:class:`ExactMatting`) and the alpha IoU that scores a matte against it.
"""

from __future__ import annotations

import numpy as np

from .config import RGBASynthesisConfig
from .generators import GeneratedImage, ProceduralGenerator, SDXLGenerator
from .matting import ColorKeyMatting, MattingResult, RembgMatting
from .prompts import load_prompts

__all__ = ["ExactMatting", "SynthesisBackends", "alpha_iou"]


class SynthesisBackends:
    """Generator, matting and prompts of a config, built on first use (a cache hit loads nothing;
    :func:`synthesize_rgba` shares one instance across shards so SDXL loads once)."""

    def __init__(self, config: RGBASynthesisConfig, generator=None, matting=None):
        self.config = config.resolved()
        self._generator, self._matting, self._prompts = generator, matting, None

    @property
    def generator(self):
        if self._generator is None:
            c = self.config
            if c.generator == "folder":
                from .folder import FolderSource

                self._generator = FolderSource(c.folder)
            elif c.generator == "procedural":
                self._generator = ProceduralGenerator(
                    c.render_resolution, c.num_gaussians, c.azimuth_deg, c.elevation_deg, c.split
                )
            else:
                self._generator = SDXLGenerator(
                    c.sdxl_path,
                    c.sdxl_steps,
                    c.sdxl_guidance,
                    c.sdxl_size,
                    c.prompt_template,
                    c.negative_prompt,
                    variant=c.sdxl_variant,
                )
        return self._generator

    @property
    def matting(self):
        if self._matting is None:
            c = self.config
            if c.matting == "colorkey":
                self._matting = ColorKeyMatting(c.colorkey_low, c.colorkey_high, despill=c.despill)
            elif c.matting == "rembg":
                self._matting = RembgMatting(c.rembg_model_path, despill=c.despill)
            else:
                self._matting = ExactMatting()
        return self._matting

    @property
    def prompts(self) -> list[str] | None:
        if self.config.generator != "sdxl":
            return None
        if self._prompts is None:
            self._prompts = load_prompts(self.config.prompts_file)  # EmptyPromptListError if empty
        return self._prompts


class ExactMatting:
    """Reference matting for the procedural generator: its true render (no estimation)."""

    name = "exact"

    def describe(self) -> dict:
        return {"name": self.name}

    def matte_generated(self, image: GeneratedImage) -> MattingResult:
        if image.true_rgba is None:
            raise ValueError("exact matting needs a generator with a true alpha (procedural)")
        return MattingResult(image.true_rgba.copy(), {"background_plain": True})


def alpha_iou(alpha_a: np.ndarray, alpha_b: np.ndarray, threshold: float = 127.5) -> float:
    """IoU of two uint8 alphas thresholded at 0.5."""
    a, b = np.asarray(alpha_a) > threshold, np.asarray(alpha_b) > threshold
    union = int((a | b).sum())
    return 1.0 if union == 0 else float((a & b).sum()) / union
