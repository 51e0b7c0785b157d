"""Argument converters shared by the package: Python scalars checked and normalised for the C API.

Bools are rejected wherever a number is expected; messages name the argument.
"""

from __future__ import annotations

import numbers
import operator
from typing import Any

import numpy as np

INT32_MAX = 2**31 - 1
INT64_MAX = 2**63 - 1


def integer(value: Any, name: str) -> int:
    """``value`` as a Python int (bools rejected)."""
    if isinstance(value, bool):
        raise TypeError(f"{name} must be an integer, got a bool")
    try:
        return operator.index(value)
    except TypeError:
        raise TypeError(f"{name} must be an integer, got {type(value).__name__}") from None


def ranged(value: Any, name: str, low: int, high: int) -> int:
    """``value`` as a Python int in ``[low, high]`` (``ValueError`` outside)."""
    number = integer(value, name)
    if not low <= number <= high:
        raise ValueError(f"{name} ({number}) must be in [{low}, {high}]")
    return number


def int32(value: Any, name: str) -> int:
    """``value`` as a Python int in the int32 range (the C argument type).

    Raises:
        TypeError: not an integer (bools are rejected too).
        ValueError: outside the int32 range.
    """
    number = integer(value, name)
    if not -INT32_MAX - 1 <= number <= INT32_MAX:
        raise ValueError(f"{name} ({number}) is outside the int32 range")
    return number


def _is_real(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def real(value: Any, name: str) -> float:
    """``value`` as a Python float (bools rejected); range checks are the library's."""
    if not _is_real(value):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    return float(value)


def optional_real(value: Any, name: str) -> float | None:
    """``value`` as a Python float, or None for None (bools rejected)."""
    if value is None:
        return None
    if not _is_real(value):
        raise TypeError(f"{name} must be a real number or None, got {type(value).__name__}")
    return float(value)


def sparsity(value: Any, name: str) -> float:
    """``value`` as a Python float in [0, 1)."""
    value = real(value, name)
    if not (0.0 <= value < 1.0):
        raise ValueError(f"{name} ({value}) must be in [0, 1)")
    return value


def flag(value: Any, name: str) -> bool:
    """``value`` (a Python or numpy bool) as a Python bool; anything else raises ``TypeError``."""
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be True or False, got {value!r}")
    return bool(value)
