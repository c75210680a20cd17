"""The generalist tasks a base learns besides VQA: checking a caption, and asking a question.

A base that is not tuned to the post-training task still has to understand images in general, as
Janus-Pro does before VQAv2. Two tasks give it that without the target's questions:

* **caption matching** — "Does this image show {caption}?" answered yes or no. The negatives
  describe the same scene with one object's colour, shape or size changed, so the answer hinges
  on binding words to the image. Internal-supervision post-training asks exactly this question of
  the model's own generations.
* **asking** — "Ask a question about this image." answered with a templated question that is
  unambiguous for the scene (any kind). Ask-Solve-Generate's Proposer starts from this skill.

Neither prompt is a VQA template (`answer_question` returns None for both), so they never enter the
target task's splits or its metrics.
"""

from __future__ import annotations

import re
from dataclasses import replace

import numpy as np

from unigame.data.shapes import (
    ALL_SHAPES,
    PALETTE,
    Scene,
    ShapesConfig,
    caption,
    questions_for_scene,
)

__all__ = [
    "ASK_QUESTION",
    "MATCH_ANSWERS",
    "ask_item",
    "match_item",
    "match_question",
    "parse_match_question",
]

ASK_QUESTION = "Ask a question about this image."
MATCH_ANSWERS: tuple[str, str] = ("yes", "no")
_MATCH_RE = re.compile(r"Does this image show (.+)\?")


def match_question(text: str) -> str:
    """'Does this image show {text}?': the whole-prompt yes/no question (one question, no parts)."""
    return f"Does this image show {text}?"


def parse_match_question(question: str) -> str | None:
    """The caption inside a match question, or None when `question` is not one."""
    m = _MATCH_RE.fullmatch(question.strip())
    return m[1] if m else None


def _altered(scene: Scene, rng: np.random.Generator, config: ShapesConfig) -> Scene | None:
    """The scene with one object's colour, shape or size changed (None when nothing can change)."""
    objects = list(scene.objects)
    options = []
    for i, obj in enumerate(objects):
        for attr, values in (("colour", config.colours), ("shape", config.shapes), ("size", config.sizes)):
            others = [v for v in values if v != getattr(obj, attr)]
            options += [(i, attr, v) for v in others]
    if not options:
        return None
    i, attr, value = options[int(rng.integers(len(options)))]
    objects[i] = replace(objects[i], **{attr: value})
    return Scene(tuple(objects), scene.background)


def match_item(scene: Scene, rng: np.random.Generator, config: ShapesConfig) -> tuple[str, str]:
    """(question, answer): the scene's own caption (yes) or a one-attribute change of it (no), 50/50."""
    if rng.random() < 0.5:
        return match_question(caption(scene)), "yes"
    altered = _altered(scene, rng, config)
    if altered is None or caption(altered) == caption(scene):
        return match_question(caption(scene)), "yes"
    return match_question(caption(altered)), "no"


def ask_item(scene: Scene, rng: np.random.Generator, config: ShapesConfig) -> tuple[str, str]:
    """(ASK_QUESTION, a templated question unambiguous for this scene), kinds drawn uniformly."""
    by_kind: dict[str, list[str]] = {}
    for question, _answer, kind in questions_for_scene(scene, rng, config=config):
        by_kind.setdefault(kind, []).append(question)
    kinds = sorted(by_kind)
    kind = kinds[int(rng.integers(len(kinds)))]
    questions = by_kind[kind]
    return ASK_QUESTION, questions[int(rng.integers(len(questions)))]


def generalist_texts() -> list[str]:
    """Text the tokenizer should know for these tasks (prompts and their fixed words)."""
    words = [f"a {c} {s}" for c in PALETTE for s in ALL_SHAPES]
    return [ASK_QUESTION] + [match_question(w) for w in words]
