"""Observability of a run: per-step metrics to CSV + TensorBoard, PNG plots and hard-sample panels.

Named `run_logging` so it never shadows the standard library's `logging`. Plots use matplotlib's
object API with the Agg canvas (no pyplot, no global backend switch, no display needed).
"""

from __future__ import annotations

import csv
import math
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
from torch import Tensor

from unigame.plotting import agg_figure, to_image

__all__ = ["LabelCounts", "MetricsLogger", "hard_sample_panel", "plot_training_curves", "read_metrics"]


class MetricsLogger:
    """Write `log(step, {name: value})` rows to `<run>/metrics.csv` and TensorBoard (`<run>/tb`).

    The columns are fixed at construction (an unknown name is an error, so typos never vanish);
    missing or non-finite values are written as empty CSV cells and skipped in TensorBoard.
    `resume_step`: rows after it are dropped from an existing CSV and TensorBoard purges events
    after it, so a resumed run's logs read as one uninterrupted run.
    """

    def __init__(
        self,
        run_dir: str | Path,
        columns: Sequence[str],
        tensorboard: bool = True,
        resume_step: int | None = None,
    ) -> None:
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.columns = list(columns)
        self.csv_path = self.run_dir / "metrics.csv"
        kept = _rows_up_to(self.csv_path, resume_step) if resume_step is not None else []
        self._file = open(self.csv_path, "w", newline="")  # noqa: SIM115 - kept open for the run
        self._writer = csv.writer(self._file)
        self._writer.writerow(["step", *self.columns])
        for row in kept:
            self._writer.writerow([row.get("step", "")] + [row.get(c, "") for c in self.columns])
        self._file.flush()
        self._tb = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            purge = None if resume_step is None else resume_step + 1
            self._tb = SummaryWriter(str(self.run_dir / "tb"), purge_step=purge)

    def log(self, step: int, values: dict[str, float]) -> None:
        unknown = sorted(set(values) - set(self.columns))
        if unknown:
            raise KeyError(f"unknown metric(s) {unknown}; this logger writes {self.columns}")
        cells = []
        for name in self.columns:
            value = values.get(name)
            finite = value is not None and math.isfinite(float(value))
            cells.append(repr(float(value)) if finite else "")
            if finite and self._tb is not None:
                self._tb.add_scalar(f"train/{name}", float(value), step)
        self._writer.writerow([step, *cells])
        self._file.flush()

    def close(self) -> None:
        if not self._file.closed:
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()
        if self._tb is not None:
            self._tb.close()
            self._tb = None


@dataclass
class LabelCounts:
    """Run totals of the exact judge's label checks on mined candidates, for count-weighted means.

    A candidate's label holds when the judge reads the stored answer back from its image. Part of the
    checkpoint, so a resumed run's totals equal an uninterrupted run's.
    """

    mined: int = 0  # candidates judged
    mined_valid: int = 0  # ... whose label holds
    inserted: int = 0  # candidates inserted into the buffer (buffer off: selected for replay)
    inserted_valid: int = 0  # ... whose label holds
    rejected_valid: int = 0  # label-valid candidates the semantic filter rejected

    def add(self, valid: Tensor, passed: Tensor, inserted: Sequence[int]) -> dict[str, float]:
        """Count one mining batch -- `valid`, `passed`: (B,) bool; `inserted`: batch indices -- and
        return its `label_valid_mined`, `label_valid_inserted`, `label_valid_rejected` (NaN if 0/0)."""
        valid, passed = valid.bool().cpu(), passed.bool().cpu()
        batch = {
            "mined": valid.numel(),
            "mined_valid": int(valid.sum()),
            "inserted": len(inserted),
            "inserted_valid": int(valid[list(inserted)].sum()),
            "rejected_valid": int((valid & ~passed).sum()),
        }
        for name, count in batch.items():
            setattr(self, name, getattr(self, name) + count)
        return _label_shares(batch, math.nan)

    def summary(self) -> dict[str, Any]:
        """The run's three shares (None where nothing was counted) and the counts, JSON-able."""
        return _label_shares(asdict(self), None) | asdict(self)

    def state_dict(self) -> dict[str, int]:
        return asdict(self)

    def load_state_dict(self, state: dict[str, int]) -> None:
        for f in fields(self):
            setattr(self, f.name, int(state.get(f.name, 0)))


def _label_shares(counts: dict[str, int], undefined: Any) -> dict[str, Any]:
    def share(num: int, den: int) -> Any:
        return num / den if den else undefined

    return {
        "label_valid_mined": share(counts["mined_valid"], counts["mined"]),
        "label_valid_inserted": share(counts["inserted_valid"], counts["inserted"]),
        "label_valid_rejected": share(counts["rejected_valid"], counts["mined_valid"]),
    }


def _rows_up_to(path: Path, step: int) -> list[dict[str, str]]:
    if not path.is_file():
        return []
    with open(path, newline="") as handle:
        return [row for row in csv.DictReader(handle) if row.get("step") and int(row["step"]) <= step]


def read_metrics(path: str | Path) -> dict[str, np.ndarray]:
    """A metrics CSV as {column: float array} (empty cells are NaN)."""
    with open(path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    if not rows:
        return {}
    return {k: np.array([float(r[k]) if r[k] else np.nan for r in rows]) for k in rows[0]}


def _curve(ax: Any, steps: np.ndarray, values: np.ndarray, label: str) -> None:
    ok = np.isfinite(values)
    if ok.any():
        ax.plot(steps[ok], values[ok], label=label, linewidth=1.2)


def plot_training_curves(metrics_csv: str | Path, out_dir: str | Path) -> list[Path]:
    """Write `eps.png` (the challenger's budget ε per step) and `tug_of_war.png` (both players' losses).

    The tug-of-war plot shows the challenger's objective (CE on x̃, which it ascends) against the
    understanding player's CE on clean and hard samples (which it descends).
    """
    data = read_metrics(metrics_csv)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if not data:
        return []
    steps = data["step"]
    written = []
    if "eps" in data:
        fig, axes = agg_figure()
        ax = axes[0, 0]
        _curve(ax, steps, data["eps"], "ε")
        ax.set_xlabel("step")
        ax.set_ylabel("ε (per-token budget)")
        ax.set_title("Challenger budget ε = ε_max·sigmoid(s)")
        fig.tight_layout()
        fig.savefig(out / "eps.png")
        written.append(out / "eps.png")
    fig, axes = agg_figure(1, 2, (10.0, 3.5))
    left, right = axes[0]
    for name, label in (("ce_adv", "challenger: CE on x̃ (ascends)"), ("loss_challenge", "L_C = CE − λ‖δ‖²")):
        if name in data:
            _curve(left, steps, data[name], label)
    left.set_title("Challenger")
    for name, label in (
        ("ce_clean", "CE clean"),
        ("ce_hard", "CE hard (buffer / selected)"),
        ("loss_understand", "L_U = CE_clean + β·CE_hard"),
    ):
        if name in data:
            _curve(right, steps, data[name], label)
    right.set_title("Understanding player")
    for ax in (left, right):
        ax.set_xlabel("step")
        ax.set_ylabel("cross-entropy")
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "tug_of_war.png")
    written.append(out / "tug_of_war.png")
    return written


def hard_sample_panel(
    path: str | Path,
    clean: Tensor,
    adversarial: Tensor | None,
    questions: Sequence[str],
    answers: Sequence[str],
    predictions_clean: Sequence[str],
    predictions_adversarial: Sequence[str] | None,
    hardness: Sequence[float],
    judged: Sequence[bool] | None = None,
) -> Path:
    """A PNG with one row per hard sample: clean x | adversarial x̃, with question, answer, predictions.

    clean, adversarial: (K, 3, H, W) in [0, 1]; `adversarial` None for token-space samples (the
    perturbation has no image, so the right column says so). `judged`: per sample, whether an exact
    judge still reads the answer from x̃ ("judge: ok" / "judge: label lost"); None: not shown.
    """
    k = clean.shape[0]
    fig, axes = agg_figure(max(k, 1), 2, (6.0, 2.8 * max(k, 1)))
    for i in range(k):
        ax_clean, ax_adv = axes[i]
        ax_clean.imshow(to_image(clean[i]), interpolation="nearest")
        ax_clean.set_title(
            f"{questions[i]}\nanswer '{answers[i]}' | clean pred '{predictions_clean[i]}'", fontsize=7
        )
        if adversarial is not None:
            ax_adv.imshow(to_image(adversarial[i]), interpolation="nearest")
            pred = predictions_adversarial[i] if predictions_adversarial is not None else "n/a"
            verdict = "" if judged is None else " | judge: " + ("ok" if judged[i] else "label lost")
            ax_adv.set_title(f"adversarial x̃ (H = {hardness[i]:.2f})\npred '{pred}'{verdict}", fontsize=7)
        else:
            ax_adv.text(
                0.5, 0.5, "token-space perturbation\n(no image)", ha="center", va="center", fontsize=8
            )
            ax_adv.set_title(f"H = {hardness[i]:.2f}", fontsize=7)
        for ax in (ax_clean, ax_adv):
            ax.set_xticks([])
            ax.set_yticks([])
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    return path
