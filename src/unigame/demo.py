"""`unigame demo`: the main job, end to end on a laptop CPU.

Build (or load) the tiny Janus base, post-train SFT and UniGame from it for the same steps, run the
shapes suite on the base and both runs, print them side by side and write a report with the
training curves (ε, the tug of war) and the hard-sample panel. `quick` shrinks everything (a base
of a few dozen steps, a few post-training steps, the CI evaluation sizes) to check the pipeline in
about a minute; its numbers mean nothing.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from unigame.pretrain.base import BaseConfig, BaseTraining
from unigame.reproduce import BASELINE, FULL, SFT, default_workers, metric_percent, plan_jobs, run_jobs

__all__ = ["QUICK_BASE", "demo_table", "run_demo"]

QUICK_BASE = BaseTraining(vq_steps=30, vision_steps=30, janus_steps=30, clip_steps=30, batch_size=16)
QUICK_STEPS = 10

# (label, metrics.json key)
DEMO_METRICS: tuple[tuple[str, str], ...] = (
    ("clean VQA", "clean_vqa.accuracy"),
    ("POPE F1 (3 splits)", "pope.mean_f1"),
    ("NaturalBench-style accuracy", "naturalbench.accuracy"),
    ("NaturalBench-style G-Acc", "naturalbench.g_acc"),
    ("adversarial split", "adversarial_split.accuracy"),
    ("PGD 4/255", "pgd.eps_4.accuracy"),
    ("PGD 8/255", "pgd.eps_8.accuracy"),
    ("UnifiedBench (cosine)", "unifiedbench.score"),
    ("Nonunified (lower is better)", "nonunified.score"),
    ("Consistency score", "consistency.score"),
    ("GenEval-style (strict)", "geneval.strict.overall"),
)


def demo_table(evals: Mapping[str, str | Path]) -> str:
    """Markdown: one column per evaluated model (base, SFT, UniGame), then UniGame − SFT."""
    names = list(evals)
    lines = [
        "| metric (%) | " + " | ".join(names) + " | UniGame − SFT |",
        "|---|" + "---|" * (len(names) + 1),
    ]
    for label, key in DEMO_METRICS:
        values = {n: metric_percent(evals[n], key) for n in names}
        delta = values["UniGame"] - values["SFT"]
        lines.append(f"| {label} | " + " | ".join(f"{values[n]:.1f}" for n in names) + f" | {delta:+.1f} |")
    return "\n".join(lines)


def label_validity_line(run_dir: Path) -> str | None:
    """What the exact judge says of the UniGame run's replayed images, from its label_validity.json."""
    import json

    path = run_dir / "label_validity.json"
    if not path.is_file():
        return None
    shares = json.loads(path.read_text())
    if shares.get("label_valid_inserted") is None:
        return None
    return (
        f"label validity (exact judge): {100 * shares['label_valid_inserted']:.1f}% of the "
        f"{shares['inserted']} buffer insertions keep their answer; "
        f"{100 * shares['label_valid_mined']:.1f}% of all {shares['mined']} mined candidates do"
    )


def _report(out: Path, table: str, evals: Mapping[str, Path], unigame_run: Path, meta: Sequence[str]) -> Path:
    def rel(path: Path) -> str:
        return os.path.relpath(path, out)

    plots = unigame_run / "plots"
    figures = [
        ("The challenger's budget ε over training", plots / "eps.png"),
        ("The tug of war: the two players' losses", plots / "tug_of_war.png"),
        ("Hard samples in the buffer: clean vs decoded adversarial image", plots / "hard_samples.png"),
    ]
    parts = ["# unigame demo: SFT vs UniGame on the tiny Janus\n", table, ""]
    parts += [f"* {line}" for line in meta]
    parts.append("")
    for caption, path in figures:
        if path.is_file():
            parts += [f"## {caption}\n", f"![{caption}]({rel(path)})\n"]
    parts.append("## Full evaluation reports\n")
    parts += [f"* {name}: [{rel(d / 'report.md')}]({rel(d / 'report.md')})" for name, d in evals.items()]
    path = out / "report.md"
    path.write_text("\n".join(parts) + "\n")
    return path


def run_demo(
    output: str | Path = "runs/demo",
    quick: bool = False,
    steps: int | None = None,
    base: BaseConfig | None = None,
    workers: int = 0,
) -> dict[str, Any]:
    """Run the demo; returns {"table", "report", "evals", "wall_s"}. See the module docstring."""
    from rich.console import Console

    from unigame.eval.base_eval import format_base_table
    from unigame.pretrain.base import build_base, read_manifest
    from unigame.train.config import TrainConfig

    console = Console()
    started = time.perf_counter()
    out = Path(output)
    base = base or BaseConfig()
    if quick:
        base = replace(base, training=QUICK_BASE)
    steps = steps or (QUICK_STEPS if quick else TrainConfig().optim.steps)

    console.rule("1/3  the tiny Janus base")
    base_path = build_base(base, output=str(out / "base") if quick else None)
    manifest = read_manifest(base_path)
    console.print(f"base: {base_path} (built in {manifest['timings']['total_s']:.0f} s)")
    console.print(format_base_table(manifest["evaluation"]))

    console.rule(f"2/3  post-training SFT and UniGame, {steps} steps each, then the shapes suite")
    recipe = TrainConfig()
    recipe.optim.steps = steps
    if quick:
        recipe.logging.checkpoint_every = 0
    workers = workers or min(3, default_workers(1))
    threads = max(1, (os.cpu_count() or 1) // workers)
    # Longest first: UniGame's run is the critical path, so it starts at once and the base's
    # evaluation fills the core that SFT frees.
    jobs = plan_jobs([FULL, SFT, BASELINE], [0], recipe, base_path, out, "test", quick, threads)
    console.print(f"{len(jobs)} jobs, {workers} at a time; logs: {out}/<base|sft|full>/...")

    def done(result: dict[str, Any]) -> None:
        trained = f"train {result['train_s']:.0f} s, " if result["run_dir"] else ""
        console.print(
            f"  {result['row']}: {trained}evaluation {result['eval_s']:.0f} s"
            f"{' (reused from disk)' if result['reused'] else ''} ({time.perf_counter() - started:.0f} s elapsed)"
        )

    run_jobs(jobs, workers, done)
    by_row = {job.row: job for job in jobs}
    evals = {
        "base": Path(by_row["baseline"].eval_dir),
        "SFT": Path(by_row["sft"].eval_dir),
        "UniGame": Path(by_row["full"].eval_dir),
    }

    console.rule("3/3  results")
    table = demo_table(evals)
    wall = time.perf_counter() - started
    meta = [
        f"base model: `{base_path}`; {steps} post-training steps per method, seed 0, test split",
        f"wall time: {wall / 60:.1f} min on {os.cpu_count()} CPU cores",
        "quick mode: tiny sizes everywhere, the numbers mean nothing"
        if quick
        else "one seed: for mean ± std over seeds run `unigame reproduce --table main`",
    ]
    validity = label_validity_line(Path(by_row["full"].run_dir))
    if validity:
        meta.append(validity)
    report = _report(out, table, evals, Path(by_row["full"].run_dir), meta)
    console.print(table)
    if validity:
        console.print(validity)
    console.print(f"\nreport: {report}  ({wall / 60:.1f} min)")
    return {
        "table": table,
        "report": str(report),
        "evals": {k: str(v) for k, v in evals.items()},
        "wall_s": wall,
    }
