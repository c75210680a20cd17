from pathlib import Path

import pytest
import torch

from unigame.models.tiny_janus import TinyJanusConfig


@pytest.fixture(autouse=True, scope="session")
def _single_thread_torch():
    """Tiny tensors on a 2-core CI machine: one thread avoids synchronisation overhead."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


# A tiny untrained Janus saved like a real model directory (weights, tokenizer, `clip/`), shared by the
# evaluation, export and lmms-eval tests: building it takes ~2 s, so it is made once per session.
SMALL = TinyJanusConfig(
    vision_hidden=32, vision_heads=2, text_hidden=32, text_heads=2, text_layers=1, vq_channels=32
)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    import torch
    from transformers import CLIPModel

    from unigame.data.shapes import corpus_texts
    from unigame.models.text_tokenizer import train_text_tokenizer
    from unigame.models.tiny_janus import build_tiny_janus
    from unigame.pretrain.clip import clip_tokenizer, save_tiny_clip, tiny_clip_config

    path = tmp_path_factory.mktemp("eval-model") / "tiny-janus"
    tokenizer = train_text_tokenizer(corpus_texts(200, 0), vocab_size=SMALL.vocab_size)
    build_tiny_janus(SMALL, seed=0).save_pretrained(path)
    tokenizer.save_pretrained(path)
    torch.manual_seed(0)
    config = tiny_clip_config(
        len(clip_tokenizer(tokenizer)), 32, hidden_size=32, num_layers=1, projection_dim=16
    )
    save_tiny_clip(CLIPModel(config).eval(), tokenizer, path / "clip", 32)
    return path
