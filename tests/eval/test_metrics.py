"""Hand-derived cases for the VQA accuracy, exact match, ANLS and relaxed accuracy metrics (eval/metrics.py)."""

import numpy as np
import pytest

from eval.metrics import METRICS, anls, exact_match, levenshtein, normalize_answer, relaxed_accuracy, vqa_accuracy


def _ten(matching: str, m: int, other: str = "cat") -> list[str]:
    """Ten human answers, ``m`` of them ``matching`` and the rest ``other``."""
    return [matching] * m + [other] * (10 - m)


# Leave-one-out with 10 humans, m of them matching the prediction:
#   a matching human left out -> m - 1 matches remain; a non-matching one left out -> m remain.
#   acc = [m * min(1, (m-1)/3) + (10-m) * min(1, m/3)] / 10
#   m=0: 0
#   m=1: [1*0 + 9*(1/3)] / 10 = 3/10 = 0.3
#   m=2: [2*(1/3) + 8*(2/3)] / 10 = (2/3 + 16/3) / 10 = 6/10 = 0.6
#   m=3: [3*(2/3) + 7*1] / 10 = (2 + 7) / 10 = 0.9
#   m=4: [4*1 + 6*1] / 10 = 1.0   (and every m >= 4 gives 1.0)
@pytest.mark.parametrize(("m", "expected"), [(0, 0.0), (1, 0.3), (2, 0.6), (3, 0.9), (4, 1.0), (7, 1.0), (10, 1.0)])
def test_vqa_accuracy_leave_one_out_values(m, expected):
    assert vqa_accuracy("dog", _ten("dog", m)) == pytest.approx(expected, abs=1e-12)


def test_vqa_accuracy_is_exact_rational():
    # Computed as Fraction(6, 10) and rounded once, so it equals the float literal 0.6 exactly.
    assert vqa_accuracy("dog", _ten("dog", 2)) == 0.6
    assert vqa_accuracy("dog", _ten("dog", 1)) == 0.3


def test_vqa_accuracy_with_fewer_than_ten_answers():
    # 3 humans ["dog", "dog", "cat"], prediction "dog":
    #   leave out dog -> 1 match -> 1/3; leave out dog -> 1/3; leave out cat -> 2 matches -> 2/3
    #   mean = (1/3 + 1/3 + 2/3) / 3 = 4/9
    assert vqa_accuracy("dog", ["dog", "dog", "cat"]) == pytest.approx(4 / 9, abs=1e-12)


def test_vqa_accuracy_normalises_number_words_both_ways():
    # "two" -> "2": 2 of 10 humans wrote "2" -> 0.6; and a prediction "2" matches humans who wrote "two".
    assert vqa_accuracy("two", _ten("2", 2)) == pytest.approx(0.6)
    assert vqa_accuracy("2", _ten("two", 3)) == pytest.approx(0.9)
    assert vqa_accuracy("None", _ten("0", 10)) == 1.0


def test_vqa_accuracy_normalises_articles_case_whitespace_and_punctuation():
    answers = _ten("red car", 4, other="blue car")
    assert vqa_accuracy("  The RED\tcar. ", answers) == 1.0
    assert vqa_accuracy("a red car!", answers) == 1.0
    assert vqa_accuracy("red-car", answers) == 1.0  # "-" between letters becomes a space
    assert vqa_accuracy("red cars", answers) == 0.0


def test_vqa_accuracy_contractions():
    # "dont" gets its apostrophe back, so it matches "don't"; 1 of 10 matching -> 0.3.
    assert vqa_accuracy("dont", _ten("don't", 1, other="no")) == pytest.approx(0.3)
    assert vqa_accuracy("don't", _ten("dont", 10)) == 1.0


def test_vqa_accuracy_rejects_bad_answers():
    with pytest.raises(ValueError, match="at least 2"):
        vqa_accuracy("dog", ["dog"])
    with pytest.raises(ValueError, match="single string"):
        vqa_accuracy("dog", "dog")
    with pytest.raises(ValueError, match="must be strings"):
        vqa_accuracy("dog", ["dog", 3])


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("two", "2"),
        ("Ten", "10"),
        ("zero", "0"),
        ("none", "0"),
        ("the dog", "dog"),
        ("A Cat", "cat"),
        ("an apple", "apple"),
        ("yes.", "yes"),  # trailing period removed
        ("yes!", "yes"),  # "!" -> space, then whitespace collapsed
        ("3.5", "3.5"),  # decimal point kept
        ("1,000", "1000"),  # comma between digits removed, not spaced
        ("1, 2", "1 2"),  # ", " touches a space: removed
        ("red,blue", "red blue"),  # lone comma between letters: replaced by a space
        ("dont", "don't"),
        ("isnt", "isn't"),
        ("couldnt've", "couldn't've"),
        ("its", "its"),  # also a word: left alone
        ("well", "well"),
        ("man's", "man's"),  # apostrophe kept (possessive)
        ("2:20 pm", "2:20 pm"),  # colon kept (time)
        ("  Multiple   spaces\nhere ", "multiple spaces here"),
        ("(left)", "left"),
        ("t-shirt", "t shirt"),
        ("", ""),
    ],
)
def test_normalize_answer_edge_cases(raw, expected):
    assert normalize_answer(raw) == expected


def test_exact_match():
    assert exact_match("The Red.", ["red"]) == 1.0
    assert exact_match("two", ["3", "2"]) == 1.0
    assert exact_match("blue", ["red"]) == 0.0
    # Without normalisation only surrounding whitespace is forgiven.
    assert exact_match(" Red ", ["Red"], normalize=False) == 1.0
    assert exact_match("the red", ["red"], normalize=False) == 0.0
    with pytest.raises(ValueError, match="at least 1"):
        exact_match("red", [])


def test_levenshtein():
    assert levenshtein("kitten", "sitting") == 3  # k->s, e->i, +g
    assert levenshtein("", "abc") == 3
    assert levenshtein("abc", "abc") == 0
    assert levenshtein("flaw", "lawn") == 2  # -f, +n


def test_anls_hand_values():
    # Identical after lower-casing / whitespace collapsing -> NL = 0 -> 1.
    assert anls("  Total   Amount ", ["total amount"]) == 1.0
    # "kitten" vs "sitting": distance 3, max length 7 -> NL = 3/7 < 0.5 -> 1 - 3/7 = 4/7.
    assert anls("kitten", ["sitting"]) == pytest.approx(4 / 7)
    # Best of several answers: "abcd" vs "abce" -> NL = 1/4 -> 0.75; vs "xyz" -> NL = 1 -> 0.
    assert anls("abcd", ["xyz", "abce"]) == pytest.approx(0.75)
    # "ab" vs "cd": NL = 2/2 = 1 -> 0.
    assert anls("ab", ["cd"]) == 0.0
    # Exactly at the threshold: "ab" vs "ac" -> NL = 1/2, not < 0.5 -> 0 (paper's strict inequality).
    assert anls("ab", ["ac"]) == 0.0
    # A looser threshold keeps it: 1 - 1/2.
    assert anls("ab", ["ac"], threshold=0.6) == pytest.approx(0.5)
    # Two empty strings are identical.
    assert anls("", [""]) == 1.0


def test_anls_rejects_bad_input():
    with pytest.raises(ValueError, match="threshold"):
        anls("a", ["a"], threshold=0.0)
    # True was taken as a threshold of 1 (any partial match scored), a string raised TypeError.
    for bad in (True, "0.5"):
        with pytest.raises(ValueError, match=f"threshold must be a number in \\(0, 1\\], got {bad!r}"):
            anls("ab", ["xy"], threshold=bad)
    assert anls("ab", ["ac"], threshold=np.float32(0.6)) == pytest.approx(0.5)  # NumPy numbers are numbers
    with pytest.raises(ValueError, match="at least 1"):
        anls("a", [])


def test_metric_registry_names():
    assert METRICS["vqa_accuracy"] is vqa_accuracy
    assert METRICS["relaxed_accuracy"] is relaxed_accuracy
    assert sorted(METRICS) == ["anls", "exact_match", "relaxed_accuracy", "vqa_accuracy"]


# ChartQA (Masry et al. 2022, section 5.1): a number is right within 5% of the gold value, relative to the gold value;
# anything else needs an exact match up to case.
@pytest.mark.parametrize("prediction, gold, expected", [
    ("12.6", "12", 1.0),     # 0.05 up to rounding (just under in floats; the exact boundary, 105 vs 100, below)
    ("12.61", "12", 0.0),    # 0.0508
    ("11.4", "12", 1.0),     # 0.05 below
    ("-10.4", "-10", 1.0),   # relative to |gold|
    ("10.4", "-10", 0.0),    # the sign is part of the value
    ("12%", "0.12", 1.0),    # a trailing % divides by 100
    ("12", "12%", 0.0),      # 12 against 0.12
    ("0", "0", 1.0),         # a gold 0 needs exactly 0
    ("0.0", "0", 1.0),
    ("0.01", "0", 0.0),
    ("Yes", "yes", 1.0),     # text: case-insensitive exact match
    ("yes.", "yes", 0.0),    # no punctuation normalisation
    ("1,000", "1000", 0.0),  # "1,000" is not a number here, so the strings are compared
    (" 5 ", "5", 1.0),       # surrounding whitespace ignored
    ("nan", "nan", 1.0),     # not a number: compared as text
    ("inf", "1e309", 0.0),
])
def test_relaxed_accuracy_hand_values(prediction, gold, expected):
    assert relaxed_accuracy(prediction, [gold]) == expected


def test_relaxed_accuracy_any_answer_and_bad_input():
    assert relaxed_accuracy("7", ["blue", "7.2"]) == 1.0
    assert relaxed_accuracy("7", ["7.2"], max_relative_change=0.01) == 0.0
    with pytest.raises(ValueError, match="at least 1"):
        relaxed_accuracy("7", [])
    with pytest.raises(ValueError, match="single string"):
        relaxed_accuracy("7", "7")
    with pytest.raises(ValueError, match="max_relative_change"):
        relaxed_accuracy("7", ["7"], max_relative_change=-0.1)
    with pytest.raises(ValueError, match="predictions must be strings"):
        relaxed_accuracy(7, ["7"])


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        # A mark with a space on one side only is removed everywhere in the answer, not only there.
        ("x -y-z", "x yz"),
        # Newlines and tabs count as spaces for that test (they become spaces first).
        ("x-\ny-z", "x yz"),
        ("x-\ty-z", "x yz"),
        # A comma after a digit but not before one is ordinary punctuation.
        ("5,red", "5 red"),
    ],
)
def test_normalize_answer_punctuation_rules(raw, expected):
    assert normalize_answer(raw) == expected


def test_exact_match_without_normalisation_strips_the_answers_too():
    assert exact_match("Red", [" Red\n"], normalize=False) == 1.0


def test_anls_takes_the_best_answer_wherever_it_is():
    assert anls("abcd", ["abce", "xyz"]) == pytest.approx(0.75)
    assert anls("abcd", ["abcd", "abce"]) == 1.0  # a later, worse match does not replace the best one


def test_relaxed_accuracy_exact_boundary_and_zero_tolerance():
    # 5 / 100 is exactly the float 0.05: on the boundary, right.
    assert relaxed_accuracy("105", ["100"]) == 1.0
    assert relaxed_accuracy("95", ["100"]) == 1.0
    # A tolerance of 0 is allowed (only negative ones are refused) and needs the exact value.
    assert relaxed_accuracy("7.0", ["7"], max_relative_change=0) == 1.0
    assert relaxed_accuracy("7.01", ["7"], max_relative_change=0.0) == 0.0


def test_relaxed_accuracy_whitespace_case_and_partial_text():
    assert relaxed_accuracy("12% ", ["0.12"]) == 1.0  # whitespace around a percentage
    assert relaxed_accuracy(" 12%", ["0.12"]) == 1.0
    assert relaxed_accuracy("yes ", ["yes"]) == 1.0  # text: whitespace ignored on either side
    assert relaxed_accuracy("Yes", [" yES\n"]) == 1.0
    assert relaxed_accuracy("ye", ["yes"]) == 0.0  # a part of the answer is not the answer
    with pytest.raises(ValueError, match="max_relative_change.*nan"):
        relaxed_accuracy("7", ["7"], max_relative_change=float("nan"))
    with pytest.raises(ValueError, match="max_relative_change.*inf"):
        relaxed_accuracy("7", ["7"], max_relative_change=float("inf"))


def test_relaxed_accuracy_refuses_a_bool_tolerance():
    # True is an int to Python: it was taken as a tolerance of 100%, so 1.9 counted as right against 1.
    with pytest.raises(ValueError, match="max_relative_change.*True"):
        relaxed_accuracy("1.9", ["1"], max_relative_change=True)
    assert relaxed_accuracy("1.04", ["1"], max_relative_change=np.float32(0.05)) == 1.0  # NumPy numbers are numbers
