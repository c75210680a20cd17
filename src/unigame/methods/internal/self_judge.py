"""The model judging its own generations: P(yes) to the one whole-prompt question, and the exact
judge's verdict beside it (ShapesWorld)."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from unigame.data.generalist import match_question
from unigame.data.shapes import ShapesConfig, judge
from unigame.eval.common import pixels_to_images
from unigame.eval.shapes_suite import geneval_strict_correct

__all__ = ["judge_accepts", "yes_probability"]


@torch.no_grad()
def yes_probability(adapter: Any, pixels: Tensor, prompts: list[str]) -> Tensor:
    """(B,) P(yes) / (P(yes) + P(no)) for "Does this image show {prompt}?", from the understanding
    branch's per-token answer likelihoods (one forward per answer, no sampling)."""
    questions = [match_question(p) for p in prompts]
    loss_yes = adapter.understanding_loss(pixels, questions, ["yes"] * len(prompts)).float()
    loss_no = adapter.understanding_loss(pixels, questions, ["no"] * len(prompts)).float()
    return torch.sigmoid(loss_no - loss_yes).cpu()


def judge_accepts(pixels: Tensor, specs: list[dict[str, Any] | None], config: ShapesConfig) -> Tensor:
    """(B,) bool: the exact judge reads exactly the prompted objects (the strict GenEval rule);
    False where a prompt has no ShapesWorld spec."""
    verdicts = [
        spec is not None and geneval_strict_correct(judge(image, config), spec)
        for image, spec in zip(pixels_to_images(pixels), specs)
    ]
    return torch.tensor(verdicts, dtype=torch.bool)
