"""One report across runs and methods: `unigame compare RUN RUN ... --output DIR`.

Writes `compare.md` and, beside it, `compare.html`, a page that travels alone (CSS inline, every
figure embedded as base64 PNG, no script, nothing fetched) with:

* the comparison table (every metric, deltas against the first run);
* per-question-kind accuracy bars (`*.per_kind`, `*.per_answer_type` groups of the metrics);
* each run's training curves, one line per run on shared axes;
* each run's hard-sample panel (clean image vs decoded adversarial image).

A RUN is an evaluation folder (metrics.json). Its training run, where the curves and panels live,
is the run whose LoRA the evaluation loaded (`model.lora` = RUN/checkpoints/step-N/lora), else a
`run/` folder beside the evaluation (the layout `unigame demo` and `unigame reproduce` write).
"""

from __future__ import annotations

import base64
import html
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from unigame.eval.report import (
    METRICS_FILE,
    compare_runs,
    flatten_metrics,
    load_run,
    run_labels,
)
from unigame.files import write_atomic
from unigame.plotting import agg_figure

__all__ = ["CURVES", "ComparedRun", "find_training_run", "write_comparison"]

# (metrics.csv column, axis title) of the training curves, in the order drawn.
CURVES: tuple[tuple[str, str], ...] = (
    ("ce_clean", "CE on clean items (understanding player)"),
    ("ce_hard", "CE on hard / replayed items"),
    ("ce_adv", "challenger: CE on x̃ (ascends)"),
    ("eps", "challenger budget ε"),
)
_KIND_GROUPS = ("per_kind", "per_answer_type")
_PANEL = Path("plots") / "hard_samples.png"


@dataclass
class ComparedRun:
    """One RUN argument: its label, evaluation record and the training run behind it (if found)."""

    label: str
    eval_dir: Path
    record: dict[str, Any]
    training_run: Path | None


def find_training_run(eval_dir: Path, record: Mapping[str, Any]) -> Path | None:
    """The training run behind an evaluation: the run holding its LoRA, else `<eval_dir>/../run`."""
    lora = record["model"].get("lora")
    candidates = []
    if lora:
        lora_path = Path(lora).expanduser()
        candidates.append(lora_path if lora_path.is_absolute() else Path.cwd() / lora_path)
    candidates = [c.parent.parent.parent for c in candidates if c.parent.parent.name == "checkpoints"]
    candidates.append(eval_dir.parent / "run")
    for run in candidates:
        if (run / "metrics.csv").is_file():
            return run
    return None


def _load(runs: Sequence[str | Path]) -> list[ComparedRun]:
    out = []
    for run, label in zip(runs, run_labels(runs), strict=True):
        path = Path(run)
        eval_dir = path.parent if path.name == METRICS_FILE else path
        record = load_run(path)
        out.append(ComparedRun(label, eval_dir, record, find_training_run(eval_dir, record)))
    return out


# ------------------------------------------------------------------------------------------ figures
def _kind_groups(runs: Sequence[ComparedRun]) -> dict[str, list[str]]:
    """{"clean_vqa.per_kind": ["colour", "count", ...]}: groups of per-kind accuracies, kinds in order."""
    groups: dict[str, list[str]] = {}
    for run in runs:
        for key in flatten_metrics(run.record["metrics"]):
            prefix, _, kind = key.rpartition(".")
            if prefix.rsplit(".", 1)[-1] in _KIND_GROUPS and kind not in groups.setdefault(prefix, []):
                groups[prefix].append(kind)
    return groups


def _kind_bars(path: Path, runs: Sequence[ComparedRun], group: str, kinds: Sequence[str]) -> None:
    fig, axes = agg_figure(1, 1, (max(5.0, 1.1 * len(kinds) * max(1, len(runs)) * 0.45 + 2), 3.4))
    ax = axes[0, 0]
    width = 0.8 / max(1, len(runs))
    x = np.arange(len(kinds))
    for i, run in enumerate(runs):
        flat = flatten_metrics(run.record["metrics"])
        values = [flat.get(f"{group}.{kind}", np.nan) for kind in kinds]
        bars = ax.bar(x + (i - (len(runs) - 1) / 2) * width, values, width, label=run.label)
        ax.bar_label(bars, labels=[f"{100 * v:.0f}" if np.isfinite(v) else "" for v in values], fontsize=6)
    ax.set_xticks(x, kinds, fontsize=8)
    ax.set_ylim(0, 1.08)
    ax.set_ylabel("accuracy", fontsize=8)
    ax.set_title(f"Accuracy per question kind: {group}", fontsize=10)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path)


def _curves(path: Path, runs: Sequence[ComparedRun]) -> bool:
    """Shared-axes training curves of every run with a training run; False when there is nothing to draw."""
    from unigame.train.run_logging import read_metrics

    data = {run.label: read_metrics(run.training_run / "metrics.csv") for run in runs if run.training_run}
    shown = [
        (col, title)
        for col, title in CURVES
        if any(np.isfinite(d.get(col, [np.nan])).any() for d in data.values())
    ]
    if not shown:
        return False
    cols = 2
    rows = -(-len(shown) // cols)
    fig, axes = agg_figure(rows, cols, (10.0, 3.0 * rows))
    for ax in axes.ravel()[len(shown) :]:
        ax.axis("off")
    for ax, (column, title) in zip(axes.ravel(), shown):
        for label, values in data.items():
            if column in values and np.isfinite(values[column]).any():
                ok = np.isfinite(values[column])
                ax.plot(values["step"][ok], values[column][ok], label=label, linewidth=1.2)
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("step", fontsize=8)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    return True


# ------------------------------------------------------------------------------------------ writing
def _data_uri(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode()


def _html_figure(path: Path, caption: str) -> str:
    alt = html.escape(caption, quote=True)
    return f"<figure><img src='{_data_uri(path)}' alt='{alt}'><figcaption>{html.escape(caption)}</figcaption></figure>"


def _table_rows(markdown: str) -> tuple[list[str], list[list[str]]]:
    """The Markdown table of `compare_runs` back as (header, rows), so both pages show one table."""
    lines = [line for line in markdown.splitlines() if line.startswith("|")]
    cells = [[c.strip() for c in line.strip("|").split("|")] for line in lines]
    return cells[0], cells[2:]


def write_comparison(runs: Sequence[str | Path], output: str | Path) -> dict[str, Path]:
    """Write compare.md, compare.html and the figures they show into `output`; returns their paths."""
    compared = _load(runs)
    table = compare_runs(runs)
    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)

    figures: list[tuple[str, Path, str]] = []  # (section, PNG, caption)
    for group, kinds in _kind_groups(compared).items():
        path = out / f"kinds-{group.replace('.', '-')}.png"
        _kind_bars(path, compared, group, kinds)
        figures.append(("kinds", path, f"Accuracy per question kind ({group}), per run"))
    curves = out / "training-curves.png"
    if _curves(curves, compared):
        figures.append(("curves", curves, "Training curves (metrics.csv of each run's training run)"))
    for run in compared:
        panel = run.training_run / _PANEL if run.training_run else None
        if panel is not None and panel.is_file():
            figures.append(("panels", panel, f"{run.label}: hard samples, clean x vs decoded adversarial x̃"))

    notes = []
    for run in compared:
        found = (
            f"training run {run.training_run}"
            if run.training_run
            else "no training run found (no curves or panel)"
        )
        lora = run.record["model"].get("lora") or "none"
        notes.append((run.label, str(run.eval_dir), f"{run.record['model']['path']} + LoRA {lora}", found))

    md = ["# unigame comparison", ""]
    md += [f"* **{label}**: `{evals}`; model {model}; {found}" for label, evals, model, found in notes]
    md += ["", table, ""]
    titles = {
        "kinds": "Accuracy per question kind",
        "curves": "Training curves",
        "panels": "Hard-sample panels",
    }
    for section, title in titles.items():
        shown = [(p, c) for s, p, c in figures if s == section]
        if shown:
            md += [f"## {title}", ""]
            md += [f"![{c}]({os.path.relpath(p, out)})\n" for p, c in shown]

    header, rows = _table_rows(table)
    page = [
        "<!doctype html><html><head><meta charset='utf-8'><title>unigame comparison</title>",
        "<style>body{font-family:sans-serif;max-width:75em;margin:2em auto;padding:0 1em}"
        "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:2px 8px;"
        "font-size:85%;text-align:left}td:not(:first-child){font-family:monospace}img{max-width:100%}"
        "figure{margin:1em 0}figcaption{font-size:85%;color:#444}</style></head><body>",
        "<h1>unigame comparison</h1>",
        "<table><thead><tr><th>run</th><th>evaluation</th><th>model</th><th>training</th></tr></thead><tbody>",
        *("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in note) + "</tr>" for note in notes),
        "</tbody></table>",
        f"<p>{html.escape(table.split(chr(10), 1)[0])}</p>",
        "<h2>Metrics</h2><table><thead><tr>",
        *(f"<th>{html.escape(h)}</th>" for h in header),
        "</tr></thead><tbody>",
        *("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in rows),
        "</tbody></table>",
    ]
    for section, title in titles.items():
        shown = [(p, c) for s, p, c in figures if s == section]
        if shown:
            page.append(f"<h2>{title}</h2>")
            page += [_html_figure(p, c) for p, c in shown]
    page.append("</body></html>")

    paths = {"markdown": out / "compare.md", "html": out / "compare.html"}
    write_atomic(paths["markdown"], "\n".join(md).encode())
    write_atomic(paths["html"], "\n".join(page).encode())
    return paths
