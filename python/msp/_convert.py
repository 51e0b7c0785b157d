"""Scalar converters shared by the package: Python scalars checked and normalised for the C API.

Bools are rejected wherever a number is expected; messages name the argument. Array and buffer
arguments go through ``msp._arrays`` instead.
"""

from __future__ import annotations

import numbers
import operator
from typing import Any

import numpy as np

from ._lib import SCOPE_LAYER, SCOPE_ROW
from .errors import InvalidArgumentError

INT32_MAX = 2**31 - 1
INT64_MAX = 2**63 - 1
UINT64_MAX = 2**64 - 1

_C_RANGES = {"int32": (-INT32_MAX - 1, INT32_MAX), "int64": (-INT64_MAX - 1, INT64_MAX), "uint64": (0, UINT64_MAX)}


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


def c_integer(value: Any, name: str, ctype: str = "int32") -> int:
    """``value`` as a Python int that fits the C argument type ``ctype`` ("int32", "int64" or
    "uint64"): the one converter for integers handed to the library.

    Raises:
        TypeError: not an integer (bools are rejected too).
        msp.InvalidArgumentError: outside the range of ``ctype`` (a ``ValueError``).
    """
    low, high = _C_RANGES[ctype]
    number = integer(value, name)
    if not low <= number <= high:
        raise InvalidArgumentError(f"{name} ({number}) is outside the {ctype} range [{low}, {high}]")
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


def scope(value: Any) -> int:
    """The ``MSP_SCOPE_*`` code of a top-k comparison group: ``"row"`` or ``"layer"``."""
    codes = {"row": SCOPE_ROW, "layer": SCOPE_LAYER}
    if not isinstance(value, str) or value not in codes:
        raise ValueError(f'scope must be "row" or "layer", got {value!r}')
    return codes[value]


def nm_text(text: str, what: str, example: str) -> tuple[int, int]:
    """``(n, m)`` of the text ``"n:m"`` (spaces allowed around the numbers); ranges are the caller's.

    Raises:
        ValueError: anything but two non-negative integers separated by one colon.
    """
    parts = text.split(":")
    if len(parts) != 2 or not all(p.strip().isdigit() for p in parts):
        raise ValueError(f'{what} {text!r} is not of the form "n:m", e.g. "{example}"')
    return int(parts[0]), int(parts[1])
