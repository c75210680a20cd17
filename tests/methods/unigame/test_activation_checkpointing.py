"""`model.gradient_checkpointing`: the language model's layers are recomputed in the backward, the
gradients are the ones without it, and no frozen module's dropout is switched on."""

from __future__ import annotations

import pytest
import torch

from unigame.methods.unigame.trainer import UniGameTrainer

from .conftest import ToyUnifiedModel, small_config


def _understand_once(tmp_path, make_janus, records, checkpointing: bool):
    cfg = small_config(steps=1, enabled=False)
    cfg.model.lora_dropout = 0.0
    cfg.model.gradient_checkpointing = checkpointing
    trainer = UniGameTrainer(cfg, tmp_path / str(checkpointing), make_janus(), None, records)
    trainer.setup()
    layer = dict(trainer.peft_model.named_modules())["base_model.model.model.language_model.layers.0"]
    calls = []
    layer.self_attn.register_forward_hook(lambda *_: calls.append(1))
    batch = trainer.batches.batch([0, 1, 2, 3])
    assert trainer.understand_step(batch, trainer.adapter.visual_tokens(batch.pixels), {})
    grads = {n: p.grad.clone() for n, p in trainer.peft_model.named_parameters() if p.requires_grad}
    trainer.cleanup()
    return layer, len(calls), grads


def test_checkpointing_recomputes_the_layers_and_keeps_the_gradients(tmp_path, make_janus, records):
    _, plain_calls, plain = _understand_once(tmp_path, make_janus, records, checkpointing=False)
    layer, calls, checkpointed = _understand_once(tmp_path, make_janus, records, checkpointing=True)
    assert (plain_calls, calls) == (1, 2)  # forward, then recomputed in the backward
    assert plain.keys() == checkpointed.keys() and plain
    for name, grad in plain.items():
        torch.testing.assert_close(checkpointed[name], grad, msg=name)
    assert layer.training and layer.gradient_checkpointing
    frozen = [n for n, m in layer.named_modules() if n and m.training and "lora_dropout" not in n]
    assert frozen == []  # only the layer's own flag is on: no dropout below it


def test_checkpointing_needs_a_transformers_model(tmp_path, records):
    cfg = small_config(steps=1, enabled=False)
    cfg.model.gradient_checkpointing = True
    trainer = UniGameTrainer(cfg, tmp_path / "toy", ToyUnifiedModel(), None, records)
    with pytest.raises(ValueError, match="model.gradient_checkpointing=true needs a transformers model"):
        trainer.setup()
