"""`unigame base`: build the embedded default model (tiny Janus + tiny CLIP) and cache it.

Order matters: the tokenizer fixes the vocabulary the model is built with; the VQ must be trained
before the text-to-image branch, which learns to predict its codes; the vision encoder must be
pretrained before the language model learns to read it; the CLIP scorer is independent.
The result is a directory loadable offline with `from_pretrained`:

    <output>/config.json, model.safetensors, tokenizer*   the tiny Janus (JanusForConditionalGeneration)
    <output>/clip/                                          the tiny CLIPModel scorer + tokenizer
    <output>/unigame_base.json                              the recipe config, timings and evaluation
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from unigame.data.shapes import ShapesConfig
from unigame.models.tiny_janus import TinyJanusConfig

MANIFEST = "unigame_base.json"


@dataclass
class BaseTraining:
    """Steps and learning rates of the pretraining stages (VQ, vision encoder, joint, CLIP).

    Args:
        vq_steps: VQ autoencoder steps.
        vision_steps: vision-encoder pretraining steps on per-patch object labels, batch 64
            (0 skips the stage, as bases built before it existed did).
        janus_steps: joint understanding + text-to-image steps.
        clip_steps: tiny CLIP contrastive steps (batch 64).
        batch_size: images per step of the joint stage.
        vq_batch_size: images per VQ step (many small steps reconstruct shapes far better than
            fewer large ones for the same compute).
        vq_lr: Adam learning rate of the VQ.
        vq_reseed_fraction: share of the VQ steps during which dead codes are re-seeded at a
            constant learning rate; the rest decays it to zero (1.0: re-seed throughout, no decay).
        vision_lr: AdamW peak learning rate of the vision pretraining (cosine decay).
        janus_lr: AdamW peak learning rate of the joint stage (warm-up then cosine decay).
        caption_fraction: fraction of understanding items that ask for the whole-scene caption.
        generation_lr: peak learning rate of the generation-only modules (image-token embeddings,
            their aligner, the generation head) in the joint stage; None: `janus_lr`. These
            modules start from scratch and learn far too slowly at the shared model's rate.
        generation_max_objects: draw the joint stage's text-to-image scenes separately with at
            most this many objects (None: reuse the understanding scenes, 1 to
            `shapes.max_objects`). Fewer objects per scene teach the branch to draw one object
            well sooner.
        generation_weight: weight of the text-to-image loss against the understanding loss.
        freeze_vision: keep the pretrained vision encoder frozen in the joint stage (only when
            `vision_steps` > 0).
        vqa_kinds: the VQA question kinds the joint stage trains on; the others are held back
            for post-training (the target task asks every kind). None: every kind, as bases
            before the generalist default did.
        match_fraction: fraction of understanding items that ask "Does this image show
            {caption}?" (yes for the scene's own caption, no for a one-attribute change).
        ask_fraction: fraction of understanding items that ask "Ask a question about this
            image." (answered with a templated question that is unambiguous for the scene).
    """

    vq_steps: int = 1000
    vision_steps: int = 1500
    janus_steps: int = 2200
    clip_steps: int = 600
    batch_size: int = 16
    vq_batch_size: int = 16
    vq_lr: float = 3e-3
    vq_reseed_fraction: float = 0.6
    vision_lr: float = 2e-3
    janus_lr: float = 1e-3
    caption_fraction: float = 0.1
    freeze_vision: bool = True
    generation_lr: float | None = 1e-2
    generation_max_objects: int | None = 2
    generation_weight: float = 2.0
    vqa_kinds: tuple[str, ...] | None = ("colour", "shape")
    match_fraction: float = 0.3
    ask_fraction: float = 0.1

    def validate(self) -> list[str]:
        errors = [
            f"training.{k}={v} must be >= 1"
            for k, v in asdict(self).items()
            if k.endswith("_steps") and v < (0 if k == "vision_steps" else 1)
        ]
        for key in ("batch_size", "vq_batch_size"):
            if getattr(self, key) < 1:
                errors.append(f"training.{key}={getattr(self, key)} must be >= 1")
        if not 0.0 <= self.vq_reseed_fraction <= 1.0:
            errors.append(f"training.vq_reseed_fraction={self.vq_reseed_fraction} must be in [0, 1]")
        fractions = ("caption_fraction", "match_fraction", "ask_fraction")
        for key in fractions:
            if not 0.0 <= getattr(self, key) <= 1.0:
                errors.append(f"training.{key}={getattr(self, key)} must be in [0, 1]")
        if sum(getattr(self, key) for key in fractions) > 1.0:
            errors.append(
                "training.caption_fraction + match_fraction + ask_fraction = "
                f"{sum(getattr(self, key) for key in fractions):g} must be <= 1 (the rest are VQA items)"
            )
        if self.vqa_kinds is not None:
            from unigame.data.shapes import QUESTION_KINDS

            bad = [k for k in self.vqa_kinds if k not in QUESTION_KINDS]
            if bad or not self.vqa_kinds:
                errors.append(
                    f"training.vqa_kinds={list(self.vqa_kinds)} is invalid: allowed a non-empty list of "
                    f"{', '.join(QUESTION_KINDS)}, or null for every kind"
                )
        for key in ("vq_lr", "vision_lr", "janus_lr", "generation_lr", "generation_weight"):
            value = getattr(self, key)
            if value is not None and not value > 0:
                errors.append(f"training.{key}={value} must be > 0")
        return errors


@dataclass
class BaseConfig:
    """Recipe of the tiny Janus base.

    Args:
        seed: seed of every stage (data sampling and weight init).
        shapes: the ShapesWorld scenes the base is trained on.
        model: sizes of the tiny Janus.
        training: steps and learning rates.
        eval_items: items per evaluation split (clean VQA, NaturalBench-style groups, generation prompts).
        threads: torch CPU threads (0 = leave torch's default).
    """

    seed: int = 0
    shapes: ShapesConfig = field(default_factory=ShapesConfig)
    model: TinyJanusConfig = field(default_factory=TinyJanusConfig)
    training: BaseTraining = field(default_factory=BaseTraining)
    eval_items: int = 300
    threads: int = 0

    def validate(self) -> None:
        errors = self.training.validate()
        if self.shapes.image_size != self.model.image_size:
            errors.append(
                f"shapes.image_size={self.shapes.image_size} differs from model.image_size={self.model.image_size}: "
                "set both to the same value (32 or 64)"
            )
        most = self.training.generation_max_objects
        if most is not None and not 1 <= most <= self.shapes.max_objects:
            errors.append(
                f"training.generation_max_objects={most} is invalid: allowed 1 to "
                f"shapes.max_objects={self.shapes.max_objects}, or null to reuse the understanding scenes"
            )
        if self.eval_items < 2:
            errors.append(f"eval_items={self.eval_items} must be >= 2")
        try:
            self.model.validate()
        except ValueError as err:
            errors.append(str(err).replace("\n", "\n    "))
        if errors:
            raise ValueError("Invalid base config:\n  - " + "\n  - ".join(errors))

    def fingerprint(self) -> str:
        """Hash of everything that changes the weights (not eval size or threads).

        Training options added after a recipe was published are left out while they hold the
        value that reproduces the earlier behaviour, so a base built before they existed keeps
        its cache path.
        """
        payload = {k: v for k, v in asdict(self).items() if k not in ("eval_items", "threads")}
        training = payload["training"]
        for key in keys_added_later(training):
            del training[key]
        return hashlib.sha256(json.dumps(payload, sort_keys=True, default=list).encode()).hexdigest()[:12]


def keys_added_later(training: dict[str, Any]) -> list[str]:
    """Training options added after earlier bases were published, while they reproduce those bases.

    Left out of the fingerprint, so a base built before an option existed keeps its cache path.
    """
    keys = []
    # the vision stage and the VQ's own batch and re-seed window came together
    if (
        training["vision_steps"] == 0
        and training["vq_reseed_fraction"] == 1.0
        and training["vq_batch_size"] == training["batch_size"]
    ):
        keys += ["vision_steps", "vision_lr", "freeze_vision", "vq_batch_size", "vq_reseed_fraction"]
    # the text-to-image branch's own learning rate, scenes and weight
    if (
        training["generation_lr"] is None
        and training["generation_max_objects"] is None
        and training["generation_weight"] == 1.0
    ):
        keys += ["generation_lr", "generation_max_objects", "generation_weight"]
    # the generalist tasks and the held-back VQA kinds
    if training["vqa_kinds"] is None and training["match_fraction"] == 0 and training["ask_fraction"] == 0:
        keys += ["vqa_kinds", "match_fraction", "ask_fraction"]
    return keys


def default_cache_dir() -> Path:
    """$UNIGAME_CACHE, else $XDG_CACHE_HOME/unigame, else ~/.cache/unigame."""
    if os.environ.get("UNIGAME_CACHE"):
        return Path(os.environ["UNIGAME_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "unigame"


def default_base_path(config: BaseConfig) -> Path:
    return default_cache_dir() / f"tiny-janus-{config.fingerprint()}"


def is_complete(path: Path) -> bool:
    return (path / MANIFEST).exists() and (path / "model.safetensors").exists() and (path / "clip").is_dir()


def build_base(
    config: BaseConfig | None = None,
    output: str | Path | None = None,
    force: bool = False,
    progress: bool = True,
) -> Path:
    """Train (or reuse from cache) the tiny Janus base and its CLIP scorer; returns the directory."""
    import torch

    config = config or BaseConfig()
    config.validate()  # before any work
    path = Path(output) if output else default_base_path(config)
    if is_complete(path) and not force:
        return path
    if config.threads:
        torch.set_num_threads(config.threads)

    from unigame.data.generalist import generalist_texts
    from unigame.data.shapes import corpus_texts
    from unigame.eval.base_eval import evaluate_base
    from unigame.models.janus import JanusAdapter
    from unigame.models.text_tokenizer import train_text_tokenizer
    from unigame.models.tiny_janus import build_tiny_janus
    from unigame.pretrain.clip import save_tiny_clip, train_tiny_clip
    from unigame.pretrain.janus import UnderstandingMix, train_janus
    from unigame.pretrain.vision import train_vision
    from unigame.pretrain.vq import train_vq

    timings: dict[str, float] = {}
    start = time.perf_counter()
    texts = corpus_texts(4000, config.seed, config.shapes)
    if config.training.match_fraction or config.training.ask_fraction:
        texts += generalist_texts()  # only then: earlier bases keep their exact tokenizer
    tokenizer = train_text_tokenizer(texts, config.model.vocab_size)
    model = build_tiny_janus(config.model, seed=config.seed)
    adapter = JanusAdapter(model, tokenizer)
    timings["tokenizer_and_build_s"] = time.perf_counter() - start

    stage = time.perf_counter()
    vq_stats = train_vq(
        adapter,
        config.shapes,
        config.training.vq_steps,
        config.training.vq_batch_size,
        config.training.vq_lr,
        config.seed,
        progress,
        reseed_fraction=config.training.vq_reseed_fraction,
    )
    timings["vq_s"] = time.perf_counter() - stage

    stage = time.perf_counter()
    vision_stats = (
        train_vision(
            adapter,
            config.shapes,
            config.training.vision_steps,
            lr=config.training.vision_lr,
            seed=config.seed,
            progress=progress,
        )
        if config.training.vision_steps
        else {}
    )
    timings["vision_s"] = time.perf_counter() - stage

    stage = time.perf_counter()
    janus_stats = train_janus(
        adapter,
        config.shapes,
        config.training.janus_steps,
        config.training.batch_size,
        config.training.janus_lr,
        UnderstandingMix(
            config.training.caption_fraction,
            config.training.match_fraction,
            config.training.ask_fraction,
            config.training.vqa_kinds,
        ),
        freeze_vision=config.training.freeze_vision and config.training.vision_steps > 0,
        generation_lr=config.training.generation_lr,
        generation_max_objects=config.training.generation_max_objects,
        generation_weight=config.training.generation_weight,
        seed=config.seed,
        progress=progress,
    )
    timings["janus_s"] = time.perf_counter() - stage

    stage = time.perf_counter()
    clip = train_tiny_clip(
        tokenizer,
        config.shapes,
        steps=config.training.clip_steps,
        seed=config.seed,
        progress=progress,
    )
    timings["clip_s"] = time.perf_counter() - stage

    staging = path.with_name(path.name + ".partial")
    staging.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(staging)
    tokenizer.save_pretrained(staging)
    save_tiny_clip(clip, tokenizer, staging / "clip", config.shapes.image_size)

    stage = time.perf_counter()
    evaluation = evaluate_base(
        adapter, config.shapes, config.eval_items, seed=config.seed + 1, progress=progress
    )
    timings["eval_s"] = time.perf_counter() - stage
    timings["total_s"] = time.perf_counter() - start

    manifest: dict[str, Any] = {
        "config": asdict(config),
        "fingerprint": config.fingerprint(),
        "timings": timings,
        "final_losses": {"vq": vq_stats, "vision": vision_stats, "janus": janus_stats},
        "evaluation": evaluation,
        "torch_threads": torch.get_num_threads(),
    }
    (staging / MANIFEST).write_text(json.dumps(manifest, indent=2, default=list))
    if path.exists():  # an incomplete earlier attempt, or --force
        import shutil

        shutil.rmtree(path)
    staging.rename(path)  # atomic: a half-built base is never mistaken for a complete one
    return path


def read_manifest(path: str | Path) -> dict[str, Any]:
    return json.loads((Path(path) / MANIFEST).read_text())
