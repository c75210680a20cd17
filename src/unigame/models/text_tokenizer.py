"""A byte-level BPE text tokenizer trained offline on ShapesWorld text.

Byte-level BPE round-trips any string exactly (no unknown tokens), and on the small ShapesWorld
vocabulary every template word and answer becomes a single token.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

from unigame.models.tiny_janus import SPECIAL_TOKENS

if TYPE_CHECKING:  # pragma: no cover
    from transformers import PreTrainedTokenizerFast


def train_text_tokenizer(texts: Iterable[str], vocab_size: int = 512) -> PreTrainedTokenizerFast:
    """Train the tiny Janus's tokenizer; special tokens get ids 0..5 in `SPECIAL_TOKENS` order."""
    return train_bpe_tokenizer(
        texts,
        vocab_size,
        SPECIAL_TOKENS,
        pad_token="<pad>",
        bos_token="<bos>",
        eos_token="<eos>",
        extra_special_tokens=list(SPECIAL_TOKENS[3:]),
    )


def train_bpe_tokenizer(
    texts: Iterable[str],
    vocab_size: int,
    special_tokens: Sequence[str],
    *,
    pad_token: str,
    bos_token: str,
    eos_token: str,
    extra_special_tokens: list[str] | dict[str, str],
) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE whose `special_tokens` get ids 0..len-1 in order, then BPE merges.

    `vocab_size` counts the special tokens too. A dict of `extra_special_tokens` also names them
    as tokenizer attributes (`tokenizer.boi_token`, `tokenizer.boi_token_id`), as model
    processors expect.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(special_tokens),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token=pad_token,
        bos_token=bos_token,
        eos_token=eos_token,
        extra_special_tokens=extra_special_tokens,
    )
    for expected_id, token in enumerate(special_tokens):
        if fast.convert_tokens_to_ids(token) != expected_id:  # model configs hard-wire these ids
            raise RuntimeError(
                f"special token {token!r} got id {fast.convert_tokens_to_ids(token)}, expected {expected_id}"
            )
    return fast
