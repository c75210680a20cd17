"""The one record type that every data source (ShapesWorld, public benchmark files) produces."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass
class VQARecord:
    """One image-question-answer item.

    `image` is an (H, W, 3) uint8 array; loaders of large benchmarks may leave it None and set
    `image_path` instead (decoded lazily). `answers` holds every reference answer (VQAv2 has ten
    human answers); `answer` is the single training target (VQAv2's multiple_choice_answer).
    `meta` carries split-specific fields (question kind, POPE split, NaturalBench group index...).
    """

    id: str
    question: str
    answer: str
    image: np.ndarray | None = None
    image_path: str | None = None
    answers: list[str] = field(default_factory=list)
    caption: str = ""
    meta: dict[str, Any] = field(default_factory=dict)

    def reference_answers(self) -> list[str]:
        return self.answers if self.answers else [self.answer]
