"""Vision-encoder pretraining: per-patch labels pinned on known scenes, and a short run that learns."""

from __future__ import annotations

import pytest
import torch

from unigame.data.shapes import Scene, ShapeObject, ShapesConfig, corpus_texts
from unigame.models.janus import JanusAdapter
from unigame.models.text_tokenizer import train_text_tokenizer
from unigame.models.tiny_janus import TinyJanusConfig, build_tiny_janus
from unigame.pretrain.vision import NUM_PATCH_CLASSES, patch_labels, train_vision


def test_patch_labels_place_each_object_in_its_centre_patch() -> None:
    scene = Scene(
        objects=(
            ShapeObject("circle", "red", "small", x=0.1, y=0.1),  # cell (0, 0)
            ShapeObject("triangle", "cyan", "large", x=0.9, y=0.6),  # column 3, row 2 -> 11
        )
    )
    labels = patch_labels([scene], grid=4)
    assert labels.shape == (1, 16)
    # class = 1 + (shape * 6 + colour) * 2 + size, shapes (circle, square, triangle), palette order
    assert labels[0, 0].item() == 1 + (0 * 6 + 0) * 2 + 0
    assert labels[0, 11].item() == 1 + (2 * 6 + 5) * 2 + 1 == NUM_PATCH_CLASSES - 1
    assert int((labels != 0).sum()) == 2


def test_patch_labels_clamp_the_right_and_bottom_edges() -> None:
    scene = Scene(objects=(ShapeObject("square", "blue", "small", x=1.0, y=1.0),))
    assert patch_labels([scene], grid=4)[0, 15].item() == 1 + (1 * 6 + 2) * 2


@pytest.fixture(scope="module")
def adapter() -> JanusAdapter:
    tokenizer = train_text_tokenizer(corpus_texts(100, 0))
    model = build_tiny_janus(
        TinyJanusConfig(vision_hidden=32, vision_heads=2, text_hidden=32, text_heads=2, text_layers=1)
    )
    return JanusAdapter(model, tokenizer)


def test_short_run_lowers_the_patch_loss_and_trains_only_the_vision_encoder(adapter) -> None:
    before = {n: p.detach().clone() for n, p in adapter.model.named_parameters()}
    first = train_vision(adapter, ShapesConfig(), steps=1, batch_size=32, seed=0, progress=False)
    last = train_vision(adapter, ShapesConfig(), steps=60, batch_size=32, lr=3e-3, seed=1, progress=False)
    assert last["patch_ce"] < 0.5 * first["patch_ce"]
    changed = {n for n, p in adapter.model.named_parameters() if not torch.equal(p, before[n])}
    assert changed and all(n.startswith("model.vision_model.") for n in changed)
