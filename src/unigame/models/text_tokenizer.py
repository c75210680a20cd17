"""A byte-level BPE text tokenizer trained offline on ShapesWorld text.

Byte-level BPE round-trips any string exactly (no unknown tokens), and on the small ShapesWorld
vocabulary every template word and answer becomes a single token.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

from unigame.models.tiny_janus import SPECIAL_TOKENS

if TYPE_CHECKING:  # pragma: no cover
    from transformers import PreTrainedTokenizerFast


def train_text_tokenizer(texts: Iterable[str], vocab_size: int = 512) -> PreTrainedTokenizerFast:
    """Train the tokenizer; special tokens get ids 0..5 in `SPECIAL_TOKENS` order."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="<pad>",
        bos_token="<bos>",
        eos_token="<eos>",
        additional_special_tokens=list(SPECIAL_TOKENS[3:]),
    )
    for expected_id, token in enumerate(SPECIAL_TOKENS):
        if fast.convert_tokens_to_ids(token) != expected_id:  # the model config hard-wires these ids
            raise RuntimeError(
                f"special token {token!r} got id {fast.convert_tokens_to_ids(token)}, expected {expected_id}"
            )
    return fast
