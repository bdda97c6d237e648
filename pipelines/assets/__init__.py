from .rgba import rgba_images
from .student import pepd_student
from .teacher import tiny_teacher
from .trajectories import teacher_trajectories

__all__ = ["rgba_images", "teacher_trajectories", "tiny_teacher", "pepd_student"]
