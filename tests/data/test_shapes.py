"""ShapesWorld scenes, renderer, questions, captions and judge."""

from __future__ import annotations

import json
import re
from collections import Counter, deque

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from unigame.data.shapes import (
    ANSWER_VOCAB,
    PALETTE,
    QUESTION_KINDS,
    REL_MARGIN,
    Scene,
    ShapeObject,
    ShapesConfig,
    _label_components,
    answer_question,
    caption,
    corpus_texts,
    judge,
    judge_matches,
    judge_scene,
    label_holds,
    questions_for_scene,
    render,
    render_with_mask,
    sample_scene,
    sample_vqa,
    shape_mask,
    size_px,
)

CFG = ShapesConfig()
CFG64 = ShapesConfig(image_size=64)


# ----------------------------------------------------------------------------------------------- config
def test_default_config_is_valid_and_lists_become_tuples() -> None:
    cfg = ShapesConfig(colours=["red", "blue"], shapes=["circle"], background=[255, 255, 255])
    assert cfg.colours == ("red", "blue") and cfg.shapes == ("circle",) and cfg.background == (255, 255, 255)
    assert CFG.image_size == 32 and (CFG.min_objects, CFG.max_objects) == (1, 4)
    assert len(CFG.colours) == 6 and CFG.shapes == ("circle", "square", "triangle")


@pytest.mark.parametrize(
    ("kwargs", "pattern"),
    [
        ({"max_objects": 0}, r"ShapesConfig\.max_objects=0 is invalid: allowed 1\.\.4"),
        ({"min_objects": 5}, r"ShapesConfig\.min_objects=5 is invalid: allowed 1\.\.4"),
        ({"min_objects": 3, "max_objects": 2}, r"ShapesConfig\.min_objects=3 .*max_objects=2"),
        ({"image_size": 48}, r"ShapesConfig\.image_size=48 is invalid: allowed 32 or 64"),
        (
            {"colours": ("red", "pink")},
            r"ShapesConfig\.colours contains unknown colour 'pink'; allowed: red, green",
        ),
        (
            {"shapes": ("circle", "star")},
            r"ShapesConfig\.shapes contains unknown shape 'star'; allowed: circle",
        ),
        ({"sizes": ("tiny",)}, r"ShapesConfig\.sizes contains unknown size 'tiny'; allowed: small, large"),
        ({"colours": ()}, r"ShapesConfig\.colours=\(\) is invalid"),
        ({"background": (300, 0, 0)}, r"ShapesConfig\.background=\(300, 0, 0\) is invalid"),
        ({"background": (225, 40, 40)}, r"ShapesConfig\.background=.*too|ShapesConfig\.background=.*'red'"),
    ],
)
def test_config_validation_names_field_value_and_allowed(kwargs: dict, pattern: str) -> None:
    with pytest.raises(ValueError, match=pattern):
        ShapesConfig(**kwargs)


def test_config_validation_reports_all_errors_together() -> None:
    with pytest.raises(ValueError) as err:
        ShapesConfig(image_size=16, max_objects=9, colours=("pink",))
    msg = str(err.value)
    assert "image_size=16" in msg and "max_objects=9" in msg and "'pink'" in msg


def test_palette_is_well_separated_and_object_sizes_scale() -> None:
    cols = np.array(list(PALETTE.values()), dtype=float)
    d = np.linalg.norm(cols[:, None] - cols[None], axis=-1)
    assert d[~np.eye(len(cols), dtype=bool)].min() >= 130
    assert np.linalg.norm(cols - np.array(CFG.background), axis=-1).min() >= 150
    assert (size_px("small", 32), size_px("large", 32)) == (7, 10)
    assert (size_px("small", 64), size_px("large", 64)) == (14, 20)


# ----------------------------------------------------------------------------------------------- scenes
def test_scene_dict_round_trip_is_json_able() -> None:
    scene = sample_scene(np.random.default_rng(0), CFG)
    d = json.loads(json.dumps(scene.to_dict()))
    assert Scene.from_dict(d) == scene


def test_sample_scene_counts_bounds_and_no_overlap() -> None:
    rng = np.random.default_rng(1)
    counts = Counter()
    for _ in range(300):
        scene = sample_scene(rng, CFG)
        counts[len(scene.objects)] += 1
        _img, index = render_with_mask(scene, CFG)
        for i, o in enumerate(scene.objects):
            s = size_px(o.size, 32)
            # no object was painted over and none was clipped at the border
            assert (index == i).sum() == shape_mask(o.shape, s, s).sum()
            assert 0 < o.x < 1 and 0 < o.y < 1
        # objects never touch: dilating one object's mask by 1 px never reaches another object
        for i in range(len(scene.objects)):
            m = index == i
            grown = m.copy()
            grown[1:] |= m[:-1]
            grown[:-1] |= m[1:]
            grown[:, 1:] |= m[:, :-1]
            grown[:, :-1] |= m[:, 1:]
            assert not (grown & (index >= 0) & ~m).any()
    assert set(counts) == {1, 2, 3, 4}


def test_sample_scene_constraints() -> None:
    rng = np.random.default_rng(2)
    for _ in range(50):
        scene = sample_scene(
            rng,
            CFG,
            n_objects=3,
            required=[("circle", "red", "large")],
            allow=lambda s, c, z: c != "red" and s != "circle",
        )
        assert len(scene.objects) == 3
        assert scene.objects[0].shape == "circle" and scene.objects[0].colour == "red"
        assert all(o.colour != "red" and o.shape != "circle" for o in scene.objects[1:])
    with pytest.raises(ValueError, match="allow"):
        sample_scene(rng, CFG, n_objects=2, allow=lambda s, c, z: False)


def test_four_large_objects_fit_at_32px() -> None:
    cfg = ShapesConfig(min_objects=4, max_objects=4, sizes=("large",))
    scene = sample_scene(np.random.default_rng(3), cfg)
    assert len(scene.objects) == 4


# --------------------------------------------------------------------------------------------- renderer
def test_render_is_deterministic_and_flat() -> None:
    a = render(sample_scene(np.random.default_rng(7), CFG), CFG)
    b = render(sample_scene(np.random.default_rng(7), CFG), CFG)
    assert a.shape == (32, 32, 3) and a.dtype == np.uint8
    assert a.tobytes() == b.tobytes()
    allowed = {tuple(c) for c in PALETTE.values()} | {CFG.background}
    assert {tuple(p) for p in a.reshape(-1, 3)} <= allowed  # no antialiasing: only exact colours


def test_render_triangle_is_upright() -> None:
    m = shape_mask("triangle", 10, 10)
    widths = m.sum(axis=1)
    assert widths[0] >= 1 and widths[-1] == 10 and (np.diff(widths) >= 0).all()


# ------------------------------------------------------------------------------------------------ judge
def _bfs_components(cls: np.ndarray) -> int:
    """Reference 4-connected component count (plain BFS) for the vectorised labeller."""
    seen = np.zeros(cls.shape, dtype=bool)
    n = 0
    for y, x in zip(*np.nonzero(cls >= 0)):
        if seen[y, x]:
            continue
        n += 1
        seen[y, x] = True
        queue = deque([(y, x)])
        while queue:
            cy, cx = queue.popleft()
            for ny, nx in ((cy + 1, cx), (cy - 1, cx), (cy, cx + 1), (cy, cx - 1)):
                if (
                    0 <= ny < cls.shape[0]
                    and 0 <= nx < cls.shape[1]
                    and not seen[ny, nx]
                    and cls[ny, nx] == cls[cy, cx]
                ):
                    seen[ny, nx] = True
                    queue.append((ny, nx))
    return n


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 2**31 - 1))
def test_label_components_matches_bfs(seed: int) -> None:
    rng = np.random.default_rng(seed)
    cls = rng.integers(-1, 3, size=(12, 15))
    lab = _label_components(cls)
    assert ((lab >= 0) == (cls >= 0)).all()
    assert len(np.unique(lab[lab >= 0])) == _bfs_components(cls)


@pytest.mark.parametrize(("cfg", "n"), [(CFG, 500), (CFG64, 150)])
def test_judge_round_trip_recovers_objects(cfg: ShapesConfig, n: int) -> None:
    rng = np.random.default_rng(11)
    total = exact = 0
    for _ in range(n):
        scene = sample_scene(rng, cfg)
        report = judge_scene(render(scene, cfg), scene, cfg, pos_tol=0.05)
        total += report.expected
        exact += report.exact
        assert report.count_ok
    assert exact / total >= 0.99


def test_judge_drops_noise_specks_and_background() -> None:
    scene = Scene((ShapeObject("square", "red", "large", 0.3, 0.3),), CFG.background)
    img = render(scene, CFG)
    img[28, 28] = PALETTE["blue"]  # a single-pixel speck is noise, not an object
    img[2, 25:31] = (40, 40, 40)  # dark clutter line is not a palette colour
    objs = judge(img, CFG)
    assert [(o.shape, o.colour, o.size) for o in objs] == [("square", "red", "large")]
    assert abs(objs[0].x - 0.3) < 0.05 and abs(objs[0].y - 0.3) < 0.05
    assert judge(np.full((32, 32, 3), 235, np.uint8), CFG) == []


def test_judge_matches_reports_errors() -> None:
    scene = Scene(
        (ShapeObject("circle", "red", "small", 0.25, 0.25), ShapeObject("square", "blue", "large", 0.7, 0.7))
    )
    perfect = judge_matches(list(scene.objects), scene)
    assert perfect.all_correct and perfect.matched == 2 and perfect.colour_counts_ok
    wrong_colour = [ShapeObject("circle", "green", "small", 0.25, 0.25), scene.objects[1]]
    r = judge_matches(wrong_colour, scene)
    assert r.matched == 1 and not r.colour_counts_ok and r.shape_counts_ok and not r.all_correct
    moved = [ShapeObject("circle", "red", "small", 0.75, 0.25), scene.objects[1]]
    assert judge_matches(moved, scene).matched == 1
    assert judge_matches(moved, scene, check_position=False).matched == 2
    wrong_size = [ShapeObject("circle", "red", "large", 0.25, 0.25), scene.objects[1]]
    r = judge_matches(wrong_size, scene)
    assert r.matched == 2 and r.exact == 1
    extra = judge_matches([*scene.objects, ShapeObject("triangle", "cyan", "small", 0.5, 0.1)], scene)
    assert not extra.count_ok and extra.matched == 2


# -------------------------------------------------------------------------------------------- questions
def test_answer_question_pinned_cases() -> None:
    objs = [
        ShapeObject("circle", "red", "small", 0.2, 0.2),
        ShapeObject("circle", "blue", "large", 0.8, 0.25),
        ShapeObject("square", "red", "large", 0.3, 0.8),
    ]
    cases = {
        "How many objects are there?": "3",
        "How many red objects are there?": "2",
        "How many green objects are there?": "0",
        "How many circles are there?": "2",
        "How many red circles are there?": "1",
        "What colour is the square?": "red",
        "What colour is the circle?": None,  # ambiguous referent
        "What colour is the large circle?": "blue",
        "What shape is the blue object?": "circle",
        "What shape is the large red object?": "square",
        "Is there a blue circle?": "yes",
        "Is there a blue square in the image?": "no",
        "Is the red circle left of the blue circle?": "yes",
        "Is the red circle right of the blue circle?": "no",
        "Is the blue circle above the red square?": "yes",
        "Is the red circle above the blue circle?": None,  # 0.05 apart in y: too close to call
        "Is there a pink circle?": None,
        "Tell me a story.": None,
    }
    for q, a in cases.items():
        assert answer_question(q, objs) == a, q


def _check_all_true(scene: Scene, qas: list[tuple[str, str, str]], cfg: ShapesConfig) -> None:
    """Re-judge the rendered image and answer each question from the judged objects."""
    objs = judge(render(scene, cfg), cfg)
    for q, a, kind in qas:
        assert kind in QUESTION_KINDS
        assert a in ANSWER_VOCAB, (q, a)
        assert answer_question(q, objs) == a, (q, a, scene)


@settings(max_examples=150, deadline=None)
@given(st.integers(0, 2**63 - 1))
def test_every_generated_question_is_true_of_its_scene(seed: int) -> None:
    rng = np.random.default_rng(seed)
    scene = sample_scene(rng, CFG)
    qas = questions_for_scene(scene, rng)
    assert any(k == "count" for _q, _a, k in qas) and any(k == "existence" for _q, _a, k in qas)
    _check_all_true(scene, qas, CFG)
    scene2, q, a, kind = sample_vqa(rng, CFG)
    _check_all_true(scene2, [(q, a, kind)], CFG)


@settings(max_examples=30, deadline=None)
@given(st.integers(0, 2**63 - 1))
def test_questions_true_at_64px_and_restricted_config(seed: int) -> None:
    cfg = ShapesConfig(image_size=64, colours=("red", "blue", "yellow"), shapes=("circle", "square"))
    rng = np.random.default_rng(seed)
    scene = sample_scene(rng, cfg)
    qas = questions_for_scene(scene, rng, config=cfg)
    _check_all_true(scene, qas, cfg)
    words = set(" ".join(q for q, _a, _k in qas).lower().replace("?", "").split())
    assert not words & {"green", "purple", "cyan", "triangle", "triangles"}


def test_relations_only_for_unique_referents_and_clear_margins() -> None:
    rng = np.random.default_rng(5)
    seen = 0
    for _ in range(200):
        scene = sample_scene(rng, CFG)
        for q, _a, _k in questions_for_scene(scene, rng, kinds=["relation"]):
            m = re.fullmatch(r"Is the (\w+) (\w+) (left of|right of|above|below) the (\w+) (\w+)\?", q)
            assert m
            a = [o for o in scene.objects if (o.colour, o.shape) == (m[1], m[2])]
            b = [o for o in scene.objects if (o.colour, o.shape) == (m[4], m[5])]
            assert len(a) == 1 and len(b) == 1
            delta = b[0].x - a[0].x if m[3] in ("left of", "right of") else b[0].y - a[0].y
            assert abs(delta) >= REL_MARGIN
            seen += 1
    assert seen > 100


def test_sample_vqa_kinds_uniform_and_yes_no_balanced() -> None:
    rng = np.random.default_rng(9)
    draws = [sample_vqa(rng, CFG) for _ in range(1500)]
    kinds = Counter(k for *_x, k in draws)
    assert set(kinds) == set(QUESTION_KINDS)
    assert all(abs(c / 1500 - 0.2) < 0.04 for c in kinds.values()), kinds
    for kind in ("existence", "relation"):
        answers = Counter(a for _s, _q, a, k in draws if k == kind)
        assert set(answers) == {"yes", "no"}
        assert abs(answers["yes"] / sum(answers.values()) - 0.5) < 0.08, (kind, answers)
    with pytest.raises(ValueError, match="allowed: count, colour"):
        sample_vqa(rng, CFG, kinds=["colour", "size"])


def test_sample_vqa_single_object_config_skips_relations() -> None:
    cfg = ShapesConfig(min_objects=1, max_objects=1)
    rng = np.random.default_rng(0)
    kinds = {sample_vqa(rng, cfg)[3] for _ in range(100)}
    assert "relation" not in kinds and "count" in kinds


# --------------------------------------------------------------------------------------------- captions
def test_captions() -> None:
    a = ShapeObject("circle", "red", "large", 0.2, 0.5)
    b = ShapeObject("square", "blue", "small", 0.8, 0.45)
    c = ShapeObject("triangle", "green", "small", 0.5, 0.1)
    assert caption(Scene((a,))) == "a large red circle"
    assert caption(Scene((b, a))) == "a large red circle to the left of a small blue square"
    assert caption(Scene((ShapeObject("circle", "red", "large", 0.55, 0.8), c))) == (
        "a small green triangle above a large red circle"
    )
    assert caption(Scene((ShapeObject("circle", "red", "large", 0.45, 0.9), c))) == (
        "a large red circle below a small green triangle"
    )
    assert caption(Scene((b, a, c))) == "a large red circle, a small green triangle and a small blue square"
    assert caption(Scene((a,)), sizes=False) == "a red circle"


def test_corpus_covers_every_template_word() -> None:
    corpus = corpus_texts(50, seed=0, config=CFG)
    vocab = {w for t in corpus for w in re.findall(r"[a-z0-9]+", t.lower())}
    assert set(ANSWER_VOCAB) <= vocab
    for w in ["how", "many", "objects", "what", "colour", "shape", "is", "there", "in", "the", "image"]:
        assert w in vocab
    for w in ["left", "right", "of", "above", "below", "to", "and", "small", "large", "circles", "squares"]:
        assert w in vocab
    # any text the generators produce uses only corpus words
    rng = np.random.default_rng(1)
    for _ in range(200):
        scene = sample_scene(rng, CFG)
        for q, a, _k in questions_for_scene(scene, rng):
            assert set(re.findall(r"[a-z0-9]+", (q + " " + a).lower())) <= vocab
        assert set(re.findall(r"[a-z0-9]+", caption(scene))) <= vocab
    assert corpus_texts(5, seed=3) == corpus_texts(5, seed=3)


def test_label_holds_reads_the_answer_back_from_the_image() -> None:
    scene = Scene(
        (ShapeObject("circle", "red", "large", 0.25, 0.3), ShapeObject("square", "blue", "small", 0.75, 0.7))
    )
    image, index = render_with_mask(scene, CFG)  # (32, 32, 3) uint8, (32, 32) object index
    pixels = image.transpose(2, 0, 1).astype(np.float32) / 255  # a model's (3, H, W) pixels in [0, 1]
    kept = {
        "What colour is the circle?": "red",
        "How many objects are there?": "2",
        "Is there a blue square?": "yes",
        "Is the red circle left of the blue square?": "yes",
    }
    for question, answer in kept.items():  # a rendered scene keeps its labels, in every image layout
        assert label_holds(image, question, answer, CFG), question
        assert label_holds(pixels, question, answer, CFG), question
        assert label_holds(pixels.transpose(1, 2, 0), question, answer, CFG), question
    assert not label_holds(image, "What colour is the circle?", "blue", CFG)  # not the stored answer

    painted = image.copy()
    painted[index == 0] = scene.background  # the referent (the red circle) painted out
    assert not label_holds(painted, "What colour is the circle?", "red", CFG)  # referent missing
    assert not label_holds(painted, "How many objects are there?", "2", CFG)
    assert not label_holds(painted, "Is there a red circle?", "yes", CFG)
    assert label_holds(painted, "Is there a blue square?", "yes", CFG)  # the other object keeps it

    recoloured = image.copy()
    recoloured[index == 0] = PALETTE["green"]  # the circle's colour changed
    assert not label_holds(recoloured, "What colour is the circle?", "red", CFG)
    assert label_holds(recoloured, "What colour is the circle?", "green", CFG)
    assert label_holds(recoloured, "How many objects are there?", "2", CFG)  # the count still holds

    assert not label_holds(image, "Tell me a story.", "red", CFG)  # not a template
    assert not label_holds(image, "What colour is the hexagon?", "red", CFG)  # unknown referent
