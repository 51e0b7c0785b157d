"""``msp.plan``: choose one sparsity level per layer so that the average sparsity hits a target.

::

    levels = msp.nm_levels(m=8)                       # 8:8 (dense) .. 1:8
    plan = msp.plan(sizes, target=0.75, levels=levels, sensitivity=traces, fitness=perplexity)
    plan = msp.plan(sizes, 0.75, levels, sensitivity=traces, method="prior")   # no fitness needed

The planning methods: the evolutionary search (``msp.Search``), the sensitivity prior and the
uniform plan (``msp.Problem.prior``), and the exact optimum of additive costs
(``msp.Problem.solve_additive``). Every plan meets the budget, bounds and groups of its
:class:`msp.Problem`.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable, Sequence

from ._convert import INT32_MAX, flag, ranged
from ._fitness import call_fitness, checked_fitness, takes_fidelity
from .plans import Plan
from .problem import Problem
from .search import Search
from .search_settings import SearchSettings

__all__ = ["plan", "METHODS"]

METHODS = ("search", "prior", "exact", "uniform")
"""The planning methods of :func:`plan`."""


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
    *,
    settings: SearchSettings | None = None,
    progress: bool = True,
    names: Iterable[str] | None = None,
    proxy_costs: Any = None,
    **overrides: Any,
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
        method: the planning method: "search" (evolutionary search from the sensitivity prior;
            needs ``fitness`` or ``cost_table``), "prior" (the sensitivity prior alone), "exact"
            (the optimum of the additive ``cost_table``), or "uniform" (the prior at strength 0:
            the same level everywhere whenever that is feasible).
        cost_table: ``[num_layers, num_levels]`` additive costs (e.g. ``msp.cost_table``). Needed
            by "exact"; the fitness of "search" when ``fitness`` is None.
        tolerance: allowed distance of the average sparsity from ``target``, in [0, 0.5].
        settings: the search settings (:class:`msp.SearchSettings`; None = the defaults). "prior"
            uses its ``prior_strength`` and ``per_parameter``; a fitness evaluated once is told the
            full fidelity ``fidelity_levels - 1``.
        progress: show a progress bar during a search (tqdm when installed, else stderr).
        names: one distinct layer name per layer, in layer order (e.g. ``list(layers)``), or
            None: the plan carries them (:attr:`msp.Plan.names`), so ``plan.to_dict()``,
            ``plan.summary()`` and a saved plan need no separate list. Candidate plans handed to
            ``fitness`` carry them too.
        proxy_costs: "search" only: None, one ``[num_layers, num_levels]`` table of additive costs
            that should track the fitness (e.g. ``msp.cost_table`` of every layer), or a sequence
            of them (at most 8): each table's exact optimum joins the first generation, and the
            search's surrogate leans on the tables where its evaluations say little.
        **overrides: fields of :class:`msp.SearchSettings` (``generations=10``, ``seed=3``,
            ``prior_strength=2.0``, ...) replacing those of ``settings``.

    Returns:
        The :class:`msp.Plan`, with ``fitness`` (the fitness function's value if one was given,
        else the additive cost if a cost table was given, else None), ``history`` (best fitness
        per search generation) and ``evaluations``.

    Raises:
        TypeError: bad argument types, or an override that is not a search setting (the message
            lists them).
        ValueError: bad values (``msp.InvalidArgumentError`` from the library is a ValueError);
            ``msp.InfeasibleError`` (a ValueError) when the target is unreachable, its message
            giving the reachable range.
        Whatever ``fitness`` raised, unchanged; ``msp.MSPCancelled`` when it returned NaN.
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {', '.join(repr(m) for m in METHODS)}; got {method!r}")
    fitness = checked_fitness(fitness, optional=True)
    settings = SearchSettings.of(settings, overrides)
    progress = flag(progress, "progress")
    if method == "search":
        if fitness is None and cost_table is None:
            raise ValueError("method='search' needs a fitness function (or a cost_table for an additive fitness)")
        with Search(sizes, target, levels, sensitivity, groups, min_level, max_level, tolerance,
                    settings=settings, names=names, proxy_costs=proxy_costs) as search:
            if fitness is not None:
                return search.run(fitness, progress=progress)
            return search.run_additive(cost_table, progress=progress)

    if method == "exact" and cost_table is None:
        raise ValueError("method='exact' needs a cost_table ([num_layers, num_levels] additive costs)")
    if method == "prior" and sensitivity is None:
        raise ValueError("method='prior' needs sensitivity (one value per layer, e.g. Fisher traces)")
    with Problem(
        sizes, target, levels, groups=groups, min_level=min_level, max_level=max_level, tolerance=tolerance
    ) as problem:
        params = problem.settings()
        total = None
        if method == "exact":
            chosen, total = problem.solve_additive(cost_table)
        elif method == "prior":
            chosen = problem.prior(sensitivity, settings.prior_strength, settings.per_parameter)
            params.update(prior_strength=settings.prior_strength, per_parameter=settings.per_parameter)
        else:
            chosen = problem.prior(sensitivity, 0.0, False)
        if total is None and cost_table is not None:
            total = problem.additive_cost(cost_table, chosen)
        result = Plan(chosen, problem.level_set, problem.sizes, fitness=total, target=problem.target, method=method,
                      params=params, names=names)
    if fitness is not None:
        full = ranged(settings.fidelity_levels, "fidelity_levels", 1, INT32_MAX) - 1
        result.fitness = call_fitness(fitness, result, full, takes_fidelity(fitness))
        result.evaluations = 1
    return result
