"""Mean ± std over seeds of the headline ShapesWorld metrics, from `unigame eval` run directories.

python benchmarks/summarize_runs.py --base runs/eval-base --group SFT runs/eval-sft-s* --group UniGame runs/eval-ug-s*
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

HEADLINE = [
    ("clean_vqa.accuracy", "clean VQA"),
    ("pope.mean_f1", "POPE F1 (mean of 3 splits)"),
    ("naturalbench.acc", "NaturalBench-style accuracy"),
    ("naturalbench.g_acc", "NaturalBench-style G-Acc"),
    ("adversarial_split.accuracy", "adversarial split"),
    ("pgd.eps_4.accuracy", "PGD 4/255"),
    ("pgd.eps_8.accuracy", "PGD 8/255"),
    ("consistency.score", "Consistency score"),
    ("geneval.strict.overall", "GenEval-style overall (strict)"),
]


def _metric(run: Path, key: str) -> float:
    value = json.loads((run / "metrics.json").read_text())["metrics"]
    for part in key.split("."):
        value = value[part]
    return 100 * float(value)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", type=Path, help="evaluation of the base model (optional)")
    parser.add_argument("--group", nargs="+", action="append", required=True, metavar=("NAME", "RUN"))
    args = parser.parse_args()
    groups = {g[0]: [Path(r) for r in g[1:]] for g in args.group}
    names = list(groups)
    header = ["metric"] + (["base"] if args.base else []) + [f"{n} ({len(groups[n])} seeds)" for n in names]
    if len(names) == 2:
        header.append(f"{names[1]} - {names[0]}")
    print("| " + " | ".join(header) + " |\n|" + "---|" * len(header))
    for key, label in HEADLINE:
        row = [label] + ([f"{_metric(args.base, key):.1f}"] if args.base else [])
        means = []
        for name in names:
            values = np.array([_metric(run, key) for run in groups[name]])
            means.append(values.mean())
            spread = values.std(ddof=1) if len(values) > 1 else 0.0
            row.append(f"{values.mean():.1f} ± {spread:.1f}")
        if len(names) == 2:
            row.append(f"{means[1] - means[0]:+.1f}")
        print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
