"""A trained ``ArrCocLlava`` as one self-contained folder: config, weights (safetensors) and processor settings.

    from models.pretrained import load_pretrained, save_pretrained
    save_pretrained(model, processor, model_cfg, "weights/arr_coc_bench", dtype=torch.bfloat16)
    model, processor = load_pretrained("weights/arr_coc_bench")       # float32 compute on CPU by default

Why: a training checkpoint (``training/checkpoint.py``) carries optimizer state, RNG streams and a DCP copy of the
model; an inference user (the README's demo, an evaluation on another machine) needs only the weights and how to
build the model around them. The folder holds

- ``config.json``: ``{"format": "arr_coc_pretrained", "version": 1, "model": <ModelCfg as a dict>, "dtype": ...}``;
- ``model.safetensors``: the state dict, optionally cast (bf16 halves the size; the ``bench`` model is about 23 MiB);
- ``processor/``: the tokenizer and the processor's settings.

Scope: models built from configs alone (``llm.name_or_path: null``; open_clip towers from a registered config), such
as the ``tiny`` and ``bench`` presets. The weights replace any ``pretrained`` tags, which are cleared in the saved
config, so loading never downloads. A model built on a hub LLaVA checkpoint is saved with that checkpoint's own
``save_pretrained`` instead; :func:`save_pretrained` says so rather than write a folder that would need the hub.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

from models.builders import _DTYPES

__all__ = ["FORMAT", "load_pretrained", "save_pretrained"]

FORMAT = "arr_coc_pretrained"
VERSION = 1
_PROCESSOR_FILES = ("arr_coc_processor.json", "tokenizer_config.json")  # written by every save_pretrained


def _dtype_name(dtype: torch.dtype | str | None) -> str | None:
    if dtype is None:
        return None
    name = dtype if isinstance(dtype, str) else str(dtype).removeprefix("torch.")
    if name not in _DTYPES:
        raise ValueError(f"dtype must be one of {sorted(_DTYPES)} or None, got {dtype!r}")
    return name


def save_pretrained(model: nn.Module, processor: Any, model_cfg: Mapping[str, Any], directory: str | os.PathLike[str],
                    *, dtype: torch.dtype | str | None = None, metadata: Mapping[str, Any] | None = None) -> Path:
    """Write ``model`` (its full state dict, floating tensors cast to ``dtype``), its config and processor.

    The folder is written under a temporary name and renamed when complete, so a crash never leaves a folder that
    looks loadable. An existing ``directory`` is replaced.

    Args:
        model: The ``ArrCocLlava`` (plain, not FSDP-sharded).
        processor: Its ``ArrCocProcessor``.
        model_cfg: The ``ModelCfg`` dict it was built from (see ``models.builders.dataclass_to_dict``).
        directory: Destination folder.
        dtype: Cast floating tensors to this dtype (``None``: keep each tensor's own). Integer buffers (a bandit's
            counts) are never cast.
        metadata: Extra JSON-serialisable facts for ``config.json`` (where the weights came from, the step, ...).

    Raises:
        ValueError: for a model built on a hub checkpoint (``llm.name_or_path`` set) or a bad ``dtype``.
    """
    from safetensors.torch import save_file

    from models.builders import dataclass_to_dict, load_model_cfg

    cfg = dataclass_to_dict(load_model_cfg(dict(model_cfg)))  # validates the keys
    if cfg["llm"].get("name_or_path"):
        raise ValueError(f"llm.name_or_path={cfg['llm']['name_or_path']!r}: this format holds models built from "
                         "configs alone; a model built on a checkpoint is saved as a training checkpoint "
                         "(training.checkpoint) or as its full state_dict (safetensors.torch.save_model); "
                         "model.llava.save_pretrained would leave out ArrCoc, the position tables and the vision "
                         "tower")
    if cfg["vision"].get("backend") in ("hf_clip", "hf_siglip") and cfg["vision"].get("pretrained"):
        raise ValueError(f"vision.model_name={cfg['vision']['model_name']!r} is loaded from the hub; save a model "
                         "whose vision tower is built from hf_config instead")
    cfg["vision"]["pretrained"] = None  # the weights below replace any pretrained tag: loading never downloads
    cfg["query"]["pretrained"] = None
    name = _dtype_name(dtype)
    state, seen = {}, set()
    for k, v in model.state_dict().items():
        v = v.detach().to("cpu")
        # float64 tensors keep their precision: they are statistics (the bandit allocator's ridge Gram matrix and
        # response sums, from which A^-1 and theta are recomputed on load), which rounding to bf16 would corrupt.
        if name is not None and v.is_floating_point() and v.dtype != torch.float64:
            v = v.to(_DTYPES[name])
        v = v.contiguous()
        # Tied weights (tie_word_embeddings: lm_head and embed_tokens) share storage, which safetensors refuses:
        # each key gets its own copy, and loading writes the same values into the tied pair.
        if v.numel() and v.untyped_storage().data_ptr() in seen:
            v = v.clone()
        seen.add(v.untyped_storage().data_ptr())
        state[k] = v
    out = Path(directory)
    tmp = out.with_name(f".{out.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_file(state, str(tmp / "model.safetensors"), metadata={"format": FORMAT})
    processor.save_pretrained(tmp / "processor")
    info = {"format": FORMAT, "version": VERSION, "model": cfg, "dtype": name, "metadata": dict(metadata or {})}
    (tmp / "config.json").write_text(json.dumps(info, indent=2, default=str) + "\n")
    if out.exists():
        shutil.rmtree(out)
    os.replace(tmp, out)
    return out


def load_pretrained(directory: str | os.PathLike[str], *, device: str | torch.device = "cpu",
                    compute_dtype: torch.dtype | str | None = "float32",
                    model_overrides: Mapping[str, Any] | None = None):
    """``(model, processor)`` from a :func:`save_pretrained` folder, in eval mode on ``device``.

    Args:
        directory: The folder.
        device: Where to put the model.
        compute_dtype: The model's parameter dtype after loading (default float32, which CPUs run fastest; the
            saved bf16 values are exactly representable). ``None``: the config's ``llm.dtype``.
        model_overrides: Merged over the saved model config before building (e.g. another allocator setting for
            evaluation); the weights must still fit.

    Raises:
        ValueError: if the folder is missing, not this format, or its weights do not fit the model it describes.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from models.builders import build_for_checkpoint, deep_merge
    from models.processing import ArrCocProcessor

    d = Path(directory)
    if not (d / "config.json").is_file() or not (d / "model.safetensors").is_file():
        lacks = [f for f in ("config.json", "model.safetensors") if not (d / f).is_file()]
        raise ValueError(f"{str(d)!r} is not a pretrained ARR-COC folder (needs config.json and model.safetensors; "
                         f"{' and '.join(lacks)} missing; write one with scripts/export_model.py)")
    # A folder copied without processor/ failed after building the model with a FileNotFoundError (or, without the
    # tokenizer, transformers' "Couldn't instantiate the backend tokenizer") that did not say which file was missing.
    lacks = [f"processor/{f}" for f in _PROCESSOR_FILES if not (d / "processor" / f).is_file()]
    if lacks:
        raise ValueError(f"{str(d)!r}: {', '.join(lacks)} missing (save_pretrained writes the processor's settings "
                         "and tokenizer there)")
    where = str(d / "config.json")
    try:
        info = json.loads((d / "config.json").read_text())
    except ValueError as e:  # a truncated or hand-edited file: json's message names no file
        raise ValueError(f"{where!r} is not valid JSON: {e}") from e
    if not isinstance(info, dict):
        raise ValueError(f"{where!r} must hold a JSON object, got {type(info).__name__}")
    if info.get("format") != FORMAT:
        raise ValueError(f"{where!r} has format {info.get('format')!r}, expected {FORMAT!r}")
    # An integer; a version such as 1.5 (read as 1 by int()) or "abc"/null (a bare int() error) is refused by name.
    version = info.get("version", 0)
    if isinstance(version, str) and version.isdigit():
        version = int(version)
    if isinstance(version, bool) or not isinstance(version, int):
        raise ValueError(f"{where!r} has format version {version!r}; expected an integer up to {VERSION}")
    if version > VERSION:
        raise ValueError(f"{str(d)!r} has format version {info['version']}; this code reads up to {VERSION}")
    if not isinstance(info.get("model"), dict):
        raise ValueError(f"{where!r} holds no model config (a 'model' object), got {info.get('model')!r}")
    cfg = deep_merge(info["model"], model_overrides or {})
    if compute_dtype is not None:
        cfg = {**cfg, "llm": {**cfg["llm"], "dtype": _dtype_name(compute_dtype)}}
    model, built = build_for_checkpoint(cfg)  # its weights are loaded next
    try:
        state = load_file(str(d / "model.safetensors"))
    except (SafetensorError, OSError) as e:  # SafetensorError is no ValueError and names no file
        raise ValueError(f"{str(d / 'model.safetensors')!r} is not a readable safetensors file (truncated or "
                         f"corrupt? export it again): {e}") from e
    own = model.state_dict()
    shapes = [f"{k}: {tuple(v.shape)} vs the model's {tuple(own[k].shape)}" for k, v in state.items()
              if k in own and v.shape != own[k].shape]
    if shapes:  # load_state_dict would raise a RuntimeError for these
        raise ValueError(f"{str(d)!r}: weights do not fit the model in its config.json (with model_overrides): "
                         f"{shapes[:4]} ({len(shapes)} mis-shaped)")
    result = model.load_state_dict(state, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise ValueError(f"{str(d)!r}: weights do not fit the model in its config.json: missing "
                         f"{result.missing_keys[:8]}, unexpected {result.unexpected_keys[:8]}")
    try:
        processor = ArrCocProcessor.from_pretrained(d / "processor", query_tokenizer=built.query_tokenizer)
    except (OSError, ValueError) as e:  # a tokenizer file missing or unreadable: transformers names neither
        raise ValueError(f"{str(d / 'processor')!r}: the processor (tokenizer) does not load: {e}") from e
    # The saved processor matches the saved model; model_overrides (another budget or image size) must reach it too.
    processor.budget = int(model.budget)
    processor.image_size = tuple(model.vision.image_size)
    return model.to(device).eval(), processor
