"""The Ask-Solve-Generate tests reuse the training-infrastructure tests' tiny random Janus, toy model and records."""

from __future__ import annotations

from ...train.conftest import make_janus, records, text_tokenizer, toy_model  # noqa: F401 - fixtures
