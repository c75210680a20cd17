"""Benchmark metrics, implemented to reproduce each benchmark's reference scorer.

Pure Python (no torch, no numpy), deterministic, and documented where the reference has quirks
that change numbers; those quirks are kept on purpose so our scores are comparable with
published ones.

Units: every score returned here is a fraction in [0, 1] (cosine means in [-1, 1]); multiply by
100 to compare with tables that print percentages. The consistency score follows the same rule.

References (facts read, code not copied):
* VQAv2/AdVQA: the official VQA evaluation (GT-Vision-Lab ``vqaEval.py``, also run by EvalAI).
* POPE: the POPE repository's ``evaluate.py``.
* NaturalBench: ``naturalbench_vqa.py`` (``extract_answer``, ``get_scores``).
* MMMU: ``eval/eval_utils.py`` of the MMMU repository.
* MMBench: CircularEval as described in the MMBench paper (Liu et al., 2023).
* GenEval: ``evaluation/summary_scores.py`` of the GenEval repository.
* Solver Token Entropy and self-consistency votes: Ask-Solve-Generate
  (mbzuai-oryx/Ask-Solve-Generate, ``self_evolving/unified_trainer.py`` and ``utils.py``).
"""

from __future__ import annotations

import math
import random
import re
from collections.abc import Hashable, Iterable, Mapping, Sequence
from typing import Any, Literal

__all__ = [
    "GENEVAL_TASKS",
    "answer_entropy",
    "circular_options",
    "consistency_score",
    "geneval_scores",
    "majority_vote",
    "mmbench_circular",
    "mmmu_accuracy",
    "mmmu_eval_open",
    "mmmu_is_correct",
    "naturalbench_correctness",
    "naturalbench_extract_answer",
    "naturalbench_scores",
    "nonunified_report",
    "nonunified_score",
    "normalize_vqa_answer",
    "parse_multiple_choice",
    "parse_open_answer",
    "parse_yes_no",
    "pope_metrics",
    "solver_sampling_schedule",
    "solver_token_entropy",
    "unifiedbench_score",
    "vqa_accuracy",
    "vqa_soft_accuracy",
]

# ---------------------------------------------------------------------------------------------
# VQAv2 / AdVQA
# ---------------------------------------------------------------------------------------------

# Punctuation handled by the reference, in the reference's order (the order matters only through
# the "space next to it" test below, which looks at the *original* text, so it is not observable).
_VQA_PUNCT = (
    ";",
    "/",
    "[",
    "]",
    '"',
    "{",
    "}",
    "(",
    ")",
    "=",
    "+",
    "\\",
    "_",
    "-",
    ">",
    "<",
    "@",
    "`",
    ",",
    "?",
    "!",
)
_DIGIT_COMMA_DIGIT = re.compile(r"\d,\d")
# The reference pattern is "(?!<=\d)(\.)(?!\d)"; its first group is a (mistyped) look-*ahead* that
# never fails in front of a '.', so the effective rule is "a period not followed by a digit".
# Hence "3.5" keeps its period while "5." and "end." lose theirs.
_PERIOD_NOT_BEFORE_DIGIT = re.compile(r"\.(?!\d)")
# The reference passes re.UNICODE (== 32) positionally as `count`, so at most 32 such periods are
# removed; kept for exactness (it only matters for very long predictions).
_PERIOD_STRIP_COUNT = int(re.UNICODE)

_NUMBER_WORDS = {
    "none": "0",
    "zero": "0",
    "one": "1",
    "two": "2",
    "three": "3",
    "four": "4",
    "five": "5",
    "six": "6",
    "seven": "7",
    "eight": "8",
    "nine": "9",
    "ten": "10",
}
_ARTICLES = frozenset({"a", "an", "the"})

# Canonical spelling -> the unpunctuated or half-punctuated spellings the reference rewrites to it.
# Reference entries whose keys hold capitals ("Im", "Ive", "Id've", "I'dve") are omitted: the text is
# lower-cased before the lookup, so they can never fire. Identity entries ("let's", "she's") are
# omitted as no-ops. "somebody'd" -> "somebodyd" is the reference's (reversed) entry, kept as is.
_CONTRACTION_SPELLINGS: dict[str, tuple[str, ...]] = {
    "ain't": ("aint",),
    "aren't": ("arent",),
    "can't": ("cant",),
    "could've": ("couldve",),
    "couldn't": ("couldnt",),
    "couldn't've": ("couldn'tve", "couldnt've"),
    "didn't": ("didnt",),
    "doesn't": ("doesnt",),
    "don't": ("dont",),
    "hadn't": ("hadnt",),
    "hadn't've": ("hadnt've", "hadn'tve"),
    "hasn't": ("hasnt",),
    "haven't": ("havent",),
    "he'd": ("hed",),
    "he'd've": ("hed've", "he'dve"),
    "he's": ("hes",),
    "how'd": ("howd",),
    "how'll": ("howll",),
    "how's": ("hows",),
    "isn't": ("isnt",),
    "it'd": ("itd",),
    "it'd've": ("itd've", "it'dve"),
    "it'll": ("itll",),
    "ma'am": ("maam",),
    "mightn't": ("mightnt",),
    "mightn't've": ("mightnt've", "mightn'tve"),
    "might've": ("mightve",),
    "mustn't": ("mustnt",),
    "must've": ("mustve",),
    "needn't": ("neednt",),
    "not've": ("notve",),
    "o'clock": ("oclock",),
    "oughtn't": ("oughtnt",),
    "'ow's'at": ("ow's'at", "'ows'at", "'ow'sat"),
    "shan't": ("shant",),
    "she'd've": ("shed've", "she'dve"),
    "should've": ("shouldve",),
    "shouldn't": ("shouldnt",),
    "shouldn't've": ("shouldnt've", "shouldn'tve"),
    "somebodyd": ("somebody'd",),
    "somebody'd've": ("somebodyd've", "somebody'dve"),
    "somebody'll": ("somebodyll",),
    "somebody's": ("somebodys",),
    "someone'd": ("someoned",),
    "someone'd've": ("someoned've", "someone'dve"),
    "someone'll": ("someonell",),
    "someone's": ("someones",),
    "something'd": ("somethingd",),
    "something'd've": ("somethingd've", "something'dve"),
    "something'll": ("somethingll",),
    "that's": ("thats",),
    "there'd": ("thered",),
    "there'd've": ("thered've", "there'dve"),
    "there're": ("therere",),
    "there's": ("theres",),
    "they'd": ("theyd",),
    "they'd've": ("theyd've", "they'dve"),
    "they'll": ("theyll",),
    "they're": ("theyre",),
    "they've": ("theyve",),
    "'twas": ("twas",),
    "wasn't": ("wasnt",),
    "we'd've": ("wed've", "we'dve"),
    "we've": ("weve",),
    "weren't": ("werent",),
    "what'll": ("whatll",),
    "what're": ("whatre",),
    "what's": ("whats",),
    "what've": ("whatve",),
    "when's": ("whens",),
    "where'd": ("whered",),
    "where's": ("wheres",),
    "where've": ("whereve",),
    "who'd": ("whod",),
    "who'd've": ("whod've", "who'dve"),
    "who'll": ("wholl",),
    "who's": ("whos",),
    "who've": ("whove",),
    "why'll": ("whyll",),
    "why're": ("whyre",),
    "why's": ("whys",),
    "won't": ("wont",),
    "would've": ("wouldve",),
    "wouldn't": ("wouldnt",),
    "wouldn't've": ("wouldnt've", "wouldn'tve"),
    "y'all": ("yall",),
    "y'all'll": ("yall'll", "y'allll"),
    "y'all'd've": ("yall'd've", "y'alld've", "y'all'dve"),
    "you'd": ("youd",),
    "you'd've": ("youd've", "you'dve"),
    "you'll": ("youll",),
    "you're": ("youre",),
    "you've": ("youve",),
}
_CONTRACTIONS: dict[str, str] = {
    spelling: canonical for canonical, spellings in _CONTRACTION_SPELLINGS.items() for spelling in spellings
}


def _vqa_punctuation(text: str) -> str:
    """The reference's punctuation step (``processPunctuation``).

    Each listed mark is deleted when it touches a space anywhere in the text, or when the text
    holds a digit-comma-digit run anywhere (then *every* listed mark is deleted, so "1,000" ->
    "1000"); otherwise the mark becomes a space ("black/white" -> "black white"). Both tests look
    at the original text. Then periods not followed by a digit are removed.
    """
    out = text
    has_digit_comma = _DIGIT_COMMA_DIGIT.search(text) is not None
    for mark in _VQA_PUNCT:
        if has_digit_comma or (mark + " ") in text or (" " + mark) in text:
            out = out.replace(mark, "")
        else:
            out = out.replace(mark, " ")
    return _PERIOD_NOT_BEFORE_DIGIT.sub("", out, count=_PERIOD_STRIP_COUNT)


def _vqa_digits_articles(text: str) -> str:
    """The reference's ``processDigitArticle``: lower-case, number words -> digits, drop articles,
    then expand contractions, and re-join on single spaces."""
    words = [_NUMBER_WORDS.get(w, w) for w in text.lower().split()]
    words = [w for w in words if w not in _ARTICLES]
    return " ".join(_CONTRACTIONS.get(w, w) for w in words)


def normalize_vqa_answer(answer: str | None) -> str:
    """Normalise a predicted answer exactly as the official VQA evaluation does.

    Newlines and tabs become spaces, the ends are stripped, then the punctuation step and the
    digit/article/contraction step are applied. ``None`` (a missing prediction) becomes "".
    Examples: "Two." -> "2", "The dog" -> "dog", "dont" -> "don't", "1,000" -> "1000".
    """
    if answer is None:
        return ""
    text = answer.replace("\n", " ").replace("\t", " ").strip()
    return _vqa_digits_articles(_vqa_punctuation(text))


def vqa_soft_accuracy(
    prediction: str | None,
    gt_answers: Sequence[str],
    gt_normalization: Literal["reference", "full"] = "reference",
) -> float:
    """VQA accuracy of one prediction against the human answers, in [0, 1].

    acc = mean over the leave-one-out subsets of the ground truths (ten for VQAv2) of
    min(1, #matches in the subset / 3). With ten answers and m of them matching, this gives
    0.3, 0.6, 0.9, 1.0 for m = 1, 2, 3, >=4. Full credit needs at least four reference answers
    (with a single one the score is always 0), so score single-answer data by exact match instead.

    The prediction is always fully normalised (`normalize_vqa_answer`). ``gt_normalization``:

    * "reference" (default, exact): like the official scorer, the ground truths only get the
      punctuation step, and only when they are not all identical. Official VQAv2/AdVQA
      annotation answers are already normalised, so this reproduces published numbers; but a raw
      ground truth such as "Yes" or "the cube" can then never be matched.
    * "full": every ground truth gets the full normalisation; use this for our own data whose
      answers were not written in VQA's normalised form.
    """
    gts = list(gt_answers)
    if not gts:
        raise ValueError("vqa_soft_accuracy needs at least one ground-truth answer; got none")
    pred = normalize_vqa_answer(prediction)
    if gt_normalization == "full":
        gts = [normalize_vqa_answer(g) for g in gts]
    elif gt_normalization == "reference":
        if len(set(gts)) > 1:
            gts = [_vqa_punctuation(g) for g in gts]
    else:
        raise ValueError(f"gt_normalization must be 'reference' or 'full'; got {gt_normalization!r}")
    total_matches = sum(g == pred for g in gts)
    # Leaving out answer i removes one match exactly when answer i itself matches.
    per_subset = [min(1.0, (total_matches - (g == pred)) / 3.0) for g in gts]
    return sum(per_subset) / len(per_subset)


def vqa_accuracy(
    predictions: Sequence[str | None],
    gt_answers_list: Sequence[Sequence[str]],
    gt_normalization: Literal["reference", "full"] = "reference",
) -> float:
    """Mean `vqa_soft_accuracy` over questions, in [0, 1] (the official script prints x100)."""
    if len(predictions) != len(gt_answers_list):
        raise ValueError(
            f"vqa_accuracy got {len(predictions)} predictions but {len(gt_answers_list)} answer lists"
        )
    if not predictions:
        raise ValueError("vqa_accuracy got no questions")
    scores = [
        vqa_soft_accuracy(p, g, gt_normalization) for p, g in zip(predictions, gt_answers_list, strict=True)
    ]
    return sum(scores) / len(scores)


# ---------------------------------------------------------------------------------------------
# POPE
# ---------------------------------------------------------------------------------------------

_POPE_NEGATIVE_WORDS = frozenset({"No", "no", "not"})


def parse_yes_no(text: str | None) -> Literal["yes", "no"]:
    """Map a free-form answer to "yes"/"no" with POPE's rule.

    Keep the text before the first '.', delete commas, split on single spaces; "No", "no" or
    "not" among the words means "no", anything else (including "" and None) means "yes".
    Reference quirks kept: the match is case-sensitive ("NO" and "Not" read as yes) and only
    spaces separate words ("No\\nThere is" reads as yes).
    """
    if text is None:
        text = ""
    if "." in text:
        text = text.split(".")[0]
    words = text.replace(",", "").split(" ")
    return "no" if any(w in _POPE_NEGATIVE_WORDS for w in words) else "yes"


def _yes_no_label(label: str | bool, index: int) -> bool:
    if isinstance(label, bool):
        return label
    norm = label.strip().lower()
    if norm not in ("yes", "no"):
        raise ValueError(f"POPE label #{index} must be 'yes' or 'no'; got {label!r}")
    return norm == "yes"


def pope_metrics(predictions: Sequence[str | None], labels: Sequence[str | bool]) -> dict[str, float]:
    """POPE scores with "yes" as the positive class; all values are fractions in [0, 1].

    ``predictions`` are raw model outputs (parsed with `parse_yes_no`; already-parsed "yes"/"no"
    pass through unchanged). ``labels`` are "yes"/"no" (any case) or booleans (True = yes).
    ``yes_ratio`` is the fraction of *predictions* that are yes. Also returns the counts
    tp/fp/tn/fn. Where the reference would divide by zero (no predicted or no actual positives),
    precision/recall/F1 are 0.0.
    """
    if len(predictions) != len(labels):
        raise ValueError(f"pope_metrics got {len(predictions)} predictions but {len(labels)} labels")
    if not predictions:
        raise ValueError("pope_metrics got no predictions")
    pred_yes = [parse_yes_no(p) == "yes" for p in predictions]
    gold_yes = [_yes_no_label(label, i) for i, label in enumerate(labels)]
    tp = sum(p and g for p, g in zip(pred_yes, gold_yes, strict=True))
    fp = sum(p and not g for p, g in zip(pred_yes, gold_yes, strict=True))
    tn = sum(not p and not g for p, g in zip(pred_yes, gold_yes, strict=True))
    fn = sum(not p and g for p, g in zip(pred_yes, gold_yes, strict=True))
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    n = len(pred_yes)
    return {
        "accuracy": (tp + tn) / n,
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "yes_ratio": sum(pred_yes) / n,
        "tp": tp,
        "fp": fp,
        "tn": tn,
        "fn": fn,
    }


# ---------------------------------------------------------------------------------------------
# NaturalBench
# ---------------------------------------------------------------------------------------------

_NB_KEYS = ("q0_i0", "q0_i1", "q1_i0", "q1_i1")
_NB_CHOICES = {"yes_no": ("yes", "no"), "multiple_choice": ("A", "B")}


def naturalbench_extract_answer(
    text: str | None, question_type: Literal["yes_no", "multiple_choice"]
) -> str | None:
    """NaturalBench's answer extraction: "yes"/"no" (yes_no) or "A"/"B" (multiple_choice).

    Looks for each option as a whole word, case-insensitively, and returns the one that appears
    first; None when neither appears. Reference quirk kept: for multiple choice the article "a"
    counts as option A ("It is a dog" -> "A").
    """
    if question_type not in _NB_CHOICES:
        raise ValueError(f"question_type must be 'yes_no' or 'multiple_choice'; got {question_type!r}")
    if text is None:
        return None
    first, second = _NB_CHOICES[question_type]
    positions = []
    for option in (first, second):
        match = re.search(r"\b" + re.escape(option) + r"\b", text, re.IGNORECASE)
        positions.append(match.start() if match else -1)
    if positions[0] == -1 and positions[1] == -1:
        return None
    if positions[0] != -1 and positions[1] != -1:
        return first if positions[0] < positions[1] else second
    return first if positions[0] != -1 else second


def naturalbench_correctness(
    predictions: Mapping[str, str | None],
    answers: Mapping[str, str],
    question_type: Literal["yes_no", "multiple_choice"],
) -> dict[str, bool]:
    """Per-item correctness of one NaturalBench group.

    Both mappings are keyed "q{j}_i{k}" (question j on image k). Gold answers are compared
    case-insensitively for yes/no ("Yes" == "yes") and as capital letters for multiple choice.
    An unparseable prediction is wrong.
    """
    out = {}
    for key in _NB_KEYS:
        if key not in predictions or key not in answers:
            raise ValueError(f"NaturalBench group is missing item {key!r}")
        gold = answers[key].strip()
        gold = gold.lower() if question_type == "yes_no" else gold.upper()
        out[key] = naturalbench_extract_answer(predictions[key], question_type) == gold
    return out


def _nb_grid(group: Mapping[str, bool] | Sequence[Sequence[bool]], index: int) -> list[list[bool]]:
    """correct[q][i] from either mapping or nested-sequence form."""
    if isinstance(group, Mapping):
        missing = [k for k in _NB_KEYS if k not in group]
        if missing:
            raise ValueError(f"NaturalBench group #{index} is missing {missing}")
        return [[bool(group[f"q{q}_i{i}"]) for i in range(2)] for q in range(2)]
    grid = [[bool(c) for c in row] for row in group]
    if len(grid) != 2 or any(len(row) != 2 for row in grid):
        raise ValueError(f"NaturalBench group #{index} must be 2 questions x 2 images; got {group!r}")
    return grid


def naturalbench_scores(groups: Iterable[Mapping[str, bool] | Sequence[Sequence[bool]]]) -> dict[str, float]:
    """NaturalBench Q-Acc, I-Acc, G-Acc and Acc, fractions in [0, 1].

    Each group is 2 questions x 2 images, given as correctness: a mapping {"q0_i0": bool, ...}
    or a nested sequence correct[question][image].

    * q_acc: per question, right on both images (2 per group).
    * i_acc: per image, both questions right (2 per group).
    * g_acc: all four right.
    * acc: per (question, image) item.

    This equals the reference ``get_scores`` on its predictions, which are coded against
    NaturalBench's fixed answer pattern (each question has opposite answers on the two images).
    """
    q_hits = i_hits = g_hits = item_hits = n = 0
    for index, group in enumerate(groups):
        c = _nb_grid(group, index)
        q_hits += sum(c[q][0] and c[q][1] for q in range(2))
        i_hits += sum(c[0][i] and c[1][i] for i in range(2))
        g_hits += all(c[q][i] for q in range(2) for i in range(2))
        item_hits += sum(c[q][i] for q in range(2) for i in range(2))
        n += 1
    if n == 0:
        raise ValueError("naturalbench_scores got no groups")
    return {
        "q_acc": q_hits / (2 * n),
        "i_acc": i_hits / (2 * n),
        "g_acc": g_hits / n,
        "acc": item_hits / (4 * n),
    }


# ---------------------------------------------------------------------------------------------
# MMMU
# ---------------------------------------------------------------------------------------------

_MMMU_END_STRIP = (",", ".", "!", "?", ";", ":", "'")


def _choice_letters(n: int) -> list[str]:
    return [chr(ord("A") + i) for i in range(n)]


def parse_multiple_choice(response: str | None, options: Sequence[str], rng_seed: int = 42) -> str:
    """Pick the option letter a free-form response means, with MMMU's rules.

    1. Strip the marks , . ! ? ; : ' from both ends (one mark at a time, in that order) and pad
       with spaces.
    2. Letters written "(X)"; failing that, letters standing between spaces (" X ") -- a letter
       followed by a comma mid-sentence is *not* found, as in the reference.
    3. Failing that, and only if the response has more than 5 words, options whose text occurs
       in it (case-insensitive).
    4. Failing that, a random letter from ``random.Random(rng_seed)`` (the reference draws from a
       global stream seeded once with 42; a per-call seed keeps results order-independent).
    Several candidates: the one occurring last in the response wins (first listed on a tie).
    """
    if not options:
        raise ValueError("parse_multiple_choice needs at least one option")
    letters = _choice_letters(len(options))
    text = response or ""
    for mark in _MMMU_END_STRIP:
        text = text.strip(mark)
    text = f" {text} "

    candidates = [c for c in letters if f"({c})" in text]
    pattern = "({})"
    if not candidates:
        candidates = [c for c in letters if f" {c} " in text]
        pattern = " {} "
    by_content = False
    if not candidates and len(text.split()) > 5:
        lowered = text.lower()
        candidates = [c for c, opt in zip(letters, options, strict=True) if opt.lower() in lowered]
        by_content = True
    if not candidates:
        return random.Random(rng_seed).choice(letters)
    if len(candidates) == 1:
        return candidates[0]
    if by_content:
        lowered = text.lower()
        positions = [lowered.rfind(options[letters.index(c)].lower()) for c in candidates]
    else:
        positions = [text.rfind(pattern.format(c)) for c in candidates]
    return candidates[positions.index(max(positions))]


_NUM_WITH_COMMAS = re.compile(r"-?\b\d{1,3}(?:,\d{3})+\b")
_NUM_SCIENTIFIC = re.compile(r"-?\d+(?:\.\d+)?[eE][+-]?\d+")
_NUM_SIMPLE = re.compile(r"-?(?:\d+\.\d+|\.\d+|\d+\b)(?![eE][+-]?\d+)(?![,\d])")
_KEY_INDICATORS = ("could be ", "so ", "is ", "thus ", "therefore ", "final ", "answer ", "result ")
_TRIVIAL_TAILS = frozenset({":", ",", ".", "!", "?", ";", "'"})


def _mmmu_numbers(text: str) -> list[str]:
    """All number-looking substrings: comma-grouped, then scientific, then plain."""
    return _NUM_WITH_COMMAS.findall(text) + _NUM_SCIENTIFIC.findall(text) + _NUM_SIMPLE.findall(text)


def _mmmu_normalize(value: str) -> list[str | float]:
    """A number (commas removed) becomes a float rounded to 2 decimals; other text is lower-cased,
    and a single character becomes [" c", "c "] so it cannot match inside words."""
    value = value.strip()
    try:
        number = float(value.replace(",", ""))
    except ValueError:
        value = value.lower()
        return [" " + value, value + " "] if len(value) == 1 else [value]
    return [round(number, 2)]


def _mmmu_key_responses(response: str) -> list[str]:
    """The tails of the response after answer indicators ("is ", "so ", "therefore "...), one per
    line; '=' counts as an indicator on the last line. The reference splits sentences with a
    pattern that needs a capital letter *after* lower-casing, so in effect it splits on newlines only.
    """
    text = response.strip().strip(".").lower()
    lines = text.split("\n")
    keys = []
    for index, line in enumerate(lines):
        indicators = _KEY_INDICATORS + (("=",) if index == len(lines) - 1 else ())
        shortest: str | None = None
        for indicator in indicators:
            if indicator in line:
                tail = line.split(indicator)[-1].strip()
                if not shortest or len(tail) < len(shortest):
                    shortest = tail
        if shortest and shortest.strip() not in _TRIVIAL_TAILS:
            keys.append(shortest)
    return keys or [text]


def parse_open_answer(response: str | None) -> list[str | float]:
    """Candidate answers in an open-ended response, normalised as MMMU does.

    Key tails (see ``_mmmu_key_responses``) plus every number found in them, each normalised
    (numbers -> rounded floats, text -> lower case). Duplicates removed, first occurrence kept
    (the reference uses an unordered set; order does not affect scoring).
    """
    keys = _mmmu_key_responses(response or "")
    raw = list(keys)
    for key in keys:
        raw.extend(_mmmu_numbers(key))
    out: list[str | float] = []
    for item in raw:
        for norm in _mmmu_normalize(item):
            if norm not in out:
                out.append(norm)
    return out


def mmmu_eval_open(gold: str | Sequence[str], parsed: Sequence[str | float]) -> bool:
    """MMMU open-question check: a parsed number must equal a gold number (after rounding to 2
    decimals); a parsed string must *contain* a normalised gold string."""
    golds = [gold] if isinstance(gold, str) else list(gold)
    norm_gold = [n for g in golds for n in _mmmu_normalize(g)]
    for pred in parsed:
        if isinstance(pred, str):
            if any(isinstance(g, str) and g in pred for g in norm_gold):
                return True
        elif pred in norm_gold:
            return True
    return False


def mmmu_is_correct(
    response: str | None,
    answer: str | Sequence[str],
    question_type: str,
    options: Sequence[str] = (),
    rng_seed: int = 42,
) -> bool:
    """Parse one response and judge it; ``question_type`` is "multiple-choice" or "open".

    For multiple choice, ``answer`` is the gold letter (or a list of accepted letters) and the
    parsed letter must equal it exactly.
    """
    if question_type == "multiple-choice":
        letter = parse_multiple_choice(response, options, rng_seed)
        return letter == answer if isinstance(answer, str) else letter in answer
    if question_type == "open":
        return mmmu_eval_open(answer, parse_open_answer(response))
    raise ValueError(f"question_type must be 'multiple-choice' or 'open'; got {question_type!r}")


def mmmu_accuracy(items: Iterable[Mapping[str, Any]], rng_seed: int = 42) -> float:
    """MMMU accuracy in [0, 1] over items with keys response, answer, question_type, options.

    The random fallback of item i uses seed ``rng_seed + i``, so results do not depend on how the
    items were batched, and unparseable questions do not all get the same letter.
    """
    correct = n = 0
    for i, item in enumerate(items):
        for key in ("response", "answer", "question_type"):
            if key not in item:
                raise ValueError(f"MMMU item #{i} has no {key!r} field")
        correct += mmmu_is_correct(
            item["response"], item["answer"], item["question_type"], item.get("options", ()), rng_seed + i
        )
        n += 1
    if n == 0:
        raise ValueError("mmmu_accuracy got no items")
    return correct / n


# ---------------------------------------------------------------------------------------------
# MMBench circular evaluation
# ---------------------------------------------------------------------------------------------


def circular_options(options: Sequence[str], answer_index: int) -> list[tuple[list[str], str]]:
    """The N circular shifts of an N-option question, with the gold letter of each.

    Shift k presents options[k:] + options[:k] (ABCD, BCDA, CDAB, DABC); shift 0 is the
    original order.
    """
    n = len(options)
    if not 0 <= answer_index < n:
        raise ValueError(f"answer_index must be in [0, {n}); got {answer_index}")
    letters = _choice_letters(n)
    return [(list(options[k:]) + list(options[:k]), letters[(answer_index - k) % n]) for k in range(n)]


def mmbench_circular(results: Mapping[Hashable, Sequence[bool]]) -> dict[str, float]:
    """MMBench CircularEval, fractions in [0, 1].

    ``results`` maps each question to the correctness of its passes in shift order (index 0 =
    original order, as produced by `circular_options`). ``circular_accuracy``: all passes right;
    ``vanilla_accuracy``: the original-order pass right. Also ``n_questions``.
    """
    if not results:
        raise ValueError("mmbench_circular got no questions")
    circular = vanilla = 0
    for key, passes in results.items():
        if len(passes) == 0:
            raise ValueError(f"MMBench question {key!r} has no passes")
        circular += all(passes)
        vanilla += bool(passes[0])
    n = len(results)
    return {"circular_accuracy": circular / n, "vanilla_accuracy": vanilla / n, "n_questions": n}


# ---------------------------------------------------------------------------------------------
# Unified-model consistency
# ---------------------------------------------------------------------------------------------


def unifiedbench_score(similarities: Mapping[str, Sequence[float]]) -> float:
    """UnifiedBench protocol 1: mean over encoders of each encoder's mean cosine similarity.

    ``similarities[encoder]`` holds, per image, the cosine between the features of the original
    image and of its caption-then-regenerate reconstruction. Returns a cosine in [-1, 1]
    (UnifiedBench tables print it x100). Every encoder weighs the same, whatever its count.
    """
    if not similarities:
        raise ValueError("unifiedbench_score got no encoders")
    means = []
    for name, values in similarities.items():
        if len(values) == 0:
            raise ValueError(f"unifiedbench_score: encoder {name!r} has no similarities")
        means.append(sum(values) / len(values))
    return sum(means) / len(means)


def nonunified_score(judgements: Sequence[bool]) -> float:
    """Fraction in [0, 1] of the model's own generations that its own understanding judges as NOT
    matching the prompt. ``judgements[i]`` is True when the model says generation i matches
    (lower is better)."""
    if len(judgements) == 0:
        raise ValueError("nonunified_score got no judgements")
    return sum(not j for j in judgements) / len(judgements)


def nonunified_report(says_yes: Sequence[bool], judge_correct: Sequence[bool]) -> dict[str, Any]:
    """The Nonunified score of one set of generations with the exact judge's reading of it.

    ``says_yes[i]``: the model answers "yes" to "Does this image show {prompt}?" about its own
    generation i; ``judge_correct[i]``: the exact judge finds the prompt satisfied. Returns the
    score (fraction answered no), `weak_generation_rate` = P(judge wrong | model says no) (None when
    it never says no), `understanding_accuracy` = agreement of the model's answer with the judge, and
    `generation_accuracy` = the judge's acceptance rate; all fractions."""
    if len(says_yes) != len(judge_correct):
        raise ValueError(
            f"nonunified_report: {len(says_yes)} answers but {len(judge_correct)} judge verdicts"
        )
    score = nonunified_score(says_yes)
    no = [not c for y, c in zip(says_yes, judge_correct) if not y]  # judge says wrong, among the "no"s
    n = len(says_yes)
    return {
        "score": score,
        "weak_generation_rate": sum(no) / len(no) if no else None,
        "understanding_accuracy": sum(y == c for y, c in zip(says_yes, judge_correct)) / n,
        "generation_accuracy": sum(judge_correct) / n,
        "n": n,
    }


def consistency_score(unifiedbench: float, wise: float) -> float:
    """The paper's Consistency Score, 0.6 * UnifiedBench + 0.4 * WISE, as a fraction.

    Both inputs are fractions: ``unifiedbench`` as returned by `unifiedbench_score` (a mean
    cosine, at most 1), ``wise`` the WISE score in [0, 1] (or its ShapesWorld stand-in, the
    judge's accuracy). The paper writes 0.6 * UB + 0.4 * (WISE * 100) with UB in percent; that is
    exactly 100 x this value. Inputs above 1 raise, to catch percentages passed by mistake.
    """
    if not -1.0 <= unifiedbench <= 1.0:
        raise ValueError(f"unifiedbench must be a fraction in [-1, 1] (not a percentage); got {unifiedbench}")
    if not 0.0 <= wise <= 1.0:
        raise ValueError(f"wise must be a fraction in [0, 1] (not a percentage); got {wise}")
    return 0.6 * unifiedbench + 0.4 * wise


# ---------------------------------------------------------------------------------------------
# GenEval
# ---------------------------------------------------------------------------------------------

GENEVAL_TASKS = ("single_object", "two_object", "counting", "colors", "position", "color_attr")


def geneval_scores(items: Iterable[Mapping[str, Any]]) -> dict[str, float]:
    """GenEval per-task and overall scores, fractions in [0, 1].

    Each item is one generated image with its task (key "task", or "tag" as in GenEval's
    results.jsonl) and a boolean "correct". A task's score is the mean over its images; "overall"
    is the mean of the task scores present (GenEval's "avg. over tasks"), not the mean over images.
    """
    per_task: dict[str, list[bool]] = {}
    for i, item in enumerate(items):
        task = item["task"] if "task" in item else item.get("tag")
        if task not in GENEVAL_TASKS:
            raise ValueError(f"GenEval item #{i} has task {task!r}; expected one of {GENEVAL_TASKS}")
        if "correct" not in item:
            raise ValueError(f"GenEval item #{i} has no 'correct' field")
        per_task.setdefault(task, []).append(bool(item["correct"]))
    if not per_task:
        raise ValueError("geneval_scores got no items")
    scores = {task: sum(v) / len(v) for task in GENEVAL_TASKS if (v := per_task.get(task))}
    scores["overall"] = sum(scores.values()) / len(scores)
    return scores


# ---------------------------------------------------------------------------------------------
# Ask-Solve-Generate: Solver Token Entropy and self-consistency votes
# ---------------------------------------------------------------------------------------------


def solver_token_entropy(token_entropies: Sequence[float], k: int = 5) -> float:
    """Solver Token Entropy (STE): the largest next-token entropy (nats, over the full vocabulary)
    among the first `k` tokens of a greedy answer, or among all of them when it has fewer.

    `token_entropies` are a greedy decode's per-step entropies, EOS step included; a NaN entry
    (a step after EOS) ends the answer. NaN when the answer has no token at all.
    """
    if k < 1:
        raise ValueError(f"k={k} must be >= 1")
    first: list[float] = []
    for value in token_entropies[:k]:
        if value != value:  # NaN: past the end of the answer
            break
        first.append(float(value))
    return max(first) if first else math.nan


def majority_vote(answers: Sequence[str]) -> tuple[str, float, dict[str, int]]:
    """(majority answer, its share of the answers, the histogram) of already-normalised answers.

    A tie goes to the answer seen first (as the reference's `majority_vote`), so with the greedy
    answer listed first a tie keeps the greedy answer."""
    if not answers:
        raise ValueError("majority_vote got no answers")
    counts: dict[str, int] = {}
    for answer in answers:
        counts[answer] = counts.get(answer, 0) + 1
    best = max(counts.items(), key=lambda item: item[1])  # max keeps the first of equal counts
    return best[0], best[1] / len(answers), counts


def answer_entropy(counts: Mapping[str, int]) -> float:
    """Entropy in nats of an answer histogram (0 when every answer agrees; ln n when all n differ)."""
    total = sum(counts.values())
    if total <= 0:
        raise ValueError("answer_entropy got an empty histogram")
    return -sum(c / total * math.log(c / total) for c in counts.values() if c > 0)


def solver_sampling_schedule(
    n: int, t_min: float = 0.5, t_max: float = 2.5, p_min: float = 0.3, p_max: float = 1.0
) -> list[tuple[float, float]]:
    """The (temperature, top-p) of each of a Solver's `n` answers: the greedy answer (0, 1) first,
    then n - 1 samples at evenly spaced temperatures t_min..t_max with top-p falling p_max..p_min
    (a hot sample gets a narrow nucleus, as in the reference's anti-correlated schedule)."""
    if n < 1:
        raise ValueError(f"n={n} must be >= 1")
    m = n - 1
    steps = [i / (m - 1) if m > 1 else 0.0 for i in range(m)]
    return [(0.0, 1.0)] + [(t_min + (t_max - t_min) * q, p_max - (p_max - p_min) * q) for q in steps]
