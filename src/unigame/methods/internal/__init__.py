"""Internal supervision (arXiv 2507.16663), the whole algorithm: training prompts, the model judging
its own generations, the self-judged pool with its curriculum, the DPO loss, and the trainer.

The understanding branch supervises the generation branch: the reverse direction of UniGame.
"""

from unigame.methods.internal.dpo import dpo_loss
from unigame.methods.internal.pool import RoundStats, SelfJudgedPool
from unigame.methods.internal.prompts import TrainingPrompt, read_prompt_file, shapes_training_prompts
from unigame.methods.internal.self_judge import judge_accepts, yes_probability
from unigame.methods.internal.trainer import InternalSupervisionTrainer

__all__ = [
    "InternalSupervisionTrainer",
    "RoundStats",
    "SelfJudgedPool",
    "TrainingPrompt",
    "dpo_loss",
    "judge_accepts",
    "read_prompt_file",
    "shapes_training_prompts",
    "yes_probability",
]
