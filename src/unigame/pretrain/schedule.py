"""The learning-rate shape every pretraining stage shares: hold, then cosine decay to zero."""

from __future__ import annotations

import math


def cosine_decay(step: int, steps: int, start: int = 0) -> float:
    """LR factor: 1.0 before `start`, then a half cosine from 1 to 0 reached at `steps` (and held)."""
    if step < start:
        return 1.0
    return 0.5 * (1 + math.cos(math.pi * min(step - start, steps - start) / max(1, steps - start)))
