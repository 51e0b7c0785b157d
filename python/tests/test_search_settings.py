"""msp.search_settings: SearchSettings (defaults, checks, the native struct) and how msp.plan and
msp.Search share it."""

import dataclasses

import numpy as np
import pytest

import msp
from msp import Search, SearchSettings, plan
from msp._lib import lib
from planning_reference import additive

FIELDS = ["generations", "offspring", "survivors", "mutation_rate", "crossover_rate", "seed", "prior_strength",
          "per_parameter", "prior_grid", "max_evaluations", "patience", "fidelity_levels", "fidelity_keep",
          "surrogate_candidates", "surrogate_ridge", "surrogate_exploration", "pair_rate"]
# The field of msp_search_params each setting fills (msp.h).
NATIVE = {name: name for name in FIELDS} | {"per_parameter": "prior_per_parameter"}


def test_the_fields_are_those_of_msp_search_params():
    assert [field.name for field in dataclasses.fields(SearchSettings)] == FIELDS
    struct_fields = [name for name, _ in type(lib.msp_search_params_default())._fields_]
    assert struct_fields == ["struct_size"] + [NATIVE[name] for name in FIELDS]


def test_the_defaults_are_the_documented_ones_and_the_librarys():
    documented = dict(generations=20, offspring=8, survivors=4, mutation_rate=0.5, crossover_rate=0.5, seed=0,
                      prior_strength=1.0, per_parameter=False, prior_grid=True, max_evaluations=0, patience=0,
                      fidelity_levels=1, fidelity_keep=0.25, surrogate_candidates=2, surrogate_ridge=0.3,
                      surrogate_exploration=1.0, pair_rate=0.3)
    assert dataclasses.asdict(SearchSettings()) == documented
    native = lib.msp_search_params_default()
    assert {name: getattr(native, NATIVE[name]) for name in FIELDS} == {
        name: int(value) if isinstance(value, bool) else value for name, value in documented.items()}


def test_to_native_fills_every_field():
    settings = SearchSettings(generations=3, offspring=5, survivors=2, mutation_rate=0.25, crossover_rate=0.75,
                              seed=2**64 - 1, prior_strength=2.5, per_parameter=True, prior_grid=False,
                              max_evaluations=2**40, patience=7, fidelity_levels=2, fidelity_keep=0.5,
                              surrogate_candidates=3, surrogate_ridge=0.25, surrogate_exploration=2.0, pair_rate=0.5)
    native = settings.to_native()
    assert native.struct_size == lib.msp_search_params_default().struct_size
    for name in FIELDS:
        assert getattr(native, NATIVE[name]) == getattr(settings, name), name
    assert settings.to_json() == {name: getattr(settings, name) for name in FIELDS if name != "seed"}


def test_settings_are_frozen_and_checked_once():
    settings = SearchSettings(generations=np.int64(4), mutation_rate=1)
    assert type(settings.generations) is int and type(settings.mutation_rate) is float
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.generations = 5
    for wrong in (dict(generations=2.0), dict(generations=True), dict(prior_grid=1), dict(seed="0"),
                  dict(fidelity_keep="0.5")):
        with pytest.raises(TypeError):
            SearchSettings(**wrong)
    for outside in (dict(offspring=2**31), dict(seed=-1), dict(seed=2**64), dict(max_evaluations=2**63)):
        with pytest.raises(msp.InvalidArgumentError):
            SearchSettings(**outside)


def test_overrides_replace_fields_and_unknown_names_list_the_settings():
    base = SearchSettings(generations=3, seed=9)
    assert SearchSettings.of(base, {"offspring": 4}) == SearchSettings(generations=3, seed=9, offspring=4)
    assert SearchSettings.of(None, {}) == SearchSettings() and SearchSettings.of(base) is base
    with pytest.raises(TypeError, match="'generation'.*generations, offspring, survivors"):
        SearchSettings.of(base, {"generation": 3})
    with pytest.raises(TypeError, match="SearchSettings"):
        SearchSettings.of({"generations": 3})


def _problem():
    rng = np.random.default_rng(4)
    sizes = [int(s) for s in rng.integers(100, 2000, 12)]
    return sizes, rng.random((12, 8)), rng.lognormal(0, 1, 12)


def test_plan_and_search_take_settings_or_keywords_alike():
    sizes, costs, sensitivity = _problem()
    settings = SearchSettings(generations=4, offspring=6, seed=5, prior_grid=False, prior_strength=2.0)
    fitness = lambda p: additive(costs, p.levels)  # noqa: E731
    by_settings = plan(sizes, 0.6, sensitivity=sensitivity, fitness=fitness, settings=settings, progress=False)
    by_keywords = plan(sizes, 0.6, sensitivity=sensitivity, fitness=fitness, progress=False,
                       **dataclasses.asdict(settings))
    assert by_settings == by_keywords and by_settings.seed == 5 and by_settings.params["generations"] == 4
    with Search(sizes, 0.6, sensitivity=sensitivity, settings=settings) as search:
        assert search.settings == settings
        while candidates := search.ask():
            search.tell([fitness(c) for c in candidates])
        assert search.best == by_settings
    # Keywords override the settings; another seed explores differently.
    other = plan(sizes, 0.6, sensitivity=sensitivity, fitness=fitness, settings=settings, seed=6, progress=False)
    assert other.seed == 6 and other.params == by_settings.params


def test_the_prior_method_takes_its_strength_from_the_settings():
    sizes, _, sensitivity = _problem()
    strong = SearchSettings(prior_strength=3.0, per_parameter=True)
    by_settings = plan(sizes, 0.6, sensitivity=sensitivity, method="prior", settings=strong)
    by_keywords = plan(sizes, 0.6, sensitivity=sensitivity, method="prior", prior_strength=3.0, per_parameter=True)
    with msp.Problem(sizes, 0.6) as problem:
        expected = problem.prior(sensitivity, 3.0, True)
    assert by_settings.levels == by_keywords.levels == expected
    assert by_settings.params["prior_strength"] == 3.0 and by_settings.params["per_parameter"] is True


def test_unknown_settings_are_type_errors_everywhere():
    sizes, costs, _ = _problem()
    with pytest.raises(TypeError, match="'generation'.*fidelity_keep"):
        plan(sizes, 0.6, cost_table=costs, generation=3, progress=False)
    with pytest.raises(TypeError, match="'offsprings'"):
        Search(sizes, 0.6, offsprings=3)
    with pytest.raises(TypeError, match="SearchSettings"):
        Search(sizes, 0.6, settings=dict(generations=3))
