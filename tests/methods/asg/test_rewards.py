"""Ask-Solve-Generate's pure parts, pinned on hand-made cases: Solver Token Entropy, the difficulty
window, the Solver's and the Proposer's rewards, the adaptive KL coefficient, the clipped
surrogate and the generation reward. Expected values are computed by hand in the comments."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from unigame.eval.metrics import answer_entropy, majority_vote, solver_sampling_schedule, solver_token_entropy
from unigame.methods.asg import (
    DifficultyWindow,
    adapt_kl_beta,
    bucket,
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
from unigame.models.sequences import decode_ids


# ------------------------------------------------------------------------------------------ STE
class _ScriptedLM(nn.Module):
    """A decoder whose hidden state at decoding step t is the one-hot e_t, so a linear head whose
    column t holds the logits of step t makes the model emit exactly those logits."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dim, self.calls = dim, 0

    def forward(self, inputs_embeds, attention_mask=None, position_ids=None, use_cache=None, **_):
        hidden = torch.zeros(*inputs_embeds.shape[:2], self.dim)
        hidden[:, -1, self.calls] = 1.0
        self.calls += 1
        return type("Out", (), {"last_hidden_state": hidden})()


def test_ste_is_the_largest_full_vocabulary_entropy_of_the_first_k_greedy_tokens():
    # Vocabulary of 5, EOS = 4. Step logits (log-probabilities) and their entropies by hand:
    #   step 0: p = (1/2, 1/4, 1/4, 0, 0) -> H = 1/2 ln 2 + 2 * 1/4 ln 4 = 1.5 ln 2 = 1.03972; argmax token 0
    #   step 1: p = (1/4, 1/4, 1/4, 1/4, 0) -> H = ln 4 = 1.38629; argmax token 0 (first of equals)
    #   step 2: p = (0.9, 0.1, 0, 0, 0) -> H = -(0.9 ln 0.9 + 0.1 ln 0.1) = 0.32508; token 0
    #   step 3: EOS with p = 1 -> H = 0; the answer ends, later steps are NaN
    eps = 1e-30
    steps = [
        [0.5, 0.25, 0.25, eps, eps],
        [0.25, 0.25, 0.25, 0.25, eps],
        [0.9, 0.1, eps, eps, eps],
        [eps, eps, eps, eps, 1.0],
    ]
    head = nn.Linear(6, 5, bias=False)
    with torch.no_grad():
        head.weight.zero_()
        for t, probs in enumerate(steps):
            head.weight[:, t] = torch.tensor(probs).log()
    embed = nn.Embedding(5, 3)
    rows, entropies = decode_ids(
        _ScriptedLM(6), head, embed, torch.zeros(1, 2, 3), torch.ones(1, 2, dtype=torch.long),
        torch.arange(2)[None], eos_id=4, pad_id=0, max_new_tokens=6,
        temperature=torch.zeros(1), top_p=torch.ones(1),
    )  # fmt: skip
    assert rows == [[0, 0, 0]]
    expected = [1.5 * math.log(2), math.log(4), -(0.9 * math.log(0.9) + 0.1 * math.log(0.1)), 0.0]
    assert entropies[0, :4].tolist() == pytest.approx(expected, abs=1e-5)
    assert torch.isnan(entropies[0, 4:]).all()
    assert solver_token_entropy(entropies[0].tolist(), k=5) == pytest.approx(math.log(4), abs=1e-5)
    assert solver_token_entropy(entropies[0].tolist(), k=1) == pytest.approx(1.5 * math.log(2), abs=1e-5)


def test_ste_takes_the_first_k_tokens_or_all_when_fewer():
    assert solver_token_entropy([0.2, 1.1, 0.4, 2.0, 0.1, 3.0], k=5) == 2.0  # 3.0 is token 6
    assert solver_token_entropy([0.3, 0.7, math.nan, math.nan], k=5) == 0.7  # a two-token answer
    assert math.isnan(solver_token_entropy([math.nan], k=5))
    with pytest.raises(ValueError, match="k=0"):
        solver_token_entropy([1.0], k=0)


# ----------------------------------------------------------------------------------- difficulty
def test_difficulty_is_a_sigmoid_under_8_values_then_the_rank_in_a_window_of_128():
    window = DifficultyWindow(size=128, min_values=8, alpha=1.5, beta=2.0)
    for v in (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7):  # 7 values: still the fallback
        window.push(v)
    assert window.difficulty(2.0) == pytest.approx(0.5)
    assert window.difficulty(3.0) == pytest.approx(1 / (1 + math.exp(-1.5)))  # 0.8176
    window.push(0.8)  # 8 values: the rank, strictly below
    assert window.difficulty(0.45) == pytest.approx(4 / 8)
    assert window.difficulty(0.4) == pytest.approx(3 / 8)  # an equal value does not count
    assert window.difficulty(5.0) == 1.0 and window.difficulty(0.0) == 0.0
    for i in range(130):  # the window keeps the last 128
        window.push(10.0 + i)
    assert len(window) == 128 and min(window.values) == 12.0
    assert window.difficulty(12.5) == pytest.approx(1 / 128)


def test_buckets_split_at_the_0_30_and_0_70_quantiles():
    assert [bucket(d) for d in (0.0, 0.29, 0.3, 0.7, 0.71, 1.0)] == [
        "easy", "easy", "medium", "medium", "hard", "hard",
    ]  # fmt: skip


# -------------------------------------------------------------------------------- Solver reward
def _s(entropy: float, margin: float) -> float:
    # s by hand: centre (0.15 + 1.2)/2 = 0.675, width (1.2 - 0.15)/2 = 0.525, margin_max 0.9
    return min(
        1.0, 0.5 * math.exp(-((entropy - 0.675) ** 2) / (2 * 0.525**2)) + 0.5 * max(0.0, 1 - margin / 0.9)
    )


def test_majority_answers_get_s_and_minority_answers_a_quarter_of_it_negated():
    answers = ["yes", "no", "yes", "no", "yes", "yes", "no"]
    majority, share, counts = majority_vote(answers)
    assert (majority, share, counts) == ("yes", 4 / 7, {"yes": 4, "no": 3})
    h = answer_entropy(counts)
    assert h == pytest.approx(-(4 / 7) * math.log(4 / 7) - (3 / 7) * math.log(3 / 7))  # 0.68291
    s = informativeness(h, 4 / 7 - 3 / 7)
    assert s == pytest.approx(_s(h, 1 / 7))  # 0.5*0.99986 + 0.5*0.84127 = 0.92056
    rewards = solver_rewards(answers, majority, share, s, easy=False)
    assert rewards == pytest.approx([s, -0.25 * s, s, -0.25 * s, s, s, -0.25 * s])
    assert solver_updates(share)


def test_an_easy_question_punishes_the_majority_and_rewards_the_minority():
    answers = ["red", "red", "red", "blue", "red", "green", "red"]
    majority, share, counts = majority_vote(answers)
    s = informativeness(answer_entropy(counts), 5 / 7 - 1 / 7)
    rewards = solver_rewards(answers, majority, share, s, easy=True)
    assert rewards == pytest.approx([-s, -s, -s, 0.25 * s, -s, 0.25 * s, -s])


def test_an_unsolvable_question_gives_every_answer_minus_a_quarter_s():
    answers = ["1", "2", "3", "4", "red", "yes", "no"]  # all differ: share 1/7 <= 0.2
    majority, share, counts = majority_vote(answers)
    assert majority == "1" and share == pytest.approx(1 / 7)
    h = answer_entropy(counts)
    assert h == pytest.approx(math.log(7))
    s = informativeness(h, 0.0)  # 0.5*exp(-(1.9459-0.675)^2/(2*0.525^2)) + 0.5 = 0.5267
    assert s == pytest.approx(_s(math.log(7), 0.0))
    assert solver_rewards(answers, majority, share, s, easy=False) == pytest.approx([-0.25 * s] * 7)


def test_no_solver_update_once_85_percent_agree():
    assert not solver_updates(majority_vote(["red"] * 6 + ["blue"])[1])  # 6/7 = 0.857
    assert not solver_updates(1.0)
    assert solver_updates(majority_vote(["red"] * 5 + ["blue", "green"])[1])  # 5/7 = 0.714


def test_a_tie_goes_to_the_answer_seen_first():
    assert majority_vote(["a", "b", "b", "a"])[0] == "a"


def test_baselines_move_answer_by_answer():
    used, final = ema_baselines(0.0, [1.0, 1.0], momentum=0.6)
    assert used == pytest.approx([0.0, 0.4]) and final == pytest.approx(0.64)  # 0.6*0.4 + 0.4*1


def test_the_solver_schedule_is_greedy_then_hotter_samples_with_narrower_nuclei():
    schedule = solver_sampling_schedule(7, 0.5, 2.5, 0.3, 1.0)
    expected = [(0.0, 1.0), (0.5, 1.0), (0.9, 0.86), (1.3, 0.72), (1.7, 0.58), (2.1, 0.44), (2.5, 0.3)]
    assert [pytest.approx(e) for e in expected] == schedule


# ------------------------------------------------------------------------------------------ KL
def test_kl_beta_adapts_toward_the_target_within_bounds():
    assert adapt_kl_beta(0.01, 0.02) == pytest.approx(0.01)  # on target
    assert adapt_kl_beta(0.01, 0.03) == pytest.approx(0.01 * math.exp(0.1 * 0.5))  # error 0.5
    assert adapt_kl_beta(0.01, 0.5) == pytest.approx(0.01 * math.exp(0.1))  # error clipped to 1
    assert adapt_kl_beta(0.01, 0.0) == pytest.approx(0.01 * math.exp(-0.1))  # error -1
    assert adapt_kl_beta(99.0, 1.0) == 100.0  # upper bound
    assert adapt_kl_beta(0.00101, 0.0) == 0.001  # lower bound
    assert adapt_kl_beta(0.5, math.nan) == 0.5


# ------------------------------------------------------------------------------ Proposer reward
def test_proposer_reward_mixes_difficulty_and_self_consistency_and_caps_easy_questions():
    # R_base = 0.9*clip(2*0.6 - 1) + 0.1*exp(0) = 0.18 + 0.1 = 0.28; R = 0.7*0.8 + 0.3*0.28 = 0.644
    base = proposer_base_reward(s=0.6, entropy=0.9, mu=0.9)
    assert base == pytest.approx(0.28)
    assert proposer_reward(0.8, base, capped=False) == pytest.approx(0.644)
    assert proposer_reward(0.8, base, capped=True) == pytest.approx(0.2)  # collapsed or easy
    assert proposer_reward(0.1, -0.5, capped=True) == pytest.approx(0.07 - 0.15)  # under the cap: kept
    # The Gaussian term: H one sigma (0.25) from mu gives exp(-1/2).
    assert proposer_base_reward(0.5, 1.15, 0.9) == pytest.approx(0.1 * math.exp(-0.5))


def test_the_entropy_target_mu_is_an_ema_clamped_to_its_range():
    assert update_entropy_mu(0.9, 1.2) == pytest.approx(0.93)  # 0.9*0.9 + 0.1*1.2
    assert update_entropy_mu(0.9, 0.03) == 0.9  # near-unanimous answers do not move it
    assert update_entropy_mu(0.66, 0.06) == 0.65  # 0.9*0.66 + 0.1*0.06 = 0.6 -> clamped
    assert update_entropy_mu(1.5, 1.95) == 1.5


def test_the_clipped_surrogate_stops_once_the_ratio_leaves_the_trust_region():
    log_ratio = torch.tensor([math.log(1.5), 0.0, math.log(0.5)], requires_grad=True)
    advantage = torch.tensor([1.0, 1.0, -1.0])
    loss = clipped_surrogate(log_ratio, advantage, 0.2)
    # max(-1*1.5, -1*1.2) = -1.2; max(-1, -1) = -1; max(0.5, 0.8) = 0.8
    assert loss.tolist() == pytest.approx([-1.2, -1.0, 0.8])
    loss.sum().backward()
    assert log_ratio.grad.tolist() == pytest.approx([0.0, -1.0, 0.0])  # clipped rows carry no gradient


# ---------------------------------------------------------------------------- generation reward
def test_generation_reward_weighs_matches_and_shares_and_subtracts_contradictions():
    # per pair: 0.7*match + 0.3*share -> (0 + 0.3), (0.7 + 0.15), (0.7 + 0.3); mean 0.716667
    # contradictions: "yes" vs "no" only -> 1/3; reward 0.716667 - 0.2/3 = 0.65
    reward, contradictions = generation_reward(["yes", "red", "2"], ["no", "red", "2"], [1.0, 0.5, 1.0])
    assert reward == pytest.approx(0.65) and contradictions == pytest.approx(1 / 3)
    assert yes_no_contradiction("yes", "no") and yes_no_contradiction("no", "yes")
    assert not yes_no_contradiction("yes", "red") and not yes_no_contradiction("no", "no")
    with pytest.raises(ValueError, match="one majority answer and share per QA pair"):
        generation_reward([], [], [])
