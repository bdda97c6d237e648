"""Small helpers to show images in the Dagster UI (there is no image metadata type)."""

from __future__ import annotations

import base64
import io

import dagster as dg
import numpy as np
from PIL import Image


def image_markdown(image: np.ndarray, title: str = "preview") -> dg.MetadataValue:
    """A base64 PNG inside a markdown metadata value."""
    buf = io.BytesIO()
    Image.fromarray(np.asarray(image, dtype=np.uint8)).save(buf, format="PNG")
    b64 = base64.b64encode(buf.getvalue()).decode()
    return dg.MetadataValue.md(f"![{title}](data:image/png;base64,{b64})")
