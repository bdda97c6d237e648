"""Stage 4, evaluation of a student (DESIGN §5): held-out objects, teacher agreement, ground truth
at novel cameras, diversity (:mod:`.heldout`); image metrics (:mod:`.metrics`)."""

from .heldout import NOVEL_AZIMUTHS, NOVEL_ELEVATION, HeldoutSet, evaluate_student, heldout_set
from .metrics import psnr, ssim

__all__ = ["HeldoutSet", "heldout_set", "evaluate_student", "NOVEL_AZIMUTHS", "NOVEL_ELEVATION", "psnr", "ssim"]
