"""The teacher: ImageDream's multi-view U-Net in our own code, the DDIM sampler and the two
teachers behind one interface (``docs/teacher.md``)."""

from .config import PRESETS, MultiViewUNetConfig
from .image_encoder import TinyImageEncoder, TinyImageEncoderConfig
from .imagedream import IMAGEDREAM_REPO, ImageDreamTeacher, missing_imagedream_files
from .interface import (
    Condition, MissingWeightsError, MultiViewTeacher, SampleOutput, TeacherCameras, composite_rgb, prepare_images,
    resize_square,
)
from .sampler import ddim_sample, draw_noise, guided_unet_output
from .state_dict import check_state_dict, load_unet_state_dict, read_state_dict_listing, state_dict_shapes
from .tiny import TINY_SCHEDULER_CONFIG, TinyTeacher, default_tiny_teacher_path
from .unet import MultiViewUNet

__all__ = [
    "MultiViewUNet", "MultiViewUNetConfig", "PRESETS",
    "check_state_dict", "load_unet_state_dict", "read_state_dict_listing", "state_dict_shapes",
    "MultiViewTeacher", "Condition", "TeacherCameras", "SampleOutput", "MissingWeightsError",
    "composite_rgb", "prepare_images", "resize_square",
    "draw_noise", "ddim_sample", "guided_unet_output",
    "ImageDreamTeacher", "IMAGEDREAM_REPO", "missing_imagedream_files",
    "TinyTeacher", "TinyImageEncoder", "TinyImageEncoderConfig", "TINY_SCHEDULER_CONFIG", "default_tiny_teacher_path",
]
