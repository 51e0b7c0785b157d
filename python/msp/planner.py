"""The planner: choose one sparsity level per layer so that the average sparsity hits a target.

``msp.plan(...)`` is the one-call interface; ``msp.Search`` is the ask/tell interface for an
external evaluation engine (``torch.distributed`` ranks, a job queue)::

    levels = msp.nm_levels(m=8)                       # 8:8 (dense) .. 1:8
    plan = msp.plan(sizes, target=0.75, levels=levels, sensitivity=traces, fitness=perplexity)

    search = msp.Search(sizes, 0.75, levels, sensitivity=traces)
    while candidates := search.ask():                 # every candidate meets the budget
        search.tell([perplexity(p) for p in candidates])
    best = search.best

Every plan the library emits is feasible: its parameter-weighted average sparsity is within
``tolerance`` of ``target``, every layer's level lies within ``[min_level, max_level]``, and the
layers of one group share one level. Level indices count from the least sparse level of the set
(index 0). An unreachable target raises ``msp.InfeasibleError`` (a ``ValueError``) whose message
gives the reachable range.

Fitness functions take a :class:`msp.Plan` and return a float; lower is better, ``float("inf")``
marks a plan as worst. A fitness that declares a parameter named ``fidelity`` also receives the
fidelity level (0 = cheapest) of a multi-fidelity search. An exception raised inside the fitness
(``KeyboardInterrupt`` included) stops the search and propagates unchanged; NaN stops it with
``msp.MSPCancelled``.
"""

from __future__ import annotations

import ctypes
import inspect
import math
import numbers
import operator
import os
import sys
from typing import Any, Callable, Iterable, Sequence

import numpy as np

from . import _checkpoint
from ._buffers import _torch_of
from ._convert import INT32_MAX, INT64_MAX, flag, integer, ranged, real
from ._handle import NativeHandle
from ._lib import lib, msp_fitness_fn, msp_progress_fn, msp_search_params, msp_search_progress
from .errors import InvalidArgumentError, InvalidStateError, MSPCancelled
from .levels import Level, as_level_set, level_array
from .plan import Plan, _LevelTable

__all__ = ["plan", "Search", "Problem", "METHODS"]

METHODS = ("search", "prior", "exact", "uniform")
"""The planning methods of :func:`plan`."""

# --- argument normalisation -----------------------------------------------------------------------


def _sequence(values: Any, name: str) -> list:
    """A list of the items of a sequence, array or tensor (strings and scalars rejected)."""
    if isinstance(values, (str, bytes)) or not isinstance(values, Iterable):
        raise TypeError(f"{name} must be a sequence, got {type(values).__name__}")
    return list(values)


def _sizes(sizes: Any) -> list[int]:
    """Layer sizes as Python ints (values > 0 and the sum are checked by the library)."""
    values = [integer(s, f"sizes[{i}]") for i, s in enumerate(_sequence(sizes, "sizes"))]
    if not values:
        raise ValueError("sizes is empty: a plan needs at least one layer")
    for i, s in enumerate(values):
        if not -(2**63) <= s <= INT64_MAX:
            raise ValueError(f"sizes[{i}] ({s}) is outside the int64 range")
    return values


def _groups(groups: Any, num_layers: int) -> list[int] | None:
    """Group ids per layer: integers >= 0 as given, or hashable labels numbered by first appearance."""
    if groups is None:
        return None
    items = _sequence(groups, "groups")
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
        items = _sequence(bound, name)
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


def _float_array(values: Any, shape: tuple[int, ...], name: str) -> np.ndarray:
    """A C-contiguous float64 array of exactly ``shape`` (values are checked by the library)."""
    torch = _torch_of(values)
    if torch is not None:
        values = values.detach().to(device="cpu", dtype=torch.float64).numpy()
    array = np.asarray(values)
    if array.dtype.kind not in "fiu":
        raise TypeError(f"{name} must hold real numbers, got dtype {array.dtype}")
    if array.shape != shape:
        raise ValueError(f"{name} must have shape {shape}, got {array.shape}")
    return np.ascontiguousarray(array, dtype=np.float64)


def _fitness_value(value: Any) -> float:
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


def _takes_fidelity(fitness: Callable) -> bool:
    """True when ``fitness`` has a parameter named ``fidelity`` (passed by keyword)."""
    try:
        parameter = inspect.signature(fitness).parameters.get("fidelity")
    except (TypeError, ValueError):  # builtins without a signature
        return False
    return parameter is not None and parameter.kind not in (parameter.POSITIONAL_ONLY, parameter.VAR_POSITIONAL)


def _call_fitness(fitness: Callable, plan: Plan, fidelity: int, with_fidelity: bool) -> float:
    return _fitness_value(fitness(plan, fidelity=fidelity) if with_fidelity else fitness(plan))


# --- the problem handle ---------------------------------------------------------------------------


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
        self.sizes = _sizes(sizes)
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
            sizes_array.ctypes.data, num_layers, level_array(self.level_set), num_levels, ctypes.byref(handle)
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
        items = _sequence(levels, "levels")
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
        values = self._sensitivity(sensitivity)
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
        costs = self._cost_table(cost_table)
        out = np.empty(self.num_layers, dtype=np.int32)
        total = ctypes.c_double()
        lib.msp_solve_additive(self._ptr(), costs.ctypes.data, out.ctypes.data, ctypes.byref(total))
        return out.tolist(), total.value

    def _sensitivity(self, sensitivity: Any) -> np.ndarray:
        if sensitivity is None:
            return np.ones(self.num_layers, dtype=np.float64)
        return _float_array(sensitivity, (self.num_layers,), "sensitivity")

    def _cost_table(self, cost_table: Any) -> np.ndarray:
        return _float_array(cost_table, (self.num_layers, len(self.level_set)), "cost_table")

    def settings(self) -> dict:
        """The problem's settings other than sizes, levels and target, JSON-ready."""
        return {
            "tolerance": self.tolerance,
            "groups": self.groups,
            "min_level": self.min_level,
            "max_level": self.max_level,
        }


# --- progress display -----------------------------------------------------------------------------


class _ProgressBar:
    """A tqdm bar when tqdm is importable, else a one-line stderr update; a no-op when disabled."""

    def __init__(self, total: int, enabled: bool) -> None:
        self._bar = None
        self._line = False
        self._total = total
        if not enabled:
            return
        try:
            from tqdm import tqdm
        except ImportError:
            self._line = True
            return
        self._bar = tqdm(total=total, desc="msp search", unit="gen", leave=True, dynamic_ncols=True)

    def update(self, progress: msp_search_progress) -> None:
        done = progress.generation + 1  # the prior grid is generation 0
        best = progress.best_fitness
        if self._bar is not None:
            self._bar.set_postfix(evaluations=progress.evaluations, best=f"{best:.6g}", refresh=False)
            self._bar.update(max(0, min(done, self._total) - self._bar.n))  # refreshes, throttled
        elif self._line:
            sys.stderr.write(
                f"\rmsp search: generation {done}/{self._total}, evaluations {progress.evaluations}, "
                f"best fitness {best:.6g}   "
            )
            sys.stderr.flush()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        elif self._line:
            sys.stderr.write("\n")
            sys.stderr.flush()
            self._line = False


# --- the search handle ----------------------------------------------------------------------------


def _int32(value: Any, name: str) -> int:
    """``value`` as an int in the int32 range."""
    return ranged(value, name, -INT32_MAX - 1, INT32_MAX)


def _int64(value: Any, name: str) -> int:
    """``value`` as an int in the int64 range."""
    return ranged(value, name, -(2**63), INT64_MAX)


_SEARCH_SETTINGS: dict[str, tuple[Callable[[Any, str], Any], str]] = {
    # name: (converter, its field in msp_search_params); the ranges are the library's
    "generations": (_int32, "generations"),
    "offspring": (_int32, "offspring"),
    "survivors": (_int32, "survivors"),
    "mutation_rate": (real, "mutation_rate"),
    "crossover_rate": (real, "crossover_rate"),
    "prior_strength": (real, "prior_strength"),
    "per_parameter": (flag, "prior_per_parameter"),
    "prior_grid": (flag, "prior_grid"),
    "max_evaluations": (_int64, "max_evaluations"),
    "patience": (_int32, "patience"),
    "fidelity_levels": (_int32, "fidelity_levels"),
    "fidelity_keep": (real, "fidelity_keep"),
    "surrogate_candidates": (_int32, "surrogate_candidates"),
    "surrogate_ridge": (real, "surrogate_ridge"),
    "surrogate_exploration": (real, "surrogate_exploration"),
    "pair_rate": (real, "pair_rate"),
}
"""The search settings of :class:`Search` and :func:`plan` other than the seed."""


def _search_params(seed: Any, given: dict[str, Any]) -> tuple[msp_search_params, dict]:
    """The C settings struct and the settings named in ``_SEARCH_SETTINGS`` as a JSON-ready dict.

    ``given`` maps at least those names to their values (a caller's ``locals()``).
    """
    settings = {name: convert(given[name], name) for name, (convert, _) in _SEARCH_SETTINGS.items()}
    params = lib.msp_search_params_default()
    params.seed = ranged(seed, "seed", 0, 2**64 - 1)
    for name, (_, field) in _SEARCH_SETTINGS.items():
        setattr(params, field, settings[name])
    return params, settings


def _proxy_tables(proxy_costs: Any, problem: Problem) -> list[np.ndarray]:
    """The proxy cost tables as ``[num_layers, num_levels]`` float64 arrays: None gives none; one
    table, or a sequence (or 3-D array) of tables."""
    if proxy_costs is None:
        return []
    shape = (problem.num_layers, len(problem.level_set))
    torch = _torch_of(proxy_costs)
    if torch is not None:
        proxy_costs = proxy_costs.detach().to(device="cpu", dtype=torch.float64).numpy()
    if isinstance(proxy_costs, np.ndarray) and proxy_costs.ndim == 3:
        items = list(proxy_costs)
    elif isinstance(proxy_costs, (list, tuple)) and proxy_costs and np.ndim(proxy_costs[0]) == 2:
        items = list(proxy_costs)
    else:
        items = [proxy_costs]
    return [_float_array(table, shape, f"proxy_costs[{i}]") for i, table in enumerate(items)]


def _checkpoint_float(value: float) -> Any:
    """A float for JSON: +inf as the string "inf"."""
    return value if math.isfinite(value) else str(value)


class Search(NativeHandle):
    """The evolutionary search as an ask/tell object (``msp_search`` in ``msp.h``).

    Generation 0 evaluates a small grid of sensitivity priors; each later generation breeds
    ``offspring`` new plans from the ``survivors`` best so far by budget-preserving crossover and
    mutation, never proposing a plan twice. Given the seed and the fitness values told, the
    sequence of candidates is deterministic.

    Drive it yourself (any evaluation engine; only this object's thread talks to the library)::

        with msp.Search(sizes, 0.75, levels, sensitivity=traces) as search:
            while candidates := search.ask():        # list of msp.Plan, all feasible
                values = evaluate(candidates, fidelity=search.fidelity)
                search.tell(values)                  # one float per candidate, in order
            best = search.best

    or with a fitness function: ``best = search.run(fitness)``.

    Args:
        sizes, target, levels, groups, min_level, max_level, tolerance: the problem, as for
            :func:`msp.plan`.
        sensitivity: one finite value >= 0 per layer (Fisher traces); None = all ones.
        seed: random seed (an integer in [0, 2^64)).
        generations, offspring, survivors, mutation_rate, crossover_rate, prior_strength,
        per_parameter, prior_grid, max_evaluations, patience, fidelity_levels, fidelity_keep,
        surrogate_candidates, surrogate_ridge, surrogate_exploration, pair_rate, proxy_costs:
            the search settings of :func:`msp.plan`.

    Attributes:
        fidelity: the fidelity level of the last batch asked (0 = cheapest; ``fidelity_levels - 1``
            is the full fidelity that counts as a plan's fitness).

    The object owns its native handle: ``close()`` (or leaving a ``with`` block, or garbage
    collection) releases it; any later call raises ``msp.InvalidStateError``. Calls are serialised
    by a lock; a call from inside a running :meth:`run` (from the fitness function) raises
    ``msp.InvalidStateError``.
    """

    _free = staticmethod(lib.msp_search_free)
    _name = "the search"
    _running = False

    def __init__(
        self,
        sizes: Iterable[int],
        target: float,
        levels: Sequence[Any] | None = None,
        sensitivity: Any = None,
        groups: Sequence[Any] | None = None,
        min_level: Any = None,
        max_level: Any = None,
        tolerance: float = 0.001,
        seed: int = 0,
        *,
        generations: int = 20,
        offspring: int = 8,
        survivors: int = 4,
        mutation_rate: float = 0.5,
        crossover_rate: float = 0.5,
        prior_strength: float = 1.0,
        per_parameter: bool = False,
        prior_grid: bool = True,
        max_evaluations: int = 0,
        patience: int = 0,
        fidelity_levels: int = 1,
        fidelity_keep: float = 0.25,
        surrogate_candidates: int = 2,
        surrogate_ridge: float = 1.0,
        surrogate_exploration: float = 1.0,
        pair_rate: float = 1.0,
        proxy_costs: Any = None,
    ) -> None:
        super().__init__()
        params, settings = _search_params(seed, locals())
        with Problem(
            sizes, target, levels, groups=groups, min_level=min_level, max_level=max_level, tolerance=tolerance
        ) as problem:
            values = problem._sensitivity(sensitivity)
            tables = _proxy_tables(proxy_costs, problem)
            handle = ctypes.c_void_p()
            lib.msp_search_create(problem._ptr(), values.ctypes.data, ctypes.byref(params), ctypes.byref(handle))
        self._handle = handle.value
        try:
            for table in tables:
                lib.msp_search_add_proxy(self._handle, table.ctypes.data)
        except BaseException:
            self.close()
            raise
        settings = {**problem.settings(), **settings, "proxy_tables": len(tables)}
        self._adopt(problem.sizes, problem.level_set, problem.target, int(params.seed), settings, [], -1, 0)

    def _adopt(self, sizes, level_set, target, seed, settings, history, generation, fidelity) -> None:
        """Set up the Python side around the native handle in ``self._handle``."""
        self._running = False
        self._error: BaseException | None = None
        self._nan = False
        self._callbacks: tuple | None = None
        self._evaluate: Callable[[np.ndarray, int], float] | None = None
        self._bar: _ProgressBar | None = None
        self._history: list[float] = list(history)
        self._generation = generation
        self.fidelity = fidelity
        self._sizes = list(sizes)
        self._level_set = list(level_set)
        self._target = target
        self._seed = seed
        self._generations = settings["generations"]
        self._settings = settings
        self._num_layers = len(self._sizes)
        self._table = _LevelTable(self._level_set, self._sizes)
        self._max_batch = int(lib.msp_search_max_batch(self._handle))
        self._buffer = np.zeros(max(1, self._max_batch) * self._num_layers, dtype=np.int32)

    # --- checkpoints ------------------------------------------------------------------------------

    def save(self, path: str | os.PathLike) -> None:
        """Write the whole search to ``path`` (replaced atomically: a crash leaves the old file or
        the new one). :meth:`load` gives a search that continues exactly as this one would: the
        same candidates, given the same values told. Save between any two calls, with or without a
        batch pending (a pending batch is asked again after loading), also from inside
        :meth:`run`'s fitness function. The file holds about (plans proposed + plans evaluated) x
        layers bytes; see ``msp._checkpoint`` for its format.

        Raises:
            OSError: the file cannot be written.
            msp.InvalidStateError: the search is closed.
        """
        with self._lock:
            handle = NativeHandle._ptr(self)  # read-only: allowed inside run() too
            size = ctypes.c_int64()
            lib.msp_search_save_size(handle, ctypes.byref(size))
            native = ctypes.create_string_buffer(size.value)
            lib.msp_search_save(handle, native, size.value, ctypes.byref(size))
            meta = {
                "sizes": self._sizes,
                "levels": [level.to_json() for level in self._level_set],
                "target": self._target,
                "seed": self._seed,
                "settings": self._settings,
                "history": [_checkpoint_float(v) for v in self._history],
                "generation": self._generation,
                "fidelity": self.fidelity,
            }
            data = _checkpoint.pack(meta, native.raw[: size.value])
        _checkpoint.write_atomically(path, data)

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Search":
        """The search saved at ``path`` by :meth:`save`, ready to continue (``ask``, ``tell``,
        ``run``, ``best``). Everything read is checked (the file's SHA-256, then the library checks
        the native state field by field).

        Raises:
            OSError: the file cannot be read.
            msp.InvalidArgumentError: not a search file, or a truncated, corrupted or foreign one
                (the message says what is wrong).
        """
        name = os.fspath(path)
        with open(name, "rb") as file:
            meta, native = _checkpoint.unpack(file.read(), name)
        field = _checkpoint.field
        try:
            table = _LevelTable(
                [Level.from_json(level) for level in field(meta, "levels", list, name)], field(meta, "sizes", list, name)
            )
        except (TypeError, ValueError, KeyError) as error:
            raise InvalidArgumentError(f"{name} is not a valid msp search file: {error}") from None
        settings = field(meta, "settings", dict, name)
        field(settings, "generations", int, name)
        history = []
        for value in field(meta, "history", list, name):
            if value != "inf" and (isinstance(value, bool) or not isinstance(value, (int, float))):
                raise InvalidArgumentError(f"{name} is not a valid msp search file: its history holds {value!r}")
            history.append(float(value))
        search = cls.__new__(cls)
        NativeHandle.__init__(search)
        handle = ctypes.c_void_p()
        buffer = ctypes.create_string_buffer(native, len(native))
        lib.msp_search_load(buffer, len(native), ctypes.byref(handle))
        search._handle = handle.value
        try:
            generation = field(meta, "generation", int, name)
            search._adopt(
                table.sizes, table.level_set, field(meta, "target", (int, float), name), field(meta, "seed", int, name),
                settings, history, generation, field(meta, "fidelity", int, name),
            )
            progress = search._progress(search._handle)
            if progress.generation != generation or len(history) != generation + 1:
                raise InvalidArgumentError(
                    f"{name} is not a valid msp search file: its JSON (generation {generation}) does not describe "
                    f"its native state (generation {progress.generation})"
                )
        except BaseException:
            search.close()
            raise
        return search

    # --- handle ownership -------------------------------------------------------------------------

    def _ptr(self) -> int:
        """The live handle; raises when closed or when called from inside :meth:`run`."""
        handle = super()._ptr()
        if self._running:
            raise InvalidStateError("the search is running (this call came from inside its fitness function)")
        return handle

    def close(self) -> None:
        """Release the native search. Idempotent; later calls raise ``msp.InvalidStateError``.

        Raises:
            msp.InvalidStateError: called from inside :meth:`run` (from the fitness function).
        """
        with self._lock:
            if self._running:
                raise InvalidStateError("cannot close the search from inside its own run()")
            super().close()

    def __repr__(self) -> str:
        if self.closed:
            return "<msp Search: closed>"
        return f"<msp Search: {self._num_layers} layers, target={self._target}, seed={self._seed}>"

    # --- plans ------------------------------------------------------------------------------------

    @property
    def sizes(self) -> list[int]:
        """Parameter count of every layer."""
        return list(self._sizes)

    @property
    def level_set(self) -> list[Level]:
        """The level set, least sparse first."""
        return list(self._level_set)

    @property
    def max_batch(self) -> int:
        """The most candidates one :meth:`ask` returns."""
        return self._max_batch

    def _plan(self, levels: list[int], **fields: Any) -> Plan:
        """A plan of level indices the library produced (so already checked)."""
        return Plan._of_checked(
            levels,
            self._table,
            target=self._target,
            method="search",
            params=self._settings,
            seed=self._seed,
            **fields,
        )

    def _progress(self, handle: int) -> msp_search_progress:
        progress = msp_search_progress()
        lib.msp_search_get_progress(handle, ctypes.byref(progress))
        return progress

    def _note(self, progress: msp_search_progress) -> None:
        """Record the best fitness of every newly completed generation."""
        if progress.generation > self._generation:
            self._history.extend([progress.best_fitness] * (progress.generation - self._generation))
            self._generation = progress.generation

    # --- ask / tell -------------------------------------------------------------------------------

    def ask(self) -> list[Plan]:
        """The next batch of candidate plans to score (all feasible); an empty list once done.

        Asking again before :meth:`tell` returns the same batch. Score them at ``self.fidelity``.
        """
        with self._lock:
            handle = self._ptr()
            count, fidelity = ctypes.c_int64(), ctypes.c_int32()
            lib.msp_search_ask(
                handle, self._buffer.ctypes.data, self._max_batch, ctypes.byref(count), ctypes.byref(fidelity)
            )
            self.fidelity = fidelity.value
            rows = self._buffer[: count.value * self._num_layers].reshape(count.value, self._num_layers).tolist()
        return [self._plan(row) for row in rows]

    def tell(self, values: Iterable[float]) -> None:
        """Report the fitness of the last batch asked, in the order asked (lower is better;
        ``float("inf")`` marks a plan as worst).

        Raises:
            TypeError: values that are not real numbers.
            ValueError: not one-dimensional; ``msp.InvalidArgumentError`` for NaN or -inf.
            msp.InvalidStateError: no batch pending (tell before ask, or twice), or a different
                number of values than candidates. The search is unchanged on any error.
        """
        torch = _torch_of(values)
        if torch is not None:
            values = values.detach().to(device="cpu", dtype=torch.float64).numpy()
        elif not isinstance(values, np.ndarray):
            items = _sequence(values, "values")
            for i, v in enumerate(items):
                if isinstance(v, bool) or not isinstance(v, numbers.Real):
                    raise TypeError(f"values[{i}] must be a real number, got {type(v).__name__}")
            values = items
        array = np.asarray(values)
        if array.dtype.kind not in "fiu":
            raise TypeError(f"values must be real numbers, got dtype {array.dtype}")
        if array.ndim != 1:
            raise ValueError(f"values must be one-dimensional (one per candidate), got shape {array.shape}")
        array = np.ascontiguousarray(array, dtype=np.float64)
        with self._lock:
            handle = self._ptr()
            lib.msp_search_tell(handle, array.ctypes.data, len(array))
            self._note(self._progress(handle))

    @property
    def best(self) -> Plan | None:
        """The best plan so far (full fidelity) with its fitness, history and evaluations; None
        before the first full-fidelity evaluation."""
        with self._lock:
            handle = self._ptr()
            out = np.empty(self._num_layers, dtype=np.int32)
            fitness = ctypes.c_double()
            try:
                lib.msp_search_best(handle, out.ctypes.data, ctypes.byref(fitness))
            except InvalidStateError:
                return None
            evaluations = self._progress(handle).evaluations
            history = list(self._history)
        return self._plan(out.tolist(), fitness=fitness.value, history=history, evaluations=evaluations)

    @property
    def progress(self) -> dict:
        """``{"generation", "done", "evaluations", "cheap_evaluations", "best_fitness"}``;
        ``generation`` counts completed generations (the prior grid is generation 0, so -1 before
        it completes) and ``best_fitness`` is +inf before the first evaluation."""
        with self._lock:
            p = self._progress(self._ptr())
        return {
            "generation": p.generation,
            "done": bool(p.done),
            "evaluations": p.evaluations,
            "cheap_evaluations": p.cheap_evaluations,
            "best_fitness": p.best_fitness,
        }

    @property
    def done(self) -> bool:
        """True once :meth:`ask` returns no more candidates."""
        return self.progress["done"]

    @property
    def history(self) -> list[float]:
        """Best fitness after each completed generation (the prior grid is generation 0)."""
        with self._lock:
            self._ptr()
            return list(self._history)

    # --- callback-driven run ----------------------------------------------------------------------

    def run(self, fitness: Callable[..., float], progress: bool = True) -> Plan:
        """Drive the search to its end with a fitness function and return the best plan.

        Args:
            fitness: called with each candidate :class:`msp.Plan` (and ``fidelity=`` when it has
                a parameter of that name); returns a float, lower is better.
            progress: show a progress bar (tqdm when installed, else a line on stderr).

        Returns:
            The best plan, with ``fitness``, ``history`` and ``evaluations``.

        Raises:
            Whatever ``fitness`` raised, unchanged (the batch in progress is dropped; the search
            stays usable: ``best``, ``ask``, ``run`` again, ``close``).
            TypeError: ``fitness`` is not callable or returned something other than a real number.
            ValueError: ``fitness`` returned -inf.
            msp.MSPCancelled: ``fitness`` returned NaN.
        """
        if not callable(fitness):
            raise TypeError(f"fitness must be callable, got {type(fitness).__name__}")
        with_fidelity = _takes_fidelity(fitness)

        def evaluate(levels: np.ndarray, fidelity: int) -> float:
            return _call_fitness(fitness, self._plan(levels.tolist()), fidelity, with_fidelity)

        return self._run(evaluate, progress)

    def _run(self, evaluate: Callable[[np.ndarray, int], float], progress: bool) -> Plan:
        """Run with ``evaluate(levels_view, fidelity) -> float``; see :meth:`run`."""
        with self._lock:
            handle = self._ptr()
            self._error, self._nan = None, False
            self._evaluate = evaluate
            self._bar = _ProgressBar(self._generations + 1, progress)
            self._callbacks = (msp_fitness_fn(self._fitness_callback), msp_progress_fn(self._progress_callback))
            cancelled: MSPCancelled | None = None
            self._running = True
            try:
                lib.msp_search_run(handle, self._callbacks[0], self._callbacks[1], None)
            except MSPCancelled as error:
                cancelled = error
            finally:
                self._running = False
                self._callbacks = None  # C calls them no more; also breaks the reference cycle
                self._evaluate = None
                self._bar.close()
                self._bar = None
                self._note(self._progress(handle))
            error, self._error = self._error, None
            try:
                if error is not None:
                    raise error  # the fitness function's own exception, unchanged
                if cancelled is not None:
                    if self._nan:
                        raise MSPCancelled(
                            "the fitness function returned NaN, so the search was cancelled "
                            "(return float('inf') to mark a plan as worst); " + cancelled.message
                        )
                    raise cancelled
            finally:
                # A raised exception's traceback holds this frame: locals that hold the exception
                # would form a cycle keeping the search (and its native handle) alive until gc.
                error = cancelled = None
        best = self.best
        if best is None:  # unreachable: a finished search has evaluated its prior plans
            raise InvalidStateError("the search finished without evaluating any plan")
        return best

    def _fitness_callback(self, plan, num_layers, fidelity, user_data, fitness_out) -> int:
        try:
            levels = np.ctypeslib.as_array(plan, shape=(num_layers,))
            value = self._evaluate(levels, fidelity)
            if math.isnan(value):
                self._nan = True
            fitness_out[0] = value
            return 0
        except BaseException as error:  # KeyboardInterrupt too: cancel, re-raise after the C call
            self._error = error
            return 1

    def _progress_callback(self, progress, user_data) -> int:
        try:
            state = progress.contents
            self._note(state)
            self._bar.update(state)
            return 0
        except BaseException as error:
            self._error = error
            return 1


# --- the one-call planner -------------------------------------------------------------------------


def plan(
    sizes: Iterable[int],
    target: float = 0.75,
    levels: Sequence[Any] | None = None,
    sensitivity: Any = None,
    fitness: Callable[..., float] | None = None,
    groups: Sequence[Any] | None = None,
    min_level: Any = None,
    max_level: Any = None,
    method: str = "search",
    cost_table: Any = None,
    tolerance: float = 0.001,
    generations: int = 20,
    offspring: int = 8,
    survivors: int = 4,
    seed: int = 0,
    prior_strength: float = 1.0,
    per_parameter: bool = False,
    prior_grid: bool = True,
    max_evaluations: int = 0,
    patience: int = 0,
    fidelity_levels: int = 1,
    fidelity_keep: float = 0.25,
    mutation_rate: float = 0.5,
    crossover_rate: float = 0.5,
    surrogate_candidates: int = 2,
    surrogate_ridge: float = 1.0,
    surrogate_exploration: float = 1.0,
    pair_rate: float = 1.0,
    proxy_costs: Any = None,
    progress: bool = True,
) -> Plan:
    """Choose one level per layer so that the parameter-weighted average sparsity is within
    ``tolerance`` of ``target``.

    Args:
        sizes: parameter count of every layer (integers > 0).
        target: average sparsity to reach, in [0, 1).
        levels: the level set, least sparse first (default ``msp.nm_levels(8)``: 8:8 .. 1:8).
        sensitivity: one finite value >= 0 per layer (Fisher traces; more sensitive layers get
            less sparsity). Needed by "prior"; None means all ones elsewhere.
        fitness: a callable taking a candidate :class:`msp.Plan` (and ``fidelity=`` when it has a
            parameter of that name) and returning a float, lower is better (perplexity, KL, loss).
            "search" minimises it; the other methods evaluate it once on their result so that
            ``plan.fitness`` compares across methods.
        groups: None, one integer id >= 0 per layer, or one hashable label per layer (e.g. the
            transformer block); layers of a group share one level.
        min_level, max_level: None, one level index for all layers, or one per layer (0 = least
            sparse; negative indices are not allowed); e.g. ``max_level=[2] + [7] * 31`` keeps the
            first layer at 6:8 or denser.
        method: "search" (evolutionary search from the sensitivity prior; needs ``fitness`` or
            ``cost_table``), "prior" (the sensitivity prior alone), "exact" (the optimum of the
            additive ``cost_table``), or "uniform" (the prior at strength 0: the same level
            everywhere whenever that is feasible).
        cost_table: ``[num_layers, num_levels]`` additive costs (e.g. ``msp.cost_table``). Needed
            by "exact"; the fitness of "search" when ``fitness`` is None.
        tolerance: allowed distance of the average sparsity from ``target``, in [0, 0.5].
        generations, offspring, survivors, mutation_rate, crossover_rate, seed, prior_grid,
            max_evaluations, patience, fidelity_levels, fidelity_keep, surrogate_candidates,
            surrogate_ridge, surrogate_exploration, pair_rate: search settings (see
            ``msp_search_params`` in ``msp.h``).
        prior_strength, per_parameter: the prior's spread and normalisation ("prior"; and
            "search" with ``prior_grid=False``).
        proxy_costs: "search" only: None, one ``[num_layers, num_levels]`` table of additive costs
            that should track the fitness (e.g. ``msp.cost_table`` of every layer), or a sequence of
            them (at most 8). Each table's exact optimum joins the first generation, and the
            search's surrogate leans on them where its evaluations say little.
        progress: show a progress bar during a search (tqdm when installed, else stderr).

    Returns:
        The :class:`msp.Plan`, with ``fitness`` (the fitness function's value if one was given,
        else the additive cost if a cost table was given, else None), ``history`` (best fitness
        per search generation) and ``evaluations``.

    Raises:
        TypeError, ValueError: bad arguments (``msp.InvalidArgumentError`` from the library is a
            ValueError); ``msp.InfeasibleError`` (a ValueError) when the target is unreachable,
            its message giving the reachable range.
        Whatever ``fitness`` raised, unchanged; ``msp.MSPCancelled`` when it returned NaN.
    """
    given = locals()  # the arguments; the search settings are forwarded to Search
    if method not in METHODS:
        raise ValueError(f"method must be one of {', '.join(repr(m) for m in METHODS)}; got {method!r}")
    if fitness is not None and not callable(fitness):
        raise TypeError(f"fitness must be callable or None, got {type(fitness).__name__}")
    if method == "search":
        if fitness is None and cost_table is None:
            raise ValueError("method='search' needs a fitness function (or a cost_table for an additive fitness)")
        settings = {name: given[name] for name in _SEARCH_SETTINGS}
        with Search(
            sizes, target, levels, sensitivity, groups, min_level, max_level, tolerance, seed, **settings,
            proxy_costs=proxy_costs,
        ) as search:
            if fitness is not None:
                return search.run(fitness, progress=flag(progress, "progress"))
            costs = _float_array(cost_table, (len(search._sizes), len(search._level_set)), "cost_table")
            if not np.isfinite(costs).all():
                raise ValueError("cost_table holds a non-finite value")
            rows = np.arange(len(search._sizes))

            def additive(levels: np.ndarray, fidelity: int) -> float:
                return float(costs[rows, levels].sum())

            return search._run(additive, flag(progress, "progress"))

    if method == "exact" and cost_table is None:
        raise ValueError("method='exact' needs a cost_table ([num_layers, num_levels] additive costs)")
    if method == "prior" and sensitivity is None:
        raise ValueError("method='prior' needs sensitivity (one value per layer, e.g. Fisher traces)")
    with Problem(
        sizes, target, levels, groups=groups, min_level=min_level, max_level=max_level, tolerance=tolerance
    ) as problem:
        settings = problem.settings()
        total = None
        if method == "exact":
            chosen, total = problem.solve_additive(cost_table)
        elif method == "prior":
            chosen = problem.prior(sensitivity, prior_strength, per_parameter)
            settings.update(prior_strength=float(prior_strength), per_parameter=bool(per_parameter))
        else:
            chosen = problem.prior(sensitivity, 0.0, False)
        if total is None and cost_table is not None:
            costs = problem._cost_table(cost_table)
            total = float(costs[np.arange(problem.num_layers), chosen].sum())
        sizes, level_set, target = problem.sizes, problem.level_set, problem.target
    result = Plan(chosen, level_set, sizes, fitness=total, target=target, method=method, params=settings)
    if fitness is not None:
        full = ranged(fidelity_levels, "fidelity_levels", 1, INT32_MAX) - 1
        result.fitness = _call_fitness(fitness, result, full, _takes_fidelity(fitness))
        result.evaluations = 1
    return result
