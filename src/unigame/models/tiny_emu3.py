"""A tiny `Emu3ForConditionalGeneration` and its tokenizer, built in code (no download).

Same classes as Emu3-Chat/Gen (a video VQ tokenizer shared by both branches, one Llama-style
decoder over text and visual tokens), so whatever runs on it runs through the code path that
serves real Emu3 checkpoints. It is random: it proves the adapter and the game on a second real
architecture, not image quality.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from unigame.models.emu3 import EMU3_TOKENS

if TYPE_CHECKING:  # pragma: no cover
    from transformers import Emu3Config, Emu3ForConditionalGeneration, PreTrainedTokenizerFast

__all__ = ["TinyEmu3Config", "build_tiny_emu3", "emu3_config", "train_emu3_tokenizer"]

# Emu3's own text special tokens (the Qwen-derived tokenizer's pad, BOS and EOS).
PAD, BOS, EOS = "<|endoftext|>", "<|extra_203|>", "<|extra_204|>"


@dataclass
class TinyEmu3Config:
    """Sizes of the tiny Emu3. Validated before anything is built."""

    image_size: int = 32
    vq_downsample: int = 4  # spatial factor: 32 px -> an 8x8 grid, 64 codes (+8 EOL cells)
    temporal_factor: int = 4  # Emu3's value: an image is a clip of 4 identical frames
    codebook_size: int = 256
    codebook_dim: int = 4  # Emu3's embed_dim
    vq_channels: int = 32  # GroupNorm(32) inside the VQ needs multiples of 32
    text_hidden: int = 64
    text_layers: int = 2
    text_heads: int = 4
    text_kv_heads: int = 2  # grouped-query attention, as Emu3
    text_vocab: int = 384  # BPE part of the vocabulary; the visual tokens come on top
    max_positions: int = 256

    def validate(self) -> None:
        errors: list[str] = []
        if self.vq_downsample < 2 or self.vq_downsample & (self.vq_downsample - 1):
            errors.append(f"vq_downsample={self.vq_downsample} is invalid: must be a power of 2, >= 2")
        elif self.image_size % self.vq_downsample:
            errors.append(
                f"image_size={self.image_size} is not a multiple of vq_downsample={self.vq_downsample}"
            )
        if self.temporal_factor < 1 or self.temporal_factor & (self.temporal_factor - 1):
            errors.append(f"temporal_factor={self.temporal_factor} is invalid: must be a power of 2")
        if self.vq_channels <= 0 or self.vq_channels % 32:
            errors.append(f"vq_channels={self.vq_channels} is invalid: must be a positive multiple of 32")
        if self.codebook_size < 2:
            errors.append(f"codebook_size={self.codebook_size} is invalid: must be >= 2")
        if self.text_heads <= 0 or self.text_hidden % self.text_heads:
            errors.append(
                f"text_hidden={self.text_hidden} must be a positive multiple of text_heads={self.text_heads}"
            )
        if self.text_kv_heads <= 0 or self.text_heads % self.text_kv_heads:
            errors.append(f"text_kv_heads={self.text_kv_heads} must divide text_heads={self.text_heads}")
        block = self.image_block_length
        if self.max_positions < block + 32:
            errors.append(
                f"max_positions={self.max_positions} is too small: need >= {block + 32} "
                f"({block} image-block tokens + text)"
            )
        if errors:
            raise ValueError("Invalid TinyEmu3Config:\n  - " + "\n  - ".join(errors))

    @property
    def grid(self) -> int:
        return self.image_size // max(self.vq_downsample, 1)

    @property
    def image_block_length(self) -> int:
        """Tokens of one image block: header (~6), h*(w+1) grid cells, EOF, end."""
        return self.grid * (self.grid + 1) + 8


def train_emu3_tokenizer(texts: Iterable[str], cfg: TinyEmu3Config | None = None) -> PreTrainedTokenizerFast:
    """A byte-level BPE over `texts` with Emu3's special tokens and one visual token per code.

    Ids: pad, BOS, EOS, the image-block tokens, then the visual tokens 0..K-1, then BPE merges.
    The image-block tokens are also named as tokenizer attributes (`boi_token`, `eof_token`, ...),
    as transformers' `Emu3Processor` reads them.
    """
    from unigame.models.text_tokenizer import train_bpe_tokenizer

    cfg = cfg or TinyEmu3Config()
    cfg.validate()
    t = EMU3_TOKENS
    visual = [t.visual.format(k) for k in range(cfg.codebook_size)]
    specials = [PAD, BOS, EOS, *t.names(), *visual]
    return train_bpe_tokenizer(
        texts,
        cfg.text_vocab + len(specials),
        specials,
        pad_token=PAD,
        bos_token=BOS,
        eos_token=EOS,
        extra_special_tokens={
            "image_token": t.image,
            "boi_token": t.image_start,
            "eoi_token": t.image_end,
            "image_wrapper_token": t.image_wrapper,
            "eof_token": t.eof,
        },
    )


def emu3_config(cfg: TinyEmu3Config, tokenizer: PreTrainedTokenizerFast) -> Emu3Config:
    """The `Emu3Config` of the tiny model; `vocabulary_map` is the tokenizer's vocabulary, as in Emu3."""
    from transformers import Emu3Config, Emu3TextConfig, Emu3VQVAEConfig

    cfg.validate()
    levels = int(math.log2(cfg.vq_downsample)) + 1  # each level after the first halves the resolution
    multiplier = [1] * (levels - 1) + [2]
    vq = Emu3VQVAEConfig(
        codebook_size=cfg.codebook_size,
        embed_dim=cfg.codebook_dim,
        latent_channels=cfg.codebook_dim,
        temporal_downsample_factor=cfg.temporal_factor,
        base_channels=cfg.vq_channels,
        channel_multiplier=multiplier,
        num_res_blocks=1,
        attn_resolutions=[],  # attention only in the middle blocks
        hidden_size=cfg.vq_channels * multiplier[-1],  # the middle blocks' attention width
    )
    text = Emu3TextConfig(
        vocab_size=len(tokenizer),
        hidden_size=cfg.text_hidden,
        intermediate_size=4 * cfg.text_hidden,
        num_hidden_layers=cfg.text_layers,
        num_attention_heads=cfg.text_heads,
        num_key_value_heads=cfg.text_kv_heads,
        max_position_embeddings=cfg.max_positions,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        attention_dropout=0.0,
    )
    return Emu3Config(
        vq_config=vq.to_dict(), text_config=text.to_dict(), vocabulary_map=tokenizer.get_vocab()
    )


def build_tiny_emu3(
    tokenizer: PreTrainedTokenizerFast, cfg: TinyEmu3Config | None = None, seed: int = 0
) -> Emu3ForConditionalGeneration:
    """Build the tiny Emu3 from code with transformers' own initialisation, in eval mode."""
    import torch
    from transformers import Emu3ForConditionalGeneration

    config = emu3_config(cfg or TinyEmu3Config(), tokenizer)
    torch.manual_seed(seed)
    return Emu3ForConditionalGeneration(config).eval()
