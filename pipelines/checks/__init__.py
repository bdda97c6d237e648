"""Asset checks: data checks evaluated inside the shard stages' materializations (one result per run,
over its partitions), the student's and the evaluation's checks as their own steps."""

from .evaluation import evaluation_checks
from .promotion import no_regression_vs_accepted
from .rgba import RGBA_CHECKS, rgba_check_results
from .student import student_checks
from .trajectories import TRAJECTORY_CHECKS, trajectory_check_results

__all__ = [
    "RGBA_CHECKS",
    "rgba_check_results",
    "TRAJECTORY_CHECKS",
    "trajectory_check_results",
    "student_checks",
    "evaluation_checks",
    "no_regression_vs_accepted",
]
