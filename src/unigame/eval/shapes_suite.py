"""The ShapesWorld suite: every benchmark of the paper, reproduced on scenes whose truth is known.

`run_shapes_suite` measures, through the unified-model protocol only (`answer`, `caption`,
`generate_images`, `understanding_loss`, `visual_tokens`):

* understanding: clean VQA (VQAv2 analogue), POPE random/popular/adversarial, NaturalBench-style
  groups under distribution shift, the adversarial (near-duplicate distractor) split;
* robustness: accuracy under a pixel-space L-inf PGD attack (`unigame.eval.attacks`);
* generation: GenEval's six tasks on ShapesWorld prompts, judged exactly by reading the image back
  (`unigame.data.shapes.judge`) and scored with `geneval_scores`;
* self-consistency (Ask-Solve-Generate): mean Solver Token Entropy of the greedy answers on the
  clean and shifted questions, and how often the majority of 7 answers (greedy + 6 sampled) is
  right, for adapters with `answer_entropies` / `sample_answers`;
* consistency: UnifiedBench protocol 1 (caption -> regenerate -> image-feature cosine under two
  encoders), the Nonunified score (the model's understanding judging its own generations) and the
  paper's Consistency Score with the strict GenEval analogue in place of WISE.

Sizes: `DEFAULT_SIZES` (the full run: about a minute on 2 CPU cores for the tiny Janus) and
`QUICK_SIZES` (CI: a few seconds); see `ShapesSizes`.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from unigame.data.generalist import match_question
from unigame.data.records import VQARecord
from unigame.data.shapes import (
    REL_MARGIN,
    Scene,
    ShapeObject,
    ShapesConfig,
    caption,
    judge,
    relation_holds,
    sample_scene,
)
from unigame.data.splits import build_split
from unigame.eval.attacks import pgd_report
from unigame.eval.common import (
    SuiteResult,
    adapter_device,
    exact_match,
    generate,
    naturalbench_report,
    pixels_to_images,
    predict,
    records_to_pixels,
    vqa_report,
)
from unigame.eval.metrics import (
    GENEVAL_TASKS,
    consistency_score,
    geneval_scores,
    majority_vote,
    nonunified_report,
    normalize_vqa_answer,
    pope_metrics,
    solver_sampling_schedule,
    solver_token_entropy,
    unifiedbench_score,
)

__all__ = [
    "DEFAULT_SIZES",
    "QUICK_SIZES",
    "ShapesSizes",
    "geneval_correct",
    "run_shapes_suite",
    "shapes_geneval_prompts",
]

POPE_SPLITS = ("random", "popular", "adversarial")


@dataclass(frozen=True)
class ShapesSizes:
    """How many items each part of the shapes suite uses (defaults = `DEFAULT_SIZES`).

    Args:
        clean: clean VQA questions (test split).
        pope: questions per POPE split (even: one yes + one no per image).
        naturalbench: NaturalBench-style groups (4 questions each).
        adversarial: questions of the adversarial (distractor) split.
        pgd: clean-test questions attacked by PGD (the first `pgd` of the clean questions).
        pgd_eps: L-inf budgets in pixel units ([0, 1] scale; 8/255 = 8 grey levels).
        pgd_steps: PGD iterations per budget (step size 2.5 * eps / steps).
        generation: prompts per GenEval task (6 tasks).
        unifiedbench: images captioned and regenerated (the first of the clean test images).
        ste: questions of each of the clean test and the shifted (NaturalBench-style) splits whose
            greedy answers' Solver Token Entropy is averaged (the first of each).
        self_consistency: clean test questions answered 7 times (greedy + 6 samples) for the
            majority vote's accuracy (the first of them).
        batch_size: questions per model call.
        generation_batch_size: prompts per text-to-image call.
    """

    clean: int = 1000
    pope: int = 500
    naturalbench: int = 150
    adversarial: int = 500
    pgd: int = 200
    pgd_eps: tuple[float, ...] = (4 / 255, 8 / 255)
    pgd_steps: int = 5
    generation: int = 50
    unifiedbench: int = 100
    ste: int = 200
    self_consistency: int = 200
    batch_size: int = 64
    generation_batch_size: int = 32

    def __post_init__(self) -> None:
        errors = [
            f"ShapesSizes.{k}={v} must be >= 1"
            for k, v in asdict(self).items()
            if k not in ("pgd_eps", "pgd_steps") and v < 1
        ]
        if self.pope % 2:
            errors.append(f"ShapesSizes.pope={self.pope} must be even (one yes + one no question per image)")
        if self.pgd_steps < 1:
            errors.append(f"ShapesSizes.pgd_steps={self.pgd_steps} must be >= 1")
        if not self.pgd_eps or any(not 0 < e <= 1 for e in self.pgd_eps):
            errors.append(f"ShapesSizes.pgd_eps={self.pgd_eps} must be non-empty budgets in (0, 1]")
        if errors:
            raise ValueError("invalid ShapesSizes:\n  - " + "\n  - ".join(errors))


DEFAULT_SIZES = ShapesSizes()
QUICK_SIZES = ShapesSizes(
    clean=32,
    pope=16,
    naturalbench=6,
    adversarial=24,
    pgd=8,
    pgd_steps=2,
    generation=2,
    unifiedbench=6,
    ste=16,
    self_consistency=8,
    batch_size=32,
    generation_batch_size=16,
)


# ------------------------------------------------------------------------------ GenEval analogue
def _two_shapes(rng: np.random.Generator, config: ShapesConfig) -> tuple[str, str]:
    a, b = rng.choice(len(config.shapes), size=2, replace=False)
    return config.shapes[int(a)], config.shapes[int(b)]


def _pick(rng: np.random.Generator, values: Sequence[str]) -> str:
    return values[int(rng.integers(len(values)))]


def _caption_relation(scene: Scene) -> tuple[ShapeObject, str, ShapeObject]:
    """(a, relation, b) as `caption` words a two-object scene: "a <a> to the left of / above /
    below a <b>", with a the leftmost object (tests pin the agreement with `caption`)."""
    a, b = sorted(scene.objects, key=lambda o: (o.x, o.y))
    dx, dy = b.x - a.x, b.y - a.y
    if abs(dx) >= abs(dy):
        return a, "left of", b
    return a, ("above" if dy > 0 else "below"), b


def _prompt(tag: str, scene: Scene, include: list[dict], exclude: list[dict] | None = None) -> dict[str, Any]:
    return {
        "tag": tag,
        "include": include,
        "exclude": exclude or [],
        "prompt": caption(scene),
        "scene": scene.to_dict(),
    }


def _task_prompt(tag: str, rng: np.random.Generator, config: ShapesConfig) -> dict[str, Any]:
    """One prompt of a GenEval task as a ShapesWorld scene; classes are shapes, as GenEval's are
    object categories, and the prompt is the scene's caption (the language the model knows)."""
    shape, colour = _pick(rng, config.shapes), _pick(rng, config.colours)
    if tag == "single_object":
        scene = sample_scene(rng, config, n_objects=1, required=[(shape, colour, None)])
        return _prompt(tag, scene, [{"class": shape, "count": 1}])
    if tag == "colors":
        scene = sample_scene(rng, config, n_objects=1, required=[(shape, colour, None)])
        return _prompt(tag, scene, [{"class": shape, "count": 1, "color": colour}])
    if tag == "counting":
        n = int(rng.integers(2, max(2, config.max_objects) + 1))  # counts the world holds (<= 4)
        scene = sample_scene(rng, config, n_objects=n, required=[(shape, colour, None)] * n)
        return _prompt(tag, scene, [{"class": shape, "count": n}], [{"class": shape, "count": n + 1}])
    s1, s2 = _two_shapes(rng, config)
    if tag == "color_attr":
        c1, c2 = (config.colours[int(i)] for i in rng.choice(len(config.colours), size=2, replace=False))
        scene = sample_scene(rng, config, n_objects=2, required=[(s1, c1, None), (s2, c2, None)])
        return _prompt(
            tag, scene, [{"class": s1, "count": 1, "color": c1}, {"class": s2, "count": 1, "color": c2}]
        )
    scene = sample_scene(
        rng, config, n_objects=2, required=[(s1, _pick(rng, config.colours), None), (s2, colour, None)]
    )
    if tag == "two_object":
        return _prompt(tag, scene, [{"class": s1, "count": 1}, {"class": s2, "count": 1}])
    if tag == "position":
        a, relation, b = _caption_relation(scene)
        return _prompt(
            tag,
            scene,
            [{"class": b.shape, "count": 1}, {"class": a.shape, "count": 1, "position": [relation, 0]}],
        )
    raise ValueError(f"unknown GenEval task {tag!r}; allowed: {', '.join(GENEVAL_TASKS)}")


# The paper's easy / medium / hard tiers over GenEval's tasks: one object; two objects with
# attribute binding; counting and spatial relations.
GENEVAL_TIERS: dict[str, str] = {
    "single_object": "easy",
    "colors": "easy",
    "two_object": "medium",
    "color_attr": "medium",
    "counting": "hard",
    "position": "hard",
}
EVAL_PROMPT_STREAM = 0x6E6E  # the suite's own random stream; training prompts draw from another


def shapes_geneval_prompts(
    config: ShapesConfig, n_per_task: int, seed: int, stream: int = EVAL_PROMPT_STREAM
) -> list[dict[str, Any]]:
    """GenEval-style prompts from ShapesWorld scenes, `n_per_task` for each of GenEval's six tasks.

    Each is a GenEval metadata row (tag, include, exclude, prompt, with GenEval's keys "class",
    "count", "color", "position") plus the scene it was captioned from. Two-object tasks need two
    shapes (and color_attr two colours) in the config; tasks the config cannot express are left out.
    Deterministic for (config, n_per_task, seed, stream); the suite uses the default `stream`.
    """
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), int(stream)]))
    tasks = [
        t
        for t in GENEVAL_TASKS
        if t in ("single_object", "colors", "counting")
        or (len(config.shapes) >= 2 and (t != "color_attr" or len(config.colours) >= 2))
    ]
    return [_task_prompt(tag, rng, config) for tag in tasks for _ in range(n_per_task)]


def geneval_strict_correct(objects: Sequence[ShapeObject], prompt: Mapping[str, Any]) -> bool:
    """The strict GenEval analogue: GenEval's rule, and exactly as many objects as the prompt's scene
    (a blotchy image can pass GenEval's own rule by accident, which the exact judge can see)."""
    return geneval_correct(objects, prompt["include"], prompt["exclude"]) and len(objects) == len(
        prompt["scene"]["objects"]
    )


def geneval_correct(
    objects: Sequence[ShapeObject],
    include: Sequence[dict[str, Any]],
    exclude: Sequence[dict[str, Any]] = (),
    margin: float = REL_MARGIN / 2,
) -> bool:
    """GenEval's decision rule applied to objects read from an image.

    include: at least `count` objects of the class (shape); with "color", at least `count` of them
    have it (our judge has no detector confidence to rank by, so any `count` may satisfy it); with
    "position" [relation, j], every chosen object stands in that relation to every object chosen
    for include[j], centres more than `margin` (fraction of the image) apart on the axis.
    exclude: fewer than `count` objects of the class.
    """
    chosen: list[list[ShapeObject] | None] = []
    correct = True
    for req in include:
        found = [o for o in objects if o.shape == req["class"]]
        if "color" in req:
            found = [o for o in found if o.colour == req["color"]]
        found = found[: req["count"]]
        matched = len(found) >= req["count"]
        if matched and "position" in req:
            relation, target = req["position"]
            targets = chosen[target] if target < len(chosen) else None
            matched = targets is not None and all(
                relation_holds(o, t, relation, margin) for o in found for t in targets
            )
        correct &= matched
        chosen.append(found if matched else None)
    for req in exclude:
        if sum(o.shape == req["class"] for o in objects) >= req["count"]:
            correct = False
    return correct


# ---------------------------------------------------------------------------------------- suite
@contextmanager
def _timed(timings: dict[str, float], name: str) -> Iterator[None]:
    start = time.perf_counter()
    yield
    timings[name] = round(time.perf_counter() - start, 3)


def _pope(
    adapter: Any, config: ShapesConfig, sizes: ShapesSizes, seed: int, progress: bool
) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for split in POPE_SPLITS:
        records = build_split(f"pope_{split}", sizes.pope, seed, config)
        predictions = predict(adapter, records, sizes.batch_size, f"POPE {split}", progress)
        out[split] = pope_metrics(predictions, [r.answer for r in records])
    out["mean_accuracy"] = float(np.mean([out[s]["accuracy"] for s in POPE_SPLITS]))
    out["mean_f1"] = float(np.mean([out[s]["f1"] for s in POPE_SPLITS]))
    return out


def _naturalbench(
    adapter: Any, config: ShapesConfig, sizes: ShapesSizes, seed: int, progress: bool
) -> dict[str, Any]:
    records = build_split("naturalbench", sizes.naturalbench, seed, config)
    predictions = predict(adapter, records, sizes.batch_size, "NaturalBench-style", progress)
    report = naturalbench_report(records, predictions) | {
        "accuracy": vqa_report(records, predictions)["accuracy"]
    }
    by_shift: dict[str, list[int]] = {}
    for i, record in enumerate(records):
        by_shift.setdefault(record.meta["shift"], []).append(i)
    report["per_shift_g_acc"] = {
        shift: naturalbench_report([records[i] for i in idx], [predictions[i] for i in idx])["g_acc"]
        for shift, idx in sorted(by_shift.items())
    }
    return report


def _generation(
    adapter: Any, config: ShapesConfig, sizes: ShapesSizes, seed: int, progress: bool
) -> tuple[dict[str, Any], list[dict[str, Any]], np.ndarray, list[list[ShapeObject]]]:
    """GenEval analogue: (scores, prompts, images (N, H, W, 3) uint8, judged objects per image)."""
    prompts = shapes_geneval_prompts(config, sizes.generation, seed)
    generator = torch.Generator().manual_seed(seed)
    images = generate(
        adapter,
        [p["prompt"] for p in prompts],
        generator,
        sizes.generation_batch_size,
        "GenEval-style",
        progress,
    )
    judged = [judge(image, config) for image in tqdm(images, desc="judge", leave=False, disable=not progress)]
    items, strict = [], []
    for prompt, objs in zip(prompts, judged):
        correct = geneval_correct(objs, prompt["include"], prompt["exclude"])
        items.append({"task": prompt["tag"], "correct": correct})
        # GenEval's rule ignores extra objects; a blotchy image can then pass by accident, which
        # the exact judge can see, so also report the stricter "exactly the prompted objects".
        exact = geneval_strict_correct(objs, prompt)
        strict.append({"task": prompt["tag"], "correct": exact})
    scores = geneval_scores(items) | {"strict": geneval_scores(strict), "n_per_task": sizes.generation}
    by_tier: dict[str, list[bool]] = {}
    for item in strict:
        by_tier.setdefault(GENEVAL_TIERS[item["task"]], []).append(item["correct"])
    scores["strict"]["tiers"] = {tier: float(np.mean(v)) for tier, v in sorted(by_tier.items())}
    return scores, prompts, images, judged


def _nonunified(
    adapter: Any,
    prompts: list[dict[str, Any]],
    images: np.ndarray,
    judged: list[list[ShapeObject]],
    sizes: ShapesSizes,
    progress: bool,
) -> dict[str, Any]:
    """The paper's Nonunified score: ask the model, about each of its own generations x = G(y), the
    one whole-prompt question "Does this image show {y}?"; the score is the fraction it answers "no"
    (any answer other than "yes"). The exact judge (GenEval-style strict: exactly the prompted
    objects) says whether that "no" is right: `weak_generation_rate` = P(judge: wrong | model: no),
    `understanding_accuracy` = how often the model's yes/no agrees with the judge. Also per tier."""
    records = [
        VQARecord(id=f"self-{i}", question=match_question(p["prompt"]), answer="yes", image=image)
        for i, (p, image) in enumerate(zip(prompts, images))
    ]
    predictions = predict(adapter, records, sizes.batch_size, "self-judge", progress)
    says_yes = [exact_match(p, "yes") for p in predictions]
    correct = [geneval_strict_correct(objs, p) for p, objs in zip(prompts, judged)]
    report = nonunified_report(says_yes, correct)
    report["answered_neither"] = sum(
        not exact_match(p, "yes") and not exact_match(p, "no") for p in predictions
    )
    tiers: dict[str, list[int]] = {}
    for i, p in enumerate(prompts):
        tiers.setdefault(GENEVAL_TIERS[p["tag"]], []).append(i)
    report["per_tier"] = {
        tier: nonunified_report([says_yes[i] for i in idx], [correct[i] for i in idx])
        for tier, idx in sorted(tiers.items())
    }
    return report


# The self-consistency protocol (Ask-Solve-Generate's reference values): STE over the first 5 answer
# tokens; the Solver's 7 answers, greedy then 6 samples at temperatures 0.5-2.5, top-p 1.0-0.3.
STE_TOKENS = 5
SELF_CONSISTENCY_SCHEDULE = solver_sampling_schedule(7, 0.5, 2.5, 0.3, 1.0)


@torch.no_grad()
def _ste(
    adapter: Any, splits: dict[str, Sequence[VQARecord]], sizes: ShapesSizes, progress: bool
) -> dict[str, Any] | None:
    """Mean Solver Token Entropy (nats) of the greedy answers, per split; None for an adapter without
    `answer_entropies`. Higher: the model is less sure of its first answer tokens."""
    if not callable(getattr(adapter, "answer_entropies", None)):
        return None
    device = adapter_device(adapter)
    out: dict[str, Any] = {}
    for name, records in splits.items():
        values: list[float] = []
        for start in tqdm(
            range(0, len(records), sizes.batch_size), desc=f"STE {name}", leave=False, disable=not progress
        ):
            batch = records[start : start + sizes.batch_size]
            pixels = records_to_pixels(batch).to(device)  # STE reads the first 5 tokens: decode 5
            _, entropies = adapter.answer_entropies(pixels, [r.question for r in batch], STE_TOKENS)
            values += [solver_token_entropy(row, STE_TOKENS) for row in entropies.tolist()]
        out[name] = float(np.mean(values))
    out["n"] = {name: len(records) for name, records in splits.items()}
    return out


@torch.no_grad()
def _self_consistency(
    adapter: Any, records: Sequence[VQARecord], sizes: ShapesSizes, seed: int, progress: bool
) -> dict[str, Any] | None:
    """How often the majority of the model's 7 answers (greedy first, ties to the earliest) is right
    by the exact truth, beside the greedy answer's accuracy on the same questions and the mean
    majority share; None for an adapter without `sample_answers`."""
    if not callable(getattr(adapter, "sample_answers", None)):
        return None
    device = adapter_device(adapter)
    generator = torch.Generator(device=device).manual_seed(seed + 2)
    majority_right, greedy_right, shares = [], [], []
    for start in tqdm(
        range(0, len(records), sizes.batch_size), desc="self-consistency", leave=False, disable=not progress
    ):
        batch = records[start : start + sizes.batch_size]
        pixels = records_to_pixels(batch).to(device)
        questions = [r.question for r in batch]
        answers = [
            adapter.sample_answers(pixels, questions, temperature, top_p, generator)
            for temperature, top_p in SELF_CONSISTENCY_SCHEDULE
        ]  # one list per schedule entry; the first is greedy
        for i, record in enumerate(batch):
            votes = [normalize_vqa_answer(entry[i]) for entry in answers]
            majority, share, _ = majority_vote(votes)
            truth = normalize_vqa_answer(record.answer)
            majority_right.append(majority == truth)
            greedy_right.append(votes[0] == truth)
            shares.append(share)
    return {
        "accuracy": float(np.mean(majority_right)),
        "greedy_accuracy": float(np.mean(greedy_right)),
        "majority_share": float(np.mean(shares)),
        "samples": len(SELF_CONSISTENCY_SCHEDULE),
        "n": len(records),
    }


@torch.no_grad()
def _unifiedbench(
    adapter: Any,
    scorer: Any | None,
    records: Sequence[VQARecord],
    sizes: ShapesSizes,
    seed: int,
    progress: bool,
) -> tuple[dict[str, Any], list[tuple[np.ndarray, str]]]:
    """Protocol 1: caption each image, regenerate from the caption, compare image features.

    Encoders: `clip` (the scorer's image tower, when a scorer is given) and `vision` (the model's
    own frozen understanding encoder: its visual tokens mean-pooled). Also reports the same score
    on shuffled pairs (image i vs the regeneration of image i+1), the floor that unrelated images
    reach, since feature cosines sit far above 0 even then. Returns the report and (image, label)
    examples for the HTML panel.
    """
    device = adapter_device(adapter)
    bs = sizes.generation_batch_size
    captions: list[str] = []
    regenerated: list[torch.Tensor] = []
    features: dict[str, tuple[list[torch.Tensor], list[torch.Tensor]]] = {"vision": ([], [])}
    if scorer is not None:
        features = {"clip": ([], []), **features}
    generator = torch.Generator().manual_seed(seed + 1)
    for start in tqdm(range(0, len(records), bs), desc="UnifiedBench", leave=False, disable=not progress):
        pixels = records_to_pixels(records[start : start + bs]).to(device)  # (B, 3, H, W)
        batch_captions = list(adapter.caption(pixels))
        regen = torch.from_numpy(generate(adapter, batch_captions, generator, bs, progress=False))
        regen = regen.permute(0, 3, 1, 2).float().div(255).to(device)  # (B, 3, H', W')
        for x, slot in ((pixels, 0), (regen, 1)):
            if scorer is not None:
                features["clip"][slot].append(scorer.image_features(x).float().cpu())  # (B, E)
            pooled = adapter.visual_tokens(x).float().mean(1)  # (B, D)
            features["vision"][slot].append(F.normalize(pooled, dim=-1).cpu())
        captions += batch_captions
        regenerated.append(regen.cpu())
    paired: dict[str, list[float]] = {}
    shuffled: dict[str, list[float]] = {}
    for name, (originals, regens) in features.items():
        a, b = torch.cat(originals), torch.cat(regens)  # (N, E) each, unit norm
        paired[name] = (a * b).sum(-1).tolist()
        shuffled[name] = (a * b.roll(-1, dims=0)).sum(-1).tolist()
    report: dict[str, Any] = {
        "score": unifiedbench_score(paired),
        "score_shuffled": unifiedbench_score(shuffled),
        "n": len(records),
    }
    report |= {f"{name}_cosine": float(np.mean(values)) for name, values in paired.items()}
    report |= {f"{name}_cosine_shuffled": float(np.mean(values)) for name, values in shuffled.items()}
    examples: list[tuple[np.ndarray, str]] = []
    regen_images = pixels_to_images(torch.cat(regenerated))
    for record, text, image in list(zip(records, captions, regen_images))[:4]:
        examples += [
            (record.image, f"input: {record.caption}"),
            (image, f"from caption: {text or '(empty)'}"),
        ]
    return report, examples


def run_shapes_suite(
    adapter: Any,
    scorer: Any | None = None,
    config: ShapesConfig | None = None,
    sizes: ShapesSizes = DEFAULT_SIZES,
    seed: int = 0,
    progress: bool = True,
) -> SuiteResult:
    """Run the whole ShapesWorld suite on a unified model (see the module docstring).

    `adapter` implements the unified-model protocol; `scorer` is a `ClipScorer` (or anything with
    `image_features(pixels) -> (B, E)` normalised features), the first UnifiedBench encoder (None:
    the model's own vision encoder only). `config` must be the world the model was trained on.
    `seed` fixes every split, prompt and sampling draw. Metric units: fractions in [0, 1], cosines
    in [-1, 1], losses in nats.
    """
    config = config or ShapesConfig()
    if hasattr(adapter, "model"):
        adapter.model.eval()  # no dropout while measuring
    timings: dict[str, float] = {}
    metrics: dict[str, Any] = {}
    n_test = max(sizes.clean, sizes.pgd, sizes.unifiedbench, sizes.ste, sizes.self_consistency)
    with _timed(timings, "build_data"):
        test = build_split("test", n_test, seed, config)  # prefix-stable: test[:k] is the same for any n
        adversarial = build_split("adversarial", sizes.adversarial, seed, config)
    with _timed(timings, "clean_vqa"):
        clean = test[: sizes.clean]
        metrics["clean_vqa"] = vqa_report(
            clean, predict(adapter, clean, sizes.batch_size, "clean VQA", progress)
        )
    with _timed(timings, "pope"):
        metrics["pope"] = _pope(adapter, config, sizes, seed, progress)
    with _timed(timings, "naturalbench"):
        metrics["naturalbench"] = _naturalbench(adapter, config, sizes, seed, progress)
    with _timed(timings, "self_consistency"):
        shifted = build_split("naturalbench", -(-sizes.ste // 4), seed, config)[: sizes.ste]
        ste = _ste(adapter, {"clean": test[: sizes.ste], "shifted": shifted}, sizes, progress)
        consistency = _self_consistency(adapter, test[: sizes.self_consistency], sizes, seed, progress)
        if ste is not None:
            metrics["ste"] = ste
        if consistency is not None:
            metrics["self_consistency"] = consistency
    with _timed(timings, "adversarial"):
        metrics["adversarial_split"] = vqa_report(
            adversarial, predict(adapter, adversarial, sizes.batch_size, "adversarial split", progress)
        )
    with _timed(timings, "pgd"):
        metrics["pgd"] = pgd_report(
            adapter, test[: sizes.pgd], sizes.pgd_eps, sizes.pgd_steps, sizes.generation_batch_size, progress
        )
    with _timed(timings, "generation"):
        metrics["geneval"], prompts, images, judged = _generation(adapter, config, sizes, seed, progress)
    with _timed(timings, "nonunified"):
        metrics["nonunified"] = _nonunified(adapter, prompts, images, judged, sizes, progress)
    with _timed(timings, "unifiedbench"):
        metrics["unifiedbench"], ub_examples = _unifiedbench(
            adapter, scorer, test[: sizes.unifiedbench], sizes, seed, progress
        )
    # WISE's stand-in is the strict GenEval analogue: under GenEval's own rule, pure noise from an
    # untrained model already scores ~0.3 (blotches read as objects), which would inflate the score.
    wise = metrics["geneval"]["strict"]["overall"]
    metrics["consistency"] = {
        "score": consistency_score(metrics["unifiedbench"]["score"], wise),
        "unifiedbench": metrics["unifiedbench"]["score"],
        "wise_analogue": wise,
    }
    metrics["shift_gap_points"] = 100 * (
        metrics["clean_vqa"]["accuracy"] - metrics["naturalbench"]["accuracy"]
    )
    timings["total"] = round(sum(timings.values()), 3)
    per_task = {tag: [i for i, p in enumerate(prompts) if p["tag"] == tag][:2] for tag in GENEVAL_TASKS}
    generation_panel = [
        (images[i], f"{prompts[i]['tag']}: {prompts[i]['prompt']}") for idx in per_task.values() for i in idx
    ]
    return SuiteResult(
        metrics=metrics,
        sizes=asdict(sizes),
        timings_s=timings,
        panels={"generation": generation_panel, "unifiedbench": ub_examples},
    )
