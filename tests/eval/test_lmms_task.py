"""The lmms-eval task writer (always), and a real ``lmms_eval`` run of it against ``eval.run_eval`` (when installed).

lmms-eval is an optional extra (~80 packages); ``make test-lmms`` installs it beside the project's venv and runs this
file and ``test_lmms_adapter.py`` with it.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from eval.lmms_adapter import HAS_LMMS_EVAL
from eval.lmms_task import doc_to_target, doc_to_text, doc_to_visual, process_results, write_task

needs_lmms = pytest.mark.skipif(not HAS_LMMS_EVAL, reason="lmms-eval is not installed (optional: make test-lmms)")


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    from training.benchmark import TINY_GENERATOR, BenchmarkCfg, make_benchmark

    path = tmp_path_factory.mktemp("lmms_bench") / "bench"
    make_benchmark(path, seed=0, sizes={"train": 2, "test": 6}, cfg=BenchmarkCfg.from_dict(TINY_GENERATOR))
    return path


def test_write_task_files(bench, tmp_path):
    path = write_task(bench, tmp_path / "task", name="toy_bench", max_new_tokens=5)
    text = path.read_text()
    assert path.name == "toy_bench.yaml"
    assert f"dataset_path: {Path(bench).resolve()}" in text and "load_from_disk: true" in text
    assert "test_split: test" in text and "max_new_tokens: 5" in text
    assert "from eval.lmms_task import" in (tmp_path / "task" / "utils.py").read_text()


def test_doc_to_visual_blends_transparency_over_white():
    import numpy as np
    from PIL import Image

    (img,) = doc_to_visual({"image": Image.new("LA", (3, 2), (0, 0))})
    assert img.mode == "RGB" and img.size == (3, 2) and (np.asarray(img) == 255).all()


def test_write_task_refuses_bad_input(bench, tmp_path):
    with pytest.raises(ValueError, match="not a dataset saved"):
        write_task(tmp_path / "nowhere", tmp_path / "t")
    with pytest.raises(ValueError, match="no split 'val'"):
        write_task(bench, tmp_path / "t", split="val")
    with pytest.raises(ValueError, match="max_new_tokens"):
        write_task(bench, tmp_path / "t", max_new_tokens=0)
    with pytest.raises(ValueError, match="task name"):
        write_task(bench, tmp_path / "t", name="a b")
    import datasets

    datasets.DatasetDict({"test": datasets.Dataset.from_dict({"question": ["q"]})}).save_to_disk(tmp_path / "bad")
    with pytest.raises(ValueError, match=r"lacks column\(s\) \['answers', 'image'\]"):
        write_task(tmp_path / "bad", tmp_path / "t")


def test_prompt_and_target():
    doc = {"question": "what digit is in the red circle?", "answers": ["7", "7", "1"]}
    assert doc_to_text(doc) == doc["question"]
    assert doc_to_text(doc, {"pre_prompt": "Q: ", "post_prompt": "\nA:"}) == f"Q: {doc['question']}\nA:"
    assert doc_to_target(doc) == "7"


@needs_lmms
def test_both_scorings_agree_on_hand_cases():
    # Ten answers, as VQAv2 has: leave-one-out min(1, matches / 3) averaged over the ten.
    answers = ["two"] * 2 + ["2"] * 2 + ["three"] * 6
    for pred, want in (("2", 1.0), ("Two.", 1.0), ("3", 1.0), ("a dog", 0.0), ("the three", 1.0)):
        got = process_results({"question_id": "q", "answers": answers}, [pred])
        assert got["vqa_accuracy"] == pytest.approx(want) and got["vqav2_lmms"] == pytest.approx(want), (pred, got)
    two_of_ten = ["red"] * 2 + ["blue"] * 8
    got = process_results({"answers": two_of_ten}, ["red"])
    assert got["vqa_accuracy"] == pytest.approx(0.6) == got["vqav2_lmms"]  # 8 x 2/3 + 2 x 1/3, over 10
    with pytest.raises(ValueError, match="one generation"):
        process_results({"answers": ["a"]}, ["a", "b"])


@needs_lmms
def test_lmms_eval_run_matches_run_eval(bench, tmp_path):
    """The same model, method and questions through lmms-eval's CLI and through eval.run_eval: same predictions."""
    from eval.lmms_adapter import _main
    from eval.run_eval import main as run_eval

    write_task(bench, tmp_path / "task", name="toy_bench")
    out = tmp_path / "lmms_out"
    _main(["--model", "arr_coc", "--model_args", "model_preset=tiny,method=uniform,token_fraction=0.5,device=cpu",
           "--tasks", "toy_bench", "--include_path", str(tmp_path / "task"), "--batch_size", "4",
           "--output_path", str(out), "--log_samples"])
    samples = [json.loads(line) for f in out.rglob("*samples_toy_bench*.jsonl") for line in f.read_text().splitlines()]
    assert len(samples) == 6
    ours_dir = tmp_path / "ours"
    run_eval(["--config", "configs/eval/tiny.yaml", f"output_dir={ours_dir}", f"data.path={bench}",
              "data.generate=false", "data.split=test", "method=uniform", "token_fraction=0.5", "batch_size=4"])
    ours = [json.loads(line) for line in (ours_dir / "predictions.jsonl").read_text().splitlines()]
    by_question = {r["question"]: r for r in ours}
    assert len(by_question) == 6
    for s in samples:
        r = by_question[s["input"]]
        pred = s["filtered_resps"] if isinstance(s["filtered_resps"], str) else s["filtered_resps"][0]
        assert pred == r["prediction"]
        assert s["vqa_accuracy"] == pytest.approx(r["score"]) == pytest.approx(s["vqav2_lmms"])


@needs_lmms
def test_vqa_accuracy_equals_lmms_evals_vqav2_scoring_on_random_answers():
    """Differential check of eval.metrics.vqa_accuracy against lmms-eval's VQAv2 scorer (its vqav2 task's
    process_results) on 3,000 random answer sets built from normalisation's trouble spots: number words, articles,
    contractions, decimals, commas between digits, punctuation at either end, case."""
    import random

    from lmms_eval.tasks.vqav2.utils import vqav2_process_results

    from eval.metrics import vqa_accuracy

    rng = random.Random(0)
    words = ["two", "2", "the", "a", "an", "dog", "dogs", "none", "0", "ten", "yes", "no", "3.5", "100,000", "dont",
             "don't", "it's", "red", "man's", "x-ray", "1:30", "ok.", "hi!", "(a)", "well", "cant", "won't", "three"]
    punct = list(".;/[]\"{}()=+\\_-><@`!:',?") + [" ", "  "]

    def answer() -> str:
        out = []
        for _ in range(rng.randint(1, 3)):
            w = rng.choice(words)
            w = w.upper() if rng.random() < 0.15 else w.capitalize() if rng.random() < 0.15 else w
            w = w + rng.choice(punct) if rng.random() < 0.3 else w
            out.append(rng.choice(punct) + w if rng.random() < 0.2 else w)
        return " ".join(out)

    scores = []
    for _ in range(3000):
        answers = [answer() for _ in range(rng.choice([3, 10]))]
        if rng.random() < 0.5:  # repeated answers, as real annotations have
            answers = [rng.choice(answers) for _ in range(10)]
        pred = rng.choice([*answers, answer()])
        records = [{"answer": a, "answer_id": i} for i, a in enumerate(answers)]
        theirs = vqav2_process_results({"question_id": 0, "answers": records}, [pred])["exact_match"]
        assert vqa_accuracy(pred, answers) == pytest.approx(theirs, abs=1e-12), (pred, answers)
        scores.append(theirs)
    assert 0.2 < sum(s > 0 for s in scores) / len(scores) < 0.9  # both matches and misses were exercised


@needs_lmms
def test_anls_equals_lmms_evals_where_the_documented_differences_do_not_apply():
    """ANLS against lmms-eval's ``anls`` metric on random strings with single spaces and NL != 0.5 (the two documented
    differences: the threshold's strict inequality, and lmms-eval's raw-string lengths)."""
    import random
    from fractions import Fraction

    from lmms_eval.api.metrics import anls as lmms_anls

    from eval.metrics import anls, levenshtein

    rng = random.Random(0)

    def text() -> str:
        words = ("".join(rng.choice("abcAB12.") for _ in range(rng.randint(1, 4))) for _ in range(rng.randint(1, 2)))
        return " ".join(words)

    checked = 0
    for _ in range(3000):
        answers = [text() for _ in range(rng.randint(1, 3))]
        pred = rng.choice([*answers, text(), text()])
        if any(Fraction(levenshtein(pred.lower(), a.lower()), max(len(pred), len(a))) == Fraction(1, 2)
               for a in answers):
            continue
        assert anls(pred, answers) == pytest.approx(lmms_anls(answers, [pred])["anls"], abs=1e-12), (pred, answers)
        checked += 1
    assert checked > 2500
    # The documented differences, as numbers.
    assert anls("A ", ["AB "]) == 0.0 and lmms_anls(["AB "], ["A "])["anls"] == pytest.approx(2 / 3)
    assert anls("ab", ["abcd"]) == 0.0 and lmms_anls(["abcd"], ["ab"])["anls"] == 0.5


@needs_lmms
def test_relaxed_accuracy_equals_lmms_evals_chartqa_scoring_where_the_documented_differences_do_not_apply():
    """relaxed_accuracy against lmms-eval's ChartQA ``relaxed_correctness`` on random numbers (near the 5% boundary,
    percentages, signs, exponents) and words; the three documented differences (gold 0, surrounding whitespace,
    nan/inf) are left out of the random cases and checked as numbers."""
    import random

    from lmms_eval.tasks.chartqa.utils import relaxed_correctness

    from eval.metrics import relaxed_accuracy

    rng = random.Random(0)
    words = ["Yes", "yes", "no", "Blue", "blue", "2019", "1,000", "12a", "-", "."]

    def number(base: float | None = None) -> str:
        if base is None:
            base = rng.choice([1, 3, 12.5, 100, 0.07, -4, 2e6])
        v = base * (1 + rng.uniform(-0.08, 0.08)) if rng.random() < 0.7 else base
        text = rng.choice([f"{v:g}", f"{v:.2f}", f"{v:.1e}", str(round(v))])
        return text + "%" if rng.random() < 0.15 else text

    checked = right = 0
    for _ in range(4000):
        gold = number() if rng.random() < 0.7 else rng.choice(words)
        try:
            value = float(gold.rstrip("%"))
        except ValueError:
            value = None
        if value == 0:
            continue  # documented difference: a gold 0
        if value is not None and rng.random() < 0.7:
            pred = number(value)  # near the gold value: both sides of the 5% boundary
        else:
            pred = number() if rng.random() < 0.5 else rng.choice(words)
        ours = relaxed_accuracy(pred, [gold])
        assert ours == float(relaxed_correctness(pred, gold)), (pred, gold)
        checked += 1
        right += ours == 1.0
    assert checked > 3500 and 0.2 < right / checked < 0.8  # both sides of the tolerance were exercised
    # The documented differences, as numbers.
    assert relaxed_accuracy("0.0", ["0"]) == 1.0 and not relaxed_correctness("0.0", "0")
    assert relaxed_accuracy("yes ", ["yes"]) == 1.0 and not relaxed_correctness("yes ", "yes")
    assert relaxed_accuracy("nan", ["nan"]) == 1.0 and not relaxed_correctness("nan", "nan")


def test_doc_to_visual_gives_rgb():
    from PIL import Image

    from eval.lmms_task import doc_to_visual

    (img,) = doc_to_visual({"image": Image.new("L", (5, 4), 7)})
    assert img.mode == "RGB" and img.size == (5, 4)


def test_process_results_hands_lmms_eval_numbered_answer_records(monkeypatch):
    """What reaches lmms-eval's VQAv2 scorer (a stand-in here): the question id, every answer with its own answer_id
    (ten identical answers are ten records), the one generation; its exact_match becomes vqav2_lmms."""
    import sys
    import types

    seen = []
    fake = types.ModuleType("lmms_eval.tasks.vqav2.utils")
    fake.vqav2_process_results = lambda doc, results: seen.append((doc, results)) or {"exact_match": 0.25}
    for name in ("lmms_eval", "lmms_eval.tasks", "lmms_eval.tasks.vqav2"):
        monkeypatch.setitem(sys.modules, name, types.ModuleType(name))
    monkeypatch.setitem(sys.modules, "lmms_eval.tasks.vqav2.utils", fake)
    got = process_results({"question_id": "q7", "answers": ["7", "7", "1"]}, ["7"])
    assert got == {"vqa_accuracy": pytest.approx(4 / 9), "vqav2_lmms": 0.25}  # (1/3 + 1/3 + 2/3) / 3
    assert seen == [({"question_id": "q7", "answers": [{"answer": "7", "answer_id": 0}, {"answer": "7", "answer_id": 1},
                                                       {"answer": "1", "answer_id": 2}]}, ["7"])]
    with pytest.raises(ValueError, match="one generation per question, got 0"):
        process_results({"answers": ["7", "7"]}, [])
    # A bare string is one answer (not one per character), which VQA accuracy cannot score.
    with pytest.raises(ValueError, match="at least 2 reference answer"):
        process_results({"answers": "yes"}, ["yes"])


def test_write_task_yaml_fields(bench, tmp_path, monkeypatch):
    # A relative data path is written resolved (lmms-eval reads it from its own working directory).
    monkeypatch.chdir(Path(bench).parent)
    path = write_task(Path(bench).name, tmp_path / "task", split="train")
    text = path.read_text()
    assert f"dataset_path: {Path(bench).resolve()}\n" in text and "test_split: train\n" in text
    assert "  do_sample: false\n" in text and "  max_new_tokens: 8\n" in text
    assert "  - metric: vqa_accuracy\n" in text and "  - metric: vqav2_lmms\n" in text


def test_cli_passes_every_option(bench, tmp_path):
    from eval.lmms_task import main

    path = main(["--data", str(bench), "--out", str(tmp_path / "t"), "--split", "train", "--name", "my_task",
                 "--max-new-tokens", "3"])
    text = path.read_text()
    assert path == tmp_path / "t" / "my_task.yaml" and (tmp_path / "t" / "utils.py").is_file()
    assert "task: my_task\n" in text and "test_split: train\n" in text and "  max_new_tokens: 3\n" in text


def test_write_task_refuses_rows_that_vqa_accuracy_cannot_score(tmp_path):
    """A common-schema set with single-answer rows (GQA's layout) was written as a task, and every process_results call
    then raised, after lmms-eval had generated all the answers; it is refused when the task is written."""
    import datasets

    rows = {"image": ["i0", "i1"], "question": ["q0", "q1"], "answers": [["a", "a"], ["b"]]}
    datasets.DatasetDict({"test": datasets.Dataset.from_dict(rows)}).save_to_disk(tmp_path / "gqa_like")
    with pytest.raises(ValueError, match=r"row 1 has 1 answer\(s\).*at least 2"):
        write_task(tmp_path / "gqa_like", tmp_path / "t")
    assert not (tmp_path / "t").exists()
