"""Batched helpers every suite shares: records -> pixels, one model call per batch, exact-match reports.

Suites talk to the model only through the unified-model protocol (`unigame.train.protocol`):
`answer`, `caption`, `generate_images`, `understanding_loss`, `visual_tokens`. Optional keywords an
adapter may or may not accept (`generator`, `max_new_tokens`) are passed only when its signature
has them, so a minimal protocol implementation still runs every suite.
"""

from __future__ import annotations

import inspect
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from unigame.data.pixels import images_to_pixels
from unigame.data.records import VQARecord
from unigame.eval.metrics import naturalbench_scores, normalize_vqa_answer

__all__ = [
    "SuiteResult",
    "adapter_device",
    "call_with_supported",
    "exact_match",
    "generate",
    "images_to_pixels",
    "naturalbench_report",
    "pixels_to_images",
    "predict",
    "records_to_pixels",
    "vqa_report",
]


@dataclass
class SuiteResult:
    """What a suite run produces; `unigame.eval.report` turns it into metrics.json and reports.

    `metrics` is nested, JSON-ready and holds only numbers at its leaves (fractions in [0, 1]
    unless documented otherwise); `sizes` and `timings_s` describe the run; `panels` maps a
    panel name to (uint8 image, label) examples drawn in the HTML report; `skipped` maps a data
    file to the messages of the bad rows dropped under `skip_bad`.
    """

    metrics: dict[str, Any]
    sizes: dict[str, Any] = field(default_factory=dict)
    timings_s: dict[str, float] = field(default_factory=dict)
    panels: dict[str, list[tuple[np.ndarray, str]]] = field(default_factory=dict)
    skipped: dict[str, list[str]] = field(default_factory=dict)


def adapter_device(adapter: Any) -> torch.device:
    """The adapter's device: its `device` attribute, else that of its model's first parameter."""
    device = getattr(adapter, "device", None)
    if device is not None:
        return torch.device(device)
    first = next(adapter.model.parameters(), None)
    return torch.device("cpu") if first is None else first.device


def call_with_supported(fn: Callable[..., Any], *args: Any, **optional: Any) -> Any:
    """Call `fn(*args, **kw)` with only those optional keywords its signature accepts."""
    params = inspect.signature(fn).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return fn(*args, **optional)
    return fn(*args, **{k: v for k, v in optional.items() if k in params})


def records_to_pixels(records: Sequence[VQARecord]) -> torch.Tensor:
    """(B, 3, H, W) float pixels in [0,1] from records' uint8 images."""
    return images_to_pixels([r.image for r in records])


def pixels_to_images(pixels: torch.Tensor) -> np.ndarray:
    """(B, 3, H, W) in [0, 1] -> (B, H, W, 3) uint8 (what the ShapesWorld judge reads)."""
    return (
        (pixels.detach().float().clamp(0, 1).permute(0, 2, 3, 1).cpu().numpy() * 255).round().astype(np.uint8)
    )


def predict(
    adapter: Any,
    records: Sequence[VQARecord],
    batch_size: int = 64,
    desc: str = "answer",
    progress: bool = True,
    pixels_fn: Callable[[Sequence[VQARecord]], torch.Tensor] = records_to_pixels,
    **answer_kwargs: Any,
) -> list[str]:
    """Greedy answers for records, batched through the adapter (one model call per batch).

    `pixels_fn` turns a batch of records into (B, 3, H, W) pixels (default: in-memory ShapesWorld
    images); `answer_kwargs` (e.g. `max_new_tokens`) reach `adapter.answer` when it accepts them.
    """
    device = adapter_device(adapter)
    predictions: list[str] = []
    for start in tqdm(range(0, len(records), batch_size), desc=desc, leave=False, disable=not progress):
        batch = records[start : start + batch_size]
        predictions += call_with_supported(
            adapter.answer, pixels_fn(batch).to(device), [r.question for r in batch], **answer_kwargs
        )
    return predictions


@torch.no_grad()
def generate(
    adapter: Any,
    prompts: Sequence[str],
    generator: torch.Generator | None = None,
    batch_size: int = 32,
    desc: str = "generate",
    progress: bool = True,
) -> np.ndarray:
    """Text-to-image for every prompt, batched: (N, H, W, 3) uint8.

    `generator` makes sampling reproducible for adapters whose `generate_images` accepts one.
    """
    out: list[np.ndarray] = []
    for start in tqdm(range(0, len(prompts), batch_size), desc=desc, leave=False, disable=not progress):
        batch = list(prompts[start : start + batch_size])
        out.append(pixels_to_images(call_with_supported(adapter.generate_images, batch, generator=generator)))
    return np.concatenate(out) if out else np.zeros((0, 0, 0, 3), dtype=np.uint8)


def exact_match(prediction: str, answer: str) -> bool:
    """ShapesWorld answers are single words from a closed vocabulary: exact match after VQA normalisation."""
    return normalize_vqa_answer(prediction) == normalize_vqa_answer(answer)


def vqa_report(records: Sequence[VQARecord], predictions: Sequence[str]) -> dict[str, Any]:
    """Exact-match accuracy overall and per question kind (`meta["kind"]`), fractions in [0, 1]."""
    hits = [exact_match(p, r.answer) for p, r in zip(predictions, records, strict=True)]
    by_kind: dict[str, list[bool]] = defaultdict(list)
    for hit, record in zip(hits, records):
        by_kind[record.meta.get("kind", "all")].append(hit)
    return {
        "accuracy": float(np.mean(hits)),
        "n": len(hits),
        "per_kind": {k: float(np.mean(v)) for k, v in sorted(by_kind.items())},
    }


def naturalbench_report(records: Sequence[VQARecord], predictions: Sequence[str]) -> dict[str, Any]:
    """NaturalBench Q/I/G-Acc and Acc of ShapesWorld groups (exact match), plus the group count."""
    groups: dict[int, dict[str, bool]] = defaultdict(dict)
    for record, prediction in zip(records, predictions, strict=True):
        meta = record.meta
        groups[meta["group"]][f"q{meta['question_index']}_i{meta['image_index']}"] = exact_match(
            prediction, record.answer
        )
    return naturalbench_scores(groups.values()) | {"groups": len(groups)}
