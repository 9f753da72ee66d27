"""Train ``ArrCocLlava`` on a VQA dataset with FSDP2, launched by ``accelerate`` or ``torchrun``.

Launch (each config in ``configs/train/`` is headed by its own command)::

    accelerate launch --config_file configs/accelerate/fsdp_gpu.yaml -m training.train \\
        --config configs/train/bench.yaml train.max_steps=2000
    torchrun --nproc_per_node 2 -m training.train --config configs/train/tiny.yaml   # CPU, gloo
    python -m training.train --config configs/train/tiny.yaml --resume               # one process

Why the recipe shards the model itself: ``accelerate`` turns on FSDP only for GPU backends (on CPU it silently falls
back to DDP or one process), so the recipe applies FSDP2 (``torch.distributed.fsdp.fully_shard``, Zhao et al. 2023,
"PyTorch FSDP") on every backend: each LLM decoder layer and vision block is its own group, the rest (embeddings,
projector, position table, ArrCoc, LM head) forms the root group. accelerate is the launcher, and its config's
``mixed_precision`` is honoured when the recipe's is ``auto``.

Exactness across world sizes: ``train.batch_size`` is the *global* batch. Step ``s`` takes rows
``perm_e[o : o + G]`` of the epoch's seeded permutation, split into ``grad_accum x world`` micro-batches, and the loss
is the token-summed cross-entropy divided by the global number of answer tokens, so 1 and N processes optimise the
same objective (up to float summation order), and a resumed run continues the same sequence of batches.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import math
import os
import random
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F

from models.builders import (apply_overrides, build_model, check_choice, dataclass_from_dict, dataclass_to_dict,
                             load_model_cfg, load_yaml, model_dict)
from models.processing import IGNORE_INDEX
from training.checkpoint import find_latest, load_checkpoint, load_model_weights, save_checkpoint
from training.collate import RowDataset, VqaCollator, move_to

__all__ = ["DataCfg", "DistCfg", "OptimCfg", "RunCfg", "TrainCfg", "TrainRecipe", "gini", "load_train_cfg", "main"]


# -- configuration -----------------------------------------------------------------------------------------------------
@dataclass
class DataCfg:
    """Training data."""

    source: str = "benchmark"  # benchmark (training/benchmark.py) | vqav2 | gqa | textvqa | docvqa (training/data.py)
    path: str | None = None  # dataset directory (benchmark: written by scripts/make_benchmark.py)
    split: str = "train"  # split to train on
    generate: bool = False  # benchmark only: generate it at `path` (rank 0) when missing
    generate_sizes: dict = field(default_factory=lambda: {"train": 256, "val": 64})  # rows per split when generating
    generate_seed: int = 0  # benchmark seed when generating
    generate_cfg: dict = field(default_factory=dict)  # BenchmarkCfg fields when generating (e.g. image_size)
    max_samples: int | None = None  # use only the first N rows
    images: str | None = None  # GQA: path of the separate images table
    config: str | None = None  # HF dataset config (e.g. GQA's), for sources that have several
    columns: dict = field(default_factory=dict)  # ColumnMap overrides: schema field -> source column (training/data.py)
    keep_columns: list = field(default_factory=list)  # source columns carried through, e.g. [target_box] for grounding
    num_workers: int = 0  # DataLoader worker processes (image decoding)
    max_length: int | None = None  # error on longer sequences (never truncates)


@dataclass
class OptimCfg:
    """AdamW (Loshchilov & Hutter 2019) with warmup + cosine decay; ArrCoc gets its own learning rate."""

    lr: float = 1e-4  # learning rate of the LLM, projector, vision and query towers
    arr_coc_lr: float = 1e-3  # learning rate of the ArrCoc layer (knowing, balancing, learned allocators)
    weight_decay: float = 0.0  # decoupled weight decay of matrices (never of biases, norms, tables of rank < 2)
    betas: list = field(default_factory=lambda: [0.9, 0.999])  # Adam betas
    eps: float = 1e-8  # Adam epsilon
    warmup_steps: int = 0  # linear warmup steps
    schedule: str = "cosine"  # cosine | constant (after warmup)
    min_lr_ratio: float = 0.1  # cosine floor as a fraction of the peak
    grad_clip: float | None = 1.0  # global gradient-norm clip (None: off)


@dataclass
class DistCfg:
    """Process group, FSDP2 and precision."""

    fsdp: str = "auto"  # auto (shard when world > 1) | on | off
    backend: str | None = None  # None: nccl on CUDA, gloo on CPU
    device: str = "auto"  # auto (CUDA when available) | cpu | cuda
    mixed_precision: str = "auto"  # auto (accelerate's setting, else bf16 on CUDA, fp32 on CPU) | no | bf16 | fp16
    # (bf16 also runs on CPU with FSDP2 + gloo, slowly: the tests use it to exercise the GPU recipe's precision path)
    reshard_after_forward: bool = True  # FSDP2: free gathered weights after forward (ZeRO-3); False is ZeRO-2-like
    # Recompute the LLM's decoder layers and the vision tower's blocks in the backward pass instead of keeping their
    # activations (ArrCocLlava.gradient_checkpointing_enable, non-reentrant): less memory, about one more forward.
    activation_checkpointing: bool = False


@dataclass
class RunCfg:
    """The loop."""

    seed: int = 0  # model init (same on all ranks) and data order
    max_steps: int = 10  # optimizer steps
    batch_size: int = 8  # GLOBAL batch (rows per optimizer step, over all processes and accumulation)
    grad_accum: int = 1  # micro-batches per process per step
    log_every: int = 1  # CSV / progress-bar period in steps
    save_every: int | None = None  # checkpoint period in steps (the last step is always saved)
    keep_last: int | None = 3  # completed checkpoints to keep
    bandit_feedback: bool = True  # feed answer correctness to a `bandit` allocator's update()
    hang_after_step: int | None = None  # test hook: after this step's checkpoint, signal and sleep (for SIGKILL tests)
    max_minutes: float | None = None  # wall-clock budget of this call: checkpoint and stop after it (resume later)
    relevance_weight: float = 0.0  # > 0: add this times the relevance-distillation loss (models/relevance.py)
    relevance_layer: int | None = None  # LLM layer (1-based) whose attention teaches the allocation; None: the middle
    grounding_weight: float = 0.0  # > 0: add this times the box-grounding loss (models/grounding.py; needs target_box)
    # > 0: add this times the saliency-distillation loss (models/relevance.py: gradient x input of the answer loss at
    # the LLM's visual inputs, per patch; label-free). One extra gradient pass per micro-batch (under FSDP2 the
    # parameters stay unsharded between the two passes; tests/training/test_fsdp.py: two processes match one).
    saliency_weight: float = 0.0
    # Fractions of N (the full-token count) to draw each batch's ArrCoc budget from (deterministic per batch), so one
    # model serves several budgets; null: every batch at the model's arr_coc.budget. E.g. [0.125, 0.25, 0.5].
    budget_fractions: list | None = None
    # Start from these weights (a checkpoint folder, a run's output folder, or an exported model folder) instead of
    # the initialisation: a fine-tune. Only weights are read (fresh optimizer, schedule and step 0); the model config
    # must describe the same architecture. A --resume checkpoint, when there is one, takes precedence.
    init_from: str | None = None
    # With init_from: key prefixes of the model's state dict that keep their fresh initialisation, e.g.
    # ["arr_coc.attending."] to give a model trained with one allocator another (a bandit's statistics). Keys under
    # them may be missing from the weights, and the weights' own keys under them are not read.
    init_from_skip: list | None = None


@dataclass
class TrainCfg:
    """A whole training run; ``model`` is merged over ``model_preset``."""

    output_dir: str = "runs/tiny"  # log.csv, checkpoints/, config.json
    model_preset: str = "tiny"  # configs/models/<name>.yaml or a YAML path
    model: dict = field(default_factory=dict)  # ModelCfg fields overriding the preset (nested)
    data: DataCfg = field(default_factory=DataCfg)
    optim: OptimCfg = field(default_factory=OptimCfg)
    dist: DistCfg = field(default_factory=DistCfg)
    train: RunCfg = field(default_factory=RunCfg)


def load_train_cfg(path: str | os.PathLike[str] | None, overrides: Sequence[str] = ()) -> TrainCfg:
    """Read a training YAML and apply ``key=value`` overrides; unknown keys raise ``ValueError``.

    The model part is validated too (``model.arr_coc.budgett=3`` fails here, not after building).
    """
    raw = load_yaml(path) if path is not None else {}
    cfg = dataclass_from_dict(TrainCfg, apply_overrides(raw, overrides))
    # YAML 1.1 reads bare on/off/no as booleans.
    if isinstance(cfg.dist.fsdp, bool):
        cfg.dist.fsdp = "on" if cfg.dist.fsdp else "off"
    if cfg.dist.mixed_precision is False:
        cfg.dist.mixed_precision = "no"
    check_choice("dist.fsdp", cfg.dist.fsdp, ("auto", "on", "off"))
    check_choice("dist.device", cfg.dist.device, ("auto", "cpu", "cuda"))
    check_choice("dist.mixed_precision", cfg.dist.mixed_precision, ("auto", "no", "fp32", "bf16", "fp16"))
    check_choice("optim.schedule", cfg.optim.schedule, ("cosine", "constant"))

    def _number(name: str, v: Any, ok: Callable[[float], bool], want: str, *, integer: bool = False,
                nullable: bool = False) -> None:
        if v is None and nullable:
            return
        types = (int,) if integer else (int, float)
        if isinstance(v, bool) or not isinstance(v, types) or not math.isfinite(v) or not ok(v):
            raise ValueError(f"{name} must be {want}, got {v!r}")

    for name, v in (("train.max_steps", cfg.train.max_steps), ("train.batch_size", cfg.train.batch_size),
                    ("train.grad_accum", cfg.train.grad_accum), ("train.log_every", cfg.train.log_every)):
        _number(name, v, lambda x: x >= 1, "a positive integer", integer=True)

    # A negative clip flips the gradient's sign, a negative floor ratio makes the late learning rate negative, and
    # save_every/keep_last below 1 would save every step / keep everything: refused, not silently applied.
    _number("optim.grad_clip", cfg.optim.grad_clip, lambda v: v > 0, "a number > 0 or null", nullable=True)
    _number("optim.min_lr_ratio", cfg.optim.min_lr_ratio, lambda v: 0 <= v <= 1, "a number in [0, 1]")
    _number("optim.warmup_steps", cfg.optim.warmup_steps, lambda v: v >= 0, "an integer >= 0", integer=True)
    _number("optim.lr", cfg.optim.lr, lambda v: v > 0, "a number > 0")
    _number("optim.arr_coc_lr", cfg.optim.arr_coc_lr, lambda v: v > 0, "a number > 0")
    _number("optim.eps", cfg.optim.eps, lambda v: v > 0, "a number > 0")
    betas = cfg.optim.betas
    if (not isinstance(betas, (list, tuple)) or len(betas) != 2 or any(
            isinstance(b, bool) or not isinstance(b, (int, float)) or not 0 <= b < 1 for b in betas)):
        raise ValueError(f"optim.betas must be a list of two numbers in [0, 1), got {betas!r}")
    _number("optim.weight_decay", cfg.optim.weight_decay, lambda v: v >= 0, "a number >= 0")
    _number("train.save_every", cfg.train.save_every, lambda v: v >= 1, "an integer >= 1 or null", integer=True,
            nullable=True)
    _number("train.keep_last", cfg.train.keep_last, lambda v: v >= 1, "an integer >= 1 or null", integer=True,
            nullable=True)
    _number("train.seed", cfg.train.seed, lambda v: 0 <= v < 2**32, "an integer in [0, 2**32)", integer=True)
    mm = cfg.train.max_minutes
    if mm is not None and (isinstance(mm, bool) or not isinstance(mm, (int, float)) or not mm > 0):
        raise ValueError(f"train.max_minutes must be a positive number or null, got {mm!r}")
    for name, v in (("train.relevance_weight", cfg.train.relevance_weight),
                    ("train.grounding_weight", cfg.train.grounding_weight),
                    ("train.saliency_weight", cfg.train.saliency_weight)):
        _number(name, v, lambda x: x >= 0, "a finite number >= 0")
    bf = cfg.train.budget_fractions
    if bf is not None and (not isinstance(bf, (list, tuple)) or not bf or any(
            isinstance(f, bool) or not isinstance(f, (int, float)) or not 0 < f <= 1 for f in bf)):
        raise ValueError(f"train.budget_fractions must be null or a non-empty list of fractions in (0, 1], got {bf!r}")
    init = cfg.train.init_from
    if init is not None and (not isinstance(init, str) or not init):
        raise ValueError(f"train.init_from must be a path (checkpoint, run or exported model folder) or null, "
                         f"got {init!r}")
    skip = cfg.train.init_from_skip
    if skip is not None and (not isinstance(skip, (list, tuple)) or not skip
                             or any(not isinstance(x, str) or not x for x in skip)):
        raise ValueError(f"train.init_from_skip must be null or a non-empty list of state-dict key prefixes, "
                         f"got {skip!r}")
    if skip is not None and init is None:
        raise ValueError(f"train.init_from_skip={skip!r} needs train.init_from (the weights the other keys come from)")
    rl = cfg.train.relevance_layer
    if rl is not None and (isinstance(rl, bool) or not isinstance(rl, int) or rl < 1):
        raise ValueError(f"train.relevance_layer must be a positive integer (1-based LLM layer) or null, got {rl!r}")
    # The remaining keys were taken as given: a truthy string (train.bandit_feedback=flase) switched a flag on, and
    # data.max_length=-1 or data.num_workers=1.5 failed only at the first batch, without the key's name.
    if cfg.train.batch_size % cfg.train.grad_accum:
        raise ValueError(f"train.batch_size={cfg.train.batch_size} is not divisible by train.grad_accum="
                         f"{cfg.train.grad_accum} (each process's micro-batches must tile the global batch)")
    for name, v in (("train.bandit_feedback", cfg.train.bandit_feedback), ("data.generate", cfg.data.generate),
                    ("dist.reshard_after_forward", cfg.dist.reshard_after_forward),
                    ("dist.activation_checkpointing", cfg.dist.activation_checkpointing)):
        if not isinstance(v, bool):
            raise ValueError(f"{name} must be true or false, got {v!r}")
    for name, v, nullable in (("output_dir", cfg.output_dir, False), ("data.source", cfg.data.source, False),
                              ("data.split", cfg.data.split, False), ("data.path", cfg.data.path, True),
                              ("dist.backend", cfg.dist.backend, True)):
        if not (v is None and nullable) and (not isinstance(v, str) or not v):
            raise ValueError(f"{name} must be a non-empty string{' or null' if nullable else ''}, got {v!r}")
    for name, v in (("model", cfg.model), ("data.generate_sizes", cfg.data.generate_sizes),
                    ("data.generate_cfg", cfg.data.generate_cfg), ("data.columns", cfg.data.columns)):
        if v is not None and not isinstance(v, dict):
            raise ValueError(f"{name} must be a mapping, got {v!r}")
    if not isinstance(cfg.data.keep_columns, (list, tuple)):
        raise ValueError(f"data.keep_columns must be a list of column names, got {cfg.data.keep_columns!r}")
    _number("data.max_length", cfg.data.max_length, lambda v: v >= 1, "a positive integer or null", integer=True,
            nullable=True)
    _number("data.max_samples", cfg.data.max_samples, lambda v: v >= 1, "a positive integer or null", integer=True,
            nullable=True)
    _number("data.num_workers", cfg.data.num_workers, lambda v: v >= 0, "an integer >= 0", integer=True)
    _number("data.generate_seed", cfg.data.generate_seed, lambda v: v >= 0, "an integer >= 0", integer=True)
    _number("train.hang_after_step", cfg.train.hang_after_step, lambda v: v >= 1, "a positive integer or null",
            integer=True, nullable=True)
    model_cfg(cfg)  # validates the merged model config
    return cfg


# Settings that fix a run's trajectory: resuming with another value would silently continue a different run (another
# data order, batch, budget draw, objective or model). max_steps, the optimiser, logging and checkpointing may change.
# train.bandit_feedback decides whether a bandit allocator's statistics (model state) learn; data.columns which source
# columns are the question and answers.
_RESUME_KEYS = ("model_preset", "model", "train.seed", "train.batch_size", "train.grad_accum", "train.budget_fractions",
                "train.grounding_weight", "train.relevance_weight", "train.relevance_layer", "train.saliency_weight",
                "train.bandit_feedback", "data.source", "data.split", "data.max_samples", "data.columns")
# Keys added after checkpoints were already being written: a saved config without one was trained with this value.
_RESUME_ADDED = {"train.saliency_weight": 0.0, "data.columns": {}}


@contextlib.contextmanager
def _capture_inputs_embeds(llm: torch.nn.Module):
    """Yield a dict that holds, after ``llm``'s forward, the ``inputs_embeds`` it was called with (made a leaf that
    requires grad when they did not)."""
    state: dict[str, torch.Tensor] = {}

    def hook(module, args, kwargs):
        e = kwargs.get("inputs_embeds")
        if e is None:
            raise ValueError("saliency distillation needs the LLM called with inputs_embeds")
        if not e.requires_grad:
            e = kwargs["inputs_embeds"] = e.detach().requires_grad_()
        state["embeds"] = e
        return args, kwargs

    handle = llm.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        yield state
    finally:
        handle.remove()


def _check_resume_config(saved: dict | None, cfg: TrainCfg, path: Path) -> None:
    """Raise ``ValueError`` naming every :data:`_RESUME_KEYS` setting that differs from the checkpoint's."""
    if not saved:
        return  # a checkpoint written without its config (older format): nothing to compare
    now = dataclass_to_dict(cfg)

    def get(d: dict, key: str) -> Any:
        for part in key.split("."):
            d = d.get(part) if isinstance(d, dict) else None
        return d

    def was(key: str) -> Any:
        v = get(saved, key)
        return _RESUME_ADDED[key] if v is None and key in _RESUME_ADDED else v

    diff = [k for k in _RESUME_KEYS if json.dumps(was(k), sort_keys=True, default=str)
            != json.dumps(get(now, k), sort_keys=True, default=str)]
    if diff:
        pairs = ", ".join(f"{k}: {was(k)!r} -> {get(now, k)!r}" for k in diff)
        raise ValueError(f"--resume from {path}: the run was trained with other settings ({pairs}); resume with the "
                         "same ones (max_steps and optim may change) or start a new output_dir")


def model_cfg(cfg: TrainCfg):
    """The resolved :class:`~models.builders.ModelCfg` (preset + ``model`` overrides)."""
    return load_model_cfg(model_dict(cfg.model_preset, cfg.model))


# -- small utilities ---------------------------------------------------------------------------------------------------
def gini(x: torch.Tensor) -> torch.Tensor:
    """Gini coefficient of each row of non-negative values (0: equal, → 1: concentrated). Shape (B, K) → (B,)."""
    x = x.double().sort(dim=-1).values
    k = x.shape[-1]
    idx = torch.arange(1, k + 1, dtype=x.dtype, device=x.device)
    total = x.sum(-1).clamp_min(1e-12)
    return ((2 * idx - k - 1) * x).sum(-1) / (k * total)


def _all_reduce(t: torch.Tensor) -> torch.Tensor:
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(t)
    return t


class _RankBatches(torch.utils.data.Sampler):
    """Index lists of this rank's micro-batches, step after step, from ``start_step`` to ``max_steps``.

    Step ``s`` uses rows ``perm_e[o : o + G]`` with ``e = s // steps_per_epoch`` and ``o = (s mod steps_per_epoch) G``,
    ``perm_e`` a permutation seeded by ``(seed, e)``. Micro-batch ``m`` of rank ``r`` is the slice number
    ``m * world + r`` of size ``G / (world * accum)``.
    """

    def __init__(self, n_rows: int, *, seed: int, global_batch: int, world: int, rank: int, accum: int,
                 start_step: int, max_steps: int):
        if global_batch % (world * accum):
            raise ValueError(f"train.batch_size={global_batch} is not divisible by world_size x grad_accum = "
                             f"{world} x {accum}")
        if n_rows < global_batch:
            raise ValueError(f"the dataset has {n_rows} rows, fewer than one global batch ({global_batch})")
        self.n, self.seed, self.g, self.world, self.rank, self.accum = n_rows, seed, global_batch, world, rank, accum
        self.micro = global_batch // (world * accum)
        self.steps_per_epoch = n_rows // global_batch
        self.start, self.stop = start_step, max_steps
        self._perm_epoch, self._perm = -1, np.empty(0, dtype=np.int64)  # the current epoch's permutation

    def step_rows(self, step: int) -> np.ndarray:
        epoch, pos = divmod(step, self.steps_per_epoch)
        if epoch != self._perm_epoch:  # drawn once per epoch, not once per step (O(rows) each time)
            self._perm_epoch, self._perm = epoch, np.random.default_rng([self.seed, epoch]).permutation(self.n)
        return self._perm[pos * self.g:(pos + 1) * self.g]

    def __iter__(self) -> Iterator[list[int]]:
        for step in range(self.start, self.stop):
            rows = self.step_rows(step)
            for m in range(self.accum):
                j = m * self.world + self.rank
                yield rows[j * self.micro:(j + 1) * self.micro].tolist()

    def __len__(self) -> int:
        return (self.stop - self.start) * self.accum


# -- the recipe --------------------------------------------------------------------------------------------------------
class TrainRecipe:
    """FSDP2 fine-tuning recipe for ``ArrCocLlava``.

    Features:
        - one config (YAML + ``key=value`` overrides, unknown keys rejected) for model, data, optimizer and loop;
        - launch with ``accelerate launch`` (GPU, its ``mixed_precision`` honoured), ``torchrun`` (any backend; gloo
          on CPU), or plain ``python`` (one process);
        - FSDP2 ``fully_shard`` per LLM decoder layer and vision block plus the root, on CPU (gloo) and GPU (nccl),
          with bf16 parameters / fp32 reductions on GPU (``MixedPrecisionPolicy``); autocast without FSDP;
        - global batch independent of the world size, gradient accumulation (no gradient sync until the last
          micro-batch), loss normalised by the global answer-token count, gradient-norm clipping;
        - AdamW with a separate learning rate for ArrCoc, no decay of vectors, warmup + cosine schedule;
        - freezing flags from the model config (``vision_trainable``, ``llm_trainable``, ``arr_coc_trainable``);
        - bandit feedback: with the ``bandit`` allocator, each micro-batch's answer exact-match becomes the reward of
          ``allocator.update(rewards)``; skipped cleanly when that allocator is absent;
        - atomic checkpoints (safetensors weights + DCP-sharded model/optimizer + scheduler, step, RNG, data position)
          and exact ``--resume``; ``train.init_from`` starts a new run (a fine-tune) from another run's weights;
        - tqdm on rank 0 and ``log.csv``: loss, answer accuracy, lr (``optim.lr`` as scheduled), grad norm, tokens/s,
          samples/s, budget mean and Gini, peak memory.

    Args:
        cfg: The run configuration.
        resume: ``True``: continue from the latest checkpoint in ``output_dir`` if any; a path: from that checkpoint.
    """

    def __init__(self, cfg: TrainCfg, *, resume: bool | str = False):
        self.cfg = cfg
        self.resume = resume
        self.out = Path(cfg.output_dir)
        self.step = 0
        self._own_pg = False
        self.replicated: list[torch.nn.Parameter] = []

    # -- setup --------------------------------------------------------------------------------------------------------
    def setup(self) -> None:
        cfg = self.cfg
        self._setup_distributed()
        self._seed(cfg.train.seed)  # identical initial weights on every rank
        self.model_cfg = model_cfg(cfg)
        self.model, self.processor = build_model(self.model_cfg)
        self.model.to(self.device)
        if cfg.train.init_from is not None:
            skip = tuple(cfg.train.init_from_skip or ())
            src = load_model_weights(self.model, cfg.train.init_from, skip=skip)
            self._log(f"initialised weights from {src}" + (f" (kept fresh: {', '.join(skip)})" if skip else ""))
        self.relevance_layer = self._relevance_layer()
        self._fp32_masters()
        if cfg.dist.activation_checkpointing:  # before sharding: FSDP2's hooks then run again in each recompute
            self.model.gradient_checkpointing_enable()
            self._log("activation checkpointing: the LLM's layers and the vision tower's blocks recompute in backward")
        self._shard()
        self._seed(cfg.train.seed + 1 + self.rank)  # per-rank streams from here on (sampling, dropout)
        self.optimizer = self._optimizer()
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, self._lr_lambda)
        self.dataset = self._dataset()
        if cfg.train.grounding_weight > 0 and "target_box" not in getattr(self.dataset, "column_names", ()):
            raise ValueError(f"train.grounding_weight={cfg.train.grounding_weight} needs a target_box column (the "
                             f"queried region's box, as the generated benchmark has); data.source="
                             f"{cfg.data.source!r} at {cfg.data.path!r} has only {list(self.dataset.column_names)}")
        # On a GPU the loader workers only decode and resize (uint8); the float conversion runs on the device.
        self.collator = VqaCollator(self.processor, train=True, max_length=cfg.data.max_length,
                                    uint8_pixels=self.device.type == "cuda", budgets=self._budget_choices(),
                                    seed=cfg.train.seed)
        self.ckpt_dir = self.out / "checkpoints"
        if self.resume:
            path = Path(self.resume) if isinstance(self.resume, str) else find_latest(self.ckpt_dir)
            if path is not None:
                # The checkpoint continues the optimizer's state (Adam moments and steps), but its param groups carry
                # that run's hyperparameters, and `optim` may change on resume: this config's go back in afterwards
                # and the schedule is rebuilt at the step (loading the old groups ignored a new optim.lr, and failed
                # when the new values split or merged the groups).
                hyper = [{k: v for k, v in g.items() if k != "params"} for g in self.optimizer.param_groups]
                # Compared before loading: another architecture failed inside DCP's load (a CheckpointException
                # about tensor sizes or missing keys) instead of naming the setting that changed.
                saved = path / "trainer_state.json"
                if saved.is_file():
                    _check_resume_config(json.loads(saved.read_text()).get("config"), cfg, path)
                state = load_checkpoint(path, model=self.model, optimizer=self.optimizer, scheduler=None)
                self.step = int(state["step"])
                for group, h in zip(self.optimizer.param_groups, hyper):
                    group.update(h)
                self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, self._lr_lambda,
                                                                   last_epoch=self.step - 1)
                self._log(f"resumed from {path} at step {self.step}")
            else:
                self._log(f"--resume: no checkpoint in {self.ckpt_dir}, starting from scratch")
        if self.rank == 0:
            self.out.mkdir(parents=True, exist_ok=True)
            (self.out / "config.json").write_text(json.dumps(
                {"train": dataclass_to_dict(cfg), "model": dataclass_to_dict(self.model_cfg),
                 "world_size": self.world, "device": str(self.device), "fsdp": self.fsdp,
                 "mixed_precision": self.mp}, indent=2, default=str) + "\n")
        self._write_sharding_report()
        self._barrier()

    def _budget_choices(self) -> list[int] | None:
        """``train.budget_fractions`` as token counts, each checked feasible for the model's allocator."""
        fracs = self.cfg.train.budget_fractions
        if fracs is None:
            return None
        from models.vlm import full_token_count, tokens_for_fraction

        n = full_token_count(self.model)
        out = []
        for f in fracs:
            t = tokens_for_fraction(self.model, f)
            try:
                with self.model.arr_coc.budget_override(t):
                    pass
            except ValueError as e:
                raise ValueError(f"train.budget_fractions: {f} of N={n} is {t} tokens, which the allocator cannot "
                                 f"spend: {e}") from None
            out.append(t)
        return out

    def _setup_distributed(self) -> None:
        cfg = self.cfg.dist
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        use_cuda = cfg.device == "cuda" or (cfg.device == "auto" and torch.cuda.is_available()
                                            and os.environ.get("ACCELERATE_USE_CPU", "False").lower() != "true")
        if use_cuda and not torch.cuda.is_available():
            raise ValueError("dist.device='cuda' but CUDA is not available")
        if use_cuda:
            torch.cuda.set_device(self.local_rank)
            self.device = torch.device("cuda", self.local_rank)
        else:
            self.device = torch.device("cpu")
        self.fsdp = cfg.fsdp == "on" or (cfg.fsdp == "auto" and self.world > 1)
        if (self.world > 1 or self.fsdp) and not dist.is_initialized():
            if "MASTER_ADDR" not in os.environ:
                if self.world > 1:
                    raise ValueError(f"WORLD_SIZE={self.world} but no MASTER_ADDR: launch with torchrun or accelerate")
                # One process asked for FSDP without a launcher: a private single-rank group on a free local port.
                import socket

                with socket.socket() as sock:
                    sock.bind(("127.0.0.1", 0))
                    port = sock.getsockname()[1]
                os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK="0", WORLD_SIZE="1")
            backend = cfg.backend or ("nccl" if use_cuda else "gloo")
            dist.init_process_group(backend, device_id=self.device if use_cuda else None)
            self._own_pg = True
        if self.world > 1 and not self.fsdp:
            raise ValueError(f"world size {self.world} needs dist.fsdp='auto' or 'on' (no DDP path in this recipe)")
        mp = cfg.mixed_precision
        if mp == "auto":
            mp = os.environ.get("ACCELERATE_MIXED_PRECISION", "bf16" if use_cuda else "no")
        self.mp = {"fp32": "no"}.get(mp, mp)
        if self.mp == "fp16" and not use_cuda:
            raise ValueError(f"dist.mixed_precision={self.mp!r} is for CUDA; use 'no' or 'bf16' on CPU")
        self.amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.mp)

    def _seed(self, seed: int) -> None:
        random.seed(seed)
        np.random.seed(seed % 2**32)
        torch.manual_seed(seed)

    def _fp32_masters(self) -> None:
        """Trainable parameters built in a half dtype (e.g. ``llm.dtype: bfloat16``) become float32 masters when
        training in mixed precision: AdamW updates smaller than a bf16 weight's ulp would round away (1e-5 steps on
        O(1) weights change nothing). Autocast, or FSDP2's ``MixedPrecisionPolicy``, casts them for compute; frozen
        parameters stay as built."""
        if self.amp_dtype is None:
            return
        up = [n for n, p in self.model.named_parameters() if p.requires_grad and p.dtype in (torch.bfloat16,
                                                                                              torch.float16)]
        for n, p in self.model.named_parameters():
            if n in up:
                p.data = p.data.float()
        if up:
            self._log(f"{len(up)} trainable half-precision parameters made float32 masters (mixed precision "
                      f"{self.mp})")

    def _shard(self) -> None:
        if not self.fsdp:
            return
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

        kw: dict[str, Any] = {"reshard_after_forward": self.cfg.dist.reshard_after_forward}
        if self.amp_dtype is not None:
            kw["mp_policy"] = MixedPrecisionPolicy(param_dtype=self.amp_dtype, reduce_dtype=torch.float32)
        for block in self.model.fsdp_blocks():
            fully_shard(block, **kw)
        # ArrCoc stays replicated in float32: it is tiny (about 1e3 parameters), FSDP2 cannot shard its scalar
        # parameters, and mixed precision must not touch it. Its gradients are all-reduced in _sync_replicated.
        self.replicated = [p for p in self.model.arr_coc.parameters()]
        # The root is never resharded after forward: backward starts right away and needs its parameters (embeddings,
        # LM head, projector). Observed: torch 2.14 ran either way, but torch 2.11 (the GPU machine's stack) with a
        # resharded root freed the LM head before backward ("setStorage ... out of bounds for storage of size 0").
        fully_shard(self.model, ignored_params=set(self.replicated), **{**kw, "reshard_after_forward": False})

    def _write_sharding_report(self) -> None:
        """``sharding/rank{r}.json``: per-rank local vs global parameter sizes (evidence of real sharding)."""
        from torch.distributed.tensor import DTensor

        params = list(self.model.named_parameters())
        dt = [(n, p) for n, p in params if isinstance(p, DTensor)]
        report = {
            "rank": self.rank, "world_size": self.world, "n_params": len(params), "n_dtensor": len(dt),
            "dtensor_global_numel": sum(p.numel() for _, p in dt),
            "dtensor_local_numel": sum(p.to_local().numel() for _, p in dt),
            "replicated": [n for n, p in params if not isinstance(p, DTensor)],
            "placements": sorted({str(tuple(p.placements)) for _, p in dt}),
            "example": [{"name": n, "global": list(p.shape), "local": list(p.to_local().shape)} for n, p in dt[:3]],
        }
        d = self.out / "sharding"
        d.mkdir(parents=True, exist_ok=True)
        (d / f"rank{self.rank}.json").write_text(json.dumps(report, indent=2) + "\n")

    def _optimizer(self) -> torch.optim.Optimizer:
        o = self.cfg.optim
        groups: dict[tuple[float, float], list] = {}
        for part, named in self.model.parameter_groups().items():
            lr = o.arr_coc_lr if part == "arr_coc" else o.lr
            for _, p in named:
                if p.requires_grad:
                    wd = o.weight_decay if p.dim() >= 2 and part != "arr_coc" else 0.0
                    groups.setdefault((lr, wd), []).append(p)
        if not groups:
            raise ValueError("no trainable parameters: every *_trainable flag of the model config is false")
        param_groups = [{"params": ps, "lr": lr, "weight_decay": wd} for (lr, wd), ps in sorted(groups.items())]
        return torch.optim.AdamW(param_groups, betas=tuple(o.betas), eps=o.eps,
                                 foreach=self.device.type == "cuda" or None)

    def _lr_lambda(self, step: int) -> float:
        o, total = self.cfg.optim, self.cfg.train.max_steps
        if step < o.warmup_steps:
            return (step + 1) / o.warmup_steps
        if o.schedule == "constant":
            return 1.0
        progress = (step - o.warmup_steps) / max(1, total - o.warmup_steps)
        return o.min_lr_ratio + (1 - o.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    def _dataset(self):
        from training.data import load_configured

        return load_configured(self.cfg.data, generate_here=self.rank == 0, barrier=self._barrier)

    # -- training -----------------------------------------------------------------------------------------------------
    def _loader(self) -> torch.utils.data.DataLoader:
        c = self.cfg
        sampler = _RankBatches(len(self.dataset), seed=c.train.seed, global_batch=c.train.batch_size, world=self.world,
                               rank=self.rank, accum=c.train.grad_accum, start_step=self.step,
                               max_steps=c.train.max_steps)
        self.steps_per_epoch = sampler.steps_per_epoch
        # Its own generator: iter(loader) draws the workers' base seed from it, not from the global CPU generator,
        # whose state a checkpoint restores; drawing from that one would shift every later global draw (Thompson
        # sampling, dropout) by one on resume, so a resumed run would not repeat the uninterrupted one.
        gen = torch.Generator().manual_seed(c.train.seed * 65537 + self.rank)
        return torch.utils.data.DataLoader(RowDataset(self.dataset), batch_sampler=sampler, collate_fn=self.collator,
                                           num_workers=c.data.num_workers, pin_memory=self.device.type == "cuda",
                                           persistent_workers=False, generator=gen)

    def _autocast(self):
        if self.amp_dtype is None or self.fsdp:  # FSDP2's MixedPrecisionPolicy casts instead
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def _micro_step(self, batch: dict[str, Any], n_target_global: float) -> dict[str, torch.Tensor]:
        """Forward + backward of one micro-batch; returns summed statistics (not yet reduced across ranks)."""
        labels = batch["labels"]
        budget = (self.model.arr_coc.budget_override(int(batch["budget"])) if "budget" in batch
                  else contextlib.nullcontext())
        with budget, self._autocast(), self._relevance_read(batch) as read, self._saliency_read() as sread:
            out = self.model(batch["pixel_values"], batch["input_ids"], batch["attention_mask"],
                             query_input_ids=batch["query_input_ids"],
                             query_attention_mask=batch["query_attention_mask"])
        logits = out.logits[:, :-1].float()  # (B, L-1, V) predicts token t+1
        target = labels[:, 1:]
        loss_sum = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1),
                                   ignore_index=IGNORE_INDEX, reduction="sum")
        # FSDP averages gradients over ranks, so scale by the world size to get the global token mean.
        total = loss_sum * (self.world / n_target_global)
        # Relevance and saliency distillation: a per-position signal, averaged per patch into the utility's teacher;
        # the loss is the mean over this micro-batch's rows. Rows weigh equally across ranks and micro-batches: this
        # rank's share of the global batch.
        share = len(labels) * self.world / self.cfg.train.batch_size

        def distil(per_position: torch.Tensor) -> torch.Tensor:
            from models.relevance import patch_relevance, relevance_loss

            a = out.arr_coc
            teacher = patch_relevance(per_position, batch["input_ids"] == self.model.image_token_id, a.patch_index,
                                      a.mask, a.utility.shape[1])
            return relevance_loss(a.utility, teacher)

        rel_sum = torch.zeros((), device=logits.device)
        if self.relevance_layer is not None:
            rel = distil(read["attention"])
            rel_sum = rel.detach() * len(labels)
            total = total + float(self.cfg.train.relevance_weight) * rel * share
        sal_sum = torch.zeros((), device=logits.device)
        if self.cfg.train.saliency_weight > 0:
            from models.relevance import gradient_saliency

            with self._unsharded_after_backward():
                (grad,) = torch.autograd.grad(loss_sum, sread["embeds"], retain_graph=True)
            sal = distil(gradient_saliency(grad, sread["embeds"]))
            sal_sum = sal.detach() * len(labels)
            total = total + float(self.cfg.train.saliency_weight) * sal * share
        grd_sum = grd_rows = torch.zeros((), device=logits.device)
        if self.cfg.train.grounding_weight > 0:
            from models.grounding import box_patch_mass, grounding_loss

            a = out.arr_coc
            mass = box_patch_mass(batch["target_box"].to(a.utility.device), self.model.arr_coc.patch_grid)
            grd, grd_rows = grounding_loss(a.utility, mass, batch["target_box_valid"])
            grd_sum = grd.detach()
            # Summed over rows, divided by the global batch: every row weighs equally across ranks and micro-batches.
            total = total + float(self.cfg.train.grounding_weight) * grd * (self.world / self.cfg.train.batch_size)
        total.backward()
        with torch.no_grad():
            valid = target != IGNORE_INDEX
            correct = ((logits.argmax(-1) == target) | ~valid).all(-1)  # (B,) answer exact match, teacher-forced
            self._bandit_feedback(correct.float(), out.alloc_context, out.arr_coc.budgets)
            budgets = out.arr_coc.budgets.float()  # (B, K)
        return {"loss_sum": loss_sum.detach(), "relevance_sum": rel_sum, "saliency_sum": sal_sum,
                "grounding_sum": grd_sum, "grounding_rows": grd_rows.detach(), "correct": correct.sum().float(),
                "rows": torch.tensor(float(len(correct))),
                "tokens": batch["attention_mask"].sum().float(), "budget_sum": budgets.mean(-1).sum(),
                "gini_sum": gini(budgets).sum().float()}

    def _relevance_layer(self) -> torch.nn.Module | None:
        """The LLM decoder layer whose attention relevance distillation reads (``None`` when it is off)."""
        if not self.cfg.train.relevance_weight > 0:
            return None
        from models.relevance import default_layer

        layers = self.model.language_model.layers
        n = len(layers)
        k = self.cfg.train.relevance_layer if self.cfg.train.relevance_layer is not None else default_layer(n)
        if not 1 <= k <= n:
            raise ValueError(f"train.relevance_layer={k} must be in 1..{n} (the LLM's layers)")
        return layers[k - 1]

    def _relevance_read(self, batch: dict[str, Any]):
        """With relevance distillation on: read :attr:`relevance_layer`'s attention from the last prompt position
        during the forward (:func:`models.relevance.read_attention`); otherwise a no-op context yielding ``{}``."""
        if self.relevance_layer is None:
            return contextlib.nullcontext({})
        from models.relevance import last_prompt_index, read_attention

        return read_attention(self.relevance_layer, last_prompt_index(batch["labels"], batch["attention_mask"]),
                              batch["attention_mask"])

    @contextlib.contextmanager
    def _unsharded_after_backward(self):
        """Under FSDP2, keep every module's parameters unsharded after the backward pass run inside (saliency
        distillation's gradient pass), so that the full backward that follows finds the tensors it saved; a no-op
        otherwise. Observed: torch 2.14 ran either way, but torch 2.11 (the GPU machine's stack) resharded after the
        first pass and the second failed on the LM head ("setStorage ... out of bounds for storage of size 0")."""
        if not self.fsdp:
            yield
            return
        self.model.set_reshard_after_backward(False, recurse=True)
        try:
            yield
        finally:
            self.model.set_reshard_after_backward(True, recurse=True)

    def _saliency_read(self):
        """With saliency distillation on: capture the LLM's ``inputs_embeds`` during the forward (a leaf that keeps
        its gradient where nothing upstream trains), for :meth:`_micro_step`'s gradient pass; else a no-op yielding
        ``{}``."""
        if not self.cfg.train.saliency_weight > 0:
            return contextlib.nullcontext({})
        return _capture_inputs_embeds(self.model.llava)

    def _bandit_feedback(self, rewards: torch.Tensor, context: torch.Tensor | None = None,
                         budgets: torch.Tensor | None = None) -> None:
        """Answer correctness → ``update`` of a ``bandit`` allocator (a no-op for every other allocator).

        One process: ``update(rewards)`` credits the allocator's last allocation. Several: the bandit's statistics
        are buffers, replicated on every rank, so every rank gathers all ranks' (rewards, contexts, budgets) and
        makes the same ``update(rewards, context=..., budgets=...)``; the replicas stay identical and learn from the
        whole global batch.
        """
        if not self.cfg.train.bandit_feedback:
            return
        alloc = self.model.arr_coc.attending
        update = getattr(alloc, "update", None)
        if getattr(alloc, "registry_name", "") != "bandit" or not callable(update):
            return
        rewards = rewards.to(self.device)
        if getattr(self, "world", 1) == 1 or context is None or budgets is None:
            update(rewards)
            return
        gathered = []
        for t in (rewards, context.contiguous(), budgets.contiguous()):
            parts = [torch.empty_like(t) for _ in range(self.world)]
            dist.all_gather(parts, t)
            gathered.append(torch.cat(parts))
        update(gathered[0], context=gathered[1], budgets=gathered[2])

    def train(self) -> list[dict[str, float]]:
        """Run from ``self.step`` to ``train.max_steps``; returns the logged rows of this call."""
        c = self.cfg
        from tqdm.auto import tqdm

        loader = iter(self._loader())
        csv_path = self.out / "log.csv"
        fields = ["step", "epoch", "loss", "accuracy", "lr", "grad_norm", "tokens_per_s", "samples_per_s",
                  "budget_mean", "budget_gini", "step_time_s", "peak_mem_gb", "relevance_loss", "grounding_loss",
                  "saliency_loss"]
        if self.rank == 0:
            self._truncate_log(csv_path, fields)
        bar = tqdm(total=c.train.max_steps, initial=self.step, disable=self.rank != 0, desc="train", dynamic_ncols=True)
        rows: list[dict[str, float]] = []
        self.model.train()
        params = [p for p in self.model.parameters() if p.requires_grad]
        t_start = time.perf_counter()
        while self.step < c.train.max_steps:
            t0 = time.perf_counter()
            micro = [move_to(next(loader), self.device, self.processor) for _ in range(c.train.grad_accum)]
            n_target = torch.tensor(float(sum(int((b["labels"][:, 1:] != IGNORE_INDEX).sum()) for b in micro)),
                                    device=self.device)
            n_target = float(_all_reduce(n_target).item())
            stats: dict[str, torch.Tensor] = {}
            for i, batch in enumerate(micro):
                if self.fsdp:
                    self.model.set_requires_gradient_sync(i == len(micro) - 1)
                s = self._micro_step(batch, n_target)
                for k, v in s.items():
                    stats[k] = stats.get(k, 0) + v.to(self.device)
            self._sync_replicated()
            grad_norm = self._clip(params)
            # optim.lr as scheduled this step (param group 0 is whichever (lr, decay) sorts first, so not always it).
            lr = self.cfg.optim.lr * self._lr_lambda(self.step)
            self.optimizer.step()
            self.scheduler.step()
            self.optimizer.zero_grad(set_to_none=True)
            self.step += 1
            keys = sorted(stats)
            red = _all_reduce(torch.stack([stats[k].float() for k in keys])).tolist()
            tot = dict(zip(keys, red))
            if self.device.type == "cuda":
                torch.cuda.synchronize()
            dt = time.perf_counter() - t0
            row = {"step": self.step, "epoch": (self.step - 1) // self.steps_per_epoch,
                   "loss": tot["loss_sum"] / n_target, "accuracy": tot["correct"] / tot["rows"], "lr": lr,
                   "grad_norm": grad_norm, "tokens_per_s": tot["tokens"] / dt, "samples_per_s": tot["rows"] / dt,
                   "budget_mean": tot["budget_sum"] / tot["rows"], "budget_gini": tot["gini_sum"] / tot["rows"],
                   "step_time_s": dt,
                   "peak_mem_gb": torch.cuda.max_memory_allocated() / 2**30 if self.device.type == "cuda" else 0.0,
                   "relevance_loss": tot["relevance_sum"] / tot["rows"],
                   "grounding_loss": tot["grounding_sum"] / max(tot["grounding_rows"], 1.0),
                   "saliency_loss": tot["saliency_sum"] / tot["rows"]}
            rows.append(row)
            if self.rank == 0 and (self.step % c.train.log_every == 0 or self.step == c.train.max_steps):
                with open(csv_path, "a", newline="") as f:
                    csv.DictWriter(f, fieldnames=fields).writerow(row)
                bar.set_postfix(loss=f"{row['loss']:.4f}", acc=f"{row['accuracy']:.3f}",
                                tok_s=f"{row['tokens_per_s']:.0f}")
            bar.update(1)
            every = c.train.save_every
            # A time-boxed call (e.g. one 10-minute device call) stops after a checkpoint; `--resume` continues it.
            # Every rank must agree, so the decision is all-reduced rather than read off each rank's own clock.
            out_of_time = False
            if c.train.max_minutes is not None:
                late = float(time.perf_counter() - t_start > 60 * c.train.max_minutes)
                late = torch.tensor(late, device=self.device)
                out_of_time = bool(_all_reduce(late).item() > 0)
            if (every and self.step % every == 0) or self.step == c.train.max_steps or out_of_time:
                self.save_checkpoint()
            if c.train.hang_after_step is not None and self.step == c.train.hang_after_step:
                self._hang()
            if out_of_time:
                if self.rank == 0:
                    bar.write(f"train.max_minutes={c.train.max_minutes} reached at step {self.step}: checkpointed; "
                              "continue with --resume")
                break
        bar.close()
        return rows

    def _sync_replicated(self) -> None:
        """Average the gradients of the parameters FSDP does not manage (ArrCoc) over ranks, as DDP would."""
        if not self.fsdp or self.world == 1:
            return
        grads = [p.grad for p in self.replicated if p.grad is not None]
        if grads:
            flat = torch.cat([g.reshape(-1) for g in grads])
            dist.all_reduce(flat)
            flat /= self.world
            offset = 0
            for g in grads:
                g.copy_(flat[offset:offset + g.numel()].view_as(g))
                offset += g.numel()

    def _clip(self, params: list[torch.nn.Parameter]) -> float:
        """Clip by the global gradient norm over sharded (DTensor) and replicated gradients; returns the norm."""
        from torch.distributed.tensor import DTensor

        # Parameters, not their gradients: clip_grads_with_norm_ scales each one's .grad, and handed the gradients
        # themselves (which have no .grad) it clipped nothing.
        with_grad = [p for p in params if p.grad is not None]
        sharded = [p for p in with_grad if isinstance(p.grad, DTensor)]
        plain = [p for p in with_grad if not isinstance(p.grad, DTensor)]
        sq = torch.zeros((), device=self.device)
        if sharded:
            n = torch.nn.utils.get_total_norm([p.grad for p in sharded])
            sq = sq + (n.full_tensor() if isinstance(n, DTensor) else n).float() ** 2
        if plain:
            sq = sq + torch.nn.utils.get_total_norm([p.grad for p in plain]).float() ** 2
        norm = sq.sqrt()
        max_norm = self.cfg.optim.grad_clip
        if max_norm:
            # Separate calls: foreach kernels refuse a mix of DTensor and plain tensors.
            for group in (sharded, plain):
                if group:
                    torch.nn.utils.clip_grads_with_norm_(group, max_norm, norm)
        return float(norm)

    def _truncate_log(self, path: Path, fields: list[str]) -> None:
        """Keep only rows up to the current step (a killed run may have logged past its last checkpoint)."""
        kept = []
        if path.is_file() and self.step > 0:
            with open(path, newline="") as f:
                kept = [r for r in csv.DictReader(f) if int(r["step"]) <= self.step]
        with open(path, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=fields)
            w.writeheader()
            w.writerows(kept)

    def _hang(self) -> None:
        """Test hook: announce (with this process's pid) that the checkpoint is on disk, then wait to be killed.

        Launchers start each rank in its own session, so a kill aimed at the launcher's process group misses the
        ranks; a rank whose launcher is gone (re-parented) therefore exits on its own instead of lingering.
        """
        parent = os.getppid()
        (self.out / f"hang_rank{self.rank}").write_text(json.dumps({"step": self.step, "pid": os.getpid()}))
        while os.getppid() == parent:
            time.sleep(0.2)
        os._exit(1)

    def save_checkpoint(self) -> Path:
        """Atomic checkpoint of the current step (collective)."""
        state = {"step": self.step, "epoch": self.step // max(1, getattr(self, "steps_per_epoch", 1)),
                 "rows_seen": self.step * self.cfg.train.batch_size, "world_size": self.world,
                 "seed": self.cfg.train.seed, "config": dataclass_to_dict(self.cfg)}
        return save_checkpoint(self.ckpt_dir, self.step, model=self.model, optimizer=self.optimizer,
                               scheduler=self.scheduler, trainer_state=state, processor=self.processor,
                               keep_last=self.cfg.train.keep_last)

    def cleanup(self, *, barrier: bool = True) -> None:
        """Tear down the process group this recipe created (``barrier=False`` after an error: peers may be gone)."""
        if self._own_pg and dist.is_initialized():
            if barrier:
                dist.barrier()
            dist.destroy_process_group()
            self._own_pg = False

    # -- helpers ------------------------------------------------------------------------------------------------------
    def _barrier(self) -> None:
        if dist.is_initialized():
            dist.barrier()

    def _log(self, msg: str) -> None:
        if self.rank == 0:
            print(f"[training.train] {msg}", file=sys.stderr, flush=True)


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m training.train", description=__doc__.split("\n\n")[0])
    p.add_argument("--config", help="training YAML (configs/train/*.yaml)")
    p.add_argument("--resume", nargs="?", const=True, default=False,
                   help="continue from the latest checkpoint in output_dir (or from the given checkpoint folder)")
    p.add_argument("overrides", nargs="*", help="key=value overrides, e.g. train.max_steps=100 model.arr_coc.budget=48")
    # `--resume key=value ...` (the configs' documented `[--resume] [key=value ...]`): argparse would take the first
    # override for the checkpoint path and refuse the rest; an override is never a checkpoint folder.
    args, rest = p.parse_known_args(argv)
    if isinstance(args.resume, str) and "=" in args.resume and not Path(args.resume).exists():
        rest.insert(0, args.resume)
        args.resume = True
    unknown = [a for a in rest if a.startswith("-")]
    if unknown:
        p.error(f"unrecognized arguments: {' '.join(unknown)}")
    args.overrides = [*args.overrides, *rest]
    return args


def main(argv: Sequence[str] | None = None) -> list[dict[str, float]]:
    """Entry point: parse, set up, train, clean up. Returns this process's logged rows."""
    args = _parse_args(argv)
    cfg = load_train_cfg(args.config, args.overrides)
    recipe = TrainRecipe(cfg, resume=args.resume)
    try:
        recipe.setup()
        rows = recipe.train()
    except BaseException:
        recipe.cleanup(barrier=False)
        raise
    recipe.cleanup()
    return rows


if __name__ == "__main__":
    # Die with the parent launcher rather than linger as an orphan holding the process group.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    main()
