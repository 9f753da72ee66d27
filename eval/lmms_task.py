"""An lmms-eval task for a benchmark in the common schema (the generated benchmark, or any ``save_to_disk`` dataset).

lmms-eval reads tasks from YAML files whose dataset path is fixed in the file, so this module writes one for a given
dataset folder::

    python -m eval.lmms_task --data data/bench --out runs/lmms_task              # writes arr_coc_bench.yaml + utils.py
    python -m eval.lmms_adapter --model arr_coc --model_args checkpoint=weights/arr_coc_small,token_fraction=0.25 \\
        --tasks arr_coc_bench --include_path runs/lmms_task --batch_size 8

The task loads the folder with ``datasets.load_from_disk`` (lmms-eval's ``load_from_disk`` dataset option, no hub
access), asks each row's ``question`` as is (the prompt :mod:`eval.run_eval` gives the model) and scores two metrics:

- ``vqa_accuracy``: :func:`eval.metrics.vqa_accuracy`, the number ``eval.run_eval`` reports;
- ``vqav2_lmms``: lmms-eval's own VQAv2 scoring (its ``vqav2_process_results``), an independent implementation of the
  same definition. Its leave-one-out compares answer records, so each answer gets an ``answer_id`` (VQAv2's records
  carry one); without it, ten identical answers would all be left out together and score 0.

Run from the repository root (``utils.py`` imports this module).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Sequence

from eval.metrics import vqa_accuracy

__all__ = ["doc_to_target", "doc_to_text", "doc_to_visual", "main", "process_results", "write_task"]

_METRICS = ("vqa_accuracy", "vqav2_lmms")
_UTILS = '''"""Written by eval.lmms_task: the task's functions live in the ARR-COC repository (run from its root)."""
from eval.lmms_task import doc_to_target, doc_to_text, doc_to_visual, process_results  # noqa: F401
'''


def doc_to_visual(doc: dict) -> list:
    from models.processing import to_rgb

    return [to_rgb(doc["image"])]


def doc_to_text(doc: dict, lmms_eval_specific_kwargs: dict | None = None) -> str:
    kw = lmms_eval_specific_kwargs or {}
    return f"{kw.get('pre_prompt', '')}{doc['question']}{kw.get('post_prompt', '')}"


def doc_to_target(doc: dict) -> str:
    answers = doc["answers"]
    return answers if isinstance(answers, str) else answers[0]


def process_results(doc: dict, results: Sequence[str]) -> dict[str, float]:
    """The two accuracies of one prediction (``results`` holds the single generated string)."""
    if len(results) != 1:
        raise ValueError(f"expected one generation per question, got {len(results)}")
    answers = [doc["answers"]] if isinstance(doc["answers"], str) else list(doc["answers"])
    out = {"vqa_accuracy": vqa_accuracy(results[0], answers)}
    from lmms_eval.tasks.vqav2.utils import vqav2_process_results

    records = {"question_id": doc.get("question_id"),
               "answers": [{"answer": a, "answer_id": i} for i, a in enumerate(answers)]}
    out["vqav2_lmms"] = float(vqav2_process_results(records, list(results))["exact_match"])
    return out


def write_task(data: str | Path, out: str | Path, *, split: str = "test", name: str = "arr_coc_bench",
               max_new_tokens: int = 8) -> Path:
    """Write ``<name>.yaml`` and ``utils.py`` into ``out`` for the dataset folder ``data``; returns the YAML's path.

    Raises:
        ValueError: ``data`` is not a saved dataset with ``split`` holding ``image``, ``question`` and ``answers``, a
            row has fewer than 2 answers (VQA accuracy leaves one out), ``max_new_tokens`` < 1, or ``name`` is not a
            plain identifier.
    """
    import datasets

    data = Path(data).resolve()
    if not name.replace("_", "").isalnum():
        raise ValueError(f"task name must be letters, digits and '_', got {name!r}")
    if int(max_new_tokens) < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    try:
        ds = datasets.load_from_disk(str(data))
    except FileNotFoundError as e:
        raise ValueError(f"{data} is not a dataset saved with save_to_disk ({e})") from None
    if not isinstance(ds, datasets.DatasetDict) or split not in ds:
        have = sorted(ds) if isinstance(ds, datasets.DatasetDict) else "a single split"
        raise ValueError(f"{data} has no split {split!r} (it has {have})")
    missing = sorted({"image", "question", "answers"} - set(ds[split].column_names))
    if missing:
        raise ValueError(f"{data}/{split} lacks column(s) {missing} of the common schema")
    # Both metrics leave one answer out in turn: a row with fewer than 2 would fail in process_results, after the run.
    for i, answers in enumerate(ds[split]["answers"]):
        n = 1 if isinstance(answers, str) else len(answers)
        if n < 2:
            raise ValueError(f"{data}/{split} row {i} has {n} answer(s), but the task scores VQA accuracy, which needs "
                             "at least 2 per question (VQAv2 and TextVQA have 10; GQA-style single answers do not fit)")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    yaml_text = "\n".join([
        f"task: {name}",
        f"dataset_path: {data}",  # resolved absolute path: lmms-eval reads it from any working directory
        "dataset_kwargs:",
        "  load_from_disk: true",
        f"test_split: {split}",
        "output_type: generate_until",
        "doc_to_visual: !function utils.doc_to_visual",
        "doc_to_text: !function utils.doc_to_text",
        "doc_to_target: !function utils.doc_to_target",
        "generation_kwargs:",
        f"  max_new_tokens: {int(max_new_tokens)}",
        "  do_sample: false",
        "process_results: !function utils.process_results",
        "metric_list:",
        *[f"  - metric: {m}\n    aggregation: mean\n    higher_is_better: true" for m in _METRICS],
        "metadata:",
        "  - version: 0.0",
        "",
    ])
    path = out / f"{name}.yaml"
    path.write_text(yaml_text)
    (out / "utils.py").write_text(_UTILS)
    return path


def main(argv: Sequence[str] | None = None) -> Path:
    p = argparse.ArgumentParser(prog="python -m eval.lmms_task", description=__doc__.split("\n\n")[0])
    p.add_argument("--data", required=True, help="dataset folder (save_to_disk), e.g. the generated benchmark")
    p.add_argument("--out", required=True, help="folder for the task files (lmms-eval's --include_path)")
    p.add_argument("--split", default="test")
    p.add_argument("--name", default="arr_coc_bench", help="task name for --tasks")
    p.add_argument("--max-new-tokens", type=int, default=8)
    a = p.parse_args(argv)
    path = write_task(a.data, a.out, split=a.split, name=a.name, max_new_tokens=a.max_new_tokens)
    print(f"wrote {path}; run: python -m eval.lmms_adapter --model arr_coc --model_args checkpoint=... "
          f"--tasks {a.name} --include_path {path.parent}")
    return path


if __name__ == "__main__":
    main(sys.argv[1:])
