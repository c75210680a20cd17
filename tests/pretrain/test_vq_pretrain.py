"""VQ pretraining: the re-seed window and learning-rate schedule pinned, and a short run that learns."""

from __future__ import annotations

import math

import pytest
import torch

from unigame.data.shapes import ShapesConfig, corpus_texts
from unigame.models.janus import JanusAdapter
from unigame.models.text_tokenizer import train_text_tokenizer
from unigame.models.tiny_janus import TinyJanusConfig, build_tiny_janus
from unigame.pretrain.vq import lr_factor, reseed_until, train_vq


def test_reseed_window_is_the_first_sixty_percent_by_default() -> None:
    assert reseed_until(1000) == 600
    assert reseed_until(1) == 0
    assert reseed_until(1000, 1.0) == 1000


def test_fraction_one_keeps_the_learning_rate_constant() -> None:
    assert all(lr_factor(step, 500, 1.0) == 1.0 for step in range(500))


@pytest.mark.parametrize(
    "step, expected",
    [(0, 1.0), (599, 1.0), (600, 1.0), (800, 0.5), (1000, 0.0), (1200, 0.0)],
)
def test_lr_is_constant_while_reseeding_then_decays_to_zero(step: int, expected: float) -> None:
    assert math.isclose(lr_factor(step, 1000), expected, abs_tol=1e-12)


def test_short_run_learns_and_never_reseeds_after_the_window(monkeypatch) -> None:
    tokenizer = train_text_tokenizer(corpus_texts(100, 0))
    adapter = JanusAdapter(build_tiny_janus(TinyJanusConfig(codebook_size=4096)), tokenizer)
    codebook = adapter.model.model.vqmodel.quantize.embedding.weight
    snapshots: dict[int, torch.Tensor] = {}
    original_quantize = adapter.quantize
    calls = {"n": 0}

    def quantize_and_snapshot(latents: torch.Tensor) -> torch.Tensor:
        snapshots[calls["n"]] = codebook.detach().clone()
        calls["n"] += 1
        return original_quantize(latents)

    monkeypatch.setattr(adapter, "quantize", quantize_and_snapshot)
    stats = train_vq(
        adapter, ShapesConfig(), steps=140, batch_size=8, lr=3e-3, seed=0, progress=False, reseed_fraction=0.5
    )
    # 4096 codes and 8 x 64 tokens a step: most codes stay dead, so without the window they would be
    # re-seeded again at step 119, once the usage of the step-19 re-seeds has decayed
    reseeded = [s for s in range(1, 140) if not _same_rows(snapshots[s], snapshots[s - 1])]
    assert reseeded and max(reseeded) < 70
    assert stats["recon"] < 0.5
    assert stats["used_codes"] > 0


def _same_rows(a: torch.Tensor, b: torch.Tensor) -> bool:
    # Adam moves every used row a little each step; a re-seed replaces rows wholesale
    return bool(((a - b).norm(dim=1) < 0.05).all())
