"""The procedural world: seeded objects made of primitives, represented as 3D Gaussians.

It stands in for the full pipeline's 2D generator (RGBA inputs), for Objaverse (multi-view
training data for the tiny teacher) and gives exact ground truth for evaluation. See
docs/world.md.

    from dd3g_core.world import sample_object, object_spec
    from dd3g_core.render.views import render_rgba
    g = sample_object(3)                     # Gaussians, means [3000, 3], sh degree 0
    rgba = render_rgba(g, resolution=64)     # uint8 [64, 64, 4]
"""

from .primitives import PRIMITIVES
from .procedural import DEFAULT_NUM_GAUSSIANS, gaussians_from_spec, sample_object
from .spec import (
    BACKGROUND_PALETTE,
    PATTERNS,
    SPLITS,
    background_color_for,
    object_spec,
    split_of,
    split_seeds,
)

__all__ = [
    "BACKGROUND_PALETTE",
    "DEFAULT_NUM_GAUSSIANS",
    "PATTERNS",
    "PRIMITIVES",
    "SPLITS",
    "background_color_for",
    "gaussians_from_spec",
    "object_spec",
    "sample_object",
    "split_of",
    "split_seeds",
]
