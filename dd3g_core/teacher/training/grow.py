"""Grow a trained MultiViewUNet into a config with more attention levels (and/or the input image
concatenated to every view), function-preserving.

The tiny teacher's joint attention sits at 8x8 and 4x4 only, which limits how well it copies the
input view (docs/experiments/teacher_training.md, "diagnosis"). ``grow_unet`` builds a U-Net with extra
``attention_resolutions`` and copies every trained block into it; the new
``SpatialTransformer3D`` blocks get a zero ``proj_out`` (weight and bias), so each is an exact
identity residual and the grown network computes the trained function (up to float rounding,
~1e-6: the extra residual adds change memory layouts and kernel choices) until training moves
the new blocks. Keys shift where a transformer is inserted before an
``Upsample`` (``output_blocks.i.1.conv`` -> ``output_blocks.i.2.conv``), so blocks are matched
by type and order inside each ``TimestepEmbedSequential``, not by name.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from ..attention import SpatialTransformer3D
from ..config import MultiViewUNetConfig
from ..unet import MultiViewUNet

__all__ = ["grow_unet"]


def _copy_sequential(old: nn.Sequential, new: nn.Sequential, where: str) -> int:
    """Copy old layers into new ones matched by type in order; unmatched new layers must be
    transformers (they become identities). Returns how many new transformers were added."""
    p, added = 0, 0
    for layer in new:
        if p < len(old) and type(old[p]) is type(layer):
            layer.load_state_dict(old[p].state_dict(), strict=True)
            p += 1
        elif isinstance(layer, SpatialTransformer3D):
            with torch.no_grad():
                layer.proj_out.weight.zero_()
                layer.proj_out.bias.zero_()
            added += 1
        else:
            raise ValueError(
                f"{where}: cannot match new layer {type(layer).__name__} to the old block "
                f"{[type(x).__name__ for x in old]}"
            )
    if p != len(old):
        raise ValueError(f"{where}: old layers {[type(x).__name__ for x in old][p:]} have no place in the new block")
    return added


def grow_unet(
    old: MultiViewUNet, attention_resolutions: tuple[int, ...] | None = None, concat_image: bool | None = None
) -> MultiViewUNet:
    """A copy of ``old`` with joint attention at (at least) ``attention_resolutions`` and, with
    ``concat_image=True``, the input image concatenated to every view: the stem conv gets zero
    weights for the new channels, so the function is unchanged there too."""
    oc: MultiViewUNetConfig = old.config
    attention_resolutions = oc.attention_resolutions if attention_resolutions is None else attention_resolutions
    concat_image = oc.concat_image if concat_image is None else bool(concat_image)
    extra = set(attention_resolutions) - set(oc.attention_resolutions)
    if set(oc.attention_resolutions) - set(attention_resolutions):
        removed = sorted(set(oc.attention_resolutions) - set(attention_resolutions))
        raise ValueError(f"growing cannot remove attention levels {removed}")
    if oc.concat_image and not concat_image:
        raise ValueError("growing cannot remove the image concatenation")
    new_cfg = dataclasses.replace(
        oc, attention_resolutions=tuple(sorted(set(attention_resolutions))), concat_image=concat_image
    )
    new = MultiViewUNet(new_cfg).to(next(old.parameters()).dtype)
    widen_stem = concat_image and not oc.concat_image
    if widen_stem:  # widen the stem: old weights for x, zeros for the image
        old_stem, new_stem = old.input_blocks[0][0], new.input_blocks[0][0]
        with torch.no_grad():
            new_stem.weight.zero_()
            new_stem.weight[:, : oc.in_channels].copy_(old_stem.weight)
            new_stem.bias.copy_(old_stem.bias)
    for name in ("time_embed", "camera_embed", "image_embed", "out"):
        if hasattr(old, name) and getattr(old, name) is not None:
            getattr(new, name).load_state_dict(getattr(old, name).state_dict(), strict=True)
    added = 0
    for group in ("input_blocks", "output_blocks"):
        for i, (a, b) in enumerate(zip(getattr(old, group), getattr(new, group))):
            if group == "input_blocks" and i == 0 and widen_stem:
                continue  # the widened stem, copied above
            added += _copy_sequential(a, b, f"{group}.{i}")
    added += _copy_sequential(old.middle_block, new.middle_block, "middle_block")
    expected = sum(1 for m in new.modules() if isinstance(m, SpatialTransformer3D)) - sum(
        1 for m in old.modules() if isinstance(m, SpatialTransformer3D)
    )
    if added != expected or (extra and not added):
        raise AssertionError(f"grew {added} transformers, expected {expected}")
    return new
