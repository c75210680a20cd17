"""`InternalSupervisionTrainer`: the understanding branch supervises the generation branch
(arXiv 2507.16663, "Self-Contradiction as Self-Improvement").

Algorithm 1 (data construction): for every training prompt y, sample N images x = G(y) and ask the
model's own understanding branch "Does this image show {y}?", keeping P(yes). Accepted images
(P(yes) ≥ `internal.accept`) train the generation NLL (`internal-sft`); per prompt, the highest-
and lowest-scored images form a DPO pair (`internal-dpo`); prompts with nothing accepted go to a
discard pool. Algorithm 2 (curriculum, C-SFT): every `curriculum_every` steps, for
`curriculum_rounds` rounds, the discard pool is regenerated with the current model and rescored.

Only LoRA on the language model learns; the VQ, the vision encoder and the generation head stay
frozen. `train()` is the algorithm; read it top to bottom.
"""

from __future__ import annotations

import json
import time
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from unigame.methods.internal.dpo import dpo_loss
from unigame.methods.internal.pool import SelfJudgedPool
from unigame.methods.internal.prompts import TrainingPrompt, read_prompt_file, shapes_training_prompts
from unigame.methods.internal.self_judge import judge_accepts, yes_probability
from unigame.train.protocol import SELF_GENERATION_METHODS
from unigame.train.signals import StopRequest
from unigame.train.trainer import Trainer

__all__ = ["METRICS", "InternalSupervisionTrainer"]

# Per-step metrics, in CSV column order. The round_* columns are written on the steps a round of
# sampling and self-judging ran (step 0, then every internal.curriculum_every for C-SFT).
METRICS: tuple[str, ...] = (
    "loss",
    "nll",
    "dpo_loss",
    "dpo_margin",
    "dpo_accuracy",
    "pairs",
    "discard_pool",
    "round_accepted_fraction",
    "round_mean_p_yes",
    "round_judge_precision",
    "nonfinite_steps",
    "step_seconds",
)


class InternalSupervisionTrainer(Trainer):
    """`internal-sft` (with `internal.curriculum_rounds` > 0: C-SFT) or `internal-dpo`."""

    METRICS = METRICS
    progress_keys = ("loss", "nll", "dpo_margin", "pairs", "discard_pool")

    @property
    def progress_name(self) -> str:  # type: ignore[override]
        rounds = self.cfg.internal.curriculum_rounds
        return {
            "internal-sft": "C-SFT" if rounds else "SFT (self-judged)",
            "internal-dpo": "DPO (self-judged)",
        }[self.cfg.method]

    @property
    def dpo(self) -> bool:
        return self.cfg.method == "internal-dpo"

    # =================================================================================== setup
    def build_method(self, probe: Tensor, model_path: Path | None) -> None:
        missing = [m for m in SELF_GENERATION_METHODS if not callable(getattr(self.adapter, m, None))]
        if missing:
            raise TypeError(
                f"method={self.cfg.method!r} samples and trains the generation branch: "
                f"{type(self.adapter).__name__} lacks {', '.join(missing)} (unigame.train.protocol)."
            )
        self.prompts = self._training_prompts()
        self.generation_generator = torch.Generator(device=self.device).manual_seed(self.cfg.seed + 2)
        self.pair_generator = torch.Generator().manual_seed(self.cfg.seed + 1)  # CPU: batch draws
        image_tokens = getattr(self.adapter, "num_image_tokens", None)
        if image_tokens is None:  # an adapter without the attribute: sample one image to see
            image_tokens = self.adapter.generate_codes(["a"], generator=torch.Generator(self.device)).shape[1]
        self.pool = SelfJudgedPool(len(self.prompts), int(image_tokens))
        self.rounds_done = 0

    def _training_prompts(self) -> list[TrainingPrompt]:
        it = self.cfg.internal
        if it.prompt_file is not None:
            return read_prompt_file(it.prompt_file, self._encodes)
        return shapes_training_prompts(it.prompts, self.cfg.data.split_seed, self.cfg.data.shapes)

    def _encodes(self, text: str) -> bool:
        """Whether the adapter's tokenizer round-trips `text` (no unknown or lost characters)."""
        tokenizer = getattr(self.adapter, "tokenizer", None)
        if tokenizer is None:
            return True
        ids = tokenizer(text, add_special_tokens=False).input_ids
        unk = getattr(tokenizer, "unk_token_id", None)
        return bool(ids) and unk not in ids and tokenizer.decode(ids).strip() == text.strip()

    def rank_generators(self) -> dict[str, tuple[torch.Generator, int]]:
        # Several processes: every rank samples and judges the same candidates (one generation
        # stream), so all ranks hold the same pool and each trains on its shard of a pool batch.
        return {}

    # =================================================================================== train
    def train(self, until_step: int | None = None, stop: StopRequest | None = None) -> None:
        """Steps until `optim.steps` (or `until_step`), or until `stop`: a round of sampling and
        self-judging when one is due (Alg. 1 at step 0, Alg. 2 every `curriculum_every`), then one
        LoRA update on a batch of accepted pairs (SFT) or preference pairs (DPO)."""
        cfg, it = self.cfg, self.cfg.internal
        last = cfg.optim.steps if until_step is None else min(until_step, cfg.optim.steps)
        self._open_progress(last)
        while self.step < last and not stop:
            start = time.perf_counter()
            metrics: dict[str, float] = {}
            if self._round_due():
                # Alg. 1 (round 0, every prompt) / Alg. 2 (a curriculum round, the discard pool only).
                prompt_ids = (
                    list(range(len(self.prompts))) if self.rounds_done == 0 else list(self.pool.discard)
                )
                if not self.sample_round(prompt_ids, metrics, stop):
                    break  # stopped mid-round: the checkpoint has no part of it; a resume redoes it
                self.rounds_done += 1
            kind = "dpo" if self.dpo else "sft"
            metrics.update(pairs=self.pool.size(kind), discard_pool=len(self.pool.discard))
            if self.pool.size(kind) == 0:  # nothing accepted yet: no update, wait for the curriculum
                self.step += 1
                self._end_step(metrics, start)
                continue
            rows = self.pool.sample(kind, it.batch_size * self.dist.world_size, self.pair_generator)
            rows = rows[self.dist.shard(len(rows))]
            if not self.update(rows, metrics):
                self._skip_step(metrics, start)
                continue
            self.step += 1
            self.nonfinite_streak = 0
            self._end_step(metrics, start)
        if self.dist.is_main:
            self.write_rounds()

    def _round_due(self) -> bool:
        it = self.cfg.internal
        if self.rounds_done == 0:
            return True
        return (
            self.rounds_done <= it.curriculum_rounds
            and self.step >= self.rounds_done * it.curriculum_every
            and bool(self.pool.discard)
        )

    @torch.no_grad()
    def sample_round(
        self, prompt_ids: list[int], metrics: dict[str, float], stop: StopRequest | None = None
    ) -> bool:
        """Sample N images per prompt with the current model, score each with its own P(yes) (and the
        exact judge, for ShapesWorld prompts), and add the round to the pool.

        A round takes minutes on a large prompt set, so `stop` is checked between sampling batches:
        then the round is dropped whole and the sampling generator rewound, so that the checkpoint
        saved next is the state before the round and a resumed run redoes it exactly. Returns
        whether the round completed."""
        it = self.cfg.internal
        generator_state = self.generation_generator.get_state()
        n = it.candidates
        texts = [self.prompts[i].text for i in prompt_ids for _ in range(n)]
        specs = [self.prompts[i].spec for i in prompt_ids for _ in range(n)]
        codes, p_yes, judged = [], [], []
        with self._autocast(), self._lora_dropout(False):
            for start in range(0, len(texts), it.sample_batch_size):
                if stop:
                    self.generation_generator.set_state(generator_state)
                    return False
                batch = texts[start : start + it.sample_batch_size]
                sampled = self.adapter.generate_codes(
                    batch,
                    guidance=it.guidance,
                    temperature=it.temperature,
                    generator=self.generation_generator,
                )  # (b, T)
                pixels = self.adapter.decode_codes(sampled).float()  # (b, 3, H, W)
                codes.append(sampled.cpu())
                p_yes.append(yes_probability(self.adapter, pixels, batch))
                if self.cfg.data.source == "shapes":
                    judged.append(
                        judge_accepts(pixels, specs[start : start + len(batch)], self.cfg.data.shapes)
                    )
        shape = (len(prompt_ids), n)
        codes_t = torch.cat(codes).view(*shape, -1)  # (P, N, T)
        p_yes_t = torch.cat(p_yes).view(shape)
        judge_ok = torch.cat(judged).view(shape) if judged else None
        # The method accepts what its own understanding accepts; the oracle row what the exact judge does.
        accepted = judge_ok.clone() if it.judge == "oracle" else p_yes_t >= it.accept
        reference = self._reference_log_probs(prompt_ids, codes_t, p_yes_t) if self.dpo else None
        stats = self.pool.add_round(prompt_ids, codes_t, p_yes_t, accepted, judge_ok, reference)
        if stats.new_pairs == 0:
            warnings.warn(
                f"internal supervision round {stats.round}: the model accepted none of its {stats.images} images "
                f"(mean P(yes) {stats.mean_p_yes:.3f} < internal.accept {it.accept}); "
                + (
                    "the curriculum regenerates them"
                    if self.rounds_done < it.curriculum_rounds
                    else "no data to train on"
                ),
                stacklevel=2,
            )
        metrics.update(
            round_accepted_fraction=stats.accepted_fraction,
            round_mean_p_yes=stats.mean_p_yes,
            round_judge_precision=float("nan") if stats.judge_precision is None else stats.judge_precision,
        )
        return True

    def _reference_log_probs(self, prompt_ids: list[int], codes: Tensor, p_yes: Tensor) -> Tensor:
        """(P, 2) summed log p(chosen), log p(rejected) under the frozen reference (LoRA off)."""
        chosen, rejected = SelfJudgedPool.pair_indices(p_yes)
        rows = torch.arange(len(prompt_ids))
        texts = [self.prompts[i].text for i in prompt_ids]
        out = []
        with self.peft_model.disable_adapter(), self._autocast():
            for pick in (chosen, rejected):
                out.append(self._log_probs(codes[rows, pick].to(self.device), texts).cpu())
        return torch.stack(out, 1)

    def _log_probs(self, codes: Tensor, texts: list[str]) -> Tensor:
        """(B,) summed log p(codes | text): the generation CE is a per-token mean."""
        chunks = []
        for start in range(0, len(texts), self.cfg.internal.sample_batch_size):
            stop = start + self.cfg.internal.sample_batch_size
            ce = self.adapter.generation_loss_from_codes(codes[start:stop], texts[start:stop]).float()
            chunks.append(-ce * codes.shape[1])
        return torch.cat(chunks)

    def update(self, rows: Tensor, metrics: dict[str, float]) -> bool:
        """One LoRA step on pool rows; False when the loss or its gradient is not finite."""
        it = self.cfg.internal
        with self._autocast():
            if self.dpo:
                prompts = [self.prompts[i].text for i in self.pool.dpo_prompts[rows].tolist()]
                chosen = self.pool.dpo_chosen[rows].to(self.device)
                rejected = self.pool.dpo_rejected[rows].to(self.device)
                ce = self.adapter.generation_loss_from_codes(
                    torch.cat([chosen, rejected]), prompts + prompts
                ).float()
                tokens = chosen.shape[1]
                ce_chosen, ce_rejected = ce[: len(rows)], ce[len(rows) :]
                reference = self.pool.dpo_reference[rows].to(self.device)
                losses, margin = dpo_loss(
                    -ce_chosen * tokens, -ce_rejected * tokens, reference[:, 0], reference[:, 1], it.dpo_beta
                )
                nll = ce_chosen.mean()
                loss = losses.mean() + it.nll_weight * nll
                metrics.update(
                    dpo_loss=float(losses.detach().mean()),
                    dpo_margin=float(margin.mean()),
                    dpo_accuracy=float((margin > 0).float().mean()),
                )
            else:
                prompts = [self.prompts[i].text for i in self.pool.sft_prompts[rows].tolist()]
                codes = self.pool.sft_codes[rows].to(self.device)
                nll = self.adapter.generation_loss_from_codes(codes, prompts).float().mean()
                loss = nll
        if not self._finite(loss):
            return False
        self.opt_understand.zero_grad(set_to_none=True)
        loss.backward()
        self.dist.average_gradients(self.replicated_lora)
        if not self._clip_is_finite(self.lora_parameters, self.cfg.optim.grad_clip):
            return False
        self.opt_understand.step()
        metrics.update(loss=float(loss.detach()), nll=float(nll.detach()))
        return True

    # ============================================================================ state and I/O
    def method_state(self, tensors: dict[str, Tensor], meta: dict[str, Any]) -> None:
        pool_tensors, pool_meta = self.pool.state_dict()
        tensors.update(pool_tensors)
        tensors["generator.pairs"] = self.pair_generator.get_state()
        tensors["generator.generation"] = self.generation_generator.get_state()
        meta["internal"] = {"rounds_done": self.rounds_done, **pool_meta}

    def load_method_state(self, tensors: dict[str, Tensor], meta: dict[str, Any], path: Path) -> None:
        self.pool.load_state_dict(tensors, meta["internal"])
        self.rounds_done = int(meta["internal"]["rounds_done"])
        self.pair_generator.set_state(tensors["generator.pairs"])
        self.generation_generator.set_state(tensors["generator.generation"])

    def write_rounds(self) -> Path:
        """`<run>/rounds.json`: every round's accepted fraction, mean P(yes), discard-pool size and the
        exact judge's precision and recall of what the model accepted."""
        path = self.run_dir / "rounds.json"
        path.write_text(json.dumps([r.as_dict() for r in self.pool.rounds], indent=2) + "\n")
        return path

    def panels(self) -> list[Path]:
        """Chosen / rejected images of the first preference pairs, with P(yes) and the judge's verdict."""
        if self.cfg.logging.panel_items == 0 or self.pool.size("dpo") == 0:
            return []
        from unigame.methods.internal.panel import pair_panel

        k = min(self.cfg.logging.panel_items, self.pool.size("dpo"))
        with torch.no_grad(), self._autocast():
            chosen = self.adapter.decode_codes(self.pool.dpo_chosen[:k].to(self.device)).float()
            rejected = self.adapter.decode_codes(self.pool.dpo_rejected[:k].to(self.device)).float()
        judged = self.cfg.data.source == "shapes"
        return [
            pair_panel(
                self.run_dir / "plots" / "chosen_rejected.png",
                [self.prompts[i].text for i in self.pool.dpo_prompts[:k].tolist()],
                chosen,
                rejected,
                self.pool.dpo_scores[:k],
                self.pool.dpo_judge[:k] if judged else None,
            )
        ]
