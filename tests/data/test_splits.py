"""ShapesWorld splits: determinism, stated balance, pairing, and answers true of the images."""

from __future__ import annotations

from collections import Counter, defaultdict

import numpy as np
import pytest

from unigame.data.records import VQARecord
from unigame.data.shapes import ANSWER_VOCAB, Scene, ShapesConfig, answer_question, judge
from unigame.data.shifts import SHIFT_NAMES
from unigame.data.splits import SPLIT_NAMES, build_split

CFG = ShapesConfig()


def _n_for(name: str) -> int:
    return 10 if name == "naturalbench" else 40


def test_split_names_and_unknown_split() -> None:
    assert set(SPLIT_NAMES) == {
        "train",
        "val",
        "test",
        "pope_random",
        "pope_popular",
        "pope_adversarial",
        "naturalbench",
        "adversarial",
    }
    with pytest.raises(ValueError, match="unknown split 'dev'; allowed: train, val, test, pope_random"):
        build_split("dev", 4, 0, CFG)
    with pytest.raises(ValueError, match="n=-1"):
        build_split("train", -1, 0, CFG)
    with pytest.raises(ValueError, match="even"):
        build_split("pope_random", 5, 0, CFG)
    assert build_split("train", 0, 0, CFG) == []


@pytest.mark.parametrize("name", SPLIT_NAMES)
def test_split_is_deterministic_and_well_formed(name: str) -> None:
    a = build_split(name, _n_for(name), 3, CFG)
    b = build_split(name, _n_for(name), 3, CFG)
    assert len(a) == (4 * _n_for(name) if name == "naturalbench" else _n_for(name))
    assert [(r.id, r.question, r.answer, r.caption) for r in a] == [
        (r.id, r.question, r.answer, r.caption) for r in b
    ]
    assert all(x.image.tobytes() == y.image.tobytes() for x, y in zip(a, b))
    assert len({r.id for r in a}) == len(a)
    for r in a:
        assert isinstance(r, VQARecord)
        assert r.image.shape == (32, 32, 3) and r.image.dtype == np.uint8
        assert r.answer in ANSWER_VOCAB and r.answers == [r.answer]
        assert r.id.startswith(name + "-")
        assert {"kind", "split", "scene"} <= set(r.meta) and r.meta["split"] == name
        assert r.caption.startswith("a ")
        Scene.from_dict(r.meta["scene"])
    other_seed = build_split(name, _n_for(name), 4, CFG)
    assert [r.question for r in other_seed] != [r.question for r in a] or any(
        x.image.tobytes() != y.image.tobytes() for x, y in zip(a, other_seed)
    )


@pytest.mark.parametrize("name", SPLIT_NAMES)
def test_split_answers_are_true_of_the_images(name: str) -> None:
    """Independent check: judge each record's image and answer its question from the judged objects."""
    for r in build_split(name, _n_for(name), 5, CFG):
        objs = judge(r.image, CFG)
        assert answer_question(r.question, objs) == r.answer, (
            r.id,
            r.question,
            r.answer,
            r.meta.get("shift"),
        )


def test_clean_splits_use_separate_streams() -> None:
    scenes = {}
    for name in ("train", "val", "test"):
        recs = build_split(name, 200, 0, CFG)
        scenes[name] = {str(r.meta["scene"]) for r in recs}
        kinds = Counter(r.meta["kind"] for r in recs)
        assert set(kinds) == {"count", "colour", "shape", "existence", "relation"}
    assert not scenes["train"] & scenes["val"] and not scenes["train"] & scenes["test"]
    assert not scenes["val"] & scenes["test"]
    # prefix-stable: a longer split starts with the shorter one
    short = build_split("train", 20, 0, CFG)
    assert [r.question for r in short] == [r.question for r in build_split("train", 200, 0, CFG)[:20]]


@pytest.mark.parametrize("name", ["pope_random", "pope_popular", "pope_adversarial"])
def test_pope_balance_and_negatives(name: str) -> None:
    recs = build_split(name, 120, 1, CFG)
    assert Counter(r.answer for r in recs) == {"yes": 60, "no": 60}
    by_image = defaultdict(list)
    for r in recs:
        assert r.question.startswith("Is there a ") and r.question.endswith(" in the image?")
        by_image[r.meta["image_index"]].append(r)
    freq = Counter(
        f"{o['colour']} {o['shape']}" for rs in by_image.values() for o in rs[0].meta["scene"]["objects"]
    )
    for rs in by_image.values():
        assert sorted(r.answer for r in rs) == ["no", "yes"]
        assert rs[0].image.tobytes() == rs[1].image.tobytes()
        present = {f"{o['colour']} {o['shape']}" for o in rs[0].meta["scene"]["objects"]}
        neg = next(r.meta["object"] for r in rs if r.answer == "no")
        pos = next(r.meta["object"] for r in rs if r.answer == "yes")
        assert pos in present and neg not in present
        if name == "pope_popular":
            absent = [f"{c} {s}" for c in CFG.colours for s in CFG.shapes if f"{c} {s}" not in present]
            assert freq[neg] == max(freq[x] for x in absent)
        if name == "pope_adversarial":
            nc, ns = neg.split()
            assert any(p.split()[0] == nc or p.split()[1] == ns for p in present)


def test_naturalbench_groups_flip_answers() -> None:
    recs = build_split("naturalbench", 30, 2, CFG)
    groups = defaultdict(list)
    for r in recs:
        groups[r.meta["group"]].append(r)
    assert sorted(groups) == list(range(30))
    shifts = Counter()
    designs = Counter()
    for rs in groups.values():
        assert len(rs) == 4
        table = {(r.meta["image_index"], r.meta["question_index"]): r for r in rs}
        assert set(table) == {(0, 0), (0, 1), (1, 0), (1, 1)}
        for q in (0, 1):
            assert table[(0, q)].question == table[(1, q)].question
            assert table[(0, q)].answer != table[(1, q)].answer  # each question flips across images
            assert table[(0, q)].answer in ("yes", "no")
        assert table[(0, 0)].question != table[(0, 1)].question
        assert table[(0, 0)].image.tobytes() != table[(1, 0)].image.tobytes()
        assert table[(0, 0)].image.tobytes() == table[(0, 1)].image.tobytes()
        assert len({r.meta["shift"] for r in rs}) == 1 and rs[0].meta["shift"] in SHIFT_NAMES
        shifts[rs[0].meta["shift"]] += 1
        designs[rs[0].meta["kind"]] += 1
    assert len(shifts) >= 4 and set(designs) == {"existence", "relation"}
    assert Counter(r.answer for r in recs) == {"yes": 60, "no": 60}


def test_adversarial_distractors_differ_in_one_attribute() -> None:
    recs = build_split("adversarial", 80, 3, CFG)
    attrs = Counter()
    for r in recs:
        objs = r.meta["scene"]["objects"]
        target = r.meta["target"].split()
        distractor = r.meta["distractor"].split()
        diffs = [i for i in range(3) if target[i] != distractor[i]]
        assert len(diffs) == 1
        assert r.meta["distractor_attr"] == ("colour" if diffs == [1] else "shape")
        described = {f"{o['size']} {o['colour']} {o['shape']}" for o in objs}
        assert r.meta["target"] in described and r.meta["distractor"] in described
        attrs[r.meta["distractor_attr"]] += 1
    assert set(attrs) == {"colour", "shape"}
    assert len({r.meta["kind"] for r in recs}) >= 3


def test_64px_config_is_respected() -> None:
    cfg = ShapesConfig(image_size=64, max_objects=3)
    recs = build_split("test", 30, 0, cfg)
    assert all(r.image.shape == (64, 64, 3) for r in recs)
    assert all(len(r.meta["scene"]["objects"]) <= 3 for r in recs)
    for r in recs:
        assert answer_question(r.question, judge(r.image, cfg)) == r.answer


def test_a_large_train_split_has_every_record_with_its_image() -> None:
    """1000 records, each with its rendered image (no wall-clock bound: it failed on busy machines)."""
    recs = build_split("train", 1000, 0, CFG)
    assert len(recs) == 1000 and len({r.id for r in recs}) == 1000
    assert all(r.image is not None and r.image.shape == (32, 32, 3) for r in recs)
