"""Stage 4, evaluation of a student (DESIGN §5; docs/evaluation.md).

Recipe (:mod:`.suite`): held-out objects and cameras (:mod:`.heldout`), the references computed
once per teacher (:mod:`.references`: the teacher's views, the copy-input floor, the per-sample fit
ceiling of :mod:`.fit`), the student's scores (:mod:`.scoring`, metrics in :mod:`.metrics`,
Gaussian statistics in :mod:`.gaussian_stats`), the report (:mod:`.report`). A user's own images
without ground truth: :mod:`.inputs`; a folder of rendered objects: :mod:`.folder`.
"""

from .heldout import HeldoutSet, heldout_noise, heldout_set
from .metrics import fog, foreground_iou, psnr, ssim

__all__ = ["HeldoutSet", "heldout_set", "heldout_noise", "psnr", "ssim", "foreground_iou", "fog"]
