"""The tiny profile and the shipped student are one recipe at two budgets (issue #15 item 5, issue #14).

``tiny`` is sized for a laptop's first run; ``assets/profiles/tiny-long.json`` is the budget the shipped
``assets/models/tiny-pepd`` was distilled with. Everything but the budget (noise draws, cache batch, steps,
learning-rate schedule) must be the same, and tiny-long must be exactly the shipped student's recorded config.
"""

import dataclasses
import json
from pathlib import Path

from dd3g_core.distill.config import DistillConfig
from dd3g_core.profiles import get_profile
from dd3g_core.trajectories.config import TrajectoryCacheConfig

ROOT = Path(__file__).resolve().parents[1]
LONG = ROOT / "assets" / "profiles" / "tiny-long.json"
SHIPPED = ROOT / "assets" / "models" / "tiny-pepd" / "config.json"
BUDGET = {"steps", "lr", "warmup_steps", "implicit_ramp"}  # what a budget may change in distill
CACHE_BUDGET = {"num_noise_draws", "steps", "record_steps", "batch_size"}  # ... and in the trajectory cache


def _identity(cfg: DistillConfig) -> dict:
    return cfg.replace(trajectories="", out="", teacher=None).identity()


def test_tiny_long_is_the_shipped_students_recorded_recipe():
    long = get_profile(str(LONG))
    recorded = json.loads(SHIPPED.read_text())
    assert recorded["train_step"] == long.distill.steps
    assert _identity(long.distill) == _identity(DistillConfig.from_dict(recorded["distill_config"]))
    assert long.trajectories == TrajectoryCacheConfig()  # the cache the shipped student was trained on


def test_tiny_differs_from_the_shipped_recipe_only_in_budget():
    tiny, long = get_profile("tiny"), get_profile(str(LONG))
    a, b = tiny.distill.to_dict(), long.distill.to_dict()
    assert {k for k in a if a[k] != b[k]} <= BUDGET
    t, u = dataclasses.asdict(tiny.trajectories), dataclasses.asdict(long.trajectories)
    assert {k for k in t if t[k] != u[k]} <= CACHE_BUDGET
    for stage in ("rgba", "teacher", "limits", "promotion"):
        assert getattr(tiny, stage) == getattr(long, stage), stage
    # the evaluation differs only in how the teacher's own views are sampled: as each one's cache samples
    assert dataclasses.replace(tiny.evaluation, teacher_steps=None) == long.evaluation
    assert tiny.distill.steps < long.distill.steps and tiny.trajectories.num_noise_draws >= 2  # diversity kept


def test_each_profile_scores_the_teacher_as_its_cache_samples_it():
    """Teacher agreement is measured against the sampler the student learned from (tiny teacher: 25, 1)."""
    for spec in ("tiny", "smoke", str(LONG)):
        p = get_profile(spec)
        t, e = p.trajectories, p.evaluation
        cache = (t.steps or 25, 1.0 if t.guidance is None else t.guidance)
        scored = (e.teacher_steps or 25, 1.0 if e.teacher_guidance is None else e.teacher_guidance)
        assert cache == scored, spec


def test_the_full_profile_scores_imagedream_as_its_cache_samples_it():
    """ImageDream's own default is 30 steps; the full cache samples 50: the evaluation must say so."""
    p = get_profile("full")
    e, t = p.evaluation, p.trajectories
    assert (e.teacher_steps, e.teacher_guidance) == (t.steps, t.guidance)
