"""The question panel: what the Proposer asked, how the Solver answered, and what is true."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from torch import Tensor

from unigame.plotting import agg_figure, to_image

__all__ = ["question_panel"]


def _distribution(answers: Sequence[str]) -> str:
    counts: dict[str, int] = {}
    for answer in answers:
        key = answer.strip().lower() or "(empty)"
        counts[key] = counts.get(key, 0) + 1
    return ", ".join(f"{a} x{c}" for a, c in sorted(counts.items(), key=lambda item: -item[1]))


def question_panel(path: str | Path, pixels: Tensor, rows: Sequence[Mapping[str, Any]]) -> Path:
    """A PNG with one image per kept question (rows of questions.jsonl), titled with the question,
    its bucket and STE, the Solver's answer distribution and majority share, and the exact judge's
    truth ("unanswerable" when the question's referent is missing or ambiguous in the scene;
    nothing shown for data without a judge). pixels: (K, 3, H, W)."""
    k = len(rows)
    cols = min(4, max(k, 1))
    grid = (k + cols - 1) // cols
    fig, axes = agg_figure(max(grid, 1), cols, (3.6 * cols, 3.4 * max(grid, 1)))
    for i in range(grid * cols):
        ax = axes[i // cols][i % cols]
        ax.set_xticks([])
        ax.set_yticks([])
        if i >= k:
            ax.axis("off")
            continue
        row = rows[i]
        ax.imshow(to_image(pixels[i]), interpolation="nearest")
        if not row["judged"]:
            truth = ""
        elif row["truth"] is None:
            truth = "\njudge: unanswerable"
        else:
            truth = f"\njudge: {row['truth']} (majority {'right' if row['majority_correct'] else 'wrong'})"
        ax.set_title(
            f"step {row['step']}: {row['question']}\n{row['bucket']}, STE {row['ste']:.2f}\n"
            f"{_distribution(row['answers'])}\nmajority '{row['majority']}' ({row['share']:.0%}){truth}",
            fontsize=6,
        )
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    return path
