"""The ShapesWorld suite end to end on a tiny random Janus, and the GenEval-analogue rule on exact renders."""

from __future__ import annotations

from dataclasses import replace

import pytest

from unigame.data.shapes import Scene, ShapeObject, ShapesConfig, caption, judge, render
from unigame.eval.metrics import GENEVAL_TASKS
from unigame.eval.shapes_suite import (
    QUICK_SIZES,
    ShapesSizes,
    _caption_relation,
    geneval_correct,
    run_shapes_suite,
    shapes_geneval_prompts,
)

CONFIG = ShapesConfig()


@pytest.fixture(scope="module")
def quick_result(tiny_adapter, tiny_scorer):
    return run_shapes_suite(tiny_adapter, tiny_scorer, CONFIG, QUICK_SIZES, seed=0, progress=False)


def test_every_metric_is_present_and_in_range(quick_result):
    m = quick_result.metrics
    fractions = [
        m["clean_vqa"]["accuracy"],
        m["naturalbench"]["g_acc"],
        m["naturalbench"]["accuracy"],
        m["adversarial_split"]["accuracy"],
        m["pgd"]["clean_accuracy"],
        m["geneval"]["overall"],
        m["geneval"]["strict"]["overall"],
        m["nonunified"]["score"],
        m["nonunified"]["understanding_accuracy"],
        m["nonunified"]["generation_accuracy"],
        m["pope"]["mean_f1"],
        *(m["naturalbench"]["per_shift_g_acc"].values()),
    ]
    for split in ("random", "popular", "adversarial"):
        fractions += [m["pope"][split][k] for k in ("accuracy", "precision", "recall", "f1", "yes_ratio")]
    for key in ("eps_4", "eps_8"):
        fractions.append(m["pgd"][key]["accuracy"])
        assert m["pgd"][key]["max_linf"] <= m["pgd"][key]["eps"] + 1e-6
        assert m["pgd"][key]["loss_adv"] >= m["pgd"][key]["loss_clean"] - 1e-6
    fractions += [m["geneval"][t] for t in GENEVAL_TASKS]
    assert all(0.0 <= f <= 1.0 for f in fractions)
    for key in ("score", "score_shuffled", "clip_cosine", "vision_cosine", "clip_cosine_shuffled"):
        assert -1.0 <= m["unifiedbench"][key] <= 1.0
    assert m["consistency"]["score"] == pytest.approx(
        0.6 * m["unifiedbench"]["score"] + 0.4 * m["geneval"]["strict"]["overall"]
    )
    assert m["clean_vqa"]["n"] == QUICK_SIZES.clean and m["pgd"]["n"] == QUICK_SIZES.pgd
    assert m["geneval"]["n_per_task"] == QUICK_SIZES.generation
    assert m["nonunified"]["n"] == QUICK_SIZES.generation * len(GENEVAL_TASKS)
    assert set(quick_result.panels) == {"generation", "unifiedbench"}
    assert quick_result.timings_s["total"] > 0


def test_suite_is_deterministic(tiny_adapter, tiny_scorer, quick_result):
    sizes = replace(QUICK_SIZES, pgd=4, generation=1, unifiedbench=2)
    a = run_shapes_suite(tiny_adapter, tiny_scorer, CONFIG, sizes, seed=3, progress=False).metrics
    b = run_shapes_suite(tiny_adapter, tiny_scorer, CONFIG, sizes, seed=3, progress=False).metrics
    assert a == b


def test_prompts_cover_every_task_and_are_deterministic():
    prompts = shapes_geneval_prompts(CONFIG, 3, seed=0)
    assert [p["tag"] for p in prompts] == [t for t in GENEVAL_TASKS for _ in range(3)]
    assert prompts == shapes_geneval_prompts(CONFIG, 3, seed=0)
    assert prompts != shapes_geneval_prompts(CONFIG, 3, seed=1)
    one_shape = ShapesConfig(shapes=("circle",))
    assert {p["tag"] for p in shapes_geneval_prompts(one_shape, 1, 0)} == {
        "single_object",
        "colors",
        "counting",
    }


def test_exact_renders_of_every_prompt_are_judged_correct():
    """A perfect generator (the renderer itself) scores 1.0 on every task, under both rules."""
    for prompt in shapes_geneval_prompts(CONFIG, 8, seed=5):
        scene = Scene.from_dict(prompt["scene"])
        objects = judge(render(scene, CONFIG), CONFIG)
        assert geneval_correct(objects, prompt["include"], prompt["exclude"]), prompt
        assert len(objects) == len(scene.objects)


def test_position_relation_is_the_one_the_caption_states():
    for prompt in shapes_geneval_prompts(CONFIG, 20, seed=1):
        if prompt["tag"] == "position":
            scene = Scene.from_dict(prompt["scene"])
            a, relation, b = _caption_relation(scene)
            phrase = "to the left of" if relation == "left of" else relation
            assert f"{a.describe()} {phrase} a {b.describe()}" in caption(scene)


def _obj(shape: str, colour: str, x: float, y: float = 0.5) -> ShapeObject:
    return ShapeObject(shape, colour, "small", x, y)


@pytest.mark.parametrize(
    "objects, include, exclude, expected",
    [
        # counting: exactly N of the class (GenEval: include count N, exclude count N + 1)
        (
            [_obj("circle", "red", 0.2)] * 3,
            [{"class": "circle", "count": 3}],
            [{"class": "circle", "count": 4}],
            True,
        ),
        (
            [_obj("circle", "red", 0.2)] * 4,
            [{"class": "circle", "count": 3}],
            [{"class": "circle", "count": 4}],
            False,
        ),
        ([_obj("circle", "red", 0.2)] * 2, [{"class": "circle", "count": 3}], [], False),
        # colours: the class must have the colour; another class of that colour does not count
        ([_obj("square", "red", 0.5)], [{"class": "square", "count": 1, "color": "red"}], [], True),
        (
            [_obj("square", "blue", 0.5), _obj("circle", "red", 0.2)],
            [{"class": "square", "count": 1, "color": "red"}],
            [],
            False,
        ),
        # position: "a circle left of a square" = include [square, circle left of #0]
        (
            [_obj("circle", "red", 0.2), _obj("square", "blue", 0.8)],
            [{"class": "square", "count": 1}, {"class": "circle", "count": 1, "position": ["left of", 0]}],
            [],
            True,
        ),
        (
            [_obj("circle", "red", 0.8), _obj("square", "blue", 0.2)],
            [{"class": "square", "count": 1}, {"class": "circle", "count": 1, "position": ["left of", 0]}],
            [],
            False,
        ),
        # too close to call (centres 0.05 apart < REL_MARGIN / 2)
        (
            [_obj("circle", "red", 0.45), _obj("square", "blue", 0.5, 0.1)],
            [{"class": "square", "count": 1}, {"class": "circle", "count": 1, "position": ["left of", 0]}],
            [],
            False,
        ),
        # the GenEval rule ignores extra objects
        (
            [_obj("triangle", "green", 0.2), _obj("circle", "red", 0.8)],
            [{"class": "triangle", "count": 1}],
            [],
            True,
        ),
    ],
)
def test_geneval_rule_known_cases(objects, include, exclude, expected):
    assert geneval_correct(objects, include, exclude) is expected


def test_invalid_sizes_name_the_field():
    with pytest.raises(ValueError, match="pope=3"):
        ShapesSizes(pope=3)
    with pytest.raises(ValueError, match="clean=0"):
        ShapesSizes(clean=0)
