"""ShapesWorld splits exported to the public formats read back through the benchmark loaders."""

import numpy as np

from unigame.data.formats import to_hf_dataset, write_naturalbench, write_pope, write_vqav2
from unigame.data.loaders import load_image, load_naturalbench, load_pope, load_vqav2
from unigame.data.splits import build_split
from unigame.eval.metrics import vqa_accuracy


def test_vqav2_export_round_trip(tmp_path):
    records = build_split("test", 12, seed=3)
    files = write_vqav2(records, tmp_path / "vqav2")
    loaded = load_vqav2(files.questions_json, files.annotations_json, files.images_dir)
    assert [r.question for r in loaded] == [r.question for r in records]
    assert [r.answer for r in loaded] == [r.answer for r in records]
    # one true answer = ten agreeing annotators, so the right answer scores 1 under VQA accuracy
    assert all(r.answers == [r.answer] * 10 for r in loaded)
    assert vqa_accuracy([r.answer for r in records], [r.answers for r in loaded]) == 1.0
    for original, back in zip(records, loaded):
        np.testing.assert_array_equal(load_image(back), original.image)


def test_pope_export_round_trip(tmp_path):
    records = build_split("pope_adversarial", 10, seed=3)
    path = write_pope(records, tmp_path / "coco_pope_adversarial.json")
    loaded = load_pope(path, tmp_path / "images")
    assert [r.answer for r in loaded] == [r.answer for r in records]
    assert sum(r.answer == "yes" for r in loaded) == 5


def test_naturalbench_export_keeps_groups(tmp_path):
    records = build_split("naturalbench", 3, seed=3)
    path = write_naturalbench(records, tmp_path / "nb")
    loaded = load_naturalbench(path)
    assert len(loaded) == 12
    assert sorted({r.meta["group"] for r in loaded}) == sorted({r.meta["group"] for r in records})


def test_hf_dataset_export():
    records = build_split("train", 6, seed=3)
    dataset = to_hf_dataset(records)
    assert len(dataset) == 6
    assert {"image", "question", "answer", "caption", "id", "meta"} <= set(dataset.column_names)
    np.testing.assert_array_equal(np.asarray(dataset[0]["image"].convert("RGB")), records[0].image)
