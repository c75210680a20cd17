"""`AsgTrainer`: Ask, Solve, Generate (mbzuai-oryx/Ask-Solve-Generate) on the shared Trainer.

Three LoRA adapters on one frozen model, each a role: the Solver (peft's `default` adapter, the one
every method trains), the Proposer (`proposer`) and the Generator (`generator`). They learn from
images alone; no question, answer or caption of the data is read. Cycles of
`asg.understanding_steps` understanding steps and `asg.generation_steps` generation steps:

* understanding: the Proposer asks K questions per image; one greedy Solver call per question
  measures its difficulty (Solver Token Entropy, ranked in a rolling window) and the best non-easy
  question is kept; the Solver answers it N times; the majority vote and the answer entropy
  reward the Solver (REINFORCE, EMA baseline, adaptive KL to the frozen model) and, with the
  difficulty, the Proposer (clipped surrogate against the frozen model, per-bucket baseline);
* generation: the Proposer describes a real image (the text-to-image prompt) and asks 2-3
  questions about it, answering them itself; the Generator makes L images from the prompt; the
  Solver's agreement with those answers on each image is the image's reward, and the best
  reward weights the generation NLL of the real image's codes given the prompt.

`train()` is the algorithm; `understanding_step` and `generation_step` read top to bottom.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from unigame.data.records import VQARecord
from unigame.data.shapes import Scene, answer_question, label_holds, question_kind
from unigame.eval.metrics import (
    answer_entropy,
    majority_vote,
    normalize_vqa_answer,
    solver_sampling_schedule,
    solver_token_entropy,
)
from unigame.methods.asg.difficulty import DifficultyWindow, bucket
from unigame.methods.asg.rewards import (
    adapt_kl_beta,
    clipped_surrogate,
    ema_baselines,
    generation_reward,
    informativeness,
    proposer_base_reward,
    proposer_reward,
    solver_rewards,
    solver_updates,
    update_entropy_mu,
)
from unigame.train.batches import Batch, RecordBatches
from unigame.train.checkpoint import optimizer_state, restore_optimizer
from unigame.train.protocol import SELF_PLAY_METHODS
from unigame.train.signals import StopRequest
from unigame.train.trainer import Trainer

__all__ = ["METRICS", "ROLES", "AsgTrainer"]

# The roles' peft adapter names; the Solver is the adapter the base Trainer attaches.
SOLVER, PROPOSER, GENERATOR = "default", "proposer", "generator"
ROLES: tuple[str, ...] = (SOLVER, PROPOSER, GENERATOR)

# Per-step metrics, in CSV column order. Understanding steps fill the first group, generation steps
# the second; `phase` says which (0 understanding, 1 generation).
METRICS: tuple[str, ...] = (
    "phase",
    # understanding: the candidates' STE and buckets, then the kept questions
    "ste_mean",
    "ste_p10",
    "ste_p50",
    "ste_p90",
    "bucket_easy",
    "bucket_medium",
    "bucket_hard",
    "questions_rejected",
    "images_without_question",
    "kept_easy",
    "difficulty",
    "majority_share",
    "answer_entropy",
    "informativeness",
    "solver_reward",
    "solver_updates",
    "solver_loss",
    "kl",
    "kl_beta",
    "proposer_reward",
    "proposer_loss",
    "judge_answerable",
    "judge_majority_correct",
    # generation
    "specs_rejected",
    "gen_reward_best",
    "gen_reward_mean",
    "gen_contradictions",
    "gen_expected_true",
    "gen_best_judge_holds",
    "gen_nll",
    "gen_loss",
    "nonfinite_steps",
    "step_seconds",
)


class AsgTrainer(Trainer):
    """`method: asg`: the Proposer, the Solver and the Generator self-evolve from unlabeled images."""

    METRICS = METRICS
    progress_name = "ASG"

    # =================================================================================== setup
    def build_method(self, probe: Tensor, model_path: Path | None) -> None:
        a = self.cfg.asg
        missing = [m for m in SELF_PLAY_METHODS if not callable(getattr(self.adapter, m, None))]
        if missing:
            raise TypeError(
                f"method='asg' samples answers, measures token entropies and trains three roles: "
                f"{type(self.adapter).__name__} lacks {', '.join(missing)} (unigame.train.protocol)."
            )
        if self.dist.world_size > 1:
            raise ValueError(
                f"method='asg' runs in one process (got {self.dist.world_size}): its windows and baselines "
                "are updated question by question, in order. Launch it without accelerate/torchrun."
            )
        # Images only: one record per distinct image (local VQAv2 data asks several questions per
        # image), and no record's question or answer is ever read.
        unique: dict[object, VQARecord] = {}
        for record in self.records:
            unique.setdefault(record.image_path or id(record.image), record)
        self.image_records = list(unique.values())
        self.batches = RecordBatches(
            self.image_records,
            self.cfg.data.batch_size,
            self.cfg.data.split_seed,
            self.cfg.data.image_size,
            self.device,
        )
        self._image_index = {r.id: i for i, r in enumerate(self.image_records)}
        self.shapes = self.cfg.data.source == "shapes"  # the exact judge can read these images

        # The Proposer and the Generator: LoRA like the Solver's (same modules, rank, alpha, dropout),
        # initialised from torch's seeded global stream after it, so every run starts alike.
        config = self.peft_model.peft_config[SOLVER]
        for role in (PROPOSER, GENERATOR):
            self.peft_model.add_adapter(role, config)
        self.peft_model.set_adapter(SOLVER)
        self.role_parameters = {
            role: [p for n, p in self.peft_model.named_parameters() if "lora_" in n and f".{role}." in n]
            for role in ROLES
        }
        if not all(self.role_parameters.values()):
            raise RuntimeError(
                f"peft did not create LoRA weights for every role: {list(self.role_parameters)}"
            )
        wd = self.cfg.optim.weight_decay
        self.opt_proposer = torch.optim.AdamW(
            self.role_parameters[PROPOSER], lr=a.proposer_lr, weight_decay=wd
        )
        self.opt_generator = torch.optim.AdamW(
            self.role_parameters[GENERATOR], lr=a.generator_lr, weight_decay=wd
        )

        # Sampling streams (checkpointed), one per role, so a change in one never shifts another.
        seed = self.cfg.seed
        self.proposer_generator = torch.Generator(device=self.device).manual_seed(seed + 3)
        self.solver_generator = torch.Generator(device=self.device).manual_seed(seed + 4)
        self.generation_generator = torch.Generator(device=self.device).manual_seed(seed + 5)
        self.schedule = solver_sampling_schedule(
            a.solver_samples, a.solver_temperature_min, a.solver_temperature_max, a.solver_top_p_min,
            a.solver_top_p_max,
        )  # fmt: skip

        # Running statistics (checkpointed).
        self.window = DifficultyWindow(a.window, a.min_window, a.sigmoid_alpha, a.sigmoid_beta)
        self.solver_baseline = 0.0
        self.proposer_baselines = {"easy": 0.0, "medium": 0.0, "hard": 0.0}
        self.kl_beta = a.kl_init
        self.entropy_mu = a.entropy_mu_init
        self.totals = {
            "proposed": 0,
            "rejected": 0,
            "kept": 0,
            "kept_easy": 0,
            "solver_updates": 0,
            "judged": 0,
            "answerable": 0,
            "majority_correct": 0,
            "specs": 0,
            "specs_rejected": 0,
        }
        self._questions_file: Any = None

    def method_optimizers(self) -> list[torch.optim.Optimizer]:
        return [self.opt_proposer, self.opt_generator]

    def method_parameters(self) -> list[nn.Parameter]:
        return self.role_parameters[PROPOSER] + self.role_parameters[GENERATOR]

    def _use(self, role: str) -> None:
        """Make `role`'s adapter the active one (peft also makes only its weights require grad)."""
        self.peft_model.set_adapter(role)

    def parses(self, question: str) -> bool:
        """Whether a proposed question is usable: a ShapesWorld template with known words, or (other
        data) a question of two or more words ending in '?'."""
        if self.shapes:
            return question_kind(question) is not None
        return question.strip().endswith("?") and len(question.split()) >= 2

    # =================================================================================== train
    def phase(self, step: int) -> str:
        """`understanding` or `generation`: the schedule's cycles, starting with understanding."""
        a = self.cfg.asg
        return (
            "understanding"
            if step % (a.understanding_steps + a.generation_steps) < a.understanding_steps
            else "generation"
        )

    def train(self, until_step: int | None = None, stop: StopRequest | None = None) -> None:
        """Steps until `optim.steps` (or `until_step`), or until `stop`: each an understanding or a
        generation step on the next batch of images, as the schedule says."""
        last = self.cfg.optim.steps if until_step is None else min(until_step, self.cfg.optim.steps)
        self._open_progress(last)
        self._open_questions_log()
        while self.step < last and not stop:
            start = time.perf_counter()
            metrics: dict[str, float] = {}
            batch = next(self.batches)
            if self.phase(self.step) == "understanding":
                metrics["phase"] = 0.0
                ok = self.understanding_step(batch, metrics)
            else:
                metrics["phase"] = 1.0
                ok = self.generation_step(batch, metrics)
            if not ok:
                self._skip_step(metrics, start)
                continue
            self.step += 1
            self.nonfinite_streak = 0
            self._end_step(metrics, start)
        if self._questions_file is not None:
            self._questions_file.flush()
        if self.dist.is_main:
            self.write_summary()

    # ====================================================================== understanding step
    def understanding_step(self, batch: Batch, metrics: dict[str, float]) -> bool:
        """Ask, spot-check, keep, solve, reward, update the Solver and the Proposer; False when a loss
        or gradient is not finite (nothing is updated then, running statistics included)."""
        a = self.cfg.asg
        pixels = batch.pixels  # (B, 3, H, W)
        n_images, k = pixels.shape[0], a.candidates
        with torch.no_grad(), self._autocast(), self._lora_dropout(False):
            # 1. Ask: the Proposer writes K candidate questions per image (rows image-major).
            self._use(PROPOSER)
            repeated = pixels.repeat_interleave(k, 0)  # (B*K, 3, H, W)
            questions = self.adapter.sample_answers(
                repeated, [a.ask_prompt] * len(repeated), a.proposer_temperature, a.proposer_top_p,
                self.proposer_generator, a.question_tokens,
            )  # fmt: skip
            valid = [i for i, q in enumerate(questions) if self.parses(q)]
            # 2. Spot-check every valid candidate: one greedy Solver call gives its STE; the
            #    ablation ranks by the entropy of a few sampled answers instead.
            self._use(SOLVER)
            spot, ste, signal = self._spot_check(repeated, questions, valid)
        # 3. Bucket by the window as it stands, keep per image the valid non-easy candidate with the
        #    largest signal (an easy one when that is all there is).
        cand_difficulty = {i: self.window.difficulty(signal[i]) for i in valid}
        cand_bucket = {i: bucket(d, a.easy_quantile, a.hard_quantile) for i, d in cand_difficulty.items()}
        kept: list[int] = []
        for b in range(n_images):
            mine = [i for i in valid if i // k == b]
            if mine:
                pool = [i for i in mine if cand_bucket[i] != "easy"] or mine
                kept.append(max(pool, key=lambda i: signal[i]))  # max keeps the first of equal signals
        rows = [i // k for i in kept]  # the image of each kept question
        kept_questions = [questions[i] for i in kept]
        # 4. Solve: the Solver's N answers (the spot-check's answers first, then its schedule's rest).
        with torch.no_grad(), self._autocast(), self._lora_dropout(False):
            answers = self._solve(pixels[rows], kept_questions, [spot[i] for i in kept])
        # 5. Rewards, question by question, on copies of the running statistics (kept if the step is).
        window = DifficultyWindow(a.window, a.min_window, a.sigmoid_alpha, a.sigmoid_beta)
        window.load_state_dict(self.window.state_dict())
        mu = self.entropy_mu
        per_question = []
        for j, i in enumerate(kept):
            norm = [normalize_vqa_answer(x) for x in answers[j]]
            majority, share, counts = majority_vote(norm)
            entropy = answer_entropy(counts)
            shares = sorted((c / len(norm) for c in counts.values()), reverse=True) + [0.0]
            s = informativeness(
                entropy, shares[0] - shares[1], a.entropy_band_min, a.entropy_band_max, a.margin_max
            )
            easy = cand_bucket[i] == "easy"
            window.push(signal[i])
            difficulty = window.difficulty(signal[i])
            mu = update_entropy_mu(
                mu, entropy, a.entropy_mu_momentum, a.entropy_mu_min, a.entropy_mu_max, a.entropy_mu_floor
            )
            base = proposer_base_reward(s, entropy, mu, a.band_weight, a.entropy_sigma)
            capped = easy or share >= a.no_update_share
            per_question.append(
                {
                    "norm": norm,
                    "majority": majority,
                    "share": share,
                    "entropy": entropy,
                    "s": s,
                    "easy": easy,
                    "bucket": cand_bucket[i],
                    "difficulty": difficulty,
                    "update": solver_updates(share, a.no_update_share),
                    "rewards": solver_rewards(
                        norm, majority, share, s, easy, a.minority_weight, a.unsolvable_share
                    ),
                    "proposer_reward": proposer_reward(
                        difficulty, base, capped, a.difficulty_weight, a.base_weight, a.easy_reward_cap
                    ),
                }
            )
        # 6. The Solver: REINFORCE over every answer of the questions it learns from, loss =
        #    mean_j (A_j·CE_j + β·KL_j), A_j = r_j − b_j with the baseline moving answer by answer;
        #    β adapts to the measured KL once per update, as after each of the reference's updates.
        learn = [j for j, q in enumerate(per_question) if q["update"]]
        flat = [(j, t) for j in learn for t in range(a.solver_samples)]
        rewards = [per_question[j]["rewards"][t] for j, t in flat]
        baselines, new_baseline = ema_baselines(self.solver_baseline, rewards, a.baseline_momentum)
        kl_beta, solver_loss, kl_values = self.kl_beta, None, []
        if flat:
            image_rows = [rows[j] for j, _ in flat]
            qs = [kept_questions[j] for j, _ in flat]
            texts = [answers[j][t] for j, t in flat]
            mean_log_p, _, kl = self._policy_terms(SOLVER, pixels[image_rows], qs, texts)  # (n,) per answer
            ce = -mean_log_p
            kl_values = kl.detach().tolist()
            advantage = torch.tensor(rewards, device=ce.device) - torch.tensor(baselines, device=ce.device)
            solver_loss = (advantage * ce + self.kl_beta * kl).mean()
            kl_beta = adapt_kl_beta(
                self.kl_beta, float(np.mean(kl_values)), a.kl_target, a.kl_rate, a.kl_min, a.kl_max
            )
            if not self._finite(solver_loss):
                return False
            self.opt_understand.zero_grad(set_to_none=True)
            solver_loss.backward()
        # 7. The Proposer: clipped surrogate of its kept questions against the frozen model, with a
        #    per-bucket baseline.
        proposer_loss = None
        bucket_baselines = dict(self.proposer_baselines)
        if kept:
            advantages = []
            for q in per_question:
                advantages.append(q["proposer_reward"] - bucket_baselines[q["bucket"]])
                m = a.baseline_momentum
                bucket_baselines[q["bucket"]] = (
                    m * bucket_baselines[q["bucket"]] + (1 - m) * q["proposer_reward"]
                )
            mine, ref, _ = self._policy_terms(
                PROPOSER, pixels[rows], [a.ask_prompt] * len(kept), kept_questions
            )
            log_ratio = mine - ref
            proposer_loss = clipped_surrogate(
                log_ratio, torch.tensor(advantages, device=log_ratio.device), a.clip_ratio
            ).mean()
            if not self._finite(proposer_loss):
                return False
            self.opt_proposer.zero_grad(set_to_none=True)
            proposer_loss.backward()
        self._use(SOLVER)
        clip = self.cfg.optim.grad_clip
        if not (
            self._clip_is_finite(self.role_parameters[SOLVER], clip)
            and self._clip_is_finite(self.role_parameters[PROPOSER], clip)
        ):
            return False
        if solver_loss is not None:
            self.opt_understand.step()
        if proposer_loss is not None:
            self.opt_proposer.step()
        for opt in (self.opt_understand, self.opt_proposer):
            opt.zero_grad(set_to_none=True)

        # 8. The step counts: keep the running statistics, and log.
        self.window, self.entropy_mu, self.kl_beta = window, mu, kl_beta
        self.solver_baseline, self.proposer_baselines = new_baseline, bucket_baselines
        truths = self._truths(batch, rows, kept_questions)
        self._log_understanding(
            metrics, batch, questions, valid, ste, cand_bucket, kept, rows, answers, per_question, truths,
            solver_loss, proposer_loss, kl_values,
        )  # fmt: skip
        return True

    def _spot_check(
        self, pixels: Tensor, questions: list[str], valid: list[int]
    ) -> tuple[dict[int, list[str]], dict[int, float], dict[int, float]]:
        """Per valid candidate: its spot-check answers (raw, schedule order), its STE, and the
        difficulty signal (STE, or with `answer_entropy` the entropy of the spot-check answers)."""
        a = self.cfg.asg
        if not valid:
            return {}, {}, {}
        qs = [questions[i] for i in valid]
        # Decode at least k tokens, so that an answer that long has all its first k entropies.
        greedy, entropies = self.adapter.answer_entropies(
            pixels[valid], qs, max(a.answer_tokens, a.ste_tokens)
        )
        spot = {i: [greedy[j]] for j, i in enumerate(valid)}
        ste = {i: solver_token_entropy(entropies[j].tolist(), a.ste_tokens) for j, i in enumerate(valid)}
        if a.difficulty_signal == "ste":
            return spot, ste, dict(ste)
        sampled = self._sample_schedule(pixels[valid], qs, 1, a.spot_check_samples)
        signal = {}
        for j, i in enumerate(valid):
            spot[i] += sampled[j]
            signal[i] = answer_entropy(majority_vote([normalize_vqa_answer(x) for x in spot[i]])[2])
        return spot, ste, signal

    def _sample_schedule(
        self, pixels: Tensor, questions: list[str], first: int, stop: int
    ) -> list[list[str]]:
        """Answers at the Solver schedule's entries first..stop-1, per question (one batched call)."""
        a = self.cfg.asg
        entries = self.schedule[first:stop]
        n = len(questions)
        if not entries or n == 0:
            return [[] for _ in range(n)]
        temperature = [t for t, _ in entries for _ in range(n)]
        top_p = [p for _, p in entries for _ in range(n)]
        flat = self.adapter.sample_answers(
            pixels.repeat(len(entries), 1, 1, 1), questions * len(entries), temperature, top_p,
            self.solver_generator, a.answer_tokens,
        )  # fmt: skip
        return [[flat[e * n + j] for e in range(len(entries))] for j in range(n)]

    def _solve(self, pixels: Tensor, questions: list[str], spot: list[list[str]]) -> list[list[str]]:
        """The Solver's N answers per question: the spot-check's answers, then the schedule's rest."""
        done = len(spot[0]) if spot else 0
        rest = self._sample_schedule(pixels, questions, done, self.cfg.asg.solver_samples)
        return [s + r for s, r in zip(spot, rest)]

    def _log_probs(
        self, pixels: Tensor, prompts: list[str], texts: list[str]
    ) -> tuple[Tensor, Tensor, Tensor]:
        """The active adapter's log-softmax (B, T, V) at each token of each text (EOS included), the
        text tokens' own log-probabilities (B, T) (0 past the end) and the mask of real tokens (B, T)."""
        with self._autocast():
            logits, targets = self.adapter.answer_token_logits(pixels, prompts, texts)
        log_p = torch.log_softmax(logits.float(), dim=-1)
        mask = targets != -100
        picked = log_p.gather(-1, targets.clamp(min=0)[..., None]).squeeze(-1) * mask
        return log_p, picked, mask

    def _policy_terms(
        self, role: str, pixels: Tensor, prompts: list[str], texts: list[str]
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Per text (B,): the mean token log-probability under the role's adapter (with grad), the same
        under the frozen model π_ref (every adapter off), and KL(π ‖ π_ref) = the mean over the
        text's tokens of Σ_v π(v) (log π(v) − log π_ref(v))."""
        self._use(role)
        log_p, picked, mask = self._log_probs(pixels, prompts, texts)
        with torch.no_grad(), self.peft_model.disable_adapter():
            ref_log_p, ref_picked, _ = self._log_probs(pixels, prompts, texts)
        tokens = mask.sum(-1).clamp(min=1)
        kl = ((log_p.exp() * (log_p - ref_log_p)).sum(-1) * mask).sum(-1) / tokens
        return picked.sum(-1) / tokens, ref_picked.sum(-1) / tokens, kl

    def _scene(self, record_id: str) -> Scene | None:
        """The ShapesWorld scene of a training image (the exact truth), None for other data."""
        meta = self.image_records[self._image_index[record_id]].meta
        return Scene.from_dict(meta["scene"]) if self.shapes and "scene" in meta else None

    def _truths(self, batch: Batch, rows: list[int], questions: list[str]) -> list[str | None]:
        """The exact judge's answer to each kept question on its image (None: unanswerable there, or
        not ShapesWorld): read only to report whether self-consistent answers are right."""
        out: list[str | None] = []
        for row, question in zip(rows, questions):
            scene = self._scene(batch.ids[row])
            out.append(None if scene is None else answer_question(question, scene.objects))
        return out

    def _log_understanding(
        self,
        metrics: dict[str, float],
        batch: Batch,
        questions: list[str],
        valid: list[int],
        ste: dict[int, float],
        cand_bucket: dict[int, str],
        kept: list[int],
        rows: list[int],
        answers: list[list[str]],
        per_question: list[dict[str, Any]],
        truths: list[str | None],
        solver_loss: Tensor | None,
        proposer_loss: Tensor | None,
        kl_values: list[float],
    ) -> None:
        nan = float("nan")
        n_images = len(batch.ids)
        values = np.array([ste[i] for i in valid]) if valid else np.array([nan])
        shares = {
            b: sum(cand_bucket[i] == b for i in valid) / len(valid) if valid else nan
            for b in ("easy", "medium", "hard")
        }

        def mean(key: str) -> float:
            return float(np.mean([q[key] for q in per_question])) if per_question else nan

        learned = [q for q in per_question if q["update"]]
        judged = [(q, t) for q, t in zip(per_question, truths) if t is not None]
        shapes_truth = self.shapes and bool(per_question)
        metrics.update(
            ste_mean=float(np.mean(values)),
            ste_p10=float(np.percentile(values, 10)),
            ste_p50=float(np.percentile(values, 50)),
            ste_p90=float(np.percentile(values, 90)),
            bucket_easy=shares["easy"],
            bucket_medium=shares["medium"],
            bucket_hard=shares["hard"],
            questions_rejected=float(len(questions) - len(valid)),
            images_without_question=float(n_images - len(kept)),
            kept_easy=mean("easy"),
            difficulty=mean("difficulty"),
            majority_share=mean("share"),
            answer_entropy=mean("entropy"),
            informativeness=mean("s"),
            solver_reward=float(np.mean([r for q in learned for r in q["rewards"]])) if learned else nan,
            solver_updates=float(len(learned)),
            solver_loss=float(solver_loss.detach()) if solver_loss is not None else nan,
            kl=float(np.mean(kl_values)) if kl_values else nan,
            kl_beta=self.kl_beta,
            proposer_reward=mean("proposer_reward"),
            proposer_loss=float(proposer_loss.detach()) if proposer_loss is not None else nan,
            judge_answerable=len(judged) / len(per_question) if shapes_truth else nan,
            judge_majority_correct=(
                float(np.mean([q["majority"] == normalize_vqa_answer(t) for q, t in judged]))
                if judged
                else nan
            ),
        )
        t = self.totals
        t["proposed"] += len(questions)
        t["rejected"] += len(questions) - len(valid)
        t["kept"] += len(kept)
        t["kept_easy"] += sum(q["easy"] for q in per_question)
        t["solver_updates"] += len(learned)
        if self.shapes:
            t["judged"] += len(per_question)
            t["answerable"] += len(judged)
            t["majority_correct"] += sum(q["majority"] == normalize_vqa_answer(tr) for q, tr in judged)
        if self._questions_file is not None:
            for j, i in enumerate(kept):
                q = per_question[j]
                row = {
                    "step": self.step + 1,
                    "id": batch.ids[rows[j]],
                    "question": questions[i],
                    "bucket": q["bucket"],
                    "ste": ste[i],
                    "difficulty": q["difficulty"],
                    "answers": answers[j],
                    "majority": q["majority"],
                    "share": q["share"],
                    "answer_entropy": q["entropy"],
                    "judged": self.shapes,
                    "truth": truths[j],
                    "majority_correct": None
                    if truths[j] is None
                    else q["majority"] == normalize_vqa_answer(truths[j]),
                    "solver_update": q["update"],
                    "proposer_reward": q["proposer_reward"],
                }
                self._questions_file.write(json.dumps(row) + "\n")

    # ======================================================================== generation step
    def generation_step(self, batch: Batch, metrics: dict[str, float]) -> bool:
        """Spec, generate, verify, then the Generator's reward-weighted NLL of the real images; False
        when the loss or its gradient is not finite."""
        a = self.cfg.asg
        pixels = batch.pixels  # (B, 3, H, W)
        n_images, n_qa, n_gen = pixels.shape[0], a.qa_pairs, a.generations
        with torch.no_grad(), self._autocast(), self._lora_dropout(False):
            # 1. The Proposer reads each real image: a text-to-image prompt (its greedy description)
            #    and QA pairs (questions it samples, answered by itself, greedy).
            self._use(PROPOSER)
            prompts = self.adapter.caption(pixels, max_new_tokens=a.prompt_tokens)
            repeated = pixels.repeat_interleave(n_qa, 0)  # (B*Q, 3, H, W)
            asked = self.adapter.sample_answers(
                repeated, [a.ask_prompt] * len(repeated), a.proposer_temperature, a.proposer_top_p,
                self.proposer_generator, a.question_tokens,
            )  # fmt: skip
            expected = self.adapter.answer(repeated, asked, max_new_tokens=a.answer_tokens)
            specs: dict[int, list[tuple[str, str]]] = {}
            for b in range(n_images):
                pairs: list[tuple[str, str]] = []
                for r in range(b * n_qa, (b + 1) * n_qa):
                    if self.parses(asked[r]) and asked[r] not in {q for q, _ in pairs}:
                        pairs.append((asked[r], normalize_vqa_answer(expected[r])))
                if len(pairs) >= a.min_qa_pairs:
                    specs[b] = pairs
            used = sorted(specs)
            metrics["specs_rejected"] = float(n_images - len(used))
            self.totals["specs"] += len(used)
            self.totals["specs_rejected"] += n_images - len(used)
            if not used:  # nothing to generate from: no update this step
                return True
            # 2. The Generator makes L images per prompt (rows prompt-major).
            self._use(GENERATOR)
            codes = self.adapter.generate_codes(
                [prompts[b] for b in used for _ in range(n_gen)],
                guidance=a.generation_guidance,
                temperature=a.generation_temperature,
                generator=self.generation_generator,
            )  # (U*L, N)
            images = self.adapter.decode_codes(codes).float()  # (U*L, 3, H', W')
            # 3. The Solver answers each QA pair on each generated image a few times.
            self._use(SOLVER)
            image_rows, qs, owners = [], [], []
            for u, b in enumerate(used):
                for g in range(n_gen):
                    for p, (question, _) in enumerate(specs[b]):
                        image_rows.append(u * n_gen + g)
                        qs.append(question)
                        owners.append((u, g, p))
            verify = images[image_rows].repeat_interleave(a.verify_samples, 0)  # (R*S, 3, H', W')
            replies = self.adapter.sample_answers(
                verify, [q for q in qs for _ in range(a.verify_samples)], a.verify_temperature, 1.0,
                self.solver_generator, a.answer_tokens,
            )  # fmt: skip
        votes: dict[tuple[int, int], list[tuple[str, float]]] = {}
        for r, (u, g, _p) in enumerate(owners):
            norm = [
                normalize_vqa_answer(x) for x in replies[r * a.verify_samples : (r + 1) * a.verify_samples]
            ]
            majority, share, _ = majority_vote(norm)
            votes.setdefault((u, g), []).append((majority, share))
        rewards = torch.zeros(len(used), n_gen)
        contradictions = []
        for (u, g), pairs in votes.items():
            reward, contra = generation_reward(
                [e for _, e in specs[used[u]]], [m for m, _ in pairs], [s for _, s in pairs],
                a.match_weight, a.share_weight, a.contradiction_weight,
            )  # fmt: skip
            rewards[u, g] = reward
            contradictions.append(contra)
        best_reward, best = rewards.max(dim=1)  # (U,) the best image per prompt (first of equals)
        # 4. The Generator learns the real image's codes given the prompt, weighted by the best reward.
        self._use(GENERATOR)
        with self._autocast():
            nll = self.adapter.generation_loss(pixels[used], [prompts[b] for b in used]).float()  # (U,)
        weight = 1 + a.reward_loss_weight * best_reward.to(nll.device)
        loss = (nll * weight).mean()
        if not self._finite(loss):
            return False
        self.opt_generator.zero_grad(set_to_none=True)
        loss.backward()
        self._use(SOLVER)
        if not self._clip_is_finite(self.role_parameters[GENERATOR], self.cfg.optim.grad_clip):
            return False
        self.opt_generator.step()
        self.opt_generator.zero_grad(set_to_none=True)
        metrics.update(
            gen_reward_best=float(best_reward.mean()),
            gen_reward_mean=float(rewards.mean()),
            gen_contradictions=float(np.mean(contradictions)),
            gen_nll=float(nll.detach().mean()),
            gen_loss=float(loss.detach()),
        )
        if self.shapes:
            self._judge_specs(metrics, batch, used, specs, images[best + torch.arange(len(used)) * n_gen])
        return True

    def _judge_specs(
        self, metrics: dict[str, float], batch: Batch, used: list[int], specs: dict[int, list[tuple[str, str]]],
        best_images: Tensor,
    ) -> None:  # fmt: skip
        """ShapesWorld only: how often the Proposer's expected answers are right on the real image,
        and how often they hold on the best generated image, by the exact judge."""
        from unigame.eval.common import pixels_to_images

        expected_true, holds = [], []
        arrays = pixels_to_images(best_images)  # (U, H, W, 3) uint8
        for u, b in enumerate(used):
            scene = self._scene(batch.ids[b])
            for question, answer in specs[b]:
                truth = answer_question(question, scene.objects) if scene is not None else None
                expected_true.append(truth is not None and normalize_vqa_answer(truth) == answer)
                holds.append(label_holds(arrays[u], question, answer, self.cfg.data.shapes))
        metrics["gen_expected_true"] = float(np.mean(expected_true))
        metrics["gen_best_judge_holds"] = float(np.mean(holds))

    # ============================================================================ state and I/O
    def method_state(self, tensors: dict[str, Tensor], meta: dict[str, Any]) -> None:
        for name, opt in (("proposer", self.opt_proposer), ("generator", self.opt_generator)):
            opt_tensors, opt_meta = optimizer_state(opt, f"optim.{name}")
            tensors.update(opt_tensors)
            meta.setdefault("optim", {})[name] = opt_meta
        tensors["generator.proposer"] = self.proposer_generator.get_state()
        tensors["generator.solver"] = self.solver_generator.get_state()
        tensors["generator.generation"] = self.generation_generator.get_state()
        meta["asg"] = {
            "window": self.window.state_dict(),
            "solver_baseline": self.solver_baseline,
            "proposer_baselines": dict(self.proposer_baselines),
            "kl_beta": self.kl_beta,
            "entropy_mu": self.entropy_mu,
            "totals": dict(self.totals),
        }

    def load_method_state(self, tensors: dict[str, Tensor], meta: dict[str, Any], path: Path) -> None:
        from peft.utils import set_peft_model_state_dict
        from safetensors.torch import load_file

        # The Solver's LoRA was restored by the Trainer; peft saved the other roles in subfolders.
        for role in (PROPOSER, GENERATOR):
            weights = load_file(
                str(path / "lora" / role / "adapter_model.safetensors"), device=str(self.device)
            )
            result = set_peft_model_state_dict(self.peft_model, weights, adapter_name=role)
            if getattr(result, "unexpected_keys", []):
                raise ValueError(f"checkpoint {path}: the {role} LoRA has weights this model lacks")
        self.peft_model.set_adapter(SOLVER)
        restore_optimizer(self.opt_proposer, "optim.proposer", tensors, meta["optim"]["proposer"])
        restore_optimizer(self.opt_generator, "optim.generator", tensors, meta["optim"]["generator"])
        self.proposer_generator.set_state(tensors["generator.proposer"])
        self.solver_generator.set_state(tensors["generator.solver"])
        self.generation_generator.set_state(tensors["generator.generation"])
        state = meta["asg"]
        self.window.load_state_dict(state["window"])
        self.solver_baseline = float(state["solver_baseline"])
        self.proposer_baselines = {k: float(v) for k, v in state["proposer_baselines"].items()}
        self.kl_beta = float(state["kl_beta"])
        self.entropy_mu = float(state["entropy_mu"])
        self.totals.update({k: int(v) for k, v in state["totals"].items()})

    def trainable_state(self) -> dict[str, Tensor]:
        """Every role's LoRA weights (peft marks only the active adapter's as requiring grad)."""
        return {
            f"lora.{n}": p.detach().clone() for n, p in self.peft_model.named_parameters() if "lora_" in n
        }

    def _open_questions_log(self) -> None:
        """`<run>/questions.jsonl`, one line per kept question; lines after this step (written by an
        interrupted run past its last checkpoint) are dropped, as metrics.csv drops its rows."""
        if self._questions_file is not None or not self.dist.is_main:
            return
        path = self.run_dir / "questions.jsonl"
        kept = []
        if path.is_file():
            kept = [
                line
                for line in path.read_text().splitlines()
                if line and json.loads(line)["step"] <= self.step
            ]
        self._questions_file = open(path, "w")  # noqa: SIM115 - kept open for the run, closed in cleanup
        self._questions_file.writelines(line + "\n" for line in kept)

    def summary(self) -> dict[str, Any]:
        """The run's totals: questions proposed, rejected (do not parse), kept, kept although easy,
        Solver updates, and (ShapesWorld) how many kept questions the exact judge can answer and how
        often the majority answer is right: the self-consistency accuracy on the Proposer's questions."""
        t = self.totals

        def share(num: int, den: int) -> float | None:
            return num / den if den else None

        return {
            **t,
            "rejected_share": share(t["rejected"], t["proposed"]),
            "kept_easy_share": share(t["kept_easy"], t["kept"]),
            "answerable_share": share(t["answerable"], t["judged"]),
            "self_consistency_accuracy": share(t["majority_correct"], t["answerable"]),
            "kl_beta": self.kl_beta,
            "entropy_mu": self.entropy_mu,
        }

    def write_summary(self) -> Path:
        path = self.run_dir / "asg.json"
        path.write_text(json.dumps(self.summary(), indent=2) + "\n")
        return path

    def panels(self) -> list[Path]:
        """The last kept questions with the Solver's answer distribution and the judge's truth."""
        path = self.run_dir / "questions.jsonl"
        if self.cfg.logging.panel_items == 0 or not path.is_file():
            return []
        lines = [json.loads(line) for line in path.read_text().splitlines() if line]
        rows = lines[-self.cfg.logging.panel_items :]
        if not rows:
            return []
        from unigame.methods.asg.panel import question_panel

        pixels = self.batches.batch([self._image_index[r["id"]] for r in rows]).pixels
        return [question_panel(self.run_dir / "plots" / "questions.png", pixels, rows)]

    def cleanup(self) -> None:
        if self._questions_file is not None:
            self._questions_file.close()
            self._questions_file = None
        super().cleanup()
