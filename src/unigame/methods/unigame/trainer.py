"""`UniGameTrainer`: UniGame self-adversarial post-training (arXiv 2511.19413, Algorithm 1), and the
SFT baseline as the same loop with the game off.

Two players share one model. The challenger C (a small perturber, AdamW gen_lr) ascends
L_C = CE(U(x̃), a) − λ‖δ‖²; the understanding branch U (LoRA on the language model only, AdamW
und_lr) descends L_U = CE_clean + β·CE_hard. Everything else (vision encoder, VQ, generation
head) is frozen. `train()` is the algorithm; read it top to bottom.
"""

from __future__ import annotations

import contextlib
import functools
import json
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from unigame.data.records import VQARecord
from unigame.data.shapes import label_holds
from unigame.methods.unigame.adversary import (
    Attack,
    ChallengeMiner,
    DecoderAdversary,
    EmbeddingAdversary,
    GenerationMiner,
    build_adversary,
    build_candidate_filter,
    build_miner,
)
from unigame.methods.unigame.buffer import HardSampleBuffer, MineStats, percentile_threshold
from unigame.methods.unigame.filters import SemanticFilter, SemanticScorer
from unigame.methods.unigame.perturber import REGULARISERS
from unigame.train.batches import Batch, RecordBatches
from unigame.train.checkpoint import optimizer_state, restore_optimizer
from unigame.train.config import TrainConfig
from unigame.train.protocol import UnifiedModel
from unigame.train.run_logging import LabelCounts, hard_sample_panel
from unigame.train.signals import StopRequest
from unigame.train.trainer import NonFiniteRunError, Trainer, attach_lora

__all__ = [
    "METRICS",
    "HardBatch",
    "NonFiniteRunError",
    "UniGameTrainer",
    "attach_lora",
]  # the last two re-exported

# Per-step metrics, in CSV column order. ce_hard is the replayed buffer batch (or, with the buffer
# off, this step's selected candidates); ce_extra the SFT control's extra clean items;
# attack_success_rate is measured every logging.log_every. label_valid_* (ShapesWorld, candidates
# with pixels, mining steps): the share of mined candidates whose label the exact judge still reads
# from x̃, of those inserted into the buffer (or selected), and of label-valid ones the filter rejects.
METRICS: tuple[str, ...] = (
    "loss_understand",
    "ce_clean",
    "ce_hard",
    "ce_extra",
    "ce_adv",
    "loss_challenge",
    "reg",
    "eps",
    "buffer_size",
    "filter_pass_rate",
    "tau",
    "mined",
    "label_valid_mined",
    "label_valid_inserted",
    "label_valid_rejected",
    "attack_success_rate",
    "nonfinite_steps",
    "step_seconds",
)


@dataclass
class HardBatch:
    """Hard samples for the understand step: stored latents (re-decoded on replay) and their text."""

    latents: Tensor  # (K, ...) z̃ (with residual decoding [z̃, z], (K, 2, N, D)) or t̃
    questions: list[str]
    answers: list[str]
    slots: Tensor | None = None  # (K·W,) buffer slots replayed on all W ranks; None for this step's selection
    total: int | None = None  # hard items on all ranks together; None in one process
    pixels: Tensor | None = None  # (K, 3, H, W) their clean images, when the adversary decodes residually


class UniGameTrainer(Trainer):
    """UniGame (game.enabled) or the SFT baseline (not), with one state, one checkpoint path, one loop.

    Args:
        cfg: the run's config (validated here, before anything loads).
        run_dir: where metrics, plots, panels and checkpoints go.
        adapter: a `UnifiedModel`; None loads `cfg.model.path` (a Janus directory).
        scorer: the semantic filter's scorer; None loads `cfg.model.scorer_path` when the filter needs one.
        records: training records; None reads those `cfg.data` names (ShapesWorld, or local files).
    """

    METRICS = METRICS
    progress_keys = ("ce_clean", "ce_adv", "ce_hard", "eps", "buffer_size")

    def __init__(
        self,
        cfg: TrainConfig,
        run_dir: str | Path,
        adapter: UnifiedModel | None = None,
        scorer: SemanticScorer | None = None,
        records: list[VQARecord] | None = None,
    ) -> None:
        super().__init__(cfg, run_dir, adapter, records)
        self.scorer = scorer
        self.adversary: DecoderAdversary | EmbeddingAdversary | None = None
        self.miner: ChallengeMiner | GenerationMiner | None = None
        self.filter: SemanticFilter | None = None
        self.buffer: HardSampleBuffer | None = None
        self.opt_challenger: torch.optim.Optimizer | None = None
        self._last_selection: HardBatch | None = None  # buffer off: this step's selected candidates
        self.extra_batches: RecordBatches | None = None  # SFT control: data.extra_clean_items per step
        self.label_counts = LabelCounts()  # the exact judge's label checks of mined candidates, run totals
        self._judge_labels = False  # whether mining checks labels (ShapesWorld, candidates with pixels)
        self._buffer_item_shape: tuple[int, ...] | None = None  # what this run stores per buffer item

    @property
    def progress_name(self) -> str:  # type: ignore[override]
        return "UniGame" if self.cfg.game.enabled else "SFT"

    # =================================================================================== setup
    def build_method(self, probe: Tensor, model_path: Path | None) -> None:
        """The SFT control's extra stream, and the game: the perturber needs the latent width, so it is
        built after the adapter."""
        cfg, game = self.cfg, self.cfg.game
        if cfg.data.extra_clean_items:
            self.extra_batches = self._extra_clean_stream()
        if game.enabled:
            with self._autocast():
                self.adversary = build_adversary(
                    game.adversary,
                    self.adapter,
                    probe,
                    eps_max=game.eps_max,
                    eps_init=game.eps_init,
                    budget=game.budget,
                    hidden=game.perturber_hidden,
                    seed=cfg.seed,
                    residual_decode=game.residual_decode,
                    replay_images=game.replay_images,
                )
            self.perturber = self.adversary.perturber
            self.regulariser = REGULARISERS[game.reg_form]  # ‖δ‖² of L_C's λ term (sum or mean)
            self.generation_generator = torch.Generator(device=self.device).manual_seed(cfg.seed + 2)
            self.miner = build_miner(
                game.mining,
                self.adversary,
                self.adapter,
                self.generation_generator,
                game.generation_guidance,
                game.generation_temperature,
            )
            if self.scorer is None and game.filter != "none" and self.miner.has_pixels:
                from unigame.train.loading import load_scorer, resolve_model_path

                self.scorer = load_scorer(cfg.model, model_path or resolve_model_path(cfg.model))
            self.filter = build_candidate_filter(
                game.filter,
                self.miner.has_pixels,
                self.scorer,
                clip_threshold=game.clip_threshold,
                clip_calibration=game.clip_calibration,
                clip_margin=game.clip_margin,
                cosine_threshold=game.cosine_threshold,
            )
            self.buffer = HardSampleBuffer(game.capacity) if game.buffer else None
            # One buffer item's shape (decoder candidates), to check a checkpoint's buffer against.
            if self.buffer is not None and isinstance(self.miner, ChallengeMiner) and self.miner.has_pixels:
                with self._autocast():  # a bf16 run stores the VQ encoder in bf16
                    z = self.adversary.clean(self.adapter, probe)  # (1, N, D)
                self._buffer_item_shape = tuple(self.adversary.stored(z, z, probe).shape[1:])
            # ShapesWorld's exact judge can re-read a candidate image's label; token-space candidates
            # and local data have nothing it can read.
            self._judge_labels = cfg.data.source == "shapes" and self.miner.has_pixels
            self.challenger_parameters = [p for p in self.perturber.parameters() if p.requires_grad]
            self.opt_challenger = torch.optim.AdamW(
                self.challenger_parameters, lr=cfg.optim.gen_lr, weight_decay=cfg.optim.weight_decay
            )
        self.replay_generator = torch.Generator().manual_seed(cfg.seed + 1)  # CPU: the buffer samples on CPU

    def decodes_perturbed_latents(self) -> bool:
        return self.cfg.game.enabled and self.cfg.game.adversary == "decoder"

    def _extra_clean_stream(self) -> RecordBatches:
        """The SFT control's second stream: data.extra_clean_items clean items per process and step,
        over the same records in their own seeded order (data.split_seed + 1)."""
        data, world = self.cfg.data, self.dist.world_size
        if data.extra_clean_items * world > len(self.records):
            raise ValueError(
                f"data.extra_clean_items={data.extra_clean_items} x {world} process(es) exceeds the "
                f"{len(self.records)} training records; lower it or raise data.train_items."
            )
        return self.batches.stream(data.extra_clean_items * world, data.split_seed + 1)

    # =================================================================================== train
    def train(self, until_step: int | None = None, stop: StopRequest | None = None) -> None:
        """Run steps until `optim.steps` (or `until_step`, to simulate an interruption in tests), or
        until `stop` is set (SIGINT/SIGTERM): then return at the next step boundary.

        One step is Algorithm 1's loop body: the challenger moves, hard samples are mined, then the
        understanding player moves. With the game off only the understand step runs, on clean CE.
        """
        cfg, game = self.cfg, self.cfg.game
        last = cfg.optim.steps if until_step is None else min(until_step, cfg.optim.steps)
        self._open_progress(last)
        while self.step < last and not stop:
            start = time.perf_counter()
            batch = next(self.batches)  # Alg. 1 l.2: sample (x, q, a) from the data
            # SFT with equal examples per update (game off): more clean items, from a second stream.
            extra = next(self.extra_batches) if self.extra_batches is not None else None
            metrics: dict[str, float] = {}
            with self._autocast():
                # Alg. 1 l.3: clean understanding tokens Enc(x); Enc is frozen, so computed once.
                clean_tokens = self.adapter.visual_tokens(batch.pixels)  # (B, N_u, D_u)
                self._last_selection = None
                if game.enabled and game.schedule == "simultaneous":
                    # Alg. 1 l.4-12 in one forward/backward (docs/method.md): C ascends CE(x̃) through a
                    # gradient reversal at δ while LoRA descends L_U; mining reads the same forward.
                    if not self.simultaneous_step(batch, clean_tokens, metrics):
                        self._skip_step(metrics, start)
                        continue
                else:
                    if game.enabled:
                        # Alg. 1 l.4-6, challenge step: C ascends L_C = CE(U(Enc(G(z + C(z)))), a) − λ‖δ‖².
                        clean = self.adversary.clean(self.adapter, batch.pixels)  # (B, N, D) z
                        attack = self.challenge_step(batch, clean, metrics)
                        if attack is None:
                            self._skip_step(metrics, start)
                            continue
                        if self.step % cfg.logging.log_every == 0:
                            metrics["attack_success_rate"] = self.attack_success_rate(batch, attack)
                        # Alg. 1 l.7-9, every m steps: mine hard, faithful candidates into the buffer B.
                        if self.step % game.mine_every == 0:
                            self.mine(batch, clean, attack, metrics)
                    # Alg. 1 l.10-12, understand step: LoRA descends L_U = CE_clean + β·CE_hard.
                    if not self.understand_step(batch, clean_tokens, metrics, extra):
                        self._skip_step(metrics, start)
                        continue
            self.step += 1
            self.nonfinite_streak = 0
            self._end_step(metrics, start)
        if game.enabled and self.dist.is_main:
            self.write_label_validity()

    def challenge_step(self, batch: Batch, clean: Tensor, metrics: dict[str, float]) -> Attack | None:
        """Update the perturber by ascent on L_C; return the (last) forward's detached attack, or None
        when L_C is not finite (nothing is updated then). With game.eps_max 0 (the ε = 0 control) δ ≡ 0:
        one forward gives the CE of the unperturbed candidate and the perturber is never updated."""
        game, grad_clip = self.cfg.game, self.cfg.optim.grad_clip
        attack = None
        for _ in range(game.challenge_steps):
            attack = self.adversary.attack(self.adapter, clean, batch.questions, batch.answers, batch.pixels)
            reg = self.regulariser(attack.delta)  # ‖δ‖², fp32; depends on ε alone (per-token norm fixed)
            loss_challenge = attack.ce.mean() - game.reg_lambda * reg  # L_C, fp32
            if not self._finite(loss_challenge):
                return None
            if game.eps_max == 0:  # the ε = 0 control: nothing to ascend (no backward, no optimiser step)
                break
            self.opt_challenger.zero_grad(set_to_none=True)
            # Ascent; `inputs=` keeps this backward out of LoRA's gradients (U does not move here).
            (-loss_challenge).backward(inputs=self.challenger_parameters)
            self.dist.average_gradients(self.challenger_parameters)  # several processes: DDP's all-reduce
            if not self._clip_is_finite(self.challenger_parameters, grad_clip):
                return None
            self.opt_challenger.step()
        metrics.update(
            ce_adv=attack.ce.detach().mean(),
            loss_challenge=loss_challenge.detach(),
            reg=reg.detach(),
            eps=self.perturber.eps_tensor().detach(),
        )  # tensors: read back once per step, in _end_step
        return attack.detach()

    def mine(
        self,
        batch: Batch,
        clean: Tensor,
        attack: Attack,
        metrics: dict[str, float],
        keep_selection: bool = True,
    ) -> MineStats:
        """Filter the candidates, set τ = percentile of H, keep H ≥ τ and faithful: push z̃ to B
        (or, buffer off, hand them to this step's understand step unless not `keep_selection`). With
        the buffer off, the returned stats' `inserted` are the selected items' global batch indices."""
        game = self.cfg.game
        candidates = self.miner.candidates(
            self.adapter, batch.pixels, clean, attack, batch.questions, batch.answers
        )  # reuses the challenge forward's x̃ and H when mining: decoder
        passed = self.filter(candidates.clean_view, candidates.candidate_view, batch.texts).keep  # (B,)
        hardness = candidates.hardness  # (B,) per-sample CE
        # Does x̃ still show the stored answer? The exact judge reads it back (ShapesWorld, pixels only).
        valid = self._labels_hold(candidates.pixels, batch.questions, batch.answers)  # (B,) or None
        latents, ids, questions, answers = candidates.latents, batch.ids, batch.questions, batch.answers
        if self.dist.world_size > 1:  # every rank mines the global batch: one τ, one (replicated) buffer
            latents, hardness, passed, valid, ids, questions, answers = self._global_candidates(
                batch.ids, latents, hardness, passed, valid
            )
        # One device-to-host copy of what the buffer's bookkeeping reads (CPU).
        host = torch.stack([hardness.detach().double(), passed.double()]).cpu()  # (2, B)
        hardness, passed = host[0], host[1] > 0
        if self.buffer is not None:
            payload = [{"question": q, "answer": a} for q, a in zip(questions, answers)]
            stats = self.buffer.mine(latents, hardness, passed, ids, payload, percentile=game.percentile)
            inserted = list(stats.inserted)
        else:
            tau = percentile_threshold(hardness, game.percentile)
            chosen = (passed & (hardness >= tau)).nonzero().flatten().tolist()
            if chosen and keep_selection:
                local = chosen[self.dist.shard(len(chosen))]  # this rank's share of the selection
                self._last_selection = HardBatch(
                    latents[local],
                    [questions[i] for i in local],
                    [answers[i] for i in local],
                    total=len(chosen) if self.dist.world_size > 1 else None,
                    pixels=self._clean_pixels([ids[i] for i in local]) if self._replay_needs_pixels else None,
                )
            n_passed = int(passed.sum())
            n_hard = int((hardness >= tau).sum())
            stats = MineStats(tau, n_hard, n_passed, len(chosen), len(chosen), tuple(chosen))
            inserted = chosen
        metrics.update(filter_pass_rate=stats.n_passed_filter / len(ids), tau=stats.tau, mined=stats.n_pushed)
        if valid is not None:
            metrics.update(self.label_counts.add(valid, passed, inserted))
        return stats

    def _labels_hold(self, pixels: Tensor | None, questions: list[str], answers: list[str]) -> Tensor | None:
        """(B,) bool: whether the exact judge still reads each stored answer from its candidate image;
        None when it cannot tell (token-space candidates, data other than ShapesWorld)."""
        if not self._judge_labels or pixels is None:
            return None
        images = pixels.detach().float().cpu().numpy()  # (B, 3, H, W) in [0, 1]
        shapes = self.cfg.data.shapes
        return torch.tensor([label_holds(x, q, a, shapes) for x, q, a in zip(images, questions, answers)])

    def understand_step(
        self, batch: Batch, clean_tokens: Tensor, metrics: dict[str, float], extra: Batch | None = None
    ) -> bool:
        """Update LoRA by descent on L_U = CE_clean + β·CE_hard over one mixed batch; False when L_U
        is not finite. Clean and hard items go through the language model together. The SFT control
        `extra` (game off, data.extra_clean_items) takes the hard term's place: CE_clean + β·CE_extra."""
        cfg = self.cfg
        hard = self.hard_batch() if cfg.game.enabled else None
        tokens, questions, answers = clean_tokens, batch.questions, batch.answers  # (B, N_u, D_u)
        if hard is not None and len(hard.questions):
            hard_tokens = self.miner.replay_tokens(self.adapter, hard.latents, hard.pixels)  # (K, N_u, D_u)
            tokens = torch.cat([clean_tokens, hard_tokens.to(clean_tokens.dtype)])  # (B+K, N_u, D_u)
            questions, answers = questions + hard.questions, answers + hard.answers
        if extra is not None:
            extra_tokens = self.adapter.visual_tokens(extra.pixels)  # (E, N_u, D_u), frozen Enc
            tokens = torch.cat([clean_tokens, extra_tokens.to(clean_tokens.dtype)])  # (B+E, N_u, D_u)
            questions, answers = questions + extra.questions, answers + extra.answers
        n_clean = clean_tokens.shape[0]
        for _ in range(cfg.game.understand_steps):  # the SFT baseline makes as many LoRA updates
            ce = self.adapter.understanding_loss_from_tokens(tokens, questions, answers).float()  # (B+K,)
            ce_clean, ce_hard = ce[:n_clean], ce[n_clean:]
            loss_understand = ce_clean.mean()
            if hard is not None:
                loss_understand = loss_understand + cfg.game.beta * self._hard_mean(ce_hard, hard)
            if extra is not None:  # every rank holds the same number of extra items: a plain mean
                loss_understand = loss_understand + cfg.game.beta * ce[n_clean:].mean()
            if not self._finite(loss_understand):
                return False
            self.opt_understand.zero_grad(set_to_none=True)
            loss_understand.backward()
            # Several processes: DDP's all-reduce (FSDP has reduce-scattered its shards in the backward).
            self.dist.average_gradients(self.replicated_lora)
            if not self._clip_is_finite(self.lora_parameters, cfg.optim.grad_clip):
                return False
            self.opt_understand.step()
        metrics.update(loss_understand=loss_understand.detach(), ce_clean=ce_clean.detach().mean())
        if extra is not None:
            metrics["ce_extra"] = ce[n_clean:].detach().mean()
        if hard is not None:
            metrics["ce_hard"] = self._hard_mean(ce_hard.detach(), hard)
            if hard.slots is not None:
                # Re-rank replayed items by their current CE: otherwise items the model has learned
                # keep their mining-time hardness and block harder new candidates from entering.
                # Every rank updates every replayed slot, so the buffer replicas stay identical.
                replayed_ce = self.dist.gather(ce_hard.detach().double())  # (K·W,) in slot order
                self.buffer.update_hardness(hard.slots, replayed_ce.cpu())
        return True

    def simultaneous_step(self, batch: Batch, clean_tokens: Tensor, metrics: dict[str, float]) -> bool:
        """Both players from one forward/backward over [clean; x̃; replayed] (`game.schedule:
        simultaneous`); False when the loss or a gradient is not finite (nothing is updated then).

        LoRA's gradient is ∇L_U: every row of the language model's batch counts for LoRA only where
        L_U has it -- the clean and replayed rows, and with the buffer off the candidates this step
        selects; x̃'s other rows are in the batch for the perturber alone (`_lora_rows`). The perturber
        gets −∇ of CE(x̃).mean() through a gradient reversal at δ whose per-row scale undoes that row's
        weight in the loss, plus λ‖δ‖²: the alternating challenge step's gradient. With the buffer on,
        the replayed batch is drawn before this step's mining (alternating draws it after).
        """
        cfg, game = self.cfg, self.cfg.game
        n = clean_tokens.shape[0]  # B
        clean = self.adversary.clean(self.adapter, batch.pixels)  # (B, N, D) z
        hard = self.hard_batch() if self.buffer is not None else None  # replay, before this step's mining
        challenger_moves = game.eps_max > 0  # the ε = 0 control never updates C: no graph through δ
        reverse = torch.ones(n, device=clean.device)  # the reversal's scale per x̃ row: (1/B) / its weight
        rows = [clean_tokens]
        questions, answers = batch.questions + batch.questions, batch.answers + batch.answers
        if hard is not None and len(hard.questions):
            rows.append(self.miner.replay_tokens(self.adapter, hard.latents, hard.pixels))  # (K, N_u, D_u)
            questions, answers = questions + hard.questions, answers + hard.answers
        else:
            hard = None
        # Forward: δ = C(z) (reversed gradient), x̃, Enc(x̃), and U over [clean; x̃; replayed] at once.
        with torch.set_grad_enabled(challenger_moves):
            perturbation = self.adversary.perturb(
                self.adapter, clean, batch.pixels, reverse=reverse if challenger_moves else None
            )
        rows.insert(1, perturbation.tokens)  # (B, N_u, D_u) Enc(x̃), differentiable in δ
        tokens = torch.cat([r.to(clean_tokens.dtype) for r in rows])  # (2B+K, N_u, D_u)
        lora_rows = torch.ones(tokens.shape[0], dtype=torch.bool, device=clean.device)  # filled below
        with self._lora_rows(lora_rows):
            ce = self.adapter.understanding_loss_from_tokens(tokens, questions, answers).float()  # (2B+K,)
        ce_clean, ce_adv, ce_hard = ce[:n], ce[n : 2 * n], ce[2 * n :]
        reg = self.regulariser(perturbation.delta)  # ‖δ‖², fp32
        if not self._finite(ce.detach().sum() + reg.detach()):
            return False
        attack = Attack(perturbation.delta, perturbation.perturbed, perturbation.pixels, ce_adv).detach()
        if self.step % cfg.logging.log_every == 0:
            metrics["attack_success_rate"] = self.attack_success_rate(batch, attack)
        if hard is not None and hard.slots is not None:  # before mining, which may reuse the slots
            self.buffer.update_hardness(hard.slots, self.dist.gather(ce_hard.detach().double()).cpu())
        # Mining reads this forward's x̃ and H (Alg. 1 l.7-9); the buffer off, it picks L_U's hard rows.
        weight = torch.full((n,), 1.0 / n, device=ce.device)  # each x̃ row's weight in the loss
        trains = torch.zeros(n, dtype=torch.bool, device=ce.device)  # x̃ rows in L_U (buffer off)
        hard_term = None  # β·CE_hard of those rows, for the log
        if self.step % game.mine_every == 0:
            stats = self.mine(batch, clean, attack, metrics, keep_selection=False)
            if self.buffer is None and stats.inserted:
                first = self.dist.rank * n  # this rank's rows in the global batch
                chosen = torch.zeros(n, dtype=torch.bool, device=ce.device)
                chosen[[i - first for i in stats.inserted if first <= i < first + n]] = True
                share = self.dist.world_size / len(stats.inserted)  # `_hard_mean`'s weight of one item
                metrics["ce_hard"] = (ce_adv.detach() * chosen).sum() * share
                hard_term = game.beta * metrics["ce_hard"]
                if game.beta > 0:
                    trains = chosen
                    weight[trains] = game.beta * share
        lora_rows[n : 2 * n] = trains
        reverse.copy_((1.0 / n) / weight)  # 1 where the row weighs 1/B: an exact sign flip
        loss_understand = ce_clean.mean()
        if hard is not None:
            loss_understand = loss_understand + game.beta * self._hard_mean(ce_hard, hard)
        # One backward: LoRA descends L_U (its x̃ rows enter through ce_adv · weight), C ascends
        # CE(x̃).mean() through the reversal and descends λ‖δ‖².
        loss = loss_understand + (ce_adv * weight).sum() + game.reg_lambda * reg
        self.opt_understand.zero_grad(set_to_none=True)
        if challenger_moves:
            self.opt_challenger.zero_grad(set_to_none=True)
        loss.backward()
        self.dist.average_gradients(self.replicated_lora)
        players = [self.lora_parameters]
        if challenger_moves:
            self.dist.average_gradients(self.challenger_parameters)
            players.append(self.challenger_parameters)
        if not all(self._clip_is_finite(params, cfg.optim.grad_clip) for params in players):
            return False
        self.opt_understand.step()
        if challenger_moves:
            self.opt_challenger.step()
        metrics.update(
            loss_understand=loss_understand.detach() + (0.0 if hard_term is None else hard_term),
            ce_clean=ce_clean.detach().mean(),
            ce_adv=ce_adv.detach().mean(),
            loss_challenge=ce_adv.detach().mean() - game.reg_lambda * reg.detach(),
            reg=reg.detach(),
            eps=self.perturber.eps_tensor().detach(),
        )
        if hard is not None:
            metrics["ce_hard"] = self._hard_mean(ce_hard.detach(), hard)
        return True

    @contextlib.contextmanager
    def _lora_rows(self, keep: Tensor) -> Iterator[None]:
        """While open, LoRA's weights get their gradient only from the rows b of the language model's
        batch with `keep[b]`; `keep` may be filled in after the forward, it is read in the backward.
        The gradient to the activations, what reaches δ through the LoRA layers, keeps every row, and
        the forward is bit for bit the plain layer's (`_RowMaskedLinear`)."""
        linears = self._lora_linears()
        for module in linears:
            module.forward = functools.partial(_row_masked_forward, module, keep)  # instance attribute
        try:
            yield
        finally:
            for module in linears:
                del module.forward  # back to the class's

    def _lora_linears(self) -> list[nn.Linear]:
        """LoRA's own linear layers (peft's lora_A and lora_B): the trainable `nn.Linear` modules."""
        return [
            m
            for m in self.peft_model.modules()
            if isinstance(m, nn.Linear) and any(p.requires_grad for p in m.parameters(recurse=False))
        ]

    def hard_batch(self) -> HardBatch | None:
        """The hard samples of this understand step: a replay batch from B, or this step's selection."""
        if self.buffer is None:
            return self._last_selection
        if len(self.buffer) == 0:
            return None
        k = (self.cfg.game.replay_batch or self.cfg.data.batch_size) * self.dist.world_size  # global K
        slots = self.buffer.sample_indices(k, self.replay_generator)  # (K,) the same draw on every rank
        latents, ids, payload = self.buffer.gather(slots[self.dist.shard(k)], device=self.device)
        total = k if self.dist.world_size > 1 else None
        pixels = self._clean_pixels(ids) if self._replay_needs_pixels else None
        return HardBatch(
            latents, [p["question"] for p in payload], [p["answer"] for p in payload], slots, total, pixels
        )

    @property
    def _replay_needs_pixels(self) -> bool:
        """Residual decoding rebuilds x̃ = x + G(z̃) − G(z) from stored latents: replay needs the items'
        clean images (not when the buffer keeps x̃ itself)."""
        return bool(getattr(self.adversary, "replay_needs_clean_pixels", False))

    def _clean_pixels(self, ids: list[str]) -> Tensor:
        return self.batches.batch([self._record_index[i] for i in ids]).pixels  # (K, 3, H, W)

    @torch.no_grad()
    def attack_success_rate(self, batch: Batch, attack: Attack) -> float:
        """Fraction of items whose greedy answer changes under x̃ (NaN for token-space attacks)."""
        if attack.pixels is None:
            return float("nan")
        with self._lora_dropout(False):
            clean = self.adapter.answer(batch.pixels, batch.questions)
            adversarial = self.adapter.answer(attack.pixels, batch.questions)
        return float(np.mean([a != b for a, b in zip(clean, adversarial)]))

    # ============================================================================= step helpers
    def _hard_mean(self, ce_hard: Tensor, hard: HardBatch) -> Tensor:
        """The hard term's mean CE. Several processes: this rank's sum × W / (items on all ranks), so the
        ranks' mean of it -- what gradient averaging takes -- is the mean over all hard items even when
        the ranks hold different numbers of them."""
        if hard.total is None:
            return ce_hard.mean()
        return ce_hard.sum() * (self.dist.world_size / hard.total)

    def _global_candidates(
        self, ids: list[str], latents: Tensor, hardness: Tensor, passed: Tensor, valid: Tensor | None
    ) -> tuple[Tensor, Tensor, Tensor, Tensor | None, list[str], list[str], list[str]]:
        """Every rank's mining candidates in rank order = the global batch's order: latents (W·B, ...),
        hardness (W·B,), filter verdicts (W·B,), label verdicts (W·B,) or None, and the records' ids,
        questions and answers. Two all-gathers: the latents, and every per-item number in one."""
        index = torch.tensor(
            [self._record_index[i] for i in ids], dtype=torch.float64, device=hardness.device
        )
        judged = valid.to(hardness.device).double() if valid is not None else torch.full_like(index, -1.0)
        small = torch.stack([hardness.double(), passed.double(), index, judged], dim=1)  # (B, 4)
        small = self.dist.gather(small)  # (W·B, 4); float64 holds record indices exactly
        latents = self.dist.gather(latents)  # (W·B, ...)
        records = [self.records[int(i)] for i in small[:, 2].tolist()]
        return (
            latents,
            small[:, 0],
            small[:, 1] > 0,
            None if valid is None else (small[:, 3] > 0).cpu(),  # each rank judged its own images
            [r.id for r in records],
            [r.question for r in records],
            [r.answer for r in records],
        )

    def step_metrics(self, metrics: dict[str, float]) -> None:
        if self.cfg.game.enabled:
            metrics["eps"] = self.perturber.eps_tensor().detach()
            if self.buffer is not None:
                metrics["buffer_size"] = len(self.buffer)

    # ============================================================================ state and I/O
    def method_parameters(self) -> list[nn.Parameter]:
        return self.challenger_parameters if self.cfg.game.enabled else []

    def method_optimizers(self) -> list[torch.optim.Optimizer]:
        return [self.opt_challenger] if self.opt_challenger is not None else []

    def rank_generators(self) -> dict[str, tuple[torch.Generator, int]]:
        # Official-style mining samples images: ranks > 0 draw their own.
        return {"generation": (self.generation_generator, self.cfg.seed + 2)} if self.cfg.game.enabled else {}

    def method_state(self, tensors: dict[str, Tensor], meta: dict[str, Any]) -> None:
        """The replay stream, the SFT control's stream, and the game: perturber, its optimiser, the
        generation stream, the buffer and the label counts."""
        tensors["generator.replay"] = self.replay_generator.get_state()
        if self.extra_batches is not None:
            meta["data_extra"] = self.extra_batches.state_dict()
        if self.cfg.game.enabled:
            meta["label_validity"] = self.label_counts.state_dict()
            tensors.update({f"perturber.{k}": v for k, v in self.perturber.state_dict().items()})
            challenger_tensors, meta["optim"]["challenger"] = optimizer_state(
                self.opt_challenger, "optim.challenger"
            )
            tensors.update(challenger_tensors)
            tensors["generator.generation"] = self.generation_generator.get_state()
            if self.buffer is not None:
                buffer_state = self.buffer.state_dict()
                tensors["buffer.latents"] = buffer_state["latents"]
                tensors["buffer.hardness"] = buffer_state["hardness"]
                meta["buffer"] = buffer_state["metadata"]

    def check_resumable(self, saved_config: dict[str, Any], path: Path) -> None:
        super().check_resumable(saved_config, path)
        saved_game = saved_config["game"]["enabled"]
        if saved_game != self.cfg.game.enabled:
            raise ValueError(
                f"checkpoint {path} has game.enabled={saved_game} but this run has "
                f"{self.cfg.game.enabled}; a run cannot switch between SFT and UniGame on resume."
            )

    def load_method_state(self, tensors: dict[str, Tensor], meta: dict[str, Any], path: Path) -> None:
        self.replay_generator.set_state(tensors["generator.replay"])
        if self.cfg.game.enabled:
            prefix = "perturber."
            self.perturber.load_state_dict(
                {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}
            )
            restore_optimizer(self.opt_challenger, "optim.challenger", tensors, meta["optim"]["challenger"])
            self.generation_generator.set_state(tensors["generator.generation"])
            if self.buffer is not None and "buffer" in meta:
                state = {
                    "latents": tensors["buffer.latents"],
                    "hardness": tensors["buffer.hardness"],
                    "metadata": meta["buffer"],
                }
                self.buffer.load_state_dict(self._with_clean_latents(state))
            # Older checkpoints have no label counts: the totals start here.
            self.label_counts.load_state_dict(meta.get("label_validity", {}))
        if self.extra_batches is not None:
            self._restore_extra_stream(meta, path)

    def _with_clean_latents(self, state: dict[str, Any]) -> dict[str, Any]:
        """The buffer state as this run stores items. A residual run keeps [z̃, z] per item; a checkpoint
        written when it kept z̃ alone gets z encoded from the items' clean images (so replay needs no
        VQ encoder afterwards). Any other layout change is refused, naming the settings."""
        meta = (
            json.loads(state["metadata"]) if isinstance(state["metadata"], str) else dict(state["metadata"])
        )
        shape, expected = meta.get("item_shape"), self._buffer_item_shape
        if shape is None or expected is None or tuple(shape) == expected:
            return state
        if not (self._replay_needs_pixels and tuple(shape) == expected[1:]):
            raise ValueError(
                f"the checkpoint's hard-sample buffer holds items of shape {tuple(shape)} but this run stores "
                f"{expected} (z̃; [z̃, z] with game.residual_decode; x̃ with game.replay_images): resume with "
                "the game.residual_decode and game.replay_images the checkpoint was written with."
            )
        perturbed = state["latents"]  # (n, N, D)
        if perturbed.shape[0]:
            clean = self.adversary.clean(self.adapter, self._clean_pixels(meta["ids"])).cpu()  # (n, N, D)
            latents = torch.stack([perturbed, clean.to(perturbed.dtype)], dim=1)  # (n, 2, N, D)
        else:
            latents = perturbed.new_empty((0, *expected))
        meta["item_shape"] = list(expected)
        return {**state, "latents": latents, "metadata": json.dumps(meta)}

    def _restore_extra_stream(self, meta: dict[str, Any], path: Path) -> None:
        if "data_extra" in meta:
            self.extra_batches.load_state_dict(meta["data_extra"])
            return
        warnings.warn(
            f"checkpoint {path} has no extra clean stream (written with data.extra_clean_items 0); "
            f"this run's data.extra_clean_items={self.cfg.data.extra_clean_items} stream starts at its beginning.",
            stacklevel=3,
        )

    def write_label_validity(self) -> Path:
        """Write `<run>/label_validity.json`: the run's count-weighted label-validity shares (null when
        nothing was measured) and the counts behind them, over every step so far (resumed runs included)."""
        path = self.run_dir / "label_validity.json"
        partial = path.with_name(path.name + ".partial")
        partial.write_text(json.dumps({"steps": self.step, **self.label_counts.summary()}, indent=2) + "\n")
        partial.replace(path)  # atomic: a reader never sees half a file
        return path

    def panels(self) -> list[Path]:
        panel = self._hard_sample_panel()
        return [panel] if panel is not None else []

    @torch.no_grad()
    def _hard_sample_panel(self) -> Path | None:
        if not self.cfg.game.enabled or self.cfg.logging.panel_items == 0:
            return None
        if self.buffer is not None and len(self.buffer):
            order = torch.argsort(self.buffer.hardness, descending=True)[: self.cfg.logging.panel_items]
            latents, ids, payload = self.buffer.gather(order.tolist(), device=self.device)
            hardness = self.buffer.hardness[order].tolist()
        else:
            return None
        clean = self._clean_pixels(ids)  # (K, 3, H, W)
        questions = [p["question"] for p in payload]
        answers = [p["answer"] for p in payload]
        with self._autocast(), self._lora_dropout(False):
            predictions_clean = self.adapter.answer(clean, questions)
            adversarial = predictions_adversarial = None
            if self.miner.has_pixels:
                replay = getattr(self.adversary, "replay_pixels", None)  # the decoder adversary's own x̃ rule
                adversarial = (
                    replay(self.adapter, latents, clean) if replay else self.adapter.decode_latents(latents)
                ).float()  # (K, 3, H, W) re-decoded z̃
                predictions_adversarial = self.adapter.answer(adversarial, questions)
        judged = self._labels_hold(adversarial, questions, answers)  # (K,) or None
        return hard_sample_panel(
            self.run_dir / "plots" / "hard_samples.png",
            clean,
            adversarial,
            questions,
            answers,
            predictions_clean,
            predictions_adversarial,
            hardness,
            judged=None if judged is None else judged.tolist(),
        )

    # ======================================================================== for tests/tools
    def trainable_state(self) -> dict[str, Tensor]:
        """Copies of every trainable tensor (LoRA and perturber) keyed by name."""
        state = super().trainable_state()
        if self.cfg.game.enabled:
            state.update(
                {f"perturber.{k}": v.detach().clone() for k, v in self.perturber.state_dict().items()}
            )
        return state


class _RowMaskedLinear(torch.autograd.Function):
    """y = x Wᵀ (+ b), computed once; the backward gives x its whole gradient and W (and b) the sum
    over the rows b with keep[b] only. `keep` (B,) is read in the backward, so it may be decided
    after the forward. Under autocast the forward is autocast's own linear; the backward computes
    in the gradient's dtype, as autocast's linear does, and hands each input its own dtype back."""

    @staticmethod
    def forward(
        ctx: torch.autograd.function.FunctionCtx, x: Tensor, weight: Tensor, bias: Tensor | None, keep: Tensor
    ) -> Tensor:
        ctx.save_for_backward(x, weight)
        ctx.keep, ctx.has_bias = keep, bias is not None
        return F.linear(x, weight, bias)  # (B, ..., O)

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, grad: Tensor) -> tuple[Tensor | None, ...]:
        x, weight = ctx.saved_tensors
        grad_x = (grad @ weight.to(grad.dtype)).to(x.dtype)  # (B, ..., I): every row
        masked = grad * ctx.keep.view(-1, *([1] * (grad.dim() - 1))).to(grad.dtype)  # (B, ..., O)
        flat = masked.reshape(-1, masked.shape[-1])  # (B·…, O)
        grad_weight = (flat.t() @ x.reshape(-1, x.shape[-1]).to(grad.dtype)).to(weight.dtype)  # (O, I)
        grad_bias = flat.sum(0).to(weight.dtype) if ctx.has_bias else None
        return grad_x, grad_weight, grad_bias, None


def _row_masked_forward(module: nn.Linear, keep: Tensor, x: Tensor) -> Tensor:
    return _RowMaskedLinear.apply(x, module.weight, module.bias, keep)
