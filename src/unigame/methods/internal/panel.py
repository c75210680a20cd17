"""The chosen / rejected panel: what the model preferred among its own images, and whether the
exact judge agrees."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from torch import Tensor

from unigame.plotting import agg_figure, to_image

__all__ = ["pair_panel"]


def pair_panel(
    path: str | Path,
    prompts: Sequence[str],
    chosen: Tensor,
    rejected: Tensor,
    scores: Tensor,
    judged: Tensor | None,
) -> Path:
    """A PNG with one row per prompt: chosen | rejected image, each titled with the model's P(yes) and
    (ShapesWorld) the exact judge's verdict. chosen, rejected: (K, 3, H, W); scores, judged: (K, 2)."""
    k = chosen.shape[0]
    fig, axes = agg_figure(max(k, 1), 2, (6.0, 2.6 * max(k, 1)))
    for i in range(k):
        for j, (name, images) in enumerate((("chosen", chosen), ("rejected", rejected))):
            ax = axes[i][j]
            ax.imshow(to_image(images[i]), interpolation="nearest")
            verdict = "" if judged is None else " | judge: " + ("shows it" if bool(judged[i, j]) else "wrong")
            title = f"{prompts[i]}\n" if j == 0 else "\n"
            ax.set_title(f"{title}{name}: P(yes) {float(scores[i, j]):.2f}{verdict}", fontsize=7)
            ax.set_xticks([])
            ax.set_yticks([])
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    return path
