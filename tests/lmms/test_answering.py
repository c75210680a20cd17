"""The `unigame_janus` request handling, driven by stand-ins of lmms-eval's requests (no lmms-eval).

lmms-eval gives a model `Instance`s whose `args` are
`(context, generation_kwargs, doc_to_visual, doc_id, task, split)` and a `task_dict`
`{task: {split: docs}}`; the stand-ins below have exactly those fields.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
from PIL import Image

from unigame.data.pixels import images_to_pixels
from unigame.eval.metrics import vqa_accuracy
from unigame.lmms.answering import answer_requests, load_janus, to_rgb


@dataclass
class Request:
    """Stand-in of lmms-eval's `Instance` (only `args` is read)."""

    args: tuple


def _visual(doc: dict[str, Any]) -> list[Image.Image]:
    return [doc["image"].convert("RGB")]  # what lmms-eval's vqav2_doc_to_visual returns


def _docs(task_dir) -> list[dict[str, Any]]:
    import datasets

    return list(
        datasets.load_dataset("parquet", data_files=str(task_dir / "unigame_vqav2.parquet"), split="train")
    )


def test_answers_and_score_equal_unigame_eval_on_the_same_files(tiny_model_dir, task_dir, unigame_score):
    adapter, prompt = load_janus(str(tiny_model_dir), prompt="tiny", device="cpu")
    docs = _docs(task_dir)
    gen = {"max_new_tokens": 16, "until": ["\n\n"], "temperature": 0}
    requests = [
        Request((doc["question"], gen, _visual, i, "unigame_vqav2", "validation"))
        for i, doc in enumerate(docs)
    ]
    answers = answer_requests(adapter, requests, {"unigame_vqav2": {"validation": docs}}, batch_size=16)
    score = vqa_accuracy(answers, [[a["answer"] for a in doc["answers"]] for doc in docs])
    assert 0.2 < score < 0.8  # the fixture makes the score neither 0 nor 1
    assert score == pytest.approx(unigame_score, abs=1e-12)


def test_stop_strings_image_markers_and_order(adapter):
    image = Image.fromarray(np.full((32, 32, 3), 200, dtype=np.uint8))
    task_dict = {"t": {"s": [{"image": image}]}}
    question = "Is there a red circle?"
    short, long = {"max_new_tokens": 3}, {"max_new_tokens": 16}
    requests = [
        Request((question, short, _visual, 0, "t", "s")),
        Request((question, long, _visual, 0, "t", "s")),  # another group, answered after the first
        Request(("<image>\n" + question, short, _visual, 0, "t", "s")),
    ]
    answers = answer_requests(adapter, requests, task_dict, batch_size=1)
    assert answers[0] == answers[2]  # the "<image>" marker is dropped: the adapter places the image
    assert answers[1] == answer_requests(adapter, requests[1:2], task_dict)[0]  # request order kept
    assert (
        answers[0] == adapter.answer(images_to_pixels([np.asarray(image)]), [question], max_new_tokens=3)[0]
    )
    assert len(answers[1]) >= 3
    stop = answers[1][1:3]
    stopped = answer_requests(
        adapter, [Request((question, long | {"until": [stop]}, _visual, 0, "t", "s"))], task_dict
    )
    assert stopped == [answers[1].split(stop, 1)[0]]


def test_one_image_per_question(adapter):
    image = Image.fromarray(np.zeros((20, 30, 3), dtype=np.uint8))
    docs = [{"image": image}]
    two = Request(("Is there a red circle?", {}, lambda doc: [doc["image"], doc["image"]], 0, "multi", "s"))
    with pytest.warns(UserWarning, match="answered from the first image only"):
        answer_requests(adapter, [two], {"multi": {"s": docs}})
    none = Request(("What is 2 + 2?", {}, lambda doc: [], 0, "text_only", "s"))
    with pytest.raises(ValueError, match="task 'text_only', doc 0: no image"):
        answer_requests(adapter, [none], {"text_only": {"s": docs}})


def test_visuals_convert_as_unigame_loads_files():
    rgba = Image.fromarray(np.dstack([np.full((4, 4, 3), 10, np.uint8), np.zeros((4, 4), np.uint8)]), "RGBA")
    assert (to_rgb(rgba) == 255).all()  # transparent pixels composited on white, as the loader does
    grey = Image.fromarray(np.full((4, 4), 7, np.uint8), "L")
    assert to_rgb(grey).shape == (4, 4, 3) and (to_rgb(grey) == 7).all()
    with pytest.raises(TypeError, match="expected a PIL image"):
        to_rgb(np.zeros((4, 4, 3), np.uint8))


def test_bad_model_args_are_named(tiny_model_dir, tmp_path):
    with pytest.raises(FileNotFoundError, match="pretrained='.*missing' is not a model directory"):
        load_janus(str(tmp_path / "missing"))
    with pytest.raises(
        ValueError, match="prompt='chatml' is not a prompt layout; allowed: auto, tiny, janus_pro"
    ):
        load_janus(str(tiny_model_dir), prompt="chatml")
    with pytest.raises(ValueError, match="dtype='int8' is not supported"):
        load_janus(str(tiny_model_dir), dtype="int8")
    with pytest.raises(FileNotFoundError, match="adapter_config.json"):
        load_janus(str(tiny_model_dir), lora=str(tmp_path), device="cpu")


def test_bfloat16_weights_answer(tiny_model_dir):
    import torch

    adapter, _ = load_janus(str(tiny_model_dir), prompt="tiny", device="cpu", dtype="bfloat16")
    assert next(adapter.model.parameters()).dtype == torch.bfloat16
    image = Image.new("RGB", (32, 32), (255, 0, 0))
    request = Request(("Is there a red circle?", {"max_new_tokens": 4}, _visual, 0, "t", "s"))
    (answer,) = answer_requests(adapter, [request], {"t": {"s": [{"image": image}]}})
    assert isinstance(answer, str)  # pixels follow the weights' dtype, so bf16 runs without autocast
