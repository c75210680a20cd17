"""ShapesWorld: procedurally generated flat-colour scenes, their questions, captions and an exact judge.

Everything is driven by an explicit `np.random.Generator`, so a seed fully determines scenes, questions
and pixels. Rendering uses flat palette colours on a pixel grid (no antialiasing), which is what lets
`judge` read an image back into objects exactly: that judge is the GenEval analogue for generated images
and the independent checker for question answers.

Coordinates: `x`, `y` are object centres in [0, 1], `y` grows downwards (image convention), so "above"
means a smaller `y`.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import numpy as np

# Palette chosen so every pair of colours is >= 130 apart in RGB and >= 200 from the default background;
# the judge's colour threshold (JUDGE_COLOUR_DIST) sits well inside those gaps.
PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (225, 30, 30),
    "green": (30, 170, 50),
    "blue": (30, 60, 220),
    "yellow": (240, 220, 20),
    "purple": (165, 40, 165),
    "cyan": (20, 200, 210),
}
ALL_SHAPES: tuple[str, ...] = ("circle", "square", "triangle")
ALL_SIZES: tuple[str, ...] = ("small", "large")
# Object side length as a fraction of the image width; 4 large objects plus gaps fit in a 32 px image.
SIZE_FRACTION: dict[str, float] = {"small": 0.22, "large": 0.31}
ALLOWED_IMAGE_SIZES: tuple[int, ...] = (32, 64)
OBJECT_COUNT_RANGE: tuple[int, int] = (1, 4)
DEFAULT_BACKGROUND: tuple[int, int, int] = (235, 235, 235)
MIN_BACKGROUND_DIST = 150.0  # a background closer than this to a palette colour would confuse the judge

QUESTION_KINDS: tuple[str, ...] = ("count", "colour", "shape", "existence", "relation")
YES_NO_KINDS: frozenset[str] = frozenset({"existence", "relation"})
RELATIONS: tuple[str, ...] = ("left of", "right of", "above", "below")
# Centres must differ by this much (fraction of the image) on an axis before a relation on it is asked,
# so relation answers never hinge on a pixel.
REL_MARGIN = 0.15
# Minimum empty pixels between object bounding boxes when sampling (before rounding to the pixel grid).
PLACEMENT_GAP_PX = 2.0
JUDGE_COLOUR_DIST = 90.0

ANSWER_VOCAB: tuple[str, ...] = (
    ("yes", "no") + tuple(str(i) for i in range(OBJECT_COUNT_RANGE[1] + 1)) + tuple(PALETTE) + ALL_SHAPES
)


# --------------------------------------------------------------------------------------------- config
@dataclass
class ShapesConfig:
    """What a ShapesWorld scene may contain; validated on construction so bad configs fail early."""

    image_size: int = 32
    min_objects: int = 1
    max_objects: int = 4
    colours: tuple[str, ...] = tuple(PALETTE)
    shapes: tuple[str, ...] = ALL_SHAPES
    sizes: tuple[str, ...] = ALL_SIZES
    background: tuple[int, int, int] = DEFAULT_BACKGROUND

    def __post_init__(self) -> None:
        # Accept lists (e.g. from YAML) but store tuples so configs stay hashable and comparable.
        for name in ("colours", "shapes", "sizes", "background"):
            value = getattr(self, name)
            if isinstance(value, list):
                setattr(self, name, tuple(value))
        self.validate()

    def validate(self) -> None:
        """Raise one ValueError listing every invalid field with the received and allowed values."""
        errors: list[str] = []
        if self.image_size not in ALLOWED_IMAGE_SIZES:
            allowed = " or ".join(str(s) for s in ALLOWED_IMAGE_SIZES)
            errors.append(f"ShapesConfig.image_size={self.image_size!r} is invalid: allowed {allowed}")
        lo, hi = OBJECT_COUNT_RANGE
        counts_ok = True
        for name in ("min_objects", "max_objects"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or not lo <= value <= hi:
                errors.append(f"ShapesConfig.{name}={value!r} is invalid: allowed {lo}..{hi}")
                counts_ok = False
        if counts_ok and self.min_objects > self.max_objects:
            errors.append(
                f"ShapesConfig.min_objects={self.min_objects} is invalid: must be <= "
                f"max_objects={self.max_objects}"
            )
        for name, known, singular in (
            ("colours", tuple(PALETTE), "colour"),
            ("shapes", ALL_SHAPES, "shape"),
            ("sizes", ALL_SIZES, "size"),
        ):
            values = getattr(self, name)
            allowed = ", ".join(known)
            if isinstance(values, str) or not isinstance(values, tuple) or not values:
                errors.append(
                    f"ShapesConfig.{name}={values!r} is invalid: expected a non-empty tuple of {allowed}"
                )
                continue
            for v in values:
                if v not in known:
                    errors.append(
                        f"ShapesConfig.{name} contains unknown {singular} {v!r}; allowed: {allowed}"
                    )
            if len(set(values)) != len(values):
                errors.append(f"ShapesConfig.{name}={values!r} is invalid: contains duplicates")
        bg = self.background
        if (
            not isinstance(bg, tuple)
            or len(bg) != 3
            or not all(isinstance(c, (int, np.integer)) and 0 <= c <= 255 for c in bg)
        ):
            errors.append(
                f"ShapesConfig.background={bg!r} is invalid: allowed an (r, g, b) tuple of ints in 0..255"
            )
        elif isinstance(self.colours, tuple):
            for name in self.colours:
                if name in PALETTE:
                    dist = float(np.linalg.norm(np.subtract(bg, PALETTE[name], dtype=float)))
                    if dist < MIN_BACKGROUND_DIST:
                        errors.append(
                            f"ShapesConfig.background={bg!r} is invalid: RGB distance {dist:.0f} to colour "
                            f"{name!r} is below {MIN_BACKGROUND_DIST:.0f}; allowed: a colour far from the "
                            "palette, e.g. light grey or white"
                        )
        if errors:
            raise ValueError("invalid ShapesConfig:\n  - " + "\n  - ".join(errors))


def size_px(size: str, image_size: int) -> int:
    """Side length in pixels of an object of `size` (scales with the image so 32/64 px look alike)."""
    return int(round(SIZE_FRACTION[size] * image_size))


# --------------------------------------------------------------------------------------------- scenes
@dataclass(frozen=True)
class ShapeObject:
    """One object; (x, y) is its centre in [0, 1] image coordinates (y down)."""

    shape: str
    colour: str
    size: str
    x: float
    y: float

    def to_dict(self) -> dict[str, Any]:
        return {"shape": self.shape, "colour": self.colour, "size": self.size, "x": self.x, "y": self.y}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ShapeObject:
        return cls(str(d["shape"]), str(d["colour"]), str(d["size"]), float(d["x"]), float(d["y"]))

    def describe(self, sizes: bool = True) -> str:
        """Noun phrase without article, e.g. 'small red circle'."""
        return f"{self.size} {self.colour} {self.shape}" if sizes else f"{self.colour} {self.shape}"


@dataclass(frozen=True)
class Scene:
    """A list of non-overlapping objects on a flat background."""

    objects: tuple[ShapeObject, ...]
    background: tuple[int, int, int] = DEFAULT_BACKGROUND

    def to_dict(self) -> dict[str, Any]:
        return {
            "objects": [o.to_dict() for o in self.objects],
            "background": [int(c) for c in self.background],
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Scene:
        bg = d.get("background", DEFAULT_BACKGROUND)
        return cls(
            tuple(ShapeObject.from_dict(o) for o in d["objects"]), (int(bg[0]), int(bg[1]), int(bg[2]))
        )

    def mirrored(self, axis: str = "x") -> Scene:
        """Mirror positions (x -> 1-x or y -> 1-y); keeps counts and no-overlap, flips relations."""
        if axis == "x":
            objs = tuple(ShapeObject(o.shape, o.colour, o.size, 1.0 - o.x, o.y) for o in self.objects)
        elif axis == "y":
            objs = tuple(ShapeObject(o.shape, o.colour, o.size, o.x, 1.0 - o.y) for o in self.objects)
        else:
            raise ValueError(f"axis={axis!r} is invalid: allowed 'x' or 'y'")
        return Scene(objs, self.background)


ObjectSpec = tuple[str, str, "str | None"]  # (shape, colour, size or None = sample it)


def _pick(rng: np.random.Generator, values: Sequence[Any]) -> Any:
    return values[int(rng.integers(len(values)))]


def sample_scene(
    rng: np.random.Generator,
    config: ShapesConfig,
    *,
    n_objects: int | None = None,
    required: Sequence[ObjectSpec] = (),
    allow: Callable[[str, str, str], bool] | None = None,
    max_tries: int = 200,
) -> Scene:
    """Sample a scene: `required` objects first, then random objects for which `allow(shape, colour, size)`
    holds, placed at continuous positions without overlap (rejection sampling with a pixel gap)."""
    lo = max(config.min_objects, len(required))
    hi = max(config.max_objects, len(required))
    if len(required) > OBJECT_COUNT_RANGE[1]:
        raise ValueError(f"required has {len(required)} objects; at most {OBJECT_COUNT_RANGE[1]} fit")
    W = config.image_size
    for _ in range(max_tries):
        n = n_objects if n_objects is not None else int(rng.integers(lo, hi + 1))
        specs: list[tuple[str, str, str]] = []
        for shape, colour, size in required:
            specs.append((shape, colour, size if size is not None else _pick(rng, config.sizes)))
        ok = True
        while len(specs) < n:
            for _attempt in range(100):
                spec = (_pick(rng, config.shapes), _pick(rng, config.colours), _pick(rng, config.sizes))
                if allow is None or allow(*spec):
                    break
            else:
                ok = False
                break
            specs.append(spec)
        if not ok:
            raise ValueError("sample_scene: `allow` rejects (almost) every object of this config")
        placed = _place(rng, [size_px(s[2], W) for s in specs], W)
        if placed is None:
            continue
        objs = tuple(
            ShapeObject(shape, colour, size, float(cx / W), float(cy / W))
            for (shape, colour, size), (cx, cy) in zip(specs, placed)
        )
        return Scene(objs, tuple(config.background))
    raise RuntimeError(f"sample_scene: could not place objects without overlap in {max_tries} tries")


def _place(rng: np.random.Generator, sides: list[int], W: int, n_candidates: int = 48) -> list | None:
    """Centres (pixel units) for objects of the given side lengths, or None if one could not be placed."""
    centres: list[tuple[float, float]] = []
    placed_s: list[float] = []
    for s in sides:
        lo, hi = s / 2 + 1.0, W - s / 2 - 1.0
        cand = rng.uniform(lo, hi, size=(n_candidates, 2))
        if centres:
            c = np.asarray(centres)
            ps = np.asarray(placed_s)
            need = (ps[None, :] + s) / 2 + PLACEMENT_GAP_PX
            dx = np.abs(cand[:, None, 0] - c[None, :, 0])
            dy = np.abs(cand[:, None, 1] - c[None, :, 1])
            ok = ((dx >= need) | (dy >= need)).all(axis=1)
            idx = np.flatnonzero(ok)
            if idx.size == 0:
                return None
            choice = cand[idx[0]]
        else:
            choice = cand[0]
        centres.append((float(choice[0]), float(choice[1])))
        placed_s.append(float(s))
    return centres


# --------------------------------------------------------------------------------------------- render
def shape_mask(shape: str, h: int, w: int) -> np.ndarray:
    """Boolean (h, w) mask of `shape` filling an h x w box, sampled at pixel centres (no antialiasing).
    Used both to draw objects and, by the judge, as templates to compare components against."""
    return _shape_mask_cached(shape, int(h), int(w)).copy()


@lru_cache(maxsize=512)
def _shape_mask_cached(shape: str, h: int, w: int) -> np.ndarray:
    v = (np.arange(h) + 0.5)[:, None] / h
    u = (np.arange(w) + 0.5)[None, :] / w
    if shape == "square":
        m = np.ones((h, w), dtype=bool)
    elif shape == "circle":
        m = (u - 0.5) ** 2 + (v - 0.5) ** 2 <= 0.25 + 1e-9
    elif shape == "triangle":  # upright: apex at the top centre, base along the bottom row
        m = np.abs(u - 0.5) <= v / 2 + 0.25 / w + 1e-9
    else:
        raise ValueError(f"unknown shape {shape!r}; allowed: {', '.join(ALL_SHAPES)}")
    m = np.broadcast_to(m, (h, w)).copy()
    m.flags.writeable = False
    return m


def object_box(obj: ShapeObject, side: int, W: int) -> tuple[int, int]:
    """Top-left pixel of an object's box: centres snap to the pixel grid so rendering is exact."""
    return int(np.floor(obj.x * W - side / 2 + 0.5)), int(np.floor(obj.y * W - side / 2 + 0.5))


def render_with_mask(
    scene: Scene,
    config: ShapesConfig,
    *,
    sides: Sequence[int] | None = None,
    background: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Render and also return an (H, W) int map of object index per pixel (-1 = background).

    `sides` overrides each object's pixel size (the `scale` shift); `background` replaces the flat
    background with an (H, W, 3) image (the `background` shift)."""
    W = config.image_size
    if background is None:
        img = np.empty((W, W, 3), dtype=np.uint8)
        img[:] = np.asarray(scene.background, dtype=np.uint8)
    else:
        img = np.array(background, dtype=np.uint8, copy=True)
    index = np.full((W, W), -1, dtype=np.int16)
    for i, obj in enumerate(scene.objects):
        s = sides[i] if sides is not None else size_px(obj.size, W)
        x0, y0 = object_box(obj, s, W)
        m = _shape_mask_cached(obj.shape, s, s)
        # clip to the canvas (only matters for hand-made scenes)
        ys0, xs0 = max(0, -y0), max(0, -x0)
        ys1, xs1 = min(s, W - y0), min(s, W - x0)
        if ys1 <= ys0 or xs1 <= xs0:
            continue
        m = m[ys0:ys1, xs0:xs1]
        region = (slice(y0 + ys0, y0 + ys1), slice(x0 + xs0, x0 + xs1))
        img[region][m] = PALETTE[obj.colour]
        index[region][m] = i
    return img, index


def render(
    scene: Scene, config: ShapesConfig, shift: str | None = None, rng: np.random.Generator | None = None
) -> np.ndarray:
    """Render a scene to an (H, W, 3) uint8 image; deterministic for a given scene (and shift rng)."""
    if shift is not None:
        from unigame.data.shifts import apply_shift  # shifts builds on this module

        return apply_shift(scene, config, shift, rng if rng is not None else np.random.default_rng(0))
    return render_with_mask(scene, config)[0]


# ------------------------------------------------------------------------------------------ questions
def _plural(shape: str) -> str:
    return shape + "s"


def _count(objs: Iterable[ShapeObject], **attrs: str) -> int:
    return sum(all(getattr(o, k) == v for k, v in attrs.items()) for o in objs)


def _vocab(config: ShapesConfig | None) -> tuple[tuple[str, ...], tuple[str, ...]]:
    if config is None:
        return tuple(PALETTE), ALL_SHAPES
    return config.colours, config.shapes


def _count_questions(scene: Scene, rng: np.random.Generator, config: ShapesConfig | None) -> list:
    colours, shapes = _vocab(config)
    objs = scene.objects
    out = [("How many objects are there?", str(len(objs)), "count")]
    present_c = sorted({o.colour for o in objs}, key=list(PALETTE).index)
    present_s = sorted({o.shape for o in objs}, key=ALL_SHAPES.index)
    absent_c = [c for c in colours if c not in present_c]
    absent_s = [s for s in shapes if s not in present_s]
    asked_c = present_c + ([_pick(rng, absent_c)] if absent_c else [])
    asked_s = present_s + ([_pick(rng, absent_s)] if absent_s else [])
    for c in asked_c:
        out.append((f"How many {c} objects are there?", str(_count(objs, colour=c)), "count"))
    for s in asked_s:
        out.append((f"How many {_plural(s)} are there?", str(_count(objs, shape=s)), "count"))
    for c, s in sorted({(o.colour, o.shape) for o in objs}):
        out.append((f"How many {c} {_plural(s)} are there?", str(_count(objs, colour=c, shape=s)), "count"))
    return out


def _colour_questions(scene: Scene, rng: np.random.Generator, config: ShapesConfig | None) -> list:
    objs = scene.objects
    out = []
    for s in sorted({o.shape for o in objs}, key=ALL_SHAPES.index):
        same = [o for o in objs if o.shape == s]
        if len(same) == 1:
            out.append((f"What colour is the {s}?", same[0].colour, "colour"))
        else:
            for z in ALL_SIZES:
                sz = [o for o in same if o.size == z]
                if len(sz) == 1:
                    out.append((f"What colour is the {z} {s}?", sz[0].colour, "colour"))
    return out


def _shape_questions(scene: Scene, rng: np.random.Generator, config: ShapesConfig | None) -> list:
    objs = scene.objects
    out = []
    for c in sorted({o.colour for o in objs}, key=list(PALETTE).index):
        same = [o for o in objs if o.colour == c]
        if len(same) == 1:
            out.append((f"What shape is the {c} object?", same[0].shape, "shape"))
        else:
            for z in ALL_SIZES:
                sz = [o for o in same if o.size == z]
                if len(sz) == 1:
                    out.append((f"What shape is the {z} {c} object?", sz[0].shape, "shape"))
    return out


def existence_question(colour: str, shape: str, pope: bool = False) -> str:
    """'Is there a red circle?' (POPE wording adds 'in the image')."""
    return f"Is there a {colour} {shape} in the image?" if pope else f"Is there a {colour} {shape}?"


def _existence_questions(scene: Scene, rng: np.random.Generator, config: ShapesConfig | None) -> list:
    colours, shapes = _vocab(config)
    present = sorted({(o.colour, o.shape) for o in scene.objects})
    absent = [(c, s) for c in colours for s in shapes if (c, s) not in present]
    out = [(existence_question(c, s), "yes", "existence") for c, s in present]
    if absent:
        picks = rng.choice(len(absent), size=min(len(present), len(absent)), replace=False)
        out += [(existence_question(*absent[int(i)]), "no", "existence") for i in sorted(picks)]
    return out


def unique_referents(scene: Scene) -> list[ShapeObject]:
    """Objects that are the only one of their colour+shape, so 'the red circle' names them."""
    return [o for o in scene.objects if _count(scene.objects, colour=o.colour, shape=o.shape) == 1]


def relation_holds(a: ShapeObject, b: ShapeObject, relation: str, margin: float = 0.0) -> bool:
    """Whether `a` is `relation` `b` with centres at least `margin` apart on that axis."""
    if relation == "left of":
        return b.x - a.x > margin
    if relation == "right of":
        return a.x - b.x > margin
    if relation == "above":
        return b.y - a.y > margin
    if relation == "below":
        return a.y - b.y > margin
    raise ValueError(f"unknown relation {relation!r}; allowed: {', '.join(RELATIONS)}")


def relation_question(a: ShapeObject, b: ShapeObject, relation: str) -> str:
    return f"Is the {a.colour} {a.shape} {relation} the {b.colour} {b.shape}?"


def _relation_questions(scene: Scene, rng: np.random.Generator, config: ShapesConfig | None) -> list:
    refs = unique_referents(scene)
    out = []
    for a in refs:
        for b in refs:
            if a is b:
                continue
            for pos, neg, delta in (("left of", "right of", b.x - a.x), ("above", "below", b.y - a.y)):
                if abs(delta) < REL_MARGIN:
                    continue  # ambiguous on this axis: never asked
                yes_rel, no_rel = (pos, neg) if delta > 0 else (neg, pos)
                out.append((relation_question(a, b, yes_rel), "yes", "relation"))
                out.append((relation_question(a, b, no_rel), "no", "relation"))
    return out


_KIND_BUILDERS: dict[str, Callable[[Scene, np.random.Generator, ShapesConfig | None], list]] = {
    "count": _count_questions,
    "colour": _colour_questions,
    "shape": _shape_questions,
    "existence": _existence_questions,
    "relation": _relation_questions,
}


def _check_kinds(kinds: Sequence[str] | None, config: ShapesConfig | None = None) -> tuple[str, ...]:
    if kinds is None:
        kinds = QUESTION_KINDS
        if config is not None and (config.max_objects < 2 or len(config.colours) * len(config.shapes) < 2):
            kinds = tuple(k for k in kinds if k != "relation")  # no two distinguishable objects possible
        return tuple(kinds)
    kinds = tuple(kinds)
    bad = [k for k in kinds if k not in QUESTION_KINDS]
    if bad or not kinds:
        raise ValueError(f"unknown question kinds {bad or kinds!r}; allowed: {', '.join(QUESTION_KINDS)}")
    return kinds


def questions_for_scene(
    scene: Scene,
    rng: np.random.Generator,
    kinds: Sequence[str] | None = None,
    config: ShapesConfig | None = None,
) -> list[tuple[str, str, str]]:
    """Every templated (question, answer, kind) that is unambiguous for this scene; `rng` picks the
    absent colours/shapes/objects asked about so 'no'/'0' answers appear alongside the present ones."""
    out: list[tuple[str, str, str]] = []
    for kind in _check_kinds(kinds):
        out.extend(_KIND_BUILDERS[kind](scene, rng, config))
    return out


def sample_vqa(
    rng: np.random.Generator, config: ShapesConfig, kinds: Sequence[str] | None = None, max_tries: int = 200
) -> tuple[Scene, str, str, str]:
    """One (scene, question, answer, kind) with kinds drawn uniformly and yes/no balanced 50/50; a scene
    without a valid question of the drawn kind is redrawn, so kind frequencies do not depend on scenes."""
    kinds = _check_kinds(kinds, config)
    kind = _pick(rng, kinds)
    want = ("yes", "no")[int(rng.integers(2))] if kind in YES_NO_KINDS else None
    for _ in range(max_tries):
        scene = sample_scene(rng, config)
        cands = _KIND_BUILDERS[kind](scene, rng, config)
        if want is not None:
            cands = [c for c in cands if c[1] == want]
        if cands:
            q, a, k = _pick(rng, cands)
            return scene, q, a, k
    raise RuntimeError(f"sample_vqa: no {kind!r} question found in {max_tries} scenes for {config}")


def caption(scene: Scene, sizes: bool = True) -> str:
    """Short description: 'a large red circle to the left of a small blue square' (2 objects, relation on
    the dominant axis) or a left-to-right list 'a ..., a ... and a ...' (3-4 objects)."""
    objs = sorted(scene.objects, key=lambda o: (o.x, o.y))
    phrases = [f"a {o.describe(sizes)}" for o in objs]
    if not objs:
        return "an empty scene"
    if len(objs) == 1:
        return phrases[0]
    if len(objs) == 2:
        a, b = objs
        dx, dy = b.x - a.x, b.y - a.y
        if abs(dx) >= abs(dy):
            return f"{phrases[0]} to the left of {phrases[1]}"
        return f"{phrases[0]} {'above' if dy > 0 else 'below'} {phrases[1]}"
    return ", ".join(phrases[:-1]) + " and " + phrases[-1]


def corpus_texts(n: int, seed: int, config: ShapesConfig | None = None) -> list[str]:
    """Text for training a tokenizer offline: every template instantiated with every colour/shape/size/
    relation word once (full coverage), followed by `n` sampled (question, answer, caption) triples."""
    config = config or ShapesConfig()
    colours, shapes = tuple(PALETTE), ALL_SHAPES
    texts: list[str] = list(ANSWER_VOCAB)
    texts.append("How many objects are there?")
    for c in colours:
        texts.append(f"How many {c} objects are there?")
        texts.append(f"What shape is the {c} object?")
        for z in ALL_SIZES:
            texts.append(f"What shape is the {z} {c} object?")
    for s in shapes:
        texts.append(f"How many {_plural(s)} are there?")
        texts.append(f"What colour is the {s}?")
        for z in ALL_SIZES:
            texts.append(f"What colour is the {z} {s}?")
        for c in colours:
            texts.append(f"How many {c} {_plural(s)} are there?")
            texts.append(existence_question(c, s))
            texts.append(existence_question(c, s, pope=True))
            for z in ALL_SIZES:
                texts.append(f"a {z} {c} {s}")
    a = ShapeObject(shapes[0], colours[0], "small", 0.2, 0.2)
    b = ShapeObject(shapes[1], colours[1], "large", 0.8, 0.8)
    texts += [relation_question(a, b, r) for r in RELATIONS]
    c3 = ShapeObject(shapes[2], colours[2], "small", 0.5, 0.5)
    texts += [caption(Scene((a, b))), caption(Scene((a, ShapeObject("square", "blue", "large", 0.25, 0.8))))]
    texts += [
        caption(Scene((ShapeObject("square", "blue", "large", 0.25, 0.8), a))),
        caption(Scene((a, b, c3))),
    ]
    rng = np.random.default_rng(np.random.SeedSequence([seed, 7919]))
    for _ in range(n):
        scene, q, ans, _kind = sample_vqa(rng, config)
        texts += [q, ans, caption(scene)]
    return texts


_RE_COUNT_ALL = re.compile(r"How many objects are there\?")
_RE_COUNT_COLOUR = re.compile(r"How many (\w+) objects are there\?")
_RE_COUNT_BOTH = re.compile(r"How many (\w+) (\w+)s are there\?")
_RE_COUNT_SHAPE = re.compile(r"How many (\w+)s are there\?")
_RE_COLOUR = re.compile(r"What colour is the (?:(small|large) )?(\w+)\?")
_RE_SHAPE = re.compile(r"What shape is the (?:(small|large) )?(\w+) object\?")
_RE_EXIST = re.compile(r"Is there an? (\w+) (\w+)(?: in the image)?\?")
_RE_REL = re.compile(r"Is the (\w+) (\w+) (left of|right of|above|below) the (\w+) (\w+)\?")


def question_kind(question: str) -> str | None:
    """The kind (one of QUESTION_KINDS) of a templated question whose words the world knows, else
    None: whether a question parses, without looking at any image (`answer_question` also needs
    the objects, and returns None for a parsing question whose referent is missing)."""
    q = question.strip()
    colours, shapes = set(PALETTE), set(ALL_SHAPES)
    if _RE_COUNT_ALL.fullmatch(q):
        return "count"
    if m := _RE_COUNT_COLOUR.fullmatch(q):
        return "count" if m[1] in colours else None
    if m := _RE_COUNT_BOTH.fullmatch(q):
        return "count" if m[1] in colours and m[2] in shapes else None
    if m := _RE_COUNT_SHAPE.fullmatch(q):
        return "count" if m[1] in shapes else None
    if m := _RE_COLOUR.fullmatch(q):
        return "colour" if m[2] in shapes else None
    if m := _RE_SHAPE.fullmatch(q):
        return "shape" if m[2] in colours else None
    if m := _RE_EXIST.fullmatch(q):
        return "existence" if m[1] in colours and m[2] in shapes else None
    if m := _RE_REL.fullmatch(q):
        known = m[1] in colours and m[4] in colours and m[2] in shapes and m[5] in shapes
        return "relation" if known else None
    return None


def answer_question(question: str, objects: Sequence[ShapeObject]) -> str | None:
    """Answer a templated question from objects alone (e.g. the judge's reading of an image), parsing the
    text rather than reusing the generator: an independent check of generated answers and a way to score
    a model's image against a question. None when the text is not a template, names unknown words, or its
    referent is missing/ambiguous, or a relation is too close to call (< REL_MARGIN / 2)."""
    q = question.strip()

    def only(**attrs: str | None) -> ShapeObject | None:
        hits = [o for o in objects if all(v is None or getattr(o, k) == v for k, v in attrs.items())]
        return hits[0] if len(hits) == 1 else None

    if _RE_COUNT_ALL.fullmatch(q):
        return str(len(objects))
    if m := _RE_COUNT_COLOUR.fullmatch(q):
        return str(_count(objects, colour=m[1])) if m[1] in PALETTE else None
    if m := _RE_COUNT_BOTH.fullmatch(q):
        ok = m[1] in PALETTE and m[2] in ALL_SHAPES
        return str(_count(objects, colour=m[1], shape=m[2])) if ok else None
    if m := _RE_COUNT_SHAPE.fullmatch(q):
        return str(_count(objects, shape=m[1])) if m[1] in ALL_SHAPES else None
    if m := _RE_COLOUR.fullmatch(q):
        o = only(size=m[1], shape=m[2])
        return o.colour if o is not None else None
    if m := _RE_SHAPE.fullmatch(q):
        o = only(size=m[1], colour=m[2])
        return o.shape if o is not None else None
    if m := _RE_EXIST.fullmatch(q):
        if m[1] not in PALETTE or m[2] not in ALL_SHAPES:
            return None
        return "yes" if _count(objects, colour=m[1], shape=m[2]) else "no"
    if m := _RE_REL.fullmatch(q):
        a, b = only(colour=m[1], shape=m[2]), only(colour=m[4], shape=m[5])
        if a is None or b is None or a is b:
            return None
        delta = b.x - a.x if m[3] in ("left of", "right of") else b.y - a.y
        if abs(delta) < REL_MARGIN / 2:
            return None
        return "yes" if relation_holds(a, b, m[3]) else "no"
    return None


# ---------------------------------------------------------------------------------------------- judge
def _label_components(cls: np.ndarray) -> np.ndarray:
    """4-connected components of equal non-negative class (-1 = background), as an int map with -1 for
    background; vectorised min-label propagation with pointer jumping (no scipy here)."""
    H, W = cls.shape
    fg = cls >= 0
    big = H * W
    lab = np.where(fg, np.arange(big).reshape(H, W), big)
    same_h = fg[:, 1:] & (cls[:, 1:] == cls[:, :-1])
    same_v = fg[1:, :] & (cls[1:, :] == cls[:-1, :])
    while True:
        new = lab.copy()
        np.minimum(new[:, 1:], np.where(same_h, lab[:, :-1], big), out=new[:, 1:])
        np.minimum(new[:, :-1], np.where(same_h, lab[:, 1:], big), out=new[:, :-1])
        np.minimum(new[1:, :], np.where(same_v, lab[:-1, :], big), out=new[1:, :])
        np.minimum(new[:-1, :], np.where(same_v, lab[1:, :], big), out=new[:-1, :])
        flat = new.ravel()
        inner = flat < big
        flat[inner] = flat[flat[inner]]  # pointer jumping: a label is a pixel of the same component
        if np.array_equal(new, lab):
            break
        lab = new
    return np.where(fg, lab, -1)


def _palette_d2(image: np.ndarray, config: ShapesConfig) -> np.ndarray:
    img = np.asarray(image)[..., :3].astype(np.int32)
    pal = np.asarray([PALETTE[c] for c in config.colours], dtype=np.int32)
    return ((img[:, :, None, :] - pal[None, None, :, :]) ** 2).sum(-1)


def classify_pixels(image: np.ndarray, config: ShapesConfig) -> np.ndarray:
    """Per-pixel index into `config.colours` of the nearest palette colour, or -1 when no palette colour is
    within JUDGE_COLOUR_DIST (background, texture, clutter, blurred edges)."""
    d2 = _palette_d2(image, config)
    return np.where(d2.min(-1) <= JUDGE_COLOUR_DIST**2, d2.argmin(-1), -1)


def _best_shape(mask: np.ndarray, shapes: Sequence[str]) -> str:
    """Shape whose s x s template (s = longer box side) best overlaps the mask at any placement: every
    shape is drawn in a square box, and blur eats a triangle's apex first, so the box may be shorter."""
    h, w = mask.shape
    side = max(h, w)
    best, best_iou = shapes[0], -1.0
    for shape in shapes:
        t = _shape_mask_cached(shape, side, side)
        for dy in range(side - h + 1):
            for dx in range(side - w + 1):
                window = t[dy : dy + h, dx : dx + w]
                inter = float((mask & window).sum())
                iou = inter / (float(mask.sum()) + float(t.sum()) - inter)
                if iou > best_iou:
                    best, best_iou = shape, iou
    return best


def judge(image: np.ndarray, config: ShapesConfig, min_area: int | None = None) -> list[ShapeObject]:
    """Read an image back into objects.

    Pixels within JUDGE_COLOUR_DIST of a palette colour seed connected components. Each component is then
    refined against its local background (median of the non-palette pixels around it), keeping pixels
    nearer its colour than that background: the half-way line of a blurred edge stays where the edge was,
    so shape and size survive mild blur. Shape is the best template overlap, size the box extent, the
    centre the box centre; components under `min_area` pixels are dropped as noise. Exact on clean renders.
    """
    img = np.asarray(image)
    if img.ndim != 3 or img.shape[2] < 3:
        raise ValueError(f"judge expects an (H, W, 3) image, got shape {img.shape}")
    H, W = img.shape[:2]
    if min_area is None:
        min_area = max(4, int(round(0.008 * H * W)))
    d2 = _palette_d2(img, config)
    cls = np.where(d2.min(-1) <= JUDGE_COLOUR_DIST**2, d2.argmin(-1), -1)
    lab = _label_components(cls)
    ids, counts = np.unique(lab[lab >= 0], return_counts=True)
    pix = img[..., :3].astype(np.int32)
    scale = W / config.image_size
    sides = [size_px(z, config.image_size) * scale for z in config.sizes]
    order = np.argsort(sides)
    sizes_sorted = [config.sizes[i] for i in order]
    sides_sorted = [sides[i] for i in order]
    out: list[ShapeObject] = []
    for comp, area in zip(ids, counts):
        if area < min_area:
            continue
        ys, xs = np.nonzero(lab == comp)
        k = int(cls[ys[0], xs[0]])
        # local background from a 3 px ring of non-palette pixels
        ry0, ry1 = max(0, ys.min() - 3), min(H, ys.max() + 4)
        rx0, rx1 = max(0, xs.min() - 3), min(W, xs.max() + 4)
        ring = pix[ry0:ry1, rx0:rx1][cls[ry0:ry1, rx0:rx1] < 0]
        bg = np.median(ring, axis=0) if len(ring) >= 4 else np.asarray(config.background, dtype=float)
        # refine within 1 px of the seed: nearest palette colour is ours and it beats the background
        wy0, wy1 = max(0, ys.min() - 1), min(H, ys.max() + 2)
        wx0, wx1 = max(0, xs.min() - 1), min(W, xs.max() + 2)
        win = (slice(wy0, wy1), slice(wx0, wx1))
        d_bg = ((pix[win] - bg) ** 2).sum(-1)
        own = d2[win][..., k]
        mask = (d2[win].argmin(-1) == k) & (own < d_bg) & ~((lab[win] >= 0) & (lab[win] != comp))
        mask |= lab[win] == comp
        my, mx = np.nonzero(mask)
        y0, y1, x0, x1 = my.min(), my.max() + 1, mx.min(), mx.max() + 1
        h, w = int(y1 - y0), int(x1 - x0)
        shape = _best_shape(mask[y0:y1, x0:x1], config.shapes)
        extent = max(h, w)
        size = sizes_sorted[0]
        for z, lower, upper in zip(sizes_sorted[1:], sides_sorted[:-1], sides_sorted[1:]):
            if extent > (lower + upper) / 2:
                size = z
        cx, cy = (wx0 + x0 + w / 2) / W, (wy0 + y0 + h / 2) / H
        out.append(ShapeObject(shape, config.colours[k], size, float(cx), float(cy)))
    out.sort(key=lambda o: (o.x, o.y))
    return out


def label_holds(image: np.ndarray, question: str, answer: str, config: ShapesConfig) -> bool:
    """Whether `answer` is still the answer to `question` in `image`, by the exact judge: `judge` reads
    the objects back and `answer_question` re-derives the answer from them.

    image: (H, W, 3) uint8, or a model's pixels as a float array in [0, 1], (H, W, 3) or (3, H, W)
    (rounded to uint8 as evaluation does). False when the question is not a template or its referent
    is missing or ambiguous in the image (the label cannot be read back).
    """
    img = np.asarray(image)
    if img.dtype != np.uint8:
        if img.ndim == 3 and img.shape[0] == 3 and img.shape[-1] != 3:
            img = img.transpose(1, 2, 0)  # (3, H, W) -> (H, W, 3)
        img = (np.clip(img.astype(np.float64), 0.0, 1.0) * 255).round().astype(np.uint8)
    derived = answer_question(question, judge(img, config))
    return derived is not None and derived == answer.strip().lower()


@dataclass
class MatchReport:
    """How well judged objects match an intended scene (GenEval-style components)."""

    expected: int
    found: int
    matched: int  # intended objects found with the right shape and colour (position within tolerance)
    exact: int  # ... and the right size too
    colour_counts_ok: bool  # per-colour counts agree
    shape_counts_ok: bool  # per-shape counts agree
    pairs: list[tuple[int, int]] = field(default_factory=list)  # (scene index, judged index)

    @property
    def count_ok(self) -> bool:
        return self.expected == self.found

    @property
    def all_correct(self) -> bool:
        """Every intended object present exactly and nothing extra."""
        return self.count_ok and self.exact == self.expected


def judge_matches(
    objects: Sequence[ShapeObject], scene: Scene, pos_tol: float = 0.1, check_position: bool = True
) -> MatchReport:
    """Greedily pair judged `objects` with the scene's objects of the same shape and colour, nearest first
    (within `pos_tol` when `check_position`), and report counts of matches and exact matches."""
    cands = []
    for i, o in enumerate(scene.objects):
        for j, p in enumerate(objects):
            if o.shape == p.shape and o.colour == p.colour:
                d = float(np.hypot(o.x - p.x, o.y - p.y))
                if not check_position or d <= pos_tol:
                    cands.append((d, i, j))
    cands.sort()
    used_i: set[int] = set()
    used_j: set[int] = set()
    pairs = []
    for _d, i, j in cands:
        if i not in used_i and j not in used_j:
            used_i.add(i)
            used_j.add(j)
            pairs.append((i, j))
    exact = sum(scene.objects[i].size == objects[j].size for i, j in pairs)

    def hist(objs: Sequence[ShapeObject], attr: str) -> dict[str, int]:
        h: dict[str, int] = {}
        for o in objs:
            h[getattr(o, attr)] = h.get(getattr(o, attr), 0) + 1
        return h

    return MatchReport(
        expected=len(scene.objects),
        found=len(objects),
        matched=len(pairs),
        exact=exact,
        colour_counts_ok=hist(objects, "colour") == hist(scene.objects, "colour"),
        shape_counts_ok=hist(objects, "shape") == hist(scene.objects, "shape"),
        pairs=sorted(pairs),
    )


def judge_scene(image: np.ndarray, scene: Scene, config: ShapesConfig, pos_tol: float = 0.1) -> MatchReport:
    """Judge an image generated for `scene` and compare (the GenEval analogue in one call)."""
    return judge_matches(judge(image, config), scene, pos_tol=pos_tol)
