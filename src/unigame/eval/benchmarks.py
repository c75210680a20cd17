"""Public benchmarks from local files: VQAv2, AdVQA, POPE, NaturalBench, MMMU.

Each suite reads the official file layout with `unigame.data.loaders`, asks the model through the
protocol (`answer`, batched), and scores with the exact reference metrics of
`unigame.eval.metrics`. Where the data folder should look like (`data` argument):

* vqav2 / advqa: a folder with ``*OpenEnded*questions.json``, ``*mscoco*annotations.json`` and
  the COCO image folder named by the split in the file names (``val2014``; AdVQA ``val2017``).
* pope: a folder with ``coco_pope_{random,popular,adversarial}.json`` (any subset) and the
  COCO images in ``images/`` (or beside the files).
* naturalbench: ``naturalbench.{jsonl,json,parquet}``, or that file itself.
* mmmu: ``mmmu.{jsonl,json,parquet}``, a folder of the official per-subject ``*.parquet``
  files, or one such file.

Images are padded to a square with mid-grey and resized to the adapter's `image_size` (Janus-Pro's
own preprocessing; 384 when the adapter does not say). Prompts: VQAv2/AdVQA/POPE questions go in as
written; NaturalBench and MMMU use their reference prompt wording (`reference_prompts=False` to send
bare questions). MMMU questions with several images are answered from the first image only (the
protocol takes one image per question); their count is reported as `multi_image_questions`.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from unigame.data.loaders import (
    POPE_SPLITS,
    DataFormatError,
    Loaded,
    load_advqa,
    load_image,
    load_mmmu,
    load_naturalbench,
    load_pope,
    load_vqav2,
)
from unigame.data.pixels import PAD_GREY, square_resize
from unigame.data.records import VQARecord
from unigame.eval.common import SuiteResult, images_to_pixels, predict
from unigame.eval.metrics import (
    mmmu_accuracy,
    naturalbench_correctness,
    naturalbench_scores,
    pope_metrics,
    vqa_accuracy,
)

__all__ = ["BENCHMARK_SUITES", "load_vqa_folder", "run_benchmark"]

BENCHMARK_SUITES: tuple[str, ...] = ("vqav2", "advqa", "pope", "naturalbench", "mmmu")

# NaturalBench's evaluation appends these to every question (naturalbench_vqa.py, SUFFIX_FOR_VQA).
NATURALBENCH_SUFFIX = {
    "yes_no": "Please answer Yes or No.",
    "multiple_choice": "Please output the letter corresponding to the correct option.",
}
# MMMU's prompt templates (configs/llava1.5.yaml of the MMMU repository).
MMMU_MC_TEMPLATE = (
    "{question}\n\n{options}\n\nAnswer with the option's letter from the given choices directly."
)
MMMU_OPEN_TEMPLATE = "{question}\n\nAnswer the question using a single word or phrase."
# Answer length budgets (new tokens) per suite: short answers, MMMU's can be a number or phrase.
MAX_NEW_TOKENS = {"vqav2": 16, "advqa": 16, "pope": 16, "naturalbench": 16, "mmmu": 32}


class _Pixels:
    """records -> (B, 3, S, S) pixels; with `skip_bad`, an undecodable image is recorded in
    `failed` (record id -> message) and replaced by grey, and its prediction dropped later."""

    def __init__(self, size: int, skip_bad: bool) -> None:
        self.size = size
        self.skip_bad = skip_bad
        self.failed: dict[str, str] = {}

    def __call__(self, records: Sequence[VQARecord]) -> torch.Tensor:
        images = []
        for record in records:
            try:
                images.append(square_resize(load_image(record), self.size))
            except (DataFormatError, ValueError) as err:
                if not self.skip_bad:
                    raise
                self.failed[record.id] = str(err)
                images.append(np.full((self.size, self.size, 3), PAD_GREY, dtype=np.uint8))
        return images_to_pixels(images)


def _find(folder: Path, pattern: str, what: str) -> Path:
    matches = sorted(folder.glob(pattern))
    if len(matches) != 1:
        found = ", ".join(m.name for m in matches) or "none"
        raise FileNotFoundError(f"{folder}: expected exactly one {what} matching {pattern!r}; found {found}")
    return matches[0]


def _data_file(data: Path, names: Sequence[str], what: str) -> Path:
    if data.is_file():
        return data
    for name in names:
        if (data / name).is_file():
            return data / name
    raise FileNotFoundError(f"{data}: no {what} file; expected one of {', '.join(names)} (or pass the file)")


def load_vqa_folder(suite: str, data: Path, skip_bad: bool = False) -> Loaded[VQARecord]:
    """The records of a VQAv2/AdVQA folder exactly as `--suite vqav2|advqa --data FOLDER` reads them."""
    if not data.is_dir():
        raise FileNotFoundError(
            f"--data {data} must be a folder holding the {suite} questions, annotations and images"
        )
    questions = _find(data, "*OpenEnded*questions.json", f"{suite} questions file")
    annotations = _find(data, "*mscoco*annotations.json", f"{suite} annotations file")
    split = re.search(r"(train|val|test)(-dev)?\d{4}", questions.name)
    images = data / split.group(0) if split and (data / split.group(0)).is_dir() else None
    if images is None:
        raise FileNotFoundError(
            f"{data}: no image folder named after the split in {questions.name} (e.g. val2014)"
        )
    load = load_advqa if suite == "advqa" else load_vqav2
    return load(questions, annotations, images, skip_bad=skip_bad)


def _keep(
    records: Sequence[VQARecord], predictions: Sequence[str], failed: dict[str, str]
) -> tuple[list, list]:
    kept = [(r, p) for r, p in zip(records, predictions, strict=True) if r.id not in failed]
    return [r for r, _ in kept], [p for _, p in kept]


def _vqa(
    records: Loaded[VQARecord], ask: Callable[..., list[str]], pixels: _Pixels, suite: str
) -> dict[str, Any]:
    if any(not r.answers for r in records):
        raise ValueError(f"{suite}: questions without annotations cannot be scored (test-dev has none)")
    records, predictions = _keep(records, ask(records, suite), pixels.failed)
    by_type: dict[str, list[int]] = defaultdict(list)
    for i, record in enumerate(records):
        by_type[record.meta.get("answer_type") or "unknown"].append(i)
    return {
        "accuracy": vqa_accuracy(predictions, [r.answers for r in records]),
        "n": len(records),
        "per_answer_type": {
            kind: vqa_accuracy([predictions[i] for i in idx], [records[i].answers for i in idx])
            for kind, idx in sorted(by_type.items())
        },
    }


def _pope(
    data: Path, ask: Callable[..., list[str]], pixels: _Pixels, skip_bad: bool, skipped: dict
) -> dict[str, Any]:
    images = data / "images" if (data / "images").is_dir() else data
    out: dict[str, Any] = {}
    for split in POPE_SPLITS:
        path = data / f"coco_pope_{split}.json"
        if not path.is_file():
            continue
        records = load_pope(path, images, split=split, skip_bad=skip_bad)
        _note_skipped(skipped, path, records)
        records, predictions = _keep(records, ask(records, f"pope {split}"), pixels.failed)
        out[split] = pope_metrics(predictions, [r.answer for r in records])
    if not out:
        names = ", ".join(f"coco_pope_{s}.json" for s in POPE_SPLITS)
        raise FileNotFoundError(f"{data}: no POPE question file; expected any of {names}")
    out["mean_accuracy"] = float(np.mean([out[s]["accuracy"] for s in POPE_SPLITS if s in out]))
    out["mean_f1"] = float(np.mean([out[s]["f1"] for s in POPE_SPLITS if s in out]))
    return out


def _naturalbench(
    records: Loaded[VQARecord], ask: Callable[..., list[str]], pixels: _Pixels, reference_prompts: bool
) -> dict[str, Any]:
    if reference_prompts:
        asked = [
            replace(r, question=f"{r.question} {NATURALBENCH_SUFFIX[r.meta['question_type']]}")
            for r in records
        ]
    else:
        asked = list(records)
    predictions = ask(asked, "naturalbench")
    groups: dict[Any, dict[str, Any]] = {}
    for record, prediction in zip(records, predictions, strict=True):
        meta = record.meta
        group = groups.setdefault(
            meta["group"], {"type": meta["question_type"], "pred": {}, "gold": {}, "bad": False}
        )
        key = f"q{meta['question_index']}_i{meta['image_index']}"
        group["pred"][key], group["gold"][key] = prediction, record.answer
        group["bad"] |= record.id in pixels.failed  # a group with an unreadable image is dropped whole
    correctness = [
        naturalbench_correctness(g["pred"], g["gold"], g["type"]) for g in groups.values() if not g["bad"]
    ]
    return naturalbench_scores(correctness) | {"groups": len(correctness)}


def _mmmu_prompt(record: VQARecord) -> str:
    if record.meta["question_type"] == "multiple-choice":
        options = "\n".join(f"({chr(ord('A') + i)}) {o}" for i, o in enumerate(record.meta["options"]))
        return MMMU_MC_TEMPLATE.format(question=record.question, options=options)
    return MMMU_OPEN_TEMPLATE.format(question=record.question)


def _mmmu_subject(record_id: str) -> str:
    """'validation_Art_Theory_12' -> 'Art_Theory' (MMMU ids are split_subject_number)."""
    parts = record_id.split("_")
    return "_".join(parts[1:-1]) if len(parts) >= 3 else "unknown"


def _mmmu(
    records: Loaded[VQARecord],
    ask: Callable[..., list[str]],
    pixels: _Pixels,
    reference_prompts: bool,
    seed: int,
) -> dict[str, Any]:
    asked = [replace(r, question=_mmmu_prompt(r)) for r in records] if reference_prompts else list(records)
    records, predictions = _keep(records, ask(asked, "mmmu"), pixels.failed)
    items = [
        {
            "response": p,
            "answer": r.answer if r.meta["question_type"] == "multiple-choice" else r.answers,
            "question_type": r.meta["question_type"],
            "options": r.meta["options"],
        }
        for r, p in zip(records, predictions)
    ]
    by_subject: dict[str, list[int]] = defaultdict(list)
    for i, record in enumerate(records):
        by_subject[_mmmu_subject(record.id)].append(i)
    return {
        "accuracy": mmmu_accuracy(items, rng_seed=seed),
        "n": len(items),
        "multi_image_questions": sum(len(r.meta.get("image_refs", [])) > 1 for r in records),
        # each subject re-seeds its random fallback from `seed`, so subject scores are self-contained
        "per_subject": {
            s: mmmu_accuracy([items[i] for i in idx], rng_seed=seed) for s, idx in sorted(by_subject.items())
        },
    }


def _note_skipped(skipped: dict[str, list[str]], path: Path, loaded: Loaded) -> None:
    if loaded.skipped:
        skipped[str(path)] = [str(err) for err in loaded.skipped]


def run_benchmark(
    suite: str,
    adapter: Any,
    data: str | Path,
    *,
    skip_bad: bool = False,
    batch_size: int = 16,
    image_size: int | None = None,
    reference_prompts: bool = True,
    seed: int = 42,
    progress: bool = True,
) -> SuiteResult:
    """Evaluate `adapter` on a public benchmark stored under `data` (layouts in the module docstring).

    `skip_bad` drops malformed rows and undecodable images (each listed in `SuiteResult.skipped`)
    instead of stopping at the first. `seed` is MMMU's random-fallback seed (the reference uses 42).
    Scores are fractions in [0, 1].
    """
    if suite not in BENCHMARK_SUITES:
        raise ValueError(f"unknown benchmark suite {suite!r}; allowed: {', '.join(BENCHMARK_SUITES)}")
    data = Path(data).expanduser()
    if not data.exists():
        raise FileNotFoundError(f"benchmark data {str(data)!r} does not exist")
    if hasattr(adapter, "model"):
        adapter.model.eval()
    size = int(image_size or getattr(adapter, "image_size", None) or 384)
    pixels = _Pixels(size, skip_bad)
    tokens = MAX_NEW_TOKENS[suite]

    def ask(records: Sequence[VQARecord], desc: str) -> list[str]:
        return predict(adapter, records, batch_size, desc, progress, pixels_fn=pixels, max_new_tokens=tokens)

    skipped: dict[str, list[str]] = {}
    if suite in ("vqav2", "advqa"):
        records = load_vqa_folder(suite, data, skip_bad)
        _note_skipped(skipped, data, records)
        metrics = _vqa(records, ask, pixels, suite)
    elif suite == "pope":
        metrics = _pope(data, ask, pixels, skip_bad, skipped)
    elif suite == "naturalbench":
        path = _data_file(
            data, ("naturalbench.jsonl", "naturalbench.json", "naturalbench.parquet"), "NaturalBench"
        )
        records = load_naturalbench(path, skip_bad=skip_bad)
        _note_skipped(skipped, path, records)
        metrics = _naturalbench(records, ask, pixels, reference_prompts)
    else:
        records = Loaded()
        paths = (
            [data]
            if data.is_file()
            else [p for p in (data / n for n in ("mmmu.jsonl", "mmmu.json", "mmmu.parquet")) if p.is_file()][
                :1
            ]
            or sorted(data.glob("*.parquet"))
        )
        if not paths:
            raise FileNotFoundError(
                f"{data}: no MMMU file; expected mmmu.jsonl/json/parquet or *.parquet files"
            )
        for path in paths:
            loaded = load_mmmu(path, skip_bad=skip_bad)
            _note_skipped(skipped, path, loaded)
            records.extend(loaded)
        metrics = _mmmu(records, ask, pixels, reference_prompts, seed)
    if pixels.failed:
        skipped["images"] = [f"{rid}: {msg}" for rid, msg in pixels.failed.items()]
    sizes = {"batch_size": batch_size, "image_size": size, "max_new_tokens": tokens}
    return SuiteResult(metrics=metrics, sizes=sizes, skipped=skipped)
