"""``msp.Problem``: a validated planning problem (sizes, level set, groups, bounds and budget).

Every plan the library emits for a problem is feasible: its parameter-weighted average sparsity is
within ``tolerance`` of ``target``, every layer's level lies within ``[min_level, max_level]``, and
the layers of one group share one level. Level indices count from the least sparse level of the
set (index 0). An unreachable target raises ``msp.InfeasibleError`` (a ``ValueError``) whose
message gives the reachable range::

    with msp.Problem(sizes, 0.75, msp.nm_levels(8), groups=msp.torch.block_groups(names)) as problem:
        low, high = problem.range
        levels = problem.prior(traces)                  # the sensitivity prior
        levels, total = problem.solve_additive(costs)   # the exact optimum of additive costs
"""

from __future__ import annotations

import ctypes
import numbers
import operator
from typing import Any, Iterable, Sequence

import numpy as np

from . import _arrays
from ._convert import INT64_MAX, flag, integer, real
from ._handle import NativeHandle
from ._lib import lib
from .levels import as_level_set

__all__ = ["Problem"]


def sensitivity_array(sensitivity: Any, num_layers: int) -> np.ndarray:
    """One sensitivity per layer as a float64 array (None: all ones); values are the library's check."""
    if sensitivity is None:
        return np.ones(num_layers, dtype=np.float64)
    return _arrays.float_array(sensitivity, (num_layers,), "sensitivity")


def additive_costs(cost_table: Any, num_layers: int, num_levels: int) -> np.ndarray:
    """An additive cost table (``cost_table[layer, level]``) as a float64 array of that shape."""
    return _arrays.float_array(cost_table, (num_layers, num_levels), "cost_table")


def _groups(groups: Any, num_layers: int) -> list[int] | None:
    """Group ids per layer: integers >= 0 as given, or hashable labels numbered by first appearance."""
    if groups is None:
        return None
    items = _arrays.sequence(groups, "groups")
    if len(items) != num_layers:
        raise ValueError(f"groups has {len(items)} entries for {num_layers} layers")
    try:
        ids = [operator.index(g) for g in items if not isinstance(g, bool)]
    except TypeError:
        ids = []
    if len(ids) == num_layers:
        for i, g in enumerate(ids):
            if not 0 <= g <= INT64_MAX:
                raise ValueError(f"groups[{i}] ({g}) must be an integer id >= 0 (or use labels)")
        return ids
    numbers_of: dict = {}
    try:
        return [numbers_of.setdefault(g, len(numbers_of)) for g in items]
    except TypeError as error:
        raise TypeError(f"group labels must be hashable: {error}") from None


def _bound(bound: Any, num_layers: int, num_levels: int, name: str) -> list[int] | None:
    """A level bound per layer from None, one index for every layer, or one index per layer."""
    if bound is None:
        return None
    if isinstance(bound, numbers.Integral) and not isinstance(bound, bool):
        values = [int(bound)] * num_layers
    else:
        items = _arrays.sequence(bound, name)
        if len(items) != num_layers:
            raise ValueError(f"{name} has {len(items)} entries for {num_layers} layers")
        values = [integer(v, f"{name}[{i}]") for i, v in enumerate(items)]
    for i, v in enumerate(values):
        if not 0 <= v < num_levels:
            raise ValueError(
                f"{name}[{i}] ({v}) must be a level index in [0, {num_levels - 1}] "
                f"(0 = least sparse; negative indices are not allowed)"
            )
    return values


class Problem(NativeHandle):
    """A validated planning problem (``msp_problem`` in ``msp.h``): sizes, level set, groups,
    bounds and budget.

    Args:
        sizes: parameter count of every layer (integers > 0).
        target: the average sparsity to reach, in [0, 1).
        levels: the level set, least sparse first (default ``msp.nm_levels(8)``).
        groups: None, one integer id >= 0 per layer, or one hashable label per layer; layers with
            equal ids share one level.
        min_level, max_level: None, one level index for every layer, or one index per layer
            (0 = least sparse; negative indices are not allowed).
        tolerance: allowed distance of the average sparsity from ``target``, in [0, 0.5].

    Raises:
        TypeError: arguments of the wrong type.
        ValueError: wrong lengths or bad values (``msp.InvalidArgumentError`` from the library);
            ``msp.InfeasibleError`` (a ``ValueError``) when no plan reaches the target, with the
            reachable range in its message.

    The object owns its native handle: ``close()`` (or leaving a ``with`` block, or garbage
    collection) releases it; any later use raises ``msp.InvalidStateError``.
    """

    _free = staticmethod(lib.msp_problem_free)
    _name = "the planning problem"

    def __init__(
        self,
        sizes: Iterable[int],
        target: float,
        levels: Sequence[Any] | None = None,
        *,
        groups: Sequence[Any] | None = None,
        min_level: Any = None,
        max_level: Any = None,
        tolerance: float = 0.001,
    ) -> None:
        super().__init__()
        self.sizes = _arrays.layer_sizes(sizes)
        self.level_set = as_level_set(levels)
        num_layers, num_levels = len(self.sizes), len(self.level_set)
        self.groups = _groups(groups, num_layers)
        self.min_level = _bound(min_level, num_layers, num_levels, "min_level")
        self.max_level = _bound(max_level, num_layers, num_levels, "max_level")
        self.target = real(target, "target")
        self.tolerance = real(tolerance, "tolerance")

        sizes_array = np.array(self.sizes, dtype=np.int64)
        handle = ctypes.c_void_p()
        lib.msp_problem_create(
            sizes_array.ctypes.data, num_layers, _arrays.level_array(self.level_set), num_levels, ctypes.byref(handle)
        )
        self._handle = handle.value
        try:
            if self.groups is not None:
                lib.msp_problem_set_groups(self._handle, np.array(self.groups, dtype=np.int64).ctypes.data)
            if self.min_level is not None or self.max_level is not None:
                lo = None if self.min_level is None else np.array(self.min_level, dtype=np.int32)
                hi = None if self.max_level is None else np.array(self.max_level, dtype=np.int32)
                lib.msp_problem_set_bounds(
                    self._handle, None if lo is None else lo.ctypes.data, None if hi is None else hi.ctypes.data
                )
            lib.msp_problem_set_target(self._handle, self.target, self.tolerance)
        except BaseException:
            self.close()
            raise

    def __repr__(self) -> str:
        state = "closed" if self.closed else f"target={self.target}"
        return f"<msp Problem: {len(self.sizes)} layers, {len(self.level_set)} levels, {state}>"

    # --- queries ----------------------------------------------------------------------------------

    @property
    def num_layers(self) -> int:
        """Number of layers."""
        return len(self.sizes)

    @property
    def range(self) -> tuple[float, float]:
        """The lowest and highest average sparsity any plan within the bounds reaches."""
        lo, hi = ctypes.c_double(), ctypes.c_double()
        lib.msp_problem_range(self._ptr(), ctypes.byref(lo), ctypes.byref(hi))
        return lo.value, hi.value

    def _plan_array(self, levels: Any) -> np.ndarray:
        items = _arrays.sequence(levels, "levels")
        if len(items) != self.num_layers:
            raise ValueError(f"the plan has {len(items)} levels for {self.num_layers} layers")
        values = [integer(k, f"levels[{i}]") for i, k in enumerate(items)]
        for i, k in enumerate(values):
            if not 0 <= k < len(self.level_set):
                raise ValueError(f"levels[{i}] ({k}) is outside the level set [0, {len(self.level_set) - 1}]")
        return np.array(values, dtype=np.int32)

    def check(self, levels: Any) -> float:
        """The average sparsity of a plan (level index per layer) that must be feasible.

        Raises:
            msp.InvalidArgumentError: an index out of bounds or group members differing.
            msp.InfeasibleError: the plan misses the budget.
        """
        plan = self._plan_array(levels)
        average = ctypes.c_double()
        lib.msp_problem_check_plan(self._ptr(), plan.ctypes.data, ctypes.byref(average))
        return average.value

    def prior(self, sensitivity: Any = None, strength: float = 1.0, per_parameter: bool = False) -> list[int]:
        """The sensitivity prior plan (``msp_prior_plan``): more sensitive layers get less sparsity.

        Args:
            sensitivity: one finite value >= 0 per layer (e.g. Fisher traces); None = all ones.
            strength: >= 0; 0 gives the uniform plan whenever one is feasible.
            per_parameter: normalise each layer's sensitivity by its size.
        """
        values = sensitivity_array(sensitivity, self.num_layers)
        params = lib.msp_prior_params_default()
        params.strength = real(strength, "strength")
        params.per_parameter = int(flag(per_parameter, "per_parameter"))
        out = np.empty(self.num_layers, dtype=np.int32)
        lib.msp_prior_plan(self._ptr(), values.ctypes.data, ctypes.byref(params), out.ctypes.data)
        return out.tolist()

    def solve_additive(self, cost_table: Any) -> tuple[list[int], float]:
        """The feasible plan minimising ``sum_l cost_table[l, level_l]`` and that total
        (``msp_solve_additive``).

        Args:
            cost_table: ``[num_layers, num_levels]`` finite numbers.
        """
        costs = additive_costs(cost_table, self.num_layers, len(self.level_set))
        out = np.empty(self.num_layers, dtype=np.int32)
        total = ctypes.c_double()
        lib.msp_solve_additive(self._ptr(), costs.ctypes.data, out.ctypes.data, ctypes.byref(total))
        return out.tolist(), total.value

    def additive_cost(self, cost_table: Any, levels: Any) -> float:
        """The additive cost ``sum_l cost_table[l, levels[l]]`` of a plan (level index per layer).

        Args:
            cost_table: ``[num_layers, num_levels]`` numbers.
            levels: one level index per layer.
        """
        self._ptr()  # raises once closed, like every other method
        costs = additive_costs(cost_table, self.num_layers, len(self.level_set))
        return float(costs[np.arange(self.num_layers), self._plan_array(levels)].sum())

    def settings(self) -> dict:
        """The problem's settings other than sizes, levels and target, JSON-ready."""
        return {
            "tolerance": self.tolerance,
            "groups": self.groups,
            "min_level": self.min_level,
            "max_level": self.max_level,
        }
