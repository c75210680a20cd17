"""The table grid: rows are config switches, seeds vary what they should, summaries are exact."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from unigame.game.config import TrainConfig
from unigame.reproduce import (
    COLUMNS,
    TABLES,
    apply_overrides,
    markdown_table,
    parse_set,
    plan_jobs,
    summarize,
)


def test_apply_overrides_sets_dotted_keys_without_touching_the_input():
    recipe = TrainConfig()
    cfg = apply_overrides(recipe, {"game.adversary": "noise", "optim.steps": 7, "seed": 3})
    assert (cfg.game.adversary, cfg.optim.steps, cfg.seed) == ("noise", 7, 3)
    assert (recipe.game.adversary, recipe.optim.steps, recipe.seed) == ("decoder", 300, 0)


@pytest.mark.parametrize(
    ("key", "named"), [("game.eps_maxx", "eps_maxx"), ("gmae.eps_max", "gmae"), ("nope", "nope")]
)
def test_apply_overrides_rejects_unknown_keys_by_name(key, named):
    with pytest.raises(ValueError, match=named):
        apply_overrides(TrainConfig(), {key: 1})


def test_parse_set_reads_yaml_values_and_rejects_malformed_items():
    assert parse_set(["game.eps_max=0.05", "game.buffer=false", "model.path=none", "game.filter=none"]) == {
        "game.eps_max": 0.05,
        "game.buffer": False,
        "model.path": None,
        "game.filter": "none",
    }
    with pytest.raises(ValueError, match="KEY=VALUE"):
        parse_set(["game.eps_max"])


def test_table4_rows_are_the_papers_ablation_switches():
    rows = {row.name: row for row in TABLES["4"]}
    assert len(rows) == 10
    switches = {
        name: (cfg.game.enabled, cfg.game.adversary, cfg.game.filter, cfg.game.buffer)
        for name, row in rows.items()
        if row.trains
        for cfg in [apply_overrides(TrainConfig(), row.overrides).validate()]
    }
    assert switches == {
        "sft": (False, "decoder", "clip", True),  # game off: the rest is unused
        "noise": (True, "noise", "none", False),
        "embedding": (True, "embedding", "none", False),
        "embedding-cosine": (True, "embedding", "cosine", False),
        "embedding-cosine-buffer": (True, "embedding", "cosine", True),
        "decoding": (True, "decoder", "none", False),
        "decoding-cosine": (True, "decoder", "cosine", False),
        "decoding-clip": (True, "decoder", "clip", False),
        "full": (True, "decoder", "clip", True),
    }
    assert not rows["baseline"].trains
    assert [r.name for r in TABLES["main"]] == ["baseline", "sft", "full"]


def test_plan_jobs_one_baseline_eval_and_one_run_per_row_and_seed(tmp_path):
    rows = [r for r in TABLES["4"] if r.name in ("baseline", "sft", "noise")]
    jobs = plan_jobs(rows, [4, 5], TrainConfig(), tmp_path / "base", tmp_path / "out", split="val")
    assert [(j.row, j.seed) for j in jobs] == [
        ("baseline", -1),
        ("sft", 4),
        ("sft", 5),
        ("noise", 4),
        ("noise", 5),
    ]
    assert all(j.eval_seed == 1 for j in jobs)  # val split: the suite drawn with seed 1
    trained = [j for j in jobs if j.cfg is not None]
    assert all(j.cfg.seed == j.seed == j.cfg.data.split_seed for j in trained)
    assert all(j.cfg.model.path == str(tmp_path / "base") for j in trained)
    assert len({j.eval_dir for j in jobs}) == len(jobs)
    assert len({j.run_dir for j in trained}) == len(trained)
    assert jobs[0].cfg is None and jobs[0].run_dir is None


def _fake_eval(path: Path, clean: float, g_acc: float) -> str:
    path.mkdir(parents=True)
    metrics = {
        "clean_vqa": {"accuracy": clean},
        "pope": {"mean_f1": 0.5},
        "naturalbench": {"g_acc": g_acc, "accuracy": 0.5},
        "adversarial_split": {"accuracy": 0.5},
        "pgd": {"eps_8": {"accuracy": 0.25}},
    }
    (path / "metrics.json").write_text(json.dumps({"metrics": metrics}))
    return str(path)


def test_summarize_and_table_give_mean_std_and_the_unigame_minus_sft_line(tmp_path):
    rows = [r for r in TABLES["4"] if r.name in ("baseline", "sft", "full")]
    results = [
        {
            "row": "baseline",
            "seed": -1,
            "eval_dir": _fake_eval(tmp_path / "b", 0.5, 0.1),
            "train_s": 0,
            "eval_s": 1,
        },
        {
            "row": "sft",
            "seed": 0,
            "eval_dir": _fake_eval(tmp_path / "s0", 0.60, 0.10),
            "train_s": 2,
            "eval_s": 1,
        },
        {
            "row": "sft",
            "seed": 1,
            "eval_dir": _fake_eval(tmp_path / "s1", 0.62, 0.14),
            "train_s": 2,
            "eval_s": 1,
        },
        {
            "row": "full",
            "seed": 0,
            "eval_dir": _fake_eval(tmp_path / "f0", 0.58, 0.20),
            "train_s": 3,
            "eval_s": 1,
        },
        {
            "row": "full",
            "seed": 1,
            "eval_dir": _fake_eval(tmp_path / "f1", 0.64, 0.22),
            "train_s": 3,
            "eval_s": 1,
        },
    ]
    summary = summarize(rows, results, COLUMNS["4"])
    sft = summary[1]["cells"]["clean VQA"]
    assert sft["mean"] == pytest.approx(61.0)
    assert sft["std"] == pytest.approx(1.41421356, rel=1e-6)  # sample std of 60, 62
    assert summary[0]["n"] == 1 and summary[0]["cells"]["clean VQA"]["std"] == 0.0
    assert summary[2]["wall_s"] == 8
    table = markdown_table(summary, COLUMNS["4"])
    lines = table.splitlines()
    assert lines[3].startswith("| SFT | 2 | 61.0 ± 1.4 | 50.0 ± 0.0 | 12.0 ± 2.8 |")
    assert lines[-1].startswith("| **UniGame − SFT** | | +0.0 | +0.0 | +9.0 |")


def test_a_failing_job_does_not_stop_the_grid_and_is_named_with_its_log(tmp_path, monkeypatch):
    from unigame import reproduce as grid

    rows = [r for r in TABLES["4"] if r.name in ("sft", "noise")]
    jobs = plan_jobs(rows, [0], TrainConfig(), tmp_path / "base", tmp_path / "out")
    ran = []

    def fake_run_job(job):
        ran.append(job.row)
        if job.row == "sft":
            raise RuntimeError("disk on fire")
        return {"row": job.row, "seed": job.seed}

    monkeypatch.setattr(grid, "run_job", fake_run_job)
    with pytest.raises(
        grid.GridError,
        match=r"1 of 2 jobs failed:\n  sft seed 0: RuntimeError: disk on fire \(log: .*eval-test.log\)",
    ):
        grid.run_jobs(jobs, workers=1)
    assert ran == ["sft", "noise"]  # the second job still ran
