"""Where the repository's static inputs live (the one place that knows the checkout's layout).

``ASSETS_DIR`` is the repo's ``assets/`` folder: prompt lists, accelerate configs, sample images and the
small shipped models. dd3g is installed editable (``pip install -e .``), so it sits beside the package.
"""

from __future__ import annotations

from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
ASSETS_DIR = REPO_ROOT / "assets"
MODELS_DIR = ASSETS_DIR / "models"
TINY_TEACHER_DIR = MODELS_DIR / "tiny-teacher"  # the shipped tiny teacher (dd3g teacher recipe)
TINY_STUDENT_DIR = MODELS_DIR / "tiny-pepd"  # the shipped tiny PEPD student (the tiny distill job)

__all__ = ["REPO_ROOT", "ASSETS_DIR", "MODELS_DIR", "TINY_TEACHER_DIR", "TINY_STUDENT_DIR"]
