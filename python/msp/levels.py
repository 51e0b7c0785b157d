"""Level sets: the allowed sparsity choices for a layer, ordered from least to most sparse.

A :class:`Level` is either an N:M pattern (keep ``n`` of every ``m`` consecutive weights along a
row; ``n == m`` is dense) or an unstructured sparsity (``n = m = 0``). A level set is a list of
levels with strictly increasing sparsity; index 0 is the least sparse level, and plans store
indices into it::

    msp.nm_levels(m=8)                 # [8:8, 7:8, ..., 1:8]   (dense first, 0 % .. 87.5 %)
    msp.nm_levels(m=8, min_n=2)        # [8:8, ..., 2:8]
    msp.ratio_levels([0.7, 0.5, 0.6])  # [50%, 60%, 70%]       (sorted for you)

Anywhere a level set is taken (``msp.plan``, ``msp.Search``, ``msp.cost_table``, plans applied by
``msp.torch``), its items may be written in any form :meth:`Level.parse` takes: ``"2:8"``,
``(2, 8)``, ``"70%"``, ``0.7``, ``(sparsity, n, m)`` or an object with ``.sparsity``, ``.n`` and
``.m`` (such as ``msp.Level`` itself).
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass
from typing import Any, Iterable

from ._convert import integer, nm_text, sparsity as _sparsity
from ._lib import LIMITS
from .errors import InvalidArgumentError

__all__ = ["Level", "nm_levels", "ratio_levels"]

MAX_M = LIMITS.max_m
"""The largest N:M group size the library supports."""

MAX_LEVELS = LIMITS.max_levels
"""The most levels a level set may hold."""


def _check_pattern(n: int, m: int, alternative: str = "") -> None:
    """Raise ``msp.InvalidArgumentError`` unless ``0 < n <= m <= MAX_M``."""
    if not (0 < n <= m <= MAX_M):
        raise InvalidArgumentError(f"level {n}:{m} must have 0 < n <= m <= {MAX_M}{alternative}")


@dataclass(frozen=True)
class Level:
    """One allowed choice for a layer.

    Attributes:
        sparsity: fraction of weights pruned, in [0, 1).
        n: weights kept in every group of ``m`` (N:M level), or 0 for an unstructured level.
        m: the N:M group size (at most 32), or 0 for an unstructured level.

    ``str(level)`` is ``"2:8"`` for an N:M level and ``"70%"`` for an unstructured one.
    Build levels with :meth:`nm`, :meth:`ratio` or :meth:`parse` rather than by hand; the
    constructor checks that ``sparsity == 1 - n/m`` for an N:M level.
    """

    sparsity: float
    n: int = 0
    m: int = 0

    def __post_init__(self) -> None:
        sparsity = _sparsity(self.sparsity, "level sparsity")
        n, m = integer(self.n, "level n"), integer(self.m, "level m")
        if (n, m) != (0, 0):
            _check_pattern(n, m, " (or n = m = 0: unstructured)")
            if abs(sparsity - (1.0 - n / m)) > LIMITS.level_sparsity_tolerance:
                raise InvalidArgumentError(f"level {n}:{m} has sparsity 1 - {n}/{m} = {1 - n / m}, not {sparsity}")
            sparsity = 1.0 - n / m
        object.__setattr__(self, "sparsity", sparsity)
        object.__setattr__(self, "n", n)
        object.__setattr__(self, "m", m)

    @classmethod
    def nm(cls, n: int, m: int) -> "Level":
        """The N:M level keeping ``n`` of every ``m`` weights (``0 < n <= m <= 32``)."""
        n, m = integer(n, "n"), integer(m, "m")
        _check_pattern(n, m)
        return cls(1.0 - n / m, n, m)

    @classmethod
    def ratio(cls, sparsity: float) -> "Level":
        """The unstructured level pruning the fraction ``sparsity`` (in [0, 1)) of the weights."""
        return cls(_sparsity(sparsity, "sparsity"))

    @classmethod
    def parse(cls, value: Any) -> "Level":
        """A level from any of the forms a level set accepts: a ``Level``; ``"n:m"`` or ``(n, m)``
        (N:M); ``"70%"``, ``"0.7"`` or a number in [0, 1) (unstructured); ``(sparsity, n, m)`` with
        ``n = m = 0`` (or None) for unstructured; or any object with ``.sparsity``, ``.n`` and
        ``.m`` attributes (such as the library's ``msp_level``).

        Raises:
            TypeError: an object of another kind.
            ValueError: malformed text or a value out of range (``msp.InvalidArgumentError`` for an
                N:M pattern outside ``0 < n <= m <= 32`` or a sparsity that is not ``1 - n/m``).
        """
        if isinstance(value, Level):
            return value
        if isinstance(value, str):
            text = value.strip()
            if ":" in text:
                return cls.nm(*nm_text(value, "level", "2:8"))
            try:
                if text.endswith("%"):
                    return cls.ratio(float(text[:-1]) / 100.0)
                return cls.ratio(float(text))
            except ValueError as error:
                raise ValueError(f'level {value!r} is not "n:m", "p%" or a sparsity in [0, 1): {error}') from None
        if isinstance(value, (tuple, list)) and len(value) == 2:
            return cls.nm(*value)
        if isinstance(value, (tuple, list)) and len(value) == 3:
            return cls._of_fields(*value)
        if isinstance(value, numbers.Real) and not isinstance(value, bool):
            return cls.ratio(value)
        if all(hasattr(value, field) for field in ("sparsity", "n", "m")):
            return cls._of_fields(value.sparsity, value.n, value.m)
        raise TypeError(
            f'a level is a msp.Level, "n:m", (n, m), "p%", a sparsity in [0, 1) or (sparsity, n, m); got {value!r}'
        )

    @classmethod
    def _of_fields(cls, sparsity: Any, n: Any, m: Any) -> "Level":
        """The level of explicit fields; None for ``n`` or ``m`` means 0 (unstructured)."""
        return cls(sparsity, 0 if n is None else n, 0 if m is None else m)

    @property
    def is_nm(self) -> bool:
        """True for an N:M level (dense ``m:m`` included)."""
        return self.m != 0

    @property
    def pattern(self) -> tuple[int, int] | None:
        """``(n, m)`` for an N:M level, else None."""
        return (self.n, self.m) if self.m else None

    def __str__(self) -> str:
        if self.m:
            return f"{self.n}:{self.m}"
        return f"{self.sparsity * 100:g}%"

    def to_json(self) -> dict:
        """A JSON-ready dict (``{"sparsity": s, "n": n, "m": m}``)."""
        return {"sparsity": self.sparsity, "n": self.n, "m": self.m}

    @classmethod
    def from_json(cls, data: Any) -> "Level":
        """The level of a :meth:`to_json` dict (or any form :meth:`parse` takes)."""
        if isinstance(data, dict):
            return cls(data["sparsity"], data.get("n", 0), data.get("m", 0))
        return cls.parse(data)


def nm_levels(m: int = 8, min_n: int = 1, max_n: int | None = None) -> list[Level]:
    """N:M levels for one group size, least sparse first: ``max_n:m``, ..., ``min_n:m``.

    Args:
        m: the group size, in [1, 32].
        min_n: the fewest weights kept per group (the sparsest level), >= 1.
        max_n: the most weights kept per group (the densest level), <= m; None = m (dense).

    Returns:
        ``[Level.nm(max_n, m), ..., Level.nm(min_n, m)]``; ``nm_levels(8)`` is 8:8 (dense) .. 1:8.

    Raises:
        TypeError: a non-integer argument.
        ValueError: not ``1 <= min_n <= max_n <= m <= 32``.
    """
    m = integer(m, "m")
    min_n = integer(min_n, "min_n")
    max_n = m if max_n is None else integer(max_n, "max_n")
    if not (1 <= m <= MAX_M):
        raise ValueError(f"m ({m}) must be in [1, {MAX_M}]")
    if not (1 <= min_n <= max_n <= m):
        raise ValueError(f"need 1 <= min_n ({min_n}) <= max_n ({max_n}) <= m ({m})")
    return [Level.nm(n, m) for n in range(max_n, min_n - 1, -1)]


def ratio_levels(sparsities: Iterable[float]) -> list[Level]:
    """Unstructured levels for the given sparsities, sorted least sparse first.

    Args:
        sparsities: distinct finite numbers in [0, 1) (any order; at most 256).

    Raises:
        TypeError: a non-numeric value.
        ValueError: no values, a value outside [0, 1), or a repeated value.
    """
    if isinstance(sparsities, (str, bytes)):
        raise TypeError("sparsities must be a sequence of numbers, not a string")
    values = sorted(_sparsity(s, f"sparsities[{i}]") for i, s in enumerate(sparsities))
    if not values:
        raise ValueError("ratio_levels needs at least one sparsity")
    if len(values) > MAX_LEVELS:
        raise ValueError(f"a level set holds at most {MAX_LEVELS} levels, got {len(values)}")
    for a, b in zip(values, values[1:]):
        if a == b:
            raise ValueError(f"sparsity {a} appears twice; levels must be distinct")
    return [Level(s) for s in values]


def as_level_set(levels: Any) -> list[Level]:
    """Normalise a level set argument: None = ``nm_levels(8)``; items as :meth:`Level.parse` takes.

    The order is kept as given (the library rejects a set whose sparsity does not strictly
    increase, so a mistaken order is reported instead of silently fixed).

    Raises:
        TypeError: not a sequence, or an item of the wrong kind.
        ValueError: an empty set or a malformed item.
    """
    if levels is None:
        return nm_levels(8)
    try:
        if isinstance(levels, (str, bytes, Level)):
            raise TypeError
        items = list(levels)
    except TypeError:
        raise TypeError(f"levels must be a sequence of levels (e.g. msp.nm_levels(8)), got {levels!r}") from None
    result = [Level.parse(level) for level in items]
    if not result:
        raise ValueError("the level set is empty")
    return result
