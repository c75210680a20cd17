"""The generalist base's tasks: caption matching and asking a question."""

import re

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from unigame.data.generalist import (
    ASK_QUESTION,
    ask_item,
    match_item,
    match_question,
    parse_match_question,
)
from unigame.data.shapes import (
    ShapeObject,
    ShapesConfig,
    answer_question,
    caption,
    judge,
    render,
    sample_scene,
)


def test_match_question_round_trips_and_is_no_vqa_template():
    question = match_question("a large red circle")
    assert question == "Does this image show a large red circle?"
    assert parse_match_question(question) == "a large red circle"
    assert parse_match_question("Is there a red circle?") is None
    # Neither prompt is a VQA template, so neither can leak into the target task's answers.
    objects = [ShapeObject("circle", "red", "large", 0.5, 0.5)]
    assert answer_question(question, objects) is None
    assert answer_question(ASK_QUESTION, objects) is None


def _described(text: str) -> list[tuple[str, str, str]]:
    """The (size, colour, shape) of every object a caption names, sorted."""
    return sorted(re.findall(r"\ban? (small|large) (\w+) (circle|square|triangle)", text))


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**31 - 1))
def test_match_answer_is_what_the_rendered_scene_shows(seed):
    """'yes' exactly when the objects the caption names are the objects the judge reads off the image."""
    config = ShapesConfig()
    rng = np.random.default_rng(seed)
    scene = sample_scene(rng, config)
    question, answer = match_item(scene, rng, config)
    asked = parse_match_question(question)
    seen = sorted((o.size, o.colour, o.shape) for o in judge(render(scene, config), config))
    assert answer in ("yes", "no")
    assert (answer == "yes") == (_described(asked) == seen)
    if answer == "yes":
        assert asked == caption(scene)


def test_match_items_are_balanced():
    config, rng = ShapesConfig(), np.random.default_rng(0)
    answers = [match_item(sample_scene(rng, config), rng, config)[1] for _ in range(400)]
    assert 0.42 < answers.count("yes") / len(answers) < 0.58


@pytest.mark.parametrize("seed", range(20))
def test_asked_questions_are_answerable_templates(seed):
    config = ShapesConfig()
    rng = np.random.default_rng(seed)
    scene = sample_scene(rng, config)
    prompt, question = ask_item(scene, rng, config)
    assert prompt == ASK_QUESTION
    assert answer_question(question, scene.objects) is not None
