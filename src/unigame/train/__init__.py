"""The training infrastructure every method shares: the config tree, checkpoints and exact resume,
distributed launch, signals, logging, batches, model loading, and the `UnifiedModel` protocol that
methods talk to (`train` is the `unigame train` entry point)."""

from unigame.train.config import (
    ConfigError,
    DataConfig,
    GameConfig,
    LoggingConfig,
    ModelConfig,
    OptimConfig,
    TrainConfig,
)
from unigame.train.protocol import UnifiedModel, check_unified_model
from unigame.train.run import load_recipe, train
from unigame.train.run_logging import MetricsLogger

__all__ = [
    "ConfigError",
    "DataConfig",
    "GameConfig",
    "LoggingConfig",
    "MetricsLogger",
    "ModelConfig",
    "OptimConfig",
    "TrainConfig",
    "UnifiedModel",
    "check_unified_model",
    "load_recipe",
    "train",
]
