"""Stage 3, distillation: the teacher's cached trajectories -> the PEPD student (DESIGN §1).

* :mod:`.config` — ``DistillConfig``, every option of a run (presets per profile in ``dd3g_core.profiles``);
* :mod:`.train` — the Accelerate trainer (``python -m dd3g_core.distill.train``), read top to bottom;
* :mod:`.objective` — ``compute_losses``, the joint loss of one micro-batch (explicit + ramped implicit);
* :mod:`.losses` — explicit supervision and implicit (SDS) verification;
* :mod:`.perceptual` — the VGG16 perceptual term (local weights only);
* :mod:`.checkpoint` — resumable checkpoints (Accelerate state + EMA + trainer record).

The student network itself is :mod:`dd3g_core.model`.
"""

from .config import DistillConfig, apply_overrides, load_config

__all__ = ["DistillConfig", "apply_overrides", "load_config"]
