"""Safetensors persistence for bandit state: tensors plus a JSON config in the file's string metadata, never pickle.

``safetensors`` is imported lazily inside the two functions so that ``arr_coc`` keeps importing with only torch, numpy
and scipy installed.
"""

from __future__ import annotations

import json
import os
from typing import Any

import torch
from torch import Tensor

__all__: list[str] = []  # private module

_META_KEY = "arr_coc_bandit"


def _save_tensors(path: str | os.PathLike, tensors: dict[str, Tensor], config: dict[str, Any]) -> None:
    """Write ``tensors`` and a JSON ``config`` to a safetensors file.

    Tensors are moved to CPU and made contiguous; safetensors refuses aliased storage, so each one is cloned.
    """
    try:
        from safetensors.torch import save_file
    except ImportError as e:  # pragma: no cover - exercised only without the optional dependency
        raise ImportError("saving bandit state needs `safetensors` (pip install safetensors)") from e
    flat = {k: v.detach().to("cpu").contiguous().clone() for k, v in tensors.items()}
    save_file(flat, os.fspath(path), metadata={_META_KEY: json.dumps(config, sort_keys=True)})


def _load_tensors(path: str | os.PathLike, device: torch.device | str | None = None) -> tuple[dict[str, Tensor], dict]:
    """Read a file written by :func:`_save_tensors`; returns ``(tensors, config)``."""
    try:
        from safetensors import safe_open
    except ImportError as e:  # pragma: no cover
        raise ImportError("loading bandit state needs `safetensors` (pip install safetensors)") from e
    tensors: dict[str, Tensor] = {}
    with safe_open(os.fspath(path), framework="pt", device="cpu") as f:
        meta = f.metadata() or {}
        for k in f.keys():
            tensors[k] = f.get_tensor(k)
    if _META_KEY not in meta:
        raise ValueError(f"{os.fspath(path)!r} is not an arr_coc bandit file (metadata key {_META_KEY!r} missing)")
    if device is not None:
        tensors = {k: v.to(device) for k, v in tensors.items()}
    return tensors, json.loads(meta[_META_KEY])
