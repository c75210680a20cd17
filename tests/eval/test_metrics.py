"""Known cases for every metric; each expected value names its source in a comment."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from unigame.eval.metrics import (
    circular_options,
    consistency_score,
    geneval_scores,
    mmbench_circular,
    mmmu_accuracy,
    mmmu_eval_open,
    mmmu_is_correct,
    naturalbench_correctness,
    naturalbench_extract_answer,
    naturalbench_scores,
    nonunified_report,
    nonunified_score,
    normalize_vqa_answer,
    parse_multiple_choice,
    parse_open_answer,
    parse_yes_no,
    pope_metrics,
    unifiedbench_score,
    vqa_accuracy,
    vqa_soft_accuracy,
)

# ---------------------------------------------------------------------------------------------
# VQA normalisation
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("Two.", "2"),  # EvalAI manualMap 'two' -> '2'; period not before a digit is stripped
        ("none", "0"),  # EvalAI manualMap 'none' -> '0'
        ("ten dogs", "10 dogs"),  # EvalAI manualMap 'ten' -> '10'
        ("The dog", "dog"),  # EvalAI articles list: a/an/the dropped
        ("a man's hat", "man's hat"),  # article dropped; apostrophe is not in the punct list
        ("dont", "don't"),  # EvalAI contractions: "dont" -> "don't"
        ("whats up?", "what's up"),  # contractions "whats" -> "what's"; '?' not next to a space -> ' '
        ("YES", "yes"),  # processDigitArticle lower-cases
        ("1,000", "1000"),  # digit,digit present -> every listed mark deleted without a space
        ("black/white", "black white"),  # '/' touches no space -> replaced by a space
        ("yes, it is", "yes it is"),  # ', ' touches a space -> ',' deleted
        ("3.5", "3.5"),  # period followed by a digit is kept
        ("5.", "5"),  # period not followed by a digit is removed
        ("x.y", "xy"),  # same rule inside a word: removed, no space
        ("(a) cat", "cat"),  # '(' -> ' ', ')' touches a space -> deleted, then article dropped
        ("  Ten\tdogs\n", "10 dogs"),  # newline/tab -> space, strip
        ("somebody'd", "somebodyd"),  # the reference table's reversed entry, kept for exactness
        ("Im", "im"),  # reference key "Im" is capitalised and never fires after lower-casing
        ("", ""),  # empty prediction
        (None, ""),  # missing prediction
    ],
)
def test_normalize_vqa_answer(raw, expected):
    assert normalize_vqa_answer(raw) == expected


def test_normalize_strips_at_most_32_periods():
    # Reference passes re.UNICODE (== 32) positionally as `count` to periodStrip.sub.
    assert normalize_vqa_answer("." * 40) == "." * 8


# ---------------------------------------------------------------------------------------------
# VQA soft accuracy
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("matches", "expected"),
    [
        # hand count: with m of 10 humans matching, acc = (m*min(1,(m-1)/3) + (10-m)*min(1,m/3)) / 10
        (0, 0.0),
        (1, 0.3),  # (1*0 + 9*(1/3)) / 10
        (2, 0.6),  # (2*(1/3) + 8*(2/3)) / 10
        (3, 0.9),  # (3*(2/3) + 7*1) / 10
        (4, 1.0),  # (4*1 + 6*1) / 10
        (10, 1.0),
    ],
)
def test_vqa_soft_accuracy_counts(matches, expected):
    gts = ["red"] * matches + ["blue"] * (10 - matches)
    assert vqa_soft_accuracy("red", gts) == pytest.approx(expected)


def test_vqa_soft_accuracy_normalises_prediction():
    # EvalAI: 'Two.' -> '2'; 3 of 10 humans said '2' -> 0.9 (hand count above)
    assert vqa_soft_accuracy("Two.", ["2"] * 3 + ["3"] * 7) == pytest.approx(0.9)


def test_reference_gt_handling_identical_answers_untouched():
    # Reference: identical ground truths get no processing, so raw "Yes" never equals "yes".
    assert vqa_soft_accuracy("Yes", ["Yes"] * 10) == 0.0
    # "full" normalises ground truths too.
    assert vqa_soft_accuracy("Yes", ["Yes"] * 10, gt_normalization="full") == 1.0


def test_reference_gt_handling_differing_answers_get_punctuation_only():
    # Reference: when answers differ, GT gets processPunctuation: "black/white" -> "black white"
    # -> 3 of 10 match -> 0.9 (hand count).
    gts = ["black/white"] * 3 + ["gray"] * 7
    assert vqa_soft_accuracy("black white", gts) == pytest.approx(0.9)
    # ... but not the article step: GT "the dog" stays, prediction becomes "dog" -> 0 matches.
    gts = ["the dog"] * 4 + ["cat"] * 6
    assert vqa_soft_accuracy("the dog", gts) == 0.0
    assert vqa_soft_accuracy("the dog", gts, gt_normalization="full") == 1.0


def test_vqa_soft_accuracy_edge_cases():
    # leave-one-out with a single reference answer leaves no matching human -> 0 (formula).
    assert vqa_soft_accuracy("yes", ["yes"]) == 0.0
    # four answers all matching: each subset keeps 3 matches -> 1.0 (formula)
    assert vqa_soft_accuracy("yes", ["yes"] * 4) == 1.0
    assert vqa_soft_accuracy("", ["yes"] * 10) == 0.0
    assert vqa_soft_accuracy(None, ["yes"] * 10) == 0.0
    assert vqa_soft_accuracy("yes " * 200, ["yes"] * 10) == 0.0  # long answer is not a match
    with pytest.raises(ValueError, match="at least one"):
        vqa_soft_accuracy("yes", [])
    with pytest.raises(ValueError, match="gt_normalization"):
        vqa_soft_accuracy("yes", ["yes"], gt_normalization="some")  # type: ignore[arg-type]


def test_vqa_accuracy_mean():
    # hand: (1.0 + 0.3 + 0.0) / 3
    preds = ["red", "two", "dog"]
    gts = [["red"] * 10, ["2"] + ["3"] * 9, ["cat"] * 10]
    assert vqa_accuracy(preds, gts) == pytest.approx(1.3 / 3)
    with pytest.raises(ValueError, match="2 predictions but 3"):
        vqa_accuracy(preds[:2], gts)
    with pytest.raises(ValueError, match="no questions"):
        vqa_accuracy([], [])


_words = st.sampled_from(
    ["yes", "no", "two", "2", "the", "a", "dog", "dont", "3.5", "1,000", "red/blue", "cat."]
)
_answer = st.lists(_words, min_size=0, max_size=4).map(" ".join)
_punctuated = st.text(alphabet="abcXYZ 019.,;/!?()-'\n\t", max_size=30)


@settings(max_examples=150, deadline=None)
@given(
    pred=st.one_of(_answer, _punctuated),
    gts=st.lists(st.one_of(_answer, _punctuated), min_size=1, max_size=12),
)
def test_soft_accuracy_in_unit_interval(pred, gts):
    assert 0.0 <= vqa_soft_accuracy(pred, gts) <= 1.0
    assert 0.0 <= vqa_soft_accuracy(pred, gts, gt_normalization="full") <= 1.0


@settings(max_examples=150, deadline=None)
@given(pred=st.one_of(_answer, _punctuated))
def test_soft_accuracy_is_one_when_all_ten_humans_agree(pred):
    # All ten humans gave the (normalised) answer the prediction denotes.
    assert vqa_soft_accuracy(pred, [normalize_vqa_answer(pred)] * 10) == 1.0
    assert vqa_soft_accuracy(pred, [pred] * 10, gt_normalization="full") == 1.0


# ---------------------------------------------------------------------------------------------
# POPE
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Yes, there is a dog in the image.", "yes"),  # POPE evaluate.py: no negative word
        ("No, there is not.", "no"),  # "No" among the words
        ("There is no dog in the image.", "no"),  # "no" among the words
        ("I am not sure", "no"),  # "not" among the words
        ("Yes. There is no cat.", "yes"),  # only the first sentence is read
        ("NO", "yes"),  # reference is case-sensitive: only "No", "no", "not"
        ("No\nthere is none", "yes"),  # reference splits on ' ' only: "No\nthere" is one word
        ("Nothing", "yes"),  # whole words only
        ("", "yes"),  # empty -> yes
        (None, "yes"),  # missing -> yes
    ],
)
def test_parse_yes_no(text, expected):
    assert parse_yes_no(text) == expected


def test_pope_metrics_hand_counted():
    preds = ["Yes", "No", "yes", "Yes, it is.", "no"]
    labels = ["yes", "no", "no", "yes", "yes"]
    m = pope_metrics(preds, labels)
    # hand count: TP = items 0 and 3, FP = item 2, TN = item 1, FN = item 4
    assert (m["tp"], m["fp"], m["tn"], m["fn"]) == (2, 1, 1, 1)
    assert m["accuracy"] == pytest.approx(3 / 5)
    assert m["precision"] == pytest.approx(2 / 3)
    assert m["recall"] == pytest.approx(2 / 3)
    assert m["f1"] == pytest.approx(2 / 3)  # 2pr/(p+r) with p = r = 2/3
    assert m["yes_ratio"] == pytest.approx(3 / 5)  # of predictions, not labels


def test_pope_all_yes_and_all_no_predictors():
    labels = ["yes", "yes", "no", "no"]
    m = pope_metrics(["yes"] * 4, labels)
    # hand: TP=2 FP=2 -> p=0.5, r=1, f1 = 2*0.5*1/1.5 = 2/3
    assert m["accuracy"] == 0.5 and m["precision"] == 0.5 and m["recall"] == 1.0
    assert m["f1"] == pytest.approx(2 / 3) and m["yes_ratio"] == 1.0
    m = pope_metrics(["no"] * 4, labels)
    # no predicted positives: precision 0 by our convention (reference divides by zero)
    assert m["precision"] == 0.0 and m["recall"] == 0.0 and m["f1"] == 0.0
    assert m["accuracy"] == 0.5 and m["yes_ratio"] == 0.0


def test_pope_labels_and_errors():
    assert pope_metrics(["yes", "no"], [True, False])["accuracy"] == 1.0
    assert pope_metrics(["yes"], ["Yes "])["accuracy"] == 1.0
    with pytest.raises(ValueError, match="label #1"):
        pope_metrics(["yes", "no"], ["yes", "maybe"])
    with pytest.raises(ValueError, match="1 predictions but 2 labels"):
        pope_metrics(["yes"], ["yes", "no"])
    with pytest.raises(ValueError, match="no predictions"):
        pope_metrics([], [])


# ---------------------------------------------------------------------------------------------
# NaturalBench
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "qtype", "expected"),
    [
        ("Yes, it is.", "yes_no", "yes"),  # naturalbench_vqa.py extract_answer: whole word "yes"
        ("no", "yes_no", "no"),
        ("YES and no", "yes_no", "yes"),  # case-insensitive; the earlier one wins
        ("Well, no. Yes?", "yes_no", "no"),  # earlier one wins
        ("I cannot tell", "yes_no", None),  # neither -> reference's -1
        ("B", "multiple_choice", "B"),
        ("The answer is B", "multiple_choice", "B"),
        ("It is a lake, so B", "multiple_choice", "A"),  # reference quirk: the article "a" reads as A
        (None, "yes_no", None),
    ],
)
def test_naturalbench_extract_answer(text, qtype, expected):
    assert naturalbench_extract_answer(text, qtype) == expected


def test_naturalbench_scores_hand_counted():
    all_right = {"q0_i0": True, "q0_i1": True, "q1_i0": True, "q1_i1": True}
    # q0 right on both images; q1 right only on image 0
    partial = [[True, True], [True, False]]
    s = naturalbench_scores([all_right, partial])
    # hand: Q-Acc (2 + 1)/4, I-Acc (2 + 1)/4 (image 1 fails q1), G-Acc 1/2, Acc (4 + 3)/8
    assert s == pytest.approx({"q_acc": 0.75, "i_acc": 0.75, "g_acc": 0.5, "acc": 0.875})


def test_naturalbench_scores_distinguish_question_and_image():
    # q0 right on i0 only, q1 right on i0 only: image 0 fully right, no question right on both.
    s = naturalbench_scores([[[True, False], [True, False]]])
    assert s == {"q_acc": 0.0, "i_acc": 0.5, "g_acc": 0.0, "acc": 0.5}  # hand count


def test_naturalbench_scores_match_reference_coding():
    # Reference get_scores on predictions [q0_i0, q0_i1, q1_i0, q1_i1] = [1, 0, 0, 1] (all right under
    # the fixed answer pattern) gives 1 everywhere; [1, 1, 0, 1] (q0 wrong on i1) gives Q 0.5, I 0.5,
    # G 0, Acc 0.75 (hand-run of the reference formulas).
    assert naturalbench_scores([[[True, True], [True, True]]]) == {
        "q_acc": 1,
        "i_acc": 1,
        "g_acc": 1,
        "acc": 1,
    }
    s = naturalbench_scores([{"q0_i0": True, "q0_i1": False, "q1_i0": True, "q1_i1": True}])
    assert s == {"q_acc": 0.5, "i_acc": 0.5, "g_acc": 0.0, "acc": 0.75}


def test_naturalbench_correctness_from_predictions():
    preds = {"q0_i0": "Yes", "q0_i1": "No.", "q1_i0": "no", "q1_i1": "I think so"}
    gold = {"q0_i0": "Yes", "q0_i1": "No", "q1_i0": "No", "q1_i1": "Yes"}
    c = naturalbench_correctness(preds, gold, "yes_no")
    assert c == {"q0_i0": True, "q0_i1": True, "q1_i0": True, "q1_i1": False}  # last is unparseable
    mc = naturalbench_correctness(
        {"q0_i0": "A", "q0_i1": "B", "q1_i0": "(B)", "q1_i1": "b"},
        {"q0_i0": "A", "q0_i1": "B", "q1_i0": "B", "q1_i1": "A"},
        "multiple_choice",
    )
    assert mc == {"q0_i0": True, "q0_i1": True, "q1_i0": True, "q1_i1": False}


def test_naturalbench_errors():
    with pytest.raises(ValueError, match="missing"):
        naturalbench_scores([{"q0_i0": True}])
    with pytest.raises(ValueError, match="2 questions x 2 images"):
        naturalbench_scores([[[True, True, True], [True, True]]])
    with pytest.raises(ValueError, match="no groups"):
        naturalbench_scores([])
    with pytest.raises(ValueError, match="question_type"):
        naturalbench_extract_answer("yes", "open")  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------
# MMMU
# ---------------------------------------------------------------------------------------------

OPTS = ["red apple", "green pear", "blue berry", "yellow lemon"]


@pytest.mark.parametrize(
    ("response", "expected"),
    [
        ("(B)", "B"),  # MMMU eval_utils: "(X)" first
        ("The answer is (C).", "C"),
        ("The answer is (B), not (A)", "A"),  # several bracketed: the last in the response wins
        ("B", "B"),  # bare letter between the padding spaces
        ("B.", "B"),  # end marks stripped first
        ("I choose D", "D"),
        ("Between A and C I pick C", "C"),  # several bare letters: the last one wins
        ("I believe the fruit in this picture is a green pear", "B"),  # > 5 words: option text
        ("It looks like a red apple or maybe a blue berry to me", "C"),  # last option text wins
    ],
)
def test_parse_multiple_choice(response, expected):
    assert parse_multiple_choice(response, OPTS, rng_seed=0) == expected


def test_parse_multiple_choice_random_fallback():
    letters = ["A", "B", "C", "D"]
    for seed in range(5):
        expected = random.Random(seed).choice(letters)  # rule 4: seeded random choice
        assert (
            parse_multiple_choice("green pear", OPTS, rng_seed=seed) == expected
        )  # <= 5 words: no text match
        assert parse_multiple_choice("A, because", OPTS, rng_seed=seed) == expected  # "A," is not " A "
        assert parse_multiple_choice("", OPTS, rng_seed=seed) == expected
        assert parse_multiple_choice(None, OPTS, rng_seed=seed) == expected
    assert len({parse_multiple_choice("", OPTS, rng_seed=s) for s in range(40)}) > 1
    with pytest.raises(ValueError, match="at least one option"):
        parse_multiple_choice("A", [])


def test_parse_open_answer():
    # MMMU: tail after "is " -> "3.14159" -> float rounded to 2 decimals
    assert parse_open_answer("The answer is 3.14159") == [3.14]
    # tail "1,000 dollars"; numbers: "1,000" (comma pattern) and "000" (simple pattern) -> 1000.0, 0.0
    assert parse_open_answer("So the total is 1,000 dollars") == ["1,000 dollars", 1000.0, 0.0]
    # no indicator: the whole (lower-cased) response; one character -> [" x", "x "]
    assert parse_open_answer("X") == [" x", "x "]
    # '=' counts on the last line only
    assert parse_open_answer("area = 12") == [12.0]
    assert parse_open_answer("") == [""]


def test_mmmu_eval_open():
    assert mmmu_eval_open("3.14", [3.14])  # numbers compare after rounding to 2 decimals
    assert mmmu_eval_open("3.141", [3.14])
    assert mmmu_eval_open(["12", "twelve"], parse_open_answer("The area is twelve square units"))
    assert mmmu_eval_open("Paris", parse_open_answer("I think the capital is paris"))  # substring
    assert not mmmu_eval_open("3.2", [3.14])
    assert not mmmu_eval_open("12", ["twelve"])  # a number gold needs a number prediction


def test_mmmu_accuracy():
    items = [
        {"response": "(B)", "answer": "B", "question_type": "multiple-choice", "options": OPTS},
        {"response": "(A)", "answer": "B", "question_type": "multiple-choice", "options": OPTS},
        {"response": "The result is 42.", "answer": "42", "question_type": "open"},
    ]
    assert mmmu_accuracy(items) == pytest.approx(2 / 3)  # hand: right, wrong, right
    assert mmmu_is_correct("(B)", ["A", "B"], "multiple-choice", OPTS)  # list of accepted letters
    with pytest.raises(ValueError, match="question_type"):
        mmmu_is_correct("x", "x", "short-answer")
    with pytest.raises(ValueError, match="no 'response'"):
        mmmu_accuracy([{"answer": "A", "question_type": "open"}])
    with pytest.raises(ValueError, match="no items"):
        mmmu_accuracy([])


# ---------------------------------------------------------------------------------------------
# MMBench
# ---------------------------------------------------------------------------------------------


def test_circular_options():
    shifts = circular_options(["w", "x", "y", "z"], answer_index=2)
    # MMBench CircularEval: ABCD, BCDA, CDAB, DABC; the gold option "y" moves C, B, A, D
    assert shifts == [
        (["w", "x", "y", "z"], "C"),
        (["x", "y", "z", "w"], "B"),
        (["y", "z", "w", "x"], "A"),
        (["z", "w", "x", "y"], "D"),
    ]
    with pytest.raises(ValueError, match="answer_index"):
        circular_options(["a", "b"], 2)


def test_mmbench_circular():
    results = {
        "q1": [True, True, True, True],
        "q2": [True, False, True, True],
        "q3": [False, True, True, True],
    }
    s = mmbench_circular(results)
    # hand: only q1 passes every shift; q1 and q2 pass the original order
    assert s["circular_accuracy"] == pytest.approx(1 / 3)
    assert s["vanilla_accuracy"] == pytest.approx(2 / 3)
    assert s["n_questions"] == 3
    assert mmbench_circular({"two-option": [True, True]})["circular_accuracy"] == 1.0
    with pytest.raises(ValueError, match="no passes"):
        mmbench_circular({"q": []})
    with pytest.raises(ValueError, match="no questions"):
        mmbench_circular({})


# ---------------------------------------------------------------------------------------------
# UnifiedBench, non-unified score, consistency score
# ---------------------------------------------------------------------------------------------


def test_unifiedbench_score_weights_encoders_equally():
    # hand: clip mean 0.7, dino mean 0.5 -> 0.6 (not the pooled mean 1.9/3)
    assert unifiedbench_score({"clip": [0.8, 0.6], "dino": [0.5]}) == pytest.approx(0.6)
    with pytest.raises(ValueError, match="no encoders"):
        unifiedbench_score({})
    with pytest.raises(ValueError, match="'dino' has no"):
        unifiedbench_score({"clip": [0.5], "dino": []})


def test_nonunified_score():
    assert nonunified_score([True, False, False, True]) == 0.5  # 2 of 4 judged not matching
    assert nonunified_score([True, True, True]) == 0.0
    assert nonunified_score([False]) == 1.0
    with pytest.raises(ValueError):
        nonunified_score([])


def test_consistency_score():
    # paper: 0.6 * 80 + 0.4 * (0.5 * 100) = 68, i.e. 0.68 as a fraction
    assert consistency_score(0.8, 0.5) == pytest.approx(0.68)
    with pytest.raises(ValueError, match="percentage"):
        consistency_score(80.0, 0.5)
    with pytest.raises(ValueError, match="percentage"):
        consistency_score(0.8, 50.0)


# ---------------------------------------------------------------------------------------------
# GenEval
# ---------------------------------------------------------------------------------------------


def test_geneval_scores_average_over_tasks():
    items = (
        [{"task": "single_object", "correct": True}] * 2
        + [{"task": "counting", "correct": c} for c in (True, False, False, False)]
        + [{"tag": "position", "correct": False}] * 2  # GenEval results.jsonl spells it "tag"
    )
    s = geneval_scores(items)
    # GenEval summary_scores.py: per-task image means 1.0, 0.25, 0.0; overall = their mean, not 3/8
    assert s["single_object"] == 1.0 and s["counting"] == 0.25 and s["position"] == 0.0
    assert s["overall"] == pytest.approx(1.25 / 3)
    assert "colors" not in s


def test_geneval_errors():
    with pytest.raises(ValueError, match="task 'colours'"):
        geneval_scores([{"task": "colours", "correct": True}])
    with pytest.raises(ValueError, match="no 'correct'"):
        geneval_scores([{"task": "colors"}])
    with pytest.raises(ValueError, match="no items"):
        geneval_scores([])


def test_nonunified_report_hand_made_case():
    # 5 own generations: the model says yes to 0 and 3; the judge accepts 0, 1 and 4.
    says_yes = [True, False, False, True, False]
    judge = [True, True, False, False, True]
    r = nonunified_report(says_yes, judge)
    assert r["score"] == 0.6  # 3 of 5 answered no
    assert r["weak_generation_rate"] == 1 / 3  # of the 3 "no"s (1, 2, 4) only item 2 is really wrong
    assert r["understanding_accuracy"] == 0.4  # agree on items 0 and 2
    assert r["generation_accuracy"] == 0.6
    assert r["n"] == 5


def test_nonunified_report_edge_cases():
    assert nonunified_report([True, True], [True, False])["weak_generation_rate"] is None  # never says no
    with pytest.raises(ValueError, match="2 answers but 1 judge"):
        nonunified_report([True, False], [True])
