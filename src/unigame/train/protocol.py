"""What the game needs from a unified multimodal model: the adapter protocol, as a typing.Protocol.

A user with another UMM writes one class with these methods and nothing else; `UniGameTrainer`
calls only these. Images are float tensors (B, 3, H, W) in [0, 1]; losses are per sample (B,).
The game never imports a model family: `unigame.models.janus.JanusAdapter` is one implementation,
and `tests/train/test_protocol.py` trains a structurally different one.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol, runtime_checkable

import torch
from torch import Tensor, nn

__all__ = [
    "REQUIRED_METHODS",
    "SELF_GENERATION_METHODS",
    "SELF_PLAY_METHODS",
    "UnifiedModel",
    "check_unified_model",
]


@runtime_checkable
class UnifiedModel(Protocol):
    """One model that understands (image + question -> answer) and generates (text -> image).

    `model` is the `nn.Module` holding every weight (LoRA is injected into it in place); the
    modules named by `lora_target_modules()` (a regex over `model.named_modules()`) are the only
    ones that learn. Decoding must be differentiable: the decoder-constrained adversary's gradient
    flows through `decode_latents` and `understanding_loss` to the perturbation.

    Optional methods, used when present:

    * ``fp32_modules() -> list[nn.Module]`` — the modules `decode_latents` runs (decoder, its input
      convolution, the codebook). With ``model.precision: bf16`` the trainer stores every other
      frozen weight in bf16 and leaves these in float32; without the method the decoder is stored
      in bf16 too (the trainer warns), and a small perturbation of the latents is lost in rounding.
    * ``generate_latents(prompts, guidance, temperature, generator, embedding_hook) -> Tensor`` —
      text-to-image as (B, N, D) latents of the sampled codes, which `decode_latents` turns into
      the images. Needed by ``game.mining: official``: the buffer stores these latents and replay
      re-decodes them, so the image scored at mining is the image replayed (re-encoding a
      generated image would store a lossy round trip instead).
    """

    model: nn.Module

    def understanding_loss(self, pixels: Tensor, questions: list[str], answers: list[str]) -> Tensor:
        """Per-sample CE (B,) of the answers; differentiable w.r.t. the pixels. Must equal
        `understanding_loss_from_tokens(visual_tokens(pixels), ...)`: `game.schedule: simultaneous`
        runs the two halves apart, to put perturbed and clean items in one language-model batch."""
        ...

    def visual_tokens(self, pixels: Tensor) -> Tensor:
        """(B, 3, H, W) -> (B, N_u, D_u) tokens where image features enter the language model."""
        ...

    def understanding_loss_from_tokens(
        self, tokens: Tensor, questions: list[str], answers: list[str]
    ) -> Tensor:
        """Per-sample CE (B,) given visual tokens (B, N_u, D_u); differentiable w.r.t. the tokens."""
        ...

    def answer(self, pixels: Tensor, questions: list[str]) -> list[str]:
        """Greedy answers, one string per image."""
        ...

    def encode_latents(self, pixels: Tensor) -> Tensor:
        """(B, 3, H, W) -> (B, N, D) decodable latent tokens of the generation branch."""
        ...

    def decode_latents(self, latents: Tensor) -> Tensor:
        """(B, N, D) latents -> (B, 3, H, W) pixels in [0, 1]; differentiable.

        Decode in float32 with autocast off (``torch.autocast(device_type, enabled=False)`` and
        ``latents.float()``), also when called under bf16 autocast: bf16 keeps 8 mantissa bits and
        rounds a 1% offset of a unit-norm latent away. List the modules it runs in `fp32_modules`.
        """
        ...

    def generate_images(self, prompts: list[str]) -> Tensor:
        """Text-to-image: (B, 3, H, W) pixels in [0, 1]."""
        ...

    def caption(self, pixels: Tensor) -> list[str]:
        """A description of each image."""
        ...

    def lora_target_modules(self) -> str | list[str]:
        """The modules LoRA wraps (a regex string or a list of module-name suffixes)."""
        ...


REQUIRED_METHODS: tuple[str, ...] = (
    "understanding_loss",
    "visual_tokens",
    "understanding_loss_from_tokens",
    "answer",
    "encode_latents",
    "decode_latents",
    "generate_images",
    "caption",
    "lora_target_modules",
)

# What training the generation branch on its own samples needs (internal supervision): sample
# codes, decode them, and the teacher-forced CE of given codes.
SELF_GENERATION_METHODS: tuple[str, ...] = ("generate_codes", "decode_codes", "generation_loss_from_codes")

# What Ask-Solve-Generate's three roles need: sampled answers (per-row temperature and top-p), greedy
# answers with per-token entropies (STE), teacher-forced answer logits (policy gradients and the KL
# to the frozen model), and text-to-image sampling plus the generation NLL of a real image.
SELF_PLAY_METHODS: tuple[str, ...] = (
    "sample_answers",
    "answer_entropies",
    "answer_token_logits",
    "generate_codes",
    "decode_codes",
    "generation_loss",
)

# The official-style miner passes this to `generate_latents(..., embedding_hook=...)`: it maps the
# generation embeddings fed at each autoregressive step, (B', L, D) -> (B', L, D).
EmbeddingHook = Callable[[Tensor], Tensor]


def check_unified_model(adapter: object) -> None:
    """Fail early, naming every missing piece, when an object does not implement the protocol."""
    missing = [name for name in REQUIRED_METHODS if not callable(getattr(adapter, name, None))]
    if not isinstance(getattr(adapter, "model", None), nn.Module):
        missing.append("model (an nn.Module holding the weights)")
    if missing:
        raise TypeError(
            f"{type(adapter).__name__} does not implement the unified-model protocol: missing "
            f"{', '.join(missing)} (see unigame.train.protocol.UnifiedModel)."
        )


def module_device(module: nn.Module) -> torch.device:
    """The device of a module's first parameter (CPU for a parameterless module)."""
    first = next(module.parameters(), None)
    return torch.device("cpu") if first is None else first.device
