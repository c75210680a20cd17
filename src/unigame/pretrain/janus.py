"""The base's joint stage: train the tiny Janus's understanding and text-to-image branches together.

Understanding sees ShapesWorld VQA plus a few whole-scene descriptions (the caption question), so
the model can also caption; more captions cost question accuracy at a fixed budget. Text-to-image
learns the VQ codes of the same scenes from their captions, with 10% of prompts dropped for
classifier-free guidance. The VQ stays frozen, and so does a pretrained vision encoder.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
import torch
from tqdm.auto import tqdm

from unigame.data.generalist import ask_item, match_item
from unigame.data.pixels import images_to_pixels
from unigame.data.shapes import ShapesConfig, caption, render, sample_scene, sample_vqa
from unigame.models.janus import CAPTION_QUESTION, JanusAdapter
from unigame.pretrain.schedule import cosine_decay


@dataclass(frozen=True)
class UnderstandingMix:
    """What the joint stage's understanding items ask, as fractions of the batch.

    The rest of the items are VQA of `vqa_kinds` (None: every kind). A generalist base holds the
    target task's kinds back and learns captions, caption matching and asking instead.
    """

    caption_fraction: float = 0.1
    match_fraction: float = 0.0
    ask_fraction: float = 0.0
    vqa_kinds: Sequence[str] | None = None


def sample_understanding_batch(
    rng: np.random.Generator, config: ShapesConfig, n: int, mix: UnderstandingMix
) -> tuple[torch.Tensor, list[str], list[str], list[str]]:
    """Pixels (n, 3, H, W) in [0,1], questions, answers and captions of fresh scenes."""
    images, questions, answers, captions = [], [], [], []
    for _ in range(n):
        scene, question, answer, _ = sample_vqa(rng, config, mix.vqa_kinds)
        text = caption(scene)
        # One draw decides the item's task; with no match or ask items this is the draw (and the
        # random stream) bases built before those tasks existed used.
        draw = rng.random()
        if draw < mix.caption_fraction:
            question, answer = CAPTION_QUESTION, text
        elif draw < mix.caption_fraction + mix.match_fraction:
            question, answer = match_item(scene, rng, config)
        elif draw < mix.caption_fraction + mix.match_fraction + mix.ask_fraction:
            question, answer = ask_item(scene, rng, config)
        images.append(render(scene, config))
        questions.append(question)
        answers.append(answer)
        captions.append(text)
    pixels = images_to_pixels(images)
    return pixels, questions, answers, captions


def train_janus(
    adapter: JanusAdapter,
    config: ShapesConfig,
    steps: int,
    batch_size: int = 32,
    lr: float = 1e-3,
    mix: UnderstandingMix | None = None,
    generation_weight: float = 1.0,
    freeze_vision: bool = False,
    generation_lr: float | None = None,
    generation_max_objects: int | None = None,
    seed: int = 0,
    progress: bool = True,
) -> dict[str, float]:
    """Joint understanding + generation training with warm-up and cosine decay.

    `generation_lr` gives the generation-only modules (image-token embeddings, their aligner and
    the generation head) their own peak learning rate; the shared language model keeps `lr`.
    `generation_max_objects` draws the text-to-image scenes separately, with at most that many
    objects, instead of reusing the understanding scenes.
    """
    mix = mix or UnderstandingMix()
    model = adapter.model
    model.model.vqmodel.requires_grad_(False)
    # A pretrained vision encoder stays frozen here, as Janus keeps its SigLIP frozen while the
    # language model learns to read it; training it through the answer loss erases what it learnt.
    model.model.vision_model.requires_grad_(not freeze_vision)
    trainable = [p for p in model.parameters() if p.requires_grad]
    generation_modules = [
        model.model.generation_embeddings,
        model.model.generation_aligner,
        model.model.generation_head,
    ]
    generation_ids = {id(p) for module in generation_modules for p in module.parameters()}
    groups = [
        {"params": [p for p in trainable if id(p) not in generation_ids], "lr": lr},
        {
            "params": [p for p in trainable if id(p) in generation_ids],
            "lr": lr if generation_lr is None else generation_lr,
        },
    ]
    optimizer = torch.optim.AdamW(groups, weight_decay=0.0)
    generation_config = (
        replace(
            config,
            min_objects=min(config.min_objects, generation_max_objects),
            max_objects=generation_max_objects,
        )
        if generation_max_objects is not None
        else None
    )
    warmup = max(1, steps // 20)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda s: min(1.0, (s + 1) / warmup) * cosine_decay(s, steps),
    )
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    model.train()
    model.model.vqmodel.eval()
    if freeze_vision:
        model.model.vision_model.eval()
    stats: dict[str, float] = {}
    bar = tqdm(range(steps), desc="base: understanding + generation", disable=not progress)
    for step in bar:
        pixels, questions, answers, captions = sample_understanding_batch(rng, config, batch_size, mix)
        und_loss = adapter.understanding_loss(pixels, questions, answers).mean()
        if generation_config is not None and generation_weight:
            scenes = [sample_scene(rng, generation_config) for _ in range(batch_size)]
            pixels = images_to_pixels([render(s, generation_config) for s in scenes])
            captions = [caption(s) for s in scenes]
        gen_loss = (
            adapter.generation_loss(pixels, captions, drop_prompt=0.1).mean()
            if generation_weight
            else torch.zeros(())
        )
        loss = und_loss + generation_weight * gen_loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, 1.0)
        optimizer.step()
        schedule.step()
        stats = {"understanding_ce": und_loss.item(), "generation_ce": gen_loss.item()}
        if step % 10 == 0:
            bar.set_postfix(und=f"{stats['understanding_ce']:.3f}", gen=f"{stats['generation_ce']:.3f}")
    model.eval()
    model.model.vision_model.requires_grad_(True)
    return stats
