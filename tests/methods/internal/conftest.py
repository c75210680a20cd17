"""The internal-supervision tests reuse the training-infrastructure tests' tiny random Janus and records."""

from __future__ import annotations

from ...train.conftest import make_janus, records, text_tokenizer  # noqa: F401 - fixtures
