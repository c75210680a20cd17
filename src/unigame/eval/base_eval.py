"""The base model's quick evaluation: clean VQA, the NaturalBench-style shifted split, and generation.

These three figures are the foundation's targets (clean >= 80%, shifted >= 10 points lower,
>= 50% of single-object generations judged correct); the full benchmark suite builds on the same
batched helpers.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from unigame.data.generalist import ASK_QUESTION, match_item
from unigame.data.pixels import images_to_pixels
from unigame.data.shapes import ShapesConfig, answer_question, caption, judge_scene, render, sample_scene
from unigame.data.splits import build_split

# The batched helpers live in `unigame.eval.common` (shared with the full suites); re-exported here.
from unigame.eval.common import (
    exact_match,
    naturalbench_report,
    predict,
    records_to_pixels,
    vqa_report,
)

__all__ = [
    "clean_vqa_report",
    "evaluate_base",
    "exact_match",
    "format_base_table",
    "generalist_report",
    "generation_report",
    "naturalbench_report",
    "predict",
    "records_to_pixels",
    "vqa_report",
]


def generation_report(
    adapter: Any, config: ShapesConfig, n: int, seed: int, batch_size: int = 32, guidance: float = 3.0
) -> dict[str, Any]:
    """Single-object text-to-image judged exactly: the right shape and colour, and nothing else."""
    rng = np.random.default_rng(seed)
    scenes = [sample_scene(rng, config, n_objects=1) for _ in range(n)]
    generator = torch.Generator().manual_seed(seed)
    correct, exact = [], []
    for start in tqdm(range(0, n, batch_size), desc="generate", leave=False):
        batch = scenes[start : start + batch_size]
        pixels = adapter.generate_images([caption(s) for s in batch], guidance=guidance, generator=generator)
        images = (pixels.permute(0, 2, 3, 1).cpu().numpy() * 255).round().astype(np.uint8)
        for image, scene in zip(images, batch):
            report = judge_scene(image, scene, config, pos_tol=1.0)  # position is free for one object
            correct.append(report.count_ok and report.matched == 1)
            exact.append(report.all_correct)
    return {
        "single_object": float(np.mean(correct)),
        "single_object_with_size": float(np.mean(exact)),
        "n": n,
    }


@torch.no_grad()
def generalist_report(
    adapter: Any, config: ShapesConfig, n: int, seed: int, batch_size: int = 32
) -> dict[str, Any]:
    """The generalist tasks on `n` fresh scenes: caption matching (yes/no, balanced) and asking.

    A question the model asks counts as valid when the scene answers it unambiguously
    (`answer_question` is not None); `distinct` is the share of different questions asked.
    """
    rng = np.random.default_rng(np.random.SeedSequence([seed, 4409]))
    scenes = [sample_scene(rng, config) for _ in range(n)]
    items = [match_item(scene, rng, config) for scene in scenes]
    match_right, asked = [], []
    for start in range(0, n, batch_size):
        batch = scenes[start : start + batch_size]
        pixels = images_to_pixels([render(scene, config) for scene in batch])
        questions = [q for q, _ in items[start : start + batch_size]]
        predictions = adapter.answer(pixels, questions)
        match_right += [p.strip().lower() == a for p, (_, a) in zip(predictions, items[start:])]
        asked += adapter.answer(pixels, [ASK_QUESTION] * len(batch), max_new_tokens=16)
    valid = [answer_question(q, scene.objects) is not None for q, scene in zip(asked, scenes)]
    return {
        "match_accuracy": float(np.mean(match_right)),
        "ask_valid": float(np.mean(valid)),
        "ask_distinct": len(set(asked)) / max(1, len(asked)),
        "n": n,
    }


def clean_vqa_report(
    adapter: Any, config: ShapesConfig, n: int = 300, seed: int = 1, progress: bool = False
) -> dict[str, Any]:
    """VQA on `n` clean test questions: the base check's understanding figure (its seed is 1)."""
    test = build_split("test", n, seed, config)
    return vqa_report(test, predict(adapter, test, desc="eval: clean VQA", progress=progress))


def evaluate_base(
    adapter: Any, config: ShapesConfig, n: int = 300, seed: int = 1, progress: bool = True
) -> dict[str, Any]:
    """Clean VQA accuracy, NaturalBench-style accuracy under shift, and single-object generation."""
    clean = clean_vqa_report(adapter, config, n, seed, progress)
    natural = build_split("naturalbench", max(1, n // 4), seed, config)
    natural_predictions = predict(adapter, natural, desc="eval: NaturalBench-style", progress=progress)
    shifted = vqa_report(natural, natural_predictions) | naturalbench_report(natural, natural_predictions)
    generation = generation_report(adapter, config, max(8, n // 3), seed)
    generalist = generalist_report(adapter, config, max(8, n // 3), seed)
    return {
        "clean_vqa": clean,
        "naturalbench": shifted,
        "generation": generation,
        "generalist": generalist,
        "shift_gap_points": 100 * (clean["accuracy"] - shifted["accuracy"]),
    }


def format_base_table(evaluation: dict[str, Any]) -> str:
    """A small Markdown table of the base's evaluation."""
    clean, natural, gen = evaluation["clean_vqa"], evaluation["naturalbench"], evaluation["generation"]
    rows = [
        ("Clean VQA accuracy", f"{100 * clean['accuracy']:.1f}%", f"{clean['n']} questions"),
        (
            "NaturalBench-style accuracy (shifted)",
            f"{100 * natural['accuracy']:.1f}%",
            f"{natural['n']} questions",
        ),
        ("NaturalBench-style G-Acc", f"{100 * natural['g_acc']:.1f}%", f"{natural['groups']} groups"),
        ("Shift gap (clean - shifted)", f"{evaluation['shift_gap_points']:.1f} pts", ""),
        (
            "Single-object generation judged correct",
            f"{100 * gen['single_object']:.1f}%",
            f"{gen['n']} prompts",
        ),
    ]
    if "generalist" in evaluation:  # bases built before the generalist tasks lack it
        general = evaluation["generalist"]
        rows += [
            ('"Does this image show {caption}?" accuracy', f"{100 * general['match_accuracy']:.1f}%", f"{general['n']} scenes"),
            ('Questions asked that the scene answers', f"{100 * general['ask_valid']:.1f}%", f"{general['n']} scenes"),
        ]  # fmt: skip
    kinds = ", ".join(f"{k} {100 * v:.0f}%" for k, v in clean["per_kind"].items())
    lines = ["| metric | value | size |", "|---|---|---|"] + [f"| {a} | {b} | {c} |" for a, b, c in rows]
    return "\n".join(lines) + f"\n\nClean VQA per question kind: {kinds}"
