"""Means of a training run's logged game statistics over a step window, one line per run.

The figures in docs/results/investigation.md and table4.md (ε, CE clean / on x̃ / on replay,
filter pass rate, answers flipped) are these means over steps 150-300:

    python benchmarks/run_stats.py runs/reproduce-table4-test/full/seed-0/run --from-step 150
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from unigame.train.run_logging import read_metrics

COLUMNS = ("eps", "ce_clean", "ce_adv", "ce_hard", "filter_pass_rate", "attack_success_rate", "mined")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path, help="run folders (with metrics.csv)")
    parser.add_argument("--from-step", type=int, default=150, help="first step of the window")
    args = parser.parse_args(argv)
    missing = [str(run) for run in args.runs if not (run / "metrics.csv").is_file()]
    if missing:
        parser.error(
            "no metrics.csv in "
            + ", ".join(missing)
            + " (a `unigame reproduce` run keeps it in <row>/seed-N/run)"
        )
    print("| run | " + " | ".join(COLUMNS) + " |\n|---|" + "---:|" * len(COLUMNS))
    for run in args.runs:
        metrics = read_metrics(run / "metrics.csv")
        window = metrics["step"] >= args.from_step
        cells = []
        for column in COLUMNS:
            values = metrics[column][window] if column in metrics else np.array([])
            values = values[np.isfinite(values)]
            cells.append(f"{values.mean():.3f}" if values.size else "–")
        print(f"| {run} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
