"""End to end on a quick base: `unigame demo --quick`, then `unigame reproduce` on the base it built."""

from __future__ import annotations

import csv
import json
import re

import pytest

from unigame.cli import main


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    main(["demo", "--quick", "--output", str(out), "--workers", "1"])
    return out


def test_demo_prints_the_side_by_side_table_and_writes_the_report(demo_dir, capsys):
    report = (demo_dir / "report.md").read_text()
    header = next(line for line in report.splitlines() if line.startswith("| metric"))
    assert header == "| metric (%) | base | SFT | UniGame | UniGame − SFT |"
    row = next(line for line in report.splitlines() if line.startswith("| clean VQA |"))
    base, sft, unigame, delta = (float(x) for x in re.findall(r"[-+]?\d+\.\d", row))
    assert delta == pytest.approx(unigame - sft, abs=0.11)
    for figure in ("eps.png", "tug_of_war.png"):
        assert f"{figure})" in report
        assert (demo_dir / "full" / "seed-0" / "run" / "plots" / figure).is_file()
    for name in ("baseline", "sft", "full"):
        sub = "eval-test" if name == "baseline" else "seed-0/eval-test"
        assert json.loads((demo_dir / name / sub / "metrics.json").read_text())["suite"] == "shapes"

    # The two runs start from the same base and differ: the game changed the UniGame run.
    def eps_column(row: str) -> list[str]:
        with open(demo_dir / row / "seed-0" / "run" / "metrics.csv") as f:
            return [line["eps"] for line in csv.DictReader(f)]

    assert eps_column("sft") and not any(eps_column("sft"))
    assert all(float(eps) > 0 for eps in eps_column("full"))


def test_reproduce_runs_the_grid_writes_results_and_reuses_finished_runs(demo_dir, tmp_path):
    args = ["reproduce", "--table", "4", "--rows", "[baseline,sft,noise]", "--seeds", "2", "--steps", "3",
            "--model", str(demo_dir / "base"), "--output", str(tmp_path), "--quick", "--workers", "1",
            "--set", "game.beta=0.25"]  # fmt: skip
    main(args)
    record = json.loads((tmp_path / "table-4.json").read_text())
    assert record["overrides"] == {"game.beta": 0.25}
    assert "beta: 0.25" in (tmp_path / "noise" / "seed-0" / "run" / "config.yaml").read_text()
    assert [(r["row"], r["seed"]) for r in record["results"]] == [
        ("baseline", -1), ("sft", 0), ("sft", 1), ("noise", 0), ("noise", 1),
    ]  # fmt: skip
    assert all(r["eval_s"] > 0 for r in record["results"])
    assert [entry["n"] for entry in record["summary"]] == [1, 2, 2]
    results_md = (tmp_path / "table-4.md").read_text()
    assert "| random noise in token space | 2 |" in results_md and "seeds [0, 1]" in results_md
    # Seeds differ in what they train on (cfg.seed = data.split_seed = seed).
    configs = [(tmp_path / "sft" / f"seed-{s}" / "run" / "config.yaml").read_text() for s in (0, 1)]
    assert "split_seed: 0" in configs[0] and "split_seed: 1" in configs[1]
    main(args)  # everything on disk is reused (and its recorded time reported)
    again = json.loads((tmp_path / "table-4.json").read_text())
    assert all(r["reused"] for r in again["results"]) and not any(r["reused"] for r in record["results"])
    assert again["summary"] == record["summary"]


def test_reproduce_names_an_unknown_row():
    with pytest.raises(SystemExit) as exit_info:
        main(["reproduce", "--table", "main", "--rows", "[noise]"])
    assert exit_info.value.code == 2


@pytest.mark.slow
def test_reproduce_figure_trains_the_sweep_and_plots_it_against_sft(demo_dir, tmp_path):
    main(["reproduce", "--figure", "budget", "--values", "0.05", "--seeds", "1", "--steps", "2",
          "--model", str(demo_dir / "base"), "--output", str(tmp_path), "--quick", "--workers", "1"])  # fmt: skip
    record = json.loads((tmp_path / "figure-budget.json").read_text())
    assert [(r["row"], r["seed"]) for r in record["results"]] == [("sft", 0), ("budget-0.05", 0)]
    assert "eps_init: 0.025" in (tmp_path / "budget-0.05" / "seed-0" / "run" / "config.yaml").read_text()
    learned = record["summary"][1]["cells"]["learned ε"]["values"]
    assert len(learned) == 1 and 0 < learned[0] < 0.05  # the gate's last value, inside its bound
    assert (tmp_path / "figure-budget.png").read_bytes().startswith(b"\x89PNG")
    assert "| ε_max = 0.05 − SFT | 1 |" in (tmp_path / "figure-budget.md").read_text()
