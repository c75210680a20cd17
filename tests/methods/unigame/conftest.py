"""The method tests reuse the training-infrastructure tests' tiny random Janus, toy model, records and scorer."""

from __future__ import annotations

from ...train.conftest import (  # noqa: F401 - fixtures and helpers
    PaletteScorer,
    ToyUnifiedModel,
    make_janus,
    palette_scorer,
    records,
    small_config,
    text_tokenizer,
    toy_model,
)
