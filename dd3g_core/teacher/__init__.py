"""The teacher (inference): ImageDream's multi-view U-Net in our own code, the DDIM sampler and the
two teachers behind one interface, opened by one loader (``load_teacher``). Training the tiny
teacher lives in ``dd3g_core.teacher.training`` (``docs/teacher.md``)."""

from .config import PRESETS, MultiViewUNetConfig
from .image_encoder import TinyImageEncoder, TinyImageEncoderConfig
from .imagedream import IMAGEDREAM_REPO, ImageDreamTeacher, missing_imagedream_files
from .interface import Condition, MissingWeightsError, MultiViewTeacher, SampleOutput, TeacherCameras
from .loading import (
    TeacherChangedError,
    describe_teacher_folder,
    load_teacher,
    resolve_device,
    teacher_kind,
    verify_teacher_folder,
)
from .sampler import ddim_sample, draw_noise, guided_unet_output
from .tiny import TINY_SCHEDULER_CONFIG, TinyTeacher, default_tiny_teacher_path
from .unet import MultiViewUNet

__all__ = [
    "MultiViewUNet",
    "MultiViewUNetConfig",
    "PRESETS",
    "MultiViewTeacher",
    "Condition",
    "TeacherCameras",
    "SampleOutput",
    "MissingWeightsError",
    "load_teacher",
    "teacher_kind",
    "describe_teacher_folder",
    "resolve_device",
    "TeacherChangedError",
    "verify_teacher_folder",
    "draw_noise",
    "ddim_sample",
    "guided_unet_output",
    "ImageDreamTeacher",
    "IMAGEDREAM_REPO",
    "missing_imagedream_files",
    "TinyTeacher",
    "TinyImageEncoder",
    "TinyImageEncoderConfig",
    "TINY_SCHEDULER_CONFIG",
    "default_tiny_teacher_path",
]
