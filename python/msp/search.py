"""``msp.Search``: the evolutionary search as an ask/tell object, for any evaluation engine.

::

    search = msp.Search(sizes, 0.75, msp.nm_levels(8), sensitivity=traces, generations=10)
    while candidates := search.ask():                 # every candidate meets the budget
        search.tell([perplexity(p) for p in candidates])
    best = search.best

or with a fitness function: ``best = search.run(fitness)``; with an additive cost table as the
fitness: ``best = search.run_additive(costs)``. Settings: :class:`msp.SearchSettings`.

Fitness functions take a :class:`msp.Plan` and return a float; lower is better, ``float("inf")``
marks a plan as worst. A fitness that declares a parameter named ``fidelity`` also receives the
fidelity level (0 = cheapest) of a multi-fidelity search. An exception raised inside the fitness
(``KeyboardInterrupt`` included) stops the search and propagates unchanged; NaN stops it with
``msp.MSPCancelled``.
"""

from __future__ import annotations

import ctypes
import dataclasses
import math
import numbers
import os
from typing import Any, Callable, Iterable, Sequence

import numpy as np

from . import _arrays, _checkpoint
from ._fitness import call_fitness, checked_fitness, takes_fidelity
from ._handle import NativeHandle
from ._lib import lib, msp_fitness_fn, msp_progress_fn, msp_search_progress
from ._progress import Progress
from .errors import InvalidArgumentError, InvalidStateError, MSPCancelled
from .levels import Level
from .plans import LevelTable, Plan, layer_names
from .problem import Problem, additive_costs, sensitivity_array
from .search_settings import SearchSettings

__all__ = ["Search"]


def _proxy_tables(proxy_costs: Any, num_layers: int, num_levels: int) -> np.ndarray:
    """The proxy cost tables as a ``[count, num_layers, num_levels]`` float64 array: None gives
    none; one table; a sequence of tables or a 3-D array."""
    if proxy_costs is None:
        return np.zeros((0, num_layers, num_levels))
    torch = _arrays.torch_of(proxy_costs)
    if (proxy_costs.dim() if torch is not None else np.ndim(proxy_costs)) == 3:
        return _arrays.float_array(proxy_costs, (None, num_layers, num_levels), "proxy_costs")
    return _arrays.float_array(proxy_costs, (num_layers, num_levels), "proxy_costs")[None]


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
            :class:`msp.Problem` and :func:`msp.plan`.
        sensitivity: one finite value >= 0 per layer (Fisher traces); None = all ones.
        settings: a :class:`msp.SearchSettings` (None = the defaults).
        names: one distinct layer name per layer, or None; every plan the search returns carries
            them (:attr:`msp.Plan.names`).
        **overrides: fields of :class:`msp.SearchSettings` (``generations=10``, ``seed=3``, ...)
            replacing those of ``settings``.

    Raises:
        TypeError: arguments of the wrong type, or an override that is not a setting.
        ValueError: bad values (``msp.InvalidArgumentError`` from the library, e.g. for a setting
            out of range); ``msp.InfeasibleError`` when the target is unreachable.

    Attributes:
        fidelity: the fidelity level of the last batch asked (0 = cheapest; ``fidelity_levels - 1``
            is the full fidelity that counts as a plan's fitness).
        note: any JSON-ready value the caller keeps with the search (None by default): :meth:`save`
            writes it and :meth:`load` restores it, e.g. a description of the problem the fitness
            belongs to, checked before resuming (``msp.torch.prune(checkpoint=...)`` does).

    The object owns its native handle: ``close()`` (or leaving a ``with`` block, or garbage
    collection) releases it; any later call raises ``msp.InvalidStateError``. Calls are serialised
    by a lock; a call from inside a running :meth:`run` (from the fitness function) raises
    ``msp.InvalidStateError``.
    """

    _free = staticmethod(lib.msp_search_free)
    _name = "the search"
    _running = False

    def __init__(self, sizes: Iterable[int], target: float, levels: Sequence[Any] | None = None,
                 sensitivity: Any = None, groups: Sequence[Any] | None = None, min_level: Any = None,
                 max_level: Any = None, tolerance: float = 0.001, *, settings: SearchSettings | None = None,
                 names: Iterable[str] | None = None, proxy_costs: Any = None, **overrides: Any) -> None:
        super().__init__()
        settings = SearchSettings.of(settings, overrides)
        params = settings.to_native()
        with Problem(
            sizes, target, levels, groups=groups, min_level=min_level, max_level=max_level, tolerance=tolerance
        ) as problem:
            checked_names = None if names is None else layer_names(names, problem.num_layers)
            values = sensitivity_array(sensitivity, problem.num_layers)
            tables = _proxy_tables(proxy_costs, problem.num_layers, len(problem.level_set))
            handle = ctypes.c_void_p()
            lib.msp_search_create(problem._ptr(), values.ctypes.data, ctypes.byref(params), ctypes.byref(handle))
        self._handle = handle.value
        try:
            for table in tables:
                lib.msp_search_add_proxy(self._handle, table.ctypes.data)
        except BaseException:
            self.close()
            raise
        self._adopt(problem.sizes, problem.level_set, problem.target, settings,
                    {**problem.settings(), **settings.to_json()}, checked_names)

    def _adopt(self, sizes: list[int], level_set: list[Level], target: float, settings: SearchSettings,
               params: dict, names: list[str] | None, history: Sequence[float] = (), generation: int = -1,
               fidelity: int = 0, finished: bool = False, note: Any = None) -> None:
        """Set up the Python side of the native search in ``self._handle``."""
        self._running = False
        self._error: BaseException | None = None
        self._nan = False
        self._callbacks: tuple | None = None
        self._evaluate: Callable[[np.ndarray, int], float] | None = None
        self._bar: Progress | None = None
        self._history = list(history)
        self._generation = generation
        self._finished = finished  # the last ask returned no candidates
        self.fidelity = fidelity
        self.note = note
        self._settings = settings
        self._sizes = list(sizes)
        self._level_set = list(level_set)
        self._target = target
        self._params = params
        self._num_layers = len(self._sizes)
        self._table = LevelTable(self._level_set, self._sizes)
        self._names = names
        self._max_batch = int(lib.msp_search_max_batch(self._handle))
        self._buffer = np.zeros(max(1, self._max_batch) * self._num_layers, dtype=np.int32)

    # --- checkpoints ------------------------------------------------------------------------------

    def save(self, path: str | os.PathLike) -> None:
        """Write the whole search to ``path``, replaced atomically (after a crash the file is the
        old one or the new one). :meth:`load` gives a search that continues exactly as this one
        would: the same candidates, given the same values told. Save between any two calls, with
        or without a batch pending (asked again after loading), also from inside :meth:`run`'s
        fitness function. The file holds about (plans proposed + plans evaluated) x layers bytes;
        its format is described in ``msp/_checkpoint.py``.

        Raises:
            OSError: the file cannot be written.
            TypeError, ValueError: :attr:`note` is not JSON-ready (the file is left as it was).
            msp.InvalidStateError: the search is closed.
        """
        with self._lock:
            handle = NativeHandle._ptr(self)  # reading only: allowed inside run() too
            size = ctypes.c_int64()
            lib.msp_search_save_size(handle, ctypes.byref(size))
            native = ctypes.create_string_buffer(size.value)
            lib.msp_search_save(handle, native, size.value, ctypes.byref(size))
            meta = {
                "sizes": self._sizes, "levels": [level.to_json() for level in self._level_set],
                "target": self._target, "settings": dataclasses.asdict(self._settings), "params": self._params,
                "names": self._names, "history": [_checkpoint.encode_float(v) for v in self._history],
                "generation": self._generation, "fidelity": self.fidelity, "finished": self._finished,
                "note": self.note,
            }
            data = _checkpoint.pack(meta, native.raw[: size.value])
        _checkpoint.write_atomically(path, data)

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Search":
        """The search :meth:`save` wrote to ``path``, ready to go on (``ask``, ``tell``, ``run``,
        ``best``). Everything read is checked: the file's SHA-256 and fields, then the library
        checks the native state field by field.

        Raises:
            OSError: the file cannot be read.
            msp.InvalidArgumentError: not a search file, or a truncated, corrupted or foreign one
                (the message says what is wrong).
        """
        name = os.fspath(path)
        with open(name, "rb") as file:
            meta, native = _checkpoint.unpack(file.read(), name)
        try:
            field = _checkpoint.Fields(meta, name)
            table = LevelTable([Level.from_json(v) for v in field("levels", list)], field("sizes", list))
            settings = SearchSettings(**field("settings", dict))
            names = field("names", (list, type(None)))
            names = None if names is None else layer_names(names, len(table.sizes))
            history = [_checkpoint.decode_float(v, name, "history") for v in field("history", list)]
            state = dict(generation=field("generation", int), fidelity=field("fidelity", int),
                         finished=field("finished", bool), note=meta.get("note"))
            target, params = float(field("target", (int, float))), field("params", dict)
        except InvalidArgumentError:
            raise
        except (TypeError, ValueError, KeyError) as error:
            raise InvalidArgumentError(f"{name} is not a valid msp search file: {error}") from None
        search = cls.__new__(cls)
        NativeHandle.__init__(search)
        handle = ctypes.c_void_p()
        lib.msp_search_load(ctypes.create_string_buffer(native, len(native)), len(native), ctypes.byref(handle))
        search._handle = handle.value
        search._adopt(table.sizes, table.level_set, target, settings, params, names, history, **state)
        native_generation = search._progress(search._handle).generation
        if native_generation != state["generation"] or len(history) != state["generation"] + 1:
            search.close()
            raise InvalidArgumentError(
                f"{name} is not a valid msp search file: its JSON (generation {state['generation']}, "
                f"{len(history)} history values) does not describe its native state (generation {native_generation})")
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
        return f"<msp Search: {self._num_layers} layers, target={self._target}, seed={self.settings.seed}>"

    # --- plans ------------------------------------------------------------------------------------

    @property
    def sizes(self) -> list[int]:
        """Parameter count of every layer."""
        return list(self._sizes)

    @property
    def settings(self) -> SearchSettings:
        """The :class:`msp.SearchSettings` in use (``settings`` with the overrides applied)."""
        return self._settings

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
        return Plan.of_checked(
            levels, self._table, target=self._target, method="search", params=self._params, seed=self.settings.seed,
            names=self._names, **fields,
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
            self._finished = count.value == 0
            rows = self._buffer[: count.value * self._num_layers].reshape(count.value, self._num_layers).tolist()
        return [self._plan(row) for row in rows]

    def tell(self, values: Iterable[float]) -> None:
        """Report the fitness of the last batch asked, in the order asked (lower is better;
        ``float("inf")`` marks a plan as worst).

        Telling no values after an :meth:`ask` that returned no candidates (the search is done)
        is a no-op, so both ``while candidates := search.ask(): search.tell(...)`` and
        ``while not search.done: search.tell(evaluate(search.ask()))`` are correct loops.

        Raises:
            TypeError: values that are not real numbers.
            ValueError: not one-dimensional; ``msp.InvalidArgumentError`` for NaN or -inf.
            msp.InvalidStateError: no batch pending (tell before ask, or twice), or a different
                number of values than candidates. The search is unchanged on any error.
        """
        if _arrays.torch_of(values) is None and not isinstance(values, np.ndarray):
            values = _arrays.sequence(values, "values")
            for i, v in enumerate(values):
                if isinstance(v, bool) or not isinstance(v, numbers.Real):
                    raise TypeError(f"values[{i}] must be a real number, got {type(v).__name__}")
        array = _arrays.float_array(values, (None,), "values (one per candidate)")
        with self._lock:
            handle = self._ptr()
            if array.size == 0 and self._finished:
                return
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
        fitness = checked_fitness(fitness)
        with_fidelity = takes_fidelity(fitness)

        def evaluate(levels: np.ndarray, fidelity: int) -> float:
            return call_fitness(fitness, self._plan(levels.tolist()), fidelity, with_fidelity)

        return self._run(evaluate, progress)

    def run_additive(self, cost_table: Any, progress: bool = True) -> Plan:
        """Drive the search to its end with an additive fitness, ``sum_l cost_table[l, level_l]``,
        and return the best plan (the exact optimum is ``msp.plan(method="exact")``; the search is
        for costs that stand in for a fitness that is expensive or not additive).

        Args:
            cost_table: ``[num_layers, num_levels]`` finite numbers (e.g. from ``msp.cost_table``).
            progress: show a progress bar (tqdm when installed, else a line on stderr).

        Raises:
            TypeError: not real numbers.
            ValueError: another shape, or a non-finite cost.
        """
        costs = additive_costs(cost_table, self._num_layers, len(self._level_set))
        if not np.isfinite(costs).all():
            raise ValueError("cost_table holds a non-finite value")
        rows = np.arange(self._num_layers)

        def evaluate(levels: np.ndarray, fidelity: int) -> float:
            return float(costs[rows, levels].sum())

        return self._run(evaluate, progress)

    def _run(self, evaluate: Callable[[np.ndarray, int], float], progress: bool) -> Plan:
        """Run with ``evaluate(levels_view, fidelity) -> float``; see :meth:`run`."""
        with self._lock:
            handle = self._ptr()
            self._error, self._nan = None, False
            self._evaluate = evaluate
            self._bar = Progress("msp search", self.settings.generations + 1, "generations", bool(progress))
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
            info = {"evaluations": state.evaluations, "best fitness": f"{state.best_fitness:.6g}"}
            self._bar.reach(state.generation + 1, info)  # the prior grid is generation 0
            return 0
        except BaseException as error:
            self._error = error
            return 1
