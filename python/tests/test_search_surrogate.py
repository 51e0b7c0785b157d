"""The search's surrogate, proxy tables and paired moves from Python.

References are written here: the separable benchmark's optimum is the exact solver's on the true
table (itself checked against brute force in test_planning.py), the optimum of a small proxy table
is found by enumerating every plan.
"""

import itertools
import math
import sys
from pathlib import Path

import numpy as np
import pytest

import msp
from msp.errors import InvalidArgumentError, InvalidStateError

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
if str(EXAMPLES) not in sys.path:
    sys.path.insert(0, str(EXAMPLES))

import search_bench  # noqa: E402


def test_separable_benchmark_within_one_percent_of_the_optimum():
    """The issue's bar (29 of 30 within 1% at 2,000 evaluations), here on 8 instances at half the
    evaluations: every one within 1%. `make search-bench` runs all 30 at several budgets."""
    gaps = []
    for seed in range(8):
        trace, optimum = search_bench.run("separable", seed, 1000, {})
        assert len(trace) == 1000
        assert min(trace) >= optimum * (1 - 1e-12)  # the exact optimum is never beaten
        gaps.append((trace[-1] - optimum) / optimum)
    assert max(gaps) <= 0.01, gaps


def _levels_sum(levels, costs):
    return sum(costs[i][k] for i, k in enumerate(levels))


def test_the_optimum_of_each_proxy_table_joins_the_first_generation():
    sizes = [1024, 2048, 1024, 3072, 1024]
    levels = msp.nm_levels(4)
    rng = np.random.default_rng(3)
    tables = [np.cumsum(rng.lognormal(0, 1, (5, 4)), axis=1) * scale for scale in (1.0, 1e6)]
    tables[1][:, ::2] *= 3  # another optimum
    average = lambda plan: sum(s * levels[k].sparsity for s, k in zip(sizes, plan)) / sum(sizes)
    optima = []
    for table in tables:  # brute force over the 4^5 plans
        feasible = [p for p in itertools.product(range(4), repeat=5) if abs(average(p) - 0.5) <= 0.001 + 1e-12]
        optima.append(list(min(feasible, key=lambda p: _levels_sum(p, table))))
    assert optima[0] != optima[1]
    with msp.Search(sizes, 0.5, levels, sensitivity=[1.0] * 5, proxy_costs=tables) as search:
        first = [c.levels for c in search.ask()]
        assert first[-2:] == optima  # after the prior plans, in the order given
        assert len(first) == len({tuple(p) for p in first})
    # A proxy optimum that is also a prior plan is evaluated once.
    uniform = np.array([[abs(k - 2) for k in range(4)]] * 5, dtype=float)
    with msp.Search(sizes, 0.5, levels, sensitivity=[1.0] * 5, proxy_costs=uniform, prior_grid=False) as search:
        assert [c.levels for c in search.ask()] == [[2] * 5]


def test_proxy_tables_in_every_form_and_their_errors():
    sizes, levels = [100, 200, 300], msp.nm_levels(4)
    table = np.arange(12.0).reshape(3, 4)
    torch = pytest.importorskip("torch")
    for given in (table, table.tolist(), [table, table * 2], np.stack([table, table]), torch.tensor(table)):
        with msp.Search(sizes, 0.5, levels, proxy_costs=given) as search:
            assert search.ask()
    with pytest.raises(ValueError, match=r"proxy_costs must have shape \(3, 4\), got \(3, 5\)"):
        msp.Search(sizes, 0.5, levels, proxy_costs=np.zeros((3, 5)))
    bad = table.copy()
    bad[1, 2] = math.nan
    with pytest.raises(InvalidArgumentError, match=r"costs\[1\]\[2\] \(nan\) is not finite"):
        msp.Search(sizes, 0.5, levels, proxy_costs=bad)
    with pytest.raises(InvalidStateError, match="at most 8 proxy tables"):
        msp.Search(sizes, 0.5, levels, proxy_costs=[table] * 9)
    # msp.plan passes them on: a proxy equal to the additive fitness gives the optimum at once.
    exact = msp.plan(sizes, 0.5, levels, method="exact", cost_table=table)
    found = msp.plan(sizes, 0.5, levels, cost_table=table, proxy_costs=table, generations=1, progress=False)
    assert found.fitness == exact.fitness and found.history[0] == exact.fitness


@pytest.mark.parametrize(
    "setting",
    [
        dict(surrogate_candidates=-1),
        dict(surrogate_candidates=2**20 + 1),
        dict(surrogate_ridge=0.0),
        dict(surrogate_ridge=math.inf),
        dict(surrogate_exploration=-0.5),
        dict(surrogate_exploration=math.nan),
        dict(pair_rate=1.5),
        dict(pair_rate=-0.1),
    ],
)
def test_bad_surrogate_settings_are_refused(setting):
    with pytest.raises(InvalidArgumentError, match=next(iter(setting))):
        msp.Search([100, 200], 0.5, **setting)


def _search_record(seed, threads, **settings):
    msp.set_num_threads(threads)
    try:
        sizes, costs = search_bench.instance(seed)
        calls = []

        def fitness(plan):
            calls.append(tuple(plan.levels))
            return search_bench.true_fitness("interacting", costs, plan.levels)

        best = msp.plan(sizes, 0.75, search_bench.LEVELS, sensitivity=costs[:, -1], fitness=fitness, seed=seed,
                        generations=12, progress=False, **settings)
        return best, calls
    finally:
        msp.set_num_threads(0)


def test_same_seed_same_search_whatever_the_thread_count():
    first, calls = _search_record(5, 1, surrogate_candidates=3)
    again, calls_again = _search_record(5, 2, surrogate_candidates=3)
    assert calls == calls_again and first.levels == again.levels and first.history == again.history
    other, calls_other = _search_record(6, 1, surrogate_candidates=3)
    assert calls_other != calls


def test_a_proxy_that_tracks_the_fitness_helps_a_small_budget():
    """80 evaluations: a noisy copy of the true table as proxy beats no proxy, on average and on most
    of 10 instances."""
    with_proxy, without = [], []
    for seed in range(10):
        sizes, costs = search_bench.instance(seed)
        noisy = costs * np.random.default_rng(seed).lognormal(0, 0.3, costs.shape)
        exact = msp.plan(sizes, 0.75, search_bench.LEVELS, method="exact", cost_table=costs).fitness
        for proxy, out in ((noisy, with_proxy), (None, without)):
            found = msp.plan(sizes, 0.75, search_bench.LEVELS, sensitivity=costs[:, -1], cost_table=costs,
                             proxy_costs=proxy, max_evaluations=80, generations=100, seed=seed, progress=False)
            out.append(found.fitness / exact - 1)
    assert np.mean(with_proxy) < 0.75 * np.mean(without), (with_proxy, without)
    assert sum(a < b for a, b in zip(with_proxy, without)) >= 7, (with_proxy, without)
