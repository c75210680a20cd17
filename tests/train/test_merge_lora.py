"""model.merge_lora: a saved LoRA merged into the base weights gives the base+adapter model's losses."""

from __future__ import annotations

import pytest
import torch

from unigame.train.trainer import attach_lora, merge_lora


def test_merged_weights_give_the_adapter_models_losses(tmp_path, make_janus, records):
    batch = records[:4]
    pixels = torch.stack([torch.from_numpy(r.image).permute(2, 0, 1).float() / 255 for r in batch])
    questions, answers = [r.question for r in batch], [r.answer for r in batch]
    with_lora = make_janus()
    peft_model = attach_lora(with_lora.model, with_lora.lora_target_modules(), 4, 8.0, 0.0)
    torch.manual_seed(0)
    for name, p in peft_model.named_parameters():
        if "lora_B" in name:
            p.data.normal_(0, 0.5)  # a LoRA that changes the answers (B starts at zero)
    peft_model.save_pretrained(tmp_path / "lora")
    with torch.no_grad():
        expected = with_lora.understanding_loss(pixels, questions, answers)
        base = make_janus().understanding_loss(pixels, questions, answers)
    merged = make_janus()
    merge_lora(merged.model, tmp_path / "lora")
    assert not any("lora" in n for n, _ in merged.model.named_modules())
    with torch.no_grad():
        got = merged.understanding_loss(pixels, questions, answers)
    assert not torch.allclose(expected, base, atol=1e-3)  # the LoRA matters
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_a_missing_lora_directory_is_named(tmp_path, make_janus):
    with pytest.raises((ValueError, OSError), match="no-such-lora"):
        merge_lora(make_janus().model, tmp_path / "no-such-lora")
