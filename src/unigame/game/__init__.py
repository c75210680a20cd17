"""The UniGame method, model-agnostic: the perturber (challenger), semantic filters and hard-sample buffer.

Nothing here imports a model family; everything works on tensors and on the small `SemanticScorer`
protocol (implemented by a CLIP wrapper in ``unigame.models``).
"""

from unigame.game.buffer import HardSampleBuffer, MineStats, percentile_threshold
from unigame.game.filters import (
    FILTERS,
    ClipFilter,
    CosineFilter,
    FilterResult,
    NoFilter,
    SemanticFilter,
    SemanticScorer,
    build_filter,
)
from unigame.game.perturber import BUDGETS, NoisePerturber, Perturber, perturbation_regulariser

__all__ = [
    "BUDGETS",
    "FILTERS",
    "ClipFilter",
    "CosineFilter",
    "FilterResult",
    "HardSampleBuffer",
    "MineStats",
    "NoFilter",
    "NoisePerturber",
    "Perturber",
    "SemanticFilter",
    "SemanticScorer",
    "build_filter",
    "percentile_threshold",
    "perturbation_regulariser",
]
