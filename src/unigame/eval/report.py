"""Evaluation outputs: `metrics.json` (a stable schema), a Markdown and an HTML report with plots,
and `compare` tables across runs.

metrics.json, schema_version 1 (every key always present):

    schema_version  int, 1; bumped whenever a key below changes meaning or moves
    suite           "shapes" | "vqav2" | "advqa" | "pope" | "naturalbench" | "mmmu"
    model           {"path": str, "lora": str | null, "adapter": adapter class name}
    data            benchmark data path (str) or null for the shapes suite
    config          the suite's configuration (shapes: the ShapesConfig; benchmarks: prompt options)
    seeds           {"seed": int}
    sizes           items per part (shapes: `ShapesSizes`; benchmarks: batch/image size, answer tokens)
    versions        {"python", "torch", "transformers", "peft", "numpy", "unigame"}
    machine         {"platform", "device", "torch_threads", "gpu" (name or null)}
    started_at, finished_at   ISO 8601 UTC timestamps;  wall_s  float seconds
    timings_s       seconds per part of the suite
    skipped         {data file: [message per dropped row]} (empty unless --skip_bad dropped rows)
    metrics         nested dict; leaves are numbers (see docs/benchmarks.md for every key)

Reading: `load_run(path)` accepts a metrics.json file or the run folder holding it.
"""

from __future__ import annotations

import base64
import html
import json
import platform
import textwrap
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from unigame.eval.common import SuiteResult
from unigame.files import write_atomic

__all__ = [
    "SCHEMA_VERSION",
    "build_record",
    "compare_runs",
    "flatten_metrics",
    "headline",
    "load_run",
    "markdown_report",
    "run_labels",
    "write_run",
]

SCHEMA_VERSION = 1
METRICS_FILE = "metrics.json"
REQUIRED_KEYS = (
    "schema_version",
    "suite",
    "model",
    "data",
    "config",
    "seeds",
    "sizes",
    "versions",
    "machine",
    "started_at",
    "finished_at",
    "wall_s",
    "timings_s",
    "skipped",
    "metrics",
)

# (label, dotted metric key) shown first in reports; fractions are printed x100.
SHAPES_HEADLINE: tuple[tuple[str, str], ...] = (
    ("Clean VQA accuracy", "clean_vqa.accuracy"),
    ("POPE F1 (mean of 3 splits)", "pope.mean_f1"),
    ("POPE accuracy, adversarial", "pope.adversarial.accuracy"),
    ("NaturalBench-style accuracy (shifted)", "naturalbench.accuracy"),
    ("NaturalBench-style G-Acc", "naturalbench.g_acc"),
    ("Adversarial split accuracy", "adversarial_split.accuracy"),
    ("PGD accuracy, eps 4/255", "pgd.eps_4.accuracy"),
    ("PGD accuracy, eps 8/255", "pgd.eps_8.accuracy"),
    ("GenEval-style overall", "geneval.overall"),
    ("GenEval-style overall, strict", "geneval.strict.overall"),
    ("UnifiedBench (mean cosine)", "unifiedbench.score"),
    ("Nonunified score (lower is better)", "nonunified.score"),
    ("Consistency score", "consistency.score"),
)
_HEADLINE_SUFFIXES = ("accuracy", "f1", "g_acc", "q_acc", "i_acc", "acc")
# Leaves that are counts, printed as integers.
_COUNT_KEYS = frozenset(
    {"n", "groups", "questions", "tp", "fp", "tn", "fn", "steps", "n_per_task", "multi_image_questions"}
)


# ------------------------------------------------------------------------------------------- record
def _versions() -> dict[str, str | None]:
    import sys

    import torch
    import transformers

    import unigame

    try:
        import peft

        peft_version: str | None = peft.__version__
    except ImportError:  # pragma: no cover - peft is a dependency
        peft_version = None
    return {
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "peft": peft_version,
        "numpy": np.__version__,
        "unigame": unigame.__version__,
    }


def _machine(device: str) -> dict[str, Any]:
    import torch

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() and device.startswith("cuda") else None
    return {
        "platform": platform.platform(),
        "device": device,
        "torch_threads": torch.get_num_threads(),
        "gpu": gpu,
    }


def _iso(t: datetime) -> str:
    return t.astimezone(timezone.utc).isoformat(timespec="seconds")


def build_record(
    result: SuiteResult,
    *,
    suite: str,
    model_path: str,
    lora: str | None,
    adapter_name: str,
    data: str | None,
    config: Mapping[str, Any],
    seed: int,
    started: datetime,
    finished: datetime,
    device: str = "cpu",
) -> dict[str, Any]:
    """The metrics.json document of one run (schema in the module docstring)."""
    return {
        "schema_version": SCHEMA_VERSION,
        "suite": suite,
        "model": {"path": model_path, "lora": lora, "adapter": adapter_name},
        "data": data,
        "config": dict(config),
        "seeds": {"seed": seed},
        "sizes": result.sizes,
        "versions": _versions(),
        "machine": _machine(device),
        "started_at": _iso(started),
        "finished_at": _iso(finished),
        "wall_s": round((finished - started).total_seconds(), 3),
        "timings_s": result.timings_s,
        "skipped": result.skipped,
        "metrics": result.metrics,
    }


def load_run(path: str | Path) -> dict[str, Any]:
    """A run's metrics.json document, from the file or the run folder; checks the schema keys."""
    path = Path(path)
    file = path / METRICS_FILE if path.is_dir() else path
    if not file.is_file():
        raise FileNotFoundError(f"{path}: no {METRICS_FILE} (pass a run folder written by `unigame eval`)")
    record = json.loads(file.read_text())
    missing = [k for k in REQUIRED_KEYS if k not in record]
    if missing:
        raise ValueError(f"{file}: not a unigame metrics.json (missing {', '.join(missing)})")
    if record["schema_version"] > SCHEMA_VERSION:
        raise ValueError(
            f"{file}: schema_version {record['schema_version']} is newer than this unigame reads "
            f"({SCHEMA_VERSION}); upgrade unigame"
        )
    return record


# ------------------------------------------------------------------------------------------ tables
def flatten_metrics(metrics: Mapping[str, Any], prefix: str = "") -> dict[str, float]:
    """Nested metrics -> {"clean_vqa.accuracy": 0.81, ...}: every numeric leaf, in document order."""
    out: dict[str, float] = {}
    for key, value in metrics.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out |= flatten_metrics(value, name + ".")
        elif isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool):
            out[name] = float(value)
    return out


def headline(record: Mapping[str, Any]) -> list[tuple[str, str, float]]:
    """(label, key, value) of the run's headline metrics: a fixed list for the shapes suite, the
    accuracy-like leaves (accuracy, F1, NaturalBench's Q/I/G-Acc) for benchmark suites."""
    flat = flatten_metrics(record["metrics"])
    if record["suite"] == "shapes":
        return [(label, key, flat[key]) for label, key in SHAPES_HEADLINE if key in flat]
    return [
        (key, key, value)
        for key, value in flat.items()
        if key.rsplit(".", 1)[-1] in _HEADLINE_SUFFIXES and key.count(".") <= 1
    ]


def _fmt(key: str, value: float | None) -> str:
    if value is None:
        return "-"
    if key.rsplit(".", 1)[-1] in _COUNT_KEYS:
        return f"{value:.0f}"
    return f"{value:.4f}"


def _md_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def run_labels(runs: Sequence[str | Path]) -> list[str]:
    """Short names for runs: for each, the fewest trailing path parts no other run's path ends with
    (`unigame reproduce` names every evaluation `<row>/seed-N/eval-test`: `base/eval-test`,
    `sft/seed-0/eval-test`, ...); the folder name when that is unique."""
    parts = []
    for run in runs:
        path = Path(run)
        path = path.parent if path.name == METRICS_FILE else path
        parts.append(path.parts or (str(path),))
    labels = []
    for i, own in enumerate(parts):
        others = [p for j, p in enumerate(parts) if j != i]
        k = next((k for k in range(1, len(own)) if all(p[-k:] != own[-k:] for p in others)), len(own))
        labels.append("/".join(own[-k:]))
    return labels


def compare_runs(runs: Sequence[str | Path]) -> str:
    """A Markdown table of every metric of each run side by side, with deltas vs the first run.

    Rows are the union of the runs' metric keys (first appearance order); a run lacking a key
    shows "-". Deltas are in the metric's own units (fractions stay fractions).
    """
    if not runs:
        raise ValueError("compare needs at least one run (a metrics.json file or a run folder)")
    records = [load_run(r) for r in runs]
    flats = [flatten_metrics(r["metrics"]) for r in records]
    keys: list[str] = []
    for flat in flats:
        keys += [k for k in flat if k not in keys]
    labels = run_labels(runs)
    header = ["metric", *(labels[:1]), *(f"{label} (Δ vs {labels[0]})" for label in labels[1:])]
    rows = []
    for key in keys:
        base = flats[0].get(key)
        row = [key, _fmt(key, base)]
        for flat in flats[1:]:
            value = flat.get(key)
            if value is None or base is None:
                row.append(_fmt(key, value))
            else:
                delta = value - base
                shown = f"{delta:+.0f}" if key.rsplit(".", 1)[-1] in _COUNT_KEYS else f"{delta:+.4f}"
                row.append(f"{_fmt(key, value)} ({shown})")
        rows.append(row)
    suites = sorted({r["suite"] for r in records})
    note = f"Suites: {', '.join(suites)}." + (
        "" if len(suites) == 1 else " (different suites: compare with care)"
    )
    return note + "\n\n" + _md_table(header, rows)


# ------------------------------------------------------------------------------------------- plots
def _bar_plot(path: Path, labels: Sequence[str], values: Sequence[float], title: str, xlabel: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 0.35 * len(labels) + 1.2))
    y = np.arange(len(labels))
    ax.barh(y, values, color="#4c72b0")
    ax.set_yticks(y, labels, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlim(0, max(1.0, max(values, default=0.0)))
    for yi, v in zip(y, values):
        ax.text(v, yi, f" {v:.3f}", va="center", fontsize=7)
    ax.set_title(title, fontsize=10)
    ax.set_xlabel(xlabel, fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _pgd_plot(path: Path, pgd: Mapping[str, Any]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    budgets = sorted((v["eps"], v["accuracy"]) for k, v in pgd.items() if k.startswith("eps_"))
    xs = [0.0] + [255 * e for e, _ in budgets]
    ys = [pgd["clean_accuracy"]] + [a for _, a in budgets]
    fig, ax = plt.subplots(figsize=(4.5, 3))
    ax.plot(xs, ys, marker="o")
    ax.set_xlabel("L-inf budget eps (x 1/255)", fontsize=8)
    ax.set_ylabel("accuracy", fontsize=8)
    ax.set_ylim(0, 1)
    ax.set_title(f"PGD, {pgd['steps']} steps, {pgd['n']:.0f} questions", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _geneval_plot(path: Path, geneval: Mapping[str, Any]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = [k for k, v in geneval.items() if isinstance(v, float) and k != "overall"]
    strict = geneval.get("strict", {})
    x = np.arange(len(tasks))
    fig, ax = plt.subplots(figsize=(6.5, 3))
    ax.bar(x - 0.2, [geneval[t] for t in tasks], 0.4, label="GenEval rule")
    ax.bar(x + 0.2, [strict.get(t, 0.0) for t in tasks], 0.4, label="strict (nothing extra)")
    ax.set_xticks(x, tasks, fontsize=7, rotation=20)
    ax.set_ylim(0, 1)
    ax.legend(fontsize=7)
    ax.set_title("GenEval-style generation, judged exactly", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _panel_plot(path: Path, examples: Sequence[tuple[np.ndarray, str]], title: str, columns: int = 4) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = max(1, -(-len(examples) // columns))
    fig, axes = plt.subplots(rows, columns, figsize=(2.2 * columns, 2.8 * rows), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, (image, label) in zip(axes.ravel(), examples):
        ax.imshow(image, interpolation="nearest")
        printable = "".join(
            c if c.isprintable() else "?" for c in label
        )  # untrained captions hold control bytes
        ax.set_title("\n".join(textwrap.wrap(printable, 28)[:3]), fontsize=6)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _figures(out: Path, record: Mapping[str, Any], panels: Mapping[str, Sequence]) -> list[tuple[str, str]]:
    """Draw the run's PNGs next to the reports; returns (file name, caption) pairs."""
    figures = []
    rows = headline(record)
    if rows:
        _bar_plot(
            out / "headline.png", [r[0] for r in rows], [r[2] for r in rows], "Headline metrics", "value"
        )
        figures.append(("headline.png", "Headline metrics (fractions; cosines for UnifiedBench)"))
    metrics = record["metrics"]
    if "pgd" in metrics:
        _pgd_plot(out / "pgd.png", metrics["pgd"])
        figures.append(("pgd.png", "Accuracy under pixel-space PGD (eps 0 = clean)"))
    if "geneval" in metrics:
        _geneval_plot(out / "geneval.png", metrics["geneval"])
        figures.append(("geneval.png", "GenEval-style scores per task"))
    for name, examples in panels.items():
        if len(examples):
            _panel_plot(out / f"panel_{name}.png", examples, name)
            figures.append((f"panel_{name}.png", f"Examples: {name}"))
    return figures


# ------------------------------------------------------------------------------------------ reports
def _meta_rows(record: Mapping[str, Any]) -> list[tuple[str, str]]:
    versions = ", ".join(f"{k} {v}" for k, v in record["versions"].items())
    machine = record["machine"]
    return [
        ("suite", record["suite"]),
        ("model", f"{record['model']['path']} ({record['model']['adapter']})"),
        ("LoRA", str(record["model"]["lora"] or "none")),
        ("data", str(record["data"] or "ShapesWorld (generated)")),
        ("seed", str(record["seeds"]["seed"])),
        ("sizes", json.dumps(record["sizes"])),
        ("versions", versions),
        ("machine", f"{machine['platform']}, {machine['device']}, {machine['torch_threads']} torch threads"),
        ("started / wall", f"{record['started_at']} / {record['wall_s']:.1f} s"),
    ]


def markdown_report(record: Mapping[str, Any], figures: Sequence[tuple[str, str]] = ()) -> str:
    """The run as Markdown: metadata, headline table, every metric, timings, skipped rows, figures."""
    parts = [f"# unigame evaluation: {record['suite']}", "", _md_table(["", ""], _meta_rows(record)), ""]
    rows = headline(record)
    if rows:
        parts += [
            "## Headline",
            "",
            _md_table(["metric", "value", "key"], [(lbl, _fmt(k, v), f"`{k}`") for lbl, k, v in rows]),
            "",
        ]
    flat = flatten_metrics(record["metrics"])
    parts += [
        "## All metrics",
        "",
        "Fractions in [0, 1], cosines in [-1, 1], losses in nats, counts as integers.",
        "",
    ]
    parts += [_md_table(["key", "value"], [(f"`{k}`", _fmt(k, v)) for k, v in flat.items()]), ""]
    if record["timings_s"]:
        parts += ["## Timings (s)", "", _md_table(["part", "seconds"], list(record["timings_s"].items())), ""]
    if record["skipped"]:
        parts += ["## Skipped rows", ""]
        for source, messages in record["skipped"].items():
            parts += [f"* `{source}`: {len(messages)} row(s); first: {messages[0]}"]
        parts.append("")
    for name, caption in figures:
        parts += [f"![{caption}]({name})", ""]
    return "\n".join(parts)


def _html_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def html_report(
    record: Mapping[str, Any], out: Path, figures: Sequence[tuple[str, str]], embed: bool = True
) -> str:
    """The run as one HTML page; PNGs are embedded as base64 (`embed`) so the page travels alone."""
    flat = flatten_metrics(record["metrics"])
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>unigame evaluation: {html.escape(record['suite'])}</title>",
        "<style>body{font-family:sans-serif;max-width:60em;margin:2em auto}"
        "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:2px 8px;"
        "font-size:90%;text-align:left}img{max-width:100%}</style></head><body>",
        f"<h1>unigame evaluation: {html.escape(record['suite'])}</h1>",
        _html_table(["", ""], _meta_rows(record)),
    ]
    rows = headline(record)
    if rows:
        parts += [
            "<h2>Headline</h2>",
            _html_table(["metric", "value", "key"], [(lbl, _fmt(k, v), k) for lbl, k, v in rows]),
        ]
    for name, caption in figures:
        src = name
        if embed:
            src = "data:image/png;base64," + base64.b64encode((out / name).read_bytes()).decode()
        parts.append(
            f"<figure><img src='{src}' alt='{html.escape(caption)}'><figcaption>{html.escape(caption)}</figcaption></figure>"
        )
    parts += [
        "<h2>All metrics</h2>",
        _html_table(["key", "value"], [(k, _fmt(k, v)) for k, v in flat.items()]),
    ]
    if record["timings_s"]:
        parts += ["<h2>Timings (s)</h2>", _html_table(["part", "seconds"], list(record["timings_s"].items()))]
    if record["skipped"]:
        parts += [
            "<h2>Skipped rows</h2>",
            _html_table(
                ["source", "rows", "first"], [(s, len(m), m[0]) for s, m in record["skipped"].items()]
            ),
        ]
    parts.append("</body></html>")
    return "\n".join(parts)


def write_run(
    output: str | Path, record: Mapping[str, Any], panels: Mapping[str, Sequence] | None = None
) -> dict[str, Path]:
    """Write metrics.json (atomically), the PNG figures, report.md and report.html into `output`."""
    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    figures = _figures(out, record, panels or {})
    paths = {"metrics": out / METRICS_FILE, "markdown": out / "report.md", "html": out / "report.html"}
    write_atomic(paths["metrics"], (json.dumps(record, indent=2) + "\n").encode())
    write_atomic(paths["markdown"], markdown_report(record, figures).encode())
    write_atomic(paths["html"], html_report(record, out, figures).encode())
    return paths | {name: out / name for name, _ in figures}
