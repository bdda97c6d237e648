"""The paper's ablations of DD3G as changes of one :class:`DistillConfig` (same data, same budget).

=================  =============================================================  ===============================
name               what is removed                                                change
=================  =============================================================  ===============================
``no_noise``       the noise input N: phase 1 sees zeros, one output per image    ``noise_input = false``
``no_implicit``    implicit verification (the SDS term through the teacher)       ``implicit_weight = 0``
``single_head``    progressive decoding: every head reads the last block          ``mu_block = shape_block = depth``
``scratch``        phase 1 from the teacher's weights: random initialisation      ``init = "scratch"``
=================  =============================================================  ===============================

Every other field (steps, batch, learning rate, trajectories) is the base config's, so a variant's
numbers differ from the full method's only by what it removes. The Dagster ``student_ablations`` asset
trains one per partition; ``dd3g eval --compare NAME=DIR`` and the ablation report score them with the
same evaluation as the full method.
"""

from __future__ import annotations

from .config import DistillConfig

__all__ = ["ABLATIONS", "ablation_config", "ablation_names"]

ABLATIONS: dict[str, str] = {
    "no_noise": "no noise input (phase 1 sees zeros instead of N)",
    "no_implicit": "no implicit verification (lambda_imp = 0)",
    "single_head": "single-head decoding (every head reads the last block)",
    "scratch": "phase 1 from scratch (not from the teacher's U-Net)",
}


def ablation_names() -> list[str]:
    return list(ABLATIONS)


def ablation_config(base: DistillConfig, name: str) -> DistillConfig:
    """``base`` with ablation ``name`` applied (``ValueError`` naming the known ones otherwise)."""
    from ..model.config import PEPDConfig

    if name not in ABLATIONS:
        raise ValueError(f"unknown ablation {name!r}; known: {ablation_names()}")
    overrides = dict(base.model_overrides)
    if name == "no_noise":
        return base.replace(model_overrides={**overrides, "noise_input": False})
    if name == "no_implicit":
        return base.replace(implicit_weight=0.0)
    if name == "single_head":
        depth = PEPDConfig.preset(base.model).replace(**overrides).depth
        return base.replace(model_overrides={**overrides, "mu_block": depth, "shape_block": depth})
    return base.replace(init="scratch")
