"""The self-judged training data of internal supervision (paper Algorithms 1 and 2).

Each round samples N images per prompt and scores each with the model's own P(yes) (or, for the
oracle row, the exact judge). Accepted images become SFT pairs; per prompt, the highest- and
lowest-scored images form a DPO pair; prompts with nothing accepted go to the discard pool, which a
curriculum round regenerates with the current model.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

__all__ = ["RoundStats", "SelfJudgedPool"]


@dataclass
class RoundStats:
    """What one round of sampling and self-judging produced."""

    round: int
    prompts: int  # prompts sampled this round
    images: int
    accepted_fraction: float  # of the images
    mean_p_yes: float
    new_pairs: int  # SFT pairs added
    discard_pool: int  # prompts with nothing accepted, after this round
    judge_precision: float | None  # of accepted images, the share the exact judge accepts
    judge_recall: float | None  # of judge-accepted images, the share the model accepts

    def as_dict(self) -> dict[str, Any]:
        return dict(vars(self))


class SelfJudgedPool:
    """Accepted (prompt, codes) pairs, DPO pairs, and the discard pool, growing round by round."""

    def __init__(self, n_prompts: int, image_tokens: int) -> None:
        self.n_prompts = n_prompts
        self.sft_prompts = torch.zeros(0, dtype=torch.long)  # (M,) prompt index per accepted image
        self.sft_codes = torch.zeros(0, image_tokens, dtype=torch.long)  # (M, T)
        # DPO: per prompt one pair, (prompt, chosen codes, rejected codes, their scores, reference log-probs)
        self.dpo_prompts = torch.zeros(0, dtype=torch.long)
        self.dpo_chosen = torch.zeros(0, image_tokens, dtype=torch.long)
        self.dpo_rejected = torch.zeros(0, image_tokens, dtype=torch.long)
        self.dpo_scores = torch.zeros(0, 2)  # (P, 2) P(yes) of chosen, rejected
        self.dpo_judge = torch.zeros(0, 2, dtype=torch.bool)  # the exact judge's verdicts, when known
        self.dpo_reference = torch.zeros(0, 2)  # summed log-probs under the frozen reference
        self.discard = list(range(n_prompts))  # every prompt starts without an accepted image
        self.rounds: list[RoundStats] = []

    def add_round(
        self,
        prompt_ids: list[int],
        codes: Tensor,
        p_yes: Tensor,
        accepted: Tensor,
        judge_ok: Tensor | None,
        reference: Tensor | None = None,
    ) -> RoundStats:
        """Add one round. `codes` (P, N, T), `p_yes` and `accepted` (P, N), `judge_ok` (P, N) or None,
        `reference` (P, 2) reference log-probs of each prompt's (chosen, rejected) or None (SFT)."""
        p, n = accepted.shape
        keep = accepted.reshape(-1)
        self.sft_prompts = torch.cat([self.sft_prompts, torch.tensor(prompt_ids).repeat_interleave(n)[keep]])
        self.sft_codes = torch.cat([self.sft_codes, codes.reshape(p * n, -1)[keep]])
        has_accepted = accepted.any(1)  # (P,)
        chosen, rejected = self.pair_indices(p_yes)
        rows = torch.arange(p)
        pairs = has_accepted.nonzero().flatten()
        self.dpo_prompts = torch.cat([self.dpo_prompts, torch.tensor(prompt_ids)[pairs]])
        self.dpo_chosen = torch.cat([self.dpo_chosen, codes[rows, chosen][pairs]])
        self.dpo_rejected = torch.cat([self.dpo_rejected, codes[rows, rejected][pairs]])
        self.dpo_scores = torch.cat(
            [self.dpo_scores, torch.stack([p_yes[rows, chosen], p_yes[rows, rejected]], 1)[pairs]]
        )
        verdicts = judge_ok if judge_ok is not None else torch.zeros_like(accepted)
        self.dpo_judge = torch.cat(
            [self.dpo_judge, torch.stack([verdicts[rows, chosen], verdicts[rows, rejected]], 1)[pairs]]
        )
        ref = reference if reference is not None else torch.zeros(p, 2)
        self.dpo_reference = torch.cat([self.dpo_reference, ref[pairs]])
        solved = {prompt_ids[i] for i in pairs.tolist()}
        self.discard = [i for i in self.discard if i not in solved]
        precision = recall = None
        if judge_ok is not None:
            if accepted.any():
                precision = float(judge_ok[accepted].float().mean())
            if judge_ok.any():
                recall = float(accepted[judge_ok].float().mean())
        stats = RoundStats(
            round=len(self.rounds),
            prompts=p,
            images=p * n,
            accepted_fraction=float(accepted.float().mean()),
            mean_p_yes=float(p_yes.mean()),
            new_pairs=int(keep.sum()),
            discard_pool=len(self.discard),
            judge_precision=precision,
            judge_recall=recall,
        )
        self.rounds.append(stats)
        return stats

    @staticmethod
    def pair_indices(p_yes: Tensor) -> tuple[Tensor, Tensor]:
        """(P,) candidate index of each prompt's highest and lowest P(yes) (first on ties)."""
        return p_yes.argmax(1), p_yes.argmin(1)

    def sample(self, kind: str, k: int, generator: torch.Generator) -> Tensor:
        """`k` row indices into the SFT (`kind` "sft") or DPO ("dpo") pairs, uniformly with replacement."""
        size = len(self.sft_prompts) if kind == "sft" else len(self.dpo_prompts)
        return torch.randint(size, (k,), generator=generator)

    def size(self, kind: str) -> int:
        return len(self.sft_prompts) if kind == "sft" else len(self.dpo_prompts)

    # ----------------------------------------------------------------------------------- state
    _TENSORS = (
        "sft_prompts",
        "sft_codes",
        "dpo_prompts",
        "dpo_chosen",
        "dpo_rejected",
        "dpo_scores",
        "dpo_judge",
        "dpo_reference",
    )

    def state_dict(self) -> tuple[dict[str, Tensor], dict[str, Any]]:
        tensors = {f"pool.{name}": getattr(self, name).clone() for name in self._TENSORS}
        return tensors, {"discard": list(self.discard), "rounds": [r.as_dict() for r in self.rounds]}

    def load_state_dict(self, tensors: dict[str, Tensor], meta: dict[str, Any]) -> None:
        for name in self._TENSORS:
            setattr(self, name, tensors[f"pool.{name}"].clone())
        self.discard = [int(i) for i in meta["discard"]]
        self.rounds = [RoundStats(**r) for r in meta["rounds"]]
