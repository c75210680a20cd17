"""The one conversion between stored images and model inputs (torch is imported only when called)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    import torch


def images_to_pixels(images: Sequence[np.ndarray] | np.ndarray) -> torch.Tensor:
    """(H, W, 3) uint8 images of one size -> (B, 3, H, W) float pixels in [0, 1]."""
    import torch

    array = images if isinstance(images, np.ndarray) else np.stack(list(images))  # (B, H, W, 3)
    return torch.from_numpy(array).permute(0, 3, 1, 2).float() / 255


PAD_GREY = 127  # Janus-Pro pads to square with its image mean (0.5 * 255)


def square_resize(image: np.ndarray, size: int) -> np.ndarray:
    """(H, W, 3) uint8 -> (size, size, 3): pad the short side with grey (centred), then resize.

    Janus-Pro's own preprocessing, shared by training and evaluation so both see the same pixels.
    """
    from PIL import Image

    h, w = image.shape[:2]
    side = max(h, w)
    canvas = np.full((side, side, 3), PAD_GREY, dtype=np.uint8)
    top, left = (side - h) // 2, (side - w) // 2
    canvas[top : top + h, left : left + w] = image
    if side == size:
        return canvas
    return np.asarray(Image.fromarray(canvas).resize((size, size), Image.BICUBIC), dtype=np.uint8)
