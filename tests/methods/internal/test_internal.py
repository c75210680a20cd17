"""Internal supervision: the DPO loss by hand, the pool and its curriculum, bad input, and short
end-to-end runs of internal-sft / internal-dpo on a tiny random Janus, with exact resume."""

from __future__ import annotations

import json
import math
import warnings

import pytest
import torch

from unigame.data.shapes import ShapesConfig
from unigame.eval.shapes_suite import DEFAULT_SIZES, GENEVAL_TIERS, shapes_geneval_prompts
from unigame.methods.internal.dpo import dpo_loss
from unigame.methods.internal.pool import SelfJudgedPool
from unigame.methods.internal.prompts import read_prompt_file, shapes_training_prompts
from unigame.methods.internal.trainer import InternalSupervisionTrainer
from unigame.train.config import (
    ConfigError,
    DataConfig,
    InternalConfig,
    LoggingConfig,
    ModelConfig,
    OptimConfig,
    TrainConfig,
)
from unigame.train.run_logging import read_metrics


def internal_config(method: str = "internal-sft", steps: int = 4, **internal: object) -> TrainConfig:
    internal = {"prompts": 6, "candidates": 3, "batch_size": 4, "sample_batch_size": 9, **internal}
    return TrainConfig(
        method=method,
        model=ModelConfig(path="unused-an-adapter-is-injected"),
        data=DataConfig(train_items=32, batch_size=4),
        internal=InternalConfig(**internal),
        optim=OptimConfig(steps=steps),
        logging=LoggingConfig(
            log_every=2, checkpoint_every=0, tensorboard=False, plots=False, panel_items=0, progress=False
        ),
    )


def _trainer(tmp_path, adapter, records, cfg, name="run"):
    trainer = InternalSupervisionTrainer(cfg, tmp_path / name, adapter, records)
    trainer.setup()
    return trainer


# ------------------------------------------------------------------------------------------ DPO
def test_dpo_loss_matches_a_hand_computation():
    # margin = (π_c − ref_c) − (π_r − ref_r) = (−10 + 12) − (−20 + 18) = 4; loss = −log σ(0.1·4)
    loss, margin = dpo_loss(
        torch.tensor([-10.0]), torch.tensor([-20.0]), torch.tensor([-12.0]), torch.tensor([-18.0]), beta=0.1
    )
    assert margin.item() == pytest.approx(4.0)
    assert loss.item() == pytest.approx(math.log1p(math.exp(-0.4)), rel=1e-6)
    # Equal policy and reference: margin 0, loss log 2, and its gradient pushes chosen up, rejected down.
    chosen = torch.tensor([-5.0], requires_grad=True)
    rejected = torch.tensor([-5.0], requires_grad=True)
    loss, _ = dpo_loss(chosen, rejected, torch.tensor([-5.0]), torch.tensor([-5.0]), beta=0.5)
    assert loss.item() == pytest.approx(math.log(2))
    loss.sum().backward()
    assert chosen.grad.item() == pytest.approx(-0.25) and rejected.grad.item() == pytest.approx(0.25)


# ----------------------------------------------------------------------------------------- pool
def test_pool_keeps_accepted_pairs_and_the_curriculum_empties_the_discard_pool():
    pool = SelfJudgedPool(n_prompts=3, image_tokens=2)
    codes = torch.arange(3 * 2 * 2).view(3, 2, 2)  # (P=3, N=2, T=2)
    p_yes = torch.tensor([[0.9, 0.2], [0.3, 0.1], [0.6, 0.7]])
    accepted = p_yes >= 0.5
    judge_ok = torch.tensor([[True, False], [False, False], [False, True]])
    stats = pool.add_round([0, 1, 2], codes, p_yes, accepted, judge_ok)
    assert pool.discard == [1]  # prompt 1 accepted nothing
    assert pool.sft_prompts.tolist() == [0, 2, 2] and torch.equal(pool.sft_codes, codes.view(6, 2)[[0, 4, 5]])
    # DPO pairs only for prompts with an accepted image: chosen = max P(yes), rejected = min
    assert pool.dpo_prompts.tolist() == [0, 2]
    assert torch.equal(pool.dpo_chosen, codes[[0, 2], [0, 1]]) and torch.equal(
        pool.dpo_rejected, codes[[0, 2], [1, 0]]
    )
    assert stats.accepted_fraction == pytest.approx(0.5) and stats.discard_pool == 1
    assert stats.judge_precision == pytest.approx(2 / 3)  # of 3 accepted, the judge agrees on 2
    assert stats.judge_recall == pytest.approx(1.0)
    # A curriculum round regenerates the discard pool; an accepted image moves prompt 1 out of it.
    stats = pool.add_round(
        [1], codes[:1] + 100, torch.tensor([[0.2, 0.8]]), torch.tensor([[False, True]]), None
    )
    assert pool.discard == [] and stats.round == 1 and stats.new_pairs == 1
    assert pool.sft_prompts.tolist() == [0, 2, 2, 1]
    tensors, meta = pool.state_dict()
    copy = SelfJudgedPool(3, 2)
    copy.load_state_dict(tensors, json.loads(json.dumps(meta)))
    assert torch.equal(copy.sft_codes, pool.sft_codes) and copy.discard == [] and copy.rounds == pool.rounds


# -------------------------------------------------------------------------------------- prompts
def test_training_prompts_cover_the_tiers_and_avoid_evaluation_texts_beyond_single_objects():
    config = ShapesConfig()
    prompts = shapes_training_prompts(60, 0, config)
    assert len(prompts) == 60 and {p.tier for p in prompts} == {"easy", "medium", "hard"}
    evaluation = {
        p["prompt"] for s in (0, 1) for p in shapes_geneval_prompts(config, DEFAULT_SIZES.generation, s)
        if GENEVAL_TIERS[p["tag"]] != "easy"
    }  # fmt: skip
    assert not [p.text for p in prompts if p.tier != "easy" and p.text in evaluation]
    assert shapes_training_prompts(60, 0, config) == prompts  # deterministic
    assert shapes_training_prompts(60, 1, config) != prompts


def test_prompt_file_errors_name_the_file_and_line(tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    with pytest.raises(ValueError, match="empty.txt: no prompts"):
        read_prompt_file(empty, lambda t: True)
    blank = tmp_path / "p.txt"
    blank.write_text("a red circle\n\n")
    with pytest.raises(ValueError, match=r"p.txt:2: empty prompt"):
        read_prompt_file(blank, lambda t: True)
    odd = tmp_path / "p.jsonl"
    odd.write_text('{"prompt": "a red circle"}\n{"prompt": "a \\u2603 snowman"}\n')
    with pytest.raises(ValueError, match=r"p.jsonl:2: the tokenizer cannot encode"):
        read_prompt_file(odd, lambda t: "\u2603" not in t)
    bad = tmp_path / "q.jsonl"
    bad.write_text('{"text": "a red circle"}\n')
    with pytest.raises(ValueError, match=r"q.jsonl:1: expected"):
        read_prompt_file(bad, lambda t: True)
    ok = tmp_path / "ok.jsonl"
    ok.write_text('{"prompt": "a red circle", "tier": "easy"}\n')
    assert [(p.text, p.tier) for p in read_prompt_file(ok, lambda t: True)] == [("a red circle", "easy")]


def test_config_rejects_dpo_with_one_candidate_and_a_missing_prompt_file():
    with pytest.raises(ConfigError, match=r"internal.candidates=1 is invalid with method=internal-dpo"):
        internal_config("internal-dpo", candidates=1).validate()
    cfg = internal_config(prompt_file="/no/such/prompts.txt")
    assert any("internal.prompt_file" in e and "does not exist" for e in cfg.path_errors(model=False))


# -------------------------------------------------------------------------------- end to end
@pytest.mark.parametrize("method", ["internal-sft", "internal-dpo"])
def test_short_run_trains_lora_only_and_resumes_bitwise(tmp_path, make_janus, records, method):
    cfg = dict(
        method=method, steps=4, curriculum_rounds=1, curriculum_every=2, accept=0.1575
    )  # the random model: P(yes) ~0.153-0.163
    whole = _trainer(tmp_path, make_janus(), records, internal_config(**cfg), "whole")
    before = {n: p.detach().clone() for n, p in whole.peft_model.named_parameters()}
    whole.train()
    whole.cleanup()
    changed = {n for n, p in whole.peft_model.named_parameters() if not torch.equal(p, before[n])}
    assert changed and all("lora_" in n for n in changed)  # only LoRA moved
    assert all("language_model" in n for n in changed)
    rounds = json.loads((tmp_path / "whole" / "rounds.json").read_text())
    assert [r["images"] for r in rounds] == [18, 3 * rounds[0]["discard_pool"]]  # round 1: the discard pool
    assert 0 < rounds[0]["discard_pool"] < 6

    first = _trainer(tmp_path, make_janus(), records, internal_config(**cfg), "split")
    first.train(until_step=3)  # after the curriculum round of step 2
    checkpoint = first.save_checkpoint()
    first.cleanup()
    resumed = InternalSupervisionTrainer(internal_config(**cfg), tmp_path / "split", make_janus(), records)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        resumed.setup(resume=checkpoint)
    resumed.train()
    resumed.cleanup()
    expected, got = whole.trainable_state(), resumed.trainable_state()
    assert expected.keys() == got.keys()
    for name in expected:
        assert torch.equal(expected[name], got[name]), name
    a, b = read_metrics(tmp_path / "whole" / "metrics.csv"), read_metrics(tmp_path / "split" / "metrics.csv")
    assert a["loss"].tobytes() == b["loss"].tobytes()


def test_a_stop_mid_round_drops_the_round_and_the_resumed_run_matches_an_uninterrupted_one(
    tmp_path, make_janus, records
):
    import signal

    from unigame.train.signals import StopRequest

    cfg = dict(steps=3, accept=0.1575)  # round 0: 18 images in two sampling batches of 9
    whole = _trainer(tmp_path, make_janus(), records, internal_config(**cfg), "whole")
    whole.train()
    whole.cleanup()

    first = _trainer(tmp_path, make_janus(), records, internal_config(**cfg), "split")
    stop, sample = StopRequest(), first.adapter.generate_codes
    generator_before = first.generation_generator.get_state()

    def sample_then_signal(*args, **kwargs):
        stop.signum = signal.SIGTERM  # arrives while the round's first batch is being sampled
        return sample(*args, **kwargs)

    first.adapter.generate_codes = sample_then_signal
    first.train(stop=stop)
    assert first.step == 0 and first.rounds_done == 0
    assert first.pool.size("sft") == 0 and not first.pool.rounds  # no part of the round kept
    assert torch.equal(first.generation_generator.get_state(), generator_before)
    checkpoint = first.save_checkpoint()
    first.cleanup()

    resumed = InternalSupervisionTrainer(internal_config(**cfg), tmp_path / "split", make_janus(), records)
    resumed.setup(resume=checkpoint)
    resumed.train()
    resumed.cleanup()
    assert resumed.rounds_done == 1 and resumed.pool.size("sft") == whole.pool.size("sft") > 0
    expected, got = whole.trainable_state(), resumed.trainable_state()
    for name in expected:
        assert torch.equal(expected[name], got[name]), name


def test_a_round_with_nothing_accepted_is_logged_and_the_run_goes_on(tmp_path, make_janus, records):
    trainer = _trainer(tmp_path, make_janus(), records, internal_config(steps=3, accept=0.999))
    with pytest.warns(UserWarning, match="accepted none of its 18 images"):
        trainer.train()
    trainer.cleanup()
    assert trainer.step == 3 and trainer.pool.size("sft") == 0 and len(trainer.pool.discard) == 6
    metrics = read_metrics(tmp_path / "run" / "metrics.csv")
    assert metrics["round_accepted_fraction"][0] == 0.0 and metrics["pairs"].tolist() == [0, 0, 0]


def test_a_unigame_checkpoint_is_refused(tmp_path, make_janus, records):
    from unigame.methods.unigame.trainer import UniGameTrainer

    from ...train.conftest import PaletteScorer, small_config

    sft = UniGameTrainer(
        small_config(steps=1, enabled=False), tmp_path / "sft", make_janus(), PaletteScorer(), records
    )
    sft.setup()
    sft.train()
    checkpoint = sft.save_checkpoint()
    sft.cleanup()
    trainer = InternalSupervisionTrainer(internal_config(), tmp_path / "int", make_janus(), records)
    with pytest.raises(ValueError, match="method='unigame' but this run has method='internal-sft'"):
        trainer.setup(resume=checkpoint)
