"""Public-benchmark suites on the fixture files: a tiny model runs through each, and a scripted
oracle pins that predictions reach the exact metrics aligned with their questions."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from unigame.data.loaders import DataFormatError
from unigame.eval.benchmarks import BENCHMARK_SUITES, NATURALBENCH_SUFFIX, run_benchmark, square_resize

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"


class Oracle:
    """Answers from a question -> answer table (prefix match, so suffixed prompts still resolve);
    records every prompt and pixel batch shape it was given."""

    image_size = 32
    device = torch.device("cpu")

    def __init__(self, table: dict[str, str], default: str = "no") -> None:
        self.table, self.default = table, default
        self.prompts: list[str] = []
        self.shapes: list[tuple[int, ...]] = []

    def answer(self, pixels, questions, max_new_tokens: int = 4):
        self.prompts += questions
        self.shapes.append(tuple(pixels.shape))
        return [
            next((a for q, a in self.table.items() if text.startswith(q)), self.default) for text in questions
        ]


@pytest.mark.parametrize("suite", BENCHMARK_SUITES)
def test_every_benchmark_runs_a_tiny_janus_on_its_fixture(tiny_adapter, suite):
    result = run_benchmark(suite, tiny_adapter, FIXTURES / suite, progress=False)
    assert not result.skipped
    for key, value in result.metrics.items():
        if key in ("accuracy", "g_acc", "mean_f1"):
            assert 0.0 <= value <= 1.0
    assert result.sizes["image_size"] == 32


def test_vqa_soft_accuracy_and_answer_types_with_an_oracle():
    oracle = Oracle(
        {"What color is the cube?": "red", "How many spheres are there?": "2", "Is there a cylinder?": "no"}
    )
    metrics = run_benchmark("vqav2", oracle, FIXTURES / "vqav2", progress=False).metrics
    gold = json.loads((FIXTURES / "vqav2/v2_mscoco_val2014_annotations.json").read_text())["annotations"]
    assert metrics["n"] == len(gold) == 3
    assert metrics["per_answer_type"]["other"] == 1.0  # "red": 8 of 10 annotators -> min(1, 8/3) = 1
    assert set(metrics["per_answer_type"]) == {"other", "number", "yes/no"}
    assert all(shape[1:] == (3, 32, 32) for shape in oracle.shapes)
    advqa = run_benchmark("advqa", Oracle({"How many plants": "three"}), FIXTURES / "advqa", progress=False)
    # "three" normalises to "3": 7 annotators said "3" -> full credit (official VQA normalisation)
    assert advqa.metrics["accuracy"] == 1.0


def test_pope_per_split_with_an_always_yes_model():
    metrics = run_benchmark(
        "pope", Oracle({}, default="Yes, there is."), FIXTURES / "pope", progress=False
    ).metrics
    for split in ("random", "popular", "adversarial"):
        assert metrics[split]["yes_ratio"] == 1.0
        assert metrics[split]["recall"] == 1.0
        assert metrics[split]["accuracy"] == pytest.approx(2 / 3)  # fixture: 2 yes + 1 no


def test_naturalbench_uses_the_reference_suffix_and_group_scores():
    # Each question gets one answer on both images, so it is right on exactly one image (answers flip):
    # group 0 (yes/no) 2 of 4 right; group 1 (A/B) 1 of 4 ("no" is not an option letter) -> 3 of 8.
    oracle = Oracle(
        {"Is the dog sleeping?": "Yes", "Is the dog running?": "No", "Which is shown? A. a lake": "A"}
    )
    metrics = run_benchmark("naturalbench", oracle, FIXTURES / "naturalbench", progress=False).metrics
    assert metrics["groups"] == 2 and metrics["g_acc"] == 0.0 and metrics["q_acc"] == 0.0
    assert metrics["acc"] == 3 / 8
    assert any(p.endswith(NATURALBENCH_SUFFIX["yes_no"]) for p in oracle.prompts)
    assert any(p.endswith(NATURALBENCH_SUFFIX["multiple_choice"]) for p in oracle.prompts)


def test_mmmu_prompt_lists_options_and_parses_letters():
    oracle = Oracle(
        {"<image 1> Which style": "(B) Cubism", "<image 1> <image 2> What is the area?": "The area is 12."}
    )
    metrics = run_benchmark("mmmu", oracle, FIXTURES / "mmmu", progress=False).metrics
    assert metrics["accuracy"] == 1.0 and metrics["per_subject"] == {"Art": 1.0, "Math": 1.0}
    assert metrics["multi_image_questions"] == 1
    assert "(A) Baroque\n(B) Cubism" in oracle.prompts[0]


def test_bad_rows_stop_the_run_unless_skip_bad(tiny_adapter, tmp_path):
    with pytest.raises(DataFormatError, match="validation_Art_2"):
        run_benchmark("mmmu", tiny_adapter, FIXTURES / "mmmu/mmmu_bad.jsonl", progress=False)
    result = run_benchmark(
        "mmmu", tiny_adapter, FIXTURES / "mmmu/mmmu_bad.jsonl", skip_bad=True, progress=False
    )
    assert result.metrics["n"] == 1 and len(next(iter(result.skipped.values()))) == 4
    # an undecodable image is found only when read: skipped by name, the rest still scored
    shutil.copytree(FIXTURES / "pope/images", tmp_path / "images")
    shutil.copy(FIXTURES / "images/corrupt.png", tmp_path / "images/COCO_val2014_000000000001.png")
    rows = (FIXTURES / "pope/coco_pope_random.json").read_text()
    rows += json.dumps(
        {"question_id": 9, "image": "COCO_val2014_000000000001.png", "text": "Is there a cat?", "label": "no"}
    )
    (tmp_path / "coco_pope_random.json").write_text(rows + "\n")
    with pytest.raises(DataFormatError, match="cannot decode"):
        run_benchmark("pope", tiny_adapter, tmp_path, progress=False)
    result = run_benchmark("pope", tiny_adapter, tmp_path, skip_bad=True, progress=False)
    assert (
        result.metrics["random"]["tp"]
        + result.metrics["random"]["fp"]
        + result.metrics["random"]["tn"]
        + result.metrics["random"]["fn"]
        == 3
    )
    assert "9" in result.skipped["images"][0]


def test_missing_files_say_what_was_expected(tiny_adapter, tmp_path):
    with pytest.raises(FileNotFoundError, match="coco_pope_random.json"):
        run_benchmark("pope", tiny_adapter, tmp_path, progress=False)
    with pytest.raises(FileNotFoundError, match="questions"):
        run_benchmark("vqav2", tiny_adapter, tmp_path, progress=False)
    with pytest.raises(ValueError, match="allowed: vqav2, advqa, pope, naturalbench, mmmu"):
        run_benchmark("gqa", tiny_adapter, tmp_path, progress=False)


def test_square_resize_pads_with_grey_and_keeps_the_aspect():
    import numpy as np

    image = np.zeros((10, 20, 3), dtype=np.uint8)
    out = square_resize(image, 20)
    assert out.shape == (20, 20, 3)
    assert (out[:5] == 127).all() and (out[15:] == 127).all() and (out[5:15] == 0).all()
