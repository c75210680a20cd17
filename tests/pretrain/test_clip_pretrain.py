"""Tiny CLIP on ShapesWorld: tokenizer/pooling contract, a short training run, saving, evaluation."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from unigame.data.shapes import ShapesConfig, corpus_texts
from unigame.models.clip import ClipScorer
from unigame.models.text_tokenizer import train_text_tokenizer
from unigame.pretrain.clip import (
    CLIP_EOT_TOKEN,
    clip_tokenizer,
    evaluate_scorer,
    main,
    sample_batch,
    save_tiny_clip,
    scorer_from_model,
    tiny_clip_config,
    train_tiny_clip,
)

CFG = ShapesConfig()


@pytest.fixture(scope="module")
def tok():
    return train_text_tokenizer(corpus_texts(100, 0))


def _small_config(tok, image_size: int = 32):
    return tiny_clip_config(
        len(clip_tokenizer(tok)), image_size, hidden_size=32, num_layers=1, projection_dim=16
    )


@pytest.fixture(scope="module")
def trained(tok):
    losses: list[float] = []
    model = train_tiny_clip(
        tok,
        CFG,
        steps=60,
        batch_size=32,
        seed=0,
        lr=3e-3,
        progress=False,
        clip_config=_small_config(tok),
        on_step=lambda _step, loss: losses.append(loss),
    )
    return model, losses


def test_clip_tokenizer_keeps_ids_and_wraps_text(tok) -> None:
    ct = clip_tokenizer(tok)
    assert clip_tokenizer(ct) is ct
    assert (ct.pad_token_id, ct.bos_token_id) == (0, 1)
    assert ct.eos_token == CLIP_EOT_TOKEN and ct.eos_token_id == len(tok) == len(ct) - 1
    text = "a large red circle to the left of a small blue square"
    plain = tok(text)["input_ids"]
    assert ct(text)["input_ids"] == [1, *plain, ct.eos_token_id]
    long = ct(["red " * 200], truncation=True, max_length=48)["input_ids"][0]
    assert len(long) == 48 and long[-1] == ct.eos_token_id


def test_tiny_clip_config_ids_and_sizes(tok) -> None:
    n = len(clip_tokenizer(tok))
    cfg = tiny_clip_config(n)
    t, v = cfg.text_config, cfg.vision_config
    assert (t.pad_token_id, t.bos_token_id, t.eos_token_id) == (0, 1, n - 1)
    assert t.max_position_embeddings == 48 and cfg.projection_dim == 64
    assert (v.image_size, v.patch_size) == (32, 8)
    assert tiny_clip_config(n, 64).vision_config.patch_size == 16
    with pytest.raises(ValueError, match="eos_token_id=2"):
        tiny_clip_config(n, eos_token_id=2)
    with pytest.raises(ValueError, match="not a multiple"):
        tiny_clip_config(n, 32, patch_size=5)


def test_text_pooling_reads_the_end_of_text_token(tok) -> None:
    """transformers pools CLIP text at eos_token_id; check it is our appended token's position."""
    from transformers import CLIPModel

    torch.manual_seed(0)
    ct = clip_tokenizer(tok)
    model = CLIPModel(_small_config(tok)).eval()
    enc = ct(
        ["a red circle", "a large blue square to the left of a small red circle"],
        padding=True,
        return_tensors="pt",
    )
    with torch.no_grad():
        out = model.text_model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"])
    eos_pos = enc["attention_mask"].sum(1) - 1
    assert (enc["input_ids"][torch.arange(2), eos_pos] == ct.eos_token_id).all()
    assert torch.equal(out.pooler_output, out.last_hidden_state[torch.arange(2), eos_pos])


def test_sample_batch_unique_captions_and_small_vocab_fallback() -> None:
    rng = np.random.default_rng(0)
    _, images, caps = sample_batch(rng, CFG, 32, augment_prob=1.0)
    assert len(set(caps)) == 32 and images[0].shape == (32, 32, 3) and images[0].dtype == np.uint8
    tiny = ShapesConfig(max_objects=1, colours=("red",), shapes=("circle",), sizes=("small",))
    _, _, caps = sample_batch(rng, tiny, 4)
    assert caps == ["a small red circle"] * 4


def test_short_training_run_lowers_the_loss(trained) -> None:
    model, losses = trained
    assert len(losses) == 60 and all(np.isfinite(losses))
    assert np.mean(losses[-10:]) < np.mean(losses[:10]) - 0.4  # measured: 3.5 -> 2.6 (seed 0)
    assert not model.training


def test_training_is_seeded(tok) -> None:
    kw = dict(steps=2, batch_size=8, seed=3, lr=1e-3, progress=False, clip_config=_small_config(tok))
    a = train_tiny_clip(tok, CFG, **kw)
    b = train_tiny_clip(tok, CFG, **kw)
    for (name, pa), (_, pb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.equal(pa, pb), name


def test_save_loads_offline_with_transformers_and_scorer(tok, trained, tmp_path) -> None:
    from transformers import AutoTokenizer, CLIPModel

    model, _ = trained
    out = save_tiny_clip(model, tok, tmp_path / "clip", 32)
    save_tiny_clip(model, tok, out, 32)  # overwriting an existing checkpoint works and leaves no temp dirs
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clip"]
    assert (out / "model.safetensors").is_file() and not (out / "pytorch_model.bin").exists()
    proc = json.loads((out / "preprocessor_config.json").read_text())
    assert proc["crop_size"] == {"height": 32, "width": 32} and proc["do_normalize"] is True
    loaded = CLIPModel.from_pretrained(out, local_files_only=True)
    for (name, pa), (_, pb) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(pa, pb), name
    assert AutoTokenizer.from_pretrained(out, local_files_only=True)("a red circle")["input_ids"][-1] == len(
        tok
    )
    scorer = ClipScorer.from_pretrained(out)
    mem = scorer_from_model(model, tok)
    rng = np.random.default_rng(1)
    _, images, caps = sample_batch(rng, CFG, 4)
    pixels = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() / 255
    with torch.no_grad():
        assert torch.equal(
            scorer.text_image_similarity(pixels, caps), mem.text_image_similarity(pixels, caps)
        )
    with pytest.raises(ValueError, match="image_size=64"):
        save_tiny_clip(model, tok, tmp_path / "bad", 64)


def test_evaluate_scorer_figures(tok, trained) -> None:
    model, _ = trained
    scorer = scorer_from_model(model, tok)
    for shift in ("noise", "blur", None):
        r = evaluate_scorer(scorer, CFG, n_batches=2, batch_size=16, shift=shift)
        assert r["n_pairs"] == 32
        for key in ("retrieval_acc", "pair_acc", "hard_pair_acc"):
            assert 0.0 <= r[key] <= 1.0
        for key in ("matched_cos", "mismatched_cos", "hard_mismatched_cos"):
            assert -1.0 <= r[key] <= 1.0
    # even 60 tiny steps separate a scene's caption from another scene's
    assert r["matched_cos"] > r["mismatched_cos"] + 0.1  # measured (clean): 0.71 vs 0.37


def test_cli_trains_saves_and_reports(tmp_path, capsys) -> None:
    report = main(
        [
            "--out",
            str(tmp_path / "c"),
            "--steps",
            "2",
            "--batch-size",
            "8",
            "--eval-batches",
            "1",
            "--no-progress",
        ]
    )
    assert (tmp_path / "c" / "config.json").is_file()
    assert set(report) >= {"train_seconds", "clean", "noise@0.5", "blur@1.0"}
    assert json.loads(capsys.readouterr().out)["clean"]["n_pairs"] == 32
