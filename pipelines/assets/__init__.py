"""One module per stage: rgba_images -> teacher -> teacher_trajectories -> pepd_student -> evaluation_references ->
evaluation -> accepted_student (through the promotion gate); the ablation study (student_ablations ->
ablation_evaluation) on demand."""

from .ablations import student_ablations
from .evaluation import ablation_evaluation, evaluation, evaluation_references
from .promotion import accepted_student
from .rgba import rgba_images
from .student import pepd_student
from .teacher import teacher
from .trajectories import teacher_trajectories

ALL_ASSETS = [
    rgba_images,
    teacher,
    teacher_trajectories,
    pepd_student,
    evaluation_references,
    evaluation,
    accepted_student,
    student_ablations,
    ablation_evaluation,
]

__all__ = [
    "ALL_ASSETS",
    "rgba_images",
    "teacher",
    "teacher_trajectories",
    "pepd_student",
    "evaluation_references",
    "evaluation",
    "accepted_student",
    "student_ablations",
    "ablation_evaluation",
]
