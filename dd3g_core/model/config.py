"""``PEPDConfig``: the student's options, one dataclass with named presets (LGM style).

PEPD = Pattern Extraction (phase 1) + Progressive Decoding (phase 2), DESIGN §1. The fields
group by concern:

* **phase 1** — a :class:`~dd3g_core.teacher.MultiViewUNet` of the teacher's own config
  (``unet``), run once on the noise N at timestep ``phase1_timestep`` and truncated after
  ``phase1_output_blocks`` decoder blocks (0: after the middle block). Its per-view hidden maps are
  the "patterns".
* **fusion** — phase-1 features are linearly projected to ``width`` tokens; the input image
  II is patch-embedded (``image_patch`` px patches of the RGBA image resized to
  ``image_resolution``) into tokens of the same width, tagged with a learned source embedding,
  and concatenated after the view tokens (joint attention in phase 2).
* **phase 2** — ``depth`` pre-LN transformer blocks; heads read μ after block
  ``mu_block``, (s, q) after ``shape_block``, (α, c) after the last block.
* **Gaussians** — every view token owns a ``token_pixels`` x ``token_pixels`` patch of its view
  (at the render resolution) and emits one Gaussian per pixel, *pixel-aligned*: placed on the
  pixel's camera ray at a predicted depth in ``[radius - depth_extent, radius + depth_extent]``
  plus a free offset of at most ``max_offset`` (world units). See ``heads.py``.

Presets: ``"tiny"`` (the CPU profile; the tiny teacher's U-Net, 4096 Gaussians) and ``"full"``
(ImageDream's U-Net; 32x32 latents, 256 px renders, 65,536 Gaussians as in LGM).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from ..teacher.config import MultiViewUNetConfig

__all__ = ["PEPDConfig", "PRESETS", "check_field_types", "check_value", "describe_type", "field_types"]

FORMAT = "dd3g-pepd"
FORMAT_VERSION = 1


# ------------------------------------------------------------------ field type checks (every config dataclass)


@functools.cache
def field_types(cls: type) -> dict[str, Any]:
    """``{field: resolved annotation}`` of a dataclass (string annotations evaluated once)."""
    return typing.get_type_hints(cls)


def describe_type(hint: Any) -> str:
    """What an annotation accepts, in words (for error messages)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is bool:
        return "true or false"
    if hint is int:
        return "an integer"
    if hint is float:
        return "a number"
    if hint is str:
        return "a string"
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    if origin in (typing.Union, types.UnionType):
        return " or ".join("null" if a is type(None) else describe_type(a) for a in args)
    if origin is tuple and len(args) == 2 and args[1] is Ellipsis:
        return f"a list of {describe_type(args[0]).split(' ', 1)[1]}s"
    if origin is tuple and args:
        return f"a list of {len(args)} " + (
            f"{describe_type(args[0]).split(' ', 1)[1]}s" if len(set(args)) == 1 else "values"
        )
    if origin in (Mapping, dict) or hint is Mapping:
        return "a JSON object"
    if dataclasses.is_dataclass(hint):
        return f"a {hint.__name__} (a JSON object of its fields)"
    return getattr(hint, "__name__", str(hint))


def check_value(hint: Any, value: Any, label: str) -> Any:
    """``value`` checked against the annotation ``hint`` (int, float, str, bool, ``X | None``,
    ``Literal``, fixed-size ``tuple``, ``Mapping``, dataclasses given as a mapping); returns it
    normalised (an int for a float field -> float, a list for a tuple field -> tuple, a path for a
    str field -> str). Raises ``ValueError``: ``<label> must be <what>, got <value>``."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)

    def bad() -> ValueError:
        return ValueError(f"{label} must be {describe_type(hint)}, got {value!r}")

    if hint is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        for a in args:
            if a is type(None):
                continue
            try:
                return check_value(a, value, label)
            except ValueError:
                pass
        raise bad()
    if origin is Literal:
        if value not in args or isinstance(value, bool) != any(isinstance(a, bool) for a in args):
            raise bad()
        return value
    if hint is bool:
        if not isinstance(value, bool):
            raise bad()
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad()
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, int | float) or math.isnan(value):
            raise bad()
        return float(value)
    if hint is str:
        if isinstance(value, os.PathLike):
            return os.fspath(value)
        if not isinstance(value, str):
            raise bad()
        return value
    if origin is tuple and args and args[-1] is not Ellipsis:
        if isinstance(value, str | bytes) or not isinstance(value, list | tuple) or len(value) != len(args):
            raise bad()
        try:
            return tuple(check_value(a, v, label) for a, v in zip(args, value))
        except ValueError:
            raise bad() from None
    if origin is tuple and len(args) == 2 and args[1] is Ellipsis:
        if isinstance(value, str | bytes) or not isinstance(value, list | tuple):
            raise bad()
        try:
            return tuple(check_value(args[0], v, label) for v in value)
        except ValueError:
            raise bad() from None
    if origin in (Mapping, dict) or hint in (Mapping, dict):
        if not isinstance(value, Mapping):
            raise bad()
        return value
    if dataclasses.is_dataclass(hint):
        if not isinstance(value, hint | Mapping):
            raise bad()
        return value
    return value  # an annotation this checker does not know: left to the class's own checks


def check_field_types(obj: Any, normalise: bool = True) -> None:
    """Check every field of a (frozen) dataclass against its annotation, so a wrong type is refused
    with the field's name instead of failing later; ``normalise``: store :func:`check_value`'s
    normalised values (an int given for a float field becomes a float, ...)."""
    name = type(obj).__name__
    for f, hint in field_types(type(obj)).items():
        value = getattr(obj, f)
        checked = check_value(hint, value, f"{name}.{f}")
        if normalise and checked is not value:
            object.__setattr__(obj, f, checked)


@dataclass(frozen=True)
class PEPDConfig:
    # --- phase 1: pattern extraction (the teacher's U-Net class and config) ---
    unet: MultiViewUNetConfig = field(default_factory=lambda: MultiViewUNetConfig.preset("tiny"))
    phase1_output_blocks: int = 3  # decoder blocks kept; features are read after this many (0: the middle block's)
    phase1_timestep: int = 999  # timestep fed with N (the teacher's first DDIM step: N is pure noise)
    num_views: int = 4  # V generated views (the teacher's layout); the U-Net also sees the image slot
    latent_resolution: int = 32  # h = w of N per view
    noise_input: bool = True  # False (ablation "no noise input"): phase 1 sees zeros instead of N
    # --- fusion ---
    width: int = 96  # token width of phase 2
    image_resolution: int = 32  # II (straight RGBA) is resized to this for the patch embedding
    image_patch: int = 8  # II patch size in pixels at image_resolution
    # --- phase 2: progressive decoding ---
    depth: int = 4  # transformer blocks
    heads: int = 4
    mlp_ratio: float = 2.0  # 4.0 cost 2.5 ms more per forward (latency bar, docs/student.md)
    mu_block: int = 2  # 1-based: the mu head reads the tokens after this many blocks
    shape_block: int = 3  # the scale + rotation head; the appearance head (opacity + colour) reads the last block
    # --- Gaussians ---
    gaussian_grid: int = 4  # each view token emits gaussian_grid² pixel-aligned Gaussians
    radius: float = 1.5  # camera distance of the layout (the depth range is centred on it)
    depth_extent: float = 1.0  # ray depth in [radius - depth_extent, radius + depth_extent]
    max_offset: float = 0.05  # bound of the free 3D offset from the ray point (world units)
    min_scale: float = 0.002
    max_scale: float = 0.08
    init_scale: float = 0.02  # the heads' bias initialisation
    init_opacity: float = 0.1
    # 3D smoothing filter (Mip-Splatting's, tied to the pixel footprint): every Gaussian's scale is
    # sqrt(s² + (footprint_filter · depth · cell angle)²), so nothing is thinner than that fraction of a
    # Gaussian-grid cell at its depth; 0 = off. Without it, Gaussians that the 2D dilation of the 32 px
    # training renders made look solid fall apart into dots when rendered at 128 px.
    footprint_filter: float = 0.0
    # --- the seen view (a direct path from II to the view the input was taken from) ---
    input_view: int = -1  # index of the generated view whose camera is II's (-1: none, no skip)
    # hidden channels of a small CNN that reads II on that view's Gaussian grid and adds per-cell residuals to
    # its opacity, colour and scale logits (0: off, and left out of to_dict so older configs stay identical):
    # the tokens see II in 8 px patches, too coarse to place edges or undo the splats' blur cell by cell
    seen_refine: int = 0
    # that view's Gaussians start from II's pixels: colour logit + logit(II rgb), opacity logit from
    # II's alpha (the heads predict residuals), so the seen view is reproduced sharply from the start

    def __post_init__(self) -> None:
        check_field_types(self)
        try:
            if isinstance(self.unet, Mapping):
                object.__setattr__(self, "unet", MultiViewUNetConfig.from_dict(self.unet))
            check_field_types(self.unet, normalise=False)
        except (TypeError, ValueError) as e:  # MultiViewUNetConfig's own errors do not say where they are
            raise ValueError(f"PEPDConfig.unet: {' '.join(str(e).split())}") from None
        u = self.unet
        n_out = (u.num_res_blocks + 1) * len(u.channel_mult)  # decoder blocks of the U-Net
        if not 0 <= self.phase1_output_blocks <= n_out:
            raise ValueError(f"phase1_output_blocks must be in [0, {n_out}], got {self.phase1_output_blocks}")
        if not 1 <= self.mu_block <= self.shape_block <= self.depth:
            raise ValueError(
                f"need 1 <= mu_block ({self.mu_block}) <= shape_block ({self.shape_block}) "
                f"<= depth ({self.depth}): geometry is read before appearance"
            )
        if self.width % self.heads:
            raise ValueError(f"width {self.width} not divisible by heads {self.heads}")
        if self.image_resolution % self.image_patch:
            raise ValueError(
                f"image_resolution {self.image_resolution} not divisible by image_patch {self.image_patch}"
            )
        if self.feature_resolution < 1 or self.latent_resolution % self.feature_downsample:
            raise ValueError(
                f"latent_resolution {self.latent_resolution} must be a multiple of the phase-1 "
                f"feature downsample {self.feature_downsample}"
            )
        if self.gaussian_grid < 1:
            raise ValueError("gaussian_grid must be >= 1")
        if not 0 < self.min_scale < self.init_scale < self.max_scale:
            raise ValueError("need 0 < min_scale < init_scale < max_scale")
        if not 0 < self.init_opacity < 1 or self.depth_extent <= 0 or self.depth_extent >= self.radius:
            raise ValueError("need 0 < init_opacity < 1 and 0 < depth_extent < radius")
        if self.footprint_filter < 0:
            raise ValueError(f"footprint_filter must be >= 0, got {self.footprint_filter}")
        if self.seen_refine < 0 or (self.seen_refine and self.input_view < 0):
            raise ValueError(f"seen_refine must be 0 or > 0 with an input_view, got {self.seen_refine}")
        if not -1 <= self.input_view < self.num_views:
            raise ValueError(
                f"input_view must be -1 (none) or a view index in [0, {self.num_views}), got {self.input_view}"
            )

    # ------------------------------------------------------------------ derived sizes
    @property
    def _blocks_per_level(self) -> int:
        return self.unet.num_res_blocks + 1

    @property
    def feature_downsample(self) -> int:
        """Downsample factor of the phase-1 features after ``phase1_output_blocks`` decoder blocks.

        The decoder runs levels from the deepest (factor 2^(L-1)) up; the last block of every level
        but the first upsamples x2.
        """
        levels, per, k = len(self.unet.channel_mult), self._blocks_per_level, self.phase1_output_blocks
        done, rest = divmod(k, per)
        if rest:
            return 2 ** (levels - 1 - done)
        return 2 ** max(levels - done - 1, 0)

    @property
    def feature_channels(self) -> int:
        # 0 blocks: the middle block's output, at the deepest level like the first decoder level's blocks
        level = len(self.unet.channel_mult) - 1 - max(self.phase1_output_blocks - 1, 0) // self._blocks_per_level
        return self.unet.model_channels * self.unet.channel_mult[level]

    @property
    def feature_resolution(self) -> int:
        return self.latent_resolution // self.feature_downsample

    @property
    def tokens_per_view(self) -> int:
        return self.feature_resolution**2

    @property
    def gaussians_per_token(self) -> int:
        return self.gaussian_grid**2

    @property
    def grid_resolution(self) -> int:
        """Side of the per-view grid of pixel-aligned Gaussians."""
        return self.feature_resolution * self.gaussian_grid

    @property
    def num_gaussians(self) -> int:
        return self.num_views * self.tokens_per_view * self.gaussians_per_token

    @property
    def num_image_tokens(self) -> int:
        return (self.image_resolution // self.image_patch) ** 2

    # ------------------------------------------------------------------ (de)serialisation
    def to_dict(self) -> dict[str, Any]:
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        d["unet"] = self.unet.to_dict()
        if not d["seen_refine"]:  # off: the dict (and every version, every saved student) as before the option
            del d["seen_refine"]
        return {"format": FORMAT, "format_version": FORMAT_VERSION, **d}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> PEPDConfig:
        d = dict(d)
        fmt, ver = d.pop("format", FORMAT), d.pop("format_version", FORMAT_VERSION)
        if fmt != FORMAT or ver != FORMAT_VERSION:
            raise ValueError(f"not a {FORMAT} v{FORMAT_VERSION} config (format={fmt!r}, format_version={ver!r})")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown PEPDConfig keys {unknown}; known keys: {sorted(known)}")
        return cls(**d)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def preset(cls, name: str) -> PEPDConfig:
        if name not in PRESETS:
            raise ValueError(f"unknown PEPD preset {name!r}; choose from {sorted(PRESETS)}")
        return PRESETS[name]

    def replace(self, **changes: Any) -> PEPDConfig:
        return dataclasses.replace(self, **changes)

    def diff(self, other: PEPDConfig) -> dict[str, tuple[Any, Any]]:
        """Fields that differ (flattened ``unet.*``): used to refuse checkpoints of another config."""
        a, b = _flatten(self.to_dict()), _flatten(other.to_dict())
        return {k: (a.get(k), b.get(k)) for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)}


def _flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, Mapping):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = list(v) if isinstance(v, tuple) else v
    return out


PRESETS: dict[str, PEPDConfig] = {
    # CPU profile: the tiny teacher's U-Net truncated after its 4x4 level (3 decoder blocks, the
    # last one upsamples: 8x8 features, 64 ch) -> 4 views x 64 tokens x 16 pixel-aligned Gaussians
    # = 4096 Gaussians (one per pixel at 32 px) + 16 II tokens (8 px patches). One forward costs
    # ~1/40 of the teacher's 25-step DDIM at batch 1 and ~1/50 at batch 8 (benchmarks/latency.py):
    # phase 1 is 0.43 of a full U-Net pass at batch 1, phase 2 0.19; truncating after 5 blocks
    # (8x8 level) cost 30% more. The tiny *profile* trains a lighter student (its model_overrides:
    # phase1_output_blocks 0, gaussian_grid 8: the middle block's 4x4 features, 80 phase-2 tokens,
    # the same 4096 Gaussians; docs/experiments/solid_student.md, "A lighter student").
    "tiny": PEPDConfig(input_view=0, footprint_filter=0.5),
    # GPU profile: ImageDream's U-Net on 32x32 latents truncated after 6 decoder blocks (16x16,
    # 1280 ch): 4 x 256 view tokens + 256 image tokens (16 px patches of 256 px II), width 768,
    # 12 blocks; 8x8 Gaussians per token = 65,536 Gaussians (LGM's count).
    "full": PEPDConfig(
        unet=MultiViewUNetConfig.preset("imagedream"),
        phase1_output_blocks=6,
        phase1_timestep=999,
        num_views=4,
        latent_resolution=32,
        width=768,
        image_resolution=256,
        image_patch=16,
        depth=12,
        heads=12,
        mlp_ratio=4.0,
        mu_block=4,
        shape_block=8,
        gaussian_grid=8,
        radius=1.5,
        depth_extent=1.0,
        max_offset=0.05,
        min_scale=0.0005,
        max_scale=0.05,
        init_scale=0.005,
        init_opacity=0.1,
        footprint_filter=0.5,
        input_view=0,
    ),
}
