"""The teacher: ImageDream's multi-view U-Net in our own code (``docs/teacher.md``)."""

from .config import PRESETS, MultiViewUNetConfig
from .state_dict import check_state_dict, load_unet_state_dict, read_state_dict_listing, state_dict_shapes
from .unet import MultiViewUNet

__all__ = [
    "MultiViewUNet", "MultiViewUNetConfig", "PRESETS",
    "check_state_dict", "load_unet_state_dict", "read_state_dict_listing", "state_dict_shapes",
]
