"""UniGameTrainer invariants on a tiny random Janus: what trains, what stays frozen, the order of the two
players, the buffer's use, the filter, bf16, non-finite steps, and bitwise-exact resume."""

from __future__ import annotations

import warnings

import pytest
import torch

from unigame.methods.unigame.adversary import Attack
from unigame.methods.unigame.trainer import NonFiniteRunError, UniGameTrainer
from unigame.train.checkpoint import NonFiniteStateError, find_latest_checkpoint
from unigame.train.run_logging import read_metrics

from .conftest import PaletteScorer, ToyUnifiedModel, small_config


def _trainer(tmp_path, adapter, records, cfg, scorer=None, name="run") -> UniGameTrainer:
    trainer = UniGameTrainer(cfg, tmp_path / name, adapter, scorer or PaletteScorer(), records)
    trainer.setup()
    return trainer


def _params(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in module.named_parameters()}


def test_only_lora_and_perturber_train(tmp_path, make_janus, records):
    trainer = _trainer(tmp_path, make_janus(), records, small_config(steps=2))
    trainable = [n for n, p in trainer.peft_model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n and "language_model" in n for n in trainable)  # LoRA on the LM only
    before, perturber_before = _params(trainer.peft_model), _params(trainer.perturber)
    trainer.train()
    after = _params(trainer.peft_model)
    for name, value in before.items():
        changed = not torch.equal(value, after[name])
        if name in trainable and "lora_B" in name:
            assert changed, f"LoRA weight {name} did not train"
        elif name not in trainable:
            assert not changed, f"frozen weight {name} changed"
            assert dict(trainer.peft_model.named_parameters())[name].grad is None, (
                f"frozen {name} got a gradient"
            )
    assert all(
        not torch.equal(v, dict(trainer.perturber.named_parameters())[n]) for n, v in perturber_before.items()
    )
    trainer.cleanup()


def test_sft_baseline_and_unigame_start_identical(tmp_path, make_janus, records):
    sft = _trainer(tmp_path, make_janus(), records, small_config(enabled=False), name="sft")
    game = _trainer(tmp_path, make_janus(), records, small_config(), name="game")
    sft_lora = {n: p for n, p in sft.peft_model.named_parameters() if p.requires_grad}
    game_lora = {n: p for n, p in game.peft_model.named_parameters() if p.requires_grad}
    assert sft_lora.keys() == game_lora.keys()
    assert all(torch.equal(sft_lora[n], game_lora[n]) for n in sft_lora)
    assert [next(sft.batches).ids for _ in range(3)] == [next(game.batches).ids for _ in range(3)]
    assert sft.adversary is None and sft.buffer is None


def test_challenge_raises_adversarial_ce_then_understand_lowers_it(tmp_path, make_janus, records):
    cfg = small_config(reg_lambda=0.0, percentile=0.0)  # L_C = CE; every candidate is mined
    cfg.model.lora_dropout = 0.0  # deterministic CE evaluations
    cfg.optim.und_lr = 1e-2
    trainer = _trainer(tmp_path, make_janus(), records, cfg)
    batch = next(trainer.batches)
    adapter, adversary = trainer.adapter, trainer.adversary
    clean = adversary.clean(adapter, batch.pixels)

    def adversarial_ce() -> float:
        with torch.no_grad():
            return float(adversary.attack(adapter, clean, batch.questions, batch.answers).ce.mean())

    before = adversarial_ce()
    attack = trainer.challenge_step(batch, clean, {})  # the challenger moves: ascent
    after_challenge = adversarial_ce()
    assert after_challenge > before
    trainer.mine(batch, clean, attack, {})
    fixed = attack.pixels  # x̃ as mined: the understand step must learn it

    def ce_on_fixed() -> float:
        with torch.no_grad():
            return float(adapter.understanding_loss(fixed, batch.questions, batch.answers).mean())

    before_understand = ce_on_fixed()
    assert trainer.understand_step(batch, adapter.visual_tokens(batch.pixels), {})  # U moves: descent
    assert ce_on_fixed() < before_understand


def test_trainer_fills_and_replays_the_buffer(tmp_path, make_janus, records):
    cfg = small_config(steps=4, capacity=3, replay_batch=2, percentile=50.0, filter="none")
    trainer = _trainer(tmp_path, make_janus(), records, cfg)
    replayed: list[int] = []
    original = trainer.miner.replay_tokens

    def spy(adapter, latents, pixels=None):
        replayed.append(latents.shape[0])
        assert latents.shape[1:] == (64, 8)  # stored latents z̃, not images
        assert pixels is None  # the paper's G(z̃) needs no clean image
        return original(adapter, latents, pixels)

    refreshed: list[torch.Tensor] = []
    update = trainer.buffer.update_hardness

    def spy_update(slots, hardness):
        refreshed.append(hardness.clone())
        return update(slots, hardness)

    trainer.miner.replay_tokens = spy
    trainer.buffer.update_hardness = spy_update
    trainer.train()
    trainer.cleanup()
    assert len(trainer.buffer) == 3  # capacity respected
    assert replayed == [2, 2, 2, 2]  # replay_batch items every understand step (mined first in step 1)
    metrics = read_metrics(tmp_path / "run" / "metrics.csv")
    assert (metrics["buffer_size"] == [2, 3, 3, 3]).all()  # percentile 50 of 4: H ≥ τ for 2 items
    assert (metrics["tau"] > 0).all() and not torch.isnan(torch.tensor(metrics["ce_hard"])).any()
    # replayed items are re-ranked by their CE at replay time (the logged ce_hard is its mean)
    assert [h.shape for h in refreshed] == [torch.Size([2])] * 4
    logged = [float(h.mean()) for h in refreshed]
    torch.testing.assert_close(
        torch.tensor(logged, dtype=torch.float64),
        torch.as_tensor(metrics["ce_hard"], dtype=torch.float64),
        rtol=1e-5,
        atol=1e-6,
    )


def test_filter_rejects_the_decoded_image_of_another_scene(tmp_path, records):
    """Through the real mining step: a candidate decoded from another scene's latents leaves the buffer empty
    of it, while the faithful candidate (the own scene, perturbed) enters."""
    toy = ToyUnifiedModel()
    cfg = small_config(filter="clip", percentile=0.0, eps_max=0.05, eps_init=0.02)
    trainer = _trainer(tmp_path, toy, records, cfg)
    by_colour = {}
    for r in records:  # two one-colour scenes with different colours
        colours = {o["colour"] for o in r.meta["scene"]["objects"]}
        if len(colours) == 1:
            by_colour.setdefault(colours.pop(), r)
    own, other = list(by_colour.values())[:2]
    batch = trainer.batches.batch([records.index(own), records.index(own)])
    clean = trainer.adversary.clean(toy, batch.pixels)  # (2, 64, 3) the own scene twice
    other_latents = toy.encode_latents(trainer.batches.batch([records.index(other)]).pixels)
    candidate = torch.cat([clean[:1] + 0.01, other_latents])  # faithful | another scene
    pixels = toy.decode_latents(candidate)
    attack = Attack(candidate - clean, candidate, pixels, torch.tensor([1.0, 1.0]))
    batch.ids = ["faithful", "other-scene"]
    stats = trainer.mine(batch, clean, attack, metrics := {})
    assert stats.n_passed_filter == 1 and metrics["filter_pass_rate"] == 0.5
    assert trainer.buffer.ids == ["faithful"]


class _ConstantCE(ToyUnifiedModel):
    """The toy model with an understanding CE that ignores the image: L_C's CE gives δ no gradient."""

    def understanding_loss(self, pixels, questions, answers):
        return pixels.sum(dim=(1, 2, 3)) * 0.0 + 1.0  # (B,) on δ's graph, zero gradient


@pytest.mark.parametrize(
    "game, drifts",
    [
        ({}, False),  # the defaults: reg_lambda 0
        ({"reg_lambda": 0.1}, True),  # the former default: λ‖δ‖² = λ·N·ε² only pulls ε down
        ({"reg_lambda": 0.1, "reg_form": "mean"}, True),  # ε²/D is tiny, but AdamW normalises the step
    ],
    ids=["default", "lambda-0.1-sum", "lambda-0.1-mean"],
)
def test_eps_moves_only_when_the_ce_moves_it(tmp_path, records, game, drifts):
    """With a CE that gives δ no gradient, 300 challenge steps leave ε where it started (within 1e-9)
    under the default config; a non-zero λ, in either form, drags it down regardless of the loss."""
    trainer = _trainer(tmp_path, _ConstantCE(), records, small_config(filter="none", **game))
    batch = trainer.batches.batch([0, 1, 2, 3])
    clean = trainer.adversary.clean(trainer.adapter, batch.pixels)
    start = trainer.perturber.eps
    for _ in range(300):
        assert trainer.challenge_step(batch, clean, metrics := {}) is not None
    trainer.cleanup()
    assert metrics["ce_adv"] == 1.0
    if drifts:
        assert trainer.perturber.eps < 0.5 * start, trainer.perturber.eps  # 0.01 -> ~0.004
    else:
        assert abs(trainer.perturber.eps - start) < 1e-9, trainer.perturber.eps - start


def test_bf16_delta_gradient_is_nonzero_and_close_to_fp32(tmp_path, make_janus, records):
    grads = {}
    for precision in ("fp32", "bf16"):
        cfg = small_config()
        cfg.model.precision = precision
        trainer = _trainer(tmp_path, make_janus(), records, cfg, name=precision)
        batch = trainer.batches.batch([0, 1, 2, 3])
        with trainer._autocast():
            clean = trainer.adversary.clean(trainer.adapter, batch.pixels)
            attack = trainer.adversary.attack(trainer.adapter, clean, batch.questions, batch.answers)
            attack.delta.retain_grad()
            attack.ce.mean().backward()
        assert attack.delta.dtype == torch.float32 and attack.ce.dtype == torch.float32
        grads[precision] = attack.delta.grad.flatten()
    fp32, bf16 = grads["fp32"], grads["bf16"]
    assert bf16.abs().sum() > 0
    cosine = torch.nn.functional.cosine_similarity(fp32, bf16, dim=0)
    assert cosine > 0.9, float(cosine)
    assert (bf16.norm() - fp32.norm()).abs() / fp32.norm() < 0.25


def _offset(latents: torch.Tensor, eps: float, relative: bool = False) -> torch.Tensor:
    """A fixed per-token offset of norm eps (or eps·‖z_t‖): δ as the perturber makes it."""
    direction = torch.randn(latents.shape, generator=torch.Generator().manual_seed(0))
    radius = latents.norm(dim=-1, keepdim=True) if relative else 1.0
    return eps * radius * torch.nn.functional.normalize(direction, dim=-1)  # (B, N, D)


def decoded_offset_error(reference, trainer, relative: bool = False) -> float:
    """‖Δ − Δ_fp32‖ / ‖Δ_fp32‖ for Δ = G(z + δ) − G(z) at ε = 0.01: `trainer`'s adapter decodes as in
    training (its frozen weights as the trainer stores them, under its autocast), `reference` in fp32."""
    batch = trainer.batches.batch([0, 1, 2, 3])
    with torch.no_grad():
        z = reference.encode_latents(batch.pixels).float()  # (B, N, D) one z for both
        z_tilde = z + _offset(z, 0.01, relative)
        expected = reference.decode_latents(z_tilde) - reference.decode_latents(z)  # (B, 3, H, W) fp32
        with trainer._autocast():
            got = trainer.adapter.decode_latents(z_tilde) - trainer.adapter.decode_latents(z)
    assert got.dtype == torch.float32 and expected.abs().max() > 1e-3  # δ visibly changes the image
    return float((got - expected).norm() / expected.norm())


def test_bf16_run_decodes_the_perturbed_latent_in_fp32(tmp_path, make_janus, records):
    """bf16 rounds a 1% offset of unit-norm latents away, so the decoder runs with autocast off on fp32
    weights: G(z + δ) − G(z) at ε = 0.01 then equals the fp32 one (relative error 0 measured; bound
    1e-6). A bf16-stored VQ decoding under autocast, as before, got it wrong by 1.07 on this model."""
    cfg = small_config()
    cfg.model.precision = "bf16"
    trainer = _trainer(tmp_path, make_janus(), records, cfg)
    vq = trainer.adapter.model.model.vqmodel
    for module in (vq.decoder, vq.post_quant_conv, vq.quantize):
        assert all(p.dtype == torch.float32 for p in module.parameters())
    assert vq.encoder.conv_in.weight.dtype == torch.bfloat16  # the rest of the frozen model is stored in bf16
    assert decoded_offset_error(make_janus(), trainer) < 1e-6
    trainer.cleanup()


def test_bf16_warns_when_the_adapter_names_no_fp32_modules(tmp_path, records):
    cfg = small_config()
    cfg.model.precision = "bf16"
    with pytest.warns(UserWarning, match="no fp32_modules"):
        trainer = _trainer(tmp_path, ToyUnifiedModel(), records, cfg)
    assert trainer.adapter.model.decoder.weight.dtype == torch.bfloat16  # stored like every frozen weight
    trainer.cleanup()


def test_non_finite_loss_skips_the_step_and_counts_it(tmp_path, make_janus, records):
    trainer = _trainer(tmp_path, make_janus(), records, small_config(steps=2))
    adapter = trainer.adapter
    original = adapter.understanding_loss
    calls = {"n": 0}

    def nan_once(pixels, questions, answers):
        calls["n"] += 1
        loss = original(pixels, questions, answers)
        return loss * float("nan") if calls["n"] == 1 else loss

    adapter.understanding_loss = nan_once
    lora_before = {k: v for k, v in trainer.trainable_state().items()}
    with pytest.warns(UserWarning, match="non-finite"):
        trainer.train(until_step=1)
    assert trainer.nonfinite_steps == 1 and trainer.step == 1
    assert all(torch.equal(v, trainer.trainable_state()[k]) for k, v in lora_before.items())  # nothing moved
    trainer.train()  # the next step is fine
    assert trainer.nonfinite_steps == 1 and trainer.step == 2
    trainer.cleanup()
    assert read_metrics(tmp_path / "run" / "metrics.csv")["nonfinite_steps"].tolist() == [1, 1]


def test_consecutive_non_finite_steps_abort_but_isolated_ones_do_not(tmp_path, make_janus, records):
    cfg = small_config(steps=10)
    cfg.optim.max_nonfinite_steps = 3
    trainer = _trainer(tmp_path, make_janus(), records, cfg)
    original = trainer.adapter.understanding_loss
    poisoned = {2, 3, 5, 6, 7, 8}  # steps (1-based) whose losses are NaN: runs of 2, then of 4

    def maybe_nan(pixels, questions, answers):
        loss = original(pixels, questions, answers)
        return loss * float("nan") if trainer.step + 1 in poisoned else loss

    trainer.adapter.understanding_loss = maybe_nan
    with pytest.warns(UserWarning, match="non-finite"), pytest.raises(NonFiniteRunError) as info:
        trainer.train()
    assert "3 consecutive steps (5-7) had a non-finite loss" in str(info.value)
    assert "optim.max_nonfinite_steps=3" in str(info.value)
    assert trainer.step == 7 and trainer.nonfinite_steps == 5  # the run of 2 was survived
    trainer.cleanup()
    assert read_metrics(tmp_path / "run" / "metrics.csv")["nonfinite_steps"].tolist()[-1] == 5


def test_a_non_finite_state_is_never_checkpointed(tmp_path, make_janus, records):
    trainer = _trainer(tmp_path, make_janus(), records, small_config(steps=2))
    trainer.train(until_step=1)
    good = trainer.save_checkpoint()
    lora_b = next(p for n, p in trainer.peft_model.named_parameters() if "lora_B" in n)
    with torch.no_grad():
        lora_b[0, 0] = float("nan")
    with pytest.warns(UserWarning, match="step 2: non-finite"):
        trainer.train()  # step 2 runs on the poisoned weights (its loss is NaN: skipped)...
    with pytest.raises(NonFiniteStateError, match=r"lora:.*lora_B"):
        trainer.save_checkpoint()  # ...but the state is not written
    with torch.no_grad():
        lora_b[0, 0] = 0.0
        next(iter(trainer.perturber.parameters())).view(-1)[0] = float("inf")
    with pytest.raises(NonFiniteStateError, match=r"perturber\."):
        trainer.save_checkpoint()
    assert find_latest_checkpoint(tmp_path / "run") == good
    trainer.cleanup()


@pytest.mark.parametrize(
    "game",
    [
        {"filter": "none"},  # decoder adversary + buffer (random-VQ images would fail any semantic filter)
        {"adversary": "noise", "filter": "none", "buffer": False},  # noise: its own generator state
        {"enabled": False},  # the SFT baseline
        {"filter": "none", "residual_decode": True},  # replay re-reads the items' clean images
        {"filter": "none", "residual_decode": True, "buffer": False},  # this step's selection
        {"filter": "none", "residual_decode": True, "replay_images": True},  # the buffer keeps x̃
        {"filter": "none", "residual_decode": True, "schedule": "simultaneous"},  # one joint backward
        {"filter": "none", "schedule": "simultaneous", "buffer": False},
    ],
    ids=[
        "unigame",
        "noise",
        "sft",
        "residual",
        "residual-no-buffer",
        "replay-images",
        "simultaneous",
        "simultaneous-no-buffer",
    ],
)
def test_interrupted_and_resumed_run_equals_uninterrupted_bitwise(tmp_path, make_janus, records, game):
    steps = 4
    whole = _trainer(tmp_path, make_janus(), records, small_config(steps=steps, **game), name="whole")
    whole.train()
    whole.cleanup()

    first = _trainer(tmp_path, make_janus(), records, small_config(steps=steps, **game), name="split")
    first.train(until_step=2)  # interrupted after step 2
    checkpoint = first.save_checkpoint()
    first.cleanup()
    resumed = UniGameTrainer(
        small_config(steps=steps, **game), tmp_path / "split", make_janus(), PaletteScorer(), records
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # same config: no warning
        resumed.setup(resume=checkpoint)
    assert resumed.step == 2
    resumed.train()
    resumed.cleanup()

    expected, got = whole.trainable_state(), resumed.trainable_state()
    assert expected.keys() == got.keys() and expected
    for name in expected:
        assert torch.equal(expected[name], got[name]), name
    if whole.buffer is not None:
        a, b = whole.buffer.state_dict(), resumed.buffer.state_dict()
        assert len(whole.buffer) > 0 and torch.equal(a["latents"], b["latents"])
        assert torch.equal(a["hardness"], b["hardness"]) and a["metadata"] == b["metadata"]
    full = read_metrics(tmp_path / "whole" / "metrics.csv")
    split = read_metrics(tmp_path / "split" / "metrics.csv")
    assert split["step"].tolist() == [1, 2, 3, 4]
    for column in ("loss_understand", "ce_clean", "ce_adv", "eps"):
        if column in full:
            assert full[column].tobytes() == split[column].tobytes(), column


def test_resume_with_another_config_warns_and_says_which_wins(tmp_path, make_janus, records):
    first = _trainer(tmp_path, make_janus(), records, small_config(steps=2))
    first.train(until_step=1)
    checkpoint = first.save_checkpoint()
    first.cleanup()
    changed = small_config(steps=2, beta=0.25)
    resumed = UniGameTrainer(changed, tmp_path / "run", make_janus(), PaletteScorer(), records)
    with pytest.warns(UserWarning, match="this run's config wins") as record:
        resumed.setup(resume=checkpoint)
    assert "game.beta: 0.5 -> 0.25" in str(record[0].message)
    resumed.cleanup()
    sft = UniGameTrainer(small_config(steps=2, enabled=False), tmp_path / "run", make_janus(), None, records)
    with pytest.raises(ValueError, match="cannot switch between SFT and UniGame"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sft.setup(resume=checkpoint)


def test_a_residual_buffer_saved_without_z_gets_z_encoded_when_loaded(tmp_path, make_janus, records):
    """A residual run's buffer keeps [z̃, z] per item (replay then runs no VQ encoder); a checkpoint
    written when it kept z̃ alone loads with z encoded from the items' clean images (within 1e-5 of the
    z the run stored: the encoder runs on another batch)."""
    import json

    trainer = _trainer(
        tmp_path, make_janus(), records, small_config(steps=2, filter="none", residual_decode=True)
    )
    trainer.train()
    state = trainer.buffer.state_dict()
    assert state["latents"].dim() == 4 and state["latents"].shape[1] == 2  # (n, 2, N, D)
    meta = json.loads(state["metadata"])
    old = {
        **state,
        "latents": state["latents"][:, 0],  # z̃ alone, as older checkpoints hold it
        "metadata": json.dumps({**meta, "item_shape": meta["item_shape"][1:]}),
    }
    upgraded = trainer._with_clean_latents(old)
    assert json.loads(upgraded["metadata"])["item_shape"] == meta["item_shape"]
    assert torch.equal(upgraded["latents"][:, 0], state["latents"][:, 0])
    assert (upgraded["latents"][:, 1] - state["latents"][:, 1]).abs().max() < 1e-5
    trainer.buffer.load_state_dict(upgraded)
    assert len(trainer.buffer) == len(meta["ids"])
    trainer.cleanup()


def test_replay_images_replays_the_very_image_the_challenge_scored(tmp_path, make_janus, records):
    """With game.replay_images the buffer keeps x̃ and replay encodes it as it is: no decoding, and
    the image is bit for bit the challenge's. A checkpoint of another layout is refused by name."""
    cfg = small_config(steps=1, filter="none", residual_decode=True, replay_images=True, percentile=0.0)
    trainer = _trainer(tmp_path, make_janus(), records, cfg)
    scored = []
    attack = trainer.adversary.attack
    trainer.adversary.attack = lambda *a, **k: scored.append(out := attack(*a, **k)) or out
    decoded = []
    decode = trainer.adapter.decode_latents
    trainer.adapter.decode_latents = lambda z: decoded.append(z.shape[0]) or decode(z)
    trainer.train()
    assert decoded == [4, 4]  # the challenge's G(z + δ) and G(z); the replay decodes nothing
    stored = trainer.buffer.state_dict()["latents"]  # (4, 3, 32, 32): every item (percentile 0), slot order
    assert stored.shape == (4, 3, 32, 32)
    assert torch.equal(stored, scored[0].pixels.detach())  # inserted in batch order
    checkpoint = trainer.save_checkpoint()
    trainer.cleanup()
    latents_run = UniGameTrainer(
        small_config(steps=2, filter="none", residual_decode=True), tmp_path / "run", make_janus(),
        PaletteScorer(), records,
    )  # fmt: skip
    refused = pytest.raises(ValueError, match=r"game.residual_decode and game.replay_images the checkpoint")
    with refused, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the config differs: warned, then refused
        latents_run.setup(resume=checkpoint)
