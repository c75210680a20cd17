"""The fault-injection suite reuses the engine tests' tiny random Janus, records and scorer."""

from __future__ import annotations

from ..train.conftest import make_janus, palette_scorer, records, text_tokenizer  # noqa: F401 - fixtures
