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
