"""`UniGameTrainer`: UniGame self-adversarial post-training (arXiv 2511.19413, Algorithm 1), and the
SFT baseline as the same loop with the game off.

Two players share one model. The challenger C (a small perturber, AdamW gen_lr) ascends
L_C = CE(U(x̃), a) − λ‖δ‖²; the understanding branch U (LoRA on the language model only, AdamW
und_lr) descends L_U = CE_clean + β·CE_hard. Everything else (vision encoder, VQ, generation
head) is frozen. `train()` is the algorithm; read it top to bottom.
"""

from __future__ import annotations

import contextlib
import json
import random
import time
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from unigame.data.local import BadRecord, write_bad_records
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
from unigame.train.batches import Batch, RecordBatches, training_records
from unigame.train.checkpoint import (
    capture_rng,
    checkpoint_dir,
    load_checkpoint,
    optimizer_state,
    restore_optimizer,
    restore_rng,
    save_checkpoint,
)
from unigame.train.config import ConfigError, TrainConfig, config_diff
from unigame.train.distributed import Distributed, is_sharded, rank_seed
from unigame.train.protocol import UnifiedModel, check_unified_model
from unigame.train.run_logging import LabelCounts, MetricsLogger, hard_sample_panel, plot_training_curves
from unigame.train.signals import StopRequest

__all__ = ["METRICS", "HardBatch", "NonFiniteRunError", "UniGameTrainer", "attach_lora"]

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


class NonFiniteRunError(RuntimeError):
    """Too many consecutive non-finite steps: the run is diverging, not hitting one bad batch."""


@dataclass
class HardBatch:
    """Hard samples for the understand step: stored latents (re-decoded on replay) and their text."""

    latents: Tensor  # (K, ...) z̃ or t̃
    questions: list[str]
    answers: list[str]
    slots: Tensor | None = None  # (K·W,) buffer slots replayed on all W ranks; None for this step's selection
    total: int | None = None  # hard items on all ranks together; None in one process
    pixels: Tensor | None = None  # (K, 3, H, W) their clean images, when the adversary decodes residually


def attach_lora(
    model: nn.Module, target_modules: str | list[str], r: int, alpha: float, dropout: float
) -> nn.Module:
    """Freeze every weight, then inject LoRA (peft) into `target_modules`, in place; return the PeftModel.

    The adapter keeps calling its own module tree, which now holds the LoRA layers; the PeftModel is
    what `save_pretrained` writes (loadable by `PeftModel.from_pretrained`).
    """
    from peft import LoraConfig, get_peft_model

    model.requires_grad_(False)
    config = LoraConfig(
        r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=target_modules, bias="none"
    )
    with warnings.catch_warnings():
        # Workaround: peft 0.21 calls transformers' deprecated `is_gradient_checkpointing` (a FutureWarning
        # on every run); drop this filter once peft uses `is_activation_checkpointing`.
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        peft_model = get_peft_model(model, config)
    if not any(p.requires_grad for p in peft_model.parameters()):
        raise ValueError(f"lora_target_modules() = {target_modules!r} matched no module of the model.")
    return peft_model


class UniGameTrainer:
    """UniGame (game.enabled) or the SFT baseline (not), with one state, one checkpoint path, one loop.

    Args:
        cfg: the run's config (validated here, before anything loads).
        run_dir: where metrics, plots, panels and checkpoints go.
        adapter: a `UnifiedModel`; None loads `cfg.model.path` (a Janus directory).
        scorer: the semantic filter's scorer; None loads `cfg.model.scorer_path` when the filter needs one.
        records: training records; None reads those `cfg.data` names (ShapesWorld, or local files).
    """

    def __init__(
        self,
        cfg: TrainConfig,
        run_dir: str | Path,
        adapter: UnifiedModel | None = None,
        scorer: SemanticScorer | None = None,
        records: list[VQARecord] | None = None,
    ) -> None:
        self.cfg = cfg.validate()
        self.run_dir = Path(run_dir)
        self.adapter = adapter
        self.scorer = scorer
        self.records = records
        self.step = 0  # completed steps
        self.nonfinite_steps = 0
        self.nonfinite_streak = 0  # consecutive non-finite steps, up to optim.max_nonfinite_steps
        self.bad_records: list[BadRecord] = []  # records left out of local data, with the reason
        self.adversary: DecoderAdversary | EmbeddingAdversary | None = None
        self.miner: ChallengeMiner | GenerationMiner | None = None
        self.filter: SemanticFilter | None = None
        self.buffer: HardSampleBuffer | None = None
        self.opt_challenger: torch.optim.Optimizer | None = None
        self.logger: MetricsLogger | None = None
        self._last_selection: HardBatch | None = None  # buffer off: this step's selected candidates
        self.extra_batches: RecordBatches | None = None  # SFT control: data.extra_clean_items per step
        self.label_counts = LabelCounts()  # the exact judge's label checks of mined candidates, run totals
        self._judge_labels = False  # whether mining checks labels (ShapesWorld, candidates with pixels)
        self._progress: Any = None
        self.dist = Distributed()  # one process until `setup` reads the launcher's environment

    # =================================================================================== setup
    def setup(self, resume: str | Path | None = None) -> None:
        """Build everything in dependency order, then restore `resume` (a checkpoint dir) if given."""
        cfg, game = self.cfg, self.cfg.game
        missing = cfg.path_errors(model=self.adapter is None)
        if missing:
            raise ConfigError(missing)
        # The process group first: it decides this process's device and its shard of every batch.
        self.dist = Distributed.from_environment(cfg.model.device)
        self.device = self.dist.device
        self.bf16 = cfg.model.precision == "bf16"
        self._check_launcher_precision()
        # Seeds first: LoRA's and the perturber's initial weights draw from torch's global RNG, so
        # the SFT baseline and UniGame start from identical LoRA weights.
        _seed_everything(cfg.seed)

        # 0. The records, before the model: a broken dataset fails in seconds, not after a 7B load.
        #    (Reading them draws no global random numbers, so the seeding above still holds.)
        if self.records is None:
            self.records, self.bad_records = training_records(cfg.data)

        # 1. The model. Everything below sizes itself from it.
        model_path = None
        if self.adapter is None:
            from unigame.train.loading import load_adapter, resolve_model_path

            with self.dist.main_process_first():  # rank 0 builds a missing cached base, the others wait
                model_path = resolve_model_path(cfg.model)
                self.adapter = load_adapter(cfg.model, model_path)
        check_unified_model(self.adapter)
        self.adapter.model.to(self.device)

        # 2. LoRA on the language model only; every other weight frozen.
        self.peft_model = attach_lora(
            self.adapter.model,
            self.adapter.lora_target_modules(),
            cfg.model.lora_r,
            cfg.model.lora_alpha,
            cfg.model.lora_dropout,
        )
        self.adapter.model.eval()  # no dropout in the frozen parts...
        for name, module in self.peft_model.named_modules():
            if name.endswith("lora_dropout"):
                module.train()  # ...but LoRA's own dropout (paper 0.05) is on while training
        if cfg.model.gradient_checkpointing:
            _enable_activation_checkpointing(self.adapter.model)
        if self.bf16:
            # Frozen weights never update, so they need no fp32 master copy; the adapter's decoder stays
            # fp32 all the same, since bf16 would round the perturbation of z + δ away.
            _store_frozen_in_bf16(self.peft_model, keep=self._fp32_modules())
        # FSDP: shard the decoder layers after LoRA and the bf16 cast, since sharding replaces the
        # parameters; rank 0's LoRA weights are broadcast first, while they are still whole tensors.
        if self.dist.fsdp:
            self.dist.broadcast([p for p in self.peft_model.parameters() if p.requires_grad])
            self.dist.shard_language_model(self.peft_model)
        self.lora_parameters = [p for p in self.peft_model.parameters() if p.requires_grad]
        # What FSDP does not reduce itself (all of LoRA without FSDP, none with it) is averaged by hand,
        # like the perturber.
        self.replicated_lora = [p for p in self.lora_parameters if not is_sharded(p)]

        # 3. Batches: the iterator's position is part of the checkpoint.
        # data.batch_size is per process: every rank draws the same global batch and keeps its shard.
        self.batches = RecordBatches(
            self.records,
            cfg.data.batch_size * self.dist.world_size,
            cfg.data.split_seed,
            cfg.data.image_size,
            self.device,
            shard=self.dist.shard,
        )
        if cfg.data.extra_clean_items:
            self.extra_batches = self._extra_clean_stream()
        self._record_index = {r.id: i for i, r in enumerate(self.records)}
        probe = self.batches.batch([0]).pixels  # (1, 3, H, W): sizes the perturber and checks image size
        self._check_image_size(probe)

        # 4. The game. The perturber needs the latent width, so it is built after the adapter.
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
            # ShapesWorld's exact judge can re-read a candidate image's label; token-space candidates
            # and local data have nothing it can read.
            self._judge_labels = cfg.data.source == "shapes" and self.miner.has_pixels
            self.challenger_parameters = [p for p in self.perturber.parameters() if p.requires_grad]
            self.opt_challenger = torch.optim.AdamW(
                self.challenger_parameters, lr=cfg.optim.gen_lr, weight_decay=cfg.optim.weight_decay
            )
        self.replay_generator = torch.Generator().manual_seed(cfg.seed + 1)  # CPU: the buffer samples on CPU

        # 5. The understanding player's optimiser.
        self.opt_understand = torch.optim.AdamW(
            self.lora_parameters, lr=cfg.optim.und_lr, weight_decay=cfg.optim.weight_decay
        )

        # 6. Several processes: start from rank 0's weights, then give ranks > 0 their own dropout
        # streams (rank 0 keeps the one-process stream). Before the checkpoint, which restores them.
        if self.dist.world_size > 1:
            self.dist.broadcast([p for p in self.trainable_parameters() if not is_sharded(p)])
            if not self.dist.is_main:
                torch.manual_seed(rank_seed(cfg.seed, self.dist.rank))
                if game.enabled:
                    self.generation_generator.manual_seed(rank_seed(cfg.seed + 2, self.dist.rank))

        # 7. Restore a checkpoint (after everything exists), then open the logs at its step (rank 0 writes).
        resumed_step = self.load_checkpoint(resume) if resume is not None else None
        if self.dist.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            self.logger = MetricsLogger(self.run_dir, METRICS, cfg.logging.tensorboard, resumed_step)
            self._write_config()
            self._report_bad_records()

    def _fp32_modules(self) -> list[nn.Module]:
        """The adapter's modules that stay float32 in a bf16 run (its decoder, see the protocol)."""
        fp32_modules = getattr(self.adapter, "fp32_modules", None)
        if fp32_modules is not None:
            return list(fp32_modules())
        if self.cfg.game.enabled and self.cfg.game.adversary == "decoder":
            warnings.warn(
                f"model.precision='bf16': {type(self.adapter).__name__} has no fp32_modules(), so its decoder "
                "is stored in bf16 like every frozen weight, and bf16 rounds a perturbation of ~1% of a latent "
                "token away. Add fp32_modules() returning the modules decode_latents runs "
                "(unigame.train.protocol.UnifiedModel), or set model.precision fp32.",
                stacklevel=3,
            )
        return []

    def _check_launcher_precision(self) -> None:
        launcher = self.dist.mixed_precision
        if launcher not in (None, "no") and launcher != self.cfg.model.precision:
            warnings.warn(
                f"the launcher asks for mixed precision {launcher!r}, but unigame takes precision from "
                f"model.precision={self.cfg.model.precision!r} (it keeps the perturber and the losses in fp32); "
                "set model.precision to change it.",
                stacklevel=3,
            )

    def _report_bad_records(self) -> None:
        """Name every record left out: a summary warning, and all of them in <run>/bad_records.jsonl."""
        if not self.bad_records:
            return
        path = write_bad_records(self.bad_records, self.run_dir / "bad_records.jsonl")
        ids = ", ".join(b.id for b in self.bad_records[:10]) + (" ..." if len(self.bad_records) > 10 else "")
        warnings.warn(
            f"data: {len(self.bad_records)} bad record(s) left out of {len(self.records) + len(self.bad_records)} "
            f"(ids: {ids}); each with its reason in {path}",
            stacklevel=3,
        )

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

    def _check_image_size(self, probe: Tensor) -> None:
        expected = getattr(self.adapter, "image_size", None)
        if isinstance(expected, int) and probe.shape[-1] != expected:
            raise ValueError(
                f"the model reads {expected} px images but the data gives {probe.shape[-1]} px; "
                f"set data.image_size {expected}."
            )

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
            ce_adv=float(attack.ce.detach().mean()),
            loss_challenge=float(loss_challenge.detach()),
            reg=float(reg.detach()),
            eps=self.perturber.eps,
        )
        return attack.detach()

    def mine(self, batch: Batch, clean: Tensor, attack: Attack, metrics: dict[str, float]) -> MineStats:
        """Filter the candidates, set τ = percentile of H, keep H ≥ τ and faithful: push z̃ to B
        (or, buffer off, hand them to this step's understand step)."""
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
            latents, hardness, passed, ids, questions, answers = self._global_candidates(
                batch.ids, latents, hardness, passed
            )
            if valid is not None:  # each rank judged its own images; all ranks count the global batch
                valid = self.dist.gather(valid.double()) > 0  # (W·B,)
        if self.buffer is not None:
            payload = [{"question": q, "answer": a} for q, a in zip(questions, answers)]
            stats = self.buffer.mine(latents, hardness, passed, ids, payload, percentile=game.percentile)
            inserted = list(stats.inserted)
        else:
            tau = percentile_threshold(hardness, game.percentile)
            chosen = (passed.cpu() & (hardness.cpu() >= tau)).nonzero().flatten().tolist()
            if chosen:
                local = chosen[self.dist.shard(len(chosen))]  # this rank's share of the selection
                self._last_selection = HardBatch(
                    latents[local],
                    [questions[i] for i in local],
                    [answers[i] for i in local],
                    total=len(chosen) if self.dist.world_size > 1 else None,
                    pixels=self._clean_pixels([ids[i] for i in local]) if self._replay_needs_pixels else None,
                )
            n_passed = int(passed.sum())
            stats = MineStats(tau, int((hardness >= tau).sum()), n_passed, len(chosen), len(chosen))
            inserted = chosen
        metrics.update(filter_pass_rate=stats.n_passed_filter / len(ids), tau=stats.tau, mined=stats.n_pushed)
        if valid is not None:
            metrics.update(self.label_counts.add(valid, passed.cpu(), inserted))
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
        metrics.update(
            loss_understand=float(loss_understand.detach()), ce_clean=float(ce_clean.detach().mean())
        )
        if extra is not None:
            metrics["ce_extra"] = float(ce[n_clean:].detach().mean())
        if hard is not None:
            metrics["ce_hard"] = float(self._hard_mean(ce_hard.detach(), hard))
            if hard.slots is not None:
                # Re-rank replayed items by their current CE: otherwise items the model has learned
                # keep their mining-time hardness and block harder new candidates from entering.
                # Every rank updates every replayed slot, so the buffer replicas stay identical.
                replayed_ce = self.dist.gather(ce_hard.detach().double())  # (K·W,) in slot order
                self.buffer.update_hardness(hard.slots, replayed_ce.cpu())
        return True

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
        """Residual decoding rebuilds x̃ = x + G(z̃) − G(z), so replay needs the items' clean images."""
        return bool(getattr(self.adversary, "residual", False))

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
    def _finite(self, loss: Tensor) -> bool:
        """Whether `loss` is finite on every rank: all ranks skip or all step, never a hung all-reduce."""
        return self.dist.all_true(bool(torch.isfinite(loss)))

    def _hard_mean(self, ce_hard: Tensor, hard: HardBatch) -> Tensor:
        """The hard term's mean CE. Several processes: this rank's sum × W / (items on all ranks), so the
        ranks' mean of it -- what gradient averaging takes -- is the mean over all hard items even when
        the ranks hold different numbers of them."""
        if hard.total is None:
            return ce_hard.mean()
        return ce_hard.sum() * (self.dist.world_size / hard.total)

    def _global_candidates(
        self, ids: list[str], latents: Tensor, hardness: Tensor, passed: Tensor
    ) -> tuple[Tensor, Tensor, Tensor, list[str], list[str], list[str]]:
        """Every rank's mining candidates in rank order = the global batch's order: latents (W·B, ...),
        hardness (W·B,), filter verdicts (W·B,), and the records' ids, questions and answers."""
        index = torch.tensor(
            [self._record_index[i] for i in ids], dtype=torch.float64, device=hardness.device
        )
        small = torch.stack([hardness.double(), passed.double(), index], dim=1)  # (B, 3)
        small = self.dist.gather(small)  # (W·B, 3); float64 holds record indices exactly
        latents = self.dist.gather(latents)  # (W·B, ...)
        records = [self.records[int(i)] for i in small[:, 2].tolist()]
        return (
            latents,
            small[:, 0],
            small[:, 1] > 0,
            [r.id for r in records],
            [r.question for r in records],
            [r.answer for r in records],
        )

    def _clip_is_finite(self, parameters: list[nn.Parameter], max_norm: float) -> bool:
        grads = [p.grad for p in parameters if p.grad is not None]
        if not grads:
            return True
        if max_norm > 0:
            norm = torch.nn.utils.clip_grad_norm_(parameters, max_norm)
        else:
            norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g.float()) for g in grads]))
        return bool(torch.isfinite(norm))

    def _skip_step(self, metrics: dict[str, float], start: float) -> None:
        """A non-finite loss or gradient: no (further) update this step; count it and move on, unless
        it is the `optim.max_nonfinite_steps`-th in a row: then the run is diverging and stops."""
        self.nonfinite_steps += 1
        self.nonfinite_streak += 1
        for opt in (self.opt_challenger, self.opt_understand):
            if opt is not None:
                opt.zero_grad(set_to_none=True)
        self.step += 1
        limit = self.cfg.optim.max_nonfinite_steps
        if self.nonfinite_streak >= limit:
            self.logger.log(self.step, {"nonfinite_steps": self.nonfinite_steps})
            raise NonFiniteRunError(
                f"aborting: {limit} consecutive steps ({self.step - limit + 1}-{self.step}) had a non-finite "
                f"loss or gradient (optim.max_nonfinite_steps={limit}). Nothing was saved for them; "
                f"resume from the last checkpoint in {self.run_dir / 'checkpoints'} with a lower "
                "optim.und_lr / optim.gen_lr or model.precision fp32, and check the data."
            )
        warnings.warn(f"step {self.step}: non-finite loss or gradient; step skipped", stacklevel=2)
        self._end_step(metrics, start)

    def _end_step(self, metrics: dict[str, float], start: float) -> None:
        if self.cfg.game.enabled:
            metrics["eps"] = self.perturber.eps
            if self.buffer is not None:
                metrics["buffer_size"] = len(self.buffer)
        metrics["nonfinite_steps"] = self.nonfinite_steps
        metrics["step_seconds"] = time.perf_counter() - start
        metrics = self.dist.mean_metrics(metrics, METRICS)  # several processes: the mean over ranks
        if self.logger is not None:  # rank 0 only
            self.logger.log(self.step, metrics)
        if self._progress is not None:
            self._progress.update(1)
            if self.step % self.cfg.logging.log_every == 0:
                shown = ("ce_clean", "ce_adv", "ce_hard", "eps", "buffer_size")
                self._progress.set_postfix({k: f"{metrics[k]:.3g}" for k in shown if k in metrics})
        every = self.cfg.logging.checkpoint_every
        if every and self.step % every == 0 and self.step < self.cfg.optim.steps:
            self.save_checkpoint()

    def _open_progress(self, last: int) -> None:
        if self.cfg.logging.progress and self._progress is None and self.dist.is_main:
            from tqdm.auto import tqdm

            name = "UniGame" if self.cfg.game.enabled else "SFT"
            self._progress = tqdm(
                total=self.cfg.optim.steps, initial=self.step, desc=name, dynamic_ncols=True
            )

    def _autocast(self) -> contextlib.AbstractContextManager:
        """bf16 autocast when asked; the perturber turns it off for itself, losses are cast to fp32."""
        if not self.bf16:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16)

    @contextlib.contextmanager
    def _lora_dropout(self, on: bool) -> Iterator[None]:
        dropouts = [m for name, m in self.peft_model.named_modules() if name.endswith("lora_dropout")]
        for m in dropouts:
            m.train(on)
        try:
            yield
        finally:
            for m in dropouts:
                m.train(not on)

    # ============================================================================ state and I/O
    def state_dict(self) -> tuple[dict[str, Tensor], dict[str, Any]]:
        """The whole progress record (except LoRA, saved by peft): tensors + JSON metadata."""
        tensors, rng_meta = capture_rng()
        tensors.update(self._rank_rng_states())
        tensors["generator.replay"] = self.replay_generator.get_state()
        understand_tensors, understand_meta = optimizer_state(self.opt_understand, "optim.understand")
        tensors.update({k: self.dist.full_tensor(v) for k, v in understand_tensors.items()})  # FSDP: gathered
        meta: dict[str, Any] = {
            "step": self.step,
            "nonfinite_steps": self.nonfinite_steps,
            "nonfinite_streak": self.nonfinite_streak,
            "data": self.batches.state_dict(),
            "rng": rng_meta,
            "optim": {"understand": understand_meta},
            "config": self.cfg.to_dict(),
            "world_size": self.dist.world_size,
        }
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
        return tensors, meta

    def save_checkpoint(self) -> Path:
        """Write the progress record atomically to `<run>/checkpoints/step-<step>` (rank 0 writes; every
        rank takes part, since the record holds each rank's random state, and waits for the write); a
        state holding NaN/Inf raises `NonFiniteStateError` and writes nothing."""
        tensors, meta = self.state_dict()
        lora = self._full_lora_state()
        path = checkpoint_dir(self.run_dir, self.step)
        if self.dist.is_main:
            path = save_checkpoint(
                self.run_dir,
                self.step,
                self.peft_model,
                tensors,
                meta,
                self.cfg.logging.keep_checkpoints,
                lora_state=lora,
            )
        self.dist.barrier()
        return path

    def _full_lora_state(self) -> dict[str, Tensor] | None:
        """FSDP: the whole LoRA weights, gathered to rank 0's CPU (every rank must call it; the others
        get an empty dict). None without FSDP, where peft reads them from the model itself."""
        if not any(is_sharded(p) for p in self.lora_parameters):
            return None
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        # ignore_frozen_params: only LoRA is gathered, not the 7B frozen weights.
        options = StateDictOptions(full_state_dict=True, cpu_offload=True, ignore_frozen_params=True)
        return get_model_state_dict(self.peft_model, options=options)

    def _rank_rng_states(self) -> dict[str, Tensor]:
        """Several processes: the random streams of ranks > 0 (dropout, official-mining sampling), gathered
        so that rank 0's checkpoint resumes every rank exactly. Empty in one process."""
        if self.dist.world_size == 1:
            return {}
        own = {"rng.torch": torch.get_rng_state()}
        if self.device.type == "cuda":
            own["rng.cuda"] = torch.cuda.get_rng_state(self.device)
        if self.cfg.game.enabled:
            own["generator.generation"] = self.generation_generator.get_state()
        states: dict[str, Tensor] = {}
        for name, state in own.items():
            gathered = self.dist.gather(state[None])  # (W, S) uint8, one row per rank
            states.update({f"rank{r}.{name}": gathered[r].cpu() for r in range(1, self.dist.world_size)})
        return states

    def _restore_rank_rng(self, tensors: dict[str, Tensor], saved_world_size: int) -> None:
        if self.dist.world_size != saved_world_size:
            warnings.warn(
                f"resuming a {saved_world_size}-process checkpoint with {self.dist.world_size} processes: the "
                "global batch is now data.batch_size x the new process count, and ranks > 0 draw new dropout "
                "masks, so the run continues but does not repeat the original one exactly.",
                stacklevel=3,
            )
        prefix = f"rank{self.dist.rank}."
        if self.dist.is_main or prefix + "rng.torch" not in tensors:
            return
        torch.set_rng_state(tensors[prefix + "rng.torch"])
        if prefix + "rng.cuda" in tensors and self.device.type == "cuda":
            torch.cuda.set_rng_state(tensors[prefix + "rng.cuda"], self.device)
        if prefix + "generator.generation" in tensors and self.cfg.game.enabled:
            self.generation_generator.set_state(tensors[prefix + "generator.generation"])

    def load_checkpoint(self, path: str | Path) -> int:
        """Restore everything `save_checkpoint` wrote; warn about config differences (this run's wins)."""
        from peft.utils import set_peft_model_state_dict
        from safetensors.torch import load_file

        ckpt = load_checkpoint(path)
        tensors, meta = ckpt.tensors, ckpt.meta
        differences = config_diff(meta["config"], self.cfg.to_dict())
        if differences:
            warnings.warn(
                f"checkpoint {ckpt.path} was written with a different config; this run's config wins "
                "(weights, optimiser and RNG states, buffer and data position come from the checkpoint):\n  "
                + "\n  ".join(differences),
                stacklevel=2,
            )
        saved_game = meta["config"]["game"]["enabled"]
        if saved_game != self.cfg.game.enabled:
            raise ValueError(
                f"checkpoint {ckpt.path} has game.enabled={saved_game} but this run has "
                f"{self.cfg.game.enabled}; a run cannot switch between SFT and UniGame on resume."
            )
        lora = load_file(str(ckpt.lora_path / "adapter_model.safetensors"), device=str(self.device))
        sharded = [p for p in self.lora_parameters if is_sharded(p)]
        if sharded:  # FSDP: every rank read the whole weights; keep this rank's shards (all laid out alike)
            lora = {k: self.dist.shard_like(v, sharded[0]) for k, v in lora.items()}
            tensors = self._shard_optimizer_state(tensors, "optim.understand", self.opt_understand)
        result = set_peft_model_state_dict(self.peft_model, lora)
        unexpected = getattr(result, "unexpected_keys", [])
        if unexpected:
            raise ValueError(f"checkpoint LoRA has weights this model lacks: {unexpected[:5]}")
        restore_optimizer(self.opt_understand, "optim.understand", tensors, meta["optim"]["understand"])
        self.replay_generator.set_state(tensors["generator.replay"])
        if self.cfg.game.enabled:
            prefix = "perturber."
            self.perturber.load_state_dict(
                {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}
            )
            restore_optimizer(self.opt_challenger, "optim.challenger", tensors, meta["optim"]["challenger"])
            self.generation_generator.set_state(tensors["generator.generation"])
            if self.buffer is not None and "buffer" in meta:
                self.buffer.load_state_dict(
                    {
                        "latents": tensors["buffer.latents"],
                        "hardness": tensors["buffer.hardness"],
                        "metadata": meta["buffer"],
                    }
                )
        self.batches.load_state_dict(meta["data"])
        if self.extra_batches is not None:
            self._restore_extra_stream(meta, ckpt.path)
        if self.cfg.game.enabled:  # older checkpoints have no label counts: the totals start here
            self.label_counts.load_state_dict(meta.get("label_validity", {}))
        self.step = int(meta["step"])
        self.nonfinite_steps = int(meta["nonfinite_steps"])
        self.nonfinite_streak = int(meta.get("nonfinite_streak", 0))  # absent in older checkpoints
        restore_rng(tensors, meta["rng"])  # last: nothing after this may draw random numbers
        self._restore_rank_rng(tensors, int(meta.get("world_size", 1)))  # ranks > 0: their own streams
        return self.step

    def _restore_extra_stream(self, meta: dict[str, Any], path: Path) -> None:
        if "data_extra" in meta:
            self.extra_batches.load_state_dict(meta["data_extra"])
            return
        warnings.warn(
            f"checkpoint {path} has no extra clean stream (written with data.extra_clean_items 0); "
            f"this run's data.extra_clean_items={self.cfg.data.extra_clean_items} stream starts at its beginning.",
            stacklevel=3,
        )

    def _shard_optimizer_state(
        self, tensors: dict[str, Tensor], prefix: str, optimizer: torch.optim.Optimizer
    ) -> dict[str, Tensor]:
        """FSDP: replace the saved whole optimiser moments of sharded parameters by this rank's shards."""
        params = [p for group in optimizer.param_groups for p in group["params"]]
        out = dict(tensors)
        for key, value in tensors.items():
            if key.startswith(prefix + "."):
                param = params[int(key[len(prefix) + 1 :].split(".", 1)[0])]
                if is_sharded(param) and value.shape == param.shape:  # moments, not the scalar step
                    out[key] = self.dist.shard_like(value, param)
        return out

    def _write_config(self) -> None:
        import yaml

        (self.run_dir / "config.yaml").write_text(yaml.safe_dump(self.cfg.to_dict(), sort_keys=False))

    def write_label_validity(self) -> Path:
        """Write `<run>/label_validity.json`: the run's count-weighted label-validity shares (null when
        nothing was measured) and the counts behind them, over every step so far (resumed runs included)."""
        path = self.run_dir / "label_validity.json"
        partial = path.with_name(path.name + ".partial")
        partial.write_text(json.dumps({"steps": self.step, **self.label_counts.summary()}, indent=2) + "\n")
        partial.replace(path)  # atomic: a reader never sees half a file
        return path

    def write_report(self) -> list[Path]:
        """PNG plots of the run's curves and a panel of the hardest samples (if `logging.plots`)."""
        if not self.cfg.logging.plots or not self.dist.is_main:
            return []
        self.logger.close()  # flush the CSV before reading it back
        written = plot_training_curves(self.logger.csv_path, self.run_dir / "plots")
        panel = self._hard_sample_panel()
        return written + ([panel] if panel is not None else [])

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
                decode = getattr(self.adversary, "decode", None)  # the decoder adversary's own x̃ rule
                adversarial = (
                    decode(self.adapter, latents, clean) if decode else self.adapter.decode_latents(latents)
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

    def cleanup(self) -> None:
        """Close the logs and the progress bar (safe to call twice)."""
        if self.logger is not None:
            self.logger.close()
        if self._progress is not None:
            self._progress.close()
            self._progress = None

    # ======================================================================== for tests/tools
    def trainable_parameters(self) -> list[nn.Parameter]:
        """LoRA's and the perturber's trainable parameters (what gradient averaging and broadcast cover)."""
        return self.lora_parameters + (self.challenger_parameters if self.cfg.game.enabled else [])

    def trainable_state(self) -> dict[str, Tensor]:
        """Copies of every trainable tensor (LoRA and perturber) keyed by name."""
        state = {  # FSDP: gathered whole (a collective: every rank must call it)
            f"lora.{n}": self.dist.full_tensor(p.detach()).clone()
            for n, p in self.peft_model.named_parameters()
            if p.requires_grad
        }
        if self.cfg.game.enabled:
            state.update(
                {f"perturber.{k}": v.detach().clone() for k, v in self.perturber.state_dict().items()}
            )
        return state


def _store_frozen_in_bf16(model: nn.Module, keep: Sequence[nn.Module] = ()) -> None:
    """Store every frozen weight in bf16, and the floating buffers of modules whose weights are all
    frozen with them: norm kernels reject bf16 weights with fp32 running statistics (BatchNorm in
    Emu3's VQ). Buffers of weightless modules (rotary inverse frequencies) stay fp32, and so does
    everything inside `keep` (the adapter's `fp32_modules()`: the decoder that decodes z + δ)."""
    kept = {id(m) for root in keep for m in root.modules()}
    for module in model.modules():
        if id(module) in kept:
            continue
        own = list(module.parameters(recurse=False))
        frozen = [p for p in own if not p.requires_grad]
        for p in frozen:
            p.data = p.data.to(torch.bfloat16)
        if own and len(frozen) == len(own):
            for name, buffer in module.named_buffers(recurse=False):
                if buffer.is_floating_point():
                    setattr(module, name, buffer.to(torch.bfloat16))


def _enable_activation_checkpointing(model: nn.Module) -> None:
    """Recompute each transformer layer's activations in the backward instead of storing them
    (transformers' activation checkpointing, non-reentrant, on every layer that supports it: the
    language model's, and the vision encoder's that the challenger's gradient also crosses)."""
    enable = getattr(model, "activation_checkpointing_enable", None)
    if enable is not None:
        enable(activation_checkpointing_kwargs={"use_reentrant": False})
    elif hasattr(model, "gradient_checkpointing_enable"):  # transformers < 5.x spelling
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    else:
        raise ValueError(
            f"model.gradient_checkpointing=true needs a transformers model; {type(model).__name__} has no "
            "activation_checkpointing_enable. Set model.gradient_checkpointing false."
        )
    # Workaround: transformers checkpoints a layer only while `layer.training` is set, and the frozen
    # model runs in eval mode (no dropout). Setting the flag on the checkpointed layers alone (not their
    # children, whose dropouts read their own flags) turns checkpointing on and leaves dropout off.
    # Remove when transformers decouples checkpointing from training mode.
    from transformers.modeling_layers import GradientCheckpointingLayer

    for module in model.modules():
        if isinstance(module, GradientCheckpointingLayer) and module.gradient_checkpointing:
            module.training = True


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
