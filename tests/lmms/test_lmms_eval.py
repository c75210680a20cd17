"""The real lmms-eval (the `lmms` extra) on a local VQAv2 task: its score equals `unigame eval`'s.

Skipped when lmms-eval is not installed; .ci/run installs it in a venv of its own and runs tests/lmms
there, so CI runs these.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from importlib.metadata import entry_points

import pytest

from unigame.eval.metrics import vqa_soft_accuracy

HAS_LMMS = importlib.util.find_spec("lmms_eval") is not None
needs_lmms = pytest.mark.skipif(not HAS_LMMS, reason="lmms-eval is not installed (pip install -e '.[lmms]')")

# Where lmms-eval's VQAv2 scoring differs from the official VQA script (which `unigame eval` follows):
# lmms-eval normalises every reference answer (lower case, number words, articles) always; the
# official script leaves identical references untouched and strips only punctuation from differing
# ones. Official VQAv2 annotations are already normalised, so published numbers agree; raw
# references such as "Two" or "the cube" score differently.
# (prediction, reference answers, official / unigame eval, lmms-eval)
NORMALISATION_CASES = [
    ("2", ["Two"] * 10, 0.0, 1.0),
    ("cube", ["the cube"] * 10, 0.0, 1.0),
    ("yes", ["Yes"] * 10, 0.0, 1.0),
    ("2", ["two"] * 4 + ["three"] * 6, 0.0, 1.0),
    # the same on normalised references: 10 matches, and 3 of 10 (leave-one-out: 0.9)
    ("red", ["red"] * 10, 1.0, 1.0),
    ("Two.", ["2"] * 3 + ["3"] * 7, 0.9, 0.9),
]


@pytest.mark.parametrize(("prediction", "references", "official", "_lmms"), NORMALISATION_CASES)
def test_official_vqa_scores_of_the_cases_lmms_eval_scores_differently(
    prediction, references, official, _lmms
):
    assert vqa_soft_accuracy(prediction, references) == pytest.approx(official)


@needs_lmms
def test_lmms_eval_vqav2_scores_of_those_cases():
    from lmms_eval.tasks.vqav2.utils import vqav2_process_results

    for prediction, references, _official, lmms in NORMALISATION_CASES:
        doc = {
            "answers": [{"answer": a, "answer_id": j + 1} for j, a in enumerate(references)],
            "question_id": 1,
        }
        assert vqav2_process_results(doc, [prediction])["exact_match"] == pytest.approx(lmms), (
            prediction,
            references,
        )


@needs_lmms
@pytest.mark.slow  # ~40 s: a second interpreter imports lmms-eval, loads the task and the model
def test_lmms_eval_scores_the_local_task_as_unigame_eval(tiny_model_dir, task_dir, unigame_score, tmp_path):
    if not any(ep.name == "unigame_janus" for ep in entry_points(group="lmms_eval.models")):
        pytest.skip("unigame's lmms_eval.models entry point is not installed (pip install -e '.[lmms]')")
    command = [
        sys.executable,
        "-m",
        "lmms_eval",
        "--model",
        "unigame_janus",
        "--model_args",
        f"pretrained={tiny_model_dir},prompt=tiny",
        "--include_path",
        str(task_dir),
        "--tasks",
        "unigame_vqav2",
        "--batch_size",
        "16",
        "--device",
        "cpu",
        "--output_path",
        str(tmp_path / "out"),
    ]
    env = os.environ | {
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "HF_DATASETS_CACHE": str(tmp_path / "hf-datasets"),
    }
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    files = sorted((tmp_path / "out").rglob("*_results.json"))
    assert files, (result.stdout + result.stderr)[-4000:]
    score = json.loads(files[-1].read_text())["results"]["unigame_vqav2"]["exact_match,none"]
    assert 0.2 < unigame_score < 0.8
    assert score == pytest.approx(unigame_score, abs=1e-9)
