"""Adversary modes and miners on the tiny random Janus: budgets, gradient paths, the generation hook."""

from __future__ import annotations

import pytest
import torch

from unigame.methods.unigame.adversary import (
    GenerationMiner,
    NoiseAdversary,
    TokenCosineFilter,
    TokenKeepAll,
    build_adversary,
    build_candidate_filter,
    build_miner,
)
from unigame.methods.unigame.perturber import NoisePerturber, Perturber

QUESTIONS = ["Is there a red circle?", "What colour is the square?"]
ANSWERS = ["yes", "blue"]


def _adversary(adapter, name: str, budget: str = "auto", eps_max: float = 0.02):
    pixels = torch.rand(1, 3, 32, 32)
    return build_adversary(
        name, adapter, pixels, eps_max=eps_max, eps_init=eps_max / 2, budget=budget, hidden=None, seed=0
    )


@pytest.mark.parametrize("name", ["decoder", "embedding", "noise"])
def test_delta_norm_is_within_eps_max_per_token_in_every_mode(make_janus, name):
    adapter = make_janus()
    adversary = _adversary(adapter, name, budget="absolute")
    with torch.no_grad():  # push the gate to its top: ε → ε_max
        adversary.perturber.gate.fill_(20.0)
    pixels = torch.rand(2, 3, 32, 32)
    clean = adversary.clean(adapter, pixels)
    attack = adversary.attack(adapter, clean, QUESTIONS, ANSWERS)
    norms = attack.delta.norm(dim=-1)  # (B, N)
    assert norms.max() <= 0.02 * (1 + 1e-5)
    assert norms.min() > 0.019  # the budget is used, not collapsed
    assert attack.ce.shape == (2,) and attack.ce.dtype == torch.float32
    assert (attack.pixels is None) == (name != "decoder")


def test_auto_budget_is_absolute_for_latents_and_relative_for_tokens(make_janus):
    adapter = make_janus()
    decoder = _adversary(adapter, "decoder")
    embedding = _adversary(adapter, "embedding")
    assert decoder.perturber.budget == "absolute"  # Janus VQ latent tokens are unit-norm
    assert embedding.perturber.budget == "relative"
    pixels = torch.rand(2, 3, 32, 32)
    tokens = embedding.clean(adapter, pixels)
    delta = embedding.attack(adapter, tokens, QUESTIONS, ANSWERS).delta
    bound = embedding.perturber.eps_max * tokens.norm(dim=-1)  # ‖δ_t‖ ≤ ε_max·‖t_t‖
    assert (delta.norm(dim=-1) <= bound * (1 + 1e-5)).all()
    assert isinstance(_adversary(adapter, "noise"), NoiseAdversary)
    assert isinstance(_adversary(adapter, "noise").perturber, NoisePerturber)
    assert isinstance(decoder.perturber, Perturber)


def test_decoder_gradient_reaches_delta_through_decoder_and_vision_encoder(make_janus):
    adapter = make_janus()
    adapter.model.requires_grad_(False)
    adversary = _adversary(adapter, "decoder")
    clean = adversary.clean(adapter, torch.rand(2, 3, 32, 32))  # (B, 64, 8)
    assert clean.shape == (2, 64, 8) and not clean.requires_grad
    attack = adversary.attack(adapter, clean, QUESTIONS, ANSWERS)
    attack.delta.retain_grad()
    attack.ce.mean().backward()
    assert attack.delta.grad is not None and attack.delta.grad.abs().sum() > 0
    for name, param in adversary.perturber.named_parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0, name
    assert all(p.grad is None for p in adapter.model.parameters())  # frozen: no gradient stored


def test_token_filters():
    clean = torch.randn(3, 4, 8)
    candidate = clean.clone()
    candidate[1] = -candidate[1]  # opposite tokens: cosine -1
    result = TokenCosineFilter(0.9)(clean, candidate, ["a", "b", "c"])
    assert result.keep.tolist() == [True, False, True]
    assert TokenKeepAll()(clean, candidate, ["a", "b", "c"]).keep.all()
    with pytest.raises(ValueError, match="needs images"):
        build_candidate_filter(
            "clip",
            False,
            None,
            clip_threshold=0.6,
            clip_calibration="absolute",
            clip_margin=0.1,
            cosine_threshold=0.9,
        )


def test_official_miner_injects_delta_at_every_generation_step(make_janus):
    adapter = make_janus()
    adversary = _adversary(adapter, "embedding")
    generator = torch.Generator().manual_seed(0)
    miner = build_miner("official", adversary, adapter, generator, guidance=2.0, temperature=1.0)
    assert isinstance(miner, GenerationMiner) and miner.has_pixels
    calls = []
    original = miner._inject

    def counting(embeds):
        calls.append(embeds.shape)
        return original(embeds)

    miner._inject = counting
    pixels = torch.rand(2, 3, 32, 32)
    candidates = miner.candidates(adapter, pixels, None, None, QUESTIONS, ANSWERS)
    assert len(calls) == adapter.num_image_tokens  # one hook call per autoregressive step
    assert calls[0] == (4, 1, 32)  # (2B: conditional + unconditional, 1 token, D_text)
    assert candidates.pixels.shape == (2, 3, 32, 32)
    assert candidates.latents.shape == (2, 64, 8) and candidates.hardness.shape == (2,)

    # same sampling seed: ε ≈ 0 twice gives the same images, ε = ε_max changes them
    def generate(gate: float) -> torch.Tensor:
        with torch.no_grad():
            adversary.perturber.gate.fill_(gate)
        generator.manual_seed(0)
        return miner.candidates(adapter, pixels, None, None, QUESTIONS, ANSWERS).pixels

    unperturbed = generate(-30.0)
    assert torch.equal(unperturbed, generate(-30.0))
    assert not torch.equal(unperturbed, generate(30.0))


@pytest.mark.parametrize("autocast", [False, True], ids=["fp32", "bf16-autocast"])
def test_official_mining_replays_the_very_image_it_scored(make_janus, autocast):
    """The buffer stores the generated codes' latents; replay decodes them to the pixels the hardness
    was scored on, bit for bit (also under the bf16 autocast a bf16 run mines and replays in)."""
    adapter = make_janus()
    miner = build_miner(
        "official", _adversary(adapter, "embedding"), adapter, torch.Generator().manual_seed(0), 2.0, 1.0
    )
    seen = []  # the pixels each understanding forward reads
    read = adapter.visual_tokens
    adapter.visual_tokens = lambda pixels: seen.append(pixels.detach().clone()) or read(pixels)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        candidates = miner.candidates(adapter, torch.rand(2, 3, 32, 32), None, None, QUESTIONS, ANSWERS)
        (scored,) = seen  # the hardness forward
        miner.replay_tokens(adapter, candidates.latents)
    replayed = seen[1]
    assert torch.equal(replayed, scored) and torch.equal(candidates.pixels, scored)
    # storing encode_latents(image), as before, would replay another image: G(Enc_G(x)) ≠ x
    with torch.no_grad():
        round_trip = adapter.decode_latents(adapter.encode_latents(scored))
    assert (round_trip - scored).abs().max() > 0.05


def test_official_mining_needs_a_hookable_latent_generator(make_janus):
    adapter = make_janus()
    adversary = _adversary(adapter, "embedding")

    class ImagesOnly:
        def generate_images(self, prompts, guidance, temperature, generator, embedding_hook):
            return None

    class NoHook:
        def generate_latents(self, prompts):
            return None

    with pytest.raises(TypeError, match="generate_latents.*latents of the generated codes"):
        build_miner("official", adversary, ImagesOnly(), torch.Generator(), 1.0, 1.0)
    with pytest.raises(TypeError, match="embedding_hook"):
        build_miner("official", adversary, NoHook(), torch.Generator(), 1.0, 1.0)
    with pytest.raises(ValueError, match="token-space adversary"):
        build_miner("official", _adversary(adapter, "decoder"), adapter, torch.Generator(), 1.0, 1.0)


def test_residual_decode_is_x_at_zero_delta_and_keeps_the_gradient_path(make_janus):
    """x̃ = x + G(z+δ) − G(z): exactly x when δ = 0 (no VQ reconstruction error), and δ still gets a
    gradient through decoder and vision encoder."""
    adapter = make_janus()
    pixels = torch.rand(2, 3, 32, 32)
    residual = build_adversary(
        "decoder", adapter, pixels[:1], eps_max=0.02, eps_init=0.01, budget="auto", hidden=None, seed=0,
        residual_decode=True,
    )  # fmt: skip
    clean = residual.clean(adapter, pixels)
    with torch.no_grad():
        assert torch.allclose(residual.decode(adapter, clean, pixels), pixels, atol=1e-5)
        full = adapter.decode_latents(clean)
        assert (full - pixels).abs().mean() > 0.05  # a random VQ reconstructs nothing: the gap is real
    attack = residual.attack(adapter, clean, QUESTIONS, ANSWERS, pixels)
    expected = (pixels + adapter.decode_latents(attack.perturbed) - full).clamp(0, 1)
    assert torch.allclose(attack.pixels, expected, atol=1e-5)
    attack.ce.sum().backward()
    grads = [p.grad for p in residual.perturber.parameters() if p.grad is not None]
    assert grads and any(g.abs().sum() > 0 for g in grads)
    stored = residual.stored(attack.perturbed.detach(), clean)  # (B, 2, N, D): z̃ and z
    assert stored.shape == (2, 2, *clean.shape[1:])
    tokens = residual.replay_tokens(adapter, stored, pixels)
    assert torch.allclose(tokens, adapter.visual_tokens(attack.pixels.detach()), atol=1e-4)
    with pytest.raises(ValueError, match="clean images"):
        residual.replay_tokens(adapter, stored)


def test_residual_replay_and_challenge_steps_reuse_z_and_g_of_z(make_janus):
    """Replay reads z from the buffer instead of encoding x again, and a challenge batch decodes G(z)
    once; x̃ is what re-encoding gives, to float rounding (1e-5; the encoder's batch differs)."""
    adapter = make_janus()
    pixels = torch.rand(3, 3, 32, 32)
    residual = build_adversary(
        "decoder", adapter, pixels[:1], eps_max=0.02, eps_init=0.01, budget="auto", hidden=None, seed=0,
        residual_decode=True,
    )  # fmt: skip
    calls = {"encode": 0, "decode": 0}
    encode, decode = adapter.encode_latents, adapter.decode_latents
    adapter.encode_latents = lambda x: calls.__setitem__("encode", calls["encode"] + 1) or encode(x)
    adapter.decode_latents = lambda z: calls.__setitem__("decode", calls["decode"] + 1) or decode(z)
    clean = residual.clean(adapter, pixels)
    first = residual.attack(adapter, clean, QUESTIONS + ["Is there a square?"], ANSWERS + ["no"], pixels)
    residual.attack(adapter, clean, QUESTIONS + ["Is there a square?"], ANSWERS + ["no"], pixels)
    assert calls == {"encode": 1, "decode": 3}  # z once; G(z + δ) twice, G(z) once
    stored = residual.stored(first.perturbed.detach(), clean)
    replayed = residual.replay_pixels(adapter, stored[1:], pixels[1:])  # another batch than the challenge's
    assert calls["encode"] == 1
    with torch.no_grad():
        re_encoded = residual.decode(adapter, first.perturbed[1:], pixels[1:])  # the old rule: encode x again
    assert calls["encode"] == 2
    assert (replayed - re_encoded).abs().max() < 1e-5
