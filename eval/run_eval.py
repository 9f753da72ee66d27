"""Evaluate an ``ArrCocLlava`` (or a token-reduction baseline on it) on a VQA dataset in the common schema.

Launch (each config in ``configs/eval/`` is headed by its own command)::

    python -m eval.run_eval --config configs/eval/tiny.yaml
    python -m eval.run_eval --config configs/eval/bench.yaml checkpoint=runs/bench method=visionzip token_fraction=0.25

What it does: loads a checkpoint written by the training recipe (or builds a preset with random weights, for smoke
tests), binds the evaluated *method* to it (``arr_coc``: the model's own layer, at its trained budget or at
``token_fraction`` of the full-token count; or a training-free baseline of :mod:`eval.baselines` at exactly that
many tokens), then decodes greedily in batches with a tqdm bar and scores every answer with the dataset's metric
(:mod:`eval.metrics`). Outputs in ``output_dir``:

- ``predictions.jsonl``: one record per question (``question_id, question, prediction, answers, question_type,
  score, tokens`` (visual tokens the LLM attended to), ``target_fraction`` (benchmark only: the share of those
  tokens whose centre lies in the queried ``target_box``), ``latency_s``), appended and flushed batch by batch;
- ``summary.json``: accuracy overall and by question type, mean visual tokens per image, the visual-token FLOPs
  fraction against the full-token model (defined in :mod:`eval.flops`), mean latency per sample, and the mean
  ``target_fraction``;
- ``submission.json``: ``[{"question_id", "answer"}]`` in the dataset's order (integer ids where the ids are
  integers), the format of the VQAv2 / TextVQA test servers (EvalAI);
- ``run.json``: what was evaluated. A rerun with the same settings resumes: questions already in the JSONL are
  skipped (a torn last line from a kill is dropped), and a rerun with different settings is refused unless
  ``resume=false``, which starts over. The settings are the method, budget, metric, data, generation length, the
  model (its checkpoint or preset, the ``model.`` overrides and a fingerprint of its parameter names, shapes and
  dtypes), the device and the batch size (left padding, hence greedy outputs, and latency depend on the last two).
  A JSONL holding questions the dataset does not (the data at ``data.path`` was replaced) is refused likewise.

An unlabelled split (VQAv2's test-dev, DocVQA's test: scored by a test server) is refused unless ``predict_only=true``,
which writes the predictions and ``submission.json`` without scores (``score`` null, accuracy null).
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import itertools
import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import torch
from torch import Tensor

from eval.baselines import VisualMethod, create_method, list_methods
from eval.flops import visual_flops_fraction
from eval.metrics import METRICS
from models.builders import (apply_overrides, build_for_checkpoint, build_model, check_choice, dataclass_from_dict,
                             dataclass_to_dict, deep_merge, load_model_cfg, load_yaml, model_dict)

__all__ = ["EvalCfg", "EvalDataCfg", "ResumeMismatchError", "build_eval_model", "evaluate", "load_eval_cfg",
           "load_trained_model", "main", "summarize", "target_fraction"]


# -- configuration -----------------------------------------------------------------------------------------------------
class ResumeMismatchError(ValueError):
    """An output folder holds predictions made with other settings (another model, method, budget or data)."""


@dataclass
class EvalDataCfg:
    """The evaluated dataset."""

    # benchmark (training/benchmark.py) | vqav2 | gqa | textvqa | docvqa | chartqa (training/data.py)
    source: str = "benchmark"
    path: str | None = None  # dataset directory (benchmark: written by scripts/make_benchmark.py)
    split: str = "test"  # split to evaluate
    max_samples: int | None = None  # only the first N rows
    generate: bool = False  # benchmark only: generate it at `path` when missing (tiny smoke runs)
    generate_sizes: dict = field(default_factory=lambda: {"train": 8, "val": 8, "test": 16})  # rows per split
    generate_seed: int = 0  # benchmark seed when generating
    generate_cfg: dict = field(default_factory=dict)  # BenchmarkCfg fields when generating (e.g. image_size)
    images: str | None = None  # GQA: path of the separate images table
    config: str | None = None  # HF dataset config (e.g. GQA's), for sources that have several
    columns: dict = field(default_factory=dict)  # ColumnMap overrides: schema field -> source column (training/data.py)
    keep_columns: list = field(default_factory=list)  # source columns carried through, e.g. [target_box] for grounding


@dataclass
class EvalCfg:
    """One evaluation run: a model, a method at a token budget, a dataset."""

    output_dir: str = "runs/eval/tiny"  # predictions.jsonl, summary.json, run.json
    checkpoint: str | None = None  # a checkpoint folder, a run's output_dir (its latest), or an exported model folder
    model_preset: str = "tiny"  # without a checkpoint: configs/models/<name>.yaml (or a YAML path), random init
    model: dict = field(default_factory=dict)  # ModelCfg fields overriding the preset / the checkpoint's config
    method: str = "arr_coc"  # arr_coc (the model's own layer) or a baseline of eval/baselines.py
    token_fraction: float | None = None  # visual tokens as a fraction of the full-token count; None: trained budget
    baseline: dict = field(default_factory=dict)  # baseline constructor arguments (e.g. {layer: 2} for fastv)
    data: EvalDataCfg = field(default_factory=EvalDataCfg)
    batch_size: int = 8  # questions per generate() call
    num_workers: int = 0  # DataLoader worker processes decoding images (0: in this process)
    max_new_tokens: int = 8  # greedy decoding length
    metric: str = "auto"  # auto (the source's community metric) or a key of eval.metrics.METRICS
    device: str = "auto"  # auto (CUDA when available) | cpu | cuda
    seed: int = 0  # random init of a preset (no checkpoint)
    resume: bool = True  # skip questions already in predictions.jsonl
    predict_only: bool = False  # no scoring (unlabelled splits, for a test server): score and accuracy null


def load_eval_cfg(path: str | os.PathLike[str] | None, overrides: Sequence[str] = ()) -> EvalCfg:
    """Read an eval YAML and apply ``key=value`` overrides; unknown keys or bad values raise ``ValueError``."""
    raw = load_yaml(path) if path is not None else {}
    cfg = dataclass_from_dict(EvalCfg, apply_overrides(raw, overrides))
    check_choice("method", cfg.method, list_methods())
    if cfg.metric != "auto" and cfg.metric not in METRICS:
        raise ValueError(f"metric={cfg.metric!r}; choose from ['auto'] + {sorted(METRICS)}")
    check_choice("device", cfg.device, ("auto", "cpu", "cuda"))
    for name, v in (("batch_size", cfg.batch_size), ("max_new_tokens", cfg.max_new_tokens)):
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise ValueError(f"{name} must be a positive integer, got {v!r}")
    if cfg.token_fraction is not None and not (isinstance(cfg.token_fraction, (int, float))
                                               and not isinstance(cfg.token_fraction, bool)
                                               and 0 < float(cfg.token_fraction) <= 1):
        raise ValueError(f"token_fraction must be in (0, 1] or null, got {cfg.token_fraction!r}")
    for name in ("resume", "predict_only"):
        if not isinstance(getattr(cfg, name), bool):
            raise ValueError(f"{name} must be true or false, got {getattr(cfg, name)!r}")
    # Checked here, not where used: seed=abc failed as int()'s message without the key, seed=1.5 or true was taken,
    # num_workers=abc, output_dir=null and checkpoint=5 raised TypeErrors, model=abc an AttributeError.
    for name in ("seed", "num_workers"):
        v = getattr(cfg, name)
        if not isinstance(v, int) or isinstance(v, bool) or v < 0:
            raise ValueError(f"{name} must be an integer >= 0, got {v!r}")
    if not isinstance(cfg.output_dir, str) or not cfg.output_dir:
        raise ValueError(f"output_dir must be a non-empty path, got {cfg.output_dir!r}")
    if cfg.checkpoint is not None and (not isinstance(cfg.checkpoint, str) or not cfg.checkpoint):
        raise ValueError(f"checkpoint must be a path or null, got {cfg.checkpoint!r}")
    for name in ("model", "baseline"):
        if not isinstance(getattr(cfg, name), Mapping):
            raise ValueError(f"{name} must be a mapping of settings, got {getattr(cfg, name)!r}")
    mx = cfg.data.max_samples
    if mx is not None and (not isinstance(mx, int) or isinstance(mx, bool) or mx < 1):
        raise ValueError(f"data.max_samples must be a positive integer or null, got {mx!r}")
    if cfg.method != "arr_coc" and cfg.token_fraction is None:
        raise ValueError(f"method={cfg.method!r} is a baseline and needs token_fraction")
    load_model_cfg(model_dict(cfg.model_preset, cfg.model))  # validates the model overrides early
    return cfg


# -- model -------------------------------------------------------------------------------------------------------------
def load_trained_model(checkpoint: str, model_overrides: Mapping[str, Any] | None = None):
    """A training checkpoint's model: ``(model, processor, model_cfg, trainer_state, checkpoint_dir)``.

    ``checkpoint`` is a checkpoint folder or a run's output folder (its latest checkpoint); the model is rebuilt from
    the run's resolved config (with ``model_overrides`` merged on top) and loaded from ``model.safetensors``. An
    exported model folder (``scripts/export_model.py``, e.g. ``weights/arr_coc_small``) works too: its saved config
    is used, in its saved dtype, and ``trainer_state`` is ``{"step": ..., "exported": True, "metadata": ...}`` (its
    ``config.json`` metadata).
    """
    from models.pretrained import FORMAT, load_pretrained
    from training.checkpoint import load_model_weights, resolve_checkpoint

    exported = Path(checkpoint) / "config.json"
    info = json.loads(exported.read_text()) if exported.is_file() else {}
    if info.get("format") == FORMAT:
        model, processor = load_pretrained(checkpoint, compute_dtype=None, model_overrides=model_overrides)
        meta = info.get("metadata", {})
        state = {"step": meta.get("step"), "exported": True, "metadata": meta}
        return model, processor, deep_merge(info["model"], model_overrides or {}), state, Path(checkpoint)
    ckpt = resolve_checkpoint(checkpoint)
    state = json.loads((ckpt / "trainer_state.json").read_text())
    train_cfg = state.get("config", {})
    model_cfg = deep_merge(model_dict(train_cfg.get("model_preset", "tiny"), train_cfg.get("model", {})),
                           model_overrides or {})
    model, processor = build_for_checkpoint(model_cfg)  # its weights are loaded next
    load_model_weights(model, ckpt)
    return model, processor, model_cfg, state, ckpt


def build_eval_model(cfg: EvalCfg):
    """``(model, processor, description)`` for ``cfg``: a trained checkpoint, or a randomly initialised preset."""
    if cfg.checkpoint:
        model, processor, _, state, ckpt = load_trained_model(cfg.checkpoint, cfg.model)
        return model, processor, {"checkpoint": str(ckpt.resolve()), "step": state.get("step")}
    torch.manual_seed(cfg.seed)
    model, processor = build_model(model_dict(cfg.model_preset, cfg.model))
    return model, processor, {"checkpoint": None, "preset": cfg.model_preset, "seed": cfg.seed,
                              "note": "random initialisation (smoke test)"}


def _architecture(model: torch.nn.Module) -> str:
    """A short fingerprint of the model's parameter and buffer names, shapes and dtypes."""
    h = hashlib.sha256()
    for name, t in itertools.chain(model.named_parameters(), model.named_buffers()):
        h.update(f"{name}:{tuple(t.shape)}:{t.dtype};".encode())
    return h.hexdigest()[:16]


def _metric_name(cfg: EvalCfg) -> str:
    if cfg.metric != "auto":
        return cfg.metric
    if cfg.data.source == "benchmark":
        return "exact_match"  # one generated answer per question
    from training.data import SOURCES

    if cfg.data.source not in SOURCES:
        raise ValueError(f"data.source={cfg.data.source!r}; choose from ['benchmark'] + {sorted(SOURCES)}")
    return SOURCES[cfg.data.source].metric


# -- per-question bookkeeping ------------------------------------------------------------------------------------------
def in_box(positions: Tensor, box: Sequence[int], image_size: tuple[int, int]) -> Tensor:
    """Which visual tokens have their centre in ``box = [x0, y0, x1, y1)`` (pixels of a ``(W, H)`` image).

    Shapes:
        positions: (T, 2) (row, col) in [0, 1]
        returns: (T,) bool
    """
    w, h = image_size
    y, x = positions[:, 0].double() * h, positions[:, 1].double() * w
    x0, y0, x1, y1 = (float(v) for v in box)
    return (x >= x0) & (x < x1) & (y >= y0) & (y < y1)


def target_fraction(positions: Tensor, box: Sequence[int] | None, image_size: tuple[int, int]) -> float | None:
    """Share of visual tokens whose centre lies in ``box`` (see :func:`in_box`); ``None`` without a box or tokens.

    Shapes:
        positions: (T, 2) (row, col) in [0, 1]
    """
    if box is None or len(box) != 4 or positions.shape[0] == 0:
        return None
    return float(in_box(positions, box, image_size).double().mean())


def _read_done(path: Path) -> list[dict[str, Any]]:
    """Complete records of a predictions file; a torn last line (killed mid-write) is cut off the file."""
    if not path.is_file():
        return []
    records, good_bytes = [], 0
    with open(path, "rb") as f:
        for line in f:
            if not line.endswith(b"\n"):
                break
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                break
            good_bytes += len(line)
    if good_bytes != path.stat().st_size:
        with open(path, "r+b") as f:
            f.truncate(good_bytes)
    return records


def summarize(records: Iterable[Mapping[str, Any]], *, flops_fraction: float | None = None) -> dict[str, Any]:
    """Accuracy overall and by question type, mean visual tokens, latency and target-box share of records."""
    recs = list(records)
    n = len(recs)

    def mean(key: str, rows: list[Mapping[str, Any]]) -> float | None:
        vals = [float(r[key]) for r in rows if r.get(key) is not None]
        return sum(vals) / len(vals) if vals else None

    by_type: dict[str, dict[str, Any]] = {}
    for qt in sorted({str(r.get("question_type", "")) for r in recs}):
        rows = [r for r in recs if str(r.get("question_type", "")) == qt]
        by_type[qt] = {"n": len(rows), "accuracy": mean("score", rows), "target_fraction": mean("target_fraction",
                                                                                                rows)}
    return {"n": n, "accuracy": mean("score", recs), "by_type": by_type,
            "mean_visual_tokens": mean("tokens", recs), "visual_flops_fraction": flops_fraction,
            "latency_s_per_sample": mean("latency_s", recs), "target_fraction": mean("target_fraction", recs)}


def _atomic_json(path: Path, obj: Any) -> None:
    from training.checkpoint import atomic_write_text

    atomic_write_text(path, json.dumps(obj, indent=2, default=str) + "\n")


# -- the run -----------------------------------------------------------------------------------------------------------
def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("device='cuda' but no CUDA device is available")
    return torch.device(name)


def _flops_fraction(method: VisualMethod, processor: Any, records: list[Mapping[str, Any]]) -> float | None:
    """Visual-token FLOPs fraction for the mean prompt layout of the evaluated questions."""
    if not records:
        return None
    ids = processor.encode_prompt("x")
    first = ids.index(processor.image_token_id)
    n_before = first
    # Records resumed from a folder written before prompt lengths were recorded lack them: they are left out of the
    # mean (counted as 0 text tokens, they pulled n_after down); with none to go on, no text follows the image.
    after = [int(r["prompt_text_tokens"]) - n_before for r in records if r.get("prompt_text_tokens") is not None]
    n_after = max(0, round(sum(after) / len(after))) if after else 0
    return visual_flops_fraction(method.model.config.text_config, method.visual_per_layer(), method.full_tokens,
                                 n_before=n_before, n_after=n_after)


def _check_unique_ids(question_ids: Sequence[Any], d: EvalDataCfg) -> None:
    """Refuse a dataset whose ``question_id`` repeats: the id keys the resume (a question whose id is in the JSONL is
    skipped, so a repeat left after a kill was never evaluated) and the submission (both rows got the same answer).
    Raises ``ValueError`` naming the first repeated id and how many ids repeat."""
    seen: set[str] = set()
    repeated: dict[str, None] = {}
    for q in question_ids:
        if str(q) in seen:
            repeated[str(q)] = None
        seen.add(str(q))
    if repeated:
        first = next(iter(repeated))
        raise ValueError(f"data.split={d.split!r} of data.source={d.source!r}: {len(repeated)} question_id(s) occur "
                         f"more than once (e.g. {first!r}); question ids key the resume and the submission, so they "
                         "must be unique (point data.columns.question_id at a unique column, or set it to null for "
                         "the row index)")


def _check_labelled(answers: Sequence[Sequence[str]], question_ids: Sequence[str], d: EvalDataCfg) -> None:
    """Refuse questions without a reference answer: an unlabelled split (VQAv2's test-dev and test, DocVQA's test,
    which a test server scores) leaves ``answers`` empty (``None`` in the source) or blank (TextVQA's test: ten empty
    strings), so every score would be meaningless. Raises ``ValueError`` naming the split and how many are affected.
    """
    blank = [i for i, a in enumerate(answers) if not any(str(x).strip() for x in a)]
    if blank:
        raise ValueError(
            f"data.split={d.split!r} of data.source={d.source!r}: {len(blank)} of {len(answers)} questions have no "
            f"reference answer (e.g. question_id {question_ids[blank[0]]!r}), so they cannot be scored; an "
            "unlabelled test split is scored by its test server: evaluate a labelled split (e.g. validation), set "
            "predict_only=true to write predictions for the server, or point data.columns.answers at the column "
            "holding the answers")


def _check_answer_length(answers: Sequence[Any], processor: Any, max_new_tokens: int) -> None:
    """Refuse a ``max_new_tokens`` too short for the data's consensus answers.

    Greedy decoding stops after ``max_new_tokens``; a question whose consensus answer (the training target) needs more
    tokens could then never be answered right, and the accuracy would be capped without a word (with the byte
    tokenizer and 4 new tokens, "yellow" decoded as "yel"). Raises ``ValueError`` naming how many questions are
    affected, the longest answer and the ``max_new_tokens`` that fits it.
    """
    from training.collate import consensus_answer

    targets = [consensus_answer(a) for a in answers]
    # Answer vocabularies are small: tokenise each distinct answer once (its tokens, EOS not needed).
    need = {text: len(processor.encode_answer(text)) - 1 for text in dict.fromkeys(targets)}  # first-seen order
    too_long = sum(need[t] > max_new_tokens for t in targets)
    if too_long:
        worst = max(need, key=need.get)
        raise ValueError(
            f"max_new_tokens={max_new_tokens} is too short for {too_long} of {len(answers)} questions: their "
            f"consensus answer needs more tokens (longest: {worst!r}, {need[worst]} tokens), so they could never "
            f"score; set max_new_tokens={need[worst]} or more")


def evaluate(cfg: EvalCfg, *, model: Any = None, processor: Any = None,
             model_info: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Run (or resume) one evaluation and return its summary (also written to ``summary.json``).

    Args:
        cfg: The run.
        model: An already built ``ArrCocLlava`` (with ``processor``) to evaluate instead of building one from
            ``cfg`` (the benchmark driver evaluates one trained model with many methods).
        processor: Its processor.
        model_info: What ``model`` is, recorded in ``run.json``.
    """
    from tqdm.auto import tqdm

    from training.collate import RowDataset, VqaCollator, move_to

    if model is None:
        model, processor, model_info = build_eval_model(cfg)
    elif processor is None:
        raise ValueError("pass the model's processor along with the model")
    device = _device(cfg.device)
    model.to(device).eval()
    method = create_method(cfg.method, model, cfg.token_fraction, **cfg.baseline)
    proc = copy.copy(processor)
    proc.budget = method.placeholders  # <image> expands to what this method feeds the LLM
    metric_name = _metric_name(cfg)
    metric = METRICS[metric_name]
    from training.data import load_configured

    ds = load_configured(cfg.data)
    if len(ds) == 0:  # else every output was written with n 0 and a null accuracy, as if the run had succeeded
        raise ValueError(f"data.split={cfg.data.split!r} of data.source={cfg.data.source!r} at "
                         f"data.path={cfg.data.path!r} has no rows: nothing to evaluate")
    question_ids = ds["question_id"]  # read once: each ds[...] materialises the whole column
    _check_unique_ids(question_ids, cfg.data)
    if not cfg.predict_only:
        answers = ds["answers"]
        _check_labelled(answers, question_ids, cfg.data)
        _check_answer_length(answers, proc, cfg.max_new_tokens)

    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    pred_path, run_path = out / "predictions.jsonl", out / "run.json"
    run = {"method": cfg.method, "token_fraction": cfg.token_fraction, "num_tokens": method.num_tokens,
           "full_tokens": method.full_tokens, "baseline": cfg.baseline, "metric": metric_name,
           "data": dataclass_to_dict(cfg.data), "model": dict(model_info or {}), "max_new_tokens": cfg.max_new_tokens,
           # What the model is beyond its source: eval-time overrides and its architecture (names, shapes, dtypes),
           # so a rerun with another model in the same folder is refused rather than mixed into one summary; and
           # where and how it runs (left padding follows the batch size; latency follows the device).
           "model_overrides": cfg.model, "architecture": _architecture(model), "device": str(device),
           "batch_size": cfg.batch_size, "predict_only": cfg.predict_only}
    if cfg.resume and run_path.is_file() and pred_path.is_file():
        old = json.loads(run_path.read_text())

        def same(a: Any, b: Any) -> bool:
            return json.dumps(a, default=str, sort_keys=True) == json.dumps(b, default=str, sort_keys=True)

        # A folder written before a setting was recorded (older run.json) cannot be checked on it: say so, go on.
        unrecorded = sorted(k for k in run if k not in old)
        if unrecorded:
            print(f"[run_eval] {run_path} predates recording {unrecorded}; resuming without checking them",
                  file=sys.stderr)
        diff = sorted(k for k in run if k in old and not same(old[k], run[k]))
        if diff:
            raise ResumeMismatchError(f"{out} holds a run with different settings {diff}: "
                                      f"{ {k: old.get(k) for k in diff} } vs { {k: run[k] for k in diff} }; "
                                      f"use another output_dir or resume=false")
    else:  # starting over: the last run's summary and submission go too, or a killed rerun left them beside it
        for stale in (pred_path, out / "summary.json", out / "submission.json"):
            stale.unlink(missing_ok=True)
    _atomic_json(run_path, run)
    records = _read_done(pred_path)
    # The settings match but the rows at data.path may not: records of questions the dataset no longer holds would
    # be counted in the summary next to the new ones (n above the dataset's size).
    ids = {str(q) for q in question_ids}
    stray = [r["question_id"] for r in records if str(r["question_id"]) not in ids]
    if stray:
        raise ResumeMismatchError(f"{pred_path} holds {len(stray)} question(s) not in the dataset (e.g. question_id "
                                  f"{stray[0]!r}): the data at data.path={cfg.data.path!r} changed since; use another "
                                  "output_dir or resume=false")
    done = {str(r["question_id"]) for r in records}
    todo = [i for i, qid in enumerate(question_ids) if str(qid) not in done]

    # Workers decode, resize and tokenise; on a GPU they hand over uint8 pixels, normalised on the device.
    collate = _EvalCollate(VqaCollator(proc, train=False, uint8_pixels=device.type == "cuda"))
    loader = torch.utils.data.DataLoader(RowDataset(ds, todo), batch_size=cfg.batch_size, shuffle=False,
                                         num_workers=cfg.num_workers, collate_fn=collate,
                                         pin_memory=device.type == "cuda")
    gen_kw = {"max_new_tokens": cfg.max_new_tokens, "do_sample": False, "num_beams": 1,
              "eos_token_id": proc.tokenizer.eos_token_id}
    bar = tqdm(total=len(ds), initial=len(ds) - len(todo), desc=f"eval {cfg.method}", dynamic_ncols=True)
    with open(pred_path, "a") as f:
        for cpu_batch, rows in loader:
            batch = move_to(cpu_batch, device, proc)
            if device.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            res = method.generate(batch["pixel_values"], batch["input_ids"], batch["attention_mask"],
                                  query_input_ids=batch["query_input_ids"],
                                  query_attention_mask=batch["query_attention_mask"], **gen_kw)
            if device.type == "cuda":
                torch.cuda.synchronize()
            latency = (time.perf_counter() - t0) / len(rows)
            preds = proc.batch_decode(res.sequences.cpu())
            text_tokens = (batch["attention_mask"].sum(1) - method.placeholders).tolist()
            for j, (row, pred) in enumerate(zip(rows, preds)):
                answers = batch["answers"][j]
                rec = {"question_id": batch["question_id"][j], "question": row["question"], "prediction": pred,
                       "answers": answers, "question_type": batch["question_type"][j],
                       "score": None if cfg.predict_only else float(metric(pred, answers)),
                       "tokens": int(res.tokens[j]),
                       # Tokens in the queried box: boxes map to the tower's image only when it is squashed.
                       "target_fraction": target_fraction(res.positions[j].cpu(), row["target_box"], row["size"])
                       if "target_box" in row and proc.boxes_exact(row["size"]) else None,
                       "latency_s": latency, "prompt_text_tokens": int(text_tokens[j])}
                if res.budgets is not None:
                    rec["budgets"] = res.budgets[j].tolist()
                records.append(rec)
                f.write(json.dumps(rec) + "\n")
            f.flush()
            os.fsync(f.fileno())
            bar.update(len(rows))
    bar.close()
    _write_submission(out / "submission.json", records, question_ids)
    summary = summarize(records, flops_fraction=_flops_fraction(method, proc, records))
    summary.update({"method": cfg.method, "token_fraction": cfg.token_fraction, "num_tokens": method.num_tokens,
                    "full_tokens": method.full_tokens, "metric": metric_name, "evaluated_now": len(todo),
                    "resumed": len(ds) - len(todo), "model": dict(model_info or {})})
    _atomic_json(out / "summary.json", summary)
    return summary


def _write_submission(path: Path, records: Sequence[Mapping[str, Any]], order: Sequence[Any]) -> None:
    """``[{"question_id", "answer"}]`` in the dataset's order, the test servers' format; ids are written as integers
    when every id is one (VQAv2, TextVQA), else as the strings they are stored as."""
    by_id = {str(r["question_id"]): r["prediction"] for r in records}
    ids = [str(q) for q in order if str(q) in by_id]
    as_int = all(q.lstrip("-").isdigit() for q in ids)
    _atomic_json(path, [{"question_id": int(q) if as_int else q, "answer": by_id[q]} for q in ids])


class _EvalCollate:
    """Collated batch plus what the scorer needs of each row (question, target box, image size), not the image."""

    def __init__(self, collator: Any):
        self.collator = collator

    def __call__(self, rows: Sequence[Mapping[str, Any]]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        meta = []
        for r in rows:
            m = {"question": r["question"], "size": r["image"].size}
            if "target_box" in r:
                m["target_box"] = r["target_box"]
            meta.append(m)
        return self.collator(rows), meta


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m eval.run_eval", description=__doc__.split("\n\n")[0])
    p.add_argument("--config", help="eval YAML (configs/eval/*.yaml)")
    p.add_argument("overrides", nargs="*", help="key=value overrides, e.g. method=fastv token_fraction=0.25")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Entry point: parse, evaluate, print the summary. Returns the summary."""
    args = _parse_args(argv)
    summary = evaluate(load_eval_cfg(args.config, args.overrides))
    print(json.dumps({k: summary[k] for k in ("method", "num_tokens", "n", "accuracy", "mean_visual_tokens",
                                              "visual_flops_fraction", "latency_s_per_sample")}, default=str),
          file=sys.stderr)
    return summary


if __name__ == "__main__":
    main()
