"""`unigame reproduce --table asg`: its rows are the recipe's switches, and its columns read STE in
nats and the runs' judged self-consistency (no training here: the grid is planned, not run)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from unigame.reproduce import (
    ASG_OVERRIDES,
    COLUMNS,
    apply_overrides,
    markdown_table,
    plan_jobs,
    summarize,
    table_rows,
)
from unigame.train.config import TrainConfig
from unigame.train.run import load_recipe

RECIPE = Path(__file__).parents[3] / "configs" / "shapes_tiny_asg.yaml"


def test_the_asg_rows_carry_exactly_the_asg_recipe():
    assert load_recipe(RECIPE).to_dict() == apply_overrides(TrainConfig(), ASG_OVERRIDES).validate().to_dict()


def test_the_asg_table_plans_base_asg_without_ste_labelled_sft_and_unigame(tmp_path):
    rows = table_rows("asg")
    assert [r.name for r in rows] == ["baseline", "asg", "asg-no-ste", "sft", "full"]
    jobs = plan_jobs(rows, [0, 1, 2], TrainConfig(), Path("/models/base"), tmp_path)
    assert len(jobs) == 1 + 4 * 3
    by_row = {(j.row, j.seed): j for j in jobs}
    assert by_row[("baseline", -1)].cfg is None  # evaluated as is
    asg, no_ste = by_row[("asg", 1)].cfg, by_row[("asg-no-ste", 1)].cfg
    assert asg.method == no_ste.method == "asg" and (asg.seed, asg.data.split_seed) == (1, 1)
    assert (asg.asg.difficulty_signal, no_ste.asg.difficulty_signal) == ("ste", "answer_entropy")
    assert asg.data.batch_size == 8 and asg.model.path == "/models/base" and asg.optim.steps == 300
    sft = by_row[("sft", 1)].cfg
    assert sft.method == "unigame" and not sft.game.enabled
    assert (sft.data.train_items, sft.data.split_seed) == (asg.data.train_items, 1)  # the same images
    assert by_row[("full", 2)].cfg.game.enabled and by_row[("full", 2)].cfg.method == "unigame"
    # A recipe of another method (here the ASG one) does not turn the references into it.
    asg_recipe = load_recipe(RECIPE)
    jobs = {j.row: j for j in plan_jobs(rows, [0], asg_recipe, Path("/m"), tmp_path / "other")}
    assert jobs["sft"].cfg.method == jobs["full"].cfg.method == "unigame"


def _eval(path: Path, ste: float, consistency: float) -> str:
    path.mkdir(parents=True)
    metrics = {"clean_vqa": {"accuracy": 0.6}, "ste": {"clean": ste, "shifted": ste + 0.5},
               "self_consistency": {"accuracy": consistency, "greedy_accuracy": 0.6}}  # fmt: skip
    (path / "metrics.json").write_text(json.dumps({"metrics": metrics}))
    return str(path)


def _run(path: Path, answerable: list[str]) -> str:
    path.mkdir(parents=True)
    lines = ["step,phase,judge_answerable"] + [f"{i + 1},0,{v}" for i, v in enumerate(answerable)]
    (path / "metrics.csv").write_text("\n".join(lines) + "\n")
    return str(path)


def test_ste_stays_in_nats_and_run_columns_average_the_understanding_steps(tmp_path):
    rows = [r for r in table_rows("asg") if r.name in ("baseline", "asg")]
    columns = [
        c
        for c in COLUMNS["asg"]
        if c[1] in ("ste.clean", "self_consistency.accuracy", "run.judge_answerable")
    ]
    results = [
        {"row": "baseline", "seed": -1, "eval_dir": _eval(tmp_path / "b", 0.8, 0.5), "run_dir": None,
         "train_s": 0, "eval_s": 1},
        {"row": "asg", "seed": 0, "eval_dir": _eval(tmp_path / "a", 0.6, 0.7),
         "run_dir": _run(tmp_path / "r", ["0.5", "", "1.0"]), "train_s": 1, "eval_s": 1},
    ]  # fmt: skip
    summary = summarize(rows, results, columns)
    cells = {e["row"]: e["cells"] for e in summary}
    assert cells["asg"]["mean STE, clean (nats)"]["mean"] == pytest.approx(0.6)  # not x100
    assert cells["asg"]["self-consistency acc."]["mean"] == pytest.approx(70.0)
    assert cells["asg"]["proposed: judge can answer"]["mean"] == pytest.approx(75.0)  # generation rows empty
    assert cells["baseline"]["proposed: judge can answer"]["mean"] is None
    table = markdown_table(summary, columns)
    assert "| ASG (unlabeled) | 1 | 0.60 | 70.0 | 75.0 |" in table
