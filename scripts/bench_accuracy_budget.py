r"""Accuracy against the visual-token budget: ARR-COC vs. the known token-reduction methods, on the generated benchmark.

    python -m scripts.bench_accuracy_budget --data data/bench --seeds 0 1 2        # GPU: the real benchmark
    python -m scripts.bench_accuracy_budget --smoke                                # CPU, < 2 min: plumbing only
    python -m scripts.bench_accuracy_budget --data data/bench --parallel 7 --steps 1500 --minutes 5 \
        --eval-samples 1000                                                        # one 10-minute GPU call

Protocol (issue 7). For each training seed:

1. train the *full-token* model once (every patch at full detail: ``allocator=uniform, budget=N, min=max=h·w``);
2. train ARR-COC with the ``projection`` allocator (straight-through gradients) and with the ``bandit`` allocator
   (answer-correctness feedback), both at the 25% budget; with ``--relevance-weight W`` also ``arr_coc_relevance``,
   the projection model trained with relevance distillation (``models/relevance.py``); with ``--grounding-weight W``
   also ``arr_coc_grounded``, the projection model trained with box-grounding supervision (``models/grounding.py``:
   the benchmark's ``target_box`` of each question, used in training only); with ``--budget-fractions F...`` also
   ``arr_coc_multibudget``, trained on a budget drawn per batch from those fractions (with the grounding loss when
   ``--grounding-weight`` > 0), so that one model serves every budget it is evaluated at; with
   ``--finetune-fractions F...`` also ``arr_coc_finetuned``: the grounded (or plain projection) model, once trained,
   fine-tuned for ``--finetune-steps`` more steps on a budget per batch from those fractions (``train.init_from``),
   the curriculum that gives one model for every budget without delaying when it starts reading (README);
   with ``--bandit-after-steps N`` also ``arr_coc_bandit_grounded``: the grounded model, once trained, with its
   allocator replaced by a fresh bandit (``utility_weight`` 0: the bandit's statistics alone choose the levels) and
   trained N more steps at the training budget, the grounding loss kept on the knowing stage; the bandit then learns
   from the answers of a model that reads (README, "The bandit on a model that already reads"); with
   ``--saliency-after-steps N`` also two label-free runs that start from the uniform-pooling model trained at the
   training budget (``--saliency-from full``: from the full-token model) and train N more steps there:
   ``arr_coc_salient``, the projection model taught by saliency distillation (``train.saliency_weight``, the gate
   off: no box labels), and its control ``uniform_continued``, uniform pooling given the same steps;
3. train a model with *uniform pooling* at each reduced budget (the strongest simple baseline);
4. evaluate on the test split at token fractions {100, 50, 25, 12.5}%: the full model; every training-free baseline
   of :mod:`eval.baselines` applied to the full model at exactly that many tokens; both ARR-COC models with their
   allocator's budget set to that many tokens; the uniform-trained model of that budget.

Outputs (``--out``, ``results/`` by default): ``accuracy_budget.md`` (accuracy mean ± std over seeds, overall and by
question type, the visual-token FLOPs fraction, the share of tokens inside the queried region), ``accuracy_budget.png``
(accuracy vs token fraction, one line per method), ``budget_heatmap.png`` (ARR-COC's per-patch budgets over one test
image for different questions), and ``accuracy_budget.json`` (every summary). ``--smoke`` runs the same pipeline with
the tiny preset, a few training steps and a tiny generated benchmark in a temporary folder; its numbers come from
random-init tiny models and are labelled so.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch

__all__ = ["main"]

FRACTIONS = (1.0, 0.5, 0.25, 0.125)
TRAINING_FREE = ("uniform", "threshold", "proportional", "visionzip", "fastv", "tome")
# Smoke mode: the tiny preset cut into 2x2 patches of 4x4 fine tokens (N = 64), so that 12.5% (8 tokens) still gives
# every patch a token; the LLM gets 3 layers so that FastV (K = 2) has a layer to prune.
SMOKE_MODEL = {"arr_coc": {"num_patches": 4, "patch_grid": [2, 2], "budget": 16, "min_tokens": 1, "max_tokens": 16},
               "llm": {"text_config": {"num_hidden_layers": 3}}}


BASE_ARR_MODELS = ("arr_coc_projection", "arr_coc_bandit")  # trained unless --models leaves them out
BANDIT_PROJ_DIM = 64  # width of the bandit's random context projection (BanditAllocator's own default is 16)
# The runs that start from another run's weights, each with the argument that holds its own step count
# (--finetune-steps, --bandit-after-steps, --saliency-after-steps).
DEPENDENT_RUNS = {"arr_coc_finetuned": "finetune_steps", "arr_coc_bandit_grounded": "bandit_after_steps",
                  "arr_coc_salient": "saliency_after_steps", "uniform_continued": "saliency_after_steps"}


def ARR_MODELS(a: argparse.Namespace) -> list[str]:
    """Every ARR-COC model this invocation trains, in table order."""
    return ([m for m in BASE_ARR_MODELS if m in a.models] + [name for name, _, w in EXTRA_MODELS(a) if w > 0]
            + (["arr_coc_multibudget"] if a.budget_fractions else [])
            + (["arr_coc_finetuned"] if a.finetune_fractions else [])
            + (["arr_coc_bandit_grounded"] if a.bandit_after_steps else [])
            + (["arr_coc_salient"] if a.saliency_after_steps else []))


def FINETUNE_BASE(a: argparse.Namespace) -> str:
    """The run ``arr_coc_finetuned`` starts from: the grounded model when it is trained, else the projection one."""
    return "arr_coc_grounded" if a.grounding_weight > 0 else "arr_coc_projection"


def EXTRA_MODELS(a: argparse.Namespace) -> list[tuple[str, str, float]]:
    """The optional ARR-COC variants: (run name, ``train.*`` weight key, weight); a weight of 0 leaves one out."""
    return [("arr_coc_relevance", "relevance_weight", a.relevance_weight),
            ("arr_coc_grounded", "grounding_weight", a.grounding_weight)]


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m scripts.bench_accuracy_budget", description=__doc__.split("\n\n")[0])
    p.add_argument("--smoke", action="store_true", help="tiny CPU run in a temporary folder (labelled as smoke)")
    p.add_argument("--data", default="data/bench", help="benchmark directory (scripts/make_benchmark.py)")
    p.add_argument("--out", default=None, help="results folder (default results/, or <tmp>/results with --smoke)")
    p.add_argument("--work", default=None, help="runs folder for checkpoints and predictions (default runs/acc_budget)")
    p.add_argument("--train-config", default="configs/train/bench.yaml")
    p.add_argument("--eval-config", default="configs/eval/bench.yaml")
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--fractions", type=float, nargs="+", default=list(FRACTIONS))
    p.add_argument("--train-fraction", type=float, default=0.25, help="budget the ARR-COC models are trained at")
    p.add_argument("--relevance-weight", type=float, default=0.0,
                   help="> 0: also train `arr_coc_relevance`, the projection model with relevance distillation at this "
                        "weight (train.relevance_weight; models/relevance.py)")
    p.add_argument("--grounding-weight", type=float, default=0.0,
                   help="> 0: also train `arr_coc_grounded`, the projection model with box-grounding supervision at this "
                        "weight (train.grounding_weight; models/grounding.py)")
    p.add_argument("--models", nargs="*", default=list(BASE_ARR_MODELS), choices=list(BASE_ARR_MODELS),
                   help="the unsupervised ARR-COC models to train (default both; none with a bare --models); the "
                        "full-token model is always trained, the weighted variants follow their --*-weight")
    p.add_argument("--uniform-fractions", type=float, nargs="*", default=None,
                   help="the reduced budgets to train a uniform-pooling model at (default: every fraction below 1)")
    p.add_argument("--budget-fractions", type=float, nargs="+", default=None,
                   help="also train `arr_coc_multibudget`: the projection model (with --grounding-weight's supervision "
                        "when > 0) trained on a budget drawn per batch from these fractions of N "
                        "(train.budget_fractions), so one model serves every budget")
    p.add_argument("--finetune-fractions", type=float, nargs="+", default=None,
                   help="also train `arr_coc_finetuned`: the grounded model (the projection one without "
                        "--grounding-weight), once trained, fine-tuned on a budget per batch from these fractions "
                        "(train.init_from + train.budget_fractions, the same supervision), so one model serves every "
                        "budget")
    p.add_argument("--finetune-steps", type=int, default=None,
                   help="steps of that fine-tune (required with --finetune-fractions)")
    p.add_argument("--finetune-lr", type=float, default=None,
                   help="its learning rate (optim.lr; default: the train config's), and that of --bandit-after-steps")
    p.add_argument("--bandit-after-steps", type=int, default=None,
                   help="also train `arr_coc_bandit_grounded`: the grounded model, once trained, with a fresh bandit "
                        "allocator learning from its answers for this many steps (needs --grounding-weight > 0)")
    p.add_argument("--saliency-after-steps", type=int, default=None,
                   help="also train, label-free, from the uniform-pooling model of the training budget (or the full "
                        "model: --saliency-from) for this many steps: `arr_coc_salient` (saliency distillation, "
                        "train.saliency_weight=--saliency-weight, the straight-through gate off) and its control "
                        "`uniform_continued` (uniform pooling, the same steps); at --finetune-lr when given")
    p.add_argument("--saliency-from", choices=("uniform", "full"), default="uniform",
                   help="the reader those two start from: the uniform-pooling model trained at --train-fraction "
                        "(default; needs it among --uniform-fractions) or the full-token model")
    p.add_argument("--saliency-weight", type=float, default=1.0,
                   help="weight of the saliency-distillation loss of `arr_coc_salient` (> 0)")
    p.add_argument("--steps", default=None,
                   help="training steps per model (default: the train config's), or 'auto' with --minutes: probe every "
                        "model for --probe-steps steps, all at once as in the real run, and give every model the same "
                        "number of steps, as many as the slowest one fits in --minutes")
    p.add_argument("--probe-steps", type=int, default=30, help="steps per model of the --steps auto probe")
    p.add_argument("--eval-samples", type=int, default=None, help="test rows to evaluate (default: all)")
    p.add_argument("--train-override", nargs="*", default=[], help="extra key=value for every training run")
    p.add_argument("--parallel", type=int, default=1,
                   help="train up to N models at once, each in its own process (one GPU can hold several small ones)")
    p.add_argument("--minutes", type=float, default=None,
                   help="wall-clock cap per training run (train.max_minutes); a run it stops early is flagged")
    p.add_argument("--total-minutes", type=float, default=None,
                   help="wall clock for the whole benchmark: after training, time two probe evaluations of the full "
                        "model and evaluate every method on the most test rows (at most --eval-samples) that fit in "
                        "what is left, less --reserve-seconds for the figures; with --steps auto, a training plan "
                        "that cannot end in it is refused after the probe, before any real training")
    p.add_argument("--reserve-seconds", type=float, default=60.0,
                   help="with --total-minutes: seconds kept back for the heat-map, the sensitivity probes and the files")
    p.add_argument("--onset-accuracy", type=float, default=None,
                   help="the per-seed table also gives each trained model's onset: the first --onset-window of steps "
                        "whose mean training accuracy reaches this level (training/curves.py; 0.35 on the small "
                        "benchmark, README). Its last window's mean is given either way")
    p.add_argument("--onset-window", type=int, default=500, help="steps per window of the training curve")
    p.add_argument("--loader-workers", type=int, default=None,
                   help="DataLoader workers per training run (default: the train config's data.num_workers)")
    args = p.parse_args(argv)
    if args.onset_window < 1:
        raise ValueError(f"--onset-window must be >= 1 step, got {args.onset_window}")
    if args.onset_accuracy is not None and not 0 <= args.onset_accuracy <= 1:
        raise ValueError(f"--onset-accuracy must lie in [0, 1], got {args.onset_accuracy}")
    for f in args.fractions:
        if not 0 < f <= 1:
            raise ValueError(f"--fractions must lie in (0, 1], got {f}")
    for flag, fracs in (("--budget-fractions", args.budget_fractions),
                        ("--finetune-fractions", args.finetune_fractions)):
        for f in fracs or []:
            if not 0 < f <= 1:
                raise ValueError(f"{flag} must lie in (0, 1], got {f}")
    if args.finetune_fractions:
        if args.finetune_steps is None or args.finetune_steps < 1:
            raise ValueError(f"--finetune-fractions needs --finetune-steps >= 1, got {args.finetune_steps}")
        if args.grounding_weight == 0 and "arr_coc_projection" not in args.models:
            raise ValueError("--finetune-fractions fine-tunes arr_coc_grounded (--grounding-weight > 0) or "
                             "arr_coc_projection; neither is trained here")
    if args.bandit_after_steps is not None:
        if args.bandit_after_steps < 1:
            raise ValueError(f"--bandit-after-steps must be >= 1, got {args.bandit_after_steps}")
        if args.grounding_weight == 0:
            raise ValueError("--bandit-after-steps starts from arr_coc_grounded, which --grounding-weight 0 leaves out")
    if args.saliency_after_steps is not None and args.saliency_after_steps < 1:
        raise ValueError(f"--saliency-after-steps must be >= 1, got {args.saliency_after_steps}")
    if not (math.isfinite(args.saliency_weight) and args.saliency_weight > 0):
        raise ValueError(f"--saliency-weight must be a finite number > 0, got {args.saliency_weight}")
    if args.finetune_lr is not None and not (math.isfinite(args.finetune_lr) and args.finetune_lr > 0):
        raise ValueError(f"--finetune-lr must be a finite number > 0, got {args.finetune_lr}")
    for f in args.uniform_fractions or []:
        if not (0 < f < 1 and f in args.fractions):
            raise ValueError(f"--uniform-fractions must be fractions below 1 that --fractions evaluates "
                             f"({sorted(args.fractions)}), got {f}")
    if args.steps is not None and args.steps != "auto":
        try:
            args.steps = int(args.steps)
        except ValueError:
            raise ValueError(f"--steps must be an integer or 'auto', got {args.steps!r}") from None
        if args.steps < 1:
            raise ValueError(f"--steps must be >= 1, got {args.steps}")
    if args.steps == "auto" and args.minutes is None:
        raise ValueError("--steps auto needs --minutes (the wall clock the steps must fit in)")
    for flag, w in (("--relevance-weight", args.relevance_weight), ("--grounding-weight", args.grounding_weight)):
        if not (math.isfinite(w) and w >= 0):
            raise ValueError(f"{flag} must be a finite number >= 0, got {w}")
    if args.probe_steps < 2:
        raise ValueError(f"--probe-steps must be >= 2, got {args.probe_steps}")
    if args.parallel < 1:
        raise ValueError(f"--parallel must be >= 1, got {args.parallel}")
    if args.minutes is not None and not args.minutes > 0:
        raise ValueError(f"--minutes must be > 0, got {args.minutes}")
    if args.total_minutes is not None:
        if not (math.isfinite(args.total_minutes) and args.total_minutes > 0):
            raise ValueError(f"--total-minutes must be a finite number > 0, got {args.total_minutes}")
        if args.minutes is not None and args.minutes >= args.total_minutes:
            raise ValueError(f"--minutes ({args.minutes:g}) must be below --total-minutes ({args.total_minutes:g}): "
                             "the evaluations need time after training")
    if not (math.isfinite(args.reserve_seconds) and args.reserve_seconds >= 0):
        raise ValueError(f"--reserve-seconds must be a finite number >= 0, got {args.reserve_seconds}")
    if args.eval_samples is not None and args.eval_samples < 1:
        raise ValueError(f"--eval-samples must be >= 1, got {args.eval_samples}")
    return args


# -- training ----------------------------------------------------------------------------------------------------------
def _kv(prefix: str, d: dict[str, Any]) -> list[str]:
    """Nested dict → ``prefix.key=value`` overrides (JSON values)."""
    out = []
    for k, v in d.items():
        if isinstance(v, dict) and v and k != "allocator_kwargs":
            out += _kv(f"{prefix}.{k}", v)
        else:
            out.append(f"{prefix}.{k}={json.dumps(v)}")
    return out


def _child_threads(parallel: int, environ: Mapping[str, str], cpus: int | None = None) -> dict[str, str]:
    """Intra-op threads for each of ``parallel`` training children: the CPUs this process may use, split evenly.

    Each child's torch otherwise starts one thread per core, so N children would oversubscribe the cores N times. On
    the 2-core CPU, two 1-thread children of the small preset train 1.57x the steps per second, together, of one
    2-thread run (0.20 s per step each against 0.165 s). A thread count the caller set in ``OMP_NUM_THREADS`` is
    kept.
    """
    import os

    if environ.get("OMP_NUM_THREADS"):
        return {}
    if cpus is None:
        cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return {"OMP_NUM_THREADS": str(max(1, cpus // parallel))}


class _Trainer:
    """Trains the benchmark's models, in this process (``--parallel 1``) or up to N child processes at once.

    :meth:`submit` queues one run and returns its folder; :meth:`wait` trains everything queued, a run submitted
    ``after`` another (a fine-tune of it) only once that one has finished. A run whose final checkpoint exists is
    reused. Child processes each get a private single-rank process group (``training.train``
    picks a free port), their own loader workers, and write ``train.log`` in their run folder; a failed child raises
    with that log's tail.
    """

    def __init__(self, a: argparse.Namespace, work: Path):
        self.a, self.work = a, work
        self.queue: list[tuple[str, Path, list[str], Path | None]] = []

    def submit(self, name: str, model_over: dict[str, Any], seed: int, extra: Sequence[str], *,
               steps: int | None = None, after: Path | None = None) -> Path:
        """Queue a run (``steps``: its own step count instead of ``--steps``; ``after``: a run to finish first)."""
        a = self.a
        run = self.work / f"seed{seed}" / name
        args = ["--config", a.train_config, f"output_dir={run}", f"train.seed={seed}", *extra,
                *_kv("model", model_over), *a.train_override]
        if steps is not None or a.steps is not None:
            args.append(f"train.max_steps={steps if steps is not None else a.steps}")
        if a.minutes is not None:
            args.append(f"train.max_minutes={a.minutes}")
        if a.loader_workers is not None:
            args.append(f"data.num_workers={a.loader_workers}")
        if _reusable(run, args):
            print(f"[bench] {name} seed {seed}: reusing {run}", file=sys.stderr)
        else:
            self.queue.append((f"{name} (seed {seed})", run, args + (["--resume"] if (run / "checkpoints").is_dir()
                                                                      else []), after))
        return run

    def wait(self) -> None:
        queue, self.queue = self.queue, []
        if self.a.parallel == 1:
            from training.train import main as train_main

            for label, _, args, _ in queue:  # in submission order: a base run before its fine-tune
                print(f"[bench] training {label}", file=sys.stderr)
                train_main(args)
            return
        import os
        import subprocess

        env = {k: v for k, v in os.environ.items() if k not in ("MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE",
                                                                 "LOCAL_RANK", "LOCAL_WORLD_SIZE")}
        env["PYTHONPATH"] = str(Path.cwd()) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        env.update(_child_threads(self.a.parallel, os.environ))
        running: list[tuple[str, Path, subprocess.Popen, Any]] = []

        def reap() -> None:
            """Close out every finished child; a failed one kills the rest and raises with its log's tail."""
            for item in list(running):
                label, run, proc, log = item
                if proc.poll() is None:
                    continue
                log.close()
                running.remove(item)
                if proc.returncode != 0:
                    for _, _, other, _ in running:
                        other.kill()
                    tail = (run / "train.log").read_text()[-3000:]
                    raise RuntimeError(f"training {label} failed (exit {proc.returncode}); "
                                       f"{run / 'train.log'} ends:\n{tail}")
                print(f"[bench] finished {label}", file=sys.stderr)

        def ready(item: tuple[str, Path, list[str], Path | None]) -> bool:
            after = item[3]
            return after is None or not any(r == after for _, r, *_ in (*queue, *running))

        while queue:
            while len(running) >= self.a.parallel or not any(ready(q) for q in queue):
                time.sleep(1.0)
                reap()
            item = next(q for q in queue if ready(q))
            queue.remove(item)
            label, run, args, _ = item
            run.mkdir(parents=True, exist_ok=True)
            log = open(run / "train.log", "ab")
            print(f"[bench] training {label} in a child process (log: {run / 'train.log'})", file=sys.stderr)
            proc = subprocess.Popen([sys.executable, "-m", "training.train", *args], stdout=log,
                                    stderr=subprocess.STDOUT, env=env)
            running.append((label, run, proc, log))
        while running:
            time.sleep(1.0)
            reap()


def _probe_steps(a: argparse.Namespace, work: Path, submit_all, margin: float = 0.15) -> dict[str, Any]:
    """``--steps auto``: train every model of every seed for ``--probe-steps`` steps at once, as the real run will,
    read each run's seconds per step from its ``log.csv`` (the last logged interval, past start-up), and return the
    steps the slowest model fits in ``--minutes`` less ``margin`` (for start-up and the final checkpoint). Every seed,
    not only the first: the models share the GPU and the CPUs, so a probe of one seed's models timed them at a third of
    the real run's load with three seeds (an H100 call, 2026-11-25: probed 0.052 s/step, trained at 0.106, and the
    ``--minutes`` cap stopped every model at 1,704 of the 2,939 steps chosen). ``seconds_per_step_by_run`` holds each
    model's slowest seed."""
    import copy
    import csv

    pa = copy.copy(a)
    pa.steps, pa.minutes = a.probe_steps, None
    pa.finetune_steps = a.probe_steps if a.finetune_fractions else None
    pa.bandit_after_steps = a.probe_steps if a.bandit_after_steps else None
    pa.saliency_after_steps = a.probe_steps if a.saliency_after_steps else None
    pa.train_override = [*a.train_override, f"train.log_every={max(1, a.probe_steps // 3)}", "train.save_every=null"]
    trainer = _Trainer(pa, work / "probe")
    by_seed = [submit_all(trainer, seed) for seed in a.seeds]
    trainer.wait()
    speed: dict[str, float] = {}
    dependent: dict[str, float] = {}
    # Runs that start from another (fine-tune, bandit) have their own step counts: --steps is for the base models;
    # their speeds are kept for the plan check (:func:`_check_training_fits`).
    for r in (r for runs in by_seed for r in _run_dirs(runs)):
        rows = list(csv.DictReader(open(r / "log.csv")))
        if not rows:
            raise RuntimeError(f"probe run {r} logged no steps; cannot choose --steps auto")
        batch = int(_trainer_state(r)["config"]["train"]["batch_size"])
        into = dependent if r.name in DEPENDENT_RUNS else speed
        into[r.name] = max(into.get(r.name, 0.0), batch / float(rows[-1]["samples_per_s"]))  # s per optimizer step
    slowest = max(speed, key=speed.get)
    steps = max(1, int((1 - margin) * 60 * a.minutes / speed[slowest]))
    print(f"[bench] --steps auto: {steps} steps ({slowest} is slowest at {speed[slowest]:.3f} s/step)",
          file=sys.stderr)
    return {"steps": steps, "slowest": slowest, "seconds_per_step": speed[slowest], "minutes": a.minutes,
            "margin": margin, "seconds_per_step_by_run": speed, "dependent_seconds_per_step": dependent}


def _check_training_fits(a: argparse.Namespace, probe: dict[str, Any], left: float) -> float:
    """With ``--steps auto`` and ``--total-minutes``: refuse, before any real training, a plan whose training alone
    cannot end in the ``left`` seconds: the base models' steps at the probed speed, then the longest run that starts
    from one (fine-tune, bandit, saliency), each at most ``--minutes``. A lower bound (runs waiting for a free
    ``--parallel`` slot take longer), so a refusal is certain to be right. On the H100 (2026-11-25) a call whose
    fine-tune and bandit runs were sized as if free outlasted its 10 minutes with nothing evaluated. Returns the
    planned seconds."""
    cap = 60 * a.minutes
    steps_of = {name: getattr(a, attr) for name, attr in DEPENDENT_RUNS.items()}
    base = min(cap, probe["steps"] * probe["seconds_per_step"])
    after = {name: min(cap, steps_of[name] * spd) for name, spd in probe.get("dependent_seconds_per_step", {}).items()
             if steps_of.get(name)}
    longest = max(after, key=after.get) if after else None
    plan = base + (after[longest] if longest else 0.0)
    if plan > left:
        then = f", then {longest} {after[longest]:.0f} s ({steps_of[longest]} steps)" if longest else ""
        raise ValueError(
            f"training cannot end within --total-minutes: the base models need {base:.0f} s ({probe['steps']} steps at "
            f"{probe['seconds_per_step']:.3f} s/step){then}, {plan:.0f} s in all, but {left:.0f} s are left before "
            f"the evaluations; give more --total-minutes, or fewer --minutes or steps of the runs after")
    return plan


def _run_dirs(runs: dict[str, Any]) -> list[Path]:
    """The run folders of one seed's :func:`submit_all` result, in a fixed order."""
    return [runs["full"], *runs["arr"].values(), *runs["uni"].values(), *runs["more"].values()]


def _trainer_state(run: Path) -> dict[str, Any]:
    """``trainer_state.json`` of ``run``'s latest checkpoint (``{}`` when it has none)."""
    from training.checkpoint import find_latest

    ckpt = find_latest(run / "checkpoints") if (run / "checkpoints").is_dir() else None
    return json.loads((ckpt / "trainer_state.json").read_text()) if ckpt is not None else {}


def _steps(run: Path) -> tuple[int | None, int | None]:
    """(step of the latest checkpoint, planned ``train.max_steps``), ``None`` where unknown."""
    state = _trainer_state(run)
    step, planned = state.get("step"), state.get("config", {}).get("train", {}).get("max_steps")
    return (None if step is None else int(step)), (None if planned is None else int(planned))


def _is_complete(run: Path) -> bool:
    """Whether ``run`` has a checkpoint at its last planned step. A run the --minutes cap stopped is not: the next
    invocation resumes it (for up to --minutes more)."""
    step, planned = _steps(run)
    return step is not None and (planned is None or step >= planned)


def _reusable(run: Path, args: Sequence[str]) -> bool:
    """Whether ``run``'s checkpoint is the run ``args`` (``--config F key=value ...``) asks for, finished.

    Settings that fix the trajectory (model, seed, batch, grounding weight, budget fractions, ...) must equal the
    checkpoint's, or this raises ``ValueError`` naming them: reusing it would report another model under this
    command. A run short of the requested ``train.max_steps`` (the --minutes cap stopped it, or --steps grew) is not
    reusable: it is resumed. A run past them (--steps shrank) is refused: it is not the model asked for.
    """
    from training.train import _check_resume_config, load_train_cfg

    state = _trainer_state(run)  # read once: the step and the config it was trained with
    if state.get("step") is None:
        return False
    step = int(state["step"])
    cfg = load_train_cfg(args[1], [x for x in args[2:] if x != "--resume"])
    _check_resume_config(state.get("config"), cfg, run)
    want = cfg.train.max_steps
    if want is not None and step > want:
        raise ValueError(f"{run} holds a checkpoint at step {step}, past the requested train.max_steps={want}; use "
                         "another --work (or delete that run) to train the shorter model")
    return want is None or step >= want


def _train_status(run: Path) -> str:
    """``"step S of M"`` from the latest checkpoint, flagged when the time cap stopped the run early."""
    step, planned = _steps(run)
    early = planned is not None and step is not None and step < planned
    return f"step {step} of {planned}" + (" (stopped early by --minutes)" if early else "")


def _geometry(a: argparse.Namespace, base_model: dict[str, Any]) -> dict[str, int]:
    """N, K, h·w and the bandit context width of the preset (built once, random weights)."""
    from models.builders import build_model
    from training.train import load_train_cfg, model_cfg

    tc = load_train_cfg(a.train_config, _kv("model", base_model) + list(a.train_override))
    model, _ = build_model(model_cfg(tc))
    (h, w), k = model.vision.fine_grid, model.vision.num_patches
    return {"N": k * h * w, "K": k, "cells": h * w, "ctx": model.arr_coc.query_dim + model.arr_coc.dim + 3}


# -- evaluation --------------------------------------------------------------------------------------------------------
def _eval(run: Path | None, method: str, frac: float | None, a: argparse.Namespace, out: Path,
          extra: Sequence[str], cache: dict) -> dict[str, Any]:
    from eval.run_eval import build_eval_model, evaluate, load_eval_cfg

    overrides = [f"output_dir={out}", f"method={method}", f"token_fraction={json.dumps(frac)}", *extra]
    if a.eval_samples is not None:
        overrides.append(f"data.max_samples={a.eval_samples}")
    cfg = load_eval_cfg(a.eval_config, overrides + [f"checkpoint={run}"])
    key = str(run)
    if key not in cache:  # one model load per checkpoint, shared by every method and fraction
        cache.clear()
        cache[key] = build_eval_model(cfg)
    model, processor, info = cache[key]
    return evaluate(cfg, model=model, processor=processor, model_info=info)


def _eval_rows_that_fit(full: Path, a: argparse.Namespace, work: Path, extra: Sequence[str], cache: dict,
                        n_evals: int, seconds: float) -> dict[str, Any]:
    """How many test rows each of ``n_evals`` evaluations can use so that all fit in ``seconds``.

    Times two evaluations of the full model (``arr_coc`` at 100%, the model already loaded) on n1 and n2 = 3·n1 rows
    and fits ``t(n) = t0 + c·n`` (t0: loader start-up and the first batch; c: seconds per row). The answer is capped
    by ``--eval-samples`` (the evaluation itself stops at the test split's size); where the time allows fewer than 8
    rows it raises rather than report noise."""
    def timed(n: int) -> tuple[int, float]:
        sub = argparse.Namespace(**{**vars(a), "eval_samples": n})
        t0 = time.perf_counter()
        summary = _eval(full, "arr_coc", None, sub, work / "eval_probe" / f"n{n}", extra, cache)
        return int(summary["n"]), time.perf_counter() - t0

    shutil.rmtree(work / "eval_probe", ignore_errors=True)  # a resumed probe would time nothing
    _eval(full, "arr_coc", None, argparse.Namespace(**{**vars(a), "eval_samples": 8}), work / "eval_probe" / "warm",
          extra, cache)  # model load, CUDA context and kernels warm before anything is timed
    (n1, t1), (n2, t2) = timed(64), timed(192)
    if n2 > n1:
        per_row = max((t2 - t1) / (n2 - n1), 1e-6)
        fixed = max(t1 - per_row * n1, 0.0)
    else:  # the test split has at most 64 rows: no slope to fit, charge everything per row
        per_row, fixed = t2 / max(n2, 1), 0.0
    rows = int((seconds / n_evals - fixed) / per_row)
    cap = a.eval_samples
    chosen = rows if cap is None else min(rows, cap)
    if rows < 8 and chosen == rows:  # the time, not --eval-samples, is what limits the rows
        raise ValueError(
            f"--total-minutes leaves {seconds:.0f} s for {n_evals} evaluations: at {fixed:.1f} s + {per_row * 1e3:.1f} ms "
            f"per row that is {rows} rows each; give more --total-minutes or fewer --minutes")
    return {"seconds_per_row": per_row, "fixed_seconds": fixed, "evals": n_evals, "seconds": seconds,
            "rows_fit": rows, "rows": chosen}


def _stats(values: list[float]) -> tuple[float, float]:
    vals = [v for v in values if v is not None and not math.isnan(v)]
    if not vals:
        return float("nan"), float("nan")
    m = sum(vals) / len(vals)
    sd = math.sqrt(sum((v - m) ** 2 for v in vals) / (len(vals) - 1)) if len(vals) > 1 else 0.0
    return m, sd


def _fmt(m: float, sd: float, n: int) -> str:
    if math.isnan(m):
        return "n/a"
    return f"{100 * m:.1f} ± {100 * sd:.1f}" if n > 1 else f"{100 * m:.1f}"


# -- outputs -----------------------------------------------------------------------------------------------------------
def _plot(results: dict, methods: list[str], fractions: list[float], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for m in methods:
        xs, ys, es = [], [], []
        for f in sorted(fractions):
            accs = [s["accuracy"] for s in results.get(m, {}).get(f, [])]
            mean, sd = _stats(accs)
            if not math.isnan(mean):
                xs.append(100 * f), ys.append(100 * mean), es.append(100 * sd)
        if xs:
            ax.errorbar(xs, ys, yerr=es, marker="o", capsize=3, label=m)
    ax.set_xscale("log", base=2)
    ax.set_xticks([100 * f for f in sorted(fractions)], [f"{100 * f:g}%" for f in sorted(fractions)])
    ax.set_xlabel("visual tokens (% of the full-token model)")
    ax.set_ylabel("accuracy (%)")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _bench_cfg(path: str | None):
    """The generator parameters of the benchmark at ``path`` (from its manifest; defaults if it has none)."""
    from training.benchmark import BenchmarkCfg
    from training.data import read_manifest

    try:
        params = read_manifest(path).get("generator", {}) if path else {}
    except Exception:  # no manifest (e.g. a hand-built dataset): the default vocabulary is what we need
        params = {}
    try:
        return BenchmarkCfg.from_dict(params)
    except (TypeError, ValueError):
        return BenchmarkCfg()


def _load_run(run: Path, a: argparse.Namespace, frac: float | None, extra: Sequence[str]):
    """A trained run's model (eval mode) at ``frac`` of the tokens, its processor, and the evaluation's data:
    ``(model, processor, dataset, data_cfg)``."""
    from eval.run_eval import build_eval_model, load_eval_cfg
    from training.data import load_configured

    cfg = load_eval_cfg(a.eval_config, [f"checkpoint={run}", f"token_fraction={json.dumps(frac)}", *extra])
    model, processor, _ = build_eval_model(cfg)
    model.eval()
    return model, processor, load_configured(cfg.data), cfg.data


def _heatmap(runs: Sequence[tuple[str, Path]], a: argparse.Namespace, frac: float, path: Path, extra: Sequence[str],
             title: str) -> str:
    """Per-patch budgets of each ARR-COC model in ``runs`` (one row of panels each) over one test image, for
    questions about different shapes of it; returns a description."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from eval.baselines import create_method
    from scripts.demo import draw_budgets

    model, processor, ds, data_cfg = _load_run(runs[0][1], a, frac, extra)
    # One test image and several questions about THIS image, each pointing at a different object (see _reasked, so
    # every question is true of the image and its target box is known). Falls back to the first row's own question
    # when no row carries a scene with two shapes.
    first = next(_reasked(ds, _bench_cfg(data_cfg.path), 1), None)
    if first is not None:
        image, asked, row_id = first
        questions, boxes = [q.question for q in asked], [tuple(q.target_box) for q in asked]
    else:
        row0 = ds[0]
        image, row_id = row0["image"].convert("RGB"), row0["question_id"]
        questions, boxes = [row0["question"]], [tuple(row0.get("target_box") or ())]
    fig, axes = plt.subplots(len(runs), len(questions), figsize=(3.6 * len(questions), 3.9 * len(runs)),
                             squeeze=False)
    for r, (name, run) in enumerate(runs):
        if r:
            model, processor, _, _ = _load_run(run, a, frac, extra)
        method = create_method("arr_coc", model, frac)
        processor.budget = method.placeholders
        gh, gw = model.vision.patch_grid
        for ax, q, box in zip(axes[r], questions, boxes):
            batch = processor([image], [q])
            with torch.no_grad():
                _, _, budgets = method.embed(batch["pixel_values"], batch["input_ids"],
                                             query_input_ids=batch["query_input_ids"],
                                             query_attention_mask=batch["query_attention_mask"])
            # The queried object's box is outlined: the tokens should gather there.
            draw_budgets(ax, image, budgets[0].reshape(gh, gw).float().numpy(), box, numbers=True)
            ax.set_title(f"{name}\n{q}" if len(runs) > 1 else q, fontsize=8)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return (f"rows: {', '.join(name for name, _ in runs)}; image `{row_id}`; questions: "
            + "; ".join(f"“{q}”" for q in questions))


def _reasked(ds, bcfg, n_images: int, seed: int = 0):
    """Yield ``(image, questions, question_id)`` for the first ``n_images`` rows with at least two shapes: "what digit
    is in the <shape>?" about up to three of its shapes, made by the generator's own question maker from the row's
    stored scene (so each question is true of the image and its ``target_box`` is known)."""
    import numpy as np

    from training.benchmark import Scene, make_question_about

    if "scene" not in (getattr(ds, "column_names", None) or ["scene"]):
        return  # no stored scenes (not a generated benchmark): nothing to re-ask, without decoding every row
    rng = np.random.default_rng(seed)
    used = 0
    for i in range(len(ds)):
        if used == n_images:
            return
        row = ds[i]
        if not row.get("scene"):
            continue
        scene = Scene.from_json(row["scene"])
        if len(scene.objects) < 2:
            continue
        used += 1
        yield (row["image"].convert("RGB"), [make_question_about(scene, obj, rng, bcfg, "digit")
                                             for obj in scene.objects[:3]], row["question_id"])


def _mean(values: list[float]) -> float:
    return float(sum(values) / len(values)) if values else float("nan")


def query_sensitivity(method, processor, ds, bcfg, patch_grid: tuple[int, int], n_images: int = 64, seed: int = 0,
                      max_tokens: int | None = None) -> dict[str, float]:
    """How much an allocation depends on the question: the same image, digit questions about different shapes.

    Over the images of :func:`_reasked`, reads the method's per-patch budgets for each question. Returns:

    - ``moved``: the share of the visual tokens that move between two questions about the same image, ``|b1 - b2|_1
      / (2 T)``, averaged over question pairs (0: the allocation ignores the question; 1: disjoint allocations);
    - ``in_box``: the share of the visual tokens whose centre lies in the queried shape's box;
    - ``box_area``: the box's share of the image (what a query-blind allocation puts in the box on average);
    - ``patch_share``: the share of the visual tokens given to the patches the box overlaps (a patch is the unit the
      allocator decides on; a tight box leaves most of an overlapped patch's token centres outside it);
    - ``patch_area``: those patches' share of all patches (what uniform pooling gives them);
    - ``patch_ceiling``: the most those patches can hold, ``min(1, n · max_tokens / T)`` (NaN without
      ``max_tokens``);
    - ``images``: the images used.
    """
    from eval.run_eval import target_fraction
    from models.grounding import box_patches

    moved, in_box, area, used = [], [], [], 0
    p_share, p_area, p_ceil = [], [], []
    for image, asked, _ in _reasked(ds, bcfg, n_images, seed):
        used += 1
        batch = processor([image] * len(asked), [q.question for q in asked])
        with torch.no_grad():
            _, pos, budgets = method.embed(batch["pixel_values"], batch["input_ids"],
                                           query_input_ids=batch["query_input_ids"],
                                           query_attention_mask=batch["query_attention_mask"])
        b = budgets.double()
        total = b[0].sum()
        for x in range(len(asked)):
            for y in range(x + 1, len(asked)):
                moved.append(float((b[x] - b[y]).abs().sum() / (2 * total)))
        touched = box_patches([q.target_box for q in asked], [image.size] * len(asked), patch_grid)  # (Q, K)
        for j, (q, p) in enumerate(zip(asked, pos)):
            in_box.append(target_fraction(p, q.target_box, image.size))
            x0, y0, x1, y1 = q.target_box
            area.append((x1 - x0) * (y1 - y0) / (image.size[0] * image.size[1]))
            n = int(touched[j].sum())
            p_share.append(float(b[j][touched[j]].sum() / total))
            p_area.append(n / b.shape[1])
            p_ceil.append(min(1.0, n * max_tokens / float(total)) if max_tokens else float("nan"))
    return {"moved": _mean(moved), "in_box": _mean(in_box), "box_area": _mean(area), "patch_share": _mean(p_share),
            "patch_area": _mean(p_area), "patch_ceiling": _mean(p_ceil), "images": used}


def attention_grounding(model, processor, ds, bcfg, layer: int, n_images: int = 64, seed: int = 0) -> dict[str, float]:
    """Where the LLM looks: the share of its attention from the last prompt position (layer ``layer``, 1-based) that
    lands on visual tokens inside the queried shape's box, against those tokens' share of the visual tokens.

    This is the teacher of relevance distillation (``models/relevance.py``): it can only teach the allocation to
    follow the question if ``attention`` clearly exceeds ``tokens``. The model is fed its own visual tokens.
    """
    from eval.run_eval import in_box
    from models.relevance import read_attention

    att_share, tok_share, used = [], [], 0
    for image, asked, _ in _reasked(ds, bcfg, n_images, seed):
        used += 1
        batch = processor([image] * len(asked), [q.question for q in asked])  # left-padded: the prompt ends last
        last = torch.full((len(asked),), batch["input_ids"].shape[1] - 1)
        with torch.no_grad():
            embeds, out = model.embed_inputs(batch["pixel_values"], batch["input_ids"],
                                             query_input_ids=batch["query_input_ids"],
                                             query_attention_mask=batch["query_attention_mask"])
            with read_attention(model.language_model.layers[layer - 1], last, batch["attention_mask"]) as state:
                model.llava(inputs_embeds=embeds, attention_mask=batch["attention_mask"])
        image_pos = batch["input_ids"] == model.image_token_id
        for j, q in enumerate(asked):
            att = state["attention"][j][image_pos[j]]  # visual tokens, in order
            inside = in_box(out.positions[j][out.mask[j]], q.target_box, image.size)
            att_share.append(float(att[inside].sum() / att.sum().clamp_min(1e-30)))
            tok_share.append(float(inside.double().mean()))
    return {"attention": _mean(att_share), "tokens": _mean(tok_share), "layer": layer, "images": used}


def _sensitivity(run: Path, a: argparse.Namespace, frac: float, extra: Sequence[str]) -> dict[str, float]:
    """:func:`query_sensitivity` of the ARR-COC model trained in ``run``, at ``frac`` of the tokens."""
    from eval.baselines import create_method

    model, processor, ds, data_cfg = _load_run(run, a, frac, extra)
    method = create_method("arr_coc", model, frac)
    processor.budget = method.placeholders
    return query_sensitivity(method, processor, ds, _bench_cfg(data_cfg.path), tuple(model.arr_coc.patch_grid),
                             max_tokens=int(model.arr_coc.attending.max_tokens))


def _grounding(run: Path, a: argparse.Namespace, extra: Sequence[str]) -> dict[str, float]:
    """:func:`attention_grounding` of the full-token model in ``run`` at the relevance-distillation layer (the
    recipe's default, the middle one)."""
    from models.relevance import default_layer

    model, processor, ds, data_cfg = _load_run(run, a, None, extra)
    layer = default_layer(len(model.language_model.layers))
    return attention_grounding(model, processor, ds, _bench_cfg(data_cfg.path), layer)


def _train_curve(run: Path, a: argparse.Namespace) -> dict[str, Any] | None:
    """From ``run/log.csv``: the last --onset-window's mean training accuracy and, with --onset-accuracy, the onset
    window; ``None`` where the run has no log (a smoke run logs every step, so it has one)."""
    from training.curves import onset, read_curve, window_means

    if not (run / "log.csv").is_file():
        return None
    try:
        curve = read_curve(run)
    except ValueError:  # a log with no rows yet: the --minutes cap stopped the run before its first log_every step
        return None
    start, end, last = window_means(curve, a.onset_window)[-1]
    out: dict[str, Any] = {"window": a.onset_window, "last_window": [start, min(end, curve.steps[-1])],
                           "last_window_accuracy": last, "threshold": a.onset_accuracy}
    if a.onset_accuracy is not None:
        out["onset"] = onset(curve, a.onset_accuracy, a.onset_window)
    return out


def _curve_cells(tc: dict[str, Any] | None, with_onset: bool) -> list[str]:
    """The per-seed table's training-curve cells: last window's accuracy (and the onset); ``n/a`` without a log."""
    from training.curves import format_onset

    if tc is None:
        return ["n/a"] * (1 + with_onset)
    return [f"{tc['last_window_accuracy']:.2f}", *([format_onset(tc.get("onset"))] if with_onset else [])]


def _per_seed_lines(results: dict, methods: list[str], meta: dict[str, Any], qtypes: list[str]) -> list[str]:
    """With several seeds, each trained model's own scores: the full model at 100% and the models trained at the
    training budget (ARR-COC, uniform-trained) there, so a spread in the mean ± std table can be read seed by seed."""
    seeds, tf, thr = meta["seeds"], meta["train_fraction"], meta.get("onset_accuracy")
    if len(seeds) < 2:
        return []
    rows = [("full", 1.0)] + [(m, tf) for m in methods if m.startswith("arr_coc") or m.startswith("uniform_")]
    out = ["", f"## Each seed: the full model at 100%, the trained models at {100 * tf:g}% of the tokens", "",
           "| method | tokens | seed | overall | " + " | ".join(qtypes) + " | tokens in queried box "
           f"| training accuracy, last {meta.get('onset_window', 500)} steps |"
           + ("" if thr is None else f" onset (first {meta['onset_window']}-step window of mean training accuracy ≥ {thr:g}) |"),
           "|---|---|---|---|" + "---|" * (len(qtypes) + 2 + (thr is not None))]
    for m, f in rows:
        for s in results.get(m, {}).get(f, []):
            cells = [f"{100 * s['accuracy']:.1f}"]
            cells += ["n/a" if s["by_type"].get(t, {}).get("accuracy") is None
                      else f"{100 * s['by_type'][t]['accuracy']:.1f}" for t in qtypes]
            tb = s.get("target_fraction")
            cells.append("n/a" if tb is None or math.isnan(tb) else f"{100 * tb:.1f}%")
            cells += _curve_cells(s.get("train_curve"), thr is not None)
            out.append(f"| {m} | {100 * f:g}% | {s.get('seed', '?')} | " + " | ".join(cells) + " |")
    return out


def _write_md(path: Path, results: dict, methods: list[str], fractions: list[float], meta: dict[str, Any]) -> None:
    seeds = meta["seeds"]
    lines = [f"# Accuracy vs. visual-token budget{' — SMOKE RUN' if meta['smoke'] else ''}", ""]
    if meta["smoke"]:
        lines += ["> **Smoke run: these numbers are meaningless.** Random-init tiny models trained for a handful of "
                  "steps on a tiny generated benchmark, on CPU. They only show that the pipeline runs end to end. "
                  "Real numbers come from `python -m scripts.bench_accuracy_budget --data data/bench` on a GPU.", ""]
    lines += [f"- Command: `{meta['command']}`", f"- Date: {meta['date']}", f"- Device: {meta['device']}",
              f"- Seeds: {seeds}; test rows per evaluation: {meta['rows']}",
              f"- Full-token model: N = {meta['N']} visual tokens; ARR-COC trained at {100 * meta['train_fraction']:g}%"
              f" and evaluated at each budget by setting its allocator's budget.",
              "- Training-free baselines run on the full-token model at exactly the same tokens per image; at 100% "
              "they are the full model (FastV's first K LLM layers always see all N tokens).", "",
              "## Accuracy (%), mean ± std over seeds", "",
              "| method | " + " | ".join(f"{100 * f:g}%" for f in fractions) + " |",
              "|---|" + "---|" * len(fractions)]
    for m in methods:
        cells = []
        for f in fractions:
            accs = [s["accuracy"] for s in results.get(m, {}).get(f, [])]
            cells.append(_fmt(*_stats(accs), len(accs)))
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    qtypes = sorted({t for m in results.values() for ss in m.values() for s in ss for t in s["by_type"]})
    for f in fractions:
        # At 100% every training-free baseline and the uniform-trained model are the full model: only the models
        # that differ get a row (the full model's row says which question types it can answer at all).
        shown = methods if f < 1.0 else [m for m in methods if m == "full" or m.startswith("arr_coc")]
        lines += ["", f"## At {100 * f:g}% of the tokens: by question type, FLOPs and grounding", "",
                  "| method | " + " | ".join(qtypes) + " | visual FLOPs fraction | tokens in queried box |",
                  "|---|" + "---|" * (len(qtypes) + 2)]
        for m in shown:
            ss = results.get(m, {}).get(f, [])
            if not ss:
                continue
            cells = [_fmt(*_stats([s["by_type"].get(t, {}).get("accuracy") for s in ss]), len(ss)) for t in qtypes]
            fl, _ = _stats([s["visual_flops_fraction"] for s in ss])
            tb, _ = _stats([s["target_fraction"] for s in ss])
            cells += [f"{fl:.3f}", "n/a" if math.isnan(tb) else f"{100 * tb:.1f}%"]
            lines.append(f"| {m} | " + " | ".join(cells) + " |")
    lines += _per_seed_lines(results, methods, meta, qtypes)
    lines += ["", "Visual FLOPs fraction: LLM prefill FLOPs (projections, SwiGLU MLP, attention pairs) that involve "
              "visual tokens, relative to the full-token model (see `eval/flops.py`). Tokens in queried box: share of "
              "the visual tokens whose centre lies in the question's `target_box` (digit/colour/yes-no questions).",
              "", "![accuracy vs budget](accuracy_budget.png)", "", "## Budget heat-map", "",
              f"ARR-COC per-patch budgets at {100 * meta['train_fraction']:g}% for different questions about the "
              f"same image, one row per gradient-trained ARR-COC model: {meta['heatmap']}.", "",
              *(["![budget heat-map](budget_heatmap.png)", ""] if meta.get("heatmap_drawn", True) else [])]
    if meta.get("sensitivity"):
        sens = meta["sensitivity"]
        n_img = next(iter(sens.values()))["images"]
        lines += ["## Does the allocation follow the question?", "",
                  f"Seed {seeds[0]}, {100 * meta['train_fraction']:g}% of the tokens, {n_img} test images, each asked "
                  "“what digit is in the <shape>?” about up to three of its shapes. Tokens moved: the share of the "
                  "visual tokens that change patch between two questions about the same image (0 = the question is "
                  "ignored). A query-blind allocation puts on average about the box's share of the image in the box. "
                  "Box patches: the patches the box overlaps, the unit the allocator decides on; uniform pooling gives "
                  "them their share of the patches, and the per-patch cap limits what they can hold (ceiling).",
                  "", "| model | tokens moved between questions | tokens in queried box | box area | tokens in box "
                  "patches | their share of patches | ceiling |", "|---|---|---|---|---|---|---|"]
        lines += [f"| {m} | {100 * v['moved']:.1f}% | {100 * v['in_box']:.1f}% | {100 * v['box_area']:.1f}% | "
                  f"{100 * v.get('patch_share', math.nan):.1f}% | {100 * v.get('patch_area', math.nan):.1f}% | "
                  f"{100 * v.get('patch_ceiling', math.nan):.1f}% |" for m, v in sens.items()] + [""]
    if meta.get("grounding"):
        g = meta["grounding"]
        lines += [f"Where the full-token model's LLM looks (the teacher of relevance distillation): from the last "
                  f"prompt position, layer {g['layer']} puts {100 * g['attention']:.1f}% of its attention on the "
                  f"visual tokens inside the queried box, which are {100 * g['tokens']:.1f}% of the visual tokens "
                  f"({g['images']} images, the same questions). Well above that share, the LLM finds the queried "
                  "shape and can teach the allocation; near it, it does not.", ""]
    if meta.get("training"):
        lines += ["## Training runs", "",
                  f"{len(meta['training'])} runs, {meta['parallel']} at a time, {meta['train_seconds']:.0f} s of "
                  "wall clock in all (0 when every run was reused).", ""]
        if meta.get("probe"):
            pr = meta["probe"]
            lines += [f"Steps chosen by `--steps auto`: {pr['steps']} for every model, what the slowest "
                      f"(`{pr['slowest']}`, {pr['seconds_per_step']:.3f} s/step with all runs training at once) fits "
                      f"in {pr['minutes']:g} minutes less {100 * pr['margin']:g}%.", ""]
        lines += ["| run | trained |", "|---|---|"]
        lines += [f"| {r} | {st} |" for r, st in meta["training"].items()] + [""]
    if meta.get("eval_probe"):
        ep = meta["eval_probe"]
        lines += [f"Test rows per evaluation chosen by `--total-minutes`: {ep['rows']} ({ep['rows_fit']} fit; "
                  f"{ep['evals']} evaluations in {ep['seconds']:.0f} s at {ep['fixed_seconds']:.1f} s + "
                  f"{1e3 * ep['seconds_per_row']:.1f} ms per row, timed on the full model).", ""]
    if meta.get("notes"):
        lines += ["## Notes", ""] + [f"- {x}" for x in meta["notes"]] + [""]
    if meta.get("failures"):
        lines += ["## Not evaluated", ""] + [f"- {x}" for x in meta["failures"]] + [""]
    path.write_text("\n".join(lines))


# -- main --------------------------------------------------------------------------------------------------------------
def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run the benchmark; returns ``{"md": path, "png": path, "heatmap": path, "results": {...}}``."""
    a = _parse(argv)
    # A smoke run without --work or --out keeps them in a temporary folder; it is removed if the run fails (a bad
    # argument included), so failed smoke runs leave nothing behind.
    tmp = (Path(tempfile.mkdtemp(prefix="acc_budget_smoke_")) if a.smoke and (a.work is None or a.out is None)
           else None)
    try:
        return _run(a, tmp, list(sys.argv[1:] if argv is None else argv))
    except BaseException:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
        raise


def _one_token_fractions(fractions: Sequence[float], n: int, k: int) -> list[float]:
    """The token fractions at which T = round(f * N) equals K: one token per patch, every allocator alike."""
    return [f for f in fractions if int(round(f * n)) == k]


def _uniform_trained_fractions(fractions: Sequence[float], wanted: Sequence[float] | None, n: int,
                               k: int) -> list[float]:
    """The fractions a uniform-pooling model is trained at: below 100% (there it is the full model), with at least one
    token per patch (T >= K), and among ``wanted`` (``--uniform-fractions``; ``None``: all)."""
    return [f for f in fractions if f < 1 and int(round(f * n)) >= k and (wanted is None or f in wanted)]


def _run(a: argparse.Namespace, tmp: Path | None, argv: list[str]) -> dict[str, Any]:
    from eval.run_eval import ResumeMismatchError

    t_start = time.perf_counter()
    base_model: dict[str, Any] = {}
    train_extra: list[str] = []
    eval_extra: list[str] = []
    if a.smoke:
        work = Path(a.work) if a.work else tmp / "runs"
        out = Path(a.out) if a.out else tmp / "results"
        # With --work the mini-benchmark lives beside the runs, so a second invocation reuses runs and data alike.
        data = work / "smoke_bench"
        from training.benchmark import TINY_GENERATOR, BenchmarkCfg, make_benchmark

        if not (data / "dataset_dict.json").is_file():
            make_benchmark(data, seed=0, sizes={"train": 16, "val": 4, "test": 8},
                           cfg=BenchmarkCfg.from_dict(TINY_GENERATOR))
        a.train_config, a.eval_config = "configs/train/tiny.yaml", "configs/eval/tiny.yaml"
        a.steps = 2 if a.steps is None else a.steps
        base_model = SMOKE_MODEL
        train_extra = [f"data.path={data}", "data.generate=false", "dist.fsdp=off", "train.batch_size=4",
                       "train.save_every=null", "train.log_every=1"]
        eval_extra = [f"data.path={data}", "data.generate=false", "data.split=test", "batch_size=8", "device=cpu",
                      *_kv("model", {})]
    else:
        work, out = Path(a.work or "runs/acc_budget"), Path(a.out or "results")
        train_extra = [f"data.path={a.data}"]
        # The evaluations read the benchmark the models trained on, as it is: with the eval config's `generate: true`
        # a benchmark made at other sizes (scripts/gpu_accuracy_session.sh's TRAIN_SIZE/TEST_SIZE) was refused, after
        # every model had trained.
        eval_extra = [f"data.path={a.data}", "data.generate=false", "data.split=test"]
    out.mkdir(parents=True, exist_ok=True)
    geo = _geometry(a, base_model)
    n, k, cells = geo["N"], geo["K"], geo["cells"]
    t_train = int(round(a.train_fraction * n))
    if not k < t_train < n:
        raise ValueError(
            f"--train-fraction {a.train_fraction:g} gives T = {t_train} visual tokens for K = {k} patches of up to "
            f"{cells}: ARR-COC has a choice only for K < T < N = {n} (at T = K every patch gets one token, at T = N "
            f"every patch all {cells}); choose a fraction strictly between {k / n:.4g} and 1")
    fractions = sorted(set(a.fractions), reverse=True)
    notes = [f"At {100 * f:g}% (T = {int(round(f * n))} = K) every patch gets exactly one token: every allocator, "
             "ARR-COC's included, gives the same allocation as uniform pooling there." for f in
             _one_token_fractions(fractions, n, k)]
    for line in notes:
        print(f"[bench] note: {line}", file=sys.stderr)

    def arr(allocator: str, budget: int, **kw: Any) -> dict[str, Any]:
        over = json.loads(json.dumps(base_model))
        over.setdefault("arr_coc", {}).update({"allocator": allocator, "budget": budget, "min_tokens": 1,
                                               "max_tokens": cells, **kw})
        return over

    levels = sorted({1, *(2 ** i for i in range(1, 12) if 2 ** i < cells), cells})
    uni_fractions = _uniform_trained_fractions(fractions, a.uniform_fractions, n, k)
    if a.saliency_after_steps and a.saliency_from == "uniform" and a.train_fraction not in uni_fractions:
        raise ValueError(f"--saliency-after-steps starts from the uniform-pooling model trained at --train-fraction "
                         f"{a.train_fraction:g}, which is not trained here (uniform-trained fractions: "
                         f"{sorted(uni_fractions)}): add it to --uniform-fractions (and --fractions), or pass "
                         "--saliency-from full")
    results: dict[str, dict[float, list[dict]]] = {}
    failures: list[str] = []
    cache: dict = {}

    def mixed(fracs: list[float]) -> list[str]:
        """Overrides of a model trained on a budget per batch from ``fracs``, with the grounding supervision."""
        return [*train_extra, f"train.budget_fractions={json.dumps(fracs)}",
                f"train.grounding_weight={a.grounding_weight}"]

    def bandit_kwargs(**extra: Any) -> dict[str, Any]:
        """The bandit allocator's kwargs: the bench's levels, the context width and ``BANDIT_PROJ_DIM``, plus ``extra``.
        proj_dim 64: the context's random projection keeps enough of it for the query-patch match; at the library's 16
        a bandit on a model that reads learnt half as much (README, "The bandit on a model that already reads")."""
        return {"levels": levels, "context_dim": geo["ctx"], "proj_dim": BANDIT_PROJ_DIM, **extra}

    def started_from(base: Path) -> list[str]:
        """Overrides of a run that starts from ``base``'s trained weights, at ``--finetune-lr`` when given."""
        return [f"train.init_from={base}", *([f"optim.lr={a.finetune_lr}"] if a.finetune_lr is not None else [])]

    def submit_all(trainer: _Trainer, seed: int) -> dict[str, Any]:
        ta = trainer.a  # the probe's settings under --steps auto (its own fine-tune and bandit steps), else ``a``
        full = trainer.submit("full", arr("uniform", n, min_tokens=cells), seed, train_extra)  # the longest: first
        arr_runs = {**{name: trainer.submit(name, over, seed, train_extra) for name, over in (
            ("arr_coc_projection", arr("projection", t_train)),
            ("arr_coc_bandit", arr("bandit", t_train, allocator_kwargs=bandit_kwargs())),
        ) if name in a.models}, **{
            name: trainer.submit(name, arr("projection", t_train), seed, [*train_extra, f"train.{key}={w}"])
            for name, key, w in EXTRA_MODELS(a) if w > 0}, **({
            "arr_coc_multibudget": trainer.submit("arr_coc_multibudget", arr("projection", t_train), seed,
                                                  mixed(a.budget_fractions))} if a.budget_fractions else {})}
        if a.finetune_fractions:
            base = arr_runs[FINETUNE_BASE(a)]
            arr_runs["arr_coc_finetuned"] = trainer.submit(
                "arr_coc_finetuned", arr("projection", t_train), seed,
                [*mixed(a.finetune_fractions), *started_from(base)], steps=ta.finetune_steps, after=base)
        if ta.bandit_after_steps:
            base = arr_runs["arr_coc_grounded"]
            arr_runs["arr_coc_bandit_grounded"] = trainer.submit(
                "arr_coc_bandit_grounded", arr("bandit", t_train, allocator_kwargs=bandit_kwargs(utility_weight=0.0)),
                seed, [*train_extra, f"train.grounding_weight={a.grounding_weight}", *started_from(base),
                       'train.init_from_skip=["arr_coc.attending."]'], steps=ta.bandit_after_steps, after=base)
        uni = {f: trainer.submit(f"uniform_trained_{int(round(f * n))}", arr("uniform", int(round(f * n))), seed,
                                 train_extra) for f in uni_fractions}
        more = {}
        if ta.saliency_after_steps:  # label-free: a reader trained without boxes, then saliency distillation
            base = full if a.saliency_from == "full" else uni[a.train_fraction]
            arr_runs["arr_coc_salient"] = trainer.submit(
                "arr_coc_salient", arr("projection", t_train, straight_through=False), seed,
                [*train_extra, f"train.saliency_weight={a.saliency_weight}", *started_from(base)],
                steps=ta.saliency_after_steps, after=base)
            more["uniform_continued"] = trainer.submit(
                "uniform_continued", arr("uniform", t_train), seed, [*train_extra, *started_from(base)],
                steps=ta.saliency_after_steps, after=base)
        return {"full": full, "arr": arr_runs, "uni": uni, "more": more}

    def seconds_left() -> float:
        """What --total-minutes leaves now, less --reserve-seconds for the figures and files."""
        return a.total_minutes * 60 - (time.perf_counter() - t_start) - a.reserve_seconds

    probe = None
    if a.steps == "auto":
        probe = _probe_steps(a, work, submit_all)
        a.steps = probe["steps"]
        if a.total_minutes is not None:
            probe["planned_training_seconds"] = round(_check_training_fits(a, probe, seconds_left()), 1)
    trainer = _Trainer(a, work)
    runs: dict[int, dict[str, Any]] = {}
    for seed in a.seeds:  # every training run first (in parallel with --parallel), then every evaluation
        runs[seed] = submit_all(trainer, seed)
    t_train0 = time.perf_counter()
    trainer.wait()
    train_seconds = time.perf_counter() - t_train0
    training = {str(r.relative_to(work)): _train_status(r) for rs in runs.values() for r in _run_dirs(rs)}
    curves = {r: _train_curve(r, a) for rs in runs.values() for r in _run_dirs(rs)}  # read each log once
    arr_models = ARR_MODELS(a)
    eval_probe = None
    if a.total_minutes is not None:
        lower = [f for f in fractions if f < 1]
        n_evals = len(a.seeds) * (1 + len(TRAINING_FREE) * len(lower) + len(arr_models) * len(fractions)
                                  + sum(len(rs["uni"]) + len(rs["more"]) for rs in runs.values()) // max(len(runs), 1))
        left = seconds_left()
        eval_probe = _eval_rows_that_fit(runs[a.seeds[0]]["full"], a, work, eval_extra, cache, n_evals, left)
        a.eval_samples = eval_probe["rows"]
        print(f"[bench] evaluations: {n_evals} x {a.eval_samples} rows in {left:.0f} s "
              f"({eval_probe['fixed_seconds']:.1f} s + {1e3 * eval_probe['seconds_per_row']:.1f} ms/row)",
              file=sys.stderr)
    for seed in a.seeds:
        full, uni = runs[seed]["full"], runs[seed]["uni"]

        def record(name: str, f: float, run: Path, method: str, frac: float | None) -> dict[str, Any] | None:
            tag = f"{name}@{100 * f:g}%/seed{seed}"
            # The folder names the checkpoint step and the row count: a resumed (longer) run or another row count
            # is another evaluation, never a resume of the old one's predictions.
            rows = "" if a.eval_samples is None else f"_rows{a.eval_samples}"
            folder = f"{name}_{int(round(f * n))}_step{_steps(run)[0]}{rows}"
            try:
                s = _eval(run, method, frac, a, work / f"seed{seed}" / "eval" / folder, eval_extra, cache)
            except ResumeMismatchError:
                raise  # a folder of other settings is a bug to see, not a method that cannot spend the budget
            except ValueError as e:  # e.g. a budget the method cannot spend; reported, never silently dropped
                failures.append(f"{tag}: {e}")
                return None
            # A training-free baseline is not trained: only the trained models carry their run's curve.
            curve = {} if name in TRAINING_FREE else {"train_curve": curves.get(run)}
            entry = {**s, "seed": seed, **curve}
            results.setdefault(name, {}).setdefault(f, []).append(entry)
            return entry

        full_entry = record("full", 1.0, full, "arr_coc", None)  # this seed's, or None where it failed
        for f in fractions:
            if f < 1:
                for b in TRAINING_FREE:
                    record(b, f, full, b, f)
            elif full_entry is not None:  # at 100% every training-free baseline is the full model
                for b in TRAINING_FREE:
                    results.setdefault(b, {}).setdefault(f, []).append(full_entry)
        for name, run in runs[seed]["arr"].items():
            for f in fractions:
                record(name, f, run, "arr_coc", f)
        for f in fractions:
            if f < 1 and f in uni:
                record("uniform_trained", f, uni[f], "arr_coc", None)
            elif f == 1 and full_entry is not None:
                results.setdefault("uniform_trained", {}).setdefault(f, []).append(full_entry)
        for name, run in runs[seed]["more"].items():  # uniform_continued: at its training budget only
            record(name, a.train_fraction, run, "arr_coc", None)
        cache.clear()

    methods = ["full", *arr_models, "uniform_trained", *(["uniform_continued"] if a.saliency_after_steps else []),
               *TRAINING_FREE]
    device = (torch.cuda.get_device_name(0) if torch.cuda.is_available() and not a.smoke
              else f"CPU ({platform.processor() or platform.machine()})")
    label = "SMOKE (random-init tiny models, meaningless numbers)" if a.smoke else "generated benchmark, test split"
    png, heat = out / "accuracy_budget.png", out / "budget_heatmap.png"
    _plot(results, methods, fractions, png, f"Accuracy vs visual tokens — {label}")
    heat_runs = [(m, work / f"seed{a.seeds[0]}" / m) for m in arr_models if not m.startswith("arr_coc_bandit")]
    if heat_runs:
        heat_desc = _heatmap(heat_runs, a, a.train_fraction, heat, eval_extra,
                             f"ARR-COC per-patch budgets at {100 * a.train_fraction:g}% — {label}")
    else:  # e.g. --models arr_coc_bandit only: nothing gradient-trained to draw
        heat, heat_desc = None, "not drawn: no gradient-trained ARR-COC model among --models"
        print(f"[bench] heat-map {heat_desc}", file=sys.stderr)
    sensitivity = {name: _sensitivity(work / f"seed{a.seeds[0]}" / name, a, a.train_fraction, eval_extra)
                   for name in arr_models}
    grounding = _grounding(work / f"seed{a.seeds[0]}" / "full", a, eval_extra)
    rows = next((ss[0]["n"] for r in results.values() for ss in r.values() if ss), 0)
    meta = {"smoke": a.smoke, "seeds": a.seeds, "N": n, "train_fraction": a.train_fraction, "rows": rows,
            "command": "python -m scripts.bench_accuracy_budget " + " ".join(argv),
            "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "device": device,
            "heatmap": heat_desc, "heatmap_drawn": heat is not None, "failures": failures, "training": training, "parallel": a.parallel,
            "train_seconds": round(train_seconds, 1), "probe": probe, "eval_probe": eval_probe,
            "notes": notes, "sensitivity": sensitivity, "onset_accuracy": a.onset_accuracy,
            "onset_window": a.onset_window,
            "grounding": grounding}
    md = out / "accuracy_budget.md"
    _write_md(md, results, methods, fractions, meta)
    (out / "accuracy_budget.json").write_text(json.dumps(
        {"meta": meta, "results": {m: {str(f): ss for f, ss in r.items()} for m, r in results.items()}},
        indent=2, default=str) + "\n")
    print(f"[bench] wrote {md}, {png}, {heat} in {time.perf_counter() - t_start:.0f} s", file=sys.stderr)
    if tmp is not None and a.work is None:
        shutil.rmtree(tmp / "runs", ignore_errors=True)  # checkpoints are not needed after a smoke run
    return {"md": md, "png": png, "heatmap": heat, "results": results, "failures": failures}


if __name__ == "__main__":
    main()
