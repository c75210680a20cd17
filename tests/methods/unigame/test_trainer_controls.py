"""The trainer's two controls and its label-validity measurement, on a tiny random Janus.

* UniGame with ε = 0 (`game.eps_max: 0`): δ ≡ 0, the perturber never moves, everything else runs.
* SFT with equal examples per update (`data.extra_clean_items`): a second clean stream in the loss.
* Label validity: ShapesWorld's exact judge re-reads each mined candidate's label.
"""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch

from unigame.data.shapes import label_holds
from unigame.methods.unigame import trainer as trainer_module
from unigame.methods.unigame.adversary import Attack
from unigame.methods.unigame.filters import FilterResult
from unigame.methods.unigame.trainer import UniGameTrainer
from unigame.train.run_logging import read_metrics

from .conftest import PaletteScorer, small_config


def _trainer(tmp_path, adapter, records, cfg, name="run") -> UniGameTrainer:
    trainer = UniGameTrainer(cfg, tmp_path / name, adapter, PaletteScorer(), records)
    trainer.setup()
    return trainer


def _sft_extra(steps: int, extra: int = 3, **game: object):
    cfg = small_config(steps=steps, enabled=False, **game)
    cfg.data.extra_clean_items = extra
    return cfg


# ============================================================================= UniGame with ε = 0
def test_eps_zero_replays_unperturbed_reconstructions_and_never_moves_the_perturber(
    tmp_path, make_janus, records
):
    cfg = small_config(steps=3, eps_max=0.0, eps_init=0.5, filter="none", capacity=8)  # eps_init ignored
    trainer = _trainer(tmp_path, make_janus(), records, cfg)
    deltas = []
    attack = trainer.adversary.attack

    def spy(*args, **kwargs):
        result = attack(*args, **kwargs)
        deltas.append(result.delta.detach().clone())
        return result

    trainer.adversary.attack = spy
    perturber_before = {k: v.clone() for k, v in trainer.perturber.state_dict().items()}
    lora_before = {k: v for k, v in trainer.trainable_state().items() if k.startswith("lora.")}
    trainer.train()
    trainer.cleanup()

    assert len(deltas) == 3 and all(torch.equal(d, torch.zeros_like(d)) for d in deltas)  # δ ≡ 0
    for name, value in trainer.perturber.state_dict().items():
        assert torch.equal(value, perturber_before[name]), name  # the challenger never moved
    assert all(p.grad is None for p in trainer.perturber.parameters())  # no backward reached it
    assert not trainer.opt_challenger.state  # no optimiser step was ever taken
    lora_after = trainer.trainable_state()
    assert any(not torch.equal(v, lora_after[k]) for k, v in lora_before.items() if "lora_B" in k)
    # the buffer holds decoded reconstructions: its latents are the items' own clean z
    assert len(trainer.buffer) > 0
    latents, ids, _payload = trainer.buffer.gather(range(len(trainer.buffer)))
    clean = trainer.adapter.encode_latents(trainer._clean_pixels(ids)).float()
    assert torch.equal(latents, clean)
    metrics = read_metrics(tmp_path / "run" / "metrics.csv")
    assert (metrics["eps"] == 0).all() and (metrics["reg"] == 0).all()
    assert np.isfinite(metrics["loss_challenge"]).all() and np.isfinite(metrics["ce_hard"]).all()


def test_eps_zero_with_residual_decoding_replays_the_clean_images_whose_labels_all_hold(
    tmp_path, make_janus, records
):
    """x̃ = x + G(z) − G(z) = x: the exact judge reads every label back, so label validity is 1."""
    cfg = small_config(steps=2, eps_max=0.0, residual_decode=True, filter="none", percentile=50.0)
    trainer = _trainer(tmp_path, make_janus(), records, cfg)
    trainer.train()
    trainer.cleanup()
    metrics = read_metrics(tmp_path / "run" / "metrics.csv")
    assert metrics["label_valid_mined"].tolist() == [1.0, 1.0]
    assert metrics["label_valid_inserted"].tolist() == [1.0, 1.0]
    assert metrics["label_valid_rejected"].tolist() == [0.0, 0.0]  # filter none rejects nothing
    summary = json.loads((tmp_path / "run" / "label_validity.json").read_text())
    assert summary["mined"] == summary["mined_valid"] == 8 and summary["label_valid_mined"] == 1.0


# ============================================================== SFT with equal examples per update
def test_extra_clean_items_enter_the_sft_loss_weighted_by_beta(tmp_path, make_janus, records):
    cfg = _sft_extra(steps=1, extra=3, beta=0.25)
    cfg.model.lora_dropout = 0.0  # deterministic CE evaluations
    trainer = _trainer(tmp_path, make_janus(), records, cfg)
    assert trainer.extra_batches is not None and trainer.extra_batches.batch_size == 3
    main, extra = trainer.batches.state_dict(), trainer.extra_batches.state_dict()
    clean, more = next(trainer.batches), next(trainer.extra_batches)
    assert clean.ids != more.ids[: len(clean.ids)]  # its own order (data.split_seed + 1)
    with torch.no_grad():
        ce_clean = trainer.adapter.understanding_loss(clean.pixels, clean.questions, clean.answers).float()
        ce_extra = trainer.adapter.understanding_loss(more.pixels, more.questions, more.answers).float()
    trainer.batches.load_state_dict(main)
    trainer.extra_batches.load_state_dict(extra)
    trainer.train()
    trainer.cleanup()
    metrics = read_metrics(tmp_path / "run" / "metrics.csv")
    expected = float(ce_clean.mean() + 0.25 * ce_extra.mean())  # L = CE_clean + β·CE_extra
    assert metrics["loss_understand"][0] == pytest.approx(expected, rel=1e-5)
    assert metrics["ce_extra"][0] == pytest.approx(float(ce_extra.mean()), rel=1e-5)
    assert metrics["ce_clean"][0] == pytest.approx(float(ce_clean.mean()), rel=1e-5)
    assert trainer.extra_batches.state_dict()["cursor"] == 3


def test_zero_extra_clean_items_is_plain_clean_ce_sft_bitwise(tmp_path, make_janus, records):
    """extra_clean_items 0 (the default) is the SFT baseline: clean CE only, no second stream. Checked
    against a hand-written SFT loop from the same initial state."""
    cfg = small_config(steps=3, enabled=False)
    trainer = _trainer(tmp_path, make_janus(), records, cfg, name="trainer")
    assert trainer.extra_batches is None
    trainer.train()
    trainer.cleanup()
    assert "data_extra" not in trainer.state_dict()[1]

    ref = _trainer(tmp_path, make_janus(), records, cfg, name="reference")  # same seed: same start
    lora = ref.lora_parameters
    for _ in range(3):
        batch = next(ref.batches)
        tokens = ref.adapter.visual_tokens(batch.pixels)
        loss = (
            ref.adapter.understanding_loss_from_tokens(tokens, batch.questions, batch.answers).float().mean()
        )
        ref.opt_understand.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(lora, cfg.optim.grad_clip)
        ref.opt_understand.step()
    expected, got = ref.trainable_state(), trainer.trainable_state()
    assert expected.keys() == got.keys()
    assert all(torch.equal(expected[k], got[k]) for k in expected)
    assert np.isnan(read_metrics(tmp_path / "trainer" / "metrics.csv")["ce_extra"]).all()
    ref.cleanup()


# ========================================================================== resume of both controls
@pytest.mark.parametrize(
    "make_config",
    [
        lambda steps: small_config(steps=steps, eps_max=0.0, filter="none"),
        lambda steps: _sft_extra(steps, extra=3),
    ],
    ids=["eps-zero", "sft-extra"],
)
def test_interrupted_and_resumed_control_equals_uninterrupted_bitwise(
    tmp_path, make_janus, records, make_config
):
    steps = 4
    whole = _trainer(tmp_path, make_janus(), records, make_config(steps), name="whole")
    whole.train()
    whole.cleanup()

    first = _trainer(tmp_path, make_janus(), records, make_config(steps), name="split")
    first.train(until_step=2)
    checkpoint = first.save_checkpoint()
    first.cleanup()
    resumed = UniGameTrainer(make_config(steps), tmp_path / "split", make_janus(), PaletteScorer(), records)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # same config: no warning
        resumed.setup(resume=checkpoint)
    resumed.train()
    resumed.cleanup()

    expected, got = whole.trainable_state(), resumed.trainable_state()
    assert expected.keys() == got.keys()
    for name in expected:
        assert torch.equal(expected[name], got[name]), name
    full = read_metrics(tmp_path / "whole" / "metrics.csv")
    split = read_metrics(tmp_path / "split" / "metrics.csv")
    assert split["step"].tolist() == [1, 2, 3, 4]
    columns = ("loss_understand", "ce_clean", "ce_extra", "ce_hard", "eps", "label_valid_mined")
    for column in columns:
        assert full[column].tobytes() == split[column].tobytes(), column
    if whole.extra_batches is not None:
        assert whole.extra_batches.state_dict() == resumed.extra_batches.state_dict()
        assert np.isfinite(full["ce_extra"]).all()
    else:  # the same buffer, and the run's label-validity totals survive the interruption
        a, b = whole.buffer.state_dict(), resumed.buffer.state_dict()
        assert len(whole.buffer) > 0 and torch.equal(a["latents"], b["latents"])
        assert torch.equal(a["hardness"], b["hardness"]) and a["metadata"] == b["metadata"]
        assert (tmp_path / "split" / "label_validity.json").read_text() == (
            tmp_path / "whole" / "label_validity.json"
        ).read_text()
        assert whole.label_counts.mined == 16


def test_resuming_without_an_extra_stream_warns_and_starts_it(tmp_path, make_janus, records):
    first = _trainer(tmp_path, make_janus(), records, small_config(steps=2, enabled=False))
    first.train(until_step=1)
    checkpoint = first.save_checkpoint()
    first.cleanup()
    resumed = UniGameTrainer(_sft_extra(2), tmp_path / "run", make_janus(), None, records)
    with pytest.warns(UserWarning) as record:
        resumed.setup(resume=checkpoint)
    messages = " ".join(str(w.message) for w in record)
    assert "data.extra_clean_items: 0 -> 3" in messages and "starts at its beginning" in messages
    resumed.cleanup()


def test_extra_clean_items_larger_than_the_data_name_the_key(tmp_path, make_janus, records):
    trainer = UniGameTrainer(_sft_extra(1, extra=33), tmp_path / "run", make_janus(), None, records)
    with pytest.raises(ValueError, match=r"data.extra_clean_items=33 x 1 process\(es\) exceeds the 32"):
        trainer.setup()


# ===================================================================================== label validity
def test_mine_counts_label_validity_of_mined_inserted_and_rejected(tmp_path, make_janus, records):
    """Four candidates: two faithful images, two blank canvases (labels lost); the filter's verdicts
    are set by hand, every item is hard enough (percentile 0)."""
    cfg = small_config(percentile=0.0, filter="none", capacity=8)
    trainer = _trainer(tmp_path, make_janus(), records, cfg)
    blank = np.empty_like(records[0].image)
    blank[:] = trainer.cfg.data.shapes.background
    shapes = cfg.data.shapes
    lost = [
        i for i, r in enumerate(records) if i > 1 and not label_holds(blank, r.question, r.answer, shapes)
    ]
    batch = trainer.batches.batch([0, 1, *lost[:2]])  # records 0 and 1 keep their own images
    pixels = batch.pixels.clone()
    pixels[2:] = torch.from_numpy(blank).permute(2, 0, 1).float() / 255  # (2, 3, H, W) blank canvases
    clean = trainer.adversary.clean(trainer.adapter, batch.pixels)  # (4, N, D)
    attack = Attack(torch.zeros_like(clean), clean, pixels, torch.tensor([1.0, 2.0, 3.0, 4.0]))
    keep = torch.tensor([True, False, True, True])
    trainer.filter = lambda clean_view, candidate_view, texts: FilterResult(keep, keep.float())

    stats = trainer.mine(batch, clean, attack, metrics := {})
    assert sorted(stats.inserted) == [0, 2, 3] and stats.n_pushed == 3
    assert metrics["label_valid_mined"] == 0.5  # items 0 and 1 of 4
    assert metrics["label_valid_inserted"] == pytest.approx(1 / 3)  # item 0 of the inserted 0, 2, 3
    assert metrics["label_valid_rejected"] == 0.5  # item 1 of the valid 0, 1
    keep[:] = torch.tensor([False, False, True, True])  # a second batch: only lost labels pass
    trainer.mine(batch, clean, attack, metrics := {})
    assert metrics["label_valid_inserted"] == 0.0
    assert metrics["label_valid_rejected"] == 1.0
    summary = json.loads(trainer.write_label_validity().read_text())
    assert summary == {
        "steps": 0,
        "label_valid_mined": 0.5,  # 4 of 8
        "label_valid_inserted": 0.2,  # 1 of 3 + 2
        "label_valid_rejected": 0.75,  # 1 + 2 of 2 + 2
        "mined": 8,
        "mined_valid": 4,
        "inserted": 5,
        "inserted_valid": 1,
        "rejected_valid": 3,
    }
    trainer.cleanup()


def test_label_validity_of_the_selection_without_a_buffer(tmp_path, make_janus, records):
    cfg = small_config(percentile=50.0, filter="none", buffer=False)
    trainer = _trainer(tmp_path, make_janus(), records, cfg)
    batch = trainer.batches.batch([0, 1, 2, 3])
    clean = trainer.adversary.clean(trainer.adapter, batch.pixels)
    pixels = batch.pixels.clone()
    pixels[3] = pixels[3] * 0 + torch.tensor(cfg.data.shapes.background).view(3, 1, 1) / 255  # blank
    attack = Attack(torch.zeros_like(clean), clean, pixels, torch.tensor([1.0, 2.0, 3.0, 4.0]))
    trainer.mine(batch, clean, attack, metrics := {})
    holds = label_holds(pixels[3].numpy(), batch.questions[3], batch.answers[3], cfg.data.shapes)
    # τ = the median of H: items 2 and 3 are selected; 2 is faithful
    assert metrics["label_valid_inserted"] == (1 + holds) / 2
    assert metrics["label_valid_mined"] == (3 + holds) / 4
    trainer.cleanup()


def test_token_space_candidates_log_nan_label_validity(tmp_path, make_janus, records):
    cfg = small_config(steps=2, adversary="noise", filter="none")
    trainer = _trainer(tmp_path, make_janus(), records, cfg)
    trainer.train()
    trainer.cleanup()
    metrics = read_metrics(tmp_path / "run" / "metrics.csv")
    for column in ("label_valid_mined", "label_valid_inserted", "label_valid_rejected"):
        assert np.isnan(metrics[column]).all(), column
    summary = json.loads((tmp_path / "run" / "label_validity.json").read_text())
    assert summary["mined"] == 0 and summary["label_valid_mined"] is None


def test_training_logs_label_validity_every_mining_step(tmp_path, make_janus, records):
    cfg = small_config(steps=3, filter="none", mine_every=2)
    trainer = _trainer(tmp_path, make_janus(), records, cfg)
    trainer.train()
    trainer.cleanup()
    metrics = read_metrics(tmp_path / "run" / "metrics.csv")
    mined = metrics["label_valid_mined"]
    assert np.isfinite(mined[[0, 2]]).all() and np.isnan(mined[1])  # steps 1 and 3 mine (0 and 2 % 2)
    assert ((mined[[0, 2]] >= 0) & (mined[[0, 2]] <= 1)).all()
    summary = json.loads((tmp_path / "run" / "label_validity.json").read_text())
    assert summary["steps"] == 3 and summary["mined"] == 8
    assert summary["label_valid_mined"] == pytest.approx(float(np.mean(mined[[0, 2]])))  # equal counts


def test_hard_sample_panel_shows_the_judges_verdict(tmp_path, make_janus, records, monkeypatch):
    cfg = small_config(steps=1, eps_max=0.0, residual_decode=True, filter="none", percentile=0.0)
    cfg.logging.panel_items = 3
    trainer = _trainer(tmp_path, make_janus(), records, cfg)
    trainer.train()
    seen = {}

    def spy(path, *args, judged=None):
        seen["judged"] = judged
        return path

    monkeypatch.setattr(trainer_module, "hard_sample_panel", spy)
    trainer._hard_sample_panel()
    assert seen["judged"] == [True, True, True]  # ε = 0, residual: x̃ = x keeps every label
    trainer.cleanup()
