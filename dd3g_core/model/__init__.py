"""The student: PEPD (``pepd.py``), its options (``config.py``) and Gaussian heads (``heads.py``)."""

from .config import PRESETS, PEPDConfig
from .heads import GaussianHeads
from .pepd import PEPD, ConfigMismatchError, PEPDOutput

__all__ = ["PEPD", "PEPDConfig", "PRESETS", "PEPDOutput", "GaussianHeads", "ConfigMismatchError"]
