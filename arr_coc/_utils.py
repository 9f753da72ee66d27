"""Small shared helpers: input validation with clear errors, the patch-grid layout, and a name → class registry.

Every public entry point validates its inputs here so that bad input fails loudly with a ``ValueError`` that names the
offending value, instead of being clamped or silently broadcast.
"""

from __future__ import annotations

import math
import operator
from typing import Callable, Generic, Sequence, TypeVar

import torch
from torch import Tensor

__all__: list[str] = []  # private module

_C = TypeVar("_C", bound=type)


def _check_tensor(name: str, t: object) -> Tensor:
    if not isinstance(t, Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    return t


def _check_finite(name: str, t: Tensor) -> None:
    """Raise ``ValueError`` if ``t`` holds NaN or inf, naming how many and where the first one is."""
    if t.is_floating_point() or t.is_complex():
        # Fast path: a finite sum means every element is finite (inf - inf and NaN propagate). Only an overflowing
        # or non-finite sum pays for the full elementwise scan.
        acc = torch.float32 if t.dtype in (torch.float16, torch.bfloat16) else None
        if t.numel() == 0 or bool(torch.isfinite(t.sum(dtype=acc))):
            return
        bad = ~torch.isfinite(t)
        if bool(bad.any()):  # the sum can also overflow with every element finite
            n_bad = int(bad.sum())
            first = tuple(int(i) for i in bad.nonzero()[0].tolist())
            val = t[first].item() if t.dim() else t.item()
            raise ValueError(f"{name} contains {n_bad} non-finite value(s); first at index {first}: {val}")


def _check_ndim(name: str, t: Tensor, ndim: int, layout: str) -> None:
    if t.dim() != ndim:
        raise ValueError(f"{name} must have {ndim} dims {layout}, got shape {tuple(t.shape)}")


def _check_same_device(**tensors: Tensor) -> None:
    devs = {k: v.device for k, v in tensors.items() if isinstance(v, Tensor)}
    if len(set(devs.values())) > 1:
        raise ValueError(f"tensors are on different devices: {devs}")


def _check_float(name: str, t: Tensor) -> None:
    if not t.is_floating_point():
        raise ValueError(f"{name} must be a floating-point tensor, got dtype {t.dtype}")


def default_patch_grid(num_patches: int) -> tuple[int, int]:
    """The most square ``(rows, cols)`` factorisation of ``num_patches`` with ``rows <= cols``.

    K=200 gives (10, 20), K=576 gives (24, 24), a prime K gives (1, K).
    """
    if num_patches < 1:
        raise ValueError(f"num_patches must be >= 1, got {num_patches}")
    rows = int(math.isqrt(num_patches))
    while num_patches % rows:
        rows -= 1
    return rows, num_patches // rows


def _check_int(name: str, v: object, minimum: int | None = None) -> int:
    """``v`` as an ``int``: an integer (not a bool) or an integral float; else ``ValueError`` naming the value."""
    if isinstance(v, float) and v.is_integer():
        out = int(v)
    else:
        try:
            if isinstance(v, bool):
                raise TypeError
            out = operator.index(v)
        except TypeError:
            raise ValueError(f"{name} must be an integer, got {type(v).__name__}: {v!r}") from None
    if minimum is not None and out < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {v!r}")
    return out


def _grid_pair(pair: Sequence[int], name: str = "patch_grid", axes: str = "(rows, cols)") -> tuple[int, int]:
    """``pair`` as two positive ints (a patch grid, a region or an image size); ``ValueError`` naming ``name`` or its
    offending entry (a float or a bool entry is refused, not truncated)."""
    if isinstance(pair, (str, bytes)) or not hasattr(pair, "__len__") or len(pair) != 2:
        raise ValueError(f"{name} must be two positive ints {axes}, got {pair!r}")
    first, second = (_check_int(f"{name} {tuple(pair)} entry", v, minimum=1) for v in pair)
    return first, second


def _check_patch_grid(patch_grid: Sequence[int] | None, num_patches: int) -> tuple[int, int]:
    if patch_grid is None:
        return default_patch_grid(num_patches)
    gh, gw = _grid_pair(patch_grid)
    if gh * gw != num_patches:
        raise ValueError(f"patch_grid {tuple(patch_grid)} does not multiply to num_patches={num_patches}")
    return gh, gw


class Registry(Generic[_C]):
    """A name → class registry filled by a class decorator (open_clip / timm style).

    Args:
        kind: What one entry is, for error messages (``"allocator"`` gives ``"unknown allocator 'x'; known
            allocators: a, b"``).
        attr: The class attribute :meth:`register` sets to the registered name (e.g. ``"registry_name"``).
    """

    def __init__(self, kind: str, attr: str) -> None:
        self.kind, self.attr = kind, attr
        self._classes: dict[str, _C] = {}

    def register(self, name: str) -> Callable[[_C], _C]:
        """Class decorator registering the class under ``name`` and setting ``cls.<attr> = name``.

        Registering the same class again is a no-op; a name already bound to another class raises ``ValueError``.
        """

        def deco(cls: _C) -> _C:
            old = self._classes.get(name)
            if old is not None and old is not cls:
                raise ValueError(f"{self.kind} {name!r} is already registered to {old.__name__}; "
                                 f"cannot register {cls.__name__}")
            self._classes[name] = cls
            setattr(cls, self.attr, name)
            return cls

        return deco

    def names(self) -> list[str]:
        """The registered names, sorted."""
        return sorted(self._classes)

    def get(self, name: str) -> _C:
        """The class registered under ``name``.

        Raises:
            ValueError: unknown ``name`` (the message lists the known ones).
        """
        if name not in self._classes:
            raise ValueError(f"unknown {self.kind} {name!r}; known {self.kind}s: {', '.join(self.names())}")
        return self._classes[name]

    def __contains__(self, name: object) -> bool:
        return name in self._classes
