"""Distribution shifts keep ShapesWorld answers true and stay deterministic."""

from __future__ import annotations

import re

import numpy as np
import pytest

from unigame.data.shapes import (
    PALETTE,
    ShapesConfig,
    answer_question,
    judge,
    judge_matches,
    questions_for_scene,
    render,
    render_with_mask,
    sample_scene,
)
from unigame.data.shifts import CLUTTER_GREYS, PALE_COLOURS, SHIFT_NAMES, apply_shift

CFG = ShapesConfig()
PIXEL_AND_BACKGROUND = ("background", "noise", "blur", "brightness_contrast", "clutter")


def test_shift_names_and_unknown_name() -> None:
    assert SHIFT_NAMES == ("background", "noise", "blur", "brightness_contrast", "scale", "clutter")
    scene = sample_scene(np.random.default_rng(0), CFG)
    with pytest.raises(ValueError, match="unknown shift 'fog'; allowed: background, noise, blur"):
        apply_shift(scene, CFG, "fog", np.random.default_rng(0))
    with pytest.raises(ValueError, match="unknown shift"):
        render(scene, CFG, shift="fog")
    with pytest.raises(ValueError, match="strength"):
        apply_shift(scene, CFG, "noise", np.random.default_rng(0), strength=-1.0)


def test_shift_colours_stay_far_from_the_palette() -> None:
    pal = np.array(list(PALETTE.values()), dtype=float)
    for c in PALE_COLOURS:
        assert np.linalg.norm(pal - np.array(c), axis=-1).min() >= 150
    for g in CLUTTER_GREYS:
        assert np.linalg.norm(pal - np.array([g, g, g]), axis=-1).min() >= 110


@pytest.mark.parametrize("name", SHIFT_NAMES)
def test_shift_is_deterministic_and_changes_the_image(name: str) -> None:
    scene = sample_scene(np.random.default_rng(4), CFG)
    a = apply_shift(scene, CFG, name, np.random.default_rng(1))
    b = apply_shift(scene, CFG, name, np.random.default_rng(1))
    c = render(scene, CFG, shift=name, rng=np.random.default_rng(1))
    assert a.shape == (32, 32, 3) and a.dtype == np.uint8
    assert a.tobytes() == b.tobytes() == c.tobytes()
    changed = [
        apply_shift(scene, CFG, name, np.random.default_rng(s)).tobytes() != render(scene, CFG).tobytes()
        for s in range(5)
    ]
    assert any(changed)


@pytest.mark.parametrize("strength", [0.5, 1.0])
@pytest.mark.parametrize("name", PIXEL_AND_BACKGROUND)
def test_judge_reads_shifted_images_exactly(name: str, strength: float) -> None:
    """Shifts other than `scale` keep every object readable: shape, colour, size and position."""
    rng = np.random.default_rng(100 + SHIFT_NAMES.index(name))
    total = exact = 0
    for _ in range(80):
        scene = sample_scene(rng, CFG)
        report = judge_matches(judge(apply_shift(scene, CFG, name, rng, strength), CFG), scene, pos_tol=0.05)
        assert report.count_ok, name
        total += report.expected
        exact += report.exact
    assert exact / total >= 0.99


@pytest.mark.parametrize("name", SHIFT_NAMES)
def test_answers_stay_true_under_shift(name: str) -> None:
    """Every templated answer holds on the shifted image (judged); `scale` changes absolute sizes, so
    questions naming a size are skipped for it."""
    rng = np.random.default_rng(200 + SHIFT_NAMES.index(name))
    checked = 0
    for _ in range(40):
        scene = sample_scene(rng, CFG)
        objs = judge(apply_shift(scene, CFG, name, rng, 1.0), CFG)
        for q, a, _kind in questions_for_scene(scene, rng):
            if name == "scale" and re.search(r"\b(small|large)\b", q):
                continue
            assert answer_question(q, objs) == a, (name, q, a)
            checked += 1
    assert checked > 200


def test_scale_changes_sizes_but_keeps_objects_apart_and_inside() -> None:
    rng = np.random.default_rng(7)
    grown = shrunk = 0
    for _ in range(60):
        scene = sample_scene(rng, CFG)
        clean_area = (render_with_mask(scene, CFG)[1] >= 0).sum()
        img = apply_shift(scene, CFG, "scale", rng, 1.0)
        objs = judge(img, CFG)
        report = judge_matches(objs, scene, pos_tol=0.05)
        assert report.count_ok and report.matched == report.expected  # separate, whole, in place
        area = (np.abs(img.astype(int) - np.array(CFG.background)).sum(-1) > 0).sum()
        grown += area > clean_area
        shrunk += area < clean_area
    assert grown > 0 and shrunk > 0


def test_clutter_never_touches_objects_or_adds_palette_pixels() -> None:
    rng = np.random.default_rng(8)
    for _ in range(50):
        scene = sample_scene(rng, CFG)
        clean, index = render_with_mask(scene, CFG)
        img = apply_shift(scene, CFG, "clutter", rng, 1.0)
        assert (img[index >= 0] == clean[index >= 0]).all()
        changed = (img != clean).any(-1)
        greys = {tuple(p) for p in img[changed]}
        assert greys <= {(g, g, g) for g in CLUTTER_GREYS}
        assert len(judge(img, CFG)) == len(scene.objects)


@pytest.mark.parametrize("name", ["blur", "noise"])
def test_judge_tolerates_stronger_blur_and_noise(name: str) -> None:
    """Generated images are blurrier/noisier than renders: the judge still reads them at strength 1.5."""
    rng = np.random.default_rng(300)
    total = exact = 0
    for _ in range(80):
        scene = sample_scene(rng, CFG)
        report = judge_matches(judge(apply_shift(scene, CFG, name, rng, 1.5), CFG), scene, pos_tol=0.05)
        total += report.expected
        exact += report.exact
    assert exact / total >= 0.97
