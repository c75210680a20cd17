"""Ask-Solve-Generate's rewards and running statistics, as pure functions of numbers and strings.

Every formula is the reference's (mbzuai-oryx/Ask-Solve-Generate, its main joint run); the
trainer only gathers the inputs. Entropies are in nats; shares and rewards are plain floats.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import torch
from torch import Tensor

__all__ = [
    "Bucket",
    "adapt_kl_beta",
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

Bucket = Literal["easy", "medium", "hard"]


def informativeness(
    entropy: float, margin: float, band_min: float = 0.15, band_max: float = 1.2, margin_max: float = 0.9
) -> float:
    """s = clip(0.5·exp(−(H − c)²/(2w²)) + 0.5·max(0, 1 − margin/margin_max), 0, 1), where the
    answer-entropy band [band_min, band_max] gives the centre c (0.675) and width w (0.525).

    High for moderate disagreement, low for unanimity (H = 0, margin = 1) and for chaos."""
    centre, width = (band_min + band_max) / 2, (band_max - band_min) / 2
    band = math.exp(-((entropy - centre) ** 2) / (2 * width**2))
    damp = max(0.0, 1.0 - margin / margin_max)
    return min(1.0, max(0.0, 0.5 * band + 0.5 * damp))


def solver_rewards(
    answers: Sequence[str],
    majority: str,
    share: float,
    s: float,
    easy: bool,
    minority_weight: float = 0.25,
    unsolvable_share: float = 0.2,
) -> list[float]:
    """The reward of each of the Solver's (normalised) answers to one question.

    * easy question: the majority gets −s (answering it the same way again teaches nothing) and
      every minority answer +minority_weight·s;
    * unsolvable (majority share ≤ unsolvable_share): every answer gets −minority_weight·s;
    * otherwise the majority gets s and every minority answer −minority_weight·s.
    Whether the Solver updates at all is `solver_updates`."""
    if easy:
        return [-s if a == majority else minority_weight * s for a in answers]
    if share <= unsolvable_share:
        return [-minority_weight * s for _ in answers]
    return [s if a == majority else -minority_weight * s for a in answers]


def solver_updates(share: float, no_update_share: float = 0.85) -> bool:
    """Whether the Solver learns from a question: not when its answers (nearly) all agree already."""
    return share < no_update_share


def ema_baselines(baseline: float, rewards: Sequence[float], momentum: float) -> tuple[list[float], float]:
    """The baseline each reward is compared with, and the final baseline, when the rewards arrive
    one after the other: b_{j+1} = momentum·b_j + (1 − momentum)·r_j (the reference updates after
    every sample, so sample j's advantage is r_j − b_j)."""
    used = []
    for reward in rewards:
        used.append(baseline)
        baseline = momentum * baseline + (1 - momentum) * reward
    return used, baseline


def adapt_kl_beta(
    beta: float,
    kl: float,
    target: float = 0.02,
    rate: float = 0.1,
    lowest: float = 1e-3,
    highest: float = 100.0,
) -> float:
    """β ← β·exp(rate·clip((KL − target)/target, −1, 1)), bounded to [lowest, highest]: β grows
    while the Solver drifts from the frozen model faster than the target, and shrinks otherwise.
    A non-finite KL leaves β as it is."""
    if not math.isfinite(kl):
        return beta
    error = max(-1.0, min(1.0, (kl - target) / target))
    return max(lowest, min(highest, beta * math.exp(rate * error)))


def update_entropy_mu(
    mu: float,
    entropy: float,
    momentum: float = 0.9,
    lowest: float = 0.65,
    highest: float = 1.5,
    floor: float = 0.05,
) -> float:
    """μ, the EMA of the answer entropy that the Proposer's R_base aims at, clamped to [lowest,
    highest]; a question with H ≤ floor (near-unanimous) does not move it."""
    if entropy > floor:
        mu = momentum * mu + (1 - momentum) * entropy
    return max(lowest, min(highest, mu))


def proposer_base_reward(
    s: float, entropy: float, mu: float, band_weight: float = 0.9, sigma: float = 0.25
) -> float:
    """R_base = band_weight·clip(2s − 1, −1, 1) + (1 − band_weight)·exp(−(H − μ)²/(2σ²)), clipped to [−1, 1]."""
    band = max(-1.0, min(1.0, 2 * s - 1))
    gaussian = math.exp(-((entropy - mu) ** 2) / (2 * sigma**2))
    return max(-1.0, min(1.0, band_weight * band + (1 - band_weight) * gaussian))


def proposer_reward(
    difficulty: float,
    base: float,
    capped: bool,
    difficulty_weight: float = 0.7,
    base_weight: float = 0.3,
    cap: float = 0.2,
) -> float:
    """R = difficulty_weight·difficulty + base_weight·R_base, at most `cap` for a collapsed or easy
    question (`capped`), clipped to [−1, 1]."""
    reward = difficulty_weight * difficulty + base_weight * base
    if capped:
        reward = min(reward, cap)
    return max(-1.0, min(1.0, reward))


def clipped_surrogate(log_ratio: Tensor, advantage: Tensor, clip_ratio: float = 0.2) -> Tensor:
    """Per-sample PPO loss max(−A·ρ, −A·clip(ρ, 1 − ε, 1 + ε)), ρ = exp(log π − log π_ref) (B,):
    the gradient stops once the policy has moved ε from the reference in the advantage's direction."""
    ratio = log_ratio.exp()
    return torch.maximum(-advantage * ratio, -advantage * ratio.clamp(1 - clip_ratio, 1 + clip_ratio))


def _yes_no(answer: str) -> int:
    word = answer.strip().lower()
    return 1 if word.startswith("yes") else (-1 if word.startswith("no") else 0)


def yes_no_contradiction(expected: str, answer: str) -> bool:
    """Both answers are yes/no and they disagree."""
    e, a = _yes_no(expected), _yes_no(answer)
    return e != 0 and a != 0 and e != a


def generation_reward(
    expected: Sequence[str],
    majorities: Sequence[str],
    shares: Sequence[float],
    match_weight: float = 0.7,
    share_weight: float = 0.3,
    contradiction_weight: float = 0.2,
) -> tuple[float, float]:
    """(reward, contradiction share) of one generated image checked against its QA pairs:
    mean over pairs of match_weight·[majority == expected] + share_weight·share, minus
    contradiction_weight × the share of pairs whose yes/no answers contradict. Answers normalised."""
    if not expected or not (len(expected) == len(majorities) == len(shares)):
        raise ValueError("generation_reward needs one majority answer and share per QA pair")
    n = len(expected)
    score = (
        sum(match_weight * (m == e) + share_weight * p for e, m, p in zip(expected, majorities, shares)) / n
    )
    contradictions = sum(yes_no_contradiction(e, m) for e, m in zip(expected, majorities)) / n
    return score - contradiction_weight * contradictions, contradictions
