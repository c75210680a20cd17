"""Training prompts for internal supervision: ShapesWorld's GenEval-style prompts, or a local file.

ShapesWorld prompts come from their own random stream, and any text equal to a prompt of the
evaluation suite (val and test seeds) is left out, except where the world has no other texts: it
holds 36 single-object captions and the suite uses nearly all of them, so the easy tier trains on
texts it is also evaluated on (with other samples). Medium and hard prompts never overlap.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from unigame.data.shapes import ShapesConfig
from unigame.eval.shapes_suite import DEFAULT_SIZES, GENEVAL_TIERS, shapes_geneval_prompts

__all__ = ["TRAIN_PROMPT_STREAM", "TrainingPrompt", "read_prompt_file", "shapes_training_prompts"]

TRAIN_PROMPT_STREAM = 0x7A11
EVAL_SEEDS = (0, 1)  # the suite's test and val seeds (unigame.reproduce.SPLIT_SEEDS)


@dataclass(frozen=True)
class TrainingPrompt:
    """A text-to-image prompt; `spec` (ShapesWorld only) is the GenEval row the exact judge checks."""

    text: str
    tier: str = "unknown"
    spec: dict[str, Any] | None = field(default=None, compare=False)


def shapes_training_prompts(n: int, seed: int, config: ShapesConfig) -> list[TrainingPrompt]:
    """`n` prompts cycling through GenEval's six tasks, none of them (but single-object ones) an
    evaluation prompt's text; deterministic for (n, seed, config)."""
    held_out = {
        p["prompt"]
        for s in EVAL_SEEDS
        for p in shapes_geneval_prompts(config, DEFAULT_SIZES.generation, s)
        if GENEVAL_TIERS[p["tag"]] != "easy"
    }
    by_task: dict[str, list[dict[str, Any]]] = {}
    draws = 0
    while sum(min(len(v), -(-n // 6)) for v in by_task.values()) < n and draws < 50:
        for p in shapes_geneval_prompts(config, max(n // 6, 8), seed * 64 + draws, TRAIN_PROMPT_STREAM):
            if p["prompt"] not in held_out:
                by_task.setdefault(p["tag"], []).append(p)
        draws += 1
    tasks = sorted(by_task)
    prompts: list[TrainingPrompt] = []
    for i in range(max(len(v) for v in by_task.values())):
        for task in tasks:
            if i < len(by_task[task]) and len(prompts) < n:
                p = by_task[task][i]
                prompts.append(TrainingPrompt(p["prompt"], GENEVAL_TIERS[task], p))
    return prompts


def read_prompt_file(path: str | Path, encodes: Callable[[str], bool]) -> list[TrainingPrompt]:
    """Prompts from a .txt (one per line) or .jsonl ({"prompt": ..., optional "tier"}) file.

    Every problem is an error naming the file and line, before any work: an empty file, a blank or
    malformed line, a prompt the tokenizer cannot encode (`encodes(text)` False)."""
    path = Path(path)
    lines = path.read_text(encoding="utf-8").splitlines()
    prompts: list[TrainingPrompt] = []
    for number, line in enumerate(lines, 1):
        if path.suffix == ".jsonl":
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                text, tier = row["prompt"], str(row.get("tier", "unknown"))
            except (json.JSONDecodeError, KeyError, TypeError) as err:
                raise ValueError(
                    f'internal.prompt_file {path}:{number}: expected {{"prompt": ...}} ({err})'
                ) from err
        else:
            text, tier = line, "unknown"
        if not isinstance(text, str) or not text.strip():
            raise ValueError(f"internal.prompt_file {path}:{number}: empty prompt")
        if not encodes(text):
            raise ValueError(f"internal.prompt_file {path}:{number}: the tokenizer cannot encode {text!r}")
        prompts.append(TrainingPrompt(text.strip(), tier))
    if not prompts:
        raise ValueError(f"internal.prompt_file {path}: no prompts")
    return prompts
