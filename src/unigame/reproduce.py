"""The paper's tables and sweeps on ShapesWorld: a grid of (row, seed) post-training runs, evaluated and summarised.

A *row* is the shared recipe plus a few dotted overrides (`game.adversary: noise`), so each Table-4
ablation, each control and each point of a sweep is one config switch. Every (row, seed) run trains
with `cfg.seed = data.split_seed = seed` (LoRA and perturber init, replay draws and the training
sample all vary with the seed, and rows at the same seed see the same data), then runs the shapes
suite on the `test` split (suite seed 0) or the `val` split (suite seed 1: the same builders,
independently drawn scenes) — tune on `val`, report `test`. The grid is resumable: a finished run or
evaluation is reused, an interrupted run resumes from its newest checkpoint.

Tables (`TABLES`) and figures (`FIGURES`, the sweeps of paper Fig. 7, Fig. 11 and Table 8) share
this grid and its summary: mean ± std per row, and paired differences of every trained row against
SFT (and SFT with equal examples per update) over the seeds both share.
"""

from __future__ import annotations

import contextlib
import csv
import functools
import json
import math
import os
import platform
import shlex
import signal
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

import numpy as np

from unigame.files import write_atomic
from unigame.train.config import TrainConfig

__all__ = [
    "COLUMNS",
    "FIGURES",
    "FIGURE_COLUMNS",
    "metric_percent",
    "GridError",
    "Job",
    "Row",
    "Sweep",
    "TABLES",
    "apply_overrides",
    "figure_rows",
    "figure_sweeps",
    "paired_comparisons",
    "paired_stats",
    "plan_jobs",
    "reproduce",
    "run_jobs",
    "sign_test_p",
    "summarize",
    "t_test_p",
    "table_rows",
]

Split = Literal["test", "val"]
SPLIT_SEEDS: dict[str, int] = {"test": 0, "val": 1}  # the shapes suite's seed for each split


@dataclass(frozen=True)
class Row:
    """One table row: `overrides` on top of the recipe; `trains=False` evaluates the base as is.

    `derived(recipe)` adds overrides that depend on the recipe (read at plan time, after `--set`),
    e.g. SFT's extra items per step equal to the recipe's replay batch."""

    name: str
    label: str
    overrides: Mapping[str, Any] = field(default_factory=dict)
    trains: bool = True
    derived: Callable[[TrainConfig], Mapping[str, Any]] | None = None
    after: str | None = None  # a row whose same-seed final LoRA is merged into the base first
    paired_with: str | None = None  # another row of the table it is also compared with, seed by seed

    def overrides_for(self, recipe: TrainConfig) -> dict[str, Any]:
        """The dotted overrides this row applies on top of `recipe`."""
        return {**self.overrides, **(self.derived(recipe) if self.derived else {})}


def _equal_examples(recipe: TrainConfig) -> dict[str, Any]:
    """SFT's extra clean items per step: as many as UniGame replays (`game.replay_batch`, else the batch)."""
    return {"data.extra_clean_items": recipe.game.replay_batch or recipe.data.batch_size}


# Table 4's random-noise row: token-space noise, neither filter nor buffer.
_NOISE = {"game.adversary": "noise", "game.filter": "none", "game.buffer": False}
_EMBEDDING = {"game.adversary": "embedding"}
BASELINE = Row("baseline", "baseline (no post-training)", trains=False)
SFT = Row("sft", "SFT", {"game.enabled": False})
SFT_EQUAL = Row(
    "sft-equal", "SFT with equal examples per update", {"game.enabled": False}, derived=_equal_examples
)
FULL = Row("full", "full: decoding + CLIP + buffer (UniGame)", {})
EPS0 = Row("eps0", "UniGame with ε = 0", {"game.eps_max": 0.0})
OFFICIAL = Row("official", "official-style mining", {**_EMBEDDING, "game.mining": "official"})
# The paper's x̃ = G(z + δ), without residual decoding: candidates carry the VQ's reconstruction error.
FULL_DIRECT = Row("full-direct", "full, direct decoding G(z + δ) (paper)", {"game.residual_decode": False})
# The rows every trained row is compared with, pair by pair over shared seeds (when in the table):
# SFT, SFT with equal examples (what replay adds beyond more examples) and ε = 0 (what the
# perturbation adds).
REFERENCES = ("sft", "sft-equal", "eps0")

# Internal supervision (arXiv 2507.16663): the generation branch trained on the model's own
# self-judged images; the oracle row accepts what the exact judge accepts (the external-reward bound).
INTERNAL_SFT = Row("internal-sft", "SFT on self-accepted samples", {"method": "internal-sft"})
INTERNAL_CSFT = Row(
    "internal-csft", "C-SFT (self-accepted, 2 curriculum rounds)",
    {"method": "internal-sft", "internal.curriculum_rounds": 2},
)  # fmt: skip
INTERNAL_DPO = Row("internal-dpo", "DPO on self-judged pairs", {"method": "internal-dpo"})
INTERNAL_ORACLE = Row(
    "internal-oracle",
    "oracle: SFT on judge-accepted samples",
    {"method": "internal-sft", "internal.judge": "oracle"},
)
UNIGAME_AFTER_CSFT = Row("full-after-csft", "UniGame after C-SFT", {}, after="internal-csft")
# Ask-Solve-Generate: three LoRA roles learn from the training images alone. The rows carry the ASG
# recipe's keys beyond the shared tiny recipe (configs/shapes_tiny_asg.yaml; a test keeps them equal).
ASG_OVERRIDES: dict[str, Any] = {"method": "asg", "data.batch_size": 8, "optim.und_lr": 3e-4}
ASG = Row("asg", "ASG (unlabeled)", ASG_OVERRIDES)
ASG_NO_STE = Row(
    "asg-no-ste",
    "ASG without STE (difficulty from answer entropy)",
    {**ASG_OVERRIDES, "asg.difficulty_signal": "answer_entropy"},
)
# The references name their method, so that a --recipe of another method cannot turn them into it.
SFT_LABELLED = Row(
    "sft", "labelled SFT on the same images (upper bound)", {"method": "unigame", "game.enabled": False}
)
UNIGAME = Row("full", FULL.label, {"method": "unigame"})
# Per table, the rows every trained row is compared with (a row that does not train, the base, is
# one value: each seed's difference is taken from it).
TABLE_REFERENCES: dict[str, tuple[str, ...]] = {
    "internal": ("baseline", "internal-sft"),
    "asg": ("baseline", "asg"),
}

TABLES: dict[str, tuple[Row, ...]] = {
    # Each ablation row is also paired with the row it adds one component to (paired_with), so the
    # table says what each component buys: the adversary's space (noise -> embedding -> decoding),
    # the filter (none -> cosine -> CLIP), the buffer, and the decoding (residual -> direct).
    "4": (
        BASELINE,
        SFT,
        SFT_EQUAL,
        Row("noise", "random noise in token space", _NOISE),
        Row("embedding", "embedding-adversarial", {**_EMBEDDING, "game.filter": "none", "game.buffer": False},
            paired_with="noise"),
        Row("embedding-cosine", "embedding-adversarial + cosine", {**_EMBEDDING, "game.filter": "cosine", "game.buffer": False},
            paired_with="embedding"),
        Row("embedding-cosine-buffer", "embedding-adversarial + cosine + buffer", {**_EMBEDDING, "game.filter": "cosine"},
            paired_with="embedding-cosine"),
        Row("decoding", "decoding only", {"game.filter": "none", "game.buffer": False}, paired_with="embedding"),
        Row("decoding-cosine", "decoding + cosine", {"game.filter": "cosine", "game.buffer": False},
            paired_with="decoding"),
        Row("decoding-clip", "decoding + CLIP", {"game.buffer": False}, paired_with="decoding-cosine"),
        replace(FULL, paired_with="decoding-clip"),
        replace(FULL_DIRECT, paired_with="full"),
        EPS0,
        OFFICIAL,
    ),
    "main": (BASELINE, SFT, FULL),
    # game.schedule: each UniGame row in both schedules, with the buffer (full) and without it
    # (decoding + CLIP: the hard items are this step's candidates, where the joint step saves most).
    "schedule": (
        BASELINE,
        SFT,
        FULL,
        Row("full-simultaneous", "full, simultaneous schedule", {"game.schedule": "simultaneous"}, paired_with="full"),
        Row("decoding-clip", "decoding + CLIP", {"game.buffer": False}),
        Row("decoding-clip-simultaneous", "decoding + CLIP, simultaneous schedule",
            {"game.buffer": False, "game.schedule": "simultaneous"}, paired_with="decoding-clip"),
    ),
    # The final decision on the test split; `best` (full + `--best` overrides) is added by table_rows.
    "confirm": (BASELINE, SFT, SFT_EQUAL, EPS0, FULL),
    "internal": (BASELINE, INTERNAL_SFT, INTERNAL_CSFT, INTERNAL_DPO, INTERNAL_ORACLE, FULL, UNIGAME_AFTER_CSFT),
    "asg": (BASELINE, ASG, ASG_NO_STE, SFT_LABELLED, UNIGAME),
}  # fmt: skip

# (label, key in metrics.json) per table; every value is a fraction or cosine, shown x100.
_MAIN_COLUMNS = (
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
)
COLUMNS: dict[str, tuple[tuple[str, str], ...]] = {
    "4": (
        ("clean VQA", "clean_vqa.accuracy"),
        ("POPE F1", "pope.mean_f1"),
        ("NB G-Acc", "naturalbench.g_acc"),
        ("NB Acc", "naturalbench.accuracy"),
        ("adversarial split", "adversarial_split.accuracy"),
        ("PGD 8/255", "pgd.eps_8.accuracy"),
    ),
    "main": _MAIN_COLUMNS,
    "confirm": _MAIN_COLUMNS,
    "internal": (
        ("GenEval strict", "geneval.strict.overall"),
        ("strict: easy", "geneval.strict.tiers.easy"),
        ("strict: medium", "geneval.strict.tiers.medium"),
        ("strict: hard", "geneval.strict.tiers.hard"),
        ("Nonunified (lower better)", "nonunified.score"),
        ("weak-generation rate", "nonunified.weak_generation_rate"),
        ("und. acc. on own images", "nonunified.understanding_accuracy"),
        ("clean VQA", "clean_vqa.accuracy"),
        ("POPE F1", "pope.mean_f1"),
    ),
    "asg": (
        ("clean VQA", "clean_vqa.accuracy"),
        ("NB G-Acc", "naturalbench.g_acc"),
        ("POPE F1", "pope.mean_f1"),
        ("GenEval strict", "geneval.strict.overall"),
        ("mean STE, clean (nats)", "ste.clean"),
        ("mean STE, shifted (nats)", "ste.shifted"),
        ("self-consistency acc.", "self_consistency.accuracy"),
        ("greedy acc., same questions", "self_consistency.greedy_accuracy"),
        ("proposed: judge can answer", "run.judge_answerable"),
        ("judge can answer, first quarter of steps", "run.judge_answerable:first"),
        ("judge can answer, last quarter", "run.judge_answerable:last"),
        ("proposed: majority right", "run.judge_majority_correct"),
        ("majority right, first quarter", "run.judge_majority_correct:first"),
        ("majority right, last quarter", "run.judge_majority_correct:last"),
        ("proposed: kept though easy", "run.kept_easy"),
    ),
    "schedule": _MAIN_COLUMNS,
}
# Shown as they are (nats), not x100.
NATS_COLUMNS = frozenset({"ste.clean", "ste.shifted"})
# The two branches' direction of change against the base, per row of the internal table.
DIRECTION_COLUMNS = ("GenEval strict", "clean VQA")
# A branch counts as moved when its paired change against the base has a t-test p below this.
DIRECTION_P = 0.05
FIGURE_COLUMNS: tuple[tuple[str, str], ...] = (
    ("clean VQA", "clean_vqa.accuracy"),
    ("POPE F1", "pope.mean_f1"),
    ("NB G-Acc", "naturalbench.g_acc"),
    ("adversarial split", "adversarial_split.accuracy"),
    ("PGD 8/255", "pgd.eps_8.accuracy"),
)
# Read from the run folder rather than the evaluation (`run.` keys; see `_cell_value`): the ε the
# gate ended at (not x100), and the share of mined / inserted / rejected candidates whose answer
# still holds (x100; written by runs that check label validity, absent otherwise).
LEARNED_EPS = ("learned ε", "run.eps")
LABEL_VALIDITY: tuple[tuple[str, str], ...] = (
    ("label valid: mined", "run.label_valid_mined"),
    ("label valid: inserted", "run.label_valid_inserted"),
    ("label valid: rejected", "run.label_valid_rejected"),
)


def table_rows(table: str, best: Mapping[str, Any] | None = None) -> list[Row]:
    """The rows of `table`; `confirm` also gets `best` = full + `best` overrides (required there)."""
    if table not in TABLES:
        raise ValueError(f"table={table!r}: allowed {', '.join(TABLES)}")
    rows = list(TABLES[table])
    if table == "confirm":
        if not best:
            raise ValueError(
                "--table confirm needs --best KEY=VALUE ...: the overrides chosen on the val split, "
                "e.g. --best game.eps_max=0.1 game.beta=1.0"
            )
        best = dict(best)
        if "game.eps_max" in best and "game.eps_init" not in best:
            best["game.eps_init"] = best["game.eps_max"] / 2  # as the budget sweep trained that point
        shown = ", ".join(f"{k}={v}" for k, v in best.items())
        rows.append(Row("best", f"best: full + {shown}", best, paired_with="full"))  # vs the paper default
    elif best:
        raise ValueError(f"--best applies to --table confirm only (got --table {table})")
    return rows


@dataclass(frozen=True)
class Sweep:
    """One swept setting: a row per value, named `<name>-<value>`, overrides from `point(value, recipe)`."""

    name: str
    label: str  # the x axis, e.g. "ε_max"
    values: tuple[float, ...]
    point: Callable[[float, TrainConfig], Mapping[str, Any]]
    log_x: bool = True
    fixed: Mapping[str, Any] = field(default_factory=dict)  # overrides shared by every point
    is_budget: bool = False  # the value is ε_max: plot the ε the gate learned against it as the bound

    def rows(self, values: Sequence[float] | None = None) -> list[Row]:
        """One trained row per value (default: `self.values`)."""
        return [
            Row(
                f"{self.name}-{value:g}",
                f"{self.label} = {value:g}",
                dict(self.fixed),
                derived=functools.partial(self.point, value),
            )
            for value in (self.values if values is None else values)
        ]


def _budget_point(value: float, recipe: TrainConfig) -> dict[str, Any]:
    # The gate starts mid-range, as the paper's ε_init 0.01 of ε_max 0.02.
    return {"game.eps_max": value, "game.eps_init": value / 2}


def _key_point(key: str, value: float, recipe: TrainConfig) -> dict[str, Any]:
    return {key: value}


def _lr_ratio_point(ratio: float, recipe: TrainConfig) -> dict[str, Any]:
    return {"optim.gen_lr": ratio * recipe.optim.und_lr}  # at the recipe's und_lr (paper ratio 250)


# name -> (title, sweeps): each sweep is one panel row of the figure.
FIGURES: dict[str, tuple[str, tuple[Sweep, ...]]] = {
    "budget": (
        "perturbation budget ε_max (paper Fig. 11), ε_init = ε_max / 2",
        (Sweep("budget", "ε_max", (0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5), _budget_point, is_budget=True),),
    ),
    "noise": (
        "random token noise at budget σ (paper Fig. 7), ε_init = σ / 2",
        (Sweep("noise", "σ", (0.01, 0.05, 0.1, 0.2, 0.5), _budget_point, fixed=_NOISE, is_budget=True),),
    ),
    "beta": (
        "hard-sample weight β and hardness percentile τ (paper Fig. 11)",
        (
            Sweep("beta", "β", (0.1, 0.25, 0.5, 1.0, 2.0), functools.partial(_key_point, "game.beta")),
            Sweep("tau", "τ percentile", (40.0, 60.0, 80.0), functools.partial(_key_point, "game.percentile"), log_x=False),
        ),
    ),
    "lr": (  # 5: the tiny recipe's own ratio (5e-3 / 1e-3); 250: the paper's (5e-3 / 2e-5)
        "learning-rate ratio gen_lr / und_lr at the recipe's und_lr (paper Table 8)",
        (Sweep("lr", "gen_lr / und_lr", (5.0, 25.0, 100.0, 250.0, 1000.0), _lr_ratio_point),),
    ),
}  # fmt: skip


def figure_sweeps(
    figure: str, values: Sequence[float] | None = None, percentiles: Sequence[float] | None = None
) -> list[tuple[Sweep, list[float]]]:
    """The sweeps of `figure` with the values to run: `values` replace the first sweep's,
    `percentiles` the τ sweep's (figure `beta`)."""
    if figure not in FIGURES:
        raise ValueError(f"figure={figure!r}: allowed {', '.join(FIGURES)}")
    if percentiles is not None and figure != "beta":
        raise ValueError(f"--percentiles applies to --figure beta only (got --figure {figure})")
    for given, flag in ((values, "--values"), (percentiles, "--percentiles")):
        if given is not None and (not given or len(set(given)) != len(given)):
            raise ValueError(f"{flag} {list(given)}: give one or more distinct values")
    chosen = (values, percentiles)
    return [
        (sweep, list(sweep.values if chosen[i] is None else chosen[i]))
        for i, sweep in enumerate(FIGURES[figure][1])
    ]


def figure_rows(
    figure: str, values: Sequence[float] | None = None, percentiles: Sequence[float] | None = None
) -> list[Row]:
    """SFT (the reference band) then every point of `figure`'s sweeps (see `figure_sweeps`)."""
    return [SFT] + [
        row for sweep, swept in figure_sweeps(figure, values, percentiles) for row in sweep.rows(swept)
    ]


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
            cfg = apply_overrides(
                recipe, {**row.overrides_for(recipe), "seed": seed, "data.split_seed": seed}
            )
            cfg.model.path = str(model_path)
            if row.after is not None:  # post-train on top of that row's same-seed run
                cfg.model.merge_lora = str(
                    _final_lora(output / row.after / f"seed-{seed}" / "run", cfg.optim.steps)
                )
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


def _check_reused_run(run_dir: Path, cfg: TrainConfig) -> None:
    """Refuse to reuse (or resume) a run trained with another config under the same row name, e.g.
    `--table confirm` rerun into the same folder with a different `--best` or `--set`."""
    import yaml

    from unigame.train.config import config_diff

    saved = run_dir / "config.yaml"
    if not saved.is_file():
        return
    differences = config_diff(yaml.safe_load(saved.read_text()), cfg.to_dict())
    if differences:
        raise ValueError(
            f"{run_dir} holds a run with another config than this grid asks for:\n  "
            + "\n  ".join(differences)
            + "\nUse another --output, or delete that run folder to retrain it."
        )


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
            _check_reused_run(run_dir, job.cfg)
            if not (lora_dir / "adapter_config.json").is_file():
                from unigame.train.run import train

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
    write_atomic(timings_path, json.dumps(timings))
    return {
        "row": job.row, "seed": job.seed, "eval_dir": job.eval_dir, "run_dir": job.run_dir,
        "reused": not did_work, **timings,
    }  # fmt: skip


class GridError(RuntimeError):
    """Some jobs of a grid failed; the others finished and stay on disk for the rerun."""


def _log_of(job: Job) -> Path:
    eval_dir = Path(job.eval_dir)
    return eval_dir.parent / f"{eval_dir.name}.log"


@contextlib.contextmanager
def forward_termination(pool: ProcessPoolExecutor) -> Iterator[None]:
    """SIGTERM to the grid reaches its workers too: each trainer then checkpoints at its next step
    boundary and exits, the grid waits for them and exits 143. Without this, `kill <grid>` leaves
    the workers training on, orphaned, beside the next run of the grid."""
    previous = signal.getsignal(signal.SIGTERM)

    def terminate(signum: int, frame: Any) -> None:
        for process in list(getattr(pool, "_processes", {}).values()):
            process.terminate()
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, terminate)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


# A training step's cost in SFT steps on the tiny Janus (docs/results/step_cost.md), and an
# evaluation's in SFT steps: only to start the longest jobs first, so none is left alone at the end.
_STEP_COST = {
    "sft": 1.0,
    "decoder": 8.0,
    "embedding": 3.0,
    "noise": 3.0,
    "official": 14.0,
    "internal/asg": 6.0,
}
_EVAL_COST = 150.0


def expected_cost(job: Job) -> float:
    """A job's rough cost in SFT steps (0 once its evaluation is on disk), for ordering only."""
    if (Path(job.eval_dir) / "metrics.json").is_file():
        return 0.0
    cfg = job.cfg
    if cfg is None:
        return _EVAL_COST
    if cfg.method != "unigame":
        per_step = _STEP_COST["internal/asg"]
    elif not cfg.game.enabled:
        per_step = _STEP_COST["sft"] * (1 + cfg.data.extra_clean_items / cfg.data.batch_size)
    elif cfg.game.mining == "official":
        per_step = _STEP_COST["official"]
    else:
        per_step = _STEP_COST[cfg.game.adversary]
    from unigame.train.checkpoint import find_latest_checkpoint

    latest = find_latest_checkpoint(job.run_dir) if job.run_dir else None
    done = int(latest.name.removeprefix("step-")) if latest else 0
    return max(cfg.optim.steps - done, 0) * per_step + _EVAL_COST


def run_jobs(
    jobs: Sequence[Job], workers: int, on_done: Callable[[dict[str, Any]], None] | None = None
) -> list[dict]:
    """Run `jobs` on `workers` processes (1: in this process, in order); results in order of `jobs`.

    With several workers the longest jobs start first (`expected_cost`): a grid whose longest job
    came last would end with it running alone. A failing job does not stop the others: once all
    have run, `GridError` names every failed job and its log, and a rerun reuses what finished."""
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

        with (
            ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool,
            forward_termination(pool),
        ):
            longest_first = sorted(jobs, key=expected_cost, reverse=True)  # stable: ties keep order
            futures = {pool.submit(run_job, job): job for job in longest_first}
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


def _run_value(run_dir: str | None, key: str) -> float | None:
    """A `run.` column of a run folder, or None when the run has none (the baseline; SFT's ε).

    `run.eps`: the last logged ε of metrics.csv, as is. `run.label_valid_*`: the run's mean from
    label_validity.json, else the mean of that metrics.csv column; x100. A name ending in
    `:first` or `:last` is that column's mean over the first or last quarter of the steps that
    logged it, which shows a drift over training (e.g. a Proposer turning to unanswerable questions)."""
    if run_dir is None:
        return None
    name, _, window = key.removeprefix("run.").partition(":")
    if window not in ("", "first", "last"):
        raise ValueError(f"column key {key!r}: the window after ':' must be 'first' or 'last'")
    validity = Path(run_dir) / "label_validity.json"
    if name != "eps" and not window and validity.is_file():
        value = json.loads(validity.read_text()).get(name)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            return 100 * float(value)
    metrics_csv = Path(run_dir) / "metrics.csv"
    if not metrics_csv.is_file():
        return None
    with open(metrics_csv, newline="") as handle:
        cells = [row.get(name) for row in csv.DictReader(handle)]
    finite = [float(c) for c in cells if c and math.isfinite(float(c))]
    if not finite:
        return None
    if window:
        quarter = max(1, len(finite) // 4)
        finite = finite[:quarter] if window == "first" else finite[-quarter:]
    return finite[-1] if name == "eps" else 100 * float(np.mean(finite))


def _cell_value(result: Mapping[str, Any], key: str) -> float | None:
    if key.startswith("run."):
        return _run_value(result.get("run_dir"), key)
    if key in NATS_COLUMNS:
        return metric_percent(result["eval_dir"], key) / 100
    return metric_percent(result["eval_dir"], key)


def summarize(
    rows: Sequence[Row], results: Sequence[Mapping[str, Any]], columns: Sequence[tuple[str, str]]
) -> list[dict[str, Any]]:
    """Per row and column: mean, sample std (ddof 1; 0 for one value), the per-seed values (x100)
    and their seeds. A `run.` column a row has no value for (SFT's learned ε) has mean None."""
    summary = []
    for row in rows:
        runs = [r for r in results if r["row"] == row.name]
        cells = {}
        for label, key in columns:
            found = [(r["seed"], _cell_value(r, key)) for r in runs]
            found = [(seed, value) for seed, value in found if value is not None]
            values = [value for _, value in found]
            mean = float(np.mean(values)) if values else None
            std = (float(np.std(values, ddof=1)) if len(values) > 1 else 0.0) if values else None
            cells[label] = {"mean": mean, "std": std, "values": values, "seeds": [seed for seed, _ in found]}
        wall = sum(r["train_s"] + r["eval_s"] for r in runs)
        summary.append(
            {
                "row": row.name,
                "label": row.label,
                "trains": row.trains,
                "n": len(runs),
                "cells": cells,
                "wall_s": wall,
            }
        )
    return summary


def _shown(summary: Sequence[Mapping[str, Any]], columns: Sequence[tuple[str, str]]) -> list[tuple[str, str]]:
    """The columns at least one row has a value for (label validity only where runs record it)."""
    return [
        (label, key) for label, key in columns if any(e["cells"][label]["mean"] is not None for e in summary)
    ]


def _number(key: str, value: float) -> str:
    if key in NATS_COLUMNS:
        return f"{value:.2f}"
    return f"{value:.3g}" if key == LEARNED_EPS[1] else f"{value:.1f}"


def markdown_table(summary: Sequence[Mapping[str, Any]], columns: Sequence[tuple[str, str]]) -> str:
    """Mean ± std per cell (– where a row has no value); a last line of differences of means when
    both SFT and the full UniGame row exist."""
    columns = _shown(summary, columns)
    labels = [label for label, _ in columns]
    lines = ["| row | seeds | " + " | ".join(labels) + " |", "|---|---|" + "---|" * len(labels)]
    for entry in summary:
        cells = []
        for label, key in columns:
            cell = entry["cells"][label]
            if cell["mean"] is None:
                cells.append("–")
            elif len(cell["values"]) == 1:
                cells.append(_number(key, cell["mean"]))
            else:
                cells.append(f"{_number(key, cell['mean'])} ± {_number(key, cell['std'])}")
        lines.append(f"| {entry['label']} | {entry['n']} | " + " | ".join(cells) + " |")
    by_row = {entry["row"]: entry for entry in summary}
    if "sft" in by_row and "full" in by_row:
        full, sft = by_row["full"]["cells"], by_row["sft"]["cells"]
        diffs = [
            "–"
            if full[c]["mean"] is None or sft[c]["mean"] is None
            else f"{full[c]['mean'] - sft[c]['mean']:+.1f}"
            for c in labels
        ]
        lines.append("| **UniGame − SFT** | | " + " | ".join(diffs) + " |")
    return "\n".join(lines)


# ------------------------------------------------------------------------- paired comparisons
def t_test_p(t: float, df: int) -> float:
    """Two-sided p-value of Student's t with `df` >= 1 degrees of freedom: P(|T| >= |t|).

    Exact for integer df, by the finite series of Abramowitz & Stegun 26.7.3 (odd df) and 26.7.4
    (even df) for A(t|df) = P(|T| <= t), with θ = atan(|t| / sqrt(df)); no scipy needed."""
    if df < 1:
        raise ValueError(f"df={df} must be >= 1")
    theta = math.atan(abs(t) / math.sqrt(df))
    sin, cos2 = math.sin(theta), math.cos(theta) ** 2
    if df % 2:  # A = 2/π (θ + sinθ (cosθ + 2/3 cos³θ + ... + 2·4···(df-3) / (1·3···(df-2)) cos^(df-2)θ))
        series, term = 0.0, math.cos(theta)
        for j in range(1, (df - 1) // 2 + 1):
            series += term
            term *= 2 * j / (2 * j + 1) * cos2
        inside = 2 / math.pi * (theta + sin * series)
    else:  # A = sinθ (1 + 1/2 cos²θ + 1·3/(2·4) cos⁴θ + ... + 1·3···(df-3) / (2·4···(df-2)) cos^(df-2)θ)
        series, term = 0.0, 1.0
        for j in range(df // 2):
            series += term
            term *= (2 * j + 1) / (2 * j + 2) * cos2
        inside = sin * series
    return min(1.0, max(0.0, 1.0 - inside))


def sign_test_p(differences: Sequence[float]) -> float:
    """Two-sided exact sign test: 2 P(X <= min(#positive, #negative)), X ~ Binomial(n, 1/2) over
    the n non-zero differences, capped at 1 (1 when every difference is zero)."""
    positive = sum(1 for d in differences if d > 0)
    negative = sum(1 for d in differences if d < 0)
    n = positive + negative
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, k) for k in range(min(positive, negative) + 1)) / 2**n
    return min(1.0, 2 * tail)


def paired_stats(differences: Sequence[float]) -> dict[str, Any]:
    """Mean paired difference, its standard error (sample std / sqrt(n)), the paired t statistic
    and the two-sided p-values of the paired t-test (df n-1) and the sign test.

    With fewer than two pairs, se, t and p_t are None; with a zero spread the t-test is undefined
    (t and p_t None) and only the sign test speaks."""
    d = np.asarray(differences, dtype=np.float64)
    n = int(d.size)
    out: dict[str, Any] = {"n": n, "mean": float(d.mean()) if n else None, "se": None, "t": None, "p_t": None}
    out["p_sign"] = sign_test_p(d.tolist()) if n else None
    if n >= 2:
        out["se"] = float(d.std(ddof=1)) / math.sqrt(n)
        if out["se"] > 0:
            out["t"] = out["mean"] / out["se"]
            out["p_t"] = t_test_p(out["t"], n - 1)
    return out


def paired_comparisons(
    summary: Sequence[Mapping[str, Any]],
    columns: Sequence[tuple[str, str]],
    references: Sequence[str] = REFERENCES,
    pairs: Mapping[str, str] | None = None,
) -> list[dict[str, Any]]:
    """Every trained row against each reference present (`sft`, `sft-equal`, then `eps0`), per metric
    column, paired by training seed over the seeds both rows have (`run.` columns are left out:
    the references have no ε). A row is compared with a reference only once (sft-equal vs sft,
    not also sft vs sft-equal). `pairs` (row -> row) adds one comparison each, e.g. a setting in
    the simultaneous schedule against the same setting alternating (`Row.paired_with`)."""
    by_row = {entry["row"]: entry for entry in summary}
    present = [ref for ref in references if ref in by_row]
    metric_labels = [label for label, key in columns if not key.startswith("run.")]
    wanted = [(entry, ref) for i, ref in enumerate(present) for entry in summary
              if entry["trains"] and entry["row"] not in present[: i + 1]]  # fmt: skip
    wanted += [(by_row[row], ref) for row, ref in (pairs or {}).items() if row in by_row and ref in by_row]
    comparisons = []
    for entry, ref in wanted:
        cells = {}
        for label in metric_labels:
            mine = dict(zip(entry["cells"][label]["seeds"], entry["cells"][label]["values"], strict=True))
            theirs = dict(
                zip(by_row[ref]["cells"][label]["seeds"], by_row[ref]["cells"][label]["values"], strict=True)
            )
            if not by_row[ref]["trains"] and len(theirs) == 1:  # the base: one value for every seed
                theirs = dict.fromkeys(mine, next(iter(theirs.values())))
            shared = sorted(set(mine) & set(theirs))
            cells[label] = paired_stats([mine[s] - theirs[s] for s in shared])
        pairs_n = max((cell["n"] for cell in cells.values()), default=0)
        if pairs_n:
            comparisons.append(
                {"row": entry["row"], "label": entry["label"], "reference": ref,
                 "reference_label": by_row[ref]["label"], "n": pairs_n, "cells": cells}
            )  # fmt: skip
    return comparisons


def _signed(value: float, digits: int = 1) -> str:
    return f"{round(value, digits) + 0.0:+.{digits}f}"  # + 0.0: -0.04 shows as +0.0, not -0.0


def _p(value: float | None) -> str:
    return "–" if value is None else ("<0.001" if value < 0.001 else f"{value:.3f}")


def comparisons_markdown(comparisons: Sequence[Mapping[str, Any]], columns: Sequence[tuple[str, str]]) -> str:
    """One line per (row, reference): mean paired difference ± se (paired-t p / sign-test p)."""
    if not comparisons:
        return ""
    shown = [(label, key) for label, key in columns if not key.startswith("run.")]
    lines = [
        "| row − reference | pairs | " + " | ".join(label for label, _ in shown) + " |",
        "|---|---|" + "---|" * len(shown),
    ]
    for comparison in comparisons:
        cells = []
        for label, key in shown:
            cell = comparison["cells"][label]
            digits = 2 if key in NATS_COLUMNS else 1  # nats differ in the second decimal
            if cell["n"] == 0:
                cells.append("–")
            elif cell["se"] is None:
                cells.append(f"{_signed(cell['mean'], digits)} (1 pair)")
            else:
                cells.append(
                    f"{_signed(cell['mean'], digits)} ± {cell['se']:.{digits}f} "
                    f"(p {_p(cell['p_t'])} / {_p(cell['p_sign'])})"
                )
        name = f"{comparison['label']} − {comparison['reference_label']}"
        lines.append(f"| {name} | {comparison['n']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------ figures
def plot_sweeps(
    path: Path,
    title: str,
    panels: Sequence[tuple[Sweep, Sequence[float], Sequence[str]]],
    summary: Sequence[Mapping[str, Any]],
    columns: Sequence[tuple[str, str]],
    reference: str = "sft",
) -> Path:
    """A PNG: per sweep (a row of panels) each metric column vs the swept value, mean ± std error
    bars, with the reference row's mean ± std as a grey band; then the learned ε vs ε_max (a sweep
    of the budget) and the label-validity means, where the runs have them.

    `panels`: (sweep, its values, its row names) in plotting order."""
    from unigame.plotting import agg_figure

    by_row = {entry["row"]: entry for entry in summary}
    columns = _shown(summary, columns)
    metrics = [(label, key) for label, key in columns if not key.startswith("run.")]
    has_eps = any(key == LEARNED_EPS[1] for _, key in columns)
    validity = [(label, key) for label, key in columns if key in dict(LABEL_VALIDITY).values()]
    width = len(metrics) + has_eps + bool(validity)
    fig, axes = agg_figure(len(panels), width, (3.2 * width, 2.9 * len(panels) + 0.5), layout="constrained")
    fig.suptitle(title)

    def stats(names: Sequence[str], label: str) -> tuple[np.ndarray, np.ndarray]:
        cells = [by_row[name]["cells"][label] for name in names]
        mean = np.array([np.nan if c["mean"] is None else c["mean"] for c in cells])
        std = np.array([np.nan if c["std"] is None else c["std"] for c in cells])
        return mean, std

    ref = by_row.get(reference)
    for i, (sweep, values, names) in enumerate(panels):
        order = np.argsort(np.asarray(values, dtype=np.float64), kind="stable")  # lines left to right
        x = np.asarray(values, dtype=np.float64)[order]
        names = [names[j] for j in order]
        row_axes = list(axes[i])
        for ax, (label, _) in zip(row_axes, metrics, strict=False):
            mean, std = stats(names, label)
            ax.errorbar(x, mean, yerr=std, marker="o", capsize=3, label="sweep (mean ± std)")
            if ref is not None and ref["cells"][label]["mean"] is not None:
                m, s = ref["cells"][label]["mean"], ref["cells"][label]["std"]
                ax.axhline(m, color="grey", linestyle="--", linewidth=1, label=f"{ref['label']} (mean ± std)")
                ax.axhspan(m - s, m + s, color="grey", alpha=0.2)
            ax.set_title(f"{label} (%)")
        extra = row_axes[len(metrics) :]
        if has_eps:
            ax = extra.pop(0)
            mean, std = stats(names, LEARNED_EPS[0])
            ax.errorbar(x, mean, yerr=std, marker="o", capsize=3, label="learned ε (final)")
            if sweep.is_budget:
                ax.plot(x, x, linestyle=":", color="black", linewidth=1, label=f"{sweep.label} (the bound)")
                ax.set_yscale("log")
            ax.set_title("learned ε")
            ax.legend(fontsize=7)
        if validity:
            ax = extra.pop(0)
            for label, _ in validity:
                mean, std = stats(names, label)
                ax.errorbar(
                    x, mean, yerr=std, marker="o", capsize=3, label=label.removeprefix("label valid: ")
                )
            ax.set_title("label still valid (%)")
            ax.legend(fontsize=7)
        for ax in row_axes:
            ax.set_xlabel(sweep.label)
            if sweep.log_x:
                ax.set_xscale("log")
        row_axes[0].legend(fontsize=7)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    return path


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
    table: Literal["4", "main", "confirm", "internal", "asg", "schedule"] | None = None,
    figure: Literal["budget", "noise", "beta", "lr"] | None = None,
    seeds: int = 3,
    first_seed: int = 0,
    steps: int = 300,
    model: str | None = None,
    recipe: str | None = None,
    output: str | None = None,
    split: Split | None = None,
    rows: list[str] | None = None,
    set: list[str] | str | None = None,  # noqa: A002 - the CLI flag is --set
    best: list[str] | str | None = None,
    values: list[float] | None = None,
    percentiles: list[float] | None = None,
    quick: bool = False,
    workers: int = 0,
    threads: int = 1,
) -> dict[str, Any]:
    """Reproduce a paper table or sweep on ShapesWorld: train every row for several seeds, evaluate, summarise.

    A table writes `<output>/table-<table>.md` and `.json`; a figure writes `<output>/figure-<figure>.png`,
    `.md` and `.json`. Each gives mean ± std per row, then every trained row's paired difference
    from SFT (and from SFT with equal examples per update, when in the grid) over the seeds both
    have, with its standard error, paired-t and sign-test p-values, and the command, seeds, machine
    and times. Rerunning reuses finished runs and resumes interrupted ones, so tables and figures
    written into one output share their runs (every figure's SFT reference is the same runs).

    Args:
        table: `4` (the ablation: baseline, SFT, SFT with equal examples per update, noise,
            embedding (+cosine, +buffer), decoding (+cosine, +CLIP), full, full with the paper's
            direct decoding, UniGame with ε = 0, official-style mining), `main` (baseline / SFT / UniGame on understanding, robustness,
            consistency and generation) or `confirm` (the final test-split decision: baseline, SFT,
            SFT with equal examples, ε = 0, full and `best` = full + --best) or `internal`
            (internal supervision, arXiv 2507.16663: baseline, SFT on self-accepted samples, C-SFT,
            DPO, the oracle SFT on judge-accepted samples, UniGame, and UniGame after C-SFT, with
            generation per tier, Nonunified, the weak-generation rate and both branches' direction
            against the base) or `asg` (Ask-Solve-Generate: baseline, ASG, ASG without STE,
            labelled SFT on the same images, UniGame, with mean STE and the self-consistency
            accuracy beside the exact judge's truth) or `schedule` (full and
            decoding + CLIP in the alternating and the simultaneous schedule, beside baseline and
            SFT, each simultaneous row also paired with its alternating one; run it on --split
            val). Default: main, unless --figure is given.
        figure: a sweep on the val split, each point a UniGame row, with an SFT reference band:
            `budget` (ε_max 0.005-0.5, ε_init = ε_max/2, with the ε the gate learned), `noise`
            (random token noise at σ = 0.01-0.5), `beta` (β 0.1-2 and τ percentile 40/60/80) or
            `lr` (gen_lr/und_lr 5-1000 at the recipe's und_lr; 5 is the tiny recipe's, 250 the paper's).
        seeds: training seeds per row (seeds first_seed .. first_seed+seeds-1), >= 1.
        first_seed: the first training seed.
        steps: post-training steps per run (optim.steps).
        model: base model directory; default: the cached tiny Janus base (built if missing).
        recipe: YAML training recipe the rows override; default: the built-in tiny recipe
            (configs/shapes_tiny_unigame.yaml).
        output: folder for runs, evaluations and results (default runs/reproduce-table<table>-<split>,
            and runs/reproduce-figures-val for every figure).
        split: `test` (report) or `val` (tune: independently drawn scenes; never tune on test).
            Default: test for tables; figures run on val only.
        rows: only these rows of the table (their names: baseline, sft, sft-equal, noise, embedding,
            embedding-cosine, embedding-cosine-buffer, decoding, decoding-cosine, decoding-clip,
            full, full-direct, eps0, official, best; internal-sft, internal-csft, internal-dpo,
            internal-oracle, full-after-csft; asg, asg-no-ste), e.g. [sft,full] or `--rows sft full`.
        set: extra overrides for every trained row: KEY=VALUE (e.g. game.eps_max=0.05), several
            space-separated, or a list ('[game.eps_max=0.05,game.beta=1.0]').
        best: `--table confirm` only (required there): the overrides of the `best` row on top of
            full, e.g. `--best game.eps_max=0.1 game.beta=1.0`.
        values: the swept values of the figure (its first sweep: ε_max, σ, β or the LR ratio),
            e.g. `--values 0.02 0.1 0.5`.
        percentiles: `--figure beta` only: the τ percentiles of its second sweep (default 40 60 80).
        quick: tiny evaluation sizes (a smoke test, not a result).
        workers: runs at a time (0: one per `threads` cores, at most 8); the longest start first.
        threads: torch threads per run.
    """
    from rich.console import Console

    console = Console()
    set = [set] if isinstance(set, str) else set  # noqa: A001
    best = [best] if isinstance(best, str) else best
    if seeds < 1:
        raise ValueError(f"seeds={seeds} must be >= 1")
    if table is not None and figure is not None:
        raise ValueError(f"give --table or --figure, not both (got --table {table} --figure {figure})")
    panels: list[tuple[Sweep, list[float], list[str]]] = []
    if figure is None:
        table = table or "main"
        split = split or "test"
        for given, flag in ((values, "--values"), (percentiles, "--percentiles")):
            if given is not None:
                raise ValueError(f"{flag} applies to --figure only (got --table {table})")
        chosen = table_rows(table, parse_set(best or []))
        if rows:
            known = {r.name for r in chosen}
            unknown = [r for r in rows if r not in known]
            if unknown:
                raise ValueError(
                    f"rows {unknown} are not in table {table}; allowed: {', '.join(sorted(known))}"
                )
            chosen = [r for r in chosen if r.name in rows]
        columns = COLUMNS[table] + LABEL_VALIDITY
        name, title = f"table-{table}", f"Table {table} on ShapesWorld ({split} split)"
        out = Path(output or f"runs/reproduce-table{table}-{split}")
    else:
        if split == "test":
            raise ValueError(
                f"--figure {figure} runs on the val split only: sweeps choose settings, and choosing on "
                "test would leak into the reported numbers. Drop --split test; report the chosen "
                "setting on test with --table confirm --best KEY=VALUE ..."
            )
        split = "val"
        if rows or best:
            raise ValueError("--rows and --best apply to --table; choose a figure's points with --values")
        chosen = figure_rows(figure, values, percentiles)
        panels = [
            (sweep, swept, [r.name for r in sweep.rows(swept)])
            for sweep, swept in figure_sweeps(figure, values, percentiles)
        ]
        columns = FIGURE_COLUMNS + (LEARNED_EPS,) + LABEL_VALIDITY  # every point has a gate to learn
        name, title = f"figure-{figure}", f"Figure {figure}: {FIGURES[figure][0]}, on ShapesWorld (val split)"
        out = Path(output or "runs/reproduce-figures-val")
    base_recipe = TrainConfig()
    if recipe is not None:
        from unigame.train.run import load_recipe

        base_recipe = load_recipe(recipe)
    base_recipe = apply_overrides(base_recipe, {"optim.steps": steps, **parse_set(set or [])})
    base_recipe.validate()
    from unigame.train.loading import resolve_model_path

    model_path = Path(model).expanduser() if model is not None else resolve_model_path(base_recipe.model)
    workers = workers or default_workers(threads)
    seed_list = list(range(first_seed, first_seed + seeds))
    jobs = plan_jobs(chosen, seed_list, base_recipe, model_path, out, split, quick, threads)

    console.print(
        f"{title}: {len(chosen)} rows, seeds {seed_list}, {steps} steps, "
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

    # Rows that build on another row's run (`Row.after`) go once every run they need has finished.
    first = [j for j in jobs if j.cfg is None or j.cfg.model.merge_lora is None]
    results = run_jobs(first, workers, report)
    if len(first) < len(jobs):
        results += run_jobs([j for j in jobs if j not in first], workers, report)
    wall = time.perf_counter() - started
    summary = summarize(chosen, results, columns)
    comparisons = paired_comparisons(
        summary,
        columns,
        TABLE_REFERENCES.get(table or "", REFERENCES),
        pairs={r.name: r.paired_with for r in chosen if r.paired_with},
    )
    text = markdown_table(summary, columns)
    paired = comparisons_markdown(comparisons, columns)
    command = "unigame " + " ".join(shlex.quote(a) for a in sys.argv[1:]) if sys.argv else ""
    record = {
        "title": title,
        "table": table,
        "figure": figure,
        "split": split,
        "seeds": seed_list,
        "steps": steps,
        "model": str(model_path),
        "recipe": recipe or "built-in tiny recipe (configs/shapes_tiny_unigame.yaml)",
        "overrides": parse_set(set or []),
        "best": parse_set(best or []),
        "rows": {r.name: {"label": r.label, "overrides": r.overrides_for(base_recipe)} for r in chosen},
        "sweeps": [{"name": s.name, "label": s.label, "values": v, "rows": n} for s, v, n in panels],
        "columns": [list(c) for c in columns],
        "summary": summary,
        "comparisons": comparisons,
        "directions": branch_directions(summary, comparisons) if table in ("internal", "asg") else [],
        "results": results,
        "machine": machine_description(workers, threads),
        "wall_s": wall,
        "command": command,
        "finished": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    out.mkdir(parents=True, exist_ok=True)
    written = [out / f"{name}.md", out / f"{name}.json"]
    if panels:
        written.append(plot_sweeps(out / f"{name}.png", title, panels, summary, columns))
    # Atomic: a grid stopped while writing keeps its previous table, never half of one.
    write_atomic(out / f"{name}.json", json.dumps(record, indent=2))
    write_atomic(
        out / f"{name}.md", results_markdown(record, text, paired, plot=written[2].name if panels else None)
    )
    console.print("\n" + text + ("\n\n" + paired if paired else ""))
    console.print(f"\nWrote {', '.join(str(p) for p in written)} ({wall / 60:.1f} min)")
    return record


def branch_directions(
    summary: Sequence[Mapping[str, Any]], comparisons: Sequence[Mapping[str, Any]]
) -> list[dict[str, Any]]:
    """Per trained row, the paired change of generation (GenEval strict) and understanding (clean
    VQA) against the base, in points, and their joint direction: co-improvement, co-degradation, or
    each branch on its own. A branch moves only when the change is beyond the seed spread (paired
    t-test p < 0.05); with one seed, when it exceeds ±0.5 points, marked as one seed."""
    labels = {entry["row"]: entry["label"] for entry in summary if entry["trains"]}
    against_base = {c["row"]: c for c in comparisons if c["reference"] == "baseline" and c["row"] in labels}
    gen_label, und_label = DIRECTION_COLUMNS

    def word(cell: Mapping[str, Any]) -> str:
        mean = cell["mean"]
        if cell["n"] >= 2:
            moved = cell["p_t"] is not None and cell["p_t"] < DIRECTION_P
            # zero spread: the t-test is undefined, every seed moved by the same amount
            moved = moved or (cell["se"] == 0 and abs(mean) > 0.5)
            return ("up" if mean > 0 else "down") if moved else "no clear change"
        return (
            "no clear change (1 seed)"
            if abs(mean) <= 0.5
            else ("up (1 seed)" if mean > 0 else "down (1 seed)")
        )

    out = []
    for row, comparison in against_base.items():
        gen, und = comparison["cells"][gen_label], comparison["cells"][und_label]
        if not gen["n"] or not und["n"]:
            continue
        g, u = word(gen), word(und)
        verdict = {("up", "up"): "co-improvement", ("down", "down"): "co-degradation"}.get(
            (g, u), f"generation {g}, understanding {u}"
        )
        out.append(
            {"row": row, "label": labels[row], "generation": gen["mean"], "generation_p": gen["p_t"],
             "understanding": und["mean"], "understanding_p": und["p_t"], "direction": verdict}
        )  # fmt: skip
    return out


def directions_markdown(directions: Sequence[Mapping[str, Any]]) -> str:
    lines = ["| row | Δ GenEval strict (p) | Δ clean VQA (p) | both branches |", "|---|---|---|---|"]
    for d in directions:
        gen = f"{_signed(d['generation'])} ({_p(d['generation_p'])})"
        und = f"{_signed(d['understanding'])} ({_p(d['understanding_p'])})"
        lines.append(f"| {d['label']} | {gen} | {und} | {d['direction']} |")
    return "\n".join(lines)


def results_markdown(record: Mapping[str, Any], table: str, paired: str = "", plot: str | None = None) -> str:
    """The results file: the table, the paired comparisons, the plot, then how it was made
    (command, seeds, split, machine, time)."""
    extra = ", ".join(f"{k}={v}" for k, v in record["overrides"].items()) or "none"
    has_eps = any(key == LEARNED_EPS[1] for _, key in record.get("columns", []))
    parts = [
        f"# {record['title']}\n",
        table + "\n",
        f"Percent (x100 for cosines); mean ± sample std over training seeds {record['seeds']} "
        f"(`cfg.seed` = `data.split_seed` = seed); a row with one value has one run (the baseline, or --seeds 1)."
        + (
            " Learned ε: the gate's final value (not x100), – for rows without a perturber."
            if has_eps
            else ""
        )
        + "\n",
    ]
    if paired:
        parts += [
            "## Paired differences\n",
            paired + "\n",
            "Each cell: the mean difference (row − reference, percentage points) over the training seeds "
            "both rows have, ± its standard error (sample std / sqrt(pairs)), then the two-sided "
            "p-values of the paired t-test (df pairs − 1) and of the exact sign test (which cannot go "
            "below 2^(1 − pairs): 0.25 with 3 seeds). No correction for the many comparisons is applied.\n",
        ]
    if record.get("directions"):
        parts += [
            "## Both branches against the base\n",
            directions_markdown(record["directions"]) + "\n",
            "Mean paired change over the seeds, percentage points (paired t-test p). A branch goes up "
            f"or down only when p < {DIRECTION_P}; a change inside the seed spread reads as no clear "
            "change, whatever its sign.\n",
        ]
    if plot:
        parts.append(f"![{record['title']}]({plot})\n")
    parts.append(
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
    return "\n".join(parts)
