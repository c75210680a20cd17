"""A ShapesWorld split in VQAv2 format and its lmms-eval task folder, for the lmms-eval tests.

The tiny model is untrained, so on the true answers it scores 0 and a score equality would say
little. A third of the questions therefore get the model's own (normalised) answer as all ten
reference answers (score 1) and a third get it as two of ten (score 0.6, VQA's leave-one-out);
the rest keep ShapesWorld's answer. Both harnesses then score something between 0 and 1.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

N_QUESTIONS = 24  # two batches of 16, as both harnesses batch them


@pytest.fixture(scope="session")
def vqav2_dir(tiny_model_dir, tmp_path_factory) -> Path:
    from unigame.data.formats import write_vqav2
    from unigame.data.pixels import images_to_pixels, square_resize
    from unigame.data.splits import build_split
    from unigame.eval.common import predict
    from unigame.eval.metrics import normalize_vqa_answer
    from unigame.models.janus import JanusAdapter

    records = build_split("test", N_QUESTIONS, seed=3)
    adapter = JanusAdapter.from_pretrained(tiny_model_dir)
    size = adapter.image_size
    own = predict(
        adapter,
        records,
        16,
        progress=False,
        pixels_fn=lambda batch: images_to_pixels([square_resize(r.image, size) for r in batch]),
        max_new_tokens=16,
    )
    labelled = []
    for i, (record, answer) in enumerate(zip(records, own, strict=True)):
        answer = normalize_vqa_answer(answer)
        if i % 3 == 0 and answer:
            record = replace(record, answer=answer, answers=[answer] * 10)
        elif i % 3 == 1 and answer:
            record = replace(record, answers=[answer] * 2 + [record.answer] * 8)
        labelled.append(record)
    out = tmp_path_factory.mktemp("lmms") / "vqav2"
    write_vqav2(labelled, out)
    return out


@pytest.fixture(scope="session")
def task_dir(vqav2_dir) -> Path:
    from unigame.lmms.task import write_vqav2_task

    out = vqav2_dir.parent / "task"
    write_vqav2_task(str(vqav2_dir), str(out))
    return out


@pytest.fixture(scope="session")
def unigame_score(tiny_model_dir, vqav2_dir) -> float:
    """`unigame eval --suite vqav2` on the export: the reference score."""
    from unigame.eval.run import evaluate

    record = evaluate(
        "vqav2",
        model=str(tiny_model_dir),
        data=str(vqav2_dir),
        output=str(vqav2_dir.parent / "eval"),
        device="cpu",
    )
    return record["metrics"]["accuracy"]


@pytest.fixture(scope="session")
def adapter(tiny_model_dir):
    """The tiny Janus as the lmms-eval model loads it."""
    from unigame.lmms.answering import load_janus

    return load_janus(str(tiny_model_dir), prompt="tiny", device="cpu")[0]
