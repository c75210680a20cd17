"""UniGame (arXiv 2511.19413), the whole algorithm: the perturber (challenger), the adversary modes,
semantic filters, the hard-sample buffer, and the trainer's step (UniGame, and the SFT baseline as the
same loop with the game off).

It works on the `UnifiedModel` protocol (`unigame.train.protocol`) and the small `SemanticScorer`
protocol (a CLIP wrapper in ``unigame.models``); the shared run infrastructure (config, checkpoints,
distributed, signals, logging, batches) lives in `unigame.train`.
"""

from unigame.methods.unigame.adversary import (
    DecoderAdversary,
    EmbeddingAdversary,
    NoiseAdversary,
    build_adversary,
    build_miner,
)
from unigame.methods.unigame.buffer import HardSampleBuffer, MineStats, percentile_threshold
from unigame.methods.unigame.filters import (
    FILTERS,
    ClipFilter,
    CosineFilter,
    FilterResult,
    NoFilter,
    SemanticFilter,
    SemanticScorer,
    build_filter,
)
from unigame.methods.unigame.perturber import (
    BUDGETS,
    REGULARISERS,
    NoisePerturber,
    Perturber,
    perturbation_regulariser,
)
from unigame.methods.unigame.trainer import UniGameTrainer

__all__ = [
    "BUDGETS",
    "FILTERS",
    "ClipFilter",
    "CosineFilter",
    "DecoderAdversary",
    "EmbeddingAdversary",
    "FilterResult",
    "HardSampleBuffer",
    "MineStats",
    "NoFilter",
    "NoiseAdversary",
    "NoisePerturber",
    "Perturber",
    "REGULARISERS",
    "SemanticFilter",
    "SemanticScorer",
    "UniGameTrainer",
    "build_adversary",
    "build_filter",
    "build_miner",
    "percentile_threshold",
    "perturbation_regulariser",
]
