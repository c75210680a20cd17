"""ClipScorer: offline loading, torch preprocessing, differentiable features, clear load errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from unigame.data.shapes import ShapesConfig, caption, corpus_texts, render, sample_scene
from unigame.models.clip import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, ClipScorer, read_image_preprocessing
from unigame.models.text_tokenizer import train_text_tokenizer
from unigame.pretrain.clip import (
    clip_tokenizer,
    save_tiny_clip,
    scorer_from_model,
    tiny_clip_config,
    to_pixels,
)

CFG = ShapesConfig()


@pytest.fixture(scope="module")
def tok():
    return train_text_tokenizer(corpus_texts(100, 0))


@pytest.fixture(scope="module")
def model(tok):
    from transformers import CLIPModel

    torch.manual_seed(0)
    cfg = tiny_clip_config(len(clip_tokenizer(tok)), 32, hidden_size=32, num_layers=1, projection_dim=16)
    return CLIPModel(cfg).eval()


@pytest.fixture(scope="module")
def ckpt(tok, model, tmp_path_factory) -> Path:
    return save_tiny_clip(model, tok, tmp_path_factory.mktemp("clip") / "tiny", 32)


def _copy(ckpt: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "copy"
    shutil.copytree(ckpt, dst)
    return dst


def _batch(n: int, seed: int = 0) -> tuple[torch.Tensor, list[str]]:
    rng = np.random.default_rng(seed)
    scenes = [sample_scene(rng, CFG) for _ in range(n)]
    return to_pixels([render(s, CFG) for s in scenes]), [caption(s) for s in scenes]


def test_round_trip_gives_identical_features(tok, model, ckpt) -> None:
    pixels, texts = _batch(4)
    mem = scorer_from_model(model, tok)
    disk = ClipScorer.from_pretrained(ckpt)
    assert disk.image_size == (32, 32)
    assert disk.mean.flatten().tolist() == pytest.approx(OPENAI_CLIP_MEAN)
    with torch.no_grad():
        assert torch.equal(mem.image_features(pixels), disk.image_features(pixels))
        assert torch.equal(mem.text_features(texts), disk.text_features(texts))


def test_features_normalised_and_similarity_in_range(ckpt) -> None:
    scorer = ClipScorer.from_pretrained(ckpt)
    pixels, texts = _batch(5)
    with torch.no_grad():
        img = scorer.image_features(pixels)
        txt = scorer.text_features(texts)
        sim = scorer.text_image_similarity(pixels, texts)
    assert img.shape == (5, 16) and txt.shape == (5, 16)
    assert torch.allclose(img.norm(dim=-1), torch.ones(5), atol=1e-5)
    assert torch.allclose(txt.norm(dim=-1), torch.ones(5), atol=1e-5)
    assert sim.shape == (5,) and sim.dtype == torch.float32
    assert bool(((sim >= -1 - 1e-5) & (sim <= 1 + 1e-5)).all())
    assert torch.allclose(sim, (img * txt).sum(-1))
    with pytest.raises(ValueError, match="5 images but 2 texts"):
        scorer.text_image_similarity(pixels, texts[:2])
    with pytest.raises(TypeError, match="list of strings"):
        scorer.text_features("a red circle")
    with pytest.raises(ValueError, match=r"\[B, 3, H, W\]"):
        scorer.image_features(pixels[0])


def test_gradient_flows_to_pixels_and_scorer_stays_frozen(ckpt) -> None:
    scorer = ClipScorer.from_pretrained(ckpt)
    pixels, texts = _batch(3)
    pixels = pixels.clone().requires_grad_(True)
    scorer.text_image_similarity(pixels, texts).sum().backward()
    assert pixels.grad is not None and torch.isfinite(pixels.grad).all() and pixels.grad.abs().sum() > 0
    assert all(not p.requires_grad and p.grad is None for p in scorer.model.parameters())
    scorer.train()  # a parent module switching to train mode must not enable dropout here
    assert not scorer.model.training


def test_other_image_sizes_are_resized_in_torch(ckpt) -> None:
    scorer = ClipScorer.from_pretrained(ckpt)
    pixels, _ = _batch(2)
    big = torch.nn.functional.interpolate(pixels, size=(64, 64), mode="nearest")
    with torch.no_grad():
        a = scorer.image_features(pixels)
        b = scorer.image_features(big)
    assert b.shape == a.shape
    # nearest 2x upsampling then bilinear 2x downsampling returns the original pixels exactly
    assert torch.allclose(a, b, atol=1e-5)


def test_image_similarity(ckpt) -> None:
    scorer = ClipScorer.from_pretrained(ckpt)
    pixels, _ = _batch(3)
    with torch.no_grad():
        same = scorer.image_similarity(pixels, pixels)
    assert torch.allclose(same, torch.ones(3), atol=1e-5)


@pytest.mark.parametrize(
    ("remove", "message"),
    [
        (["config.json"], "missing config.json"),
        (["tokenizer.json", "tokenizer_config.json"], "missing its tokenizer: none of tokenizer.json"),
        (["model.safetensors"], "missing model.safetensors"),
    ],
)
def test_missing_file_error_names_path_and_file(ckpt, tmp_path, remove, message) -> None:
    d = _copy(ckpt, tmp_path)
    for name in remove:
        (d / name).unlink()
    with pytest.raises(FileNotFoundError, match=message) as info:
        ClipScorer.from_pretrained(d)
    assert str(d) in str(info.value)


def test_missing_directory(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        ClipScorer.from_pretrained(tmp_path / "nope")


def test_without_preprocessor_config_falls_back_to_vision_config(ckpt, tmp_path) -> None:
    d = _copy(ckpt, tmp_path)
    (d / "preprocessor_config.json").unlink()
    scorer = ClipScorer.from_pretrained(d)
    assert scorer.image_size == (32, 32)
    assert scorer.std.flatten().tolist() == pytest.approx(OPENAI_CLIP_STD)


def test_read_image_preprocessing_siglip_style(tmp_path) -> None:
    proc = {
        "do_resize": True,
        "size": {"height": 48, "width": 40},
        "image_mean": [0.5] * 3,
        "image_std": [0.5] * 3,
    }
    (tmp_path / "preprocessor_config.json").write_text(json.dumps(proc))
    assert read_image_preprocessing(tmp_path, 224) == ((48, 40), (0.5,) * 3, (0.5,) * 3)
    proc = {"do_center_crop": True, "crop_size": 30, "size": {"shortest_edge": 36}, "do_normalize": False}
    (tmp_path / "preprocessor_config.json").write_text(json.dumps(proc))
    assert read_image_preprocessing(tmp_path) == ((30, 30), (0.0,) * 3, (1.0,) * 3)


def test_siglip_checkpoint_loads(tok, tmp_path) -> None:
    """Any local SigLIP directory works too (SigLIP pools the last position, hence max-length padding)."""
    from transformers import SiglipConfig, SiglipModel

    torch.manual_seed(0)
    common = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2}
    cfg = SiglipConfig(
        text_config=dict(common, vocab_size=len(tok), max_position_embeddings=16),
        vision_config=dict(common, image_size=16, patch_size=8),
    )
    SiglipModel(cfg).save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    proc = {"size": {"height": 16, "width": 16}, "image_mean": [0.5] * 3, "image_std": [0.5] * 3}
    (tmp_path / "preprocessor_config.json").write_text(json.dumps(proc))
    scorer = ClipScorer.from_pretrained(tmp_path)
    pixels, texts = _batch(2)
    with torch.no_grad():
        sim = scorer.text_image_similarity(pixels, texts)
    assert scorer.image_size == (16, 16) and scorer.max_length == 16
    assert sim.shape == (2,) and torch.isfinite(sim).all()
