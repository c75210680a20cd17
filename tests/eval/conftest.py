"""The tiny untrained Janus (`tiny_model_dir`, in tests/conftest.py) as an adapter and its CLIP scorer,
shared by the evaluation tests."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def tiny_adapter(tiny_model_dir):
    from unigame.models.janus import JanusAdapter

    return JanusAdapter.from_pretrained(tiny_model_dir)


@pytest.fixture(scope="session")
def tiny_scorer(tiny_model_dir):
    from unigame.models.clip import ClipScorer

    return ClipScorer.from_pretrained(tiny_model_dir / "clip")
