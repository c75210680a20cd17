"""Token-sequence plumbing shared by the decoder-only adapters (Janus, Emu3).

Both families run a causal language model over `[prompt | answer]`, left-padded so every prompt
ends at the same column; these helpers pack such batches, score the answer tokens, and decode
greedily with a KV cache. Nothing here knows where the image tokens come from.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "CAPTION_QUESTION",
    "answer_ce",
    "cache_argument",
    "decode_ids",
    "greedy_ids",
    "guided_sample",
    "nucleus_sample",
    "pack",
]

# The question `caption()` asks; the tiny bases are trained with it (see unigame.pretrain).
CAPTION_QUESTION = "Describe the image."


def pack(
    prompts: list[list[int]],
    targets: list[list[int]] | None,
    pad_id: int,
    device: torch.device,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Left-pad prompts (so they end together) and right-pad targets after them.

    Returns ids, attention mask, position ids (counting real tokens only, so padding never shifts
    a sample's positions) and labels (-100 except on target tokens), each (B, L).
    """
    targets = targets or [[] for _ in prompts]
    width_p = max(len(p) for p in prompts)
    width_t = max(len(t) for t in targets)
    batch = len(prompts)
    ids = torch.full((batch, width_p + width_t), pad_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    labels = torch.full_like(ids, -100)
    for i, (p, t) in enumerate(zip(prompts, targets)):
        start = width_p - len(p)
        ids[i, start:width_p] = torch.tensor(p)
        mask[i, start : width_p + len(t)] = 1
        if t:
            ids[i, width_p : width_p + len(t)] = torch.tensor(t)
            labels[i, width_p : width_p + len(t)] = torch.tensor(t)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    return ids.to(device), mask.to(device), positions.to(device), labels.to(device)


def answer_ce(lm_head: nn.Module, hidden: Tensor, targets: Tensor) -> Tensor:
    """Per-sample mean CE over labelled positions; (B, L, D), (B, L) -> (B,).

    The LM head runs on the answer positions only: at a 100k+ vocabulary the logits of hundreds
    of image positions would cost more than the rest of the head's work.
    """
    picked = targets != -100  # (B, L)
    logits = lm_head(hidden[picked]).float()  # (T, V) in fp32 for the loss
    token_ce = F.cross_entropy(logits, targets[picked], reduction="none")  # (T,)
    sums = torch.zeros(targets.shape[0], device=token_ce.device).index_add(
        0, picked.nonzero()[:, 0], token_ce
    )
    return sums / picked.sum(-1).clamp(min=1)


def guided_sample(
    logits: torch.Tensor, guidance: float, temperature: float, generator: torch.Generator | None
) -> torch.Tensor:
    """One classifier-free-guided draw: logits (2B, K) stack the conditional rows over the
    unconditional ones; returns (B,) ids, greedy when `temperature` <= 0."""
    batch = logits.shape[0] // 2
    logits = logits[batch:] + guidance * (logits[:batch] - logits[batch:])  # (B, K)
    if temperature <= 0:
        return logits.argmax(-1)
    probs = torch.softmax(logits / temperature, dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


def cache_argument(lm: torch.nn.Module) -> str:
    """The keyword a transformers decoder takes its KV cache by: `cache` (transformers >= 5.24;
    `past_key_values` is deprecated there) or `past_key_values` (earlier 5.x)."""
    import inspect

    return "cache" if "cache" in inspect.signature(lm.forward).parameters else "past_key_values"


def _continue_ids(
    lm: nn.Module,
    lm_head: nn.Module,
    embed: nn.Module,
    embeds: Tensor,
    mask: Tensor,
    positions: Tensor,
    eos_id: int,
    pad_id: int,
    max_new_tokens: int,
    next_token: Callable[[Tensor, Tensor, int], Tensor],
) -> list[list[int]]:
    """The shared KV-cached decoding loop: `next_token(logits (B, V), done (B,), step)` picks each
    step's ids; rows that have emitted EOS keep emitting it. One row of ids per sample, EOS cut."""
    from transformers import DynamicCache

    cache = DynamicCache()
    batch, device = embeds.shape[0], embeds.device
    out_ids = torch.full((batch, max_new_tokens), pad_id, dtype=torch.long, device=device)
    done = torch.zeros(batch, dtype=torch.bool, device=device)
    for step in range(max_new_tokens):
        hidden = lm(
            inputs_embeds=embeds,
            attention_mask=mask,
            position_ids=positions,
            use_cache=True,
            **{cache_argument(lm): cache},
        ).last_hidden_state
        next_ids = next_token(lm_head(hidden[:, -1]), done, step)  # (B,)
        next_ids = torch.where(done, torch.full_like(next_ids, eos_id), next_ids)
        out_ids[:, step] = next_ids
        done |= next_ids == eos_id
        if bool(done.all()):
            break
        embeds = embed(next_ids[:, None])  # (B, 1, D)
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
        positions = positions[:, -1:] + 1
    return [row[: row.index(eos_id)] if eos_id in row else row for row in out_ids.tolist()]


@torch.no_grad()
def greedy_ids(
    lm: nn.Module,
    lm_head: nn.Module,
    embed: nn.Module,
    embeds: Tensor,
    mask: Tensor,
    positions: Tensor,
    *,
    eos_id: int,
    pad_id: int,
    max_new_tokens: int,
) -> list[list[int]]:
    """Greedy continuation of a packed batch (embeds (B, L, D)), one row of ids per sample, EOS cut.

    `lm` is the bare decoder (returns `last_hidden_state`), `lm_head` maps hidden states to the
    vocabulary and `embed` embeds the ids fed back.
    """
    return _continue_ids(
        lm, lm_head, embed, embeds, mask, positions, eos_id, pad_id, max_new_tokens,
        lambda logits, done, step: logits.argmax(-1),
    )  # fmt: skip


def nucleus_sample(
    logits: Tensor, temperature: Tensor, top_p: Tensor, generator: torch.Generator | None
) -> Tensor:
    """One draw per row from logits (B, V) at a per-row temperature (B,) and nucleus top-p (B,).

    A row with temperature <= 0 takes the argmax. Top-p keeps the most likely tokens until their
    mass reaches p (always at least one), as transformers' `TopPLogitsWarper` does.
    """
    logits = logits.float()
    greedy = temperature <= 0
    scaled = logits / temperature.clamp(min=1e-6).to(logits)[:, None]
    probs = torch.softmax(scaled, dim=-1)  # (B, V)
    sorted_p, order = probs.sort(dim=-1, descending=True, stable=True)
    before = sorted_p.cumsum(-1) - sorted_p  # mass of the more likely tokens
    sorted_p = sorted_p.masked_fill(before >= top_p.to(before)[:, None], 0.0)
    draw = torch.multinomial(sorted_p, 1, generator=generator)  # (B, 1), renormalised
    sampled = order.gather(-1, draw).squeeze(-1)
    return torch.where(greedy.to(sampled.device), logits.argmax(-1), sampled)


@torch.no_grad()
def decode_ids(
    lm: nn.Module,
    lm_head: nn.Module,
    embed: nn.Module,
    embeds: Tensor,
    mask: Tensor,
    positions: Tensor,
    *,
    eos_id: int,
    pad_id: int,
    max_new_tokens: int,
    temperature: Tensor,
    top_p: Tensor,
    generator: torch.Generator | None = None,
) -> tuple[list[list[int]], Tensor]:
    """Continue a packed batch (embeds (B, L, D)) by sampling (per-row temperature and top-p, (B,);
    temperature 0 is greedy), one row of ids per sample, EOS cut.

    Also returns the entropy (nats, over the whole vocabulary, of the model's untempered
    next-token distribution) at every step a row generated a token, EOS included: (B,
    max_new_tokens), NaN after a row's EOS. Arguments otherwise as in `greedy_ids`.
    """
    entropies = torch.full((embeds.shape[0], max_new_tokens), float("nan"), device=embeds.device)

    def sample_and_record(logits: Tensor, done: Tensor, step: int) -> Tensor:
        logits = logits.float()  # (B, V)
        log_p = torch.log_softmax(logits, dim=-1)
        entropy = -(log_p.exp() * log_p).sum(-1)  # (B,)
        entropies[:, step] = torch.where(done, torch.full_like(entropy, float("nan")), entropy)
        return nucleus_sample(logits, temperature, top_p, generator)

    rows = _continue_ids(
        lm, lm_head, embed, embeds, mask, positions, eos_id, pad_id, max_new_tokens, sample_and_record
    )
    return rows, entropies
