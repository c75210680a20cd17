"""Turn a VQAv2-format folder into a local lmms-eval task, offline.

lmms-eval reads its stock `vqav2_val` task from the Hub. For local data (a ShapesWorld split
exported with `unigame.data.formats.write_vqav2`, or any folder `unigame eval --suite vqav2 --data`
reads), this writes, into one task folder:

* `<task>.parquet`: one row per question in the layout of the Hub's VQAv2 (question_id, question,
  image with the original file's bytes, the ten answers as {answer, answer_id, answer_confidence},
  multiple_choice_answer, answer_type, question_type);
* `<task>.yaml`: a task over that file scored by lmms-eval's own VQAv2 functions, with an empty
  post-prompt so the question is asked as written, as `unigame eval` asks it;
* `utils.py`: re-exports those functions (lmms-eval resolves `!function` beside the YAML).

Run it with `lmms-eval --include_path FOLDER --tasks <task> ...`.

    python -m unigame.lmms.task DATA_DIR TASK_DIR [--task NAME]
"""

from __future__ import annotations

import json
import re
from pathlib import Path

__all__ = ["write_vqav2_task"]

_TASK_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")

_YAML = """\
# lmms-eval task over a local VQAv2-format export, written by `python -m unigame.lmms.task`.
# Scored by lmms-eval's own VQAv2 functions (utils.py); the question is asked as written.
task: {task}
dataset_path: parquet
dataset_kwargs:
  data_files:
    validation: {parquet}
test_split: validation
output_type: generate_until
doc_to_visual: !function utils.vqav2_doc_to_visual
doc_to_text: !function utils.vqav2_doc_to_text
doc_to_target: multiple_choice_answer
generation_kwargs:
  max_new_tokens: {max_new_tokens}
process_results: !function utils.vqav2_process_results_val
metric_list:
  - metric: exact_match
    aggregation: mean
    higher_is_better: true
lmms_eval_specific_kwargs:
  default:
    pre_prompt: ""
    post_prompt: ""
metadata:
  - version: 0.0
"""

_UTILS = """\
# lmms-eval resolves `!function utils.NAME` beside the task YAML: its own VQAv2 task functions.
from lmms_eval.tasks.vqav2.utils import (  # noqa: F401
    vqav2_doc_to_text,
    vqav2_doc_to_visual,
    vqav2_process_results_val,
)
"""


def write_vqav2_task(data: str, output: str, task: str = "unigame_vqav2", max_new_tokens: int = 16) -> str:
    """Write an lmms-eval task folder for a VQAv2-format folder; returns the YAML's path.

    Args:
        data: a VQAv2-format folder (questions JSON, annotations JSON, image folder), as
            `unigame eval --suite vqav2 --data` reads it.
        output: the task folder to write (created; files of the same names are replaced).
        task: the task name lmms-eval's --tasks selects (letters, digits, underscores).
        max_new_tokens: answer length budget (16, as `unigame eval --suite vqav2` uses).
    """
    import datasets

    from unigame.eval.benchmarks import load_vqa_folder

    if not _TASK_NAME.match(task):
        raise ValueError(f"task={task!r}: use letters, digits and underscores, starting with a letter")
    records = load_vqa_folder("vqav2", Path(data).expanduser())
    if any(not r.answers for r in records):
        raise ValueError(f"{data}: questions without annotations cannot be scored")
    out = Path(output).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    rows = {
        "question_id": [r.meta["question_id"] for r in records],
        "image_id": [r.meta["image_id"] for r in records],
        "question": [r.question for r in records],
        # the image file's own bytes: lmms-eval decodes exactly the pixels unigame eval decodes
        "image": [{"bytes": Path(r.image_path).read_bytes(), "path": None} for r in records],
        "answers": [
            [{"answer": a, "answer_id": j + 1, "answer_confidence": "yes"} for j, a in enumerate(r.answers)]
            for r in records
        ],
        "multiple_choice_answer": [r.answer for r in records],
        "answer_type": [r.meta.get("answer_type") or "" for r in records],
        "question_type": [r.meta.get("question_type") or "" for r in records],
    }
    answer = {
        "answer": datasets.Value("string"),
        "answer_id": datasets.Value("int64"),
        "answer_confidence": datasets.Value("string"),
    }
    features = datasets.Features(
        {
            "question_id": datasets.Value("int64"),
            "image_id": datasets.Value("int64"),
            "question": datasets.Value("string"),
            "image": datasets.Image(),
            "answers": [answer],
            "multiple_choice_answer": datasets.Value("string"),
            "answer_type": datasets.Value("string"),
            "question_type": datasets.Value("string"),
        }
    )
    parquet = out / f"{task}.parquet"
    datasets.Dataset.from_dict(rows, features=features).to_parquet(str(parquet))
    yaml_path = out / f"{task}.yaml"
    yaml_path.write_text(
        _YAML.format(task=task, parquet=json.dumps(str(parquet.resolve())), max_new_tokens=max_new_tokens)
    )
    (out / "utils.py").write_text(_UTILS)
    print(f"Wrote lmms-eval task {task!r} ({len(records)} questions) to {out}")
    return str(yaml_path)


if __name__ == "__main__":  # pragma: no cover - exercised through the docs' command
    from jsonargparse import auto_cli

    auto_cli(write_vqav2_task)
