"""Collation of VQA rows into ``ArrCocLlava`` batches, through the model's processor.

Rows follow the common schema of ``training/data.py`` (``image, question, answers, question_id, question_type``).
For training, each sequence is ``prompt(question)`` with its ``<image>`` expanded to ``budget`` placeholders, then
``answer`` and EOS; labels copy the answer and EOS ids and mask everything else (prompt, image placeholders, padding)
with ``IGNORE_INDEX``, so the loss is the answer's likelihood given the image and question (as in LLaVA's
instruction tuning). The target answer is the most frequent of the row's answers (first occurrence breaks ties),
which for VQAv2's 10 human answers is the consensus answer. For generation, prompts are left-padded.
"""

from __future__ import annotations

import zlib
from collections import Counter
from typing import Any, Mapping, Sequence

import torch

from models.grounding import batch_boxes, image_size
from models.processing import IGNORE_INDEX, ArrCocProcessor, pad_sequences

__all__ = ["RowDataset", "VqaCollator", "consensus_answer", "move_to"]


class RowDataset(torch.utils.data.Dataset):
    """Row access by index for a DataLoader (HF ``datasets`` decode images lazily, per row, in the worker)."""

    def __init__(self, ds: Any, indices: Sequence[int] | None = None):
        self.ds = ds
        self.indices = None if indices is None else [int(i) for i in indices]

    def __len__(self) -> int:
        return len(self.ds) if self.indices is None else len(self.indices)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return self.ds[int(i) if self.indices is None else self.indices[int(i)]]


def consensus_answer(answers: Sequence[str] | str) -> str:
    """The most frequent answer; ties go to the earliest. A bare string is its own answer."""
    if isinstance(answers, str):
        return answers
    if len(answers) == 0:
        raise ValueError("a training row needs at least one answer, got an empty list")
    counts = Counter(answers)
    best = max(counts.values())
    return next(a for a in answers if counts[a] == best)


class VqaCollator:
    """List of rows → batch dict of tensors (plus the rows' ids, answers and types as lists).

    Args:
        processor: The model's :class:`~models.processing.ArrCocProcessor`.
        train: Build teacher-forced sequences with labels (right-padded); otherwise prompts only (left-padded).
        max_length: Raise ``ValueError`` for longer sequences (``None``: no limit). Never truncates silently.
        uint8_pixels: Return ``pixel_values`` as resized uint8 and leave normalisation to :func:`move_to` on the
            accelerator (what the GPU recipes do: data-loader workers then do about a third of the work per image).
        budgets: Training only: draw each batch's image-token budget from these (``train.budget_fractions``), so one
            model learns to allocate and answer at several budgets. The draw is a hash of the batch's question ids
            and ``seed``: the same batch gets the same budget in any worker and after ``--resume``. The batch then
            carries ``budget`` (a 0-d int64 tensor) for the model's ``arr_coc.budget_override``.
        seed: Mixed into the budget draw.

    Shapes (of the result, B rows, L tokens):
        pixel_values: (B, 3, H, W), float32 normalised (uint8 with ``uint8_pixels=True``)
        input_ids, attention_mask, labels: (B, L)
        query_input_ids, query_attention_mask: (B, Lq)
        target_box: (B, 4) float32 in [0, 1], and target_box_valid: (B,) bool, only when rows carry ``target_box``
            (the benchmark's queried region; :mod:`models.grounding`)
        budget: () int64, only with ``budgets``
    """

    def __init__(self, processor: ArrCocProcessor, *, train: bool = True, max_length: int | None = None,
                 uint8_pixels: bool = False, budgets: Sequence[int] | None = None, seed: int = 0):
        self.processor = processor
        self.train = train
        self.max_length = max_length
        self.uint8_pixels = uint8_pixels
        if budgets is not None:
            if not train:
                raise ValueError("budgets (a random budget per batch) is for training; evaluation sets the processor's "
                                 "budget to the method's token count")
            budgets = [int(b) for b in budgets]
            if not budgets or min(budgets) < 1:
                raise ValueError(f"budgets must be a non-empty list of token counts >= 1, got {budgets}")
        self.budgets = budgets
        self.seed = int(seed)

    def batch_budget(self, question_ids: Sequence[str]) -> int:
        """The budget drawn for a batch of these question ids (deterministic; ``budgets`` must be set)."""
        if self.budgets is None:
            raise ValueError("this collator has no budgets to draw from")
        key = f"{self.seed}|" + "|".join(question_ids)
        return self.budgets[zlib.crc32(key.encode()) % len(self.budgets)]

    def __call__(self, rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        if len(rows) == 0:
            raise ValueError("cannot collate an empty batch")
        p = self.processor
        qids = [str(r.get("question_id", i)) for i, r in enumerate(rows)]
        # None (an unlabelled row) is no answers, a bare string one answer; None failed with a TypeError.
        answers = [[] if a is None else [a] if isinstance(a, str) else list(a) for a in (r["answers"] for r in rows)]
        for qid, r, a in zip(qids, rows, answers):
            if r["question"] is None:  # str(None) asked the question "None"
                raise ValueError(f"row {qid!r} has no question (None)")
            if self.train and not a:
                raise ValueError(f"row {qid!r} has no answers to train on ({r['answers']!r}); an unlabelled split?")
        questions = [str(r["question"]) for r in rows]
        budget = None if self.budgets is None else self.batch_budget(qids)
        seqs, labels = [], []
        for q, a in zip(questions, answers):
            prompt = p.encode_prompt(q, budget)
            if self.train:
                target = p.encode_answer(consensus_answer(a))
                seqs.append(prompt + target)
                labels.append([IGNORE_INDEX] * len(prompt) + target)
            else:
                seqs.append(prompt)
        longest = max(len(s) for s in seqs)
        if self.max_length is not None and longest > self.max_length:
            raise ValueError(f"a sequence has {longest} tokens (budget {budget or p.budget} image tokens included), "
                             f"more than max_length={self.max_length}")
        pad = int(p.tokenizer.pad_token_id)
        side = "right" if self.train else "left"
        input_ids, attention_mask = pad_sequences(seqs, pad, side)
        q_ids, q_mask = p.encode_queries(questions)
        batch: dict[str, Any] = {
            "pixel_values": p.preprocess_images([r["image"] for r in rows], normalize=not self.uint8_pixels),
            "input_ids": input_ids,
            "attention_mask": attention_mask.long(),
            "query_input_ids": q_ids,
            "query_attention_mask": q_mask,
            "question_id": qids,
            "question_type": [str(r.get("question_type", "")) for r in rows],
            "answers": answers,
        }
        if self.train:
            batch["labels"], _ = pad_sequences(labels, IGNORE_INDEX, side)
        boxed = [r for r in rows if r.get("target_box")]
        if self.train and boxed and not all(p.boxes_exact(image_size(r["image"])) for r in boxed):
            # Boxes are normalised by the image's own size: that is where they land when the image is squashed, or
            # when padding/cropping has nothing to do (the image has the tower's aspect). Grounding needs them exact.
            raise ValueError(f"rows carry target_box region labels of images whose aspect differs from the tower's "
                             f"{p.image_size}, and the processor pads or crops them (image_resize={p.image_resize!r}): "
                             "the boxes would not land on their pixels; use image_resize=squash or drop the column "
                             "(data.keep_columns)")
        batch.update(batch_boxes(rows))  # target_box / target_box_valid where rows carry region labels
        if budget is not None:
            batch["budget"] = torch.tensor(budget, dtype=torch.int64)
        return batch


def move_to(batch: Mapping[str, Any], device: torch.device | str,
            processor: ArrCocProcessor | None = None) -> dict[str, Any]:
    """Tensors of ``batch`` moved to ``device``; everything else passed through.

    uint8 ``pixel_values`` (from ``VqaCollator(uint8_pixels=True)``) are normalised on ``device`` with ``processor``'s
    mean and std; without a processor they raise ``ValueError`` rather than reach the model unnormalised.
    """
    out = {k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
    pix = out.get("pixel_values")
    if isinstance(pix, torch.Tensor) and pix.dtype == torch.uint8:
        if processor is None:
            raise ValueError("pixel_values are uint8 (VqaCollator(uint8_pixels=True)); pass processor= to move_to so "
                             "they are normalised on the device")
        out["pixel_values"] = processor.normalize(pix)
    return out
