"""Old spellings of public arguments that keep working with a ``DeprecationWarning`` naming the new one."""

from __future__ import annotations

import warnings
from typing import Any


def deprecated(old: str, new: str) -> None:
    """Warn that the spelling ``old`` is deprecated in favour of ``new`` (attributed to the caller's caller)."""
    warnings.warn(f"{old} is deprecated; use {new}", DeprecationWarning, stacklevel=3)


def renamed(where: str, old: str, old_value: Any, new: str, new_value: Any, default: Any, note: str = "") -> Any:
    """The value of an argument of ``where`` renamed from ``old`` to ``new``.

    Returns ``new_value`` when the old spelling was not used (``old_value`` is None); otherwise warns
    that ``old=`` is deprecated, naming ``new=`` (and ``note``), and returns ``old_value``.

    Raises:
        TypeError: both spellings given (``new_value`` differs from its ``default``).
    """
    if old_value is None:
        return new_value
    if new_value != default:
        raise TypeError(f"{where}: give {new}= only ({old}= is its deprecated spelling)")
    warnings.warn(f"{where}({old}=...) is deprecated; use {new}=...{note}", DeprecationWarning, stacklevel=3)
    return old_value
