"""``ArrCocCfg``, named presets and :func:`build_arr_coc`: the only place configs meet constructors.

Constructors take scalars (so modules can be built on the meta device); configs are for builders and YAML. Unknown
keys are rejected with the list of known ones, never ignored.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any, Iterable

from arr_coc._utils import _check_int, _check_patch_grid
from arr_coc.pipeline import ArrCoc

__all__ = ["ArrCocCfg", "PRESETS", "build_arr_coc", "cfg_from_dict", "apply_overrides", "parse_override",
           "parse_override_value"]


@dataclass
class ArrCocCfg:
    """Configuration of one ArrCoc layer; defaults are the ARR-COC-0-1 preset."""

    dim: int = 1024  # feature width D of the vision tower's patch tokens
    query_dim: int = 1024  # width of the query embedding
    num_patches: int = 200  # K patches per image
    budget: int = 13200  # exact visual tokens per image
    min_tokens: int = 64  # fewest tokens per patch
    max_tokens: int = 400  # most tokens per patch
    allocator: str = "projection"  # registered allocator name
    allocator_kwargs: dict = field(default_factory=dict)  # extra allocator arguments (e.g. levels, mode)
    patch_grid: list | None = None  # (Gh, Gw) patch layout; None = most square factorisation of K
    attn_dim: int = 64  # participatory projection width
    num_prototypes: int = 16  # feature-entropy codebook size
    hist_bins: int = 32  # pixel-entropy histogram bins
    straight_through: bool = True  # gradients through the allocator's relaxation
    identity_init: bool = False  # participatory projections start as identities (query_dim == dim)


PRESETS: dict[str, ArrCocCfg] = {
    # The design card's preset: 200 patches, 13,200 tokens, 64..400 per patch (only 400 tokens are free).
    "arr-coc-0-1": ArrCocCfg(),
    # LLaVA-1.5-sized: 576 tokens over a 6x6 grid of 4x4-token patches, 4..64 per patch.
    "llava-576": ArrCocCfg(num_patches=36, budget=576, min_tokens=4, max_tokens=64),
}


def cfg_from_dict(d: dict[str, Any], base: ArrCocCfg | None = None) -> ArrCocCfg:
    """Build a config from a dict, rejecting unknown keys (named, with the known ones listed) and values of the wrong
    type (named)."""
    known = {f.name for f in fields(ArrCocCfg)}
    unknown = sorted(set(d) - known)
    if unknown:
        raise ValueError(f"unknown ArrCocCfg key(s) {unknown}; known keys: {sorted(known)}")
    # Deep-copy so that the result never shares a mutable field (allocator_kwargs, patch_grid) with base/PRESETS.
    return _check_cfg(dataclasses.replace(copy.deepcopy(base or ArrCocCfg()), **d))


_INT_FIELDS = ("dim", "query_dim", "num_patches", "budget", "min_tokens", "max_tokens", "attn_dim", "num_prototypes",
               "hist_bins")


def _check_cfg(cfg: ArrCocCfg) -> ArrCocCfg:
    """Raise ``ValueError`` naming the field and value when a field has the wrong type (a YAML ``no`` or ``"64"``
    would otherwise be truthy or fail deep inside a constructor with a ``TypeError``)."""
    for name in _INT_FIELDS:
        _check_int(name, getattr(cfg, name))
    for name in ("straight_through", "identity_init"):
        v = getattr(cfg, name)
        if not isinstance(v, bool):
            raise ValueError(f"{name} must be true or false, got {type(v).__name__}: {v!r}")
    if not isinstance(cfg.allocator, str):
        raise ValueError(f"allocator must be a registered allocator name, got {type(cfg.allocator).__name__}: "
                         f"{cfg.allocator!r}")
    if not isinstance(cfg.allocator_kwargs, Mapping):
        raise ValueError(f"allocator_kwargs must be a mapping, got {type(cfg.allocator_kwargs).__name__}: "
                         f"{cfg.allocator_kwargs!r}")
    if cfg.patch_grid is not None:
        _check_patch_grid(cfg.patch_grid, _check_int("num_patches", cfg.num_patches))
    return cfg


def parse_override_value(text: str) -> Any:
    """Parse the value of a ``key=value`` override as YAML-ish scalars: int, float, bool, null, list, or str."""
    import json

    low = text.strip()
    if low in ("true", "True"):
        return True
    if low in ("false", "False"):
        return False
    if low in ("null", "None", "none"):
        return None
    try:
        return json.loads(low)
    except json.JSONDecodeError as e:
        # A bracketed value is meant as a list or dict: a typo there must not silently become a string.
        if low[:1] in ("[", "{"):
            raise ValueError(f"malformed list/dict override value {text!r}: {e}") from None
        return low


def parse_override(item: str) -> tuple[str, Any]:
    """Split one ``key=value`` override into its stripped key and parsed value (:func:`parse_override_value`).

    Raises:
        ValueError: an item without ``=`` or with an empty key.
    """
    key, sep, value = item.partition("=")
    if not sep or not key.strip():
        raise ValueError(f"override {item!r} is not of the form key=value")
    return key.strip(), parse_override_value(value)


def apply_overrides(cfg: ArrCocCfg, overrides: Iterable[str]) -> ArrCocCfg:
    """Apply ``key=value`` strings; unknown keys and malformed items raise ``ValueError``."""
    return cfg_from_dict(dict(parse_override(item) for item in overrides), base=cfg)


def build_arr_coc(cfg: ArrCocCfg | str, *, device=None, dtype=None) -> ArrCoc:
    """Build an :class:`ArrCoc` from a config or a preset name."""
    if isinstance(cfg, str):
        if cfg not in PRESETS:
            raise ValueError(f"unknown preset {cfg!r}; known presets: {sorted(PRESETS)}")
        cfg = PRESETS[cfg]
    _check_cfg(cfg)
    return ArrCoc(cfg.dim, cfg.query_dim, num_patches=cfg.num_patches, budget=cfg.budget, min_tokens=cfg.min_tokens,
                  max_tokens=cfg.max_tokens, allocator=cfg.allocator, allocator_kwargs=dict(cfg.allocator_kwargs),
                  patch_grid=cfg.patch_grid, attn_dim=cfg.attn_dim, num_prototypes=cfg.num_prototypes,
                  hist_bins=cfg.hist_bins, straight_through=cfg.straight_through, identity_init=cfg.identity_init,
                  device=device, dtype=dtype)
