"""The base model's quick evaluation: clean VQA, the NaturalBench-style shifted split, and generation.

These three figures are the foundation's targets (clean >= 80%, shifted >= 10 points lower,
>= 50% of single-object generations judged correct); the full benchmark suite builds on the same
batched helpers.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from unigame.data.records import VQARecord
from unigame.data.shapes import ShapesConfig, caption, judge_scene, sample_scene
from unigame.data.splits import build_split
from unigame.eval.metrics import naturalbench_scores, normalize_vqa_answer


def records_to_pixels(records: Sequence[VQARecord]) -> torch.Tensor:
    """(B, 3, H, W) float pixels in [0,1] from records' uint8 images."""
    return torch.from_numpy(np.stack([r.image for r in records])).permute(0, 3, 1, 2).float() / 255


def predict(
    adapter: Any, records: Sequence[VQARecord], batch_size: int = 64, desc: str = "answer"
) -> list[str]:
    """Greedy answers for records, batched through the adapter (one model call per batch)."""
    predictions: list[str] = []
    for start in tqdm(range(0, len(records), batch_size), desc=desc, leave=False):
        batch = records[start : start + batch_size]
        predictions += adapter.answer(
            records_to_pixels(batch).to(adapter.device), [r.question for r in batch]
        )
    return predictions


def exact_match(prediction: str, answer: str) -> bool:
    """ShapesWorld answers are single words from a closed vocabulary: exact match after VQA normalisation."""
    return normalize_vqa_answer(prediction) == normalize_vqa_answer(answer)


def vqa_report(records: Sequence[VQARecord], predictions: Sequence[str]) -> dict[str, Any]:
    hits = [exact_match(p, r.answer) for p, r in zip(predictions, records)]
    by_kind: dict[str, list[bool]] = defaultdict(list)
    for hit, record in zip(hits, records):
        by_kind[record.meta.get("kind", "all")].append(hit)
    return {
        "accuracy": float(np.mean(hits)),
        "n": len(hits),
        "per_kind": {k: float(np.mean(v)) for k, v in sorted(by_kind.items())},
    }


def naturalbench_report(records: Sequence[VQARecord], predictions: Sequence[str]) -> dict[str, Any]:
    groups: dict[int, dict[str, bool]] = defaultdict(dict)
    for record, prediction in zip(records, predictions):
        meta = record.meta
        groups[meta["group"]][f"q{meta['question_index']}_i{meta['image_index']}"] = exact_match(
            prediction, record.answer
        )
    return naturalbench_scores(groups.values()) | {"groups": len(groups)}


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


def evaluate_base(
    adapter: Any, config: ShapesConfig, n: int = 300, seed: int = 1, progress: bool = True
) -> dict[str, Any]:
    """Clean VQA accuracy, NaturalBench-style accuracy under shift, and single-object generation."""
    test = build_split("test", n, seed, config)
    natural = build_split("naturalbench", max(1, n // 4), seed, config)
    clean = vqa_report(test, predict(adapter, test, desc="eval: clean VQA"))
    natural_predictions = predict(adapter, natural, desc="eval: NaturalBench-style")
    shifted = vqa_report(natural, natural_predictions) | naturalbench_report(natural, natural_predictions)
    generation = generation_report(adapter, config, max(8, n // 3), seed)
    return {
        "clean_vqa": clean,
        "naturalbench": shifted,
        "generation": generation,
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
    kinds = ", ".join(f"{k} {100 * v:.0f}%" for k, v in clean["per_kind"].items())
    lines = ["| metric | value | size |", "|---|---|---|"] + [f"| {a} | {b} | {c} |" for a, b, c in rows]
    return "\n".join(lines) + f"\n\nClean VQA per question kind: {kinds}"
