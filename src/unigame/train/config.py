"""`TrainConfig`: every setting of a UniGame (or SFT-baseline) post-training run, in one typed tree.

Layers: these dataclass defaults < a YAML recipe (`--cfg configs/x.yaml`) < command-line overrides
(`--cfg.game.adversary noise`). jsonargparse reads the "Args:" docstrings as help and rejects
unknown keys; `TrainConfig.validate()` then checks every range and raises one `ConfigError`
listing all problems, before any model is loaded.

Defaults are the paper's (arXiv 2511.19413) except where the tiny CPU model needs otherwise; each
such departure is named in the field's help and in the Janus-Pro recipes that restore the paper.
"""

from __future__ import annotations

import dataclasses
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args

from unigame.data.generalist import ASK_QUESTION
from unigame.data.loaders import CAPTION_PROMPT, MAX_IMAGE_PIXELS
from unigame.data.shapes import ShapesConfig

__all__ = [
    "AsgConfig",
    "ConfigError",
    "DataConfig",
    "GameConfig",
    "InternalConfig",
    "LoggingConfig",
    "ModelConfig",
    "OptimConfig",
    "TrainConfig",
    "config_diff",
]

Adversary = Literal["decoder", "embedding", "noise"]
Mining = Literal["decoder", "official"]
FilterName = Literal["clip", "cosine", "none"]
Calibration = Literal["absolute", "relative_to_clean"]
Budget = Literal["auto", "absolute", "relative"]
RegForm = Literal["sum", "mean"]
Schedule = Literal["alternating", "simultaneous"]
Precision = Literal["fp32", "bf16"]
PromptName = Literal["tiny", "janus_pro", "emu3_chat"]
DataSource = Literal["shapes", "vqav2"]
Method = Literal["unigame", "internal-sft", "internal-dpo", "asg"]
Judge = Literal["self", "oracle"]
DifficultySignal = Literal["ste", "answer_entropy"]


class ConfigError(ValueError):
    """Every problem of a config at once, one line each: key, received value, allowed values."""

    def __init__(self, errors: list[str]) -> None:
        self.errors = list(errors)
        super().__init__("invalid train config:\n  - " + "\n  - ".join(self.errors))


@dataclass
class ModelConfig:
    """Which unified model is post-trained, where it runs, and its LoRA.

    Args:
        path: model directory (transformers JanusForConditionalGeneration, or
            Emu3ForConditionalGeneration when its config says model_type emu3, + tokenizer, loaded
            offline). None: the cached tiny Janus base (`unigame base` builds it if missing).
        scorer_path: CLIP/SigLIP directory of the semantic filter. None: `<path>/clip`.
        prompt: prompt layout: `tiny` (the tiny models), `janus_pro` (Janus-Pro's chat format) or
            `emu3_chat` (Emu3-Chat's format).
        precision: `fp32`, or `bf16`: bf16 autocast with the frozen weights stored in bf16; LoRA,
            the perturber, the perturbation, its regulariser and the losses stay fp32 (paper B.2),
            and so does the decoder G that decodes z + delta (the adapter's `fp32_modules()`,
            run with autocast off): bf16 would round a 1% offset of a latent token away.
        device: torch device (`cpu`, `cuda`, `cuda:1`). Under `accelerate launch`/`torchrun` with
            several processes: `cuda` (each process takes cuda:LOCAL_RANK) or `cpu` (gloo).
        gradient_checkpointing: recompute transformer layers' activations in the backward instead of
            storing them (language model and vision encoder): less memory, ~30% more compute.
        lora_r: LoRA rank (paper 16), >= 1.
        lora_alpha: LoRA alpha (paper 32), > 0.
        lora_dropout: LoRA dropout (paper 0.05), in [0, 1).
        trust_remote_code: let transformers run Python code shipped in the model directory. Off:
            such code runs with your permissions, so turn it on (or pass --trust-remote-code) only
            for a directory you trust.
        merge_lora: a LoRA directory (a run's `checkpoints/step-N/lora`) merged into the base weights
            before this run's own LoRA is attached: post-training on top of an earlier
            post-training (e.g. UniGame after internal-supervision C-SFT). null = the base as is.
    """

    path: str | None = None
    scorer_path: str | None = None
    prompt: PromptName = "tiny"
    precision: Precision = "fp32"
    device: str = "cpu"
    gradient_checkpointing: bool = False
    lora_r: int = 16
    lora_alpha: float = 32.0
    lora_dropout: float = 0.05
    trust_remote_code: bool = False
    merge_lora: str | None = None


@dataclass
class DataConfig:
    """The training records: generated ShapesWorld scenes, or a VQAv2-format split on local disk.

    Args:
        source: `shapes` (ShapesWorld, generated) or `vqav2` (local files: `questions`,
            `annotations`, `images`, optionally a caption set; the paper's VQAv2 + CC3M subset).
        train_items: records of the ShapesWorld `train` split (source shapes), >= 1.
        split_seed: seed of the ShapesWorld split and of the data order of every source, >= 0.
        batch_size: items per step and process, >= 1 (the global batch is batch_size x processes).
        extra_clean_items: the "SFT with equal examples per update" control, >= 0; only with
            game.enabled false. Each step also trains on this many clean items per process, drawn
            from a second seeded stream over the same records (order seed split_seed + 1), and the
            loss becomes CE_clean + game.beta*CE_extra: the SFT counterpart of UniGame's clean +
            replayed batch (match it with game.replay_batch, or data.batch_size when that is None).
            0: plain SFT.
        image_size: side of the square model input (Janus-Pro: 384). Source shapes: None keeps the
            rendered size. Source vqav2: required; images are padded to a square with grey and
            resized (Janus-Pro's own preprocessing).
        shapes: what the scenes contain; must match what the base model was trained on.
        questions: VQAv2 questions JSON (v2_OpenEnded_mscoco_train2014_questions.json).
        annotations: VQAv2 annotations JSON (v2_mscoco_train2014_annotations.json); the answer
            trained on is multiple_choice_answer.
        images: folder of the COCO images the questions refer to (train2014/).
        captions: optional image-caption set (a CC3M subset): .jsonl or .tsv with columns image,
            caption and optionally id. Each caption is an extra record asking `caption_prompt`;
            its caption is the semantic filter's text.
        caption_images: folder the caption set's image paths are relative to; None: the folder of
            `captions`.
        caption_prompt: the question asked of caption records.
        max_items: use at most this many VQAv2 records (the first usable ones in file order), >= 1;
            None: all. Every used image is held in memory at image_size (442 KB each at 384 px).
        max_image_pixels: refuse (as a bad record) an image file of more pixels, before decoding
            it: the decompression-bomb guard, >= 1.
        max_bad_fraction: fail when more than this fraction of the local records is bad (a wrong
            path or a broken export rather than a few broken files), in [0, 1). Bad records below
            it are left out and listed in <run>/bad_records.jsonl.
    """

    source: DataSource = "shapes"
    train_items: int = 2000
    split_seed: int = 0
    batch_size: int = 16
    extra_clean_items: int = 0
    image_size: int | None = None
    shapes: ShapesConfig = field(default_factory=ShapesConfig)
    questions: str | None = None
    annotations: str | None = None
    images: str | None = None
    captions: str | None = None
    caption_images: str | None = None
    caption_prompt: str = CAPTION_PROMPT
    max_items: int | None = None
    max_image_pixels: int = MAX_IMAGE_PIXELS
    max_bad_fraction: float = 0.5


@dataclass
class GameConfig:
    """The two players and what passes between them (paper §3, Algorithm 1, Table 4).

    Args:
        enabled: true: UniGame; false: the SFT baseline (same loop, LoRA, steps and data order,
            clean CE only).
        adversary: where the challenger perturbs: `decoder` (paper Eq. 7: VQ latents decoded to a
            real image, gradient through decoder and vision encoder), `embedding` (official-code
            style: understanding-token space), `noise` (random token-space directions, no MLP).
        residual_decode: decoder adversary only: the candidate is x̃ = x + G(z+δ) − G(z) instead
            of the paper's G(z+δ), so it differs from x by what δ changes through the decoder and
            not by the VQ's reconstruction error. On by default because the tiny base's VQ is lossy:
            its round trip G(z) loses the scene or the answer on a sizeable share of images
            (docs/base.md), and replaying such images trains on labels that no longer hold. Set
            false for the paper's direct decoding (the Janus-Pro recipes do). Token-space
            adversaries (embedding, noise) decode nothing and ignore it.
        replay_images: decoder adversary with the buffer: each buffer item keeps its decoded image
            x̃ instead of its latents, and replay reads it back instead of decoding again (with
            residual decoding that is two decoder passes per replayed item: ~19% of a tiny UniGame
            step). The replayed image is then the one the challenge scored, not a re-decoding of it
            (equal to ~1e-5). The cost is an image per item (capacity 50: 0.6 MB on the tiny Janus,
            88 MB at 384 px, float32) against two latents; off by default, so large capacities stay
            cheap. Token-space adversaries store tokens and ignore it.
        mining: where hard candidates come from: `decoder` (the challenge forward's own perturbed
            input, reused), `official` (text-to-image from the question with the token-space
            perturbation injected at every generation step; needs adversary embedding or noise).
        filter: semantic filter of candidates: `clip` (text-image similarity to the caption, else
            the question), `cosine` (clean vs candidate image features; token cosine for
            token-space candidates), `none`.
        clip_threshold: CLIP similarity threshold with `clip_calibration: absolute` (paper 0.6,
            calibrated for real CLIP ViT).
        clip_calibration: `absolute` (sim >= clip_threshold) or `relative_to_clean` (sim >= (1 -
            clip_margin) x the clean image's own sim). Default relative: the tiny CLIP scores a
            matched caption ~0.98 and a one-attribute-swapped caption ~0.75, so an absolute 0.6
            would pass candidates whose meaning changed; margin 0.1 puts the bar at ~0.88, between
            the two.
        clip_margin: allowed fractional loss of the clean score in `relative_to_clean`, in [0, 1].
        cosine_threshold: `cosine` filter threshold, in [-1, 1] (paper gives none; 0.9).
        eps_max: hard bound of the per-token perturbation norm (paper 0.02), >= 0. 0 is the
            "UniGame with eps = 0" control: delta is exactly 0 and the challenger is never updated,
            while the challenge forward, mining, filter, buffer and replay run unchanged (the
            decoder adversary then replays its unperturbed candidates: the hard-mined clean
            images x with residual decoding, the VQ reconstructions G(z) without).
        eps_init: initial budget (paper 0.01), strictly inside (0, eps_max): the gate
            eps_max*sigmoid(s) never reaches either end. Ignored when eps_max is 0.
        budget: `absolute` (||delta_t|| <= eps), `relative` (<= eps*||z_t||), or `auto`: absolute
            for the decoder's unit-norm VQ latents, relative for understanding tokens (their norm
            is far from 1, so an absolute 0.02 would be invisible).
        perturber_hidden: MLP width W of the perturber; None: max(D, 64).
        reg_lambda: lambda of L_C = CE - lambda*||delta||^2, >= 0. Default 0 (the paper gives no
            value). The perturber fixes every token's norm (||delta_t|| = eps, or eps*||z_t|| with
            a relative budget), so ||delta||^2 depends on eps alone: a non-zero lambda never shapes
            delta's direction, it only pulls the gate eps down, whatever the CE does. With
            `reg_form: sum` and an absolute budget the pull on the gate's ascent is 2*lambda*N*eps
            (N latent tokens), with `mean` 2*lambda*eps/D (D features per token). AdamW normalises
            each step, so the pull matters relative to the CE's gradient on eps: where the CE
            gives eps none, any lambda > 0 drives eps towards 0.
        reg_form: the ||delta||^2 of the lambda term: `sum` (squares summed over a sample's
            tokens and features, then averaged over the batch: N*eps^2 at an absolute budget) or
            `mean` (mean of delta^2 over every element: eps^2/D, N*D times weaker; the official
            code's negligible L2). Used only when reg_lambda > 0.
        beta: weight of the hard-sample term, L_U = CE_clean + beta*CE_hard (paper 0.5), >= 0.
        percentile: tau = this percentile of the mining batch's hardness (paper 60), in [0, 100].
        buffer: keep mined hard samples in the buffer and replay from it (paper); false: the
            understand step uses this step's selected candidates directly (Table 4 rows without
            buffer).
        capacity: hard-sample buffer size (paper 50), >= 1.
        replay_batch: buffer items replayed per understand step and process, >= 1; None:
            data.batch_size.
        mine_every: mine every m steps (paper m not fixed; 1 = every step), >= 1.
        schedule: when the two players move: `alternating` (paper Algorithm 1: the challenge
            step's forward/backward, mining, then the understand step's) or `simultaneous` (a
            departure: one forward/backward over [clean; x̃; replayed] in which LoRA descends L_U
            and the perturber ascends CE(x̃) through a gradient reversal at delta, each getting the
            gradient the alternating step gives it, except that the replayed batch is drawn before
            this step's mining). With buffer false the language model sees 2B rows a step instead of
            B + (B + the selected candidates), and the selection is not decoded again; with the
            buffer the replayed items are rows of their own and the step costs about what an
            alternating one does. Needs mining decoder and one challenge and one understand step
            (docs/method.md).
        challenge_steps: perturber updates per step (1:1 alternation = 1), >= 1.
        understand_steps: LoRA updates per step on the same mixed batch, >= 1.
        generation_guidance: classifier-free guidance of `mining: official`, >= 0.
        generation_temperature: sampling temperature of `mining: official`, >= 0 (0 = greedy).
    """

    enabled: bool = True
    adversary: Adversary = "decoder"
    mining: Mining = "decoder"
    residual_decode: bool = True
    replay_images: bool = False
    filter: FilterName = "clip"
    clip_threshold: float = 0.6
    clip_calibration: Calibration = "relative_to_clean"
    clip_margin: float = 0.1
    cosine_threshold: float = 0.9
    eps_max: float = 0.02
    eps_init: float = 0.01
    budget: Budget = "auto"
    perturber_hidden: int | None = None
    reg_lambda: float = 0.0
    reg_form: RegForm = "sum"
    beta: float = 0.5
    percentile: float = 60.0
    buffer: bool = True
    capacity: int = 50
    replay_batch: int | None = None
    mine_every: int = 1
    schedule: Schedule = "alternating"
    challenge_steps: int = 1
    understand_steps: int = 1
    generation_guidance: float = 3.0
    generation_temperature: float = 1.0


@dataclass
class InternalConfig:
    """Internal supervision (arXiv 2507.16663): the model's own understanding judges its generations.

    Args:
        prompts: training prompts drawn from ShapesWorld (GenEval-style, the six tasks in turn;
            texts equal to an evaluation prompt are left out), used when `prompt_file` is unset.
        prompt_file: a local file of training prompts, one per line (.txt) or {"prompt": ...} per
            line (.jsonl); null = ShapesWorld prompts.
        candidates: N, images sampled per prompt and scored by the model's own yes/no (paper 10).
        judge: `self` (the model's P(yes) to "Does this image show {prompt}?"; the method) or
            `oracle` (ShapesWorld's exact judge accepts; the external-reward upper bound).
        accept: P(yes) at or above which the model accepts its image (0.5: yes over no).
        curriculum_rounds: C-SFT (paper Algorithm 2): times the discard pool is regenerated with the
            current model and rescored; 0 = plain SFT / DPO on the first round's data.
        curriculum_every: steps between curriculum rounds.
        dpo_beta: the DPO temperature on summed image-token log-probabilities (internal-dpo).
        nll_weight: weight of the chosen image's generation NLL added to the DPO loss (internal-dpo).
        guidance: classifier-free guidance scale when sampling candidates.
        temperature: sampling temperature of candidates.
        batch_size: (prompt, image) pairs (or DPO pairs) per update.
        sample_batch_size: prompts per text-to-image call while building the pool.
    """

    prompts: int = 180
    prompt_file: str | None = None
    candidates: int = 10
    judge: Judge = "self"
    accept: float = 0.5
    curriculum_rounds: int = 0
    curriculum_every: int = 100
    dpo_beta: float = 0.1
    nll_weight: float = 1.0
    guidance: float = 3.0
    temperature: float = 1.0
    batch_size: int = 16
    sample_batch_size: int = 64


@dataclass
class AsgConfig:
    """Ask, Solve, Generate (mbzuai-oryx/Ask-Solve-Generate): a Proposer, a Solver and a Generator,
    three LoRA adapters on one frozen model, learn from unlabeled images with self-consistency rewards.

    Defaults are the reference's main joint run (its E1 script, strict stage) unless the help says
    otherwise. The Solver is LoRA `default` and learns at optim.und_lr; the other two roles have
    their own learning rates below.

    Args:
        understanding_steps: understanding steps per cycle (reference 3), >= 0.
        generation_steps: generation steps per cycle (reference 2), >= 0; 0: understanding only.
        ask_prompt: the instruction the Proposer answers with a question about the image (the tiny
            base learned to ask with this prompt).
        candidates: K, candidate questions the Proposer writes per image (reference 3), >= 1.
        proposer_temperature: sampling temperature of proposed questions (reference 1.3), > 0.
        proposer_top_p: nucleus top-p of proposed questions (reference 1.0), in (0, 1].
        question_tokens: most tokens of a proposed question, >= 1.
        answer_tokens: most tokens of a Solver answer (the adapter's `answer` default), >= 1; the
            greedy spot-check decodes at least ste_tokens, so STE sees every one of the first k.
        difficulty_signal: `ste` (Solver Token Entropy of the greedy answer: the method) or
            `answer_entropy` (the entropy of `spot_check_samples` answers, greedy first, in place
            of STE everywhere: the "without STE" ablation).
        ste_tokens: k: STE is the largest next-token entropy among the first k answer tokens
            (reference 5), >= 1.
        spot_check_samples: answers per candidate with difficulty_signal answer_entropy (the greedy
            answer, then the first samples of the Solver's schedule; reference 3), >= 2.
        window: the rolling window of difficulty signals (reference 128), >= 1. A question's
            difficulty is the fraction of the window below its signal.
        min_window: while the window holds fewer values, difficulty = sigmoid(sigmoid_alpha *
            (signal - sigmoid_beta)) instead (reference 8), >= 1.
        sigmoid_alpha: slope of that fallback (reference 1.5), > 0.
        sigmoid_beta: midpoint of that fallback, in nats (reference 2.0).
        easy_quantile: a candidate whose difficulty is below this is easy (reference 0.30), in [0, 1].
        hard_quantile: above this it is hard, else medium (reference 0.70), in [easy_quantile, 1].
        solver_samples: N, Solver answers per kept question: the greedy one plus N - 1 samples
            (reference 7), >= 2.
        solver_temperature_min: temperature of the coolest sample (reference 0.5), > 0.
        solver_temperature_max: temperature of the hottest sample (reference 2.5), >= min.
        solver_top_p_min: top-p of the hottest sample (reference 0.3), in (0, 1].
        solver_top_p_max: top-p of the coolest sample (reference 1.0), in [min, 1].
        entropy_band_min: lower edge of the answer-entropy band of the informativeness s (reference
            0.15): s's Gaussian is centred at the band's middle (0.675) with width half the band (0.525).
        entropy_band_max: upper edge of that band (reference 1.2), > entropy_band_min.
        margin_max: s's margin term is max(0, 1 - (p1 - p2) / margin_max) (reference 0.9), > 0.
        minority_weight: minority answers get -minority_weight * s (easy questions: +; reference
            0.25), >= 0.
        unsolvable_share: a majority share at or below this makes the question unsolvable: every
            answer gets -minority_weight * s (reference 0.2: with N = 7, all answers differ), in [0, 1].
        no_update_share: no Solver update when the majority share is at least this (reference
            0.85), in (0, 1].
        baseline_momentum: EMA momentum of the Solver's and the per-bucket Proposer baselines
            (reference 0.6), in [0, 1).
        kl_init: initial coefficient beta of the Solver's KL to the frozen model (reference 0.01), > 0.
        kl_target: beta <- beta * exp(kl_rate * clip((KL - kl_target) / kl_target, -1, 1))
            (reference 0.02), > 0.
        kl_rate: see kl_target (reference 0.1), >= 0.
        kl_min: lower bound of beta (reference 1e-3), > 0.
        kl_max: upper bound of beta (reference 100), >= kl_min.
        difficulty_weight: Proposer reward R = difficulty_weight * difficulty + base_weight * R_base
            (reference 0.7).
        base_weight: see difficulty_weight (reference 0.3).
        band_weight: R_base = band_weight * clip(2s - 1, -1, 1) + (1 - band_weight) *
            exp(-(H - mu)^2 / (2 entropy_sigma^2)) (reference 0.9), in [0, 1].
        entropy_sigma: width of R_base's answer-entropy Gaussian (reference 0.25), > 0.
        entropy_mu_init: initial mu, the EMA of the answer entropy H (reference 0.9).
        entropy_mu_momentum: EMA momentum of mu (reference 0.9), in [0, 1).
        entropy_mu_min: lower clamp of mu (reference 0.65).
        entropy_mu_max: upper clamp of mu (reference 1.5), >= entropy_mu_min.
        entropy_mu_floor: mu moves only on questions whose H exceeds this (reference 0.05), >= 0.
        easy_reward_cap: the Proposer reward of a collapsed (majority share >= no_update_share) or
            easy question is at most this (reference 0.2).
        clip_ratio: epsilon of the Proposer's clipped surrogate against the frozen model (reference
            0.2), in (0, 1).
        proposer_lr: the Proposer's AdamW learning rate, > 0 (reference 1e-6 for 8B models; scaled
            for the tiny model, see docs/asg.md).
        generator_lr: the Generator's AdamW learning rate, > 0 (as proposer_lr).
        prompt_tokens: most tokens of the Proposer's text-to-image prompt, >= 1.
        qa_pairs: questions the Proposer asks about a real image for its generation spec (reference
            2-3), >= 1; the ones that do not parse are dropped.
        min_qa_pairs: a spec with fewer parsing questions is rejected, and its image skipped (reference
            2), in [1, qa_pairs].
        generations: L, images the Generator makes per prompt (reference 3), >= 1.
        generation_guidance: classifier-free guidance of the Generator (the shapes suite's 3.0; the
            reference's 2.0 is a diffusion model's), >= 0.
        generation_temperature: sampling temperature of the Generator's image tokens, >= 0.
        verify_samples: Solver answers per question on a generated image (reference 2), >= 1.
        verify_temperature: their sampling temperature (reference 1.3), >= 0.
        match_weight: image reward = mean over QA pairs of match_weight * (majority answer ==
            expected) + share_weight * majority share, minus contradiction_weight * the share of
            yes/no contradictions (reference 0.7).
        share_weight: see match_weight (reference 0.3).
        contradiction_weight: see match_weight (reference 0.2), >= 0.
        reward_loss_weight: the Generator's loss is NLL(real image codes | prompt) * (1 +
            reward_loss_weight * R_best) (reference 0.5), >= 0.
    """

    understanding_steps: int = 3
    generation_steps: int = 2
    ask_prompt: str = ASK_QUESTION
    candidates: int = 3
    proposer_temperature: float = 1.3
    proposer_top_p: float = 1.0
    question_tokens: int = 16
    answer_tokens: int = 4
    difficulty_signal: DifficultySignal = "ste"
    ste_tokens: int = 5
    spot_check_samples: int = 3
    window: int = 128
    min_window: int = 8
    sigmoid_alpha: float = 1.5
    sigmoid_beta: float = 2.0
    easy_quantile: float = 0.3
    hard_quantile: float = 0.7
    solver_samples: int = 7
    solver_temperature_min: float = 0.5
    solver_temperature_max: float = 2.5
    solver_top_p_min: float = 0.3
    solver_top_p_max: float = 1.0
    entropy_band_min: float = 0.15
    entropy_band_max: float = 1.2
    margin_max: float = 0.9
    minority_weight: float = 0.25
    unsolvable_share: float = 0.2
    no_update_share: float = 0.85
    baseline_momentum: float = 0.6
    kl_init: float = 0.01
    kl_target: float = 0.02
    kl_rate: float = 0.1
    kl_min: float = 1e-3
    kl_max: float = 100.0
    difficulty_weight: float = 0.7
    base_weight: float = 0.3
    band_weight: float = 0.9
    entropy_sigma: float = 0.25
    entropy_mu_init: float = 0.9
    entropy_mu_momentum: float = 0.9
    entropy_mu_min: float = 0.65
    entropy_mu_max: float = 1.5
    entropy_mu_floor: float = 0.05
    easy_reward_cap: float = 0.2
    clip_ratio: float = 0.2
    proposer_lr: float = 3e-4
    generator_lr: float = 3e-4
    prompt_tokens: int = 32
    qa_pairs: int = 3
    min_qa_pairs: int = 2
    generations: int = 3
    generation_guidance: float = 3.0
    generation_temperature: float = 1.0
    verify_samples: int = 2
    verify_temperature: float = 1.3
    match_weight: float = 0.7
    share_weight: float = 0.3
    contradiction_weight: float = 0.2
    reward_loss_weight: float = 0.5


@dataclass
class OptimConfig:
    """Both players' optimisers (AdamW) and the run length.

    Args:
        steps: training steps (one batch each), >= 1.
        gen_lr: perturber learning rate (paper 5e-3), > 0.
        und_lr: LoRA learning rate, > 0. Paper 2e-5 (kept in the Janus-Pro recipes). The tiny
            recipe uses 1e-3: LoRA B starts at 0 and AdamW moves it ~lr per step, so after 300
            steps 2e-5 changes the tiny model's 0.1-scale weights by ~1e-3 (nothing), 1e-3 by ~0.1.
        weight_decay: AdamW weight decay of both players, >= 0.
        grad_clip: max gradient norm of each player (0 = off), >= 0.
        max_nonfinite_steps: abort the run after this many consecutive steps with a non-finite loss
            or gradient (each is skipped and counted), >= 1.
    """

    steps: int = 300
    gen_lr: float = 5e-3
    und_lr: float = 1e-3
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    max_nonfinite_steps: int = 10


@dataclass
class LoggingConfig:
    """What the run writes besides weights.

    Args:
        log_every: write metrics every n steps (attack success rate is measured on these), >= 1.
        checkpoint_every: save a checkpoint every n steps (0 = only at the end), >= 0.
        keep_checkpoints: complete checkpoints kept in the run dir (oldest removed), >= 1.
        tensorboard: also write TensorBoard event files under `<run>/tb`.
        plots: write PNG plots (eps curve, the two players' losses) and hard-sample panels at the end.
        panel_items: hard samples drawn in the panel PNG, >= 0.
        progress: show a progress bar.
    """

    log_every: int = 10
    checkpoint_every: int = 100
    keep_checkpoints: int = 2
    tensorboard: bool = True
    plots: bool = True
    panel_items: int = 8
    progress: bool = True


@dataclass
class TrainConfig:
    """One post-training run: UniGame (or the SFT baseline), or internal supervision.

    Args:
        method: `unigame` (UniGame, or the SFT baseline with game.enabled false; arXiv 2511.19413),
            `internal-sft` or `internal-dpo` (the generation branch trained on the model's own
            self-judged images, arXiv 2507.16663; settings under `internal`), or `asg`
            (Ask-Solve-Generate: Proposer, Solver and Generator LoRA roles learn from unlabeled
            images; settings under `asg`).
        seed: seed of LoRA and perturber init, dropout and replay sampling, >= 0.
        model: the unified model, its device, precision and LoRA.
        data: the training records (ShapesWorld or local VQAv2-format files).
        game: the challenger, the filter, the buffer (game.enabled false = SFT baseline).
        internal: internal supervision's sampling, self-judging, curriculum and DPO.
        asg: Ask-Solve-Generate's three roles, rewards and schedule (method asg).
        optim: run length and both players' optimisers.
        logging: metrics, checkpoints, plots.
    """

    method: Method = "unigame"
    seed: int = 0
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    game: GameConfig = field(default_factory=GameConfig)
    internal: InternalConfig = field(default_factory=InternalConfig)
    asg: AsgConfig = field(default_factory=AsgConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)

    def errors(self) -> list[str]:
        """Every problem, one line each naming the key, the value received and what is allowed."""
        return _errors(self)

    def validate(self) -> TrainConfig:
        """Raise `ConfigError` listing all problems; return self when there are none."""
        problems = self.errors()
        if problems:
            raise ConfigError(problems)
        return self

    def path_errors(self, model: bool = True) -> list[str]:
        """Every configured path that does not exist, one line each naming the key (checked before
        anything loads; `model=False` skips the model keys, for a trainer given an adapter)."""
        return _path_errors(self, model)

    def to_dict(self) -> dict[str, Any]:
        """A plain JSON/YAML-able dict (tuples become lists)."""
        return _plain(asdict(self))


# ----------------------------------------------------------------------------------- validation
def _check(errors: list[str], key: str, value: Any, ok: bool, allowed: str) -> None:
    if not ok:
        errors.append(f"{key}={value!r} is invalid: allowed {allowed}")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value == value


def _errors(cfg: TrainConfig) -> list[str]:
    errors: list[str] = []

    def ge(key: str, v: Any, lo: int) -> None:
        _check(errors, key, v, _is_int(v) and v >= lo, f"an int >= {lo}")

    def num(key: str, v: Any, ok: Any, allowed: str) -> None:
        _check(errors, key, v, _is_number(v) and bool(ok(v)), allowed)

    def choice(key: str, v: Any, literal: Any) -> None:
        options = get_args(literal)
        _check(errors, key, v, v in options, " | ".join(options))

    choice("method", cfg.method, Method)
    ge("seed", cfg.seed, 0)

    m = cfg.model
    choice("model.prompt", m.prompt, PromptName)
    choice("model.precision", m.precision, Precision)
    _check(
        errors,
        "model.gradient_checkpointing",
        m.gradient_checkpointing,
        isinstance(m.gradient_checkpointing, bool),
        "true | false",
    )
    _check(errors, "model.device", m.device, _valid_device(m.device), "cpu, cuda, cuda:N, mps, xpu")
    ge("model.lora_r", m.lora_r, 1)
    _check(
        errors,
        "model.trust_remote_code",
        m.trust_remote_code,
        isinstance(m.trust_remote_code, bool),
        "true | false",
    )
    num("model.lora_alpha", m.lora_alpha, lambda v: v > 0, "a number > 0")
    num("model.lora_dropout", m.lora_dropout, lambda v: 0 <= v < 1, "a number in [0, 1)")

    d = cfg.data
    ge("data.train_items", d.train_items, 1)
    ge("data.split_seed", d.split_seed, 0)
    ge("data.batch_size", d.batch_size, 1)
    ge("data.extra_clean_items", d.extra_clean_items, 0)
    if d.image_size is not None:
        ge("data.image_size", d.image_size, 8)
    choice("data.source", d.source, DataSource)
    if d.max_items is not None:
        ge("data.max_items", d.max_items, 1)
    ge("data.max_image_pixels", d.max_image_pixels, 1)
    num("data.max_bad_fraction", d.max_bad_fraction, lambda v: 0 <= v < 1, "a number in [0, 1)")
    _check(
        errors,
        "data.caption_prompt",
        d.caption_prompt,
        isinstance(d.caption_prompt, str) and d.caption_prompt.strip(),
        "a non-empty question",
    )
    if d.source == "vqav2":
        for key in ("questions", "annotations", "images"):
            if getattr(d, key) is None:
                errors.append(
                    f"data.{key} is required with data.source='vqav2': set it to the local {_PATH_KIND[key]}"
                )
        if d.image_size is None:
            errors.append(
                "data.image_size is required with data.source='vqav2' (images differ in size); Janus-Pro: 384"
            )
    elif d.source == "shapes":
        for key in _LOCAL_KEYS:
            if getattr(d, key) is not None:
                errors.append(
                    f"data.{key}={getattr(d, key)!r} is set but data.source='shapes' ignores it; set data.source vqav2"
                )
    try:
        d.shapes.validate()
    except ValueError as err:
        errors.append("data.shapes: " + str(err).replace("\n", "\n    "))

    g = cfg.game
    _check(errors, "game.enabled", g.enabled, isinstance(g.enabled, bool), "true | false")
    _check(errors, "game.buffer", g.buffer, isinstance(g.buffer, bool), "true | false")
    _check(errors, "game.replay_images", g.replay_images, isinstance(g.replay_images, bool), "true | false")
    choice("game.adversary", g.adversary, Adversary)
    choice("game.mining", g.mining, Mining)
    choice("game.filter", g.filter, FilterName)
    choice("game.clip_calibration", g.clip_calibration, Calibration)
    choice("game.budget", g.budget, Budget)
    num("game.clip_threshold", g.clip_threshold, lambda v: -1 <= v <= 1, "a number in [-1, 1]")
    num("game.clip_margin", g.clip_margin, lambda v: 0 <= v <= 1, "a number in [0, 1]")
    num("game.cosine_threshold", g.cosine_threshold, lambda v: -1 <= v <= 1, "a number in [-1, 1]")
    num("game.eps_max", g.eps_max, lambda v: v >= 0, "a number >= 0 (paper 0.02; 0 = the eps = 0 control)")
    if _is_number(g.eps_max) and g.eps_max > 0:
        num(
            "game.eps_init",
            g.eps_init,
            lambda v: 0 < v < g.eps_max,
            f"a number strictly inside (0, game.eps_max={g.eps_max}) (paper 0.01)",
        )
    if g.perturber_hidden is not None:
        ge("game.perturber_hidden", g.perturber_hidden, 1)
    num("game.reg_lambda", g.reg_lambda, lambda v: v >= 0, "a number >= 0 (default 0)")
    choice("game.reg_form", g.reg_form, RegForm)
    num("game.beta", g.beta, lambda v: v >= 0, "a number >= 0 (paper 0.5)")
    num("game.percentile", g.percentile, lambda v: 0 <= v <= 100, "a number in [0, 100] (paper 60)")
    ge("game.capacity", g.capacity, 1)
    if g.replay_batch is not None:
        ge("game.replay_batch", g.replay_batch, 1)
    ge("game.mine_every", g.mine_every, 1)
    ge("game.challenge_steps", g.challenge_steps, 1)
    ge("game.understand_steps", g.understand_steps, 1)
    choice("game.schedule", g.schedule, Schedule)
    if g.enabled is True and g.schedule == "simultaneous":
        for key in ("challenge_steps", "understand_steps"):
            if getattr(g, key) != 1:
                errors.append(
                    f"game.{key}={getattr(g, key)!r} is invalid with game.schedule='simultaneous': one joint "
                    "forward/backward moves both players once per step (allowed: 1, or schedule alternating)"
                )
        if g.mining == "official":
            errors.append(
                "game.mining='official' is invalid with game.schedule='simultaneous': its candidates are "
                "generated images, not the perturbed inputs the joint step trains on (use mining decoder, "
                "or schedule alternating)"
            )
    num("game.generation_guidance", g.generation_guidance, lambda v: v >= 0, "a number >= 0")
    num("game.generation_temperature", g.generation_temperature, lambda v: v >= 0, "a number >= 0")
    if g.enabled is True and _is_int(d.extra_clean_items) and d.extra_clean_items > 0:
        errors.append(
            f"data.extra_clean_items={d.extra_clean_items!r} is invalid with game.enabled=true: extra clean "
            "items are the SFT control's counterpart of UniGame's replayed batch (allowed: 0, or set "
            "game.enabled false)"
        )
    if g.mining == "official" and g.adversary == "decoder":
        errors.append(
            "game.mining='official' with game.adversary='decoder' is invalid: official mining injects "
            "the token-space perturbation into generation embeddings; use adversary embedding or noise"
        )
    if g.filter == "clip" and g.mining == "decoder" and g.adversary in ("embedding", "noise"):
        errors.append(
            f"game.filter='clip' with game.adversary={g.adversary!r} and mining 'decoder' is invalid: "
            "token-space candidates have no image to score; use filter cosine or none, or mining official"
        )

    it = cfg.internal
    ge("internal.prompts", it.prompts, 1)
    ge("internal.candidates", it.candidates, 1)
    choice("internal.judge", it.judge, Judge)
    num("internal.accept", it.accept, lambda v: 0 < v < 1, "a number in (0, 1)")
    ge("internal.curriculum_rounds", it.curriculum_rounds, 0)
    ge("internal.curriculum_every", it.curriculum_every, 1)
    num("internal.dpo_beta", it.dpo_beta, lambda v: v > 0, "a number > 0")
    num("internal.nll_weight", it.nll_weight, lambda v: v >= 0, "a number >= 0")
    num("internal.guidance", it.guidance, lambda v: v >= 0, "a number >= 0")
    num("internal.temperature", it.temperature, lambda v: v >= 0, "a number >= 0")
    ge("internal.batch_size", it.batch_size, 1)
    ge("internal.sample_batch_size", it.sample_batch_size, 1)
    if cfg.method == "internal-dpo" and _is_int(it.candidates) and it.candidates < 2:
        errors.append(
            f"internal.candidates={it.candidates!r} is invalid with method=internal-dpo: a DPO pair needs "
            "a chosen and a rejected image (allowed: an int >= 2)"
        )
    if it.judge == "oracle" and cfg.data.source != "shapes":
        errors.append(
            "internal.judge='oracle' needs data.source='shapes' (the exact judge reads ShapesWorld images)"
        )
    if it.prompt_file is not None and it.judge == "oracle":
        errors.append(
            f"internal.prompt_file={it.prompt_file!r} with internal.judge='oracle' is invalid: the exact judge "
            "knows only ShapesWorld's own prompts (allowed: prompt_file null)"
        )

    _asg_errors(cfg.asg, ge, num, choice, errors)

    o = cfg.optim
    ge("optim.steps", o.steps, 1)
    ge("optim.max_nonfinite_steps", o.max_nonfinite_steps, 1)
    num("optim.gen_lr", o.gen_lr, lambda v: v > 0, "a number > 0 (paper 5e-3)")
    num("optim.und_lr", o.und_lr, lambda v: v > 0, "a number > 0 (paper 2e-5)")
    num("optim.weight_decay", o.weight_decay, lambda v: v >= 0, "a number >= 0")
    num("optim.grad_clip", o.grad_clip, lambda v: v >= 0, "a number >= 0 (0 = off)")

    lg = cfg.logging
    ge("logging.log_every", lg.log_every, 1)
    ge("logging.checkpoint_every", lg.checkpoint_every, 0)
    ge("logging.keep_checkpoints", lg.keep_checkpoints, 1)
    ge("logging.panel_items", lg.panel_items, 0)
    return errors


def _asg_errors(a: AsgConfig, ge: Any, num: Any, choice: Any, errors: list[str]) -> None:
    unit = "a number in [0, 1]"
    ge("asg.understanding_steps", a.understanding_steps, 0)
    ge("asg.generation_steps", a.generation_steps, 0)
    steps = (a.understanding_steps, a.generation_steps)
    if all(_is_int(v) for v in steps) and sum(steps) < 1:
        errors.append(
            "asg.understanding_steps=0 with asg.generation_steps=0 is invalid: a cycle needs at "
            "least one step (reference 3 and 2)"
        )
    _check(errors, "asg.ask_prompt", a.ask_prompt, isinstance(a.ask_prompt, str) and a.ask_prompt.strip(),
           "a non-empty instruction")  # fmt: skip
    ge("asg.candidates", a.candidates, 1)
    num("asg.proposer_temperature", a.proposer_temperature, lambda v: v > 0, "a number > 0 (reference 1.3)")
    num("asg.proposer_top_p", a.proposer_top_p, lambda v: 0 < v <= 1, "a number in (0, 1]")
    ge("asg.question_tokens", a.question_tokens, 1)
    ge("asg.answer_tokens", a.answer_tokens, 1)
    choice("asg.difficulty_signal", a.difficulty_signal, DifficultySignal)
    ge("asg.ste_tokens", a.ste_tokens, 1)
    ge("asg.spot_check_samples", a.spot_check_samples, 2)
    ge("asg.window", a.window, 1)
    ge("asg.min_window", a.min_window, 1)
    num("asg.sigmoid_alpha", a.sigmoid_alpha, lambda v: v > 0, "a number > 0")
    num("asg.sigmoid_beta", a.sigmoid_beta, lambda v: True, "a number")
    num("asg.easy_quantile", a.easy_quantile, lambda v: 0 <= v <= 1, unit)
    num("asg.hard_quantile", a.hard_quantile, lambda v: 0 <= v <= 1, unit)
    if _is_number(a.easy_quantile) and _is_number(a.hard_quantile) and a.hard_quantile < a.easy_quantile:
        errors.append(
            f"asg.hard_quantile={a.hard_quantile!r} is invalid: allowed a number >= asg.easy_quantile "
            f"({a.easy_quantile!r})"
        )
    ge("asg.solver_samples", a.solver_samples, 2)
    num("asg.solver_temperature_min", a.solver_temperature_min, lambda v: v > 0, "a number > 0")
    num("asg.solver_temperature_max", a.solver_temperature_max, lambda v: v >= a.solver_temperature_min,
        "a number >= asg.solver_temperature_min")  # fmt: skip
    num("asg.solver_top_p_min", a.solver_top_p_min, lambda v: 0 < v <= 1, "a number in (0, 1]")
    num("asg.solver_top_p_max", a.solver_top_p_max, lambda v: a.solver_top_p_min <= v <= 1,
        "a number in [asg.solver_top_p_min, 1]")  # fmt: skip
    num("asg.entropy_band_min", a.entropy_band_min, lambda v: v >= 0, "a number >= 0")
    num("asg.entropy_band_max", a.entropy_band_max, lambda v: v > a.entropy_band_min,
        "a number > asg.entropy_band_min")  # fmt: skip
    num("asg.margin_max", a.margin_max, lambda v: v > 0, "a number > 0")
    num("asg.minority_weight", a.minority_weight, lambda v: v >= 0, "a number >= 0")
    num("asg.unsolvable_share", a.unsolvable_share, lambda v: 0 <= v <= 1, unit)
    num("asg.no_update_share", a.no_update_share, lambda v: 0 < v <= 1, "a number in (0, 1]")
    num("asg.baseline_momentum", a.baseline_momentum, lambda v: 0 <= v < 1, "a number in [0, 1)")
    num("asg.kl_init", a.kl_init, lambda v: v > 0, "a number > 0")
    num("asg.kl_target", a.kl_target, lambda v: v > 0, "a number > 0")
    num("asg.kl_rate", a.kl_rate, lambda v: v >= 0, "a number >= 0")
    num("asg.kl_min", a.kl_min, lambda v: v > 0, "a number > 0")
    num("asg.kl_max", a.kl_max, lambda v: v >= a.kl_min, "a number >= asg.kl_min")
    for key in ("difficulty_weight", "base_weight", "easy_reward_cap", "entropy_mu_init", "entropy_mu_min"):
        num(f"asg.{key}", getattr(a, key), lambda v: True, "a number")
    num("asg.band_weight", a.band_weight, lambda v: 0 <= v <= 1, unit)
    num("asg.entropy_sigma", a.entropy_sigma, lambda v: v > 0, "a number > 0")
    num("asg.entropy_mu_momentum", a.entropy_mu_momentum, lambda v: 0 <= v < 1, "a number in [0, 1)")
    num(
        "asg.entropy_mu_max",
        a.entropy_mu_max,
        lambda v: v >= a.entropy_mu_min,
        "a number >= asg.entropy_mu_min",
    )
    num("asg.entropy_mu_floor", a.entropy_mu_floor, lambda v: v >= 0, "a number >= 0")
    num("asg.clip_ratio", a.clip_ratio, lambda v: 0 < v < 1, "a number in (0, 1)")
    num("asg.proposer_lr", a.proposer_lr, lambda v: v > 0, "a number > 0")
    num("asg.generator_lr", a.generator_lr, lambda v: v > 0, "a number > 0")
    ge("asg.prompt_tokens", a.prompt_tokens, 1)
    ge("asg.qa_pairs", a.qa_pairs, 1)
    ge("asg.min_qa_pairs", a.min_qa_pairs, 1)
    if _is_int(a.min_qa_pairs) and _is_int(a.qa_pairs) and a.min_qa_pairs > a.qa_pairs:
        errors.append(
            f"asg.min_qa_pairs={a.min_qa_pairs!r} is invalid: allowed an int in [1, asg.qa_pairs={a.qa_pairs!r}]"
        )
    ge("asg.generations", a.generations, 1)
    num("asg.generation_guidance", a.generation_guidance, lambda v: v >= 0, "a number >= 0")
    num("asg.generation_temperature", a.generation_temperature, lambda v: v >= 0, "a number >= 0")
    ge("asg.verify_samples", a.verify_samples, 1)
    num("asg.verify_temperature", a.verify_temperature, lambda v: v >= 0, "a number >= 0")
    for key in ("match_weight", "share_weight", "contradiction_weight", "reward_loss_weight"):
        num(f"asg.{key}", getattr(a, key), lambda v: v >= 0, "a number >= 0")


_LOCAL_KEYS = ("questions", "annotations", "images", "captions", "caption_images", "max_items")
_PATH_KIND = {
    "questions": "VQAv2 questions JSON file",
    "annotations": "VQAv2 annotations JSON file",
    "images": "image folder",
    "captions": "caption .jsonl/.tsv file",
    "caption_images": "caption image folder",
}


def _path_errors(cfg: TrainConfig, model: bool) -> list[str]:
    expected: list[tuple[str, Any, bool]] = []  # (key, value, is a directory)
    if model:
        expected += [("model.path", cfg.model.path, True), ("model.scorer_path", cfg.model.scorer_path, True)]
    expected.append(("model.merge_lora", cfg.model.merge_lora, True))
    if cfg.data.source == "vqav2":
        expected += [(f"data.{k}", getattr(cfg.data, k), "images" in k) for k in _PATH_KIND]
    if cfg.method != "unigame":
        expected.append(("internal.prompt_file", cfg.internal.prompt_file, False))
    errors = []
    for key, value, is_dir in expected:
        if value is None:
            continue
        path = Path(value).expanduser()
        if not (path.is_dir() if is_dir else path.is_file()):
            kind = "a directory" if is_dir else "a file"
            found = "it is not " + kind if path.exists() else "it does not exist"
            errors.append(f"{key}={value!r}: {found}; expected {kind}")
    return errors


def _valid_device(device: Any) -> bool:
    if not isinstance(device, str):
        return False
    kind, _, index = device.partition(":")
    return kind in ("cpu", "cuda", "mps", "xpu") and (index == "" or index.isdigit())


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def config_diff(
    saved: dict[str, Any], current: dict[str, Any], prefix: str = "", defaults: dict[str, Any] | None = None
) -> list[str]:
    """Dotted keys whose values differ between two `TrainConfig.to_dict()` trees, as 'key: a -> b'.

    A key the saved tree lacks (written before the key existed) counts as its default value, so an
    older run whose settings equal today's defaults shows no difference."""
    defaults = TrainConfig().to_dict() if defaults is None and not prefix else (defaults or {})
    lines: list[str] = []
    for key in sorted(set(saved) | set(current)):
        a, b = saved.get(key, defaults.get(key, "<absent>")), current.get(key, "<absent>")
        if isinstance(a, dict) and isinstance(b, dict):
            lines += config_diff(
                a, b, f"{prefix}{key}.", defaults.get(key) if isinstance(defaults.get(key), dict) else {}
            )
        elif a != b:
            lines.append(f"{prefix}{key}: {a!r} -> {b!r}")
    return lines


def field_names(cls: type) -> list[str]:
    """The dataclass's field names (used by tests to check every field has help text)."""
    return [f.name for f in dataclasses.fields(cls)]
