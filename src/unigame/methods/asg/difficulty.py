"""Question difficulty: where a difficulty signal (STE, or the answer entropy in the ablation)
falls among the recent ones, and the easy / medium / hard buckets it implies."""

from __future__ import annotations

import math
from collections import deque
from typing import Any

from unigame.methods.asg.rewards import Bucket

__all__ = ["DifficultyWindow", "bucket"]


class DifficultyWindow:
    """A rolling window of the last `size` signals of kept questions.

    `difficulty(x)` is the fraction of the window strictly below x: a rank, so it needs no scale
    and follows the Solver as it improves. While the window holds fewer than `min_values`, it is
    sigmoid(alpha·(x − beta)) instead (reference: alpha 1.5, beta 2.0 nats).
    """

    def __init__(self, size: int = 128, min_values: int = 8, alpha: float = 1.5, beta: float = 2.0) -> None:
        self.size, self.min_values, self.alpha, self.beta = size, min_values, alpha, beta
        self.values: deque[float] = deque(maxlen=size)

    def difficulty(self, signal: float) -> float:
        """Difficulty in [0, 1] of a question whose signal is `signal` (the window is not changed)."""
        if len(self.values) < self.min_values:
            return 1.0 / (1.0 + math.exp(-self.alpha * (signal - self.beta)))
        return sum(v < signal for v in self.values) / len(self.values)

    def push(self, signal: float) -> None:
        """Add a kept question's signal (the oldest drops out once `size` are held)."""
        self.values.append(float(signal))

    def __len__(self) -> int:
        return len(self.values)

    def state_dict(self) -> dict[str, Any]:
        return {"values": list(self.values)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.values = deque((float(v) for v in state["values"]), maxlen=self.size)


def bucket(difficulty: float, easy_quantile: float = 0.3, hard_quantile: float = 0.7) -> Bucket:
    """easy below `easy_quantile`, hard above `hard_quantile`, medium in between."""
    if difficulty < easy_quantile:
        return "easy"
    return "hard" if difficulty > hard_quantile else "medium"
