"""Pixel-space PGD: it breaks a model it can break, stays inside the eps ball, and never lowers the loss."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from unigame.data.records import VQARecord
from unigame.eval.attacks import pgd_attack, pgd_report


class RednessModel:
    """A protocol-shaped toy: answers "yes" iff the mean red intensity exceeds 0.5 (logit 50 x margin),
    so an 8/255 budget flips every answer on images within 3/255 of the threshold."""

    def __init__(self) -> None:
        self.model = nn.Linear(1, 1)  # holds "weights" whose .grad must stay untouched
        self.device = torch.device("cpu")

    def _logit(self, pixels: torch.Tensor) -> torch.Tensor:
        return 50 * (pixels[:, 0].mean((1, 2)) - 0.5) + 0 * self.model.weight.sum()  # (B,)

    def understanding_loss(self, pixels, questions, answers):
        target = torch.tensor([1.0 if a == "yes" else 0.0 for a in answers])
        return F.binary_cross_entropy_with_logits(self._logit(pixels), target, reduction="none")

    def answer(self, pixels, questions):
        return ["yes" if v > 0 else "no" for v in self._logit(pixels).tolist()]


def _records(levels: list[int]) -> list[VQARecord]:
    return [
        VQARecord(
            id=str(i),
            question="Is it red?",
            answer="yes" if level > 127.5 else "no",
            image=np.full((8, 8, 3), level, dtype=np.uint8),
        )
        for i, level in enumerate(levels)
    ]


def test_pgd_flips_a_breakable_model_and_smaller_budgets_hurt_less():
    records = _records([129, 130, 126, 125])  # within 3/255 of the decision threshold
    model = RednessModel()
    report = pgd_report(model, records, [1 / 255, 8 / 255], steps=5, batch_size=3, progress=False)
    assert report["clean_accuracy"] == 1.0
    assert report["eps_8"]["accuracy"] == 0.0  # 8/255 crosses the threshold for every image
    assert report["eps_1"]["accuracy"] == 1.0  # 1/255 cannot reach it
    assert report["eps_8"]["accuracy"] <= report["eps_1"]["accuracy"] <= report["clean_accuracy"]
    assert report["eps_8"]["loss_adv"] > report["eps_8"]["loss_clean"]
    assert model.model.weight.grad is None


@pytest.mark.parametrize("random_start", [False, True])
def test_pgd_on_tiny_janus_respects_the_ball_and_raises_the_loss(tiny_adapter, random_start):
    torch.manual_seed(0)
    pixels = torch.rand(3, 3, 32, 32)
    questions = ["Is there a red circle?", "How many objects are there?", "What colour is the square?"]
    answers = ["yes", "2", "blue"]
    eps = 8 / 255
    adv, loss_clean, loss_adv = pgd_attack(
        tiny_adapter,
        pixels,
        questions,
        answers,
        eps,
        steps=3,
        random_start=random_start,
        generator=torch.Generator().manual_seed(0),
    )
    assert adv.shape == pixels.shape
    assert (adv - pixels).abs().max() <= eps + 1e-6
    assert adv.min() >= 0 and adv.max() <= 1
    assert (loss_adv >= loss_clean - 1e-6).all()
    assert (loss_adv > loss_clean).any()  # a white-box attack on a differentiable model moves the loss
    with torch.no_grad():
        torch.testing.assert_close(
            tiny_adapter.understanding_loss(adv, questions, answers), loss_adv, rtol=1e-4, atol=1e-4
        )
    assert all(p.grad is None for p in tiny_adapter.model.parameters())


def test_zero_budget_returns_the_clean_images(tiny_adapter):
    pixels = torch.rand(2, 3, 32, 32)
    adv, loss_clean, loss_adv = pgd_attack(
        tiny_adapter, pixels, ["Is there a red circle?"] * 2, ["yes", "no"], 0.0, 2
    )
    torch.testing.assert_close(adv, pixels)
    torch.testing.assert_close(loss_adv, loss_clean)
