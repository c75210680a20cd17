"""The architecture-agnostic proof: a second unified model, unlike Janus (one colour tokenizer shared by
both branches, a transposed-conv decoder, a hand-written transformer), trained by the same trainer."""

from __future__ import annotations

import pytest
import torch

from unigame.methods.unigame.trainer import UniGameTrainer
from unigame.train.protocol import UnifiedModel, check_unified_model

from .conftest import PaletteScorer, ToyUnifiedModel, small_config


def test_toy_model_implements_only_the_protocol():
    toy = ToyUnifiedModel()
    assert isinstance(toy, UnifiedModel)
    check_unified_model(toy)
    assert not hasattr(toy, "peft_model") and type(toy.model).__module__ != "transformers"


def test_incomplete_model_is_rejected_by_name():
    class Half:
        model = torch.nn.Linear(2, 2)

        def encode_latents(self, pixels):
            return pixels

    with pytest.raises(TypeError, match="missing understanding_loss, visual_tokens"):
        check_unified_model(Half())


@pytest.mark.parametrize(
    "game",
    [
        {"filter": "clip", "percentile": 0.0, "eps_max": 0.05, "eps_init": 0.02},  # paper path on a new model
        {"adversary": "embedding", "mining": "official", "filter": "cosine"},  # official mining via the hook
    ],
    ids=["decoder-clip-buffer", "official-mining"],
)
def test_second_architecture_is_trained_by_the_same_trainer(tmp_path, records, game):
    toy = ToyUnifiedModel()
    trainer = UniGameTrainer(small_config(steps=2, **game), tmp_path / "toy", toy, PaletteScorer(), records)
    trainer.setup()
    frozen_before = {
        n: p.detach().clone() for n, p in trainer.peft_model.named_parameters() if not p.requires_grad
    }
    trainable_before = trainer.trainable_state()
    trainer.train()
    trainer.save_checkpoint()
    trainer.cleanup()
    after = trainer.trainable_state()
    lora = [k for k in after if k.startswith("lora.") and "lora_B" in k]
    assert lora and all(k.split(".")[-4] in {"q", "k", "v", "o", "fc1", "fc2"} for k in lora)
    assert any(not torch.equal(trainable_before[k], after[k]) for k in lora)
    assert not torch.equal(trainable_before["perturber.gate"], after["perturber.gate"])
    for name, param in trainer.peft_model.named_parameters():
        if not param.requires_grad:
            assert torch.equal(frozen_before[name], param), name  # decoder, codebook, embeddings untouched
    if game.get("mining") != "official":
        assert len(trainer.buffer) > 0  # faithful decoded candidates passed the colour filter
        assert trainer.buffer.state_dict()["latents"].shape[1:] == (64, 3)  # the toy's latents, stored as is
