"""ShapesWorld splits that mirror the paper's benchmarks, as lists of `VQARecord`.

* `train` / `val` / `test`: clean VQA (the VQAv2 analogue), kinds uniform, yes/no balanced.
* `pope_random` / `pope_popular` / `pope_adversarial`: POPE-style existence, exactly one 'yes' and one 'no'
  question per image (50% yes), negatives random, most frequent in the split, or sharing a colour or shape
  with a present object.
* `naturalbench`: groups of 2 images x 2 yes/no questions whose answers flip across the images, each group
  rendered under one shift from `SHIFT_NAMES`.
* `adversarial`: a target object next to a near-duplicate differing in exactly one attribute (colour or
  shape); questions hinge on that attribute.

Every split draws from its own seed stream `SeedSequence([seed, split index])`, so splits never share a
random stream and `build_split` is deterministic (byte-equal images) for the same arguments.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import Any

import numpy as np

from unigame.data.records import VQARecord
from unigame.data.shapes import (
    REL_MARGIN,
    Scene,
    ShapeObject,
    ShapesConfig,
    caption,
    existence_question,
    relation_question,
    render,
    sample_scene,
    sample_vqa,
    unique_referents,
)
from unigame.data.shifts import SHIFT_NAMES, SIZE_CHANGING_SHIFTS, apply_shift

SPLIT_NAMES: tuple[str, ...] = (
    "train",
    "val",
    "test",
    "pope_random",
    "pope_popular",
    "pope_adversarial",
    "naturalbench",
    "adversarial",
)


def split_rng(name: str, seed: int) -> np.random.Generator:
    """The split's own random stream (independent across split names for one seed)."""
    return np.random.default_rng(np.random.SeedSequence([int(seed), SPLIT_NAMES.index(name)]))


def _record(
    rid: str, question: str, answer: str, image: np.ndarray, scene: Scene, split: str, kind: str, **meta: Any
) -> VQARecord:
    return VQARecord(
        id=rid,
        question=question,
        answer=answer,
        image=image,
        answers=[answer],
        caption=caption(scene, sizes=meta.get("shift") not in SIZE_CHANGING_SHIFTS),
        meta={"kind": kind, "split": split, "scene": scene.to_dict(), **meta},
    )


def _clean(name: str, n: int, rng: np.random.Generator, config: ShapesConfig) -> list[VQARecord]:
    out = []
    for i in range(n):
        scene, q, a, kind = sample_vqa(rng, config)
        out.append(_record(f"{name}-{i:06d}", q, a, render(scene, config), scene, name, kind, shift=None))
    return out


def _pope(name: str, n: int, rng: np.random.Generator, config: ShapesConfig) -> list[VQARecord]:
    """POPE: per image one present object ('yes') and one absent object ('no'); `n` must be even so the
    split is exactly 50% yes (an odd n raises)."""
    if n % 2:
        raise ValueError(
            f"n={n} is invalid for {name}: POPE splits need an even n (one yes + one no per image)"
        )
    strategy = name.removeprefix("pope_")
    scenes = [sample_scene(rng, config) for _ in range(n // 2)]
    combos = [(c, s) for c in config.colours for s in config.shapes]
    freq = Counter((o.colour, o.shape) for sc in scenes for o in sc.objects)
    out: list[VQARecord] = []
    for i, scene in enumerate(scenes):
        present = sorted({(o.colour, o.shape) for o in scene.objects})
        absent = [cs for cs in combos if cs not in present]
        if not absent:
            raise ValueError(f"{name}: config {config} leaves no absent object to ask about")
        pos = present[int(rng.integers(len(present)))]
        if strategy == "random":
            neg = absent[int(rng.integers(len(absent)))]
        elif strategy == "popular":
            # most frequent object in this split's scenes that is absent here (ties: palette order)
            neg = max(absent, key=lambda cs: (freq[cs], -combos.index(cs)))
        else:  # adversarial: shares a colour or a shape with something present, weighted by frequency
            near = [cs for cs in absent if any(cs[0] == p[0] or cs[1] == p[1] for p in present)] or absent
            weights = np.asarray([freq[cs] + 1.0 for cs in near])
            neg = near[int(rng.choice(len(near), p=weights / weights.sum()))]
        image = render(scene, config)
        pair = [(pos, "yes"), (neg, "no")]
        if rng.integers(2):
            pair.reverse()
        for j, ((c, s), ans) in enumerate(pair):
            out.append(
                _record(
                    f"{name}-{2 * i + j:06d}",
                    existence_question(c, s, pope=True),
                    ans,
                    image,
                    scene,
                    name,
                    "existence",
                    pope_split=strategy,
                    object=f"{c} {s}",
                    image_index=i,
                    shift=None,
                )
            )
    return out


# (scene for image 0, scene for image 1), (question 0, question 1)
_Pairing = tuple[tuple[Scene, Scene], tuple[str, str]]


def _nb_existence(rng: np.random.Generator, config: ShapesConfig) -> _Pairing:
    """Two scenes and two objects A, B (sharing colour or shape when possible): scene 0 has A and not B,
    scene 1 has B and not A; q0 asks about A, q1 about B."""
    combos = [(s, c) for c in config.colours for s in config.shapes]
    if len(combos) < 2:
        raise ValueError(f"naturalbench needs at least 2 colour/shape combinations, config {config}")
    a = combos[int(rng.integers(len(combos)))]
    near = [x for x in combos if x != a and (x[0] == a[0] or x[1] == a[1])]
    pool = near or [x for x in combos if x != a]
    b = pool[int(rng.integers(len(pool)))]
    s0 = sample_scene(rng, config, required=[(a[0], a[1], None)], allow=lambda s, c, z: (s, c) != b)
    s1 = sample_scene(rng, config, required=[(b[0], b[1], None)], allow=lambda s, c, z: (s, c) != a)
    q0, q1 = existence_question(a[1], a[0]), existence_question(b[1], b[0])
    return (s0, s1), (q0, q1)


def _nb_relation(rng: np.random.Generator, config: ShapesConfig) -> _Pairing | None:
    """A scene with two uniquely named objects clearly apart on one axis, and its mirror image on that
    axis; q0 asks the relation true in scene 0, q1 the opposite one."""
    if config.max_objects < 2:
        return None
    for _ in range(200):
        lo = max(2, config.min_objects)
        scene = sample_scene(rng, config, n_objects=int(rng.integers(lo, config.max_objects + 1)))
        refs = unique_referents(scene)
        pairs = []
        for a in refs:
            for b in refs:
                if a is b:
                    continue
                if abs(b.x - a.x) >= REL_MARGIN:
                    pairs.append((a, b, "x"))
                if abs(b.y - a.y) >= REL_MARGIN:
                    pairs.append((a, b, "y"))
        if not pairs:
            continue
        a, b, axis = pairs[int(rng.integers(len(pairs)))]
        if axis == "x":
            rel, opp = ("left of", "right of") if a.x < b.x else ("right of", "left of")
        else:
            rel, opp = ("above", "below") if a.y < b.y else ("below", "above")
        return (scene, scene.mirrored(axis)), (relation_question(a, b, rel), relation_question(a, b, opp))
    return None


def _naturalbench(name: str, n: int, rng: np.random.Generator, config: ShapesConfig) -> list[VQARecord]:
    """`n` groups of 4 records: answers[image][question] = [[yes, no], [no, yes]]."""
    out: list[VQARecord] = []
    for g in range(n):
        design = ("existence", "relation")[int(rng.integers(2))]
        built = _nb_relation(rng, config) if design == "relation" else None
        if built is None:
            design = "existence"
            built = _nb_existence(rng, config)
        scenes, questions = built
        shift = SHIFT_NAMES[int(rng.integers(len(SHIFT_NAMES)))]
        strength = float(rng.uniform(0.5, 1.0))
        images = [apply_shift(sc, config, shift, rng, strength) for sc in scenes]
        for i in range(2):
            for qi in range(2):
                answer = "yes" if i == qi else "no"
                out.append(
                    _record(
                        f"{name}-{g:06d}-{i}{qi}",
                        questions[qi],
                        answer,
                        images[i],
                        scenes[i],
                        name,
                        design,
                        group=g,
                        image_index=i,
                        question_index=qi,
                        shift=shift,
                        shift_strength=strength,
                    )
                )
    return out


def _adversarial(name: str, n: int, rng: np.random.Generator, config: ShapesConfig) -> list[VQARecord]:
    """Target + near-duplicate distractor (one attribute differs) + fillers sharing neither colour nor shape
    with them, so every question below has a unique, attribute-dependent answer."""
    if config.max_objects < 2:
        raise ValueError(f"{name} needs max_objects >= 2, config has {config.max_objects}")
    attrs = [a for a, vals in (("colour", config.colours), ("shape", config.shapes)) if len(vals) >= 2]
    if not attrs:
        raise ValueError(f"{name} needs >= 2 colours or >= 2 shapes in the config")
    out: list[VQARecord] = []
    for i in range(n):
        attr = attrs[int(rng.integers(len(attrs)))]
        t_shape = config.shapes[int(rng.integers(len(config.shapes)))]
        t_colour = config.colours[int(rng.integers(len(config.colours)))]
        t_size = config.sizes[int(rng.integers(len(config.sizes)))]
        if attr == "colour":
            others = [c for c in config.colours if c != t_colour]
            d_shape, d_colour = t_shape, others[int(rng.integers(len(others)))]
        else:
            others = [s for s in config.shapes if s != t_shape]
            d_shape, d_colour = others[int(rng.integers(len(others)))], t_colour
        used_c, used_s = {t_colour, d_colour}, {t_shape, d_shape}
        free_c = [c for c in config.colours if c not in used_c]
        free_s = [s for s in config.shapes if s not in used_s]
        lo_fill = max(0, config.min_objects - 2)
        n_fill = int(rng.integers(lo_fill, config.max_objects - 1)) if free_c and free_s else 0
        scene = sample_scene(
            rng,
            config,
            n_objects=2 + n_fill,
            required=[(t_shape, t_colour, t_size), (d_shape, d_colour, t_size)],
            allow=lambda s, c, z, uc=used_c, us=used_s: c not in uc and s not in us,
        )
        qs: list[tuple[str, str, str]] = [
            (f"How many {t_colour} {t_shape}s are there?", "1", "count"),
        ]
        # the lure count: the attribute target and distractor share (fillers never have it) -> "2"
        if attr == "colour":
            qs.append((f"How many {t_shape}s are there?", "2", "count"))
        else:
            qs.append((f"How many {t_colour} objects are there?", "2", "count"))
        if attr == "colour":
            absent_c = [c for c in config.colours if c not in used_c]
            no_q = (
                existence_question(absent_c[int(rng.integers(len(absent_c)))], t_shape) if absent_c else None
            )
            qs.append((f"What shape is the {t_colour} object?", t_shape, "shape"))
        else:
            absent_s = [s for s in config.shapes if s not in used_s]
            no_q = (
                existence_question(t_colour, absent_s[int(rng.integers(len(absent_s)))]) if absent_s else None
            )
            qs.append((f"What colour is the {t_shape}?", t_colour, "colour"))
        if no_q is None or rng.integers(2):
            qs.append((existence_question(t_colour, t_shape), "yes", "existence"))
        else:
            qs.append((no_q, "no", "existence"))
        # kinds uniform (count / attribute / existence), then uniform within the kind
        kinds = sorted({k for _q, _a, k in qs})
        kind = kinds[int(rng.integers(len(kinds)))]
        same_kind = [x for x in qs if x[2] == kind]
        q, a, kind = same_kind[int(rng.integers(len(same_kind)))]
        target = ShapeObject(t_shape, t_colour, t_size, 0.0, 0.0).describe()
        distractor = ShapeObject(d_shape, d_colour, t_size, 0.0, 0.0).describe()
        out.append(
            _record(
                f"{name}-{i:06d}",
                q,
                a,
                render(scene, config),
                scene,
                name,
                kind,
                distractor_attr=attr,
                target=target,
                distractor=distractor,
                shift=None,
            )
        )
    return out


_BUILDERS: dict[str, Callable[[str, int, np.random.Generator, ShapesConfig], list[VQARecord]]] = {
    "train": _clean,
    "val": _clean,
    "test": _clean,
    "pope_random": _pope,
    "pope_popular": _pope,
    "pope_adversarial": _pope,
    "naturalbench": _naturalbench,
    "adversarial": _adversarial,
}


def build_split(name: str, n: int, seed: int, config: ShapesConfig | None = None) -> list[VQARecord]:
    """Build `n` records of split `name` (for `naturalbench`, `n` groups = 4n records); deterministic."""
    if name not in _BUILDERS:
        raise ValueError(f"unknown split {name!r}; allowed: {', '.join(SPLIT_NAMES)}")
    if not isinstance(n, (int, np.integer)) or n < 0:
        raise ValueError(f"n={n!r} is invalid: allowed an int >= 0")
    if not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed={seed!r} is invalid: allowed an int >= 0")
    config = config or ShapesConfig()
    return _BUILDERS[name](name, int(n), split_rng(name, int(seed)), config)
