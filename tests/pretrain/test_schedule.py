"""The shared hold-then-cosine learning-rate factor, pinned."""

import math

import pytest

from unigame.pretrain.schedule import cosine_decay


@pytest.mark.parametrize(
    "step, steps, start, expected",
    [
        (0, 100, 0, 1.0),
        (50, 100, 0, 0.5),
        (100, 100, 0, 0.0),
        (150, 100, 0, 0.0),
        (10, 100, 40, 1.0),
        (70, 100, 40, 0.5),
    ],
)
def test_known_points(step: int, steps: int, start: int, expected: float) -> None:
    assert math.isclose(cosine_decay(step, steps, start), expected, abs_tol=1e-12)


def test_matches_the_stages_earlier_inline_formula_exactly() -> None:
    for steps in (1, 7, 1500, 2200):
        for step in range(steps + 3):
            assert cosine_decay(step, steps) == 0.5 * (1 + math.cos(math.pi * min(step, steps) / steps))
