"""One module per stage: rgba_images -> teacher -> teacher_trajectories -> pepd_student."""

from .rgba import rgba_images
from .student import pepd_student
from .teacher import teacher
from .trajectories import teacher_trajectories

ALL_ASSETS = [rgba_images, teacher, teacher_trajectories, pepd_student]

__all__ = ["ALL_ASSETS", "rgba_images", "teacher", "teacher_trajectories", "pepd_student"]
