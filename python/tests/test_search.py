"""msp.search: the Search handle (ask/tell, run, run_additive, progress, misuse, lifetime).

Every property is checked against a reference written here, never against the library itself: the
search with additive costs against the exact optimum, ask/tell against run, history and budgets
recomputed from the fitness values told."""

import gc
import math
import sys

import numpy as np
import pytest

from msp import Problem, Search, plan
from msp.errors import InvalidArgumentError, InvalidStateError, MSPCancelled
from msp.levels import nm_levels, ratio_levels
from planning_reference import additive, small_problem, structured_costs


# --- the search ------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_search_with_additive_fitness_reaches_the_exact_optimum_within_one_percent(seed):
    rng = np.random.default_rng(seed)
    sizes = [int(s) for s in rng.choice([1, 3, 4], 32) * rng.integers(1, 5, 32) * 4096]
    levels = nm_levels(8)
    sensitivity = rng.lognormal(0, 1, 32)
    costs = structured_costs(rng, sizes, levels, sensitivity)
    exact = plan(sizes, 0.7, levels, method="exact", cost_table=costs)
    found = plan(sizes, 0.7, levels, sensitivity=sensitivity, cost_table=costs, seed=seed, progress=False)
    assert found.method == "search"
    assert exact.fitness <= found.fitness + 1e-9  # the exact optimum is never beaten
    assert (found.fitness - exact.fitness) / exact.fitness <= 0.01
    # The same values from a Python fitness callable give the same search (bit for bit: the surrogate
    # fits the values, so a sum rounded another way would take another path).
    called = plan(sizes, 0.7, levels, sensitivity=sensitivity, seed=seed, progress=False,
                  fitness=lambda p: float(costs[np.arange(32), p.levels].sum()))
    assert called.levels == found.levels and called.history == found.history


def _recorded_search(seed, **kwargs):
    rng = np.random.default_rng(7)
    sizes = [int(s) for s in rng.integers(100, 2000, 20)]
    sensitivity = rng.lognormal(0, 1, 20)
    noise = rng.random((20, 8))
    calls = []

    def fitness(candidate):  # deterministic, not additive
        calls.append(tuple(candidate.levels))
        value = additive(noise, candidate.levels)
        return value + 0.1 * math.sin(sum((i + 1) * k for i, k in enumerate(candidate.levels)))

    result = plan(sizes, 0.6, sensitivity=sensitivity, fitness=fitness, seed=seed, generations=10,
                  progress=False, **kwargs)
    return result, calls


def test_same_seed_same_plan_and_history_different_seed_explores_differently():
    first, calls_first = _recorded_search(3)
    again, calls_again = _recorded_search(3)
    assert first.levels == again.levels
    assert first.fitness == again.fitness
    assert first.history == again.history
    assert first.evaluations == again.evaluations
    assert calls_first == calls_again
    other, calls_other = _recorded_search(4)
    assert calls_other != calls_first
    assert calls_other[0] == calls_first[0]  # the prior grid does not depend on the seed
    assert first.seed == 3 and other.seed == 4


def test_history_is_best_per_generation():
    result, calls = _recorded_search(0)
    assert len(result.history) == result.params["generations"] + 1  # the prior grid is generation 0
    assert all(b <= a for a, b in zip(result.history, result.history[1:]))
    assert result.history[-1] == result.fitness
    assert result.evaluations == len(calls)


def test_max_evaluations_and_patience_stop_early():
    result, calls = _recorded_search(0, max_evaluations=20)
    assert result.evaluations == len(calls) <= 20
    result, calls = _recorded_search(0, patience=1)
    assert len(result.history) < 11


def test_ask_tell_equals_run():
    rng = np.random.default_rng(5)
    sizes = [int(s) for s in rng.integers(100, 2000, 16)]
    sensitivity = rng.lognormal(0, 1, 16)
    costs = structured_costs(rng, sizes, nm_levels(8), sensitivity)
    settings = dict(sensitivity=sensitivity, seed=11, generations=8, offspring=6)
    with Search(sizes, 0.65, **settings) as search:
        while candidates := search.ask():
            assert search.ask() == candidates  # asking again before tell gives the same batch
            search.tell(np.array([additive(costs, c.levels) for c in candidates]))
        by_hand = search.best
        assert search.ask() == [] and search.done
        assert search.history == by_hand.history
    run = plan(sizes, 0.65, fitness=lambda p: additive(costs, p.levels), progress=False, **settings)
    assert run.levels == by_hand.levels
    assert run.history == by_hand.history
    assert run.evaluations == by_hand.evaluations
    assert run.params == by_hand.params


def test_multi_fidelity_passes_the_fidelity_to_fitness():
    rng = np.random.default_rng(8)
    sizes = [int(s) for s in rng.integers(100, 2000, 12)]
    costs = rng.random((12, 8))
    fidelities = []

    def fitness(candidate, fidelity):
        fidelities.append(fidelity)
        return additive(costs, candidate.levels) + (0.01 if fidelity == 0 else 0.0)

    result = plan(sizes, 0.5, fitness=fitness, fidelity_levels=2, fidelity_keep=0.5, generations=4,
                  progress=False)
    assert set(fidelities) == {0, 1}
    assert result.fitness == pytest.approx(additive(costs, result.levels))
    with Search(sizes, 0.5, fidelity_levels=3, generations=3) as search:
        seen = set()
        while candidates := search.ask():
            seen.add(search.fidelity)
            search.tell([additive(costs, c.levels) for c in candidates])
        assert seen == {0, 1, 2}
        assert search.progress["cheap_evaluations"] > 0
    # A fitness without a fidelity parameter is simply called with the plan.
    plain = plan(sizes, 0.5, fitness=lambda p: additive(costs, p.levels), fidelity_levels=2, generations=2,
                 progress=False)
    assert plain.fitness is not None


# --- errors inside fitness ---------------------------------------------------------------------------


class Boom(Exception):
    pass


class Halt(BaseException):  # like KeyboardInterrupt
    pass


@pytest.mark.parametrize("raise_at", [1, 25])
@pytest.mark.parametrize("kind", [Boom, Halt])
def test_an_exception_in_fitness_propagates_unchanged(raise_at, kind):
    sizes, costs = small_problem()
    error = kind("from fitness")
    calls = []

    def fitness(candidate):
        calls.append(candidate)
        if len(calls) == raise_at:
            raise error
        return additive(costs, candidate.levels)

    with pytest.raises(kind) as info:
        plan(sizes, 0.5, fitness=fitness, generations=10, progress=False)
    assert info.value is error
    assert len(calls) == raise_at  # cancelled at once


def test_search_stays_usable_after_an_exception_in_fitness():
    sizes, costs = small_problem()
    error = Boom("stop")
    calls = []

    def fitness(candidate):
        calls.append(candidate)
        if len(calls) == 20:
            raise error
        return additive(costs, candidate.levels)

    search = Search(sizes, 0.5, generations=6)
    with pytest.raises(Boom) as info:
        search.run(fitness, progress=False)
    assert info.value is error
    best = search.best
    values = [additive(costs, c.levels) for c in calls[:-1]]
    assert best is not None and best.fitness in values and best.fitness >= min(values)
    assert search.progress["evaluations"] < len(calls) and not search.progress["done"]
    candidates = search.ask()
    assert candidates
    search.tell([additive(costs, c.levels) for c in candidates])
    finished = search.run(lambda p: additive(costs, p.levels), progress=False)
    assert search.done and finished.fitness <= best.fitness
    search.close()
    search.close()  # idempotent
    with pytest.raises(InvalidStateError):
        search.ask()


@pytest.mark.parametrize("value", ["1.0", None, True, np.array([1.0]), [1.0]])
def test_fitness_returning_a_non_number_raises_type_error(value):
    sizes, _ = small_problem()
    with pytest.raises(TypeError, match="must return a float"):
        plan(sizes, 0.5, fitness=lambda p: value, progress=False)


def test_fitness_numpy_scalars_and_inf_are_accepted():
    sizes, costs = small_problem()
    result = plan(sizes, 0.5, fitness=lambda p: np.float32(additive(costs, p.levels)), generations=2, progress=False)
    assert isinstance(result.fitness, float)
    worst = plan(sizes, 0.5, fitness=lambda p: math.inf, generations=2, progress=False)
    assert worst.fitness == math.inf


def test_nan_fitness_cancels():
    sizes, _ = small_problem()
    with pytest.raises(MSPCancelled, match="NaN"):
        plan(sizes, 0.5, fitness=lambda p: float("nan"), progress=False)
    with pytest.raises(ValueError, match="-inf"):
        plan(sizes, 0.5, fitness=lambda p: -math.inf, progress=False)


def test_calls_into_a_running_search_from_fitness_are_refused():
    sizes, costs = small_problem()
    search = Search(sizes, 0.5, generations=2)
    with pytest.raises(InvalidStateError, match="running"):
        search.run(lambda p: search.ask(), progress=False)
    with pytest.raises(InvalidStateError):
        search.run(lambda p: search.close(), progress=False)
    assert not search.closed
    assert search.run(lambda p: additive(costs, p.levels), progress=False).fitness is not None
    search.close()


# --- progress ----------------------------------------------------------------------------------------


def test_progress_bar(capsys):
    sizes, costs = small_problem()
    plan(sizes, 0.5, cost_table=costs, generations=3, progress=True)
    err = capsys.readouterr().err
    assert "msp search" in err and "evaluations" in err


def test_progress_line_without_tqdm(capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "tqdm", None)  # `import tqdm` now fails
    sizes, costs = small_problem()
    plan(sizes, 0.5, cost_table=costs, generations=3, progress=True)
    err = capsys.readouterr().err
    assert "msp search: 4/4 generations" in err and "best fitness" in err


def test_no_progress_output_when_disabled(capsys):
    sizes, costs = small_problem()
    plan(sizes, 0.5, cost_table=costs, generations=3, progress=False)
    assert capsys.readouterr().err == ""


# --- ask/tell misuse and handle lifetime --------------------------------------------------------------


def test_both_documented_loops_find_the_same_plan_and_an_empty_tell_after_the_end_is_a_no_op():
    sizes, costs = small_problem()
    settings = dict(seed=3, generations=3, offspring=4)

    def evaluate(candidates):
        return [additive(costs, c.levels) for c in candidates]

    with Search(sizes, 0.5, **settings) as walrus:
        while candidates := walrus.ask():
            walrus.tell(evaluate(candidates))
        expected = walrus.best
    with Search(sizes, 0.5, **settings) as search:
        while not search.done:
            search.tell(evaluate(search.ask()))  # may end with an empty ask and an empty tell
        assert search.best == expected
        assert search.progress["evaluations"] == expected.evaluations
        assert search.ask() == []
        search.tell([])  # done: nothing to tell, nothing changes
        assert search.best == expected and search.progress["evaluations"] == expected.evaluations
    with Search([10, 20], 0.5, ratio_levels([0.25, 0.5, 0.75]), generations=1) as tiny:
        # One plan meets the budget: done only shows after an empty ask, so the loop tells [] once.
        told = []
        while not tiny.done:
            candidates = tiny.ask()
            tiny.tell([sum(c.levels) for c in candidates])
            told.append(len(candidates))
        assert told == [1, 0] and tiny.best.levels == [1, 1]
    with Search(sizes, 0.5, **settings) as fresh:
        with pytest.raises(InvalidStateError, match="ask first"):
            fresh.tell([])  # before any ask an empty tell is still a misuse
        fresh.ask()
        with pytest.raises(InvalidStateError):
            fresh.tell([])  # a pending non-empty batch needs its values


def test_tell_misuse_raises_typed_errors_and_changes_nothing():
    sizes, costs = small_problem()
    with Search(sizes, 0.5, generations=2) as search:
        assert search.best is None
        with pytest.raises(InvalidStateError, match="ask first"):
            search.tell([1.0])  # before ask
        candidates = search.ask()
        values = [additive(costs, c.levels) for c in candidates]
        with pytest.raises(InvalidStateError):
            search.tell(values[:-1])
        with pytest.raises(InvalidStateError):
            search.tell(values + [1.0])
        with pytest.raises(InvalidArgumentError):
            search.tell([math.nan] + values[1:])
        with pytest.raises(InvalidArgumentError):
            search.tell([-math.inf] + values[1:])
        with pytest.raises(TypeError):
            search.tell(["x"] * len(values))
        with pytest.raises(ValueError):
            search.tell(np.array([values]))
        assert search.ask() == candidates  # still pending
        search.tell(values)
        with pytest.raises(InvalidStateError):
            search.tell(values)  # twice
        assert search.progress["generation"] == 0 and search.progress["evaluations"] == len(values)


def test_use_after_close_raises_invalid_state():
    sizes, costs = small_problem()
    search = Search(sizes, 0.5)
    search.close()
    for call in (search.ask, lambda: search.tell([1.0]), lambda: search.best, lambda: search.progress,
                 lambda: search.done, lambda: search.history, lambda: search.run(lambda p: 1.0)):
        with pytest.raises(InvalidStateError):
            call()
    with Search(sizes, 0.5) as other:
        pass
    assert other.closed
    with pytest.raises(InvalidStateError):
        with other:
            pass


def test_handles_are_released_by_garbage_collection():
    sizes, costs = small_problem()
    for _ in range(20):
        search = Search(sizes, 0.5)
        search.ask()
        Problem(sizes, 0.5)
    del search
    gc.collect()


# --- bad settings ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "setting",
    [dict(generations=0), dict(offspring=0), dict(survivors=-1), dict(mutation_rate=1.5), dict(crossover_rate=-0.1),
     dict(prior_strength=-1.0), dict(max_evaluations=-1), dict(patience=-1), dict(fidelity_levels=0),
     dict(fidelity_keep=0.0), dict(seed=-1), dict(seed=2**64), dict(tolerance=0.6)],
)
def test_bad_search_settings(setting):
    with pytest.raises(ValueError):
        Search([100, 200], 0.5, **setting)


def test_bad_setting_types():
    with pytest.raises(TypeError):
        Search([100, 200], 0.5, generations=2.0)
    with pytest.raises(TypeError):
        Search([100, 200], 0.5, prior_grid=1)
    with pytest.raises(TypeError):
        Search([100, 200], "0.5")


# --- additive fitness ---------------------------------------------------------------------------------


def test_run_additive_is_run_with_the_summed_costs():
    sizes, costs = small_problem()
    with Search(sizes, 0.5, generations=4, seed=2) as search:
        additive_run = search.run_additive(costs, progress=False)
    with Search(sizes, 0.5, generations=4, seed=2) as search:
        called = search.run(lambda p: additive(costs, p.levels), progress=False)
    assert additive_run.levels == called.levels and additive_run.evaluations == called.evaluations
    assert additive_run.history == pytest.approx(called.history, rel=1e-12)
    assert additive_run.fitness == pytest.approx(additive(costs, additive_run.levels), rel=1e-12)
    # msp.plan with a cost table and no fitness is this run.
    planned = plan(sizes, 0.5, cost_table=costs, generations=4, seed=2, progress=False)
    assert planned == additive_run


def test_run_additive_rejects_bad_tables_before_running():
    sizes, costs = small_problem()
    with Search(sizes, 0.5, generations=2) as search:
        with pytest.raises(ValueError, match="shape"):
            search.run_additive(costs[:, :7], progress=False)
        bad = costs.copy()
        bad[3, 2] = math.inf
        with pytest.raises(ValueError, match="non-finite"):
            search.run_additive(bad, progress=False)
        with pytest.raises(TypeError):
            search.run_additive([["x"] * 8] * 10, progress=False)
        assert search.progress["evaluations"] == 0
