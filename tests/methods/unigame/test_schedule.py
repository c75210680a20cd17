"""`game.schedule: simultaneous`: one forward/backward gives each player the gradient the alternating
schedule gives it; the run trains the same parameters, resumes exactly, and leaves the forward alone."""

from __future__ import annotations

import pytest
import torch

from unigame.methods.unigame.trainer import UniGameTrainer
from unigame.train.config import ModelConfig

from .conftest import PaletteScorer, small_config


def _first_step_gradients(
    tmp_path, make_janus, records, name: str, precision: str = "fp32", **game
) -> dict[str, dict[str, torch.Tensor]]:
    """The gradients each optimiser steps with on the first step, by player and parameter name.

    LoRA dropout is off: its masks depend on the batch's shape, which the two schedules lay out
    differently; with it on the gradients would differ by the masks, not by the schedule."""
    cfg = small_config(steps=1, **game)
    cfg.model = ModelConfig(path=cfg.model.path, lora_dropout=0.0, precision=precision)
    cfg.optim.grad_clip = 0.0  # the raw gradients
    trainer = UniGameTrainer(cfg, tmp_path / name, make_janus(), PaletteScorer(), records)
    trainer.setup()
    names = {id(p): n for n, p in trainer.peft_model.named_parameters()}
    names.update({id(p): f"perturber.{n}" for n, p in trainer.perturber.named_parameters()})
    seen: dict[str, dict[str, torch.Tensor]] = {}

    def spy(player: str, optimizer: torch.optim.Optimizer) -> None:
        step = optimizer.step

        def record(*args, **kwargs):
            params = [p for group in optimizer.param_groups for p in group["params"]]
            seen[player] = {names[id(p)]: p.grad.detach().clone() for p in params if p.grad is not None}
            return step(*args, **kwargs)

        optimizer.step = record

    spy("challenger", trainer.opt_challenger)
    spy("understand", trainer.opt_understand)
    trainer.train()
    trainer.cleanup()
    return seen


@pytest.mark.parametrize(
    "game",
    [
        {"residual_decode": True, "buffer": False},  # the tiny recipe's decoding; hard items = this step's
        {"residual_decode": False, "buffer": False, "reg_lambda": 0.1},  # the paper's decoding, with λ‖δ‖²
        {"adversary": "embedding", "buffer": False},  # token space
        {"residual_decode": True},  # buffer on: the perturber's gradient (LoRA's replays another batch)
        {"residual_decode": True, "buffer": False, "precision": "bf16"},  # bf16 autocast, fp32 perturber
    ],
    ids=["residual", "direct-reg", "embedding", "buffer", "bf16"],
)
def test_simultaneous_gives_each_player_the_alternating_gradient(tmp_path, make_janus, records, game):
    """Same weights, same batch: the perturber's gradient from the joint backward (through the gradient
    reversal at δ) is the alternating challenge step's, and LoRA's is the understand step's on the same
    selection. Tolerance 1e-6 of the largest gradient (measured: the perturber's bit for bit, LoRA's
    within 2e-7 in fp32 and bit for bit in bf16): LoRA's loss sums the same terms in another order,
    and alternating re-decodes the selected items' x̃ where simultaneous reuses it."""
    players = ["challenger"] + (["understand"] if game.get("buffer") is False else [])
    game = {"filter": "none", "percentile": 50.0, **game}
    alternating = _first_step_gradients(tmp_path, make_janus, records, "alt", **game)
    simultaneous = _first_step_gradients(
        tmp_path, make_janus, records, "sim", schedule="simultaneous", **game
    )
    for player in players:
        expected, got = alternating[player], simultaneous[player]
        assert expected.keys() == got.keys() and expected, player
        scale = max(g.abs().max().item() for g in expected.values())
        assert scale > 0, f"{player}: no gradient to compare"
        for name, grad in expected.items():
            error = (got[name] - grad).abs().max().item()
            assert error <= 1e-6 * scale, (
                f"{player} {name}: off by {error:.2e} (largest gradient {scale:.2e})"
            )


def test_lora_row_mask_leaves_the_forward_and_the_activation_gradient_alone(tmp_path, make_janus, records):
    """Inside `_lora_rows` the language model's output is bit for bit the plain one, the gradient to
    its input is unchanged on every row, and LoRA's weights get gradient from the kept rows only."""
    trainer = UniGameTrainer(small_config(steps=1), tmp_path / "run", make_janus(), PaletteScorer(), records)
    trainer.setup()
    with torch.no_grad():  # LoRA B starts at 0: give it weights, so LoRA's rows matter
        for p in trainer.lora_parameters:
            p.normal_(0, 0.1)
    batch = trainer.batches.batch([0, 1, 2])
    trainer.adapter.model.eval()  # no LoRA dropout: the two forwards draw no masks

    def run(keep: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
        tokens = trainer.adapter.visual_tokens(batch.pixels).detach().requires_grad_()
        for p in trainer.lora_parameters:
            p.grad = None
        if keep is None:
            ce = trainer.adapter.understanding_loss_from_tokens(tokens, batch.questions, batch.answers)
        else:
            with trainer._lora_rows(keep):
                ce = trainer.adapter.understanding_loss_from_tokens(tokens, batch.questions, batch.answers)
            keep[:] = torch.tensor([True, False, True])  # decided after the forward, read in the backward
        ce.sum().backward()
        return ce.detach(), tokens.grad, [p.grad.clone() for p in trainer.lora_parameters]

    plain, plain_input_grad, _ = run(None)
    masked, masked_input_grad, lora_grads = run(torch.ones(3, dtype=torch.bool))
    assert torch.equal(plain, masked)
    assert torch.allclose(plain_input_grad, masked_input_grad, rtol=0, atol=1e-6)
    for p in trainer.lora_parameters:  # the reference: LoRA's gradient of rows 0 and 2 alone
        p.grad = None
    tokens = trainer.adapter.visual_tokens(batch.pixels[[0, 2]])
    two = [batch.questions[0], batch.questions[2]], [batch.answers[0], batch.answers[2]]
    trainer.adapter.understanding_loss_from_tokens(tokens, *two).sum().backward()
    for p, got in zip(trainer.lora_parameters, lora_grads):
        assert torch.allclose(got, p.grad, rtol=0, atol=1e-6 * p.grad.abs().max().item())
    trainer.cleanup()


@pytest.mark.parametrize("buffer", [True, False], ids=["buffer", "no-buffer"])
def test_simultaneous_trains_lora_and_perturber_only_and_logs_both_players(
    tmp_path, make_janus, records, buffer
):
    cfg = small_config(steps=3, schedule="simultaneous", filter="none", residual_decode=True, buffer=buffer)
    trainer = UniGameTrainer(cfg, tmp_path / "run", make_janus(), PaletteScorer(), records)
    trainer.setup()
    frozen = {n: p.detach().clone() for n, p in trainer.peft_model.named_parameters() if not p.requires_grad}
    lora = {n: p.detach().clone() for n, p in trainer.peft_model.named_parameters() if p.requires_grad}
    perturber = {n: p.detach().clone() for n, p in trainer.perturber.named_parameters()}
    trainer.train()
    trainer.cleanup()
    after = dict(trainer.peft_model.named_parameters())
    assert all(torch.equal(v, after[n]) for n, v in frozen.items())
    assert any(not torch.equal(v, after[n]) for n, v in lora.items())
    assert all(
        not torch.equal(v, dict(trainer.perturber.named_parameters())[n]) for n, v in perturber.items()
    )
    from unigame.train.run_logging import read_metrics

    metrics = read_metrics(tmp_path / "run" / "metrics.csv")
    for column in ("loss_understand", "ce_clean", "ce_adv", "eps", "mined", "ce_hard"):
        values = metrics[column]
        assert (values == values).any(), column  # logged on some step
    if buffer:
        assert len(trainer.buffer) > 0


def test_simultaneous_eps_zero_control_never_moves_the_perturber(tmp_path, make_janus, records):
    cfg = small_config(steps=2, schedule="simultaneous", filter="none", eps_max=0.0, residual_decode=True)
    trainer = UniGameTrainer(cfg, tmp_path / "run", make_janus(), PaletteScorer(), records)
    trainer.setup()
    before = {n: p.detach().clone() for n, p in trainer.perturber.named_parameters()}
    trainer.train()
    trainer.cleanup()
    for name, p in trainer.perturber.named_parameters():
        assert torch.equal(before[name], p) and p.grad is None, name
    assert not trainer.opt_challenger.state  # never stepped
