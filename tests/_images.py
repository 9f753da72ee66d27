"""Random RGB test images shared by the model and evaluation tests."""

from __future__ import annotations

import numpy as np
from PIL import Image


def random_images(n: int, seed: int = 0, size: tuple[int, int] = (70, 90)) -> list[Image.Image]:
    """``n`` uniformly random ``size = (height, width)`` RGB images from ``numpy``'s generator seeded with ``seed``."""
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)) for _ in range(n)]
