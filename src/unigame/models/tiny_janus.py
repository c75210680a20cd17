"""A tiny `JanusForConditionalGeneration` built in code, sized for a laptop CPU.

It is the same class as Janus-Pro (SigLIP-style vision encoder + aligner for understanding, a VQ
autoencoder + generation head for image generation, one Llama decoder in between), so everything
that runs on it runs through the code path that serves real Janus-Pro checkpoints.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from transformers import JanusConfig, JanusForConditionalGeneration

# The text tokenizer reserves these ids (see `unigame.models.text_tokenizer`).
SPECIAL_TOKENS = ("<pad>", "<bos>", "<eos>", "<image_placeholder>", "<begin_of_image>", "<end_of_image>")


@dataclass
class TinyJanusConfig:
    """Sizes of the tiny Janus. Validated before anything is built."""

    image_size: int = 32
    patch_size: int = 8  # vision patch: the understanding branch sees (32/8)^2 = 16 tokens
    vq_downsample: int = 4  # VQ grid: the generation branch writes (32/4)^2 = 64 tokens
    vision_hidden: int = 128
    vision_layers: int = 2
    vision_heads: int = 4
    text_hidden: int = 128
    text_layers: int = 3
    text_heads: int = 4
    vocab_size: int = 512
    codebook_size: int = 1024
    codebook_dim: int = 8
    vq_channels: int = 32  # GroupNorm(32) inside the VQ needs multiples of 32
    max_positions: int = 160
    init_std: float = 0.1

    def validate(self) -> None:
        errors: list[str] = []
        if self.image_size not in (32, 64):
            errors.append(f"image_size={self.image_size} is invalid: allowed 32 or 64")
        if self.patch_size not in (4, 8):
            errors.append(
                f"patch_size={self.patch_size} is invalid: allowed 4 or 8 (the VQ downsamples by 2 per level)"
            )
        elif self.image_size % self.patch_size:
            errors.append(
                f"image_size={self.image_size} cannot be tiled by patch_size={self.patch_size}: "
                "choose an image size divisible by the patch size"
            )
        for name in ("vision_hidden", "text_hidden"):
            heads = getattr(self, name.replace("hidden", "heads"))
            value = getattr(self, name)
            if value <= 0 or heads <= 0 or value % heads:
                errors.append(
                    f"{name}={value} must be a positive multiple of {name.replace('hidden', 'heads')}={heads}"
                )
        if self.vq_channels <= 0 or self.vq_channels % 32:
            errors.append(f"vq_channels={self.vq_channels} is invalid: must be a positive multiple of 32")
        if self.codebook_size < 2:
            errors.append(f"codebook_size={self.codebook_size} is invalid: must be >= 2")
        if self.vocab_size <= len(SPECIAL_TOKENS):
            errors.append(
                f"vocab_size={self.vocab_size} is invalid: must exceed {len(SPECIAL_TOKENS)} special tokens"
            )
        num_tokens = max(self.num_image_tokens, self.num_understanding_tokens)
        if self.max_positions < num_tokens + 32:
            errors.append(
                f"max_positions={self.max_positions} is too small: need >= {num_tokens + 32} "
                f"({num_tokens} image tokens + text)"
            )
        if errors:
            raise ValueError("Invalid TinyJanusConfig:\n  - " + "\n  - ".join(errors))

    @property
    def num_image_tokens(self) -> int:
        """Tokens the generation branch writes per image (the VQ grid)."""
        return (self.image_size // max(self.vq_downsample, 1)) ** 2

    @property
    def num_understanding_tokens(self) -> int:
        """Tokens the understanding branch reads per image (the vision patch grid)."""
        return (self.image_size // max(self.patch_size, 1)) ** 2

    def to_dict(self) -> dict:
        return asdict(self)


def janus_config(cfg: TinyJanusConfig, image_token_id: int = 3) -> JanusConfig:
    """The `JanusConfig` of the tiny model (no download; everything from code)."""
    from transformers import JanusConfig, JanusVisionConfig, JanusVQVAEConfig, LlamaConfig

    cfg.validate()
    levels = int(math.log2(cfg.vq_downsample)) + 1  # each level after the first halves the resolution
    vision = JanusVisionConfig(
        hidden_size=cfg.vision_hidden,
        num_hidden_layers=cfg.vision_layers,
        num_attention_heads=cfg.vision_heads,
        image_size=cfg.image_size,
        patch_size=cfg.patch_size,
        projection_dim=cfg.text_hidden,
        depth=2,
        num_image_tokens=cfg.num_image_tokens,
        mlp_ratio=4.0,
    )
    vq = JanusVQVAEConfig(
        embed_dim=cfg.codebook_dim,
        num_embeddings=cfg.codebook_size,
        latent_channels=cfg.vq_channels * 2,
        base_channels=cfg.vq_channels,
        channel_multiplier=[1] * (levels - 1) + [2],
        num_res_blocks=1,
        projection_dim=cfg.text_hidden,
        image_token_embed_dim=cfg.text_hidden,
        num_hidden_layers=2,
    )
    text = LlamaConfig(
        vocab_size=cfg.vocab_size,
        hidden_size=cfg.text_hidden,
        intermediate_size=4 * cfg.text_hidden,
        num_hidden_layers=cfg.text_layers,
        num_attention_heads=cfg.text_heads,
        num_key_value_heads=cfg.text_heads,
        max_position_embeddings=cfg.max_positions,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
    )
    return JanusConfig(
        text_config=text.to_dict(),
        vision_config=vision.to_dict(),
        vq_config=vq.to_dict(),
        image_token_id=image_token_id,
        tie_word_embeddings=False,
    )


def build_tiny_janus(cfg: TinyJanusConfig | None = None, seed: int = 0) -> JanusForConditionalGeneration:
    """Build and re-initialise the tiny Janus from code.

    HF initialises every Linear/Embedding with std 0.02 and the Janus wrapper ignores
    `initializer_range`; at hidden sizes ~128 that is far too small and the model never learns
    to bind the question to the image. We re-initialise at ~1/sqrt(hidden) instead (the VQ keeps
    its own init: it is trained separately as an autoencoder).
    """
    import torch
    from transformers import JanusForConditionalGeneration

    cfg = cfg or TinyJanusConfig()
    config = janus_config(cfg)
    torch.manual_seed(seed)
    model = JanusForConditionalGeneration(config)
    _reinit(model, cfg.init_std)
    return model


def _reinit(model: torch.nn.Module, std: float) -> None:
    import torch
    from torch import nn

    vq = model.model.vqmodel
    vq_params = {id(p) for p in vq.parameters()}
    with torch.no_grad():
        for module in model.modules():
            weight = getattr(module, "weight", None)
            if weight is None or id(weight) in vq_params:
                continue
            if isinstance(module, (nn.Linear, nn.Conv2d)):
                nn.init.normal_(module.weight, 0.0, std)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Embedding):
                nn.init.normal_(module.weight, 0.0, 1.0)
