"""Validation of scalar constructor arguments, shared by every module in :mod:`arr_coc.bandits`.

Each checker raises ``ValueError`` naming the argument and the offending value. ``bool`` is rejected everywhere even
though it subclasses ``int`` (``LinTS(3, 4, n_mc=True)`` is a mistake, not a request for one draw), and non-numeric
values (strings, ``None``, tensors) get the same ``ValueError`` instead of a ``TypeError`` from a comparison.
"""

from __future__ import annotations

import math
import numbers

__all__: list[str] = []


def _is_int(value: object) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_real(value: object) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _check_int(name: str, value: object, *, min_value: int = 1) -> int:
    """An integer (numpy integers included, ``bool`` excluded) ``>= min_value``; returns it as ``int``."""
    if not (_is_int(value) and int(value) >= min_value):
        raise ValueError(f"{name} must be an int >= {min_value}, got {value!r}")
    return int(value)


def _check_real(name: str, value: object, *, low: float | None = None, high: float | None = None,
                low_open: bool = False, high_open: bool = False) -> float:
    """A finite real number (``bool`` excluded) in the interval given by ``low`` / ``high``; returns it as ``float``.

    ``low_open`` / ``high_open`` make the bound strict. With neither bound the value only has to be finite.
    """
    ok = _is_real(value) and math.isfinite(float(value))
    if ok and low is not None:
        ok = float(value) > low if low_open else float(value) >= low
    if ok and high is not None:
        ok = float(value) < high if high_open else float(value) <= high
    if not ok:
        if low is not None and high is not None:
            what = f"in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
        elif low is not None:
            what = f"{'>' if low_open else '>='} {low:g}"
        elif high is not None:
            what = f"{'<' if high_open else '<='} {high:g}"
        else:
            what = ""
        raise ValueError(f"{name} must be a finite number{' ' + what if what else ''}, got {value!r}")
    return float(value)


def _check_positive(name: str, value: object, *, allow_zero: bool = False) -> float:
    """A finite real number ``> 0`` (``>= 0`` with ``allow_zero``); returns it as ``float``."""
    return _check_real(name, value, low=0.0, low_open=not allow_zero)


def _check_seed(name: str, value: object) -> int | None:
    """``None`` or an integer ``>= 0`` (a numpy / torch seed)."""
    return None if value is None else _check_int(name, value, min_value=0)
