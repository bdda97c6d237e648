"""Phase 1's U-Net with the two memory options of distillation: gradient checkpointing and frozen early blocks.

``Phase1UNet`` *is* the teacher's :class:`~dd3g_core.teacher.MultiViewUNet` (same class hierarchy, same
state-dict keys, bitwise the same outputs); it only changes how the U-Net pass keeps its activations:

* **gradient checkpointing** (``gradient_checkpointing = True``): each block (``input_blocks[i]``,
  ``middle_block``, ``output_blocks[i]``) runs under ``torch.utils.checkpoint`` (non-reentrant), so the
  backward keeps only the blocks' inputs and recomputes one block's activations at a time. It trades
  one extra forward of phase 1 per step for most of phase 1's activation memory; the loss and the
  gradients are the same (tested).
* **frozen early blocks** (:func:`freeze_phase1`): the condition embeddings (timestep, camera, image
  resampler) and the first ``k`` blocks in execution order stop requiring gradients. Their weights get no
  gradient, no optimizer state and no update; since nothing they read requires gradients either,
  autograd saves no activations for them.

Nothing here is saved with the model: both options are settings of a training run
(``DistillConfig.gradient_checkpointing`` / ``freeze_phase1_blocks``), not of the architecture.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from ..teacher.unet import MultiViewUNet

__all__ = ["Phase1UNet", "phase1_blocks", "phase1_embeddings", "freeze_phase1"]


class Phase1UNet(MultiViewUNet):
    """The teacher's U-Net class, optionally checkpointed block by block (see the module doc)."""

    gradient_checkpointing: bool = False
    frozen_blocks: int = 0  # set by freeze_phase1: blocks [0, frozen_blocks) need no gradient

    def _unet_pass(self, x: Tensor, emb: Tensor, context: Tensor, num_frames: int, num_output_blocks: int) -> Tensor:
        if not torch.is_grad_enabled() or not (self.gradient_checkpointing or self.frozen_blocks):
            return super()._unet_pass(x, emb, context, num_frames, num_output_blocks)  # inference, or no option on

        # The same walk as MultiViewUNet._unet_pass, block i through run(i, ...).
        def run(i: int, block: nn.Module, h: Tensor) -> Tensor:
            if self.frozen_blocks and i == self.frozen_blocks and not h.requires_grad:
                # The first trained block reads an input that needs no gradient. torch's CPU GroupNorm backward
                # crashes (segfault, torch 2.13) on such an input when it is channels-last (the transformer
                # blocks' output is): a leaf that asks for a gradient avoids that, at the cost of one unused
                # input gradient of one block.
                h = h.detach().requires_grad_()
            if self.gradient_checkpointing:  # emb and context are shared by all blocks: kept once, not per block
                return checkpoint(block, h, emb, context, num_frames, use_reentrant=False)
            return block(h, emb, context, num_frames)

        blocks = iter(range(len(self.input_blocks) + 1 + num_output_blocks))
        skips = []
        hid = x
        for block in self.input_blocks:
            hid = run(next(blocks), block, hid)
            skips.append(hid)
        hid = run(next(blocks), self.middle_block, hid)
        for block in self.output_blocks[:num_output_blocks]:
            hid = run(next(blocks), block, torch.cat([hid, skips.pop()], dim=1))
        return hid


def phase1_blocks(unet: MultiViewUNet) -> list[nn.Module]:
    """The U-Net's blocks in execution order: input blocks, the middle block, the (kept) output blocks."""
    return [*unet.input_blocks, unet.middle_block, *unet.output_blocks]


def phase1_embeddings(unet: MultiViewUNet) -> list[nn.Module]:
    """What every block reads besides its input: the timestep, camera and image-token embeddings."""
    names = ("time_embed", "camera_embed", "image_embed")
    return [getattr(unet, n) for n in names if isinstance(getattr(unet, n, None), nn.Module)]


def freeze_phase1(unet: Phase1UNet, num_blocks: int) -> list[str]:
    """Freeze the embeddings and the first ``num_blocks`` blocks of phase 1 (0: nothing); returns the
    frozen parameter names (relative to ``unet``). Parameters frozen before stay frozen (``requires_grad_(True)``
    on the model and a new call start over).

    The embeddings go with the first block: every ResBlock adds the timestep + camera embedding and every
    transformer reads the resampled image tokens, so while those still required gradients the frozen blocks
    would have to keep their activations for the backward, and freezing would save only the weights' state.
    """
    blocks = phase1_blocks(unet)
    if isinstance(num_blocks, bool) or not 0 <= int(num_blocks) <= len(blocks):
        raise ValueError(
            f"freeze_phase1_blocks must be in [0, {len(blocks)}] (phase 1 has {len(unet.input_blocks)} input "
            f"blocks, a middle block and {len(unet.output_blocks)} output blocks), got {num_blocks}"
        )
    unet.frozen_blocks = int(num_blocks)
    if not num_blocks:
        return []
    frozen = {id(p) for m in (*phase1_embeddings(unet), *blocks[: int(num_blocks)]) for p in m.parameters()}
    names = []
    for name, p in unet.named_parameters():
        if id(p) in frozen:
            p.requires_grad_(False)
            names.append(name)
    return names
