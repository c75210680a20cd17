"""The table grid: rows are config switches, seeds vary what they should, summaries are exact."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from unigame.reproduce import (
    COLUMNS,
    FIGURE_COLUMNS,
    LABEL_VALIDITY,
    LEARNED_EPS,
    TABLES,
    apply_overrides,
    branch_directions,
    comparisons_markdown,
    figure_rows,
    markdown_table,
    paired_comparisons,
    paired_stats,
    parse_set,
    plan_jobs,
    sign_test_p,
    summarize,
    t_test_p,
    table_rows,
)
from unigame.train.config import TrainConfig


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


def test_table4_rows_are_the_papers_ablation_switches_and_the_controls():
    rows = {row.name: row for row in TABLES["4"]}
    assert len(rows) == 14
    switches = {
        name: (cfg.game.enabled, cfg.game.adversary, cfg.game.mining, cfg.game.filter, cfg.game.buffer)
        for name, row in rows.items()
        if row.trains and name not in CONTROLS
        for cfg in [apply_overrides(TrainConfig(), row.overrides_for(TrainConfig())).validate()]
    }
    assert switches == {
        "sft": (False, "decoder", "decoder", "clip", True),  # game off: the rest is unused
        "noise": (True, "noise", "decoder", "none", False),
        "embedding": (True, "embedding", "decoder", "none", False),
        "embedding-cosine": (True, "embedding", "decoder", "cosine", False),
        "embedding-cosine-buffer": (True, "embedding", "decoder", "cosine", True),
        "decoding": (True, "decoder", "decoder", "none", False),
        "decoding-cosine": (True, "decoder", "decoder", "cosine", False),
        "decoding-clip": (True, "decoder", "decoder", "clip", False),
        "full": (True, "decoder", "decoder", "clip", True),
        "full-direct": (True, "decoder", "decoder", "clip", True),  # the paper's G(z + δ), below
        # official-style mining: text-to-image from the question, the embedding adversary's δ
        # injected; the CLIP filter scores those generated images, so it stays valid here.
        "official": (True, "embedding", "official", "clip", True),
    }
    assert not rows["baseline"].trains
    residual = {
        name: apply_overrides(TrainConfig(), rows[name].overrides).game.residual_decode
        for name in ("full", "full-direct")
    }
    assert residual == {"full": True, "full-direct": False}  # the ablation reports both decodings
    assert [r.name for r in TABLES["main"]] == ["baseline", "sft", "full"]


def test_table4_pairs_each_ablation_row_with_the_row_it_adds_one_component_to():
    rows = {row.name: row for row in TABLES["4"]}

    def game(name):
        return apply_overrides(TrainConfig(), rows[name].overrides_for(TrainConfig())).validate().game

    added = {
        name: {key for key, value in vars(game(name)).items() if value != getattr(game(row.paired_with), key)}
        for name, row in rows.items()
        if row.paired_with
    }
    assert added == {
        "embedding": {"adversary"},  # the adversary's space: noise -> embedding -> decoding
        "decoding": {"adversary"},
        "embedding-cosine": {"filter"},
        "decoding-cosine": {"filter"},
        "decoding-clip": {"filter"},  # cosine -> CLIP
        "embedding-cosine-buffer": {"buffer"},
        "full": {"buffer"},
        "full-direct": {"residual_decode"},
    }
    assert {name: rows[name].paired_with for name in ("embedding", "decoding", "full")} == {
        "embedding": "noise", "decoding": "embedding", "full": "decoding-clip",
    }  # fmt: skip


# The two controls, checked by their overrides here and through plan_jobs below.
CONTROLS = ("sft-equal", "eps0")


def test_control_rows_derive_their_overrides_from_the_recipe():
    rows = {row.name: row for row in TABLES["4"]}
    recipe = TrainConfig()
    assert rows["sft-equal"].overrides_for(recipe) == {"game.enabled": False, "data.extra_clean_items": 16}
    recipe.data.batch_size = 8  # the replay batch defaults to the batch
    assert rows["sft-equal"].overrides_for(recipe)["data.extra_clean_items"] == 8
    recipe.game.replay_batch = 5
    assert rows["sft-equal"].overrides_for(recipe)["data.extra_clean_items"] == 5
    assert rows["eps0"].overrides_for(recipe) == {"game.eps_max": 0.0}
    assert "sft-equal" in [r.name for r in TABLES["confirm"]] and "eps0" in [
        r.name for r in TABLES["confirm"]
    ]


def test_plan_jobs_gives_the_control_rows_their_settings(tmp_path):
    recipe = apply_overrides(TrainConfig(), {"data.batch_size": 6})
    rows = [r for r in TABLES["4"] if r.name in CONTROLS]
    jobs = plan_jobs(rows, [0], recipe, tmp_path / "base", tmp_path / "out")
    by_row = {j.row: j.cfg for j in jobs}
    assert not by_row["sft-equal"].game.enabled and by_row["sft-equal"].data.extra_clean_items == 6
    assert by_row["eps0"].game.enabled and by_row["eps0"].game.eps_max == 0


def test_confirm_table_adds_best_as_full_plus_the_given_overrides(tmp_path):
    best = parse_set(["game.eps_max=0.1", "game.beta=1.0"])
    rows = table_rows("confirm", best)
    assert [r.name for r in rows] == ["baseline", "sft", "sft-equal", "eps0", "full", "best"]
    # ε_init follows ε_max as the budget sweep trained that point (ε_max / 2)
    assert rows[-1].label == "best: full + game.eps_max=0.1, game.beta=1.0, game.eps_init=0.05"
    assert rows[-1].paired_with == "full"  # also compared, seed by seed, with the paper default
    jobs = plan_jobs([rows[-1]], [2], TrainConfig(), tmp_path / "base", tmp_path / "out")
    cfg = jobs[0].cfg
    assert (cfg.game.enabled, cfg.game.eps_max, cfg.game.eps_init, cfg.game.beta, cfg.game.adversary) == (
        True,
        0.1,
        0.05,
        1.0,
        "decoder",
    )
    with pytest.raises(ValueError, match="--table confirm needs --best"):
        table_rows("confirm")
    with pytest.raises(ValueError, match="--best applies to --table confirm only"):
        table_rows("4", best)


def test_figure_rows_sweep_one_setting_each_beside_one_sft_reference(tmp_path):
    recipe = apply_overrides(TrainConfig(), {"optim.und_lr": 2e-3})
    out = tmp_path / "out"

    def planned(figure, **kwargs):
        jobs = plan_jobs(figure_rows(figure, **kwargs), [0], recipe, tmp_path / "base", out, split="val")
        assert jobs[0].row == "sft" and not jobs[0].cfg.game.enabled  # the shared reference band
        assert jobs[0].run_dir == str(out / "sft" / "seed-0" / "run")  # the same runs for every figure
        return {j.row: j.cfg for j in jobs[1:]}

    budget = planned("budget")
    assert list(budget) == [f"budget-{v:g}" for v in (0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5)]
    assert all(
        c.game.eps_init == c.game.eps_max / 2 and c.game.adversary == "decoder" for c in budget.values()
    )
    noise = planned("noise", values=[0.05, 0.5])
    assert {
        n: (c.game.adversary, c.game.filter, c.game.buffer, c.game.eps_max) for n, c in noise.items()
    } == {
        "noise-0.05": ("noise", "none", False, 0.05),
        "noise-0.5": ("noise", "none", False, 0.5),
    }
    beta = planned("beta", percentiles=[50.0])
    assert {n: (c.game.beta, c.game.percentile) for n, c in beta.items()} == {
        "beta-0.1": (0.1, 60.0), "beta-0.25": (0.25, 60.0), "beta-0.5": (0.5, 60.0),
        "beta-1": (1.0, 60.0), "beta-2": (2.0, 60.0), "tau-50": (0.5, 50.0),
    }  # fmt: skip
    lr = planned("lr")
    assert {n: c.optim.gen_lr for n, c in lr.items()} == pytest.approx(
        {"lr-5": 0.01, "lr-25": 0.05, "lr-100": 0.2, "lr-250": 0.5, "lr-1000": 2.0}
    )  # ratio x the recipe's und_lr
    assert all(c.optim.und_lr == 2e-3 for c in lr.values())
    with pytest.raises(ValueError, match="--percentiles applies to --figure beta only"):
        figure_rows("lr", percentiles=[40.0])
    with pytest.raises(ValueError, match="distinct"):
        figure_rows("budget", values=[0.1, 0.1])


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"figure": "budget", "split": "test"}, "val split only.*--table confirm"),
        ({"figure": "beta", "rows": ["sft"]}, "--rows and --best apply to --table"),
        ({"table": "4", "figure": "lr"}, "not both"),
        ({"table": "main", "values": [0.1]}, "--values applies to --figure only"),
    ],
)
def test_reproduce_refuses_contradictory_requests_before_any_work(kwargs, message, tmp_path):
    from unigame.reproduce import reproduce

    with pytest.raises(ValueError, match=message):
        reproduce(model=str(tmp_path / "no-base"), output=str(tmp_path / "out"), **kwargs)
    assert not (tmp_path / "out").exists()


def test_cli_refuses_a_test_split_figure_with_its_reason(capsys):
    from unigame.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["reproduce", "--figure", "noise", "--split", "test"])
    assert exit_info.value.code == 2
    assert "--figure noise runs on the val split only" in capsys.readouterr().err


def test_reproduce_help_renders_the_tables_and_figures(capsys):
    from unigame.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["reproduce", "--help"])
    assert exit_info.value.code == 0
    shown = capsys.readouterr().out
    for flag in ("--table", "--figure", "--best", "--values", "--percentiles", "--split", "--set"):
        assert flag in shown


def test_space_separated_list_flags_become_one_list():
    from unigame.cli import _space_separated_lists

    assert _space_separated_lists(
        [
            "reproduce",
            "--best",
            "game.eps_max=0.1",
            "game.beta=1.0",
            "--values",
            "0.02",
            "0.1",
            "--quick",
            "true",
        ]
    ) == [
        "reproduce",
        "--best",
        '["game.eps_max=0.1","game.beta=1.0"]',
        "--values",
        "[0.02,0.1]",
        "--quick",
        "true",
    ]
    assert _space_separated_lists(["reproduce", "--rows", "[sft,full]", "--seeds", "2"]) == [
        "reproduce", "--rows", "[sft,full]", "--seeds", "2",
    ]  # fmt: skip


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


def test_a_grid_with_several_workers_starts_its_longest_jobs_first(tmp_path, monkeypatch):
    from concurrent.futures import Future

    from unigame import reproduce as grid

    rows = [r for r in TABLES["4"] if r.name in ("baseline", "sft", "noise", "full", "official")]
    jobs = plan_jobs(rows, [0], TrainConfig(), tmp_path / "base", tmp_path / "out")
    assert [j.row for j in jobs] == ["baseline", "sft", "noise", "full", "official"]
    submitted = []

    class RecordingPool:  # runs each job at once, in the order it is submitted
        def __init__(self, *args, **kwargs):
            pass

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def submit(self, fn, job):
            submitted.append(job.row)
            future = Future()
            future.set_result({"row": job.row, "seed": job.seed})
            return future

    monkeypatch.setattr(grid, "ProcessPoolExecutor", RecordingPool)
    results = grid.run_jobs(jobs, workers=2)
    assert submitted == ["official", "full", "noise", "sft", "baseline"]
    assert [r["row"] for r in results] == ["baseline", "sft", "noise", "full", "official"]


def test_expected_cost_counts_what_is_left_on_disk(tmp_path):
    from unigame.reproduce import expected_cost
    from unigame.train.checkpoint import checkpoint_dir

    def checkpoint(step: int) -> None:  # a complete checkpoint is one with its state.json written
        directory = checkpoint_dir(full.run_dir, step)
        directory.mkdir(parents=True)
        (directory / "state.json").write_text("{}")

    (full,) = plan_jobs(
        [r for r in TABLES["4"] if r.name == "full"], [0], TrainConfig(), tmp_path, tmp_path / "out"
    )
    untouched = expected_cost(full)
    checkpoint(full.cfg.optim.steps // 2)
    half = expected_cost(full)
    assert untouched > half > 0
    checkpoint(full.cfg.optim.steps)
    assert 0 < expected_cost(full) < half  # trained: only its evaluation is left
    Path(full.eval_dir).mkdir(parents=True)
    (Path(full.eval_dir) / "metrics.json").write_text("{}")
    assert expected_cost(full) == 0.0


# ---------------------------------------------------------------------------- paired statistics
# Student's (1908) sleep data, the classic paired example: extra hours of sleep of 10 patients
# under two drugs; the differences (drug 2 - drug 1), as in R's `sleep` data set.
SLEEP_DIFFERENCES = [1.2, 2.4, 1.3, 1.3, 0.0, 1.0, 1.8, 0.8, 4.6, 1.4]


def test_paired_stats_pin_the_sleep_data():
    stats = paired_stats(SLEEP_DIFFERENCES)
    # R: t.test(extra ~ group, data = sleep, paired = TRUE) gives t = -4.0621, df = 9,
    # p-value = 0.002833, mean difference -1.58 (group 1 - group 2); se = 1.58 / 4.0621.
    assert stats["n"] == 10 and stats["mean"] == pytest.approx(1.58)
    assert stats["t"] == pytest.approx(4.0621, abs=1e-4)
    assert stats["se"] == pytest.approx(1.58 / 4.0621, rel=1e-4)
    assert stats["p_t"] == pytest.approx(0.002833, abs=1e-6)
    # R: binom.test(9, 9) (9 positive differences, the zero dropped): p-value = 0.003906 = 2 / 2^9.
    assert stats["p_sign"] == pytest.approx(2 / 2**9)


@pytest.mark.parametrize(
    ("t", "df", "p"),
    [
        (1.0, 1, 1 - 2 / math.pi * math.atan(1.0)),  # df 1 (Cauchy): P(|T| > t) = 1 - 2 atan(t) / π = 0.5
        (2 * math.sqrt(3), 2, 1 - math.sqrt(6 / 7)),  # df 2: P(|T| > t) = 1 - t / sqrt(2 + t²)
        (12.706, 1, 0.05),  # two-sided 5% critical values of Student's t tables (3 decimals)
        (4.303, 2, 0.05),
        (3.182, 3, 0.05),
        (2.776, 4, 0.05),
        (2.228, 10, 0.05),
        (0.0, 7, 1.0),
    ],
)
def test_t_test_p_known_values(t, df, p):
    assert t_test_p(t, df) == pytest.approx(p, abs=2e-4 if p == 0.05 else 1e-12)
    assert t_test_p(-t, df) == pytest.approx(t_test_p(t, df))


def test_sign_test_p_counts_non_zero_differences():
    assert sign_test_p([1.0, 2.0, 3.0]) == 0.25  # 2 x (1/2)^3
    assert sign_test_p([1.0, -1.0, 2.0]) == 1.0  # 2 x (1 + 3) / 8, capped
    assert sign_test_p([0.0, 0.0]) == 1.0
    assert sign_test_p([1.0, 1.0, 1.0, 1.0, 1.0, -1.0]) == pytest.approx(2 * 7 / 64)  # 2 P(X <= 1), n 6


def test_paired_stats_of_one_pair_or_no_spread():
    assert paired_stats([2.0]) == {"n": 1, "mean": 2.0, "se": None, "t": None, "p_t": None, "p_sign": 1.0}
    # No spread: the t statistic is undefined (not "p = 0"); only the sign test speaks.
    assert paired_stats([2.0, 2.0])["p_t"] is None and paired_stats([0.0, 0.0])["p_t"] is None
    assert paired_stats([2.0, 2.0])["p_sign"] == 0.5


# ---------------------------------------------------------------- summaries of synthetic grids
def _fake_run(
    path: Path, eps: list[str] | None = None, validity: dict | None = None, csv_validity=None
) -> str:
    """A run folder with the metrics.csv columns the summary reads (eps; label validity)."""
    path.mkdir(parents=True)
    header = ["step", "eps"] + (["label_valid_mined"] if csv_validity else [])
    lines = [",".join(header)]
    for i, value in enumerate(eps or ["", ""]):
        lines.append(",".join([str(i + 1), value] + ([str(csv_validity[i])] if csv_validity else [])))
    (path / "metrics.csv").write_text("\n".join(lines) + "\n")
    if validity is not None:
        (path / "label_validity.json").write_text(json.dumps(validity))
    return str(path)


def _result(tmp_path: Path, row: str, seed: int, clean: float, **run) -> dict:
    root = tmp_path / row / f"seed-{seed}"
    return {
        "row": row,
        "seed": seed,
        "eval_dir": _fake_eval(root / "eval", clean, 0.1),
        "run_dir": _fake_run(root / "run", **run),
        "train_s": 1,
        "eval_s": 1,
    }


def test_summary_pairs_every_trained_row_with_sft_and_sft_equal_by_seed(tmp_path):
    rows = table_rows("confirm", {"game.beta": 1.0})
    rows = [r for r in rows if r.name in ("baseline", "sft", "sft-equal", "full")]
    columns = COLUMNS["4"][:1] + (LEARNED_EPS,) + LABEL_VALIDITY
    results = [{"row": "baseline", "seed": -1, "eval_dir": _fake_eval(tmp_path / "b", 0.5, 0.1), "run_dir": None,
                "train_s": 0, "eval_s": 1}]  # fmt: skip
    results += [_result(tmp_path, "sft", s, c) for s, c in [(0, 0.60), (1, 0.62), (2, 0.61)]]
    results += [
        _result(tmp_path, "sft-equal", s, c, csv_validity=[0.5, 1.0]) for s, c in [(0, 0.61), (1, 0.61)]
    ]
    validity = {"label_valid_mined": 0.9, "label_valid_inserted": 0.8, "label_valid_rejected": 0.25}
    results += [
        _result(tmp_path, "full", s, c, eps=["0.01", e], validity=validity)
        for s, c, e in [(0, 0.61, "0.012"), (1, 0.64, "0.016"), (2, 0.64, "")]
    ]  # seed 2's last row has no ε: the last logged one counts
    summary = summarize(rows, results, columns)
    by_row = {e["row"]: e["cells"] for e in summary}
    assert by_row["full"]["learned ε"]["values"] == pytest.approx([0.012, 0.016, 0.01])
    assert by_row["sft"]["learned ε"]["mean"] is None  # SFT logs no ε
    assert by_row["full"]["label valid: mined"]["mean"] == pytest.approx(90.0)  # label_validity.json, x100
    assert by_row["sft-equal"]["label valid: mined"]["mean"] == pytest.approx(75.0)  # metrics.csv mean, x100
    assert by_row["baseline"]["label valid: mined"]["mean"] is None

    comparisons = paired_comparisons(summary, columns)
    assert [(c["row"], c["reference"], c["n"]) for c in comparisons] == [
        ("sft-equal", "sft", 2), ("full", "sft", 3), ("full", "sft-equal", 2),
    ]  # fmt: skip
    full_vs_sft = comparisons[1]["cells"]
    assert list(full_vs_sft) == ["clean VQA"]  # run columns are not compared: SFT has no ε
    # Differences 1, 2, 3 points: mean 2, sample std 1, se 1/sqrt(3); t = 2 sqrt(3) on df 2, where
    # P(|T| > t) = 1 - t / sqrt(2 + t^2) = 1 - sqrt(6/7) = 0.07418; sign test 2 / 2^3 = 0.25.
    cell = full_vs_sft["clean VQA"]
    assert cell["mean"] == pytest.approx(2.0) and cell["se"] == pytest.approx(1 / math.sqrt(3))
    assert cell["p_t"] == pytest.approx(1 - math.sqrt(6 / 7)) and cell["p_sign"] == 0.25
    assert comparisons[2]["cells"]["clean VQA"]["mean"] == pytest.approx(1.5)  # seeds 0 and 1 only: 0, 3

    table = markdown_table(summary, columns)
    assert table.splitlines()[0] == (
        "| row | seeds | clean VQA | learned ε | label valid: mined | label valid: inserted | label valid: rejected |"
    )
    assert (
        "| full: decoding + CLIP + buffer (UniGame) | 3 | 63.0 ± 1.7 | 0.0127 ± 0.00306 | 90.0 ± 0.0 |"
        in table
    )
    assert "| SFT | 3 | 61.0 ± 1.0 | – | – |" in table
    lines = comparisons_markdown(comparisons, columns).splitlines()
    assert lines[0] == "| row − reference | pairs | clean VQA |"
    assert lines[3] == "| full: decoding + CLIP + buffer (UniGame) − SFT | 3 | +2.0 ± 0.6 (p 0.074 / 0.250) |"


def test_summary_leaves_out_label_validity_columns_no_run_recorded(tmp_path):
    rows = [r for r in TABLES["main"] if r.name == "sft"]
    results = [_result(tmp_path, "sft", 0, 0.6)]
    summary = summarize(rows, results, COLUMNS["4"][:1] + LABEL_VALIDITY)
    assert (
        markdown_table(summary, COLUMNS["4"][:1] + LABEL_VALIDITY).splitlines()[0]
        == "| row | seeds | clean VQA |"
    )


def test_a_figure_run_writes_its_plot_table_and_record(tmp_path, monkeypatch):
    """The whole `--figure budget` path with training and evaluation replaced by files on disk."""
    from unigame import reproduce as grid

    clean = {"sft": 0.60, "budget-0.02": 0.62, "budget-0.1": 0.58}

    def fake_run_job(job):
        assert job.eval_seed == 1 and job.eval_dir.endswith("eval-val")
        _fake_eval(Path(job.eval_dir), clean[job.row] + job.seed / 100, 0.1)
        eps = [] if job.cfg is None or not job.cfg.game.enabled else [str(job.cfg.game.eps_init * 1.5)]
        _fake_run(Path(job.run_dir), eps=eps or None, validity={"label_valid_mined": 0.5} if eps else None)
        return {"row": job.row, "seed": job.seed, "eval_dir": job.eval_dir, "run_dir": job.run_dir,
                "reused": False, "train_s": 1.0, "eval_s": 1.0}  # fmt: skip

    monkeypatch.setattr(grid, "run_job", fake_run_job)
    out = tmp_path / "figures"
    record = grid.reproduce(figure="budget", values=[0.02, 0.1], seeds=2, steps=2, model=str(tmp_path / "base"),
                            output=str(out), workers=1)  # fmt: skip
    assert [(r["row"], r["seed"]) for r in record["results"]] == [
        ("sft", 0), ("sft", 1), ("budget-0.02", 0), ("budget-0.02", 1), ("budget-0.1", 0), ("budget-0.1", 1),
    ]  # fmt: skip
    assert record["split"] == "val" and record["sweeps"][0]["values"] == [0.02, 0.1]
    assert record["rows"]["budget-0.1"]["overrides"] == {"game.eps_max": 0.1, "game.eps_init": 0.05}
    png = (out / "figure-budget.png").read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 10_000
    text = (out / "figure-budget.md").read_text()
    assert text.startswith("# Figure budget: perturbation budget")
    assert "| ε_max = 0.1 | 2 | 58.5 ± 0.7 |" in text and "| 0.075 ± 0 | 50.0 ± 0.0 |" in text
    assert "| ε_max = 0.02 − SFT | 2 | +2.0 ± 0.0 (p – / 0.500) |" in text
    assert "![Figure budget" in text and "figure-budget.png" in text and "seeds [0, 1]" in text
    assert json.loads((out / "figure-budget.json").read_text())["comparisons"][0]["reference"] == "sft"
    assert [c for c, _ in FIGURE_COLUMNS] == [label for label, _ in record["columns"][: len(FIGURE_COLUMNS)]]


def test_every_figure_reports_the_learned_eps_not_only_the_budget_sweeps(tmp_path, monkeypatch):
    """A faster perturber (`--figure lr`) or another β moves the gate too: its ε is a column."""
    from unigame import reproduce as grid

    def fake_run_job(job):
        _fake_eval(Path(job.eval_dir), 0.6, 0.1)
        eps = [str(job.cfg.optim.gen_lr)] if job.cfg.game.enabled else None
        _fake_run(Path(job.run_dir), eps=eps)
        return {"row": job.row, "seed": job.seed, "eval_dir": job.eval_dir, "run_dir": job.run_dir,
                "reused": False, "train_s": 1.0, "eval_s": 1.0}  # fmt: skip

    monkeypatch.setattr(grid, "run_job", fake_run_job)
    out = tmp_path / "figures"
    grid.reproduce(figure="lr", values=[25.0], seeds=1, steps=2, model=str(tmp_path / "base"), output=str(out),
                   workers=1)  # fmt: skip
    text = (out / "figure-lr.md").read_text()
    assert (
        "| row | seeds | clean VQA | POPE F1 | NB G-Acc | adversarial split | PGD 8/255 | learned ε |" in text
    )
    assert "| gen_lr / und_lr = 25 | 1 | 60.0 |" in text and "| 0.025 |" in text  # 25 x und_lr 1e-3


def test_a_finished_run_with_another_config_is_not_reused(tmp_path):
    """A rerun into the same folder with other overrides must not report the old run as the new row."""
    import yaml

    from unigame.reproduce import run_job

    rows = table_rows("confirm", {"game.eps_max": 0.1})
    job = plan_jobs([rows[-1]], [0], TrainConfig(), tmp_path / "base", tmp_path / "out")[0]
    run_dir = Path(job.run_dir)
    lora = run_dir / "checkpoints" / f"step-{job.cfg.optim.steps:08d}" / "lora"
    lora.mkdir(parents=True)
    (lora / "adapter_config.json").write_text("{}")
    earlier = job.cfg.to_dict()
    earlier["game"]["eps_max"] = 0.5  # trained for an earlier --best
    (run_dir / "config.yaml").write_text(yaml.safe_dump(earlier))
    with pytest.raises(ValueError, match=r"game.eps_max: 0.5 -> 0.1"):
        run_job(job)


def test_internal_table_rows_and_unigame_after_csft_merges_that_seeds_csft_lora(tmp_path):
    rows = table_rows("internal")
    assert [r.name for r in rows] == [
        "baseline", "internal-sft", "internal-csft", "internal-dpo", "internal-oracle", "full", "full-after-csft",
    ]  # fmt: skip
    out = tmp_path / "out"
    jobs = plan_jobs(rows, [3], TrainConfig(), tmp_path / "base", out)
    by_row = {j.row: j for j in jobs}
    assert (
        by_row["internal-csft"].cfg.method == "internal-sft"
        and by_row["internal-csft"].cfg.internal.curriculum_rounds == 2
    )
    assert by_row["internal-dpo"].cfg.method == "internal-dpo"
    assert by_row["internal-oracle"].cfg.internal.judge == "oracle"
    assert by_row["full"].cfg.model.merge_lora is None and by_row["full"].cfg.game.enabled
    after = by_row["full-after-csft"].cfg
    assert after.method == "unigame" and after.game.enabled
    assert after.model.merge_lora == str(
        out / "internal-csft" / "seed-3" / "run" / "checkpoints" / "step-00000300" / "lora"
    )


def test_internal_table_pairs_rows_with_the_constant_base_and_reads_both_branches(tmp_path):
    rows = [
        r for r in table_rows("internal") if r.name in ("baseline", "internal-sft", "internal-oracle", "full")
    ]
    columns = (("GenEval strict", "clean_vqa.accuracy"), ("clean VQA", "naturalbench.g_acc"))  # stand-ins
    results = [{"row": "baseline", "seed": -1, "eval_dir": _fake_eval(tmp_path / "b", 0.30, 0.50), "run_dir": None,
                "train_s": 0, "eval_s": 1}]  # fmt: skip
    for row, values in (
        # generation +2/+3/+4 (p 0.035); understanding -1/-5/+2: a mean drop inside the spread
        ("internal-sft", [(0.32, 0.49), (0.33, 0.45), (0.34, 0.52)]),
        # +10/+8/+9 and +2/+2/+3 (p 0.004 and 0.020)
        ("internal-oracle", [(0.40, 0.52), (0.38, 0.52), (0.39, 0.53)]),
        # -2 on both at every seed: zero spread, the t-test is undefined, every seed moved down
        ("full", [(0.28, 0.48), (0.28, 0.48), (0.28, 0.48)]),
    ):
        for seed, (gen, und) in enumerate(values):
            root = tmp_path / row / f"seed-{seed}"
            results.append({"row": row, "seed": seed, "eval_dir": _fake_eval(root / "eval", gen, und),
                            "run_dir": None, "train_s": 1, "eval_s": 1})  # fmt: skip
    summary = summarize(rows, results, columns)
    comparisons = paired_comparisons(summary, columns, ("baseline", "internal-sft"))
    pairs = {(c["row"], c["reference"]): c for c in comparisons}
    # Against the base's one value: differences +2, +3 and +4 points for SFT's generation.
    assert pairs[("internal-sft", "baseline")]["cells"]["GenEval strict"]["mean"] == pytest.approx(3.0)
    assert pairs[("internal-sft", "baseline")]["n"] == 3
    assert pairs[("internal-oracle", "internal-sft")]["cells"]["GenEval strict"]["mean"] == pytest.approx(6.0)
    directions = {d["row"]: d for d in branch_directions(summary, comparisons)}
    # -1.3 points of VQA on average, but -1/-5/+2 over the seeds: not a direction
    assert directions["internal-sft"]["direction"] == "generation up, understanding no clear change"
    assert directions["internal-sft"]["understanding"] == pytest.approx(-4 / 3)
    assert directions["internal-oracle"]["direction"] == "co-improvement"
    assert directions["internal-oracle"]["understanding"] == pytest.approx(7 / 3)
    assert directions["internal-oracle"]["generation_p"] < 0.05
    assert directions["full"]["direction"] == "co-degradation"
    assert "baseline" not in directions


def test_one_seed_directions_use_the_half_point_threshold_and_say_so(tmp_path):
    rows = [r for r in table_rows("internal") if r.name in ("baseline", "internal-sft")]
    columns = (("GenEval strict", "clean_vqa.accuracy"), ("clean VQA", "naturalbench.g_acc"))
    results = [{"row": "baseline", "seed": -1, "eval_dir": _fake_eval(tmp_path / "b", 0.30, 0.50), "run_dir": None,
                "train_s": 0, "eval_s": 1},
               {"row": "internal-sft", "seed": 0, "eval_dir": _fake_eval(tmp_path / "s", 0.302, 0.40),
                "run_dir": None, "train_s": 1, "eval_s": 1}]  # fmt: skip
    summary = summarize(rows, results, columns)
    (direction,) = branch_directions(summary, paired_comparisons(summary, columns, ("baseline",)))
    assert direction["direction"] == "generation no clear change (1 seed), understanding down (1 seed)"


def test_sigterm_to_the_grid_terminates_its_workers():
    """`kill <grid>` must not leave spawned workers training on as orphans."""
    import os
    import signal

    from unigame.reproduce import forward_termination

    class Process:
        terminated = False

        def terminate(self):
            self.terminated = True

    class Pool:
        _processes = {1: Process(), 2: Process()}

    pool = Pool()
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(SystemExit) as exit_info, forward_termination(pool):
        os.kill(os.getpid(), signal.SIGTERM)
    assert exit_info.value.code == 143
    assert all(p.terminated for p in pool._processes.values())
    assert signal.getsignal(signal.SIGTERM) == before  # the previous handler is back


def test_schedule_table_plans_each_unigame_row_in_both_schedules_on_val(tmp_path):
    """`unigame reproduce --table schedule --split val --seeds 3`: baseline, SFT, and full and
    decoding + CLIP each alternating and simultaneous, 3 seeds, the val suite; the simultaneous rows
    differ from their partners by game.schedule alone."""
    rows = table_rows("schedule")
    assert [r.name for r in rows] == [
        "baseline", "sft", "full", "full-simultaneous", "decoding-clip", "decoding-clip-simultaneous",
    ]  # fmt: skip
    assert COLUMNS["schedule"] == COLUMNS["main"]
    jobs = plan_jobs(rows, [0, 1, 2], TrainConfig(), tmp_path / "base", tmp_path / "out", split="val")
    assert [(j.row, j.seed) for j in jobs] == [("baseline", -1)] + [
        (row, seed) for row in [r.name for r in rows[1:]] for seed in (0, 1, 2)
    ]
    assert all(j.eval_seed == 1 for j in jobs)  # the val suite
    cfg = {(j.row, j.seed): j.cfg for j in jobs if j.cfg is not None}
    assert [(cfg[r, 0].game.schedule, cfg[r, 0].game.buffer) for r in [r.name for r in rows[2:]]] == [
        ("alternating", True), ("simultaneous", True), ("alternating", False), ("simultaneous", False),
    ]  # fmt: skip
    for row in rows:
        if row.paired_with:
            differences = set(cfg[row.name, 1].to_dict()["game"].items()) ^ set(
                cfg[row.paired_with, 1].to_dict()["game"].items()
            )
            assert {key for key, _ in differences} == {"schedule"}, row.name
    assert not cfg["sft", 0].game.enabled


def test_paired_rows_are_compared_seed_by_seed_beside_the_references(tmp_path):
    rows = [r for r in table_rows("schedule") if r.name in ("sft", "full", "full-simultaneous")]
    columns = COLUMNS["4"][:1]
    results = [_result(tmp_path, "sft", s, c) for s, c in [(0, 0.60), (1, 0.62)]]
    results += [_result(tmp_path, "full", s, c) for s, c in [(0, 0.61), (1, 0.64)]]
    results += [_result(tmp_path, "full-simultaneous", s, c) for s, c in [(0, 0.62), (1, 0.63)]]
    summary = summarize(rows, results, columns)
    comparisons = paired_comparisons(summary, columns, pairs={"full-simultaneous": "full"})
    assert [(c["row"], c["reference"], c["n"]) for c in comparisons] == [
        ("full", "sft", 2), ("full-simultaneous", "sft", 2), ("full-simultaneous", "full", 2),
    ]  # fmt: skip
    cell = comparisons[-1]["cells"]["clean VQA"]  # differences +1 and -1 point
    assert cell["mean"] == pytest.approx(0.0) and cell["se"] == pytest.approx(1.0)


def test_the_schedule_grid_command_parses(monkeypatch):
    """The command that runs the schedule grid reaches `reproduce` with these arguments (nothing trains)."""
    import functools

    import unigame.cli
    from unigame.reproduce import reproduce

    seen = {}

    @functools.wraps(reproduce)
    def capture(*args, **kwargs):
        seen.update(kwargs)
        return {}

    monkeypatch.setattr(unigame.cli, "reproduce", capture)
    unigame.cli.main(
        [
            "reproduce",
            "--table",
            "schedule",
            "--split",
            "val",
            "--seeds",
            "3",
            "--workers",
            "2",
            "--threads",
            "1",
        ]
    )
    assert {k: seen[k] for k in ("table", "split", "seeds", "workers", "threads")} == {
        "table": "schedule", "split": "val", "seeds": 3, "workers": 2, "threads": 1,
    }  # fmt: skip


def test_run_columns_read_the_first_or_last_quarter_of_the_logged_steps(tmp_path):
    """`run.<col>:first` / `:last`: the mean over the first / last quarter of the steps that logged
    the column (empty cells, steps of the other phase, do not count); a drift the run mean hides."""
    from unigame.reproduce import _run_value

    lines = ["step,judge_answerable"] + [f"{step},{'' if step % 2 else value}" for step, value in
                                         enumerate([0.9, 0, 0.9, 0, 0.7, 0, 0.5, 0, 0.3, 0, 0.1, 0, 0.1, 0, 0.1])]  # fmt: skip
    (tmp_path / "metrics.csv").write_text("\n".join(lines) + "\n")
    # logged at the even steps: 0.9 0.9 0.7 0.5 0.3 0.1 0.1 0.1 -> quarters of 2 values
    assert _run_value(str(tmp_path), "run.judge_answerable") == pytest.approx(45.0)
    assert _run_value(str(tmp_path), "run.judge_answerable:first") == pytest.approx(90.0)
    assert _run_value(str(tmp_path), "run.judge_answerable:last") == pytest.approx(10.0)
    with pytest.raises(ValueError, match="'first' or 'last'"):
        _run_value(str(tmp_path), "run.judge_answerable:middle")


def test_paired_differences_of_nats_columns_keep_two_decimals():
    """STE moves in hundredths of a nat: one decimal would print every change as +0.0 ± 0.0."""
    cell = {"n": 3, "mean": -0.081, "se": 0.024, "p_t": 0.041, "p_sign": 0.25}
    comparison = {"row": "asg", "label": "ASG", "reference": "baseline", "reference_label": "base", "n": 3,
                  "cells": {"mean STE, shifted (nats)": cell, "clean VQA": dict(cell, mean=0.14, se=0.3)}}  # fmt: skip
    columns = (("mean STE, shifted (nats)", "ste.shifted"), ("clean VQA", "clean_vqa.accuracy"))
    line = comparisons_markdown([comparison], columns).splitlines()[2]
    assert line == "| ASG − base | 3 | -0.08 ± 0.02 (p 0.041 / 0.250) | +0.1 ± 0.3 (p 0.041 / 0.250) |"
