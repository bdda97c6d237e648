"""Asset checks: data checks evaluated inside the shard stages' materializations (one result per run,
over its partitions), and the student's checks as their own step."""

from .rgba import RGBA_CHECKS, rgba_check_results
from .student import student_checks
from .trajectories import TRAJECTORY_CHECKS, trajectory_check_results

__all__ = ["RGBA_CHECKS", "rgba_check_results", "TRAJECTORY_CHECKS", "trajectory_check_results", "student_checks"]
