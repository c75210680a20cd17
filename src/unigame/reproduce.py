"""The paper's tables on ShapesWorld: a grid of (row, seed) post-training runs, evaluated and summarised.

A *row* is the shared recipe plus a few dotted overrides (`game.adversary: noise`), so each Table-4
ablation is one config switch. Every (row, seed) run trains with `cfg.seed = data.split_seed = seed`
(LoRA and perturber init, replay draws and the training sample all vary with the seed, and rows
at the same seed see the same data), then runs the shapes suite on the `test` split (suite seed
0) or the `val` split (suite seed 1: the same builders, independently drawn scenes) — tune on
`val`, report `test`. The grid is resumable: a finished run or evaluation is reused, an
interrupted run resumes from its newest checkpoint.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import shlex
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

import numpy as np

from unigame.game.config import TrainConfig

__all__ = [
    "COLUMNS",
    "metric_percent",
    "GridError",
    "Job",
    "Row",
    "TABLES",
    "apply_overrides",
    "plan_jobs",
    "reproduce",
    "run_jobs",
    "summarize",
]

Split = Literal["test", "val"]
SPLIT_SEEDS: dict[str, int] = {"test": 0, "val": 1}  # the shapes suite's seed for each split


@dataclass(frozen=True)
class Row:
    """One table row: `overrides` on top of the recipe; `trains=False` evaluates the base as is."""

    name: str
    label: str
    overrides: Mapping[str, Any] = field(default_factory=dict)
    trains: bool = True


BASELINE = Row("baseline", "baseline (no post-training)", trains=False)
SFT = Row("sft", "SFT", {"game.enabled": False})
FULL = Row("full", "full: decoding + CLIP + buffer (UniGame)", {})

TABLES: dict[str, tuple[Row, ...]] = {
    "4": (
        BASELINE,
        SFT,
        Row("noise", "random noise in token space", {"game.adversary": "noise", "game.filter": "none", "game.buffer": False}),
        Row("embedding", "embedding-adversarial", {"game.adversary": "embedding", "game.filter": "none", "game.buffer": False}),
        Row("embedding-cosine", "embedding-adversarial + cosine", {"game.adversary": "embedding", "game.filter": "cosine", "game.buffer": False}),
        Row("embedding-cosine-buffer", "embedding-adversarial + cosine + buffer", {"game.adversary": "embedding", "game.filter": "cosine"}),
        Row("decoding", "decoding only", {"game.filter": "none", "game.buffer": False}),
        Row("decoding-cosine", "decoding + cosine", {"game.filter": "cosine", "game.buffer": False}),
        Row("decoding-clip", "decoding + CLIP", {"game.buffer": False}),
        FULL,
    ),
    "main": (BASELINE, SFT, FULL),
}  # fmt: skip

# (label, key in metrics.json) per table; every value is a fraction or cosine, shown x100.
COLUMNS: dict[str, tuple[tuple[str, str], ...]] = {
    "4": (
        ("clean VQA", "clean_vqa.accuracy"),
        ("POPE F1", "pope.mean_f1"),
        ("NB G-Acc", "naturalbench.g_acc"),
        ("NB Acc", "naturalbench.accuracy"),
        ("adversarial split", "adversarial_split.accuracy"),
        ("PGD 8/255", "pgd.eps_8.accuracy"),
    ),
    "main": (
        ("clean VQA", "clean_vqa.accuracy"),
        ("POPE F1", "pope.mean_f1"),
        ("NB G-Acc", "naturalbench.g_acc"),
        ("adversarial split", "adversarial_split.accuracy"),
        ("PGD 4/255", "pgd.eps_4.accuracy"),
        ("PGD 8/255", "pgd.eps_8.accuracy"),
        ("UnifiedBench", "unifiedbench.score"),
        ("Nonunified (lower better)", "nonunified.score"),
        ("Consistency", "consistency.score"),
        ("GenEval strict", "geneval.strict.overall"),
    ),
}


def apply_overrides(cfg: TrainConfig, overrides: Mapping[str, Any]) -> TrainConfig:
    """A copy of `cfg` with dotted-key overrides applied; an unknown key raises naming it."""
    import copy
    import dataclasses

    cfg = copy.deepcopy(cfg)
    for key, value in overrides.items():
        *path, leaf = key.split(".")
        node: Any = cfg
        for part in path:
            if not dataclasses.is_dataclass(node) or not hasattr(node, part):
                raise ValueError(f"override {key!r}: no config group {part!r}")
            node = getattr(node, part)
        if not dataclasses.is_dataclass(node) or leaf not in {f.name for f in dataclasses.fields(node)}:
            raise ValueError(f"override {key!r}: unknown key {leaf!r}")
        setattr(node, leaf, value)
    return cfg


def parse_set(items: Sequence[str]) -> dict[str, Any]:
    """`KEY=VALUE` strings (VALUE read as YAML: 0.1, false, null; `none` also means null) into a dict.

    `none` is a valid `game.filter` value, so it stays a string for that key."""
    import yaml

    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--set {item!r}: expected KEY=VALUE, e.g. game.eps_max=0.05")
        parsed = yaml.safe_load(value)
        if isinstance(parsed, str) and parsed.lower() == "none" and not key.strip().endswith("filter"):
            parsed = None
        out[key.strip()] = parsed
    return out


@dataclass
class Job:
    """One (row, seed): train (unless the row is the baseline) then evaluate; picklable for workers."""

    row: str
    seed: int
    model_path: str
    eval_dir: str
    run_dir: str | None = None
    cfg: TrainConfig | None = None
    eval_seed: int = 0
    quick_eval: bool = False
    threads: int = 1


def plan_jobs(
    rows: Sequence[Row],
    seeds: Sequence[int],
    recipe: TrainConfig,
    model_path: Path,
    output: Path,
    split: Split = "test",
    quick_eval: bool = False,
    threads: int = 1,
) -> list[Job]:
    """The grid's jobs: one evaluation for the baseline row, one train+eval per (row, seed) otherwise."""
    jobs = []
    eval_name = f"eval-{split}"
    for row in rows:
        if not row.trains:
            jobs.append(
                Job(row.name, -1, str(model_path), str(output / row.name / eval_name), None, None,
                    SPLIT_SEEDS[split], quick_eval, threads)
            )  # fmt: skip
            continue
        for seed in seeds:
            cfg = apply_overrides(recipe, {**row.overrides, "seed": seed, "data.split_seed": seed})
            cfg.model.path = str(model_path)
            cfg.logging.progress = False
            cfg.validate()
            root = output / row.name / f"seed-{seed}"
            jobs.append(
                Job(row.name, seed, str(model_path), str(root / eval_name), str(root / "run"), cfg,
                    SPLIT_SEEDS[split], quick_eval, threads)
            )  # fmt: skip
    return jobs


def _final_lora(run_dir: Path, steps: int) -> Path:
    return run_dir / "checkpoints" / f"step-{steps:08d}" / "lora"


def run_job(job: Job) -> dict[str, Any]:
    """Train (resuming or reusing what is on disk) and evaluate; output goes to `<eval_dir>.log`."""
    import torch

    previous_threads = torch.get_num_threads()
    torch.set_num_threads(job.threads)
    try:
        return _train_and_evaluate(job)
    finally:
        torch.set_num_threads(previous_threads)


def _train_and_evaluate(job: Job) -> dict[str, Any]:
    eval_dir = Path(job.eval_dir)
    eval_dir.parent.mkdir(parents=True, exist_ok=True)
    # Seconds spent on this job so far, kept on disk so a rerun that reuses the work still reports it.
    timings_path = eval_dir.parent / f"{eval_dir.name}.timings.json"
    timings = {"train_s": 0.0, "eval_s": 0.0}
    if timings_path.is_file():
        timings.update(json.loads(timings_path.read_text()))
    did_work = False
    log_path = eval_dir.parent / f"{eval_dir.name}.log"
    with open(log_path, "a") as log, contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
        lora = None
        if job.cfg is not None:
            run_dir = Path(job.run_dir)
            lora_dir = _final_lora(run_dir, job.cfg.optim.steps)
            if not (lora_dir / "adapter_config.json").is_file():
                from unigame.game.run import train

                start = time.perf_counter()
                train(job.cfg, resume="auto", output=str(run_dir))
                timings["train_s"] += time.perf_counter() - start
                did_work = True
            lora = str(lora_dir)
        if not (eval_dir / "metrics.json").is_file():
            from unigame.eval.run import evaluate

            start = time.perf_counter()
            evaluate(
                "shapes", model=job.model_path, lora=lora, output=str(eval_dir), quick=job.quick_eval,
                seed=job.eval_seed, device="cpu" if job.cfg is None else job.cfg.model.device, progress=False,
            )  # fmt: skip
            timings["eval_s"] = time.perf_counter() - start
            did_work = True
    timings_path.write_text(json.dumps(timings))
    return {
        "row": job.row, "seed": job.seed, "eval_dir": job.eval_dir, "run_dir": job.run_dir,
        "reused": not did_work, **timings,
    }  # fmt: skip


class GridError(RuntimeError):
    """Some jobs of a grid failed; the others finished and stay on disk for the rerun."""


def _log_of(job: Job) -> Path:
    eval_dir = Path(job.eval_dir)
    return eval_dir.parent / f"{eval_dir.name}.log"


def run_jobs(
    jobs: Sequence[Job], workers: int, on_done: Callable[[dict[str, Any]], None] | None = None
) -> list[dict]:
    """Run `jobs` on `workers` processes (1: in this process); results in order of submission.

    A failing job does not stop the others: once all have run, `GridError` names every failed job
    and its log, and a rerun reuses what finished."""
    results: list[dict[str, Any]] = []
    failures: list[str] = []

    def finished(job: Job, result: Callable[[], dict[str, Any]]) -> None:
        try:
            results.append(result())
        except Exception as err:  # noqa: BLE001 - reported below with the job and its log
            failures.append(f"{job.row} seed {job.seed}: {type(err).__name__}: {err} (log: {_log_of(job)})")
            return
        if on_done:
            on_done(results[-1])

    if workers <= 1:
        for job in jobs:
            finished(job, lambda job=job: run_job(job))
    else:
        import multiprocessing

        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
            futures = {pool.submit(run_job, job): job for job in jobs}
            for future in as_completed(futures):
                finished(futures[future], future.result)
    if failures:
        raise GridError(f"{len(failures)} of {len(jobs)} jobs failed:\n  " + "\n  ".join(failures))
    order = {(j.row, j.seed): i for i, j in enumerate(jobs)}
    return sorted(results, key=lambda r: order[(r["row"], r["seed"])])


def metric_percent(eval_dir: str | Path, key: str) -> float:
    """`key` (e.g. `naturalbench.g_acc`) of an evaluation folder's metrics.json, x100."""
    from unigame.eval.report import flatten_metrics

    metrics = json.loads((Path(eval_dir) / "metrics.json").read_text())["metrics"]
    return 100 * flatten_metrics(metrics)[key]


def summarize(
    rows: Sequence[Row], results: Sequence[Mapping[str, Any]], columns: Sequence[tuple[str, str]]
) -> list[dict[str, Any]]:
    """Per row and column: mean, sample std (ddof 1; 0 for one value) and the per-seed values, x100."""
    summary = []
    for row in rows:
        runs = [r for r in results if r["row"] == row.name]
        cells = {}
        for label, key in columns:
            values = [metric_percent(r["eval_dir"], key) for r in runs]
            std = float(np.std(values, ddof=1)) if len(values) > 1 else 0.0
            cells[label] = {"mean": float(np.mean(values)), "std": std, "values": values}
        wall = sum(r["train_s"] + r["eval_s"] for r in runs)
        summary.append({"row": row.name, "label": row.label, "n": len(runs), "cells": cells, "wall_s": wall})
    return summary


def markdown_table(summary: Sequence[Mapping[str, Any]], columns: Sequence[tuple[str, str]]) -> str:
    """Mean ± std per cell; a last line of differences when both SFT and the full UniGame row exist."""
    labels = [label for label, _ in columns]
    lines = ["| row | seeds | " + " | ".join(labels) + " |", "|---|---|" + "---|" * len(labels)]
    for entry in summary:
        cells = [f"{entry['cells'][c]['mean']:.1f} ± {entry['cells'][c]['std']:.1f}" for c in labels]
        if entry["n"] == 1:
            cells = [f"{entry['cells'][c]['mean']:.1f}" for c in labels]
        lines.append(f"| {entry['label']} | {entry['n']} | " + " | ".join(cells) + " |")
    by_row = {entry["row"]: entry for entry in summary}
    if "sft" in by_row and "full" in by_row:
        diffs = [by_row["full"]["cells"][c]["mean"] - by_row["sft"]["cells"][c]["mean"] for c in labels]
        lines.append("| **UniGame − SFT** | | " + " | ".join(f"{d:+.1f}" for d in diffs) + " |")
    return "\n".join(lines)


def machine_description(workers: int, threads: int) -> str:
    import torch

    return (
        f"{platform.system()} {platform.machine()}, {os.cpu_count()} CPU cores, torch {torch.__version__}, "
        f"{workers} run(s) at a time x {threads} torch thread(s)"
    )


def default_workers(threads: int) -> int:
    """One run per `threads` cores, at most 8 (each run holds its own copy of the model)."""
    return max(1, min(8, (os.cpu_count() or 1) // max(1, threads)))


def reproduce(
    table: Literal["4", "main"] = "main",
    seeds: int = 3,
    first_seed: int = 0,
    steps: int = 300,
    model: str | None = None,
    recipe: str | None = None,
    output: str | None = None,
    split: Split = "test",
    rows: list[str] | None = None,
    set: list[str] | str | None = None,  # noqa: A002 - the CLI flag is --set
    quick: bool = False,
    workers: int = 0,
    threads: int = 1,
) -> dict[str, Any]:
    """Reproduce a paper table on ShapesWorld: train every row for several seeds, evaluate, summarise.

    Writes `<output>/table-<table>.md` (the table with command, seeds, machine and times) and
    `<output>/table-<table>.json`; rerunning reuses finished runs and resumes interrupted ones, so
    `--table main` after `--table 4` into the same output only evaluates what is missing.

    Args:
        table: `4` (the ablation: baseline, SFT, noise, embedding (+cosine, +buffer), decoding
            (+cosine, +CLIP), full) or `main` (baseline / SFT / UniGame on understanding, robustness,
            consistency and generation).
        seeds: training seeds per row (seeds first_seed .. first_seed+seeds-1), >= 1.
        first_seed: the first training seed.
        steps: post-training steps per run (optim.steps).
        model: base model directory; default: the cached tiny Janus base (built if missing).
        recipe: YAML training recipe the rows override; default: the built-in tiny recipe
            (configs/shapes_tiny_unigame.yaml).
        output: folder for runs, evaluations and results (default runs/reproduce-table<table>-<split>).
        split: `test` (report) or `val` (tune: independently drawn scenes; never tune on test).
        rows: only these rows (their names: baseline, sft, noise, embedding, embedding-cosine,
            embedding-cosine-buffer, decoding, decoding-cosine, decoding-clip, full), e.g. [sft,full].
        set: extra overrides for every trained row: KEY=VALUE (e.g. game.eps_max=0.05), or a
            list of them ('[game.eps_max=0.05,game.beta=1.0]').
        quick: tiny evaluation sizes (a smoke test, not a result).
        workers: runs at a time (0: one per `threads` cores, at most 8).
        threads: torch threads per run.
    """
    from rich.console import Console

    console = Console()
    set = [set] if isinstance(set, str) else set  # noqa: A001
    if seeds < 1:
        raise ValueError(f"seeds={seeds} must be >= 1")
    if table not in TABLES:
        raise ValueError(f"table={table!r}: allowed {', '.join(TABLES)}")
    chosen = list(TABLES[table])
    if rows:
        known = {r.name for r in chosen}
        unknown = [r for r in rows if r not in known]
        if unknown:
            raise ValueError(f"rows {unknown} are not in table {table}; allowed: {', '.join(sorted(known))}")
        chosen = [r for r in chosen if r.name in rows]
    base_recipe = TrainConfig()
    if recipe is not None:
        from unigame.game.run import load_recipe

        base_recipe = load_recipe(recipe)
    base_recipe = apply_overrides(base_recipe, {"optim.steps": steps, **parse_set(set or [])})
    base_recipe.validate()
    from unigame.game.loading import resolve_model_path

    model_path = Path(model).expanduser() if model is not None else resolve_model_path(base_recipe.model)
    out = Path(output or f"runs/reproduce-table{table}-{split}")
    workers = workers or default_workers(threads)
    seed_list = list(range(first_seed, first_seed + seeds))
    jobs = plan_jobs(chosen, seed_list, base_recipe, model_path, out, split, quick, threads)

    console.print(
        f"Table {table} on the {split} split: {len(chosen)} rows, seeds {seed_list}, {steps} steps, "
        f"{len(jobs)} jobs, {workers} at a time; logs in {out}/<row>/..."
    )
    started = time.perf_counter()
    done = 0

    def report(result: dict[str, Any]) -> None:
        nonlocal done
        done += 1
        seed = "" if result["seed"] < 0 else f" seed {result['seed']}"
        reused = " (reused from disk)" if result["reused"] else ""
        console.print(
            f"[{done}/{len(jobs)}] {result['row']}{seed}: train {result['train_s']:.0f} s, "
            f"eval {result['eval_s']:.0f} s{reused} ({time.perf_counter() - started:.0f} s elapsed)"
        )

    results = run_jobs(jobs, workers, report)
    wall = time.perf_counter() - started
    columns = COLUMNS[table]
    summary = summarize(chosen, results, columns)
    text = markdown_table(summary, columns)
    command = "unigame " + " ".join(shlex.quote(a) for a in sys.argv[1:]) if sys.argv else ""
    record = {
        "table": table,
        "split": split,
        "seeds": seed_list,
        "steps": steps,
        "model": str(model_path),
        "recipe": recipe or "built-in tiny recipe (configs/shapes_tiny_unigame.yaml)",
        "overrides": parse_set(set or []),
        "rows": {r.name: {"label": r.label, "overrides": dict(r.overrides)} for r in chosen},
        "summary": summary,
        "results": results,
        "machine": machine_description(workers, threads),
        "wall_s": wall,
        "command": command,
        "finished": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / f"table-{table}.json").write_text(json.dumps(record, indent=2))
    (out / f"table-{table}.md").write_text(results_markdown(record, text))
    console.print("\n" + text)
    console.print(f"\nWrote {out / f'table-{table}.md'} and table-{table}.json ({wall / 60:.1f} min)")
    return record


def results_markdown(record: Mapping[str, Any], table: str) -> str:
    """The results file: the table, then how it was made (command, seeds, split, machine, time)."""
    extra = ", ".join(f"{k}={v}" for k, v in record["overrides"].items()) or "none"
    return (
        f"# Table {record['table']} on ShapesWorld ({record['split']} split)\n\n"
        f"{table}\n\n"
        f"Percent (x100 for cosines); mean ± sample std over training seeds {record['seeds']} "
        f"(`cfg.seed` = `data.split_seed` = seed); rows with one value are deterministic.\n\n"
        f"* command: `{record['command']}`\n"
        f"* steps per run: {record['steps']}; recipe: {record['recipe']}; extra overrides: {extra}\n"
        f"* base model: `{record['model']}`\n"
        f"* evaluation: the shapes suite, {record['split']} split (suite seed "
        f"{SPLIT_SEEDS[record['split']]})\n"
        f"* machine: {record['machine']}\n"
        f"* time: {record['wall_s'] / 60:.1f} min wall for this command ({record['finished']}); the runs "
        f"it reports took {sum(r['train_s'] + r['eval_s'] for r in record['results']) / 60:.1f} min of "
        "training + evaluation in all (summed over runs, as recorded when they ran)\n"
    )
