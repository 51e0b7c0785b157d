"""``msp.SearchSettings``: the settings of the evolutionary search, shared by ``msp.plan``,
``msp.Search`` and ``msp.torch.prune``.

The fields are those of ``msp_search_params`` in ``msp.h`` and their defaults are the library's
(``msp_search_params_default()``)::

    settings = msp.SearchSettings(generations=10, offspring=8, seed=3)
    plan = msp.plan(sizes, 0.75, levels, sensitivity=traces, fitness=fitness, settings=settings)
    plan = msp.plan(sizes, 0.75, levels, sensitivity=traces, fitness=fitness, generations=10, seed=3)

Every entry point also takes the field names as keywords (``**overrides``), applied on top of
``settings``. Types and the C ranges of the fields are checked when a ``SearchSettings`` is made;
the library checks their values (e.g. ``generations > 0``) when a search is created, and reports a
bad one as ``msp.InvalidArgumentError``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Mapping

from ._convert import c_integer, flag, real
from ._lib import lib, msp_search_params

__all__ = ["SearchSettings"]

_DEFAULTS = lib.msp_search_params_default()

# Each field's converter and its name in msp_search_params.
_FIELDS: dict[str, tuple[Any, str]] = {
    "generations": (c_integer, "generations"),
    "offspring": (c_integer, "offspring"),
    "survivors": (c_integer, "survivors"),
    "mutation_rate": (real, "mutation_rate"),
    "crossover_rate": (real, "crossover_rate"),
    "seed": (lambda value, name: c_integer(value, name, "uint64"), "seed"),
    "prior_strength": (real, "prior_strength"),
    "per_parameter": (flag, "prior_per_parameter"),
    "prior_grid": (flag, "prior_grid"),
    "max_evaluations": (lambda value, name: c_integer(value, name, "int64"), "max_evaluations"),
    "patience": (c_integer, "patience"),
    "fidelity_levels": (c_integer, "fidelity_levels"),
    "fidelity_keep": (real, "fidelity_keep"),
    "surrogate_candidates": (c_integer, "surrogate_candidates"),
    "surrogate_ridge": (real, "surrogate_ridge"),
    "surrogate_exploration": (real, "surrogate_exploration"),
    "pair_rate": (real, "pair_rate"),
}


@dataclass(frozen=True)
class SearchSettings:
    """The evolutionary search's settings (``msp_search_params``); immutable and checked once.

    Attributes:
        generations: generations after the prior grid (> 0; default 20).
        offspring: new plans per generation (> 0; default 8).
        survivors: best plans kept as parents (> 0; default 4).
        mutation_rate: chance per offspring of extra mutation moves, in [0, 1] (default 0.5).
        crossover_rate: chance an offspring has two parents, in [0, 1] (default 0.5).
        seed: the random seed, an integer in [0, 2^64) (default 0).
        prior_strength: strength of the seed prior when ``prior_grid`` is False (>= 0; default 1);
            also the strength of ``msp.plan(method="prior")``.
        per_parameter: normalise each layer's sensitivity by its size in that prior (default False).
        prior_grid: first evaluate a small grid of priors and seed from the best (default True).
        max_evaluations: stop after this many full-fidelity evaluations; 0 = no limit.
        patience: stop after this many generations without improvement; 0 = never.
        fidelity_levels: >= 1 (default 1: single fidelity); a fitness with a ``fidelity``
            parameter is told the level of each evaluation (0 = cheapest).
        fidelity_keep: fraction promoted to the next fidelity, in (0, 1] (default 0.25).
        surrogate_candidates: offspring per generation proposed by the surrogate, the exact
            optimum of an additive model fitted to every full-fidelity evaluation (and shrunk
            toward the proxy tables given to the search), in [0, MSP_MAX_OFFSPRING]; at most
            ``offspring`` are used; 0 = off (default 2).
        surrogate_ridge: how many evaluations' weight pulls each (layer, level) correction of the
            surrogate toward the proxies (toward 0 without them); finite, > 0 (default 0.3).
        surrogate_exploration: scale of the random perturbation of the surrogate for its second
            and later candidates of a generation; finite, >= 0 (default 1).
        pair_rate: chance that a mutation move is paired with the opposite move of the layer (or
            group) that best cancels its change of the average sparsity, in [0, 1] (default 0.3).

    Raises:
        TypeError: a field of the wrong type (bools are not integers; flags must be bools).
        msp.InvalidArgumentError: an integer outside its C type (``seed`` outside [0, 2^64)).
    """

    generations: int = _DEFAULTS.generations
    offspring: int = _DEFAULTS.offspring
    survivors: int = _DEFAULTS.survivors
    mutation_rate: float = _DEFAULTS.mutation_rate
    crossover_rate: float = _DEFAULTS.crossover_rate
    seed: int = _DEFAULTS.seed
    prior_strength: float = _DEFAULTS.prior_strength
    per_parameter: bool = bool(_DEFAULTS.prior_per_parameter)
    prior_grid: bool = bool(_DEFAULTS.prior_grid)
    max_evaluations: int = _DEFAULTS.max_evaluations
    patience: int = _DEFAULTS.patience
    fidelity_levels: int = _DEFAULTS.fidelity_levels
    fidelity_keep: float = _DEFAULTS.fidelity_keep
    surrogate_candidates: int = _DEFAULTS.surrogate_candidates
    surrogate_ridge: float = _DEFAULTS.surrogate_ridge
    surrogate_exploration: float = _DEFAULTS.surrogate_exploration
    pair_rate: float = _DEFAULTS.pair_rate

    def __post_init__(self) -> None:
        for name, (convert, _) in _FIELDS.items():
            object.__setattr__(self, name, convert(getattr(self, name), name))

    @classmethod
    def of(cls, settings: "SearchSettings | None" = None, overrides: Mapping[str, Any] | None = None) -> "SearchSettings":
        """``settings`` (default: the defaults) with the fields named in ``overrides`` replaced.

        Raises:
            TypeError: ``settings`` is not a ``SearchSettings``, or ``overrides`` names something
                that is not a field (the message lists the fields).
        """
        if settings is None:
            settings = cls()
        elif not isinstance(settings, cls):
            raise TypeError(f"settings must be a msp.SearchSettings or None, got {type(settings).__name__}")
        overrides = dict(overrides or {})
        unknown = sorted(set(overrides) - set(_FIELDS))
        if unknown:
            raise TypeError(
                f"unknown search setting(s) {', '.join(map(repr, unknown))}; the settings are "
                f"{', '.join(_FIELDS)}"
            )
        return dataclasses.replace(settings, **overrides) if overrides else settings

    def to_native(self) -> msp_search_params:
        """The settings as the library's ``msp_search_params`` struct (``struct_size`` set)."""
        params = lib.msp_search_params_default()
        for name, (_, field) in _FIELDS.items():
            setattr(params, field, getattr(self, name))
        return params

    def to_json(self) -> dict:
        """The settings other than the seed as a JSON-ready dict (what a plan's ``params`` records;
        the plan keeps the seed in ``plan.seed``)."""
        return {name: getattr(self, name) for name in _FIELDS if name != "seed"}
