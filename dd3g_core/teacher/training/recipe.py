"""The recipe that made the shipped tiny teacher, as one resumable call (``train_teacher_recipe``).

The shipped ``assets/models/tiny-teacher`` came out of two training stages (docs/teacher.md,
"The shipped teacher"):

1. ``base``: the pixel teacher (training preset ``tiny``) trained 1391 steps x 32 objects, EMA exported;
2. ``concat``: that export grown to image concatenation (preset ``tiny_concat``; the new stem
   channels start at zero, so the grown net computes the trained function), trained 4300 steps
   with the LR constant until step 3600 and then decayed linearly to 0.1x by step 4300; EMA exported.

Both stages share one multi-view data cache. Each stage resumes from its own newest checkpoint,
and a finished stage is a no-op, so a killed recipe run continues where it stopped.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .config import TRAIN_PRESETS, TeacherTrainConfig
from .train import TrainResult, pretrain_tiny_teacher

__all__ = ["RecipeStage", "RECIPES", "train_teacher_recipe"]


@dataclass(frozen=True)
class RecipeStage:
    name: str  # run sub-directory
    preset: str  # training preset (TRAIN_PRESETS)
    steps: int  # stop at this step count of the stage
    changes: Mapping[str, Any] = field(default_factory=dict)  # TeacherTrainConfig fields to change
    grow_from_previous: bool = False  # init_from = the previous stage's EMA export


RECIPES: dict[str, tuple[RecipeStage, ...]] = {
    # ~4 h of training on 2 CPU cores (182 k object samples)
    "shipped": (
        RecipeStage("base", "tiny", 1391),
        RecipeStage(
            "concat", "tiny_concat", 4300, {"cooldown_start": 3600, "cooldown_steps": 700}, grow_from_previous=True
        ),
    ),
    # seconds, for tests: the same two-stage shape on the smoke U-Net
    "smoke": (
        RecipeStage("base", "smoke", 4),
        RecipeStage(
            "concat",
            "smoke",
            6,
            {
                "unet_overrides": {**TRAIN_PRESETS["smoke"].unet_overrides, "concat_image": True},
                "cooldown_start": 4,
                "cooldown_steps": 2,
            },
            grow_from_previous=True,
        ),
    ),
}


def _stage_config(stage: RecipeStage, data_dir: Path, init_from: Path | None) -> TeacherTrainConfig:
    return TeacherTrainConfig.preset(
        stage.preset,
        **stage.changes,
        data_dir=str(data_dir),
        init_from=str(init_from) if init_from is not None else None,
    )


def train_teacher_recipe(
    recipe: str, out_dir: str | Path, resume: bool = True, log: Callable[[str], None] | None = None
) -> TrainResult:
    """Run every stage of ``RECIPES[recipe]`` under ``out_dir/<stage>/``; the last stage's EMA is
    exported to ``out_dir/teacher`` (returned in ``TrainResult.exported``; ``None`` when a signal
    stopped a stage before its step count: run again to resume). ``log``: progress lines of each stage
    (:func:`~dd3g_core.teacher.training.train.pretrain_tiny_teacher`)."""
    if recipe not in RECIPES:
        raise ValueError(f"unknown teacher recipe {recipe!r}; choose from {sorted(RECIPES)}")
    out = Path(out_dir)
    data_dir = out / "data"
    stages = RECIPES[recipe]
    previous: Path | None = None
    result: TrainResult | None = None
    for i, stage in enumerate(stages):
        last = i == len(stages) - 1
        export = out / "teacher" if last else out / stage.name / "teacher"
        cfg = _stage_config(stage, data_dir, previous if stage.grow_from_previous else None)
        result = pretrain_tiny_teacher(
            cfg, out / stage.name, resume=resume, export_to=export, max_steps=stage.steps, log=log
        )
        if result.step < stage.steps:  # stopped by a signal: no export of a partial stage counts as the result,
            return dataclasses.replace(result, exported=None)  # and later stages must not start from it
        previous = export
    assert result is not None
    return result
