"""Calling a user's fitness function on a plan: shared by ``msp.Search`` and ``msp.plan``.

A fitness takes a :class:`msp.Plan` and returns a float, lower is better; ``float("inf")`` marks a
plan as worst. A fitness that declares a parameter named ``fidelity`` also receives the fidelity
level (0 = cheapest) of a multi-fidelity search.
"""

from __future__ import annotations

import inspect
import math
import numbers
from typing import Any, Callable


def checked_fitness(fitness: Any, *, optional: bool = False) -> Callable[..., float] | None:
    """``fitness`` if it is callable (or None when ``optional``); ``TypeError`` otherwise."""
    if fitness is None and optional:
        return None
    if not callable(fitness):
        raise TypeError(f"fitness must be callable{' or None' if optional else ''}, got {type(fitness).__name__}")
    return fitness


def fitness_value(value: Any) -> float:
    """A fitness function's result as a float; NaN passes (the library cancels on it)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        hint = " (use .item() to get a float from a tensor)" if hasattr(value, "item") else ""
        raise TypeError(f"the fitness function must return a float, got {type(value).__name__}{hint}")
    try:
        value = float(value)
    except OverflowError:  # an int beyond the float range: report it like the other bad values
        raise ValueError("the fitness function returned an integer beyond the float range") from None
    if value == -math.inf:
        raise ValueError("the fitness function returned -inf; lower is better, so use +inf to mark a plan as worst")
    return value


def takes_fidelity(fitness: Callable[..., Any]) -> bool:
    """True when ``fitness`` has a parameter named ``fidelity`` (passed by keyword)."""
    try:
        parameter = inspect.signature(fitness).parameters.get("fidelity")
    except (TypeError, ValueError):  # builtins without a signature
        return False
    return parameter is not None and parameter.kind not in (parameter.POSITIONAL_ONLY, parameter.VAR_POSITIONAL)


def call_fitness(fitness: Callable[..., Any], plan: Any, fidelity: int, with_fidelity: bool) -> float:
    """``fitness(plan)`` (with ``fidelity=`` when ``with_fidelity``) as a checked float."""
    return fitness_value(fitness(plan, fidelity=fidelity) if with_fidelity else fitness(plan))
