"""``training.collate``: the uint8 pixel path (normalised on the device) matches the float path bit for bit."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from models.builders import build_model
from training.collate import RowDataset, VqaCollator, consensus_answer, move_to


@pytest.fixture(scope="module")
def processor():
    return build_model("tiny")[1]


def _rows(n: int, size: tuple[int, int]) -> list[dict]:
    rng = np.random.default_rng(0)
    return [{"image": Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)), "question": f"what is {i}?",
             "answers": ["2"] * 10, "question_id": str(i), "question_type": "digit"} for i in range(n)]


@pytest.mark.parametrize("size", [None, (37, 53)], ids=["model-size", "resized"])
def test_uint8_pixels_normalised_by_move_to_equal_float_path(processor, size):
    h, w = processor.image_size
    rows = _rows(3, size or (h, w))
    ref = VqaCollator(processor, train=True)(rows)
    raw = VqaCollator(processor, train=True, uint8_pixels=True)(rows)
    assert ref["pixel_values"].dtype == torch.float32 and raw["pixel_values"].dtype == torch.uint8
    assert raw["pixel_values"].shape == ref["pixel_values"].shape == (3, 3, h, w)
    moved = move_to(raw, "cpu", processor)
    assert torch.equal(moved["pixel_values"], ref["pixel_values"])
    for k in ("input_ids", "attention_mask", "labels", "query_input_ids"):
        assert torch.equal(moved[k], ref[k])


def test_uint8_pixels_without_processor_are_refused(processor):
    raw = VqaCollator(processor, uint8_pixels=True)(_rows(1, processor.image_size))
    with pytest.raises(ValueError, match="uint8"):
        move_to(raw, "cpu")


def test_normalize_rejects_non_uint8(processor):
    with pytest.raises(ValueError, match="torch.float32"):
        processor.normalize(torch.zeros(1, 3, 4, 4))
    with pytest.raises(ValueError, match=r"\(3, 4, 4\)"):
        processor.normalize(torch.zeros(3, 4, 4, dtype=torch.uint8))


def test_row_dataset_indices():
    ds = [{"i": i} for i in range(5)]
    assert [r["i"] for r in RowDataset(ds, [4, 0, 2])] == [4, 0, 2]
    assert len(RowDataset(ds)) == 5 and RowDataset(ds)[3] == {"i": 3}


def test_random_budget_per_batch_is_deterministic_and_expands_the_placeholders(processor):
    # train.budget_fractions: each batch draws its budget from the list by a hash of its question ids (the same batch
    # gets the same budget in any worker and after --resume); every row's <image> expands to exactly that many ids.
    from models.processing import IGNORE_INDEX

    rows = _rows(24, (20, 20))
    for i, r in enumerate(rows):
        r["question_id"] = f"q{i}"
    col = VqaCollator(processor, train=True, budgets=[16, 32, 64], seed=3)
    again = VqaCollator(processor, train=True, budgets=[16, 32, 64], seed=3)
    other = VqaCollator(processor, train=True, budgets=[16, 32, 64], seed=4)
    drawn, drawn_other = [], []
    for j in range(0, 24, 2):
        b = col(rows[j:j + 2])
        t = int(b["budget"])
        assert t in (16, 32, 64) and b["budget"].dtype == torch.int64
        image = b["input_ids"] == processor.image_token_id
        assert image.sum(1).tolist() == [t, t]
        assert bool((b["labels"][image] == IGNORE_INDEX).all())
        assert int(again(rows[j:j + 2])["budget"]) == t
        drawn.append(t)
        drawn_other.append(other.batch_budget([r["question_id"] for r in rows[j:j + 2]]))
    assert len(set(drawn)) == 3 and drawn != drawn_other
    assert "budget" not in VqaCollator(processor, train=True)(rows[:2])  # no draw without budgets
    with pytest.raises(ValueError, match="for training"):
        VqaCollator(processor, train=False, budgets=[16])
    with pytest.raises(ValueError, match="non-empty list of token counts"):
        VqaCollator(processor, train=True, budgets=[])
    with pytest.raises(ValueError, match="non-empty list of token counts"):
        VqaCollator(processor, train=True, budgets=[0, 16])
    with pytest.raises(ValueError, match="budget must be >= 1"):
        processor.encode_prompt("what?", 0)


def test_consensus_answer_takes_the_most_frequent_and_the_earliest_on_ties():
    assert consensus_answer(["a", "b", "b", "c"]) == "b"
    assert consensus_answer(["c", "b", "c", "b", "a"]) == "c"  # tie between "c" and "b": the earliest wins
    assert consensus_answer("two dogs") == "two dogs"  # a bare string is one answer, not its characters
    with pytest.raises(ValueError, match="at least one answer"):
        consensus_answer([])


def test_train_batch_masks_the_prompt_and_pads_right_eval_batch_pads_left(processor):
    from models.processing import IGNORE_INDEX

    rows = _rows(2, (20, 20))
    rows[0]["question"] = "what is it?"
    rows[1]["question"] = "what is the colour of the largest object in the picture?"
    rows[0]["answers"] = ["red", "blue", "blue"]
    rows[1]["answers"] = "yes"  # a bare string is the row's only answer
    del rows[0]["question_id"], rows[1]["question_id"]
    pad = processor.tokenizer.pad_token_id
    b = VqaCollator(processor, train=True)(rows)
    assert b["question_id"] == ["0", "1"] and b["answers"] == [["red", "blue", "blue"], ["yes"]]
    assert b["attention_mask"].dtype == torch.int64
    for i, (r, answer) in enumerate(zip(rows, ["blue", "yes"])):
        prompt = processor.encode_prompt(r["question"], None)
        target = processor.encode_answer(answer)
        n = len(prompt) + len(target)
        assert b["input_ids"][i, :n].tolist() == prompt + target
        width = b["labels"].shape[1]
        assert b["labels"][i].tolist() == [IGNORE_INDEX] * len(prompt) + target + [IGNORE_INDEX] * (width - n)
        assert b["attention_mask"][i].tolist() == [1] * n + [0] * (b["input_ids"].shape[1] - n)
        assert bool((b["input_ids"][i, n:] == pad).all())
    e = VqaCollator(processor, train=False)(rows)
    assert "labels" not in e
    short = processor.encode_prompt(rows[0]["question"], None)
    width = e["input_ids"].shape[1]
    assert width > len(short) and e["input_ids"][0, width - len(short):].tolist() == short
    assert e["attention_mask"][0].tolist() == [0] * (width - len(short)) + [1] * len(short)


def test_max_length_is_inclusive_and_empty_batches_are_refused(processor):
    rows = _rows(1, (20, 20))
    longest = VqaCollator(processor, train=True)(rows)["input_ids"].shape[1]
    assert VqaCollator(processor, train=True, max_length=longest)(rows)["input_ids"].shape[1] == longest
    with pytest.raises(ValueError, match=f"max_length={longest - 1}"):
        VqaCollator(processor, train=True, max_length=longest - 1)(rows)
    with pytest.raises(ValueError, match="empty batch"):
        VqaCollator(processor)([])


def test_row_dataset_length_follows_the_indices():
    ds = [{"i": i} for i in range(5)]
    assert len(RowDataset(ds, [4, 0, 2])) == 3
    assert len(torch.utils.data.DataLoader(RowDataset(ds, [1, 3]), batch_size=None)) == 2


def test_rows_without_answers_or_question_are_named(processor):
    # An unlabelled row (answers None, as a raw test split has them) collates for evaluation with answers []; it
    # raised TypeError ("'NoneType' object is not iterable"). Training refuses it, and an empty list, by question id
    # (the message named no row), and a None question is refused rather than asked as the text "None".
    rows = _rows(2, (20, 20))
    rows[1]["answers"] = None
    assert VqaCollator(processor, train=False)(rows)["answers"] == [["2"] * 10, []]
    with pytest.raises(ValueError, match=r"row '1' has no answers to train on \(None\)"):
        VqaCollator(processor, train=True)(rows)
    rows[1]["answers"] = []
    with pytest.raises(ValueError, match=r"row '1' has no answers to train on \(\[\]\)"):
        VqaCollator(processor, train=True)(rows)
    rows[0]["question"] = None
    with pytest.raises(ValueError, match=r"row '0' has no question \(None\)"):
        VqaCollator(processor, train=False)(rows)
