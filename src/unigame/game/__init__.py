"""The UniGame method, model-agnostic: the perturber (challenger), semantic filters, hard-sample buffer,
the adversary modes, the trainer (UniGame and the SFT baseline) and its config, checkpoints and logs.

Nothing here imports a model family except `unigame.game.loading`, which turns a model directory into
a `JanusAdapter`; everything else works on the `UnifiedModel` protocol (`unigame.game.protocol`) and
the small `SemanticScorer` protocol (implemented by a CLIP wrapper in ``unigame.models``).
"""

from unigame.game.adversary import (
    DecoderAdversary,
    EmbeddingAdversary,
    NoiseAdversary,
    build_adversary,
    build_miner,
)
from unigame.game.buffer import HardSampleBuffer, MineStats, percentile_threshold
from unigame.game.config import (
    ConfigError,
    DataConfig,
    GameConfig,
    LoggingConfig,
    ModelConfig,
    OptimConfig,
    TrainConfig,
)
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
from unigame.game.perturber import BUDGETS, REGULARISERS, NoisePerturber, Perturber, perturbation_regulariser
from unigame.game.protocol import UnifiedModel, check_unified_model
from unigame.game.run import load_recipe, train
from unigame.game.run_logging import MetricsLogger
from unigame.game.trainer import UniGameTrainer

__all__ = [
    "BUDGETS",
    "FILTERS",
    "ClipFilter",
    "ConfigError",
    "CosineFilter",
    "DataConfig",
    "DecoderAdversary",
    "EmbeddingAdversary",
    "FilterResult",
    "GameConfig",
    "HardSampleBuffer",
    "LoggingConfig",
    "MetricsLogger",
    "MineStats",
    "ModelConfig",
    "NoFilter",
    "NoiseAdversary",
    "NoisePerturber",
    "OptimConfig",
    "Perturber",
    "REGULARISERS",
    "SemanticFilter",
    "SemanticScorer",
    "TrainConfig",
    "UniGameTrainer",
    "UnifiedModel",
    "build_adversary",
    "build_filter",
    "build_miner",
    "check_unified_model",
    "load_recipe",
    "percentile_threshold",
    "perturbation_regulariser",
    "train",
]
