"""Atomic, resumable training checkpoints for (FSDP2-sharded or plain) models.

Layout of ``<output_dir>/checkpoints/step_00000012/``:

- ``model.safetensors``: the full (unsharded) model weights, written by rank 0; loadable without torch.distributed
  (``safetensors.torch.load_file`` + :func:`models.vlm.load_state_dict_nonstrict`).
- ``dcp/``: ``torch.distributed.checkpoint`` of the sharded model and optimizer state (each rank writes its shards;
  loading reshards, so a run can resume on a different number of processes).
- ``scheduler.pt``, ``trainer_state.json`` (step, epoch, data position, world size, the resolved config).
- ``rng/rank{r}.pt``: Python, NumPy, torch CPU and CUDA generator states of every rank.
- ``processor/``: the tokenizer and processor settings, for inference from the checkpoint alone.

Atomicity: everything is written under ``.step_00000012.tmp`` and renamed once complete (``os.replace`` on one file
system is atomic), then ``latest`` (a one-line file, itself replaced atomically) points at it. A crash mid-write
leaves only a ``.tmp`` folder, which :func:`find_latest` ignores and the next save removes. A checkpoint being
deleted (one of the same step being replaced, or one pruned by ``keep_last``) is first renamed to such a name too.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

__all__ = ["atomic_write_text", "find_latest", "load_checkpoint", "load_model_weights", "resolve_checkpoint",
           "save_checkpoint"]

_PREFIX = "step_"


def _is_dist() -> bool:
    return dist.is_available() and dist.is_initialized()


def _rank() -> int:
    return dist.get_rank() if _is_dist() else 0


def _barrier() -> None:
    if _is_dist():
        dist.barrier()


@contextlib.contextmanager
def _quiet_single_process():
    """DCP warns that it assumes one process when no process group exists; that is intended here."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        yield


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically: a temporary sibling, then ``os.replace``."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _state_dicts(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_optimizer_state_dict

    return {"model": get_model_state_dict(model), "optim": get_optimizer_state_dict(model, optimizer)}


def save_checkpoint(root: str | os.PathLike[str], step: int, *, model: nn.Module, optimizer: torch.optim.Optimizer,
                    scheduler: Any, trainer_state: dict[str, Any], processor: Any = None, keep_last: int | None = None,
                    ) -> Path:
    """Write a checkpoint for ``step`` atomically; every rank must call it (collective). Returns the final path."""
    import torch.distributed.checkpoint as dcp
    from safetensors.torch import save_file
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    root = Path(root)
    final = root / f"{_PREFIX}{step:08d}"
    tmp = root / f".{_PREFIX}{step:08d}.tmp"
    if _rank() == 0:
        root.mkdir(parents=True, exist_ok=True)
        for stale in root.glob(f".{_PREFIX}*.tmp"):  # crashed writes, of this step or of any other
            shutil.rmtree(stale)
        (tmp / "rng").mkdir(parents=True)
    _barrier()

    # Sharded model + optimizer: each rank writes its own shards (collective planning inside).
    with _quiet_single_process():
        dcp.save(_state_dicts(model, optimizer), checkpoint_id=str(tmp / "dcp"))
    # Full weights as real safetensors (gathered to rank 0, on CPU).
    full = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    torch.save(_rng_state(), tmp / "rng" / f"rank{_rank()}.pt")
    if _rank() == 0:
        save_file({k: v.contiguous() for k, v in full.items()}, str(tmp / "model.safetensors"),
                  metadata={"format": "pt", "step": str(step)})
        torch.save(scheduler.state_dict() if scheduler is not None else {}, tmp / "scheduler.pt")
        (tmp / "trainer_state.json").write_text(json.dumps(trainer_state, indent=2, default=str) + "\n")
        if processor is not None:
            processor.save_pretrained(tmp / "processor")
    del full
    _barrier()
    if _rank() == 0:
        # A checkpoint of this step already there (a resume from an older one, or a rerun) is renamed out of the
        # way before it is deleted: removed in place, a kill mid-delete left a step folder that still looked
        # complete (trainer_state.json) with its shards gone, and `latest` pointed at it.
        old_final = root / f".{_PREFIX}{step:08d}.old.tmp"
        if final.exists():
            os.replace(final, old_final)
        os.replace(tmp, final)
        atomic_write_text(root / "latest", final.name + "\n")
        if old_final.exists():
            shutil.rmtree(old_final)
        if keep_last is not None and keep_last > 0:
            # Prune only this trajectory's past: checkpoints numbered at or below the one just written, never that
            # one. Higher-numbered folders (an earlier run in the same output_dir, or a resume from an older
            # checkpoint) are left alone: sorting them in would delete the checkpoint just written. Each is renamed
            # to a .tmp name first, so a kill mid-delete leaves a folder that no search counts and the next save
            # removes.
            done = sorted(p for p in root.glob(f"{_PREFIX}*") if p.is_dir() and p.name <= final.name)
            for old in done[:-keep_last]:
                doomed = root / f".{old.name}.old.tmp"
                os.replace(old, doomed)
                shutil.rmtree(doomed, ignore_errors=True)
    _barrier()
    return final


def find_latest(root: str | os.PathLike[str]) -> Path | None:
    """The newest complete checkpoint under ``root`` (``None`` if there is none); ``.tmp`` folders never count."""
    root = Path(root)
    pointer = root / "latest"
    if pointer.is_file():
        cand = root / pointer.read_text().strip()
        if (cand / "trainer_state.json").is_file():
            return cand
    done = sorted(p for p in root.glob(f"{_PREFIX}*") if (p / "trainer_state.json").is_file())
    return done[-1] if done else None


def resolve_checkpoint(path: str | os.PathLike[str]) -> Path:
    """A folder holding ``model.safetensors``: the given checkpoint, or the latest one of a run directory.

    Raises:
        ValueError: if ``path`` is neither.
    """
    p = Path(path)
    if (p / "model.safetensors").is_file():
        return p
    for root in (p / "checkpoints", p):
        latest = find_latest(root) if root.is_dir() else None
        if latest is not None and (latest / "model.safetensors").is_file():
            return latest
    raise ValueError(f"checkpoint={str(path)!r} holds no model.safetensors, nor a run with checkpoints/")


def load_model_weights(model: nn.Module, path: str | os.PathLike[str], *, skip: Sequence[str] = ()) -> Path:
    """Initialise ``model`` (unsharded) from another run's weights; returns the ``model.safetensors`` read.

    ``path`` is a training checkpoint folder, a run's output folder (its latest checkpoint) or an exported model
    folder (``scripts/export_model.py``; its bf16 weights are cast to the model's dtypes). Only weights are read:
    no optimizer state, schedule, step or RNG, which is what starting a new run (a fine-tune) from them means.
    Keys starting with a ``skip`` prefix keep the model's own values: the file's keys under them are not read, and
    the model's may be missing from it (e.g. ``("arr_coc.attending.",)`` to change the allocator).

    Raises:
        ValueError: if ``path`` holds no weights, they do not fit the model (missing, unexpected or mis-shaped keys,
            the first few named), or a ``skip`` prefix matches none of the model's keys (a typo would otherwise
            silently load nothing less).
    """
    from safetensors.torch import load_file

    from models.vlm import load_state_dict_nonstrict

    file = resolve_checkpoint(path) / "model.safetensors"
    state = load_file(str(file))
    own = model.state_dict()
    skip = tuple(skip)
    if skip:
        unused = [p for p in skip if not any(k.startswith(p) for k in own)]
        if unused:
            raise ValueError(f"init skip prefixes {unused} match no key of the model (its keys start e.g. "
                             f"{sorted({k.split('.')[0] for k in own})})")
        state = {k: v for k, v in state.items() if not k.startswith(skip)}
        state.update({k: v for k, v in own.items() if k.startswith(skip)})  # the model's fresh values, unchanged
    shapes = [f"{k}: {tuple(v.shape)} vs the model's {tuple(own[k].shape)}" for k, v in state.items()
              if k in own and v.shape != own[k].shape]
    if shapes:
        raise ValueError(f"weights in {str(file)!r} do not fit the model (another size or preset?): {shapes[:4]} "
                         f"({len(shapes)} mis-shaped)")
    try:
        load_state_dict_nonstrict(model, state)
    except ValueError as e:
        raise ValueError(f"weights in {str(file)!r}: {e}") from None
    return file


def load_checkpoint(path: str | os.PathLike[str], *, model: nn.Module, optimizer: torch.optim.Optimizer,
                    scheduler: Any = None, restore_rng: bool = True) -> dict[str, Any]:
    """Restore model, optimizer, scheduler and this rank's RNG from ``path``; returns ``trainer_state``.

    Collective on every rank. RNG states are restored only when the checkpoint has one for this rank (same or larger
    world size); otherwise the caller's seeding stands.

    Raises:
        ValueError: if ``path`` is not a complete checkpoint.
    """
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint import DefaultLoadPlanner
    from torch.distributed.checkpoint.state_dict import set_model_state_dict, set_optimizer_state_dict

    path = Path(path)
    if not (path / "trainer_state.json").is_file() or not (path / "dcp").is_dir():
        raise ValueError(f"{str(path)!r} is not a complete checkpoint (no trainer_state.json or dcp/)")
    state = _state_dicts(model, optimizer)
    with _quiet_single_process():
        dcp.load({"model": state["model"]}, checkpoint_id=str(path / "dcp"))  # strict: every weight must be there
        # Partial for the optimizer: a parameter that never received a gradient (e.g. an unused ArrCoc tension) has
        # no Adam state in the checkpoint, while the freshly initialised optimizer has a zero one; AdamW skips such a
        # parameter either way, so keeping the zero state is exact.
        dcp.load({"optim": state["optim"]}, checkpoint_id=str(path / "dcp"),
                 planner=DefaultLoadPlanner(allow_partial_load=True))
    set_model_state_dict(model, state["model"])
    set_optimizer_state_dict(model, optimizer, state["optim"])
    if scheduler is not None:
        scheduler.load_state_dict(torch.load(path / "scheduler.pt", weights_only=False))
    rng = path / "rng" / f"rank{_rank()}.pt"
    if restore_rng and rng.is_file():
        _set_rng_state(torch.load(rng, weights_only=False))
    return json.loads((path / "trainer_state.json").read_text())
