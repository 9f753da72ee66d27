"""Answer-scoring metrics for VQA-style evaluation: VQA accuracy, exact match and ANLS.

Why: every accuracy the project reports (the generated benchmark, VQAv2, TextVQA, GQA, DocVQA) must be scored the
way the community scores it, or "% of full-token accuracy" comparisons against published numbers are meaningless.

- ``vqa_accuracy`` is the VQA accuracy of Antol et al. 2015 ("VQA: Visual Question Answering", ICCV) as used by
  VQAv2 (Goyal et al. 2017, "Making the V in VQA Matter", CVPR) and TextVQA (Singh et al. 2019, "Towards VQA Models
  That Can Read", CVPR): ``acc = min(1, #humans that gave the answer / 3)``, averaged over the 10 leave-one-out
  subsets of 9 annotators. Answers are first normalised as the official evaluation describes
  (https://visualqa.org/evaluation.html): lower case; punctuation replaced by a space (or removed where it touches a
  space, and always removed when the text holds a comma between digits, so "100,978" -> "100978"); periods removed
  unless followed by a digit (decimal points survive); number words "zero".."ten" (and "none") -> digits; the
  articles a/an/the dropped; apostrophes restored in contractions ("dont" -> "don't").
- ``exact_match`` is the single-answer metric of GQA (Hudson & Manning 2019, "GQA", CVPR) as lmms-eval runs it
  (case- and punctuation-insensitive); here it reuses the VQA normalisation.
- ``relaxed_accuracy`` is ChartQA's metric (Masry et al. 2022, "ChartQA", ACL Findings, section 5.1, after Methani
  et al. 2020): a numeric answer is right within 5% of the gold value (a trailing "%" divides by 100), any other
  answer needs an exact, case-insensitive match.
- ``anls`` is the Average Normalized Levenshtein Similarity of Biten et al. 2019 ("Scene Text Visual Question
  Answering", ICCV), the DocVQA metric (Mathew et al. 2021, "DocVQA", WACV): ``1 - NL`` of the closest answer, or 0
  when ``NL >= threshold`` (0.5), with case-folded, whitespace-collapsed strings.

Deliberate choices where the reference scripts differ from each other (each changes scores only in corner cases):

- Both the prediction and every human answer are normalised, always. The official script normalises the prediction
  only when the 10 answers disagree (its annotation files are pre-normalised); lmms-eval always normalises the
  prediction. Normalising both sides gives the lmms-eval score on pre-normalised answers and stays correct on raw
  ones (e.g. ground truth "two" vs prediction "2").
- lmms-eval's VQAv2 task scores exactly as here: on 3,000 random answer sets built from the normalisation's trouble
  spots the two agree on every one (``tests/eval/test_lmms_task.py``, run by ``make test-lmms`` with lmms-eval
  0.7.3). Its TextVQA, OK-VQA and VizWiz tasks pre-tokenise the prediction as well (``EvalAIAnswerProcessor``:
  deleting "," and "?" outright and splitting "'s" off as " 's"); that is not applied here: "," and "?" follow the
  official punctuation rule (a space, so "a,b" -> "a b" where those tasks make "ab"), and the "'s" split, applied to
  one side only, makes "man's" miss "man's".
- The contraction table holds each listed contraction with one of its apostrophes dropped (the official table's
  construction). Forms that are also ordinary words are left alone ("its", "well", "were", "shed", "ill", ...),
  and so are the first-person forms, which the official table keys in upper case ("Im") so that they never fire
  after lower-casing. The official table's reversed entry "somebody'd" -> "somebodyd" is not reproduced.
- Relaxed accuracy equals lmms-eval's ChartQA ``relaxed_correctness`` except in three corner cases: a gold value of
  0 needs a prediction of 0 (lmms-eval's relative change is undefined there and it compares the strings, so "0.0"
  misses "0"); surrounding whitespace is ignored (lmms-eval's string comparison keeps it); and "nan"/"inf" are
  compared as text, not as numbers. Elsewhere the two agree (``tests/eval/test_lmms_task.py``).
- ANLS follows the paper's strict inequality: ``NL == threshold`` scores 0 (lmms-eval keeps ``1 - NL`` there).
  lmms-eval also divides the distance between the whitespace-collapsed strings by the raw strings' lengths, so
  surrounding or doubled spaces lower its NL ("A " vs "AB ": 1/3 there, 1/2 here); here the lengths are those of the
  strings the distance is taken on. Elsewhere the two agreed on all of 18,468 random cases (a 3,000-case version
  runs in ``tests/eval/test_lmms_task.py``).
"""

from __future__ import annotations

import math
import numbers
import re
from fractions import Fraction
from typing import Callable, Sequence

__all__ = ["METRICS", "anls", "exact_match", "levenshtein", "normalize_answer", "relaxed_accuracy", "vqa_accuracy"]

# Characters the official evaluation treats as punctuation. "." (handled by its own rule), "'" (possessives,
# contractions) and ":" (times such as 2:20) are deliberately absent.
_PUNCTUATION = (
    ";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`", ",", "?", "!",
)
_COMMA_BETWEEN_DIGITS = re.compile(r"\d,\d")
# A period is dropped unless a digit follows it, so decimal points ("3.5") survive.
_PERIOD_NOT_BEFORE_DIGIT = re.compile(r"\.(?!\d)")

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

# Contractions whose apostrophe-less spellings are restored. Spellings that are also ordinary words are omitted
# (see the module docstring), as are the first-person forms.
_CONTRACTION_FORMS = (
    "ain't", "aren't", "can't", "could've", "couldn't", "couldn't've", "didn't", "doesn't", "don't", "hadn't",
    "hadn't've", "hasn't", "haven't", "he'd", "he'd've", "he's", "how'd", "how'll", "how's", "isn't", "it'd",
    "it'd've", "it'll", "ma'am", "mightn't", "mightn't've", "might've", "mustn't", "must've", "needn't", "not've",
    "o'clock", "oughtn't", "'ow's'at", "shan't", "she'd've", "should've", "shouldn't", "shouldn't've",
    "somebody'd", "somebody'd've", "somebody'll", "somebody's", "someone'd", "someone'd've", "someone'll",
    "someone's", "something'd", "something'd've", "something'll", "that's", "there'd", "there'd've", "there're",
    "there's", "they'd", "they'd've", "they'll", "they're", "they've", "'twas", "wasn't", "we'd've", "we've",
    "weren't", "what'll", "what're", "what's", "what've", "when's", "where'd", "where's", "where've", "who'd",
    "who'd've", "who'll", "who's", "who've", "why'll", "why're", "why's", "won't", "would've", "wouldn't",
    "wouldn't've", "y'all", "y'all'll", "y'all'd've", "you'd", "you'd've", "you'll", "you're", "you've",
)  # fmt: skip


def _build_contractions(forms: Sequence[str]) -> dict[str, str]:
    """Map every spelling of a form with exactly one apostrophe missing to the full form.

    "couldn't've" yields "couldnt've" and "couldn'tve" (not "couldntve"), as in the official table.
    """
    table: dict[str, str] = {}
    for form in forms:
        for pos, char in enumerate(form):
            if char == "'":
                table[form[:pos] + form[pos + 1 :]] = form
    return table


_CONTRACTIONS = _build_contractions(_CONTRACTION_FORMS)


def _process_punctuation(text: str) -> str:
    """Apply the official punctuation rules (see the module docstring)."""
    # The tests for "touches a space" and "comma between digits" look at the text before any replacement.
    remove_all = _COMMA_BETWEEN_DIGITS.search(text) is not None
    out = text
    for mark in _PUNCTUATION:
        if remove_all or (mark + " ") in text or (" " + mark) in text:
            out = out.replace(mark, "")
        else:
            out = out.replace(mark, " ")
    return _PERIOD_NOT_BEFORE_DIGIT.sub("", out)


def normalize_answer(text: str) -> str:
    """Normalise an answer string as the official VQA evaluation does.

    Args:
        text: A predicted or human answer.

    Returns:
        The normalised answer: lower case, single-spaced, punctuation handled, number words as digits, articles
        removed and contractions given their apostrophe.

    Raises:
        ValueError: If ``text`` is not a string.

    Example:
        >>> normalize_answer("The Two dogs.")
        '2 dogs'
    """
    if not isinstance(text, str):
        raise ValueError(f"answers must be strings, got {text!r} ({type(text).__name__})")
    text = text.replace("\n", " ").replace("\t", " ").strip()
    text = _process_punctuation(text)
    words = []
    for word in text.lower().split():
        word = _NUMBER_WORDS.get(word, word)
        if word not in _ARTICLES:
            words.append(_CONTRACTIONS.get(word, word))
    return " ".join(words)


def _is_real(value: object) -> bool:
    """A real number that is not a bool (True passed for 1 as a threshold or a tolerance)."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _check_answers(answers: Sequence[str], minimum: int) -> None:
    if isinstance(answers, str):
        raise ValueError(f"answers must be a list of strings, got the single string {answers!r}")
    if len(answers) < minimum:
        raise ValueError(f"need at least {minimum} reference answer(s), got {len(answers)}: {list(answers)!r}")


def vqa_accuracy(prediction: str, answers: Sequence[str]) -> float:
    """VQA accuracy of one prediction against the human answers (Antol et al. 2015; Goyal et al. 2017).

    Each of the ``N`` human answers is left out in turn; the prediction scores ``min(1, matches / 3)`` against the
    other ``N - 1``, and the ``N`` scores are averaged. With ``N = 10`` and ``m`` matching humans this is
    0, 0.3, 0.6, 0.9 and 1 for ``m`` = 0, 1, 2, 3 and >= 4.

    Args:
        prediction: The model's answer.
        answers: The human answers, normally 10 (VQAv2, TextVQA); duplicates count separately.

    Returns:
        The accuracy in [0, 1], computed exactly in rationals and then rounded once to float.

    Raises:
        ValueError: If there are fewer than 2 answers (leave-one-out needs 2; use ``exact_match`` for single-answer
            sets), if ``answers`` is a bare string, or if an element is not a string.
    """
    _check_answers(answers, minimum=2)
    pred = normalize_answer(prediction)
    hits = [normalize_answer(answer) == pred for answer in answers]
    matches = sum(hits)
    # min(1, k / 3) == min(3, k) / 3, so summing min(3, k) keeps the arithmetic exact.
    total = sum(min(3, matches - hit) for hit in hits)
    return float(Fraction(total, 3 * len(hits)))


def exact_match(prediction: str, answers: Sequence[str], *, normalize: bool = True) -> float:
    """1.0 if the prediction equals any reference answer, else 0.0 (GQA-style single-answer accuracy).

    Args:
        prediction: The model's answer.
        answers: One or more reference answers.
        normalize: Compare after ``normalize_answer`` (case, punctuation, articles, number words); with ``False``
            only surrounding whitespace is ignored.

    Returns:
        1.0 or 0.0.

    Raises:
        ValueError: If ``answers`` is empty or a bare string, or an element is not a string.
    """
    _check_answers(answers, minimum=1)
    if normalize:
        pred = normalize_answer(prediction)
        return float(any(normalize_answer(answer) == pred for answer in answers))
    for answer in answers:
        if not isinstance(answer, str):
            raise ValueError(f"answers must be strings, got {answer!r} ({type(answer).__name__})")
    return float(any(answer.strip() == prediction.strip() for answer in answers))


def levenshtein(a: str, b: str) -> int:
    """Edit distance (insertions, deletions, substitutions, each cost 1) between two strings.

    Args:
        a: First string.
        b: Second string.

    Returns:
        The minimum number of single-character edits turning ``a`` into ``b``.
    """
    if len(a) < len(b):
        a, b = b, a
    # Two-row dynamic programme over the shorter string.
    previous = list(range(len(b) + 1))
    for i, char_a in enumerate(a, start=1):
        current = [i]
        for j, char_b in enumerate(b, start=1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (char_a != char_b)))
        previous = current
    return previous[-1]


def _anls_normalize(text: str) -> str:
    if not isinstance(text, str):
        raise ValueError(f"answers must be strings, got {text!r} ({type(text).__name__})")
    return " ".join(text.strip().lower().split())


def anls(prediction: str, answers: Sequence[str], threshold: float = 0.5) -> float:
    """Average Normalized Levenshtein Similarity for one question (Biten et al. 2019; DocVQA, Mathew et al. 2021).

    ``NL(p, a) = levenshtein(p, a) / max(len(p), len(a))`` on lower-cased, whitespace-collapsed strings; the score
    is ``max_a (1 - NL)`` over the answers, where an answer with ``NL >= threshold`` contributes 0. Averaging this
    over questions gives the dataset ANLS.

    Args:
        prediction: The model's answer.
        answers: One or more accepted answers.
        threshold: NL at or above which a match counts as wrong; the paper and DocVQA use 0.5.

    Returns:
        The similarity in [0, 1].

    Raises:
        ValueError: If ``answers`` is empty or a bare string, an element is not a string, or ``threshold`` is not a
            number (a bool is not) in (0, 1].
    """
    _check_answers(answers, minimum=1)
    if not _is_real(threshold) or not 0.0 < threshold <= 1.0:
        raise ValueError(f"threshold must be a number in (0, 1], got {threshold!r}")  # True was taken as 1
    pred = _anls_normalize(prediction)
    best = 0.0
    for answer in answers:
        ref = _anls_normalize(answer)
        length = max(len(pred), len(ref))
        distance = levenshtein(pred, ref) / length if length else 0.0
        if distance < threshold:
            best = max(best, 1.0 - distance)
    return best


def _relaxed_number(text: str, what: str = "answers") -> float | None:
    """The number ``text`` spells (``"12%"`` -> 0.12), or ``None`` for text, NaN or infinity."""
    if not isinstance(text, str):
        raise ValueError(f"{what} must be strings, got {text!r} ({type(text).__name__})")
    t = text.strip()
    percent = t.endswith("%")
    try:
        value = float(t.rstrip("%"))
    except ValueError:
        return None
    if not math.isfinite(value):
        return None
    return value / 100.0 if percent else value


def relaxed_accuracy(prediction: str, answers: Sequence[str], max_relative_change: float = 0.05) -> float:
    """ChartQA's relaxed accuracy (Masry et al. 2022, after Methani et al. 2020) of one prediction.

    Where both the prediction and an answer are numbers, the prediction is right when it lies within
    ``max_relative_change`` of the answer, relative to the answer (an answer of 0 needs exactly 0); otherwise it must
    equal the answer up to case and surrounding whitespace.

    Args:
        prediction: The model's answer.
        answers: One or more gold answers (ChartQA has one).
        max_relative_change: The tolerance; ChartQA uses 0.05.

    Returns:
        1.0 if the prediction is right against any answer, else 0.0.

    Raises:
        ValueError: If ``answers`` is empty or a bare string, an element is not a string, or
            ``max_relative_change`` is negative, not finite or a bool.
    """
    _check_answers(answers, minimum=1)
    if not (_is_real(max_relative_change) and math.isfinite(max_relative_change) and max_relative_change >= 0):
        raise ValueError(f"max_relative_change must be a finite number >= 0, got {max_relative_change!r}")
    pred_value = _relaxed_number(prediction, "predictions")
    pred_text = prediction.strip().lower()
    for answer in answers:
        gold = _relaxed_number(answer)
        if pred_value is not None and gold is not None:
            ok = pred_value == 0 if gold == 0 else abs(pred_value - gold) / abs(gold) <= max_relative_change
        else:
            ok = pred_text == answer.strip().lower()
        if ok:
            return 1.0
    return 0.0


# Name -> metric, for configs and evaluation loops (all share the ``(prediction, answers)`` call).
METRICS: dict[str, Callable[[str, Sequence[str]], float]] = {
    "anls": anls,
    "exact_match": exact_match,
    "relaxed_accuracy": relaxed_accuracy,
    "vqa_accuracy": vqa_accuracy,
}
