"""Ask, Solve, Generate (mbzuai-oryx/Ask-Solve-Generate), the whole algorithm: the difficulty window
over Solver Token Entropy, the self-consistency rewards, the question panel and the trainer.

A Proposer, a Solver and a Generator (three LoRA adapters on one frozen model) learn from unlabeled
images; the exact ShapesWorld judge only reports whether self-consistent answers are right.
"""

from unigame.methods.asg.difficulty import DifficultyWindow, bucket
from unigame.methods.asg.rewards import (
    adapt_kl_beta,
    clipped_surrogate,
    ema_baselines,
    generation_reward,
    informativeness,
    proposer_base_reward,
    proposer_reward,
    solver_rewards,
    solver_updates,
    update_entropy_mu,
    yes_no_contradiction,
)
from unigame.methods.asg.trainer import ROLES, AsgTrainer

__all__ = [
    "ROLES",
    "AsgTrainer",
    "DifficultyWindow",
    "adapt_kl_beta",
    "bucket",
    "clipped_surrogate",
    "ema_baselines",
    "generation_reward",
    "informativeness",
    "proposer_base_reward",
    "proposer_reward",
    "solver_rewards",
    "solver_updates",
    "update_entropy_mu",
    "yes_no_contradiction",
]
