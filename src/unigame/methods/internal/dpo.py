"""The DPO loss (Rafailov et al., 2023) on image-token log-probabilities, plus the chosen image's NLL.

A few lines rather than TRL's trainer: the log-probabilities here are sums over VQ codes from the
adapter's teacher-forced generation loss, which TRL's text-only batching does not produce.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

__all__ = ["dpo_loss"]


def dpo_loss(
    policy_chosen: Tensor,
    policy_rejected: Tensor,
    reference_chosen: Tensor,
    reference_rejected: Tensor,
    beta: float,
) -> tuple[Tensor, Tensor]:
    """Per-pair loss −log σ(β·[(π_c − ref_c) − (π_r − ref_r)]) and the implicit reward margin.

    Arguments are (B,) summed log-probabilities log p(image | prompt) under the policy and the
    frozen reference. Returns (loss (B,), margin (B,) = the bracket before β, detached)."""
    margin = (policy_chosen - reference_chosen) - (policy_rejected - reference_rejected)
    return -F.logsigmoid(beta * margin), margin.detach()
