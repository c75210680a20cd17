"""The challenger's three modes and the two ways of mining hard candidates, each a small class picked once.

Adversaries (where the perturbation δ lives; `build_adversary`):

* `DecoderAdversary` — the paper's Eq. 7 (default). z = Enc_G(x) are the generation branch's
  unit-norm latent tokens (B, N, D); δ = C(z); x̃ = G(z + δ) is a real decoded image; the challenger
  maximises L_C = CE(U(Enc(x̃), q), a) − λ‖δ‖², the gradient flowing through the frozen decoder G
  and the frozen vision encoder Enc to δ. With `residual=True` (`game.residual_decode`) the
  candidate is x̃ = x + G(z + δ) − G(z) instead: the perturbation's effect through the decoder,
  without the VQ's own reconstruction error (for a lossy VQ that error, not δ, dominates G(z + δ)).
* `EmbeddingAdversary` — the official code's mode: δ is added to the understanding tokens
  t = Enc(x) (B, N_u, D_u) and L_C = CE(U(t + δ)) − λ‖δ‖²; no image is ever decoded.
* `NoiseAdversary` — ablation: a random unit direction per token (`NoisePerturber`), no MLP;
  only the budget ε is learned.

Miners (where buffer candidates come from; `build_miner`):

* `ChallengeMiner` (`mining: decoder`) — reuses the challenge forward's perturbed input and its
  per-sample CE: mining costs only the semantic filter.
* `GenerationMiner` (`mining: official`) — the official code's mining: text-to-image from the
  question, with the token-space δ injected into the generation embeddings at every
  autoregressive step; the candidates are the generated images, stored as the latents of the
  generated codes, so replay re-decodes exactly the image that was scored.

Everything here calls only the `UnifiedModel` protocol methods.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from unigame.methods.unigame.filters import FilterResult, SemanticFilter, SemanticScorer, build_filter
from unigame.methods.unigame.perturber import NoisePerturber, Perturber
from unigame.train.protocol import UnifiedModel

__all__ = [
    "Attack",
    "Candidates",
    "ChallengeMiner",
    "DecoderAdversary",
    "EmbeddingAdversary",
    "GenerationMiner",
    "NoiseAdversary",
    "Perturbation",
    "TokenCosineFilter",
    "TokenKeepAll",
    "build_adversary",
    "build_candidate_filter",
    "build_miner",
    "reverse_gradient",
    "tokens_as_stored",
    "tokens_from_latents",
]


@dataclass
class Attack:
    """One challenge forward: the perturbation, the perturbed input, and U's CE on it."""

    delta: Tensor  # (B, N, D) float32 perturbation, ‖δ_t‖ ≤ budget
    perturbed: Tensor  # (B, N, D) z + δ: what a buffer stores
    pixels: Tensor | None  # (B, 3, H, W) decoded x̃ in [0, 1]; None for token-space attacks
    ce: Tensor  # (B,) float32 per-sample CE of U on the perturbed input

    def detach(self) -> Attack:
        pixels = None if self.pixels is None else self.pixels.detach()
        return Attack(self.delta.detach(), self.perturbed.detach(), pixels, self.ce.detach())


@dataclass
class Perturbation:
    """A challenge forward up to the language model: δ, the perturbed input and U's input tokens of it."""

    delta: Tensor  # (B, N, D) float32 perturbation (the regulariser's input)
    perturbed: Tensor  # (B, N, D) z + δ: what a buffer stores
    pixels: Tensor | None  # (B, 3, H, W) decoded x̃ in [0, 1]; None for token-space attacks
    tokens: Tensor  # (B, N_u, D_u) understanding tokens of the perturbed input, differentiable in δ


class _ReverseGradient(torch.autograd.Function):
    """Identity forward; the backward negates the gradient, times a per-row `scale` read at backward time."""

    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, x: Tensor, scale: Tensor | None) -> Tensor:
        ctx.scale = scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, grad: Tensor) -> tuple[Tensor, None]:
        if ctx.scale is None:
            return -grad, None
        return -grad * ctx.scale.view(-1, *([1] * (grad.dim() - 1))).to(grad.dtype), None


def reverse_gradient(x: Tensor, scale: Tensor | None = None) -> Tensor:
    """x in the forward, −∂L/∂x in the backward (times `scale[b]` for row b, when given): one backward
    of a loss the understanding player descends makes the perturber behind x ascend it
    (`game.schedule: simultaneous`). `scale` (B,) may be filled in after the forward: it is read when
    the backward reaches x, so a row's weight in the loss, decided after the forward, can be undone."""
    return _ReverseGradient.apply(x, scale)


# ------------------------------------------------------------------------------------------ replay
def tokens_from_latents(adapter: UnifiedModel, latents: Tensor) -> Tensor:
    """Understanding tokens (K, N_u, D_u) of re-decoded latents z̃ (K, N, D): x̃ = G(z̃), then Enc(x̃).

    G and Enc are frozen, so nothing here records a graph; the understand step then runs these
    tokens through the language model in one mixed batch with the clean ones.
    """
    with torch.no_grad():
        return adapter.visual_tokens(adapter.decode_latents(latents))


def tokens_as_stored(adapter: UnifiedModel, tokens: Tensor) -> Tensor:
    """Token-space candidates are stored as understanding tokens already."""
    return tokens


# ------------------------------------------------------------------------------------- adversaries
class Adversary(Protocol):
    """What the trainer needs from an adversary mode."""

    perturber: nn.Module
    space: str  # "latent" (decodable VQ latents) or "tokens" (understanding tokens)

    def clean(self, adapter: UnifiedModel, pixels: Tensor) -> Tensor: ...

    def perturb(
        self,
        adapter: UnifiedModel,
        clean: Tensor,
        pixels: Tensor | None = None,
        *,
        reverse: Tensor | None = None,
    ) -> Perturbation: ...

    def attack(
        self,
        adapter: UnifiedModel,
        clean: Tensor,
        questions: list[str],
        answers: list[str],
        pixels: Tensor | None = None,
    ) -> Attack: ...

    def replay_tokens(
        self, adapter: UnifiedModel, latents: Tensor, pixels: Tensor | None = None
    ) -> Tensor: ...


class DecoderAdversary:
    """Paper Eq. 7: perturb decodable latents, decode to a real image, attack U through G and Enc.

    With `residual` the buffer stores each item's clean latent z next to z̃ (`stored`), so replay
    rebuilds x + G(z̃) − G(z) without running the VQ encoder again; and G(z) of a challenge batch
    is decoded once, however many challenge steps reuse it. With `images` (`game.replay_images`)
    the buffer stores x̃ itself and replay decodes nothing.
    """

    space = "latent"

    def __init__(self, perturber: Perturber, residual: bool = False, images: bool = False) -> None:
        self.perturber = perturber
        self.residual = residual
        self.images = images
        self._reconstruction: tuple[Tensor, Tensor] | None = None  # (z, G(z)) of the last challenge batch

    def clean(self, adapter: UnifiedModel, pixels: Tensor) -> Tensor:
        """z: (B, N, D) float32 latent tokens of the clean images (frozen encoder, no graph)."""
        with torch.no_grad():
            return adapter.encode_latents(pixels).float()

    def decode(
        self,
        adapter: UnifiedModel,
        perturbed: Tensor,
        pixels: Tensor | None = None,
        clean: Tensor | None = None,
    ) -> Tensor:
        """x̃ = G(z̃), or with `residual` x + G(z̃) − G(z), in [0, 1]; differentiable in z̃.

        `clean`: z = Enc_G(x) when the caller has it (else it is encoded from `pixels`); G(z) is
        decoded once per `clean` tensor and reused while the same tensor comes back.
        """
        decoded = adapter.decode_latents(perturbed)  # (B, 3, H, W)
        if not self.residual:
            return decoded
        if pixels is None:
            raise ValueError("game.residual_decode needs the clean images x of the candidates.")
        if clean is None:
            clean = self.clean(adapter, pixels)
        return (pixels + decoded - self._clean_reconstruction(adapter, clean)).clamp(0, 1)

    def _clean_reconstruction(self, adapter: UnifiedModel, clean: Tensor) -> Tensor:
        """G(z), (B, 3, H, W), no graph; the last batch's is kept (identity of `clean`, which it holds)."""
        if self._reconstruction is None or self._reconstruction[0] is not clean:
            with torch.no_grad():
                self._reconstruction = (clean, adapter.decode_latents(clean))
        return self._reconstruction[1]

    def attack(
        self,
        adapter: UnifiedModel,
        clean: Tensor,
        questions: list[str],
        answers: list[str],
        pixels: Tensor | None = None,
    ) -> Attack:
        delta, perturbed, adversarial = self._decoded(adapter, clean, pixels, None)
        ce = adapter.understanding_loss(adversarial, questions, answers).float()  # (B,) through Enc and U
        return Attack(delta, perturbed, adversarial, ce)

    def perturb(
        self,
        adapter: UnifiedModel,
        clean: Tensor,
        pixels: Tensor | None = None,
        *,
        reverse: Tensor | None = None,
    ) -> Perturbation:
        """δ = C(z), x̃ and Enc(x̃), differentiable in δ; `reverse` (B,): through a gradient reversal at
        δ with that per-row scale (`reverse_gradient`). U's CE of the tokens is `attack`'s CE as far as
        the adapter's `understanding_loss` is `understanding_loss_from_tokens` of `visual_tokens`
        (the protocol's contract; Janus and Emu3 are written so)."""
        delta, perturbed, adversarial = self._decoded(adapter, clean, pixels, reverse)
        return Perturbation(delta, perturbed, adversarial, adapter.visual_tokens(adversarial))

    def _decoded(
        self, adapter: UnifiedModel, clean: Tensor, pixels: Tensor | None, reverse: Tensor | None
    ) -> tuple[Tensor, Tensor, Tensor]:
        """δ (B, N, D), z + δ and x̃ (B, 3, H, W), differentiable in δ."""
        delta = self.perturber(clean)  # (B, N, D) float32, autocast off inside
        perturbed = clean + (
            delta if reverse is None else reverse_gradient(delta, reverse)
        )  # (B, N, D) z + δ
        return delta, perturbed, self.decode(adapter, perturbed, pixels, clean)  # x̃, differentiable

    @property
    def replay_needs_clean_pixels(self) -> bool:
        """Whether replay reads the items' clean images x (residual decoding of stored latents)."""
        return self.residual and not self.images

    def stored(self, perturbed: Tensor, clean: Tensor, pixels: Tensor | None = None) -> Tensor:
        """What the buffer keeps of a candidate: z̃ (B, N, D); with `residual` z̃ and z, (B, 2, N, D);
        with `images` the decoded x̃ (`pixels`, (B, 3, H, W))."""
        if self.images:
            if pixels is None:
                raise ValueError("game.replay_images stores the decoded candidates; pass their pixels.")
            return pixels
        return torch.stack([perturbed, clean], dim=1) if self.residual else perturbed

    @torch.no_grad()
    def replay_pixels(self, adapter: UnifiedModel, stored: Tensor, pixels: Tensor | None = None) -> Tensor:
        """x̃ (K, 3, H, W) of `stored` buffer items (`pixels`: their clean images, for `residual`)."""
        if self.images:
            return stored  # x̃ as the challenge decoded it
        if not self.residual:
            return adapter.decode_latents(stored)
        if pixels is None:
            raise ValueError("game.residual_decode needs the clean images x of the replayed items.")
        perturbed, clean = stored.unbind(dim=1)  # (K, N, D) each
        # Two decoder calls, not one over [z̃; z]: at ε = 0 the two decodings are then bitwise equal
        # and x̃ = x exactly (the ε = 0 control replays the clean images).
        return (pixels + adapter.decode_latents(perturbed) - adapter.decode_latents(clean)).clamp(0, 1)

    def replay_tokens(self, adapter: UnifiedModel, latents: Tensor, pixels: Tensor | None = None) -> Tensor:
        """Understanding tokens of stored items (re-decoded; `pixels` are the items' clean images)."""
        with torch.no_grad():
            return adapter.visual_tokens(self.replay_pixels(adapter, latents, pixels))


class EmbeddingAdversary:
    """Official-code style: δ added to the understanding tokens t = Enc(x); nothing is decoded."""

    space = "tokens"

    def __init__(self, perturber: nn.Module) -> None:
        self.perturber = perturber

    def clean(self, adapter: UnifiedModel, pixels: Tensor) -> Tensor:
        """t: (B, N_u, D_u) float32 understanding tokens of the clean images (frozen encoder)."""
        with torch.no_grad():
            return adapter.visual_tokens(pixels).float()

    def attack(
        self,
        adapter: UnifiedModel,
        clean: Tensor,
        questions: list[str],
        answers: list[str],
        pixels: Tensor | None = None,
    ) -> Attack:
        p = self.perturb(adapter, clean, pixels)
        ce = adapter.understanding_loss_from_tokens(p.tokens, questions, answers).float()  # (B,)
        return Attack(p.delta, p.perturbed, None, ce)

    def perturb(
        self,
        adapter: UnifiedModel,
        clean: Tensor,
        pixels: Tensor | None = None,
        *,
        reverse: Tensor | None = None,
    ) -> Perturbation:
        """δ = C(t) and t̃ = t + δ (U's input itself); `reverse` (B,): through a gradient reversal at δ."""
        delta = self.perturber(clean)  # (B, N_u, D_u) float32
        perturbed = clean + (
            delta if reverse is None else reverse_gradient(delta, reverse)
        )  # (B, N_u, D_u) t̃
        return Perturbation(delta, perturbed, None, perturbed)

    def replay_tokens(self, adapter: UnifiedModel, latents: Tensor, pixels: Tensor | None = None) -> Tensor:
        """Stored t̃ are understanding tokens already."""
        return tokens_as_stored(adapter, latents)


class NoiseAdversary(EmbeddingAdversary):
    """Ablation 'random noise in token space': a `NoisePerturber` (random directions, learned ε only)."""


def _probe(adapter: UnifiedModel, pixels: Tensor, space: str) -> Tensor:
    with torch.no_grad():
        return adapter.encode_latents(pixels) if space == "latent" else adapter.visual_tokens(pixels)


def build_adversary(
    name: str,
    adapter: UnifiedModel,
    sample_pixels: Tensor,
    *,
    eps_max: float,
    eps_init: float,
    budget: str,
    hidden: int | None,
    seed: int,
    residual_decode: bool = False,
    replay_images: bool = False,
) -> DecoderAdversary | EmbeddingAdversary:
    """The adversary of mode `name`, its perturber sized from one probe of `sample_pixels` (1, 3, H, W).

    `budget: auto` resolves to `absolute` for the decoder's unit-norm VQ latents and to `relative`
    for understanding tokens, whose norm is far from 1.
    """
    classes = {"decoder": DecoderAdversary, "embedding": EmbeddingAdversary, "noise": NoiseAdversary}
    if name not in classes:
        raise ValueError(f"game.adversary={name!r} is invalid: allowed {' | '.join(classes)}")
    space = classes[name].space
    if budget == "auto":
        budget = "absolute" if space == "latent" else "relative"
    dim = int(_probe(adapter, sample_pixels, space).shape[-1])  # D of the perturbed tokens
    device = sample_pixels.device
    if name == "noise":
        perturber: nn.Module = NoisePerturber(eps_max, eps_init, budget, seed=seed)
    else:
        width = hidden if hidden is not None else max(dim, 64)
        perturber = Perturber(dim, width, eps_max, eps_init, budget)
    if name == "decoder":
        return DecoderAdversary(perturber.to(device), residual=residual_decode, images=replay_images)
    return classes[name](perturber.to(device))


# --------------------------------------------------------------------------------- token filters
def _check_tokens(clean: Tensor, candidate: Tensor, texts: Sequence[str]) -> int:
    if clean.shape != candidate.shape or clean.dim() != 3:
        raise ValueError(
            f"clean tokens {tuple(clean.shape)} and candidate tokens {tuple(candidate.shape)} must both be "
            "(B, N, D) of the same shape."
        )
    if len(texts) != clean.shape[0]:
        raise ValueError(f"got {len(texts)} texts for {clean.shape[0]} candidates.")
    return clean.shape[0]


class TokenCosineFilter:
    """`cosine` filter for token-space candidates: keep t̃ if mean_t cos(t_t, t̃_t) ≥ threshold.

    Token-space candidates have no image to show a CLIP model; comparing them with their own clean
    tokens is what the official code's cosine filter does.
    """

    def __init__(self, threshold: float = 0.9) -> None:
        self.threshold = float(threshold)

    @torch.no_grad()
    def __call__(self, clean: Tensor, candidate: Tensor, texts: Sequence[str]) -> FilterResult:
        _check_tokens(clean, candidate, texts)
        cos = F.cosine_similarity(clean.float(), candidate.float(), dim=-1).mean(-1)  # (B,)
        return FilterResult(keep=cos >= self.threshold, scores=cos)


class TokenKeepAll:
    """`none` filter for token-space candidates: keep everything (scores 1)."""

    def __call__(self, clean: Tensor, candidate: Tensor, texts: Sequence[str]) -> FilterResult:
        batch = _check_tokens(clean, candidate, texts)
        return FilterResult(
            keep=torch.ones(batch, dtype=torch.bool, device=candidate.device),
            scores=torch.ones(batch, device=candidate.device),
        )


def build_candidate_filter(
    name: str,
    has_pixels: bool,
    scorer: SemanticScorer | None,
    *,
    clip_threshold: float,
    clip_calibration: str,
    clip_margin: float,
    cosine_threshold: float,
) -> SemanticFilter:
    """The semantic filter for the candidates a miner produces: pixel filters for images, token ones otherwise."""
    if has_pixels:
        options = {
            "clip": {"threshold": clip_threshold, "calibration": clip_calibration, "margin": clip_margin},
            "cosine": {"threshold": cosine_threshold},
            "none": {},
        }
        return build_filter(name, scorer, **options[name])
    if name == "cosine":
        return TokenCosineFilter(cosine_threshold)
    if name == "none":
        return TokenKeepAll()
    raise ValueError(
        f"game.filter={name!r} needs images, but the candidates are understanding tokens; use filter "
        "cosine or none, or game.mining official."
    )


# ------------------------------------------------------------------------------------------ miners
@dataclass
class Candidates:
    """One mining batch: what the buffer would store, its hardness, and what the filter compares."""

    latents: (
        Tensor  # (B, ...) z̃ (decoder; [z̃, z] when residual), t̃ (token space) or generated images' VQ latents
    )
    hardness: Tensor  # (B,) per-sample CE of U on the candidates
    clean_view: Tensor  # clean pixels (B, 3, H, W) or clean tokens (B, N_u, D_u)
    candidate_view: Tensor  # candidate pixels or tokens, same layout as clean_view
    pixels: Tensor | None  # (B, 3, H, W) candidate images when there are any


class ChallengeMiner:
    """`mining: decoder`: the challenge forward's perturbed inputs are the candidates (no extra forward)."""

    def __init__(self, adversary: DecoderAdversary | EmbeddingAdversary) -> None:
        self.adversary = adversary
        self.has_pixels = adversary.space == "latent"

    def candidates(
        self,
        adapter: UnifiedModel,
        pixels: Tensor,
        clean: Tensor,
        attack: Attack,
        questions: list[str],
        answers: list[str],
    ) -> Candidates:
        if attack.pixels is not None:
            latents = self.adversary.stored(attack.perturbed, clean, attack.pixels)  # z̃, [z̃, z] or x̃
            return Candidates(latents, attack.ce, pixels, attack.pixels, attack.pixels)
        return Candidates(attack.perturbed, attack.ce, clean, attack.perturbed, None)

    def replay_tokens(self, adapter: UnifiedModel, latents: Tensor, pixels: Tensor | None = None) -> Tensor:
        return self.adversary.replay_tokens(adapter, latents, pixels)


class GenerationMiner:
    """`mining: official`: text-to-image from the question with δ injected at every generation step.

    The adapter must have `generate_latents(prompts, guidance, temperature, generator,
    embedding_hook)` (see `unigame.train.protocol.UnifiedModel`): the latents of the generated codes,
    (B, N, D). They are what the buffer stores; the candidate image is their `decode_latents`, which
    is what the hardness is scored on and what replay re-decodes, so the item replayed is the item
    scored. (Storing `encode_latents(image)` instead would replay G(Enc_G(image)), a lossy round
    trip: another image.) `embedding_hook` maps the embeddings fed at each autoregressive step
    (B', L, D) to perturbed ones. The perturber (token space, D = the language model's width) is the
    one the challenge step trains; mining only reads it.
    """

    has_pixels = True

    def __init__(
        self,
        adversary: EmbeddingAdversary,
        generator: torch.Generator,
        guidance: float,
        temperature: float,
    ) -> None:
        self.adversary = adversary
        self.generator = generator
        self.guidance = guidance
        self.temperature = temperature

    @staticmethod
    def check_adapter(adapter: UnifiedModel) -> None:
        """Fail at setup when the adapter cannot generate latents with a perturbation injected."""
        name = type(adapter).__name__
        generate = getattr(adapter, "generate_latents", None)
        if not callable(generate):
            raise TypeError(
                f"game.mining='official' needs {name}.generate_latents(prompts, guidance, temperature, "
                "generator, embedding_hook) returning the (B, N, D) latents of the generated codes (the buffer "
                "stores them and replay decodes them with decode_latents); add it, or use game.mining decoder."
            )
        params = inspect.signature(generate).parameters
        missing = [p for p in ("embedding_hook", "guidance", "temperature", "generator") if p not in params]
        if missing:
            raise TypeError(
                f"game.mining='official' needs {name}.generate_latents(..., {', '.join(missing)}=...); add "
                "the parameter(s) or use game.mining decoder."
            )

    def _inject(self, embeds: Tensor) -> Tensor:
        return embeds + self.adversary.perturber(embeds).to(embeds.dtype)  # (B', L, D)

    @torch.no_grad()
    def candidates(
        self,
        adapter: UnifiedModel,
        pixels: Tensor,
        clean: Tensor,
        attack: Attack,
        questions: list[str],
        answers: list[str],
    ) -> Candidates:
        latents = adapter.generate_latents(
            questions,
            guidance=self.guidance,
            temperature=self.temperature,
            generator=self.generator,
            embedding_hook=self._inject,
        ).float()  # (B, N, D) the generated codes' latents: what the buffer stores
        images = adapter.decode_latents(latents).float()  # (B, 3, H, W) exactly what replay re-decodes
        hardness = adapter.understanding_loss(images, questions, answers).float()  # (B,) on those images
        view = images  # what the filter compares with the clean image, at its size
        if view.shape[-2:] != pixels.shape[-2:]:
            view = F.interpolate(view, size=pixels.shape[-2:], mode="bilinear")
        return Candidates(latents, hardness, pixels, view, images)

    def replay_tokens(self, adapter: UnifiedModel, latents: Tensor, pixels: Tensor | None = None) -> Tensor:
        """Understanding tokens of stored latents, re-decoded; generated images have no clean image."""
        return tokens_from_latents(adapter, latents)


def build_miner(
    name: str,
    adversary: DecoderAdversary | EmbeddingAdversary,
    adapter: UnifiedModel,
    generator: torch.Generator,
    guidance: float,
    temperature: float,
) -> ChallengeMiner | GenerationMiner:
    """The miner of mode `name` (`decoder` or `official`)."""
    if name == "decoder":
        return ChallengeMiner(adversary)
    if name == "official":
        if adversary.space != "tokens":
            raise ValueError("game.mining='official' needs a token-space adversary (embedding or noise).")
        GenerationMiner.check_adapter(adapter)
        return GenerationMiner(adversary, generator, guidance, temperature)
    raise ValueError(f"game.mining={name!r} is invalid: allowed decoder | official")
