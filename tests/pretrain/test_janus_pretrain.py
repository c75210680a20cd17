"""Joint understanding + text-to-image stage: a short run learns, and a pretrained vision encoder
stays frozen when asked (while the aligner and language model train)."""

from __future__ import annotations

import pytest
import torch

from unigame.data.shapes import ShapesConfig, corpus_texts
from unigame.models.janus import JanusAdapter
from unigame.models.text_tokenizer import train_text_tokenizer
from unigame.models.tiny_janus import TinyJanusConfig, build_tiny_janus
from unigame.pretrain.janus import train_janus

MICRO = TinyJanusConfig(vision_hidden=32, vision_heads=2, text_hidden=32, text_heads=2, text_layers=1)


@pytest.fixture(scope="module")
def tokenizer():
    return train_text_tokenizer(corpus_texts(100, 0))


def _changed(adapter: JanusAdapter, before: dict[str, torch.Tensor], prefix: str) -> bool:
    return any(
        not torch.equal(p, before[n]) for n, p in adapter.model.named_parameters() if n.startswith(prefix)
    )


@pytest.mark.parametrize("freeze_vision", [True, False])
def test_freeze_vision_keeps_the_encoder_and_the_vq(tokenizer, freeze_vision: bool) -> None:
    adapter = JanusAdapter(build_tiny_janus(MICRO), tokenizer)
    before = {n: p.detach().clone() for n, p in adapter.model.named_parameters()}
    train_janus(adapter, ShapesConfig(), steps=3, batch_size=4, freeze_vision=freeze_vision, progress=False)
    assert _changed(adapter, before, "model.vision_model.") is not freeze_vision
    assert _changed(adapter, before, "model.aligner.")
    assert _changed(adapter, before, "model.language_model.")
    assert not _changed(adapter, before, "model.vqmodel.")
    # the stage hands the encoder back trainable (post-training decides what to freeze)
    assert all(p.requires_grad for p in adapter.model.model.vision_model.parameters())


def test_short_run_lowers_both_losses(tokenizer) -> None:
    adapter = JanusAdapter(build_tiny_janus(MICRO), tokenizer)
    first = train_janus(adapter, ShapesConfig(), steps=1, batch_size=16, seed=0, progress=False)
    last = train_janus(adapter, ShapesConfig(), steps=40, batch_size=16, lr=3e-3, seed=1, progress=False)
    assert last["understanding_ce"] < first["understanding_ce"]
    assert last["generation_ce"] < first["generation_ce"]


def test_generation_lr_drives_only_the_generation_modules(tokenizer) -> None:
    adapter = JanusAdapter(build_tiny_janus(MICRO), tokenizer)
    before = {n: p.detach().clone() for n, p in adapter.model.named_parameters()}
    train_janus(adapter, ShapesConfig(), steps=3, batch_size=4, lr=1e-30, generation_lr=1e-2, progress=False)
    for prefix in ("model.generation_embeddings.", "model.generation_aligner.", "model.generation_head."):
        assert _changed(adapter, before, prefix), prefix
    # the shared model keeps the (here negligible) joint learning rate
    drift = max(
        (p - before[n]).abs().max().item()
        for n, p in adapter.model.named_parameters()
        if n.startswith("model.language_model.")
    )
    assert drift < 1e-6


def test_generation_scenes_drawn_with_at_most_the_given_objects(tokenizer, monkeypatch) -> None:
    adapter = JanusAdapter(build_tiny_janus(MICRO), tokenizer)
    prompts: list[str] = []
    real_loss = adapter.generation_loss

    def recording_loss(pixels, captions, drop_prompt=0.0):
        prompts.extend(captions)
        return real_loss(pixels, captions, drop_prompt)

    monkeypatch.setattr(adapter, "generation_loss", recording_loss)
    train_janus(adapter, ShapesConfig(), steps=4, batch_size=8, generation_max_objects=1, progress=False)
    assert len(prompts) == 32
    # a single-object caption names one shape and no relation
    assert all(sum(p.count(s) for s in ("circle", "square", "triangle")) == 1 for p in prompts)


def test_mix_without_generalist_tasks_draws_what_earlier_bases_drew() -> None:
    """Bases built before the generalist tasks must rebuild bitwise: the same scenes and items."""
    import numpy as np

    from unigame.data.shapes import caption, sample_vqa
    from unigame.models.sequences import CAPTION_QUESTION
    from unigame.pretrain.janus import UnderstandingMix, sample_understanding_batch

    config = ShapesConfig()
    pixels, questions, answers, _ = sample_understanding_batch(
        np.random.default_rng(3), config, 24, UnderstandingMix(caption_fraction=0.25)
    )
    rng, expected = np.random.default_rng(3), []
    for _ in range(24):  # the earlier sampler: a VQA item, then one draw for the caption question
        scene, question, answer, _ = sample_vqa(rng, config)
        expected.append((CAPTION_QUESTION, caption(scene)) if rng.random() < 0.25 else (question, answer))
    assert list(zip(questions, answers)) == expected
    assert pixels.shape == (24, 3, 32, 32)


def test_generalist_mix_holds_target_kinds_back() -> None:
    import numpy as np

    from unigame.data.generalist import ASK_QUESTION, parse_match_question
    from unigame.models.sequences import CAPTION_QUESTION
    from unigame.pretrain.janus import UnderstandingMix, sample_understanding_batch

    mix = UnderstandingMix(caption_fraction=0.1, match_fraction=0.3, ask_fraction=0.1, vqa_kinds=("colour",))
    _, questions, _, _ = sample_understanding_batch(np.random.default_rng(0), ShapesConfig(), 400, mix)
    match = sum(parse_match_question(q) is not None for q in questions)
    ask = questions.count(ASK_QUESTION)
    described = questions.count(CAPTION_QUESTION)
    vqa = [q for q in questions if q.endswith("?") and parse_match_question(q) is None]
    assert all(q.startswith("What colour") for q in vqa)  # no count, shape, existence or relation
    assert abs(match / 400 - 0.3) < 0.07 and abs(ask / 400 - 0.1) < 0.05 and abs(described / 400 - 0.1) < 0.05
