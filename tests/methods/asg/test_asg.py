"""Ask-Solve-Generate end to end on a tiny random Janus: the adapter's sampling and entropy methods,
short runs that train the three roles with exact resume, unparsable questions, bad input and
config errors, and the suite's STE and self-consistency columns."""

from __future__ import annotations

import json
import math
import warnings

import pytest
import torch

from unigame.data.formats import write_vqav2
from unigame.data.splits import build_split
from unigame.eval.common import records_to_pixels
from unigame.eval.shapes_suite import QUICK_SIZES, _self_consistency, _ste
from unigame.methods.asg.trainer import GENERATOR, PROPOSER, SOLVER, AsgTrainer
from unigame.train.config import (
    AsgConfig,
    ConfigError,
    DataConfig,
    LoggingConfig,
    ModelConfig,
    OptimConfig,
    TrainConfig,
)
from unigame.train.run_logging import read_metrics

SMALL_ASG = dict(
    understanding_steps=2,
    generation_steps=1,
    candidates=2,
    solver_samples=3,
    question_tokens=5,
    prompt_tokens=5,
    qa_pairs=2,
    min_qa_pairs=1,
    generations=2,
    verify_samples=2,
)


def asg_config(steps: int = 6, data: DataConfig | None = None, **asg: object) -> TrainConfig:
    return TrainConfig(
        method="asg",
        model=ModelConfig(path="unused-an-adapter-is-injected"),
        data=data or DataConfig(train_items=32, batch_size=2),
        asg=AsgConfig(**{**SMALL_ASG, **asg}),
        optim=OptimConfig(steps=steps),
        logging=LoggingConfig(
            log_every=1, checkpoint_every=0, tensorboard=False, plots=False, panel_items=0, progress=False
        ),
    )


class AnyQuestion(AsgTrainer):
    """A random model never writes a ShapesWorld template; accepting every text runs every branch."""

    def parses(self, question: str) -> bool:
        return True


def _trainer(tmp_path, adapter, records, cfg, name="run", cls=AnyQuestion):
    trainer = cls(cfg, tmp_path / name, adapter, records)
    trainer.setup()
    return trainer


# ------------------------------------------------------------------------------------ adapter
def test_sampling_and_entropy_methods_agree_with_greedy_answers_and_the_understanding_loss(
    make_janus, records
):
    adapter = make_janus()
    pixels = records_to_pixels(records[:4])
    questions = [r.question for r in records[:4]]
    greedy = adapter.answer(pixels, questions)
    answers, entropies = adapter.answer_entropies(pixels, questions)
    assert answers == greedy and entropies.shape == (4, 4)
    top = math.log(adapter.model.config.text_config.vocab_size) + 1e-4  # the uniform distribution's
    for row in entropies.tolist():  # finite while the answer runs (EOS included), NaN after it
        n = sum(math.isfinite(v) for v in row)
        assert n >= 1 and all(0 <= v <= top for v in row[:n]) and all(math.isnan(v) for v in row[n:])
    assert adapter.sample_answers(pixels, questions, temperature=0.0) == greedy
    assert adapter.sample_answers(pixels, questions, temperature=2.0, top_p=1e-6) == greedy  # nucleus of 1
    hot = [
        adapter.sample_answers(pixels, questions, [2.5, 2.5, 0.0, 2.5], 1.0, torch.Generator().manual_seed(s))
        for s in (1, 1, 2)
    ]
    assert hot[0] == hot[1] and hot[0][2] == greedy[2]  # seeded; the temperature-0 row stays greedy
    logits, targets = adapter.answer_token_logits(pixels, questions, answers)
    ce = torch.nn.functional.cross_entropy(
        logits.transpose(1, 2), targets, ignore_index=-100, reduction="none"
    )
    ce = ce.sum(-1) / (targets != -100).sum(-1)
    assert torch.allclose(ce, adapter.understanding_loss(pixels, questions, answers), atol=1e-6)


# ------------------------------------------------------------------------------------ training
def test_short_run_trains_all_three_roles_only_and_resumes_bitwise(tmp_path, make_janus, records):
    whole = _trainer(tmp_path, make_janus(), records, asg_config(), "whole")
    lora = {n: p.detach().clone() for n, p in whole.peft_model.named_parameters() if "lora_" in n}
    frozen = {n: p.detach().clone() for n, p in whole.peft_model.named_parameters() if "lora_" not in n}
    whole.train()
    checkpoint = whole.save_checkpoint()
    whole.cleanup()
    after = dict(whole.peft_model.named_parameters())
    assert all(torch.equal(after[n], p) for n, p in frozen.items())  # the model stays frozen
    for role in (SOLVER, PROPOSER, GENERATOR):  # every role learned
        assert any(not torch.equal(after[n], p) for n, p in lora.items() if f".{role}." in n), role
    for role in (PROPOSER, GENERATOR):  # peft writes each role's adapter, loadable on its own
        assert (checkpoint / "lora" / role / "adapter_model.safetensors").is_file()
    metrics = read_metrics(tmp_path / "whole" / "metrics.csv")
    assert metrics["phase"].tolist() == [0, 0, 1, 0, 0, 1]  # cycles of 2 understanding + 1 generation
    understanding = metrics["phase"] == 0
    assert (metrics["solver_updates"][understanding] >= 0).all() and (
        metrics["kl_beta"][understanding] > 0
    ).all()
    assert not math.isnan(metrics["gen_loss"][2])
    lines = (tmp_path / "whole" / "questions.jsonl").read_text().splitlines()
    assert len(lines) == 4 * 2  # 4 understanding steps x 2 images, one kept question each
    row = json.loads(lines[0])
    assert len(row["answers"]) == 3 and row["judged"] and {"ste", "bucket", "truth", "majority"} <= row.keys()
    summary = json.loads((tmp_path / "whole" / "asg.json").read_text())
    assert summary["kept"] == 8 and summary["proposed"] == 16

    first = _trainer(tmp_path, make_janus(), records, asg_config(), "split")
    first.train(until_step=4)  # mid-cycle: after the first understanding step of the second cycle
    middle = first.save_checkpoint()
    first.train(until_step=5)  # written past the checkpoint, then lost: the resume must drop it
    first.cleanup()
    resumed = AnyQuestion(asg_config(), tmp_path / "split", make_janus(), records)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        resumed.setup(resume=middle)
    resumed.train()
    resumed.cleanup()
    expected, got = whole.trainable_state(), resumed.trainable_state()
    assert expected.keys() == got.keys() and len(expected) == 3 * len(whole.role_parameters[SOLVER])
    for name in expected:
        assert torch.equal(expected[name], got[name]), name
    a, b = read_metrics(tmp_path / "whole" / "metrics.csv"), read_metrics(tmp_path / "split" / "metrics.csv")
    for column in (
        "solver_loss",
        "proposer_loss",
        "kl",
        "kl_beta",
        "proposer_reward",
        "gen_loss",
        "gen_reward_best",
    ):
        assert a[column].tobytes() == b[column].tobytes(), column
    assert (tmp_path / "split" / "questions.jsonl").read_text().splitlines() == lines
    assert json.loads((tmp_path / "split" / "asg.json").read_text()) == summary


def test_questions_that_do_not_parse_are_rejected_and_counted(tmp_path, make_janus, records):
    # The random model's questions are not ShapesWorld templates: every one is rejected, no image
    # keeps a question and no spec forms, and the run goes on without an update.
    trainer = _trainer(tmp_path, make_janus(), records, asg_config(steps=3), cls=AsgTrainer)
    before = trainer.trainable_state()
    trainer.train()
    trainer.cleanup()
    metrics = read_metrics(tmp_path / "run" / "metrics.csv")
    assert metrics["questions_rejected"][:2].tolist() == [4, 4]
    assert metrics["images_without_question"][:2].tolist() == [2, 2]
    assert metrics["specs_rejected"][2] == 2
    summary = json.loads((tmp_path / "run" / "asg.json").read_text())
    assert summary["rejected"] == summary["proposed"] == 8 and summary["kept"] == 0
    after = trainer.trainable_state()
    assert all(torch.equal(before[n], after[n]) for n in before)


def test_the_judge_answers_templated_questions_about_the_training_scene(tmp_path, make_janus, records):
    trainer = _trainer(tmp_path, make_janus(), records, asg_config(steps=1), cls=AsgTrainer)
    batch = trainer.batches.batch([0])
    record = trainer.image_records[0]  # its question is never trained on; here it is a known truth
    assert batch.ids == [record.id]
    assert trainer._truths(batch, [0, 0], [record.question, "Is there a cyan hexagon?"]) == [
        record.answer,
        None,
    ]
    assert trainer.parses(record.question) and not trainer.parses("Is there a cyan hexagon?")


def test_an_adapter_without_the_self_play_methods_is_named(tmp_path, toy_model, records):
    trainer = AsgTrainer(asg_config(), tmp_path / "run", toy_model, records)
    with pytest.raises(
        TypeError, match=r"ToyUnifiedModel lacks sample_answers, answer_entropies, answer_token_logits"
    ):
        trainer.setup()


def test_config_errors_name_the_keys_before_any_work(tmp_path):
    cfg = asg_config()
    cfg.asg.solver_samples, cfg.asg.candidates = 1, 0
    cfg.asg.understanding_steps = cfg.asg.generation_steps = 0
    with pytest.raises(ConfigError) as err:
        AsgTrainer(cfg, tmp_path / "run")  # validated on construction: nothing loads
    text = str(err.value)
    assert "asg.solver_samples=1 is invalid: allowed an int >= 2" in text
    assert "asg.candidates=0 is invalid: allowed an int >= 1" in text
    assert "asg.understanding_steps=0 with asg.generation_steps=0 is invalid" in text
    assert not (tmp_path / "run").exists()


def test_an_image_that_fails_to_decode_is_named_and_the_run_goes_on(tmp_path, make_janus):
    files = write_vqav2(build_split("train", 40, 0), tmp_path / "vqav2", split="train2014")
    questions = json.loads(files.questions_json.read_text())["questions"]
    lone = [q for q in questions if sum(o["image_id"] == q["image_id"] for o in questions) == 1][0]
    image = files.images_dir / f"COCO_train2014_{lone['image_id']:012d}.png"
    image.write_bytes(image.read_bytes()[:40])  # a truncated image file
    data = DataConfig(
        source="vqav2",
        questions=str(files.questions_json),
        annotations=str(files.annotations_json),
        images=str(files.images_dir),
        image_size=32,
        batch_size=2,
    )
    trainer = AsgTrainer(asg_config(steps=2, data=data), tmp_path / "run", make_janus())
    with pytest.warns(
        UserWarning, match=r"data: 1 bad record\(s\) left out of 40 \(ids: " + str(lone["question_id"])
    ):
        trainer.setup()
    trainer.train()
    trainer.cleanup()
    assert trainer.step == 2 and not trainer.shapes
    listed = [json.loads(line) for line in (tmp_path / "run" / "bad_records.jsonl").read_text().splitlines()]
    assert [row["id"] for row in listed] == [str(lone["question_id"])]
    assert "cannot decode image" in listed[0]["problem"]
    assert len(trainer.image_records) == len({r.image_path for r in trainer.records})  # one per image


# -------------------------------------------------------------------------------------- suite
def test_the_suite_reports_mean_ste_and_the_self_consistency_accuracy(make_janus, toy_model):
    adapter = make_janus()
    clean = build_split("test", 8, 0)
    shifted = build_split("naturalbench", 2, 0)
    ste = _ste(adapter, {"clean": clean, "shifted": shifted}, QUICK_SIZES, progress=False)
    assert ste["n"] == {"clean": 8, "shifted": 8} and 0 < ste["clean"] < 7 and 0 < ste["shifted"] < 7
    report = _self_consistency(adapter, clean, QUICK_SIZES, seed=0, progress=False)
    assert report["samples"] == 7 and report["n"] == 8
    assert 0 <= report["accuracy"] <= 1 and 1 / 7 <= report["majority_share"] <= 1
    assert _ste(toy_model, {"clean": clean}, QUICK_SIZES, False) is None  # no answer_entropies
    assert _self_consistency(toy_model, clean, QUICK_SIZES, 0, False) is None


def test_every_asg_key_has_help_text():
    """jsonargparse renders the "Args:" docstring as `unigame train --help`."""
    import dataclasses

    import docstring_parser

    documented = {p.arg_name for p in docstring_parser.parse(AsgConfig.__doc__).params}
    assert {f.name for f in dataclasses.fields(AsgConfig)} - documented == set()


def test_evaluating_a_checkpoint_generates_with_the_generator_and_answers_with_the_solver(
    tmp_path, make_janus, records
):
    from unigame.eval.run import GeneratorRole, load_model
    from unigame.models.janus import JanusAdapter

    base = make_janus()
    base.model.save_pretrained(tmp_path / "model")
    base.tokenizer.save_pretrained(tmp_path / "model")
    adapter = JanusAdapter.from_pretrained(tmp_path / "model")
    trainer = _trainer(tmp_path, adapter, records, asg_config(steps=3, generator_lr=0.05), "run")
    trainer.train()
    checkpoint = trainer.save_checkpoint()
    trainer.cleanup()
    pixels = records_to_pixels(records[:3])
    questions = [r.question for r in records[:3]]

    def codes() -> torch.Tensor:
        return adapter.generate_codes(["a small red circle"], generator=torch.Generator().manual_seed(0))

    adapter.model.eval()
    trainer._use(GENERATOR)
    generator_codes = codes()
    trainer._use(SOLVER)
    solver_codes, solver_answers = codes(), adapter.answer(pixels, questions)
    assert not torch.equal(generator_codes, solver_codes)  # the Generator role learned its own weights

    loaded, _ = load_model(str(tmp_path / "model"), lora=str(checkpoint / "lora"), device="cpu")
    assert isinstance(loaded, GeneratorRole)
    assert torch.equal(
        loaded.generate_codes(["a small red circle"], generator=torch.Generator().manual_seed(0)),
        generator_codes,
    )
    assert loaded.answer(pixels, questions) == solver_answers
