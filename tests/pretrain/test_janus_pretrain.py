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
