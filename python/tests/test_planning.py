"""The planner from Python: level sets, Plan, msp.plan(...) and msp.Search.

Every property is checked against a reference written here, never against the library itself:
budgets and bounds are recomputed from the sizes and the level set, the exact solver is compared
with brute-force enumeration, the search with the exact optimum.
"""

import gc
import itertools
import json
import math
import pickle
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import msp
from msp.errors import InfeasibleError, InvalidArgumentError, InvalidStateError, MSPCancelled
from msp.levels import Level, nm_levels, ratio_levels
from msp.plans import Plan
from msp import Problem, Search, plan

# --- references ------------------------------------------------------------------------------------


def average(sizes, level_set, levels):
    """Parameter-weighted average sparsity, in exact-as-possible float arithmetic."""
    return math.fsum(s * level_set[k].sparsity for s, k in zip(sizes, levels)) / sum(sizes)


def additive(costs, levels):
    return math.fsum(costs[l][k] for l, k in enumerate(levels))


class Instance:
    """A random planning problem with a target that a known plan reaches exactly."""

    def __init__(self, rng, max_layers=12, max_levels=8, with_groups=True, with_bounds=True):
        self.num_layers = int(rng.integers(1, max_layers + 1))
        if rng.random() < 0.5:
            self.sizes = [int(s) for s in rng.integers(1, 5000, self.num_layers)]
        else:  # few distinct sizes, as in a transformer
            self.sizes = [int(s) for s in rng.choice([64, 256, 1024, 4096], self.num_layers)]
        if rng.random() < 0.5:
            m = int(rng.choice([2, 4, 8, 16]))
            max_n = int(rng.integers(1, m + 1))
            min_n = int(rng.integers(max(1, max_n - max_levels + 1), max_n + 1))
            self.level_set = nm_levels(m, min_n=min_n, max_n=max_n)
        else:
            count = int(rng.integers(1, max_levels + 1))
            self.level_set = ratio_levels(rng.choice(np.arange(0, 100), count, replace=False) / 100)
        k = len(self.level_set)

        self.groups = None
        self.labels = list(range(self.num_layers))  # the group key of every layer
        if with_groups and rng.random() < 0.6:
            count = int(rng.integers(1, self.num_layers + 1))
            ids = [int(g) for g in rng.integers(0, count, self.num_layers)]
            if rng.random() < 0.5:
                self.groups = ids
            else:
                self.groups = [f"block{g}" for g in ids]
            self.labels = list(self.groups)

        # Bounds per group; a layer's own bounds may be wider (the group takes the intersection).
        keys = list(dict.fromkeys(self.labels))
        group_lo, group_hi = {}, {}
        for key in keys:
            lo, hi = sorted(int(v) for v in rng.integers(0, k, 2))
            group_lo[key], group_hi[key] = lo, hi
        self.min_level = self.max_level = None
        if with_bounds and rng.random() < 0.6:
            widen = [int(rng.integers(0, 2)) * (i % 2) for i in range(self.num_layers)]
            self.min_level = [max(0, group_lo[g] - w) for g, w in zip(self.labels, widen)]
            self.max_level = [min(k - 1, group_hi[g] + w) for g, w in zip(self.labels, widen)]
            if rng.random() < 0.3:
                self.max_level = None
            elif rng.random() < 0.3:
                self.min_level = None
        self.allowed = {}
        for key in keys:
            layers = [l for l in range(self.num_layers) if self.labels[l] == key]
            lo = max(self.min_level[l] if self.min_level else 0 for l in layers)
            hi = min(self.max_level[l] if self.max_level else k - 1 for l in layers)
            self.allowed[key] = range(lo, hi + 1)
        reference = {key: int(rng.choice(list(self.allowed[key]))) for key in keys}
        self.reference = [reference[g] for g in self.labels]
        self.target = average(self.sizes, self.level_set, self.reference)
        self.tolerance = float(rng.choice([0.0005, 0.001, 0.005, 0.02, 0.05]))
        self.sensitivity = rng.lognormal(0, 1.5, self.num_layers)
        self.costs = rng.random((self.num_layers, k))

    def kwargs(self):
        return dict(
            levels=self.level_set,
            groups=self.groups,
            min_level=self.min_level,
            max_level=self.max_level,
            tolerance=self.tolerance,
        )

    def assert_feasible(self, levels):
        """Budget, bounds and groups, recomputed here."""
        assert len(levels) == self.num_layers
        for l, k in enumerate(levels):
            assert k in self.allowed[self.labels[l]], (l, k, self.allowed[self.labels[l]])
        for a in range(self.num_layers):
            for b in range(a + 1, self.num_layers):
                if self.labels[a] == self.labels[b]:
                    assert levels[a] == levels[b], ("group members differ", a, b)
        achieved = average(self.sizes, self.level_set, levels)
        assert abs(achieved - self.target) <= self.tolerance + 1e-9, (achieved, self.target, self.tolerance)

    def brute_force(self, costs):
        """The cheapest feasible plan by enumerating every plan of the groups."""
        keys = list(dict.fromkeys(self.labels))
        best, best_plan = math.inf, None
        for choice in itertools.product(*(self.allowed[key] for key in keys)):
            by_key = dict(zip(keys, choice))
            levels = [by_key[g] for g in self.labels]
            if abs(average(self.sizes, self.level_set, levels) - self.target) <= self.tolerance + 1e-12:
                total = additive(costs, levels)
                if total < best:
                    best, best_plan = total, levels
        return best, best_plan


def structured_costs(rng, sizes, level_set, sensitivity):
    """Additive costs shaped like real pruning losses: sensitivity x size x convex(sparsity), noisy."""
    s = np.array([level.sparsity for level in level_set])
    sizes = np.asarray(sizes, dtype=np.float64)
    shape = s**2 + 0.3 * s**4
    noise = 1 + 0.05 * rng.random((len(sizes), len(s)))
    return np.asarray(sensitivity)[:, None] * (sizes / sizes.mean())[:, None] * shape[None, :] * noise


# --- level sets -------------------------------------------------------------------------------------


def test_nm_levels_run_from_dense_to_sparsest():
    levels = nm_levels(8)
    assert [str(level) for level in levels] == [f"{n}:8" for n in range(8, 0, -1)]
    assert [level.sparsity for level in levels] == [1 - n / 8 for n in range(8, 0, -1)]
    assert levels[0].sparsity == 0.0 and levels[0].pattern == (8, 8)
    assert [str(level) for level in nm_levels(4, min_n=2)] == ["4:4", "3:4", "2:4"]
    assert [str(level) for level in nm_levels(8, min_n=2, max_n=6)] == ["6:8", "5:8", "4:8", "3:8", "2:8"]
    for bad in [dict(m=0), dict(m=33), dict(m=8, min_n=0), dict(m=8, max_n=9), dict(m=8, min_n=5, max_n=4)]:
        with pytest.raises(ValueError):
            nm_levels(**bad)
    with pytest.raises(TypeError):
        nm_levels(8.0)


def test_ratio_levels_are_sorted_and_validated():
    levels = ratio_levels([0.7, 0.5, 0.6])
    assert [level.sparsity for level in levels] == [0.5, 0.6, 0.7]
    assert [str(level) for level in levels] == ["50%", "60%", "70%"]
    assert all(level.pattern is None and not level.is_nm for level in levels)
    assert str(Level.ratio(0.625)) == "62.5%"
    for bad in [[], [1.0], [0.5, 1.0], [-0.1], [float("nan")], [0.5, 0.5], [float("inf")]]:
        with pytest.raises(ValueError):
            ratio_levels(bad)
    with pytest.raises(TypeError):
        ratio_levels(["0.5"])


def test_level_parsing_and_validation():
    assert Level.parse("2:8") == Level.nm(2, 8) == Level(0.75, 2, 8)
    assert Level.parse((2, 4)) == Level.nm(2, 4)
    assert Level.parse("70%") == Level.parse(0.7) == Level.parse("0.7") == Level.ratio(0.7)
    assert Level.from_json(Level.nm(3, 8).to_json()) == Level.nm(3, 8)
    for bad in ["0:8", "9:8", "2:64", "1.5:8", "150%", "x", 1.0, -0.5, (0, 4)]:
        with pytest.raises(ValueError):
            Level.parse(bad)
    with pytest.raises(ValueError):
        Level(0.5, 2, 8)  # sparsity inconsistent with 2:8
    with pytest.raises(TypeError):
        Level.parse(None)
    with pytest.raises(TypeError):
        Level.parse(True)
    with pytest.raises(Exception):  # frozen
        Level.nm(2, 8).n = 3


# --- budget and bounds: every emitted plan -----------------------------------------------------------


@pytest.mark.parametrize("seed", range(40))
def test_every_emitted_plan_meets_budget_bounds_and_groups(seed):
    rng = np.random.default_rng(seed)
    inst = Instance(rng)
    kwargs = inst.kwargs()

    with Problem(inst.sizes, inst.target, **kwargs) as problem:
        lo, hi = problem.range
        assert lo - 1e-12 <= inst.target <= hi + 1e-12
        assert problem.check(inst.reference) == pytest.approx(inst.target, abs=1e-12)

    strength = float(rng.choice([0.0, 0.5, 1.0, 3.0]))
    per_parameter = bool(rng.random() < 0.5)
    prior = plan(inst.sizes, inst.target, sensitivity=inst.sensitivity, method="prior",
                 prior_strength=strength, per_parameter=per_parameter, **kwargs)
    inst.assert_feasible(prior.levels)
    assert prior.average_sparsity == pytest.approx(average(inst.sizes, inst.level_set, prior.levels), abs=1e-15)

    uniform = plan(inst.sizes, inst.target, method="uniform", **kwargs)
    inst.assert_feasible(uniform.levels)

    exact = plan(inst.sizes, inst.target, method="exact", cost_table=inst.costs, **kwargs)
    inst.assert_feasible(exact.levels)
    assert exact.fitness == pytest.approx(additive(inst.costs, exact.levels), rel=1e-12, abs=1e-12)

    # ask/tell: every candidate, and the best.
    with Search(inst.sizes, inst.target, sensitivity=inst.sensitivity, seed=seed, generations=6, offspring=6,
                fidelity_levels=int(rng.choice([1, 2])), **kwargs) as search:
        asked = 0
        while candidates := search.ask():
            for candidate in candidates:
                inst.assert_feasible(candidate.levels)
            asked += len(candidates)
            search.tell([additive(inst.costs, c.levels) for c in candidates])
        best = search.best
        inst.assert_feasible(best.levels)
        assert best.fitness == pytest.approx(additive(inst.costs, best.levels), abs=1e-12)
        assert asked > 0 and search.done

    # run with a Python fitness: every candidate it sees.
    seen = []

    def fitness(candidate):
        inst.assert_feasible(candidate.levels)
        seen.append(candidate.levels)
        return additive(inst.costs, candidate.levels)

    result = plan(inst.sizes, inst.target, sensitivity=inst.sensitivity, fitness=fitness, generations=5,
                  offspring=5, seed=seed, progress=False, **kwargs)
    inst.assert_feasible(result.levels)
    assert result.levels in seen
    assert result.fitness == min(additive(inst.costs, levels) for levels in seen)
    assert result.evaluations == len(seen) == len({tuple(levels) for levels in seen})  # never twice


# --- the exact solver -------------------------------------------------------------------------------


# AdditiveSolver keeps only the cheapest partial plan per budget cell, so a cheaper plan whose exact
# budget lands inside the tolerance is lost when it shares a cell with a plan that ends outside it.
EXACT_CELL_BUG = "known limitation documented at msp_solve_additive: one partial plan per budget cell"


@pytest.mark.xfail(strict=True, reason=EXACT_CELL_BUG)
def test_exact_finds_the_only_plan_at_tolerance_zero():
    # msp_problem_check_plan accepts `reference`, yet the solver (and so the prior) call it infeasible.
    sizes = [1280, 4406, 1086, 4934, 4593, 3845, 2683]
    levels = ratio_levels([0.04, 0.06, 0.22, 0.33, 0.53, 0.65, 0.91, 0.94])
    reference = [0, 7, 7, 3, 1, 0, 2]
    target = sum(s * levels[k].sparsity for s, k in zip(sizes, reference)) / sum(sizes)
    with Problem(sizes, target, levels, tolerance=0.0) as problem:
        assert problem.check(reference) == target
        chosen, _ = problem.solve_additive(np.zeros((7, 8)))
        assert average(sizes, levels, chosen) == pytest.approx(target, abs=1e-12)


def test_exact_equals_brute_force_on_small_instances():
    rng = np.random.default_rng(1234)
    misses = []
    for trial in range(300):
        inst = Instance(rng, max_layers=6, max_levels=4)
        costs = rng.integers(0, 20, (inst.num_layers, len(inst.level_set))).astype(np.float64)
        best, _ = inst.brute_force(costs)
        assert best < math.inf  # the reference plan is feasible
        result = plan(inst.sizes, inst.target, method="exact", cost_table=costs, **inst.kwargs())
        inst.assert_feasible(result.levels)
        assert result.fitness == additive(costs, result.levels)
        if result.fitness != best:
            misses.append((trial, result.fitness, best))
    assert misses == []


@pytest.mark.xfail(strict=True, reason=EXACT_CELL_BUG)
def test_exact_minimal_reproduction_of_the_budget_cell_bug():
    # Window [0.29, 0.49]. Optimum: [1, 2] (average 0.46875, cost 5 + 2 = 7). The solver rounds
    # layer 0's levels 1 and 2 into one cell, keeps level 2 (cost 0), and ends at [0, 2] (cost 9).
    sizes, levels = [1, 7], ratio_levels([0.0, 0.25, 0.5])
    costs = np.array([[7.0, 5.0, 0.0], [8.0, 8.0, 2.0]])
    result = plan(sizes, 0.39, levels, method="exact", cost_table=costs, tolerance=0.1)
    assert result.fitness == 7.0 and result.levels == [1, 2]


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
    # The same with a Python fitness callable gives the same search.
    called = plan(sizes, 0.7, levels, sensitivity=sensitivity, fitness=lambda p: additive(costs, p.levels),
                  seed=seed, progress=False)
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


# --- the prior ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(12))
def test_strength_zero_is_uniform_when_uniform_is_feasible(seed):
    rng = np.random.default_rng(100 + seed)
    inst = Instance(rng, max_layers=30, max_levels=12, with_bounds=False)
    k = int(rng.integers(0, len(inst.level_set)))
    target = inst.level_set[k].sparsity + float(rng.uniform(-0.9, 0.9)) * inst.tolerance
    target = min(max(target, 0.0), 0.999)
    for result in (
        plan(inst.sizes, target, method="uniform", levels=inst.level_set, tolerance=inst.tolerance,
             groups=inst.groups),
        plan(inst.sizes, target, method="prior", sensitivity=inst.sensitivity, prior_strength=0.0,
             levels=inst.level_set, tolerance=inst.tolerance, groups=inst.groups),
    ):
        assert len(set(result.levels)) == 1, result.levels
        assert abs(inst.level_set[result.levels[0]].sparsity - target) <= inst.tolerance + 1e-12


@pytest.mark.parametrize("seed", range(12))
def test_a_more_sensitive_layer_of_equal_size_is_never_sparser(seed):
    rng = np.random.default_rng(200 + seed)
    count = int(rng.integers(2, 40))
    sizes = [int(s) for s in rng.choice([512, 2048, 4096], count)]
    levels = nm_levels(8) if seed % 2 else ratio_levels(np.linspace(0.3, 0.9, 13))
    sensitivity = rng.lognormal(0, 2, count)
    reference = [int(k) for k in rng.integers(0, len(levels), count)]
    target = average(sizes, levels, reference)
    for strength in (0.5, 1.0, 2.0):
        for per_parameter in (False, True):
            result = plan(sizes, target, levels, sensitivity=sensitivity, method="prior",
                          prior_strength=strength, per_parameter=per_parameter)
            for a in range(count):
                for b in range(count):
                    if sizes[a] == sizes[b] and sensitivity[a] > sensitivity[b]:
                        assert result.sparsity[a] <= result.sparsity[b], (a, b)


def test_the_prior_gives_sensitive_layers_less_sparsity():
    sizes = [1000] * 8
    sensitivity = [1, 2, 4, 8, 16, 32, 64, 128]
    result = plan(sizes, 0.5, sensitivity=sensitivity, method="prior", prior_strength=2.0)
    assert result.sparsity == sorted(result.sparsity, reverse=True)
    assert result.sparsity[0] > result.sparsity[-1]
    assert result.params["prior_strength"] == 2.0


# --- Plan --------------------------------------------------------------------------------------------


def _sample_plan():
    levels = nm_levels(8)
    return Plan([0, 6, 4, 6], levels, [100, 300, 200, 400], fitness=12.5, history=[20.0, 14.0, 12.5],
                evaluations=30, target=0.5, method="search", params={"generations": 2, "groups": None}, seed=7)


def test_plan_attributes():
    p = _sample_plan()
    assert p.levels == [0, 6, 4, 6]
    assert p.sparsity == [0.0, 0.75, 0.5, 0.75]
    assert p.nm == [(8, 8), (2, 8), (4, 8), (2, 8)]
    assert p.average_sparsity == pytest.approx((0 + 300 * 0.75 + 200 * 0.5 + 400 * 0.75) / 1000)
    assert len(p) == 4
    unstructured = Plan([1, 0], ratio_levels([0.5, 0.7]), [10, 10])
    assert unstructured.nm == [None, None] and unstructured.sparsity == [0.7, 0.5]
    assert unstructured.fitness is None and unstructured.history == []
    with pytest.raises(ValueError):
        Plan([0, 9], nm_levels(8), [1, 1])
    with pytest.raises(ValueError):
        Plan([0, 1], nm_levels(8), [1])
    with pytest.raises(ValueError):
        Plan([], nm_levels(8), [])


def test_to_dict():
    p = _sample_plan()
    names = ["q", "k", "v", "o"]
    assert p.to_dict(names) == {"q": 0.0, "k": 0.75, "v": 0.5, "o": 0.75}
    assert p.to_dict({"q": None, "k": None, "v": None, "o": None}) == p.to_dict(names)  # a dict's keys
    with pytest.raises(ValueError, match="3 names"):
        p.to_dict(names[:3])
    with pytest.raises(ValueError, match="more than once"):
        p.to_dict(["q", "k", "q", "o"])


def test_summary_is_a_readable_table():
    p = _sample_plan()
    text = p.summary(["model.q_proj", "model.k_proj", "model.v_proj", "model.o_proj"])
    lines = text.splitlines()
    assert "4 layers" in lines[0] and "1,000 parameters" in lines[0]
    assert "name" in lines[1] and "size" in lines[1] and "level" in lines[1] and "sparsity" in lines[1]
    row = next(line for line in lines if "model.k_proj" in line)
    assert "300" in row and "2:8" in row and "75.00%" in row
    assert any(line.startswith("total") and "1,000" in line and "62.50%" in line for line in lines)
    assert "target 50.000%" in text and "fitness 12.5" in text
    plain = Plan([1, 0], ratio_levels([0.5, 0.7]), [10, 30]).summary()
    assert "70%" in plain and "55.00%" in plain
    with pytest.raises(ValueError):
        p.summary(["a"])


def test_save_load_round_trip(tmp_path):
    p = _sample_plan()
    p.history.append(math.inf)
    path = tmp_path / "plan.json"
    p.save(path)
    data = json.loads(path.read_text(), parse_constant=lambda c: pytest.fail(f"non-standard JSON {c}"))
    assert data["levels"] == [0, 6, 4, 6]
    assert data["level_set"][6] == {"sparsity": 0.75, "n": 2, "m": 8}
    assert data["sizes"] == [100, 300, 200, 400]
    assert data["target"] == 0.5 and data["method"] == "search" and data["seed"] == 7
    assert data["params"] == {"generations": 2, "groups": None}
    loaded = Plan.load(str(path))
    assert loaded == p
    assert loaded.history[-1] == math.inf
    assert loaded.level_set == p.level_set and loaded.fitness == 12.5 and loaded.evaluations == 30
    assert pickle.loads(pickle.dumps(p)) == p


def test_save_load_of_a_planned_plan(tmp_path):
    rng = np.random.default_rng(0)
    sizes = [int(s) for s in rng.integers(10, 100, 6)]
    levels = ratio_levels([0.2, 0.5, 0.8])
    target = average(sizes, levels, [1, 1, 2, 2, 0, 0])
    result = plan(sizes, target, levels, groups=["a", "a", "b", "b", "c", "c"],
                  max_level=[1, 1, 2, 2, 2, 2], fitness=lambda p: sum(p.sparsity), progress=False, generations=3)
    result.save(tmp_path / "p.json")
    loaded = Plan.load(tmp_path / "p.json")
    assert loaded == result
    assert loaded.params["groups"] == [0, 0, 1, 1, 2, 2]
    assert loaded.params["max_level"] == [1, 1, 2, 2, 2, 2]
    assert loaded.params["tolerance"] == 0.001


def test_load_rejects_other_files(tmp_path):
    path = tmp_path / "x.json"
    path.write_text('{"levels": [0]}')
    with pytest.raises(ValueError, match="not an msp plan"):
        Plan.load(path)
    path.write_text("{not json")
    with pytest.raises(ValueError):
        Plan.load(path)
    data = _sample_plan().to_json()
    data["version"] = 99
    path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match="version"):
        Plan.load(path)


# --- errors inside fitness ---------------------------------------------------------------------------


class Boom(Exception):
    pass


class Halt(BaseException):  # like KeyboardInterrupt
    pass


def _small_problem():
    rng = np.random.default_rng(3)
    sizes = [int(s) for s in rng.integers(100, 1000, 10)]
    return sizes, rng.random((10, 8))


@pytest.mark.parametrize("raise_at", [1, 25])
@pytest.mark.parametrize("kind", [Boom, Halt])
def test_an_exception_in_fitness_propagates_unchanged(raise_at, kind):
    sizes, costs = _small_problem()
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
    sizes, costs = _small_problem()
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
    sizes, _ = _small_problem()
    with pytest.raises(TypeError, match="must return a float"):
        plan(sizes, 0.5, fitness=lambda p: value, progress=False)


def test_fitness_numpy_scalars_and_inf_are_accepted():
    sizes, costs = _small_problem()
    result = plan(sizes, 0.5, fitness=lambda p: np.float32(additive(costs, p.levels)), generations=2, progress=False)
    assert isinstance(result.fitness, float)
    worst = plan(sizes, 0.5, fitness=lambda p: math.inf, generations=2, progress=False)
    assert worst.fitness == math.inf


def test_nan_fitness_cancels():
    sizes, _ = _small_problem()
    with pytest.raises(MSPCancelled, match="NaN"):
        plan(sizes, 0.5, fitness=lambda p: float("nan"), progress=False)
    with pytest.raises(ValueError, match="-inf"):
        plan(sizes, 0.5, fitness=lambda p: -math.inf, progress=False)


def test_calls_into_a_running_search_from_fitness_are_refused():
    sizes, costs = _small_problem()
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
    sizes, costs = _small_problem()
    plan(sizes, 0.5, cost_table=costs, generations=3, progress=True)
    err = capsys.readouterr().err
    assert "msp search" in err and "evaluations" in err


def test_progress_line_without_tqdm(capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "tqdm", None)  # `import tqdm` now fails
    sizes, costs = _small_problem()
    plan(sizes, 0.5, cost_table=costs, generations=3, progress=True)
    err = capsys.readouterr().err
    assert "msp search: 4/4 generations" in err and "best fitness" in err


def test_no_progress_output_when_disabled(capsys):
    sizes, costs = _small_problem()
    plan(sizes, 0.5, cost_table=costs, generations=3, progress=False)
    assert capsys.readouterr().err == ""


# --- ask/tell misuse and handle lifetime --------------------------------------------------------------


def test_tell_misuse_raises_typed_errors_and_changes_nothing():
    sizes, costs = _small_problem()
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
    sizes, costs = _small_problem()
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
    problem = Problem(sizes, 0.5)
    problem.close()
    for call in (lambda: problem.range, lambda: problem.prior(), lambda: problem.solve_additive(costs),
                 lambda: problem.check([0] * 10)):
        with pytest.raises(InvalidStateError):
            call()


def test_handles_are_released_by_garbage_collection():
    sizes, costs = _small_problem()
    for _ in range(20):
        search = Search(sizes, 0.5)
        search.ask()
        Problem(sizes, 0.5)
    del search
    gc.collect()


# --- bad input -----------------------------------------------------------------------------------------


def test_bad_sizes():
    with pytest.raises(ValueError, match="empty"):
        plan([], 0.5, method="uniform")
    with pytest.raises(ValueError, match="must be > 0"):
        plan([10, 0, 10], 0.5, method="uniform")
    with pytest.raises(ValueError):
        plan([10, -5], 0.5, method="uniform")
    with pytest.raises(ValueError, match="overflow"):
        plan([2**62, 2**62], 0.5, method="uniform")
    with pytest.raises(TypeError):
        plan([10.5, 3], 0.5, method="uniform")
    with pytest.raises(TypeError):
        plan(10, 0.5, method="uniform")
    with pytest.raises(ValueError, match="empty"):
        Search([], 0.5)


def test_bad_level_sets():
    sizes = [100, 200]
    with pytest.raises(ValueError, match="increasing"):
        plan(sizes, 0.5, [Level.nm(2, 8), Level.nm(4, 8)], method="uniform")  # unsorted
    with pytest.raises(ValueError, match="increasing"):
        plan(sizes, 0.5, [Level.ratio(0.5), Level.ratio(0.5)], method="uniform")
    with pytest.raises(ValueError):
        plan(sizes, 0.5, [0.5, 1.0], method="uniform")
    with pytest.raises(ValueError):
        plan(sizes, 0.5, [-0.1, 0.5], method="uniform")
    with pytest.raises(ValueError, match="empty"):
        plan(sizes, 0.5, [], method="uniform")
    with pytest.raises(TypeError):
        plan(sizes, 0.5, "2:8", method="uniform")
    # Strings and tuples are levels too.
    assert plan(sizes, 0.5, ["4:4", "2:4"], method="uniform", tolerance=0.3).level_set == nm_levels(4, min_n=2)[::2]


@pytest.mark.parametrize("bad", [-1.0, math.nan, math.inf])
def test_bad_sensitivity(bad):
    sizes = [100, 200, 300]
    with pytest.raises(ValueError, match="sensitivity"):
        plan(sizes, 0.5, sensitivity=[1.0, bad, 2.0], method="prior")
    with pytest.raises(ValueError, match="sensitivity"):
        Search(sizes, 0.5, sensitivity=[1.0, bad, 2.0])


def test_sensitivity_of_wrong_length_or_type():
    with pytest.raises(ValueError, match="shape"):
        plan([1, 2, 3], 0.5, sensitivity=[1.0, 2.0], method="prior")
    with pytest.raises(TypeError):
        plan([1, 2, 3], 0.5, sensitivity=["a", "b", "c"], method="prior")
    with pytest.raises(ValueError, match="needs sensitivity"):
        plan([1, 2, 3], 0.5, method="prior")
    zeros = plan([10, 10, 10], 0.5, ratio_levels([0.25, 0.5, 0.75]), sensitivity=[0.0, 1.0, 0.5], method="prior")
    assert zeros.sparsity[1] <= min(zeros.sparsity[0], zeros.sparsity[2])  # zeros count as the smallest value


def test_unreachable_target_reports_the_reachable_range():
    sizes = [100, 200, 300]
    with pytest.raises(InfeasibleError) as info:
        plan(sizes, 0.95, method="uniform")
    assert isinstance(info.value, ValueError)
    assert "0.875" in str(info.value) and "[0.0, 0.875]" in str(info.value)
    with pytest.raises(ValueError, match=r"\[0\.0, 0\.375\]"):
        plan(sizes, 0.5, max_level=3, method="uniform")  # 5:8 at most
    with pytest.raises(ValueError, match=r"\[0\.5, 0\.875\]"):
        Search(sizes, 0.25, min_level=4)
    with pytest.raises(ValueError, match="unreachable"):
        plan(sizes, 0.95, fitness=lambda p: 1.0, progress=False)
    # Within the range but too coarse for the tolerance: reported when a plan is made.
    with pytest.raises(InfeasibleError, match=r"\[0\.0, 0\.5\]"):
        plan([1], 0.25, ratio_levels([0.0, 0.5]), method="uniform")


@pytest.mark.parametrize("target", [1.0, -0.1, math.nan, 1.5])
def test_bad_targets(target):
    with pytest.raises(ValueError):
        plan([1, 2], target, method="uniform")


def test_bad_groups_and_bounds():
    sizes = [100, 100, 100, 100]
    with pytest.raises(ValueError, match="4 layers"):
        plan(sizes, 0.5, groups=[0, 1], method="uniform")
    with pytest.raises(ValueError):
        plan(sizes, 0.5, groups=[0, -1, 1, 1], method="uniform")
    with pytest.raises(TypeError, match="hashable"):
        plan(sizes, 0.5, groups=[[0], [1], [1], [0]], method="uniform")
    with pytest.raises(ValueError, match="negative"):
        plan(sizes, 0.5, min_level=-1, method="uniform")
    with pytest.raises(ValueError, match="negative"):
        plan(sizes, 0.5, max_level=[7, 7, -1, 7], method="uniform")
    with pytest.raises(ValueError):
        plan(sizes, 0.5, max_level=8, method="uniform")
    with pytest.raises(ValueError, match="4 layers"):
        plan(sizes, 0.5, min_level=[0, 0], method="uniform")
    with pytest.raises(ValueError, match="exceeds"):
        plan(sizes, 0.5, min_level=5, max_level=4, method="uniform")
    with pytest.raises(ValueError, match="do not intersect"):
        plan(sizes, 0.5, groups=["a", "a", "b", "b"], min_level=[0, 5, 0, 0], max_level=[3, 7, 7, 7],
             method="uniform")
    with pytest.raises(TypeError):
        plan(sizes, 0.5, min_level=1.5, method="uniform")
    grouped = plan(sizes, 0.5, groups=["a", "b", "a", "b"], sensitivity=[1, 100, 1, 100], method="prior")
    assert grouped.levels[0] == grouped.levels[2] and grouped.levels[1] == grouped.levels[3]
    pinned = plan(sizes, 0.5, min_level=[0, 0, 0, 2], max_level=[0, 7, 7, 2], method="uniform", tolerance=0.2)
    assert pinned.levels[0] == 0 and pinned.levels[3] == 2


def test_bad_methods_and_tables():
    sizes = [100, 200]
    with pytest.raises(ValueError, match="method"):
        plan(sizes, 0.5, method="greedy")
    with pytest.raises(ValueError, match="needs a fitness"):
        plan(sizes, 0.5)
    with pytest.raises(TypeError, match="callable"):
        plan(sizes, 0.5, fitness=3.0)
    with pytest.raises(ValueError, match="needs a cost_table"):
        plan(sizes, 0.5, method="exact")
    with pytest.raises(ValueError, match="shape"):
        plan(sizes, 0.5, method="exact", cost_table=np.zeros((2, 7)))
    with pytest.raises(ValueError, match="finite"):
        plan(sizes, 0.5, method="exact", cost_table=np.full((2, 8), np.nan))
    with pytest.raises(ValueError, match="finite"):
        plan(sizes, 0.5, cost_table=np.full((2, 8), np.inf), progress=False)


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


# --- regressions ---------------------------------------------------------------------------------------


def test_mutation_rate_one_with_a_pinned_layer_terminates():
    script = textwrap.dedent(
        """
        import numpy as np
        from msp.planner import plan
        plan([100] * 6, 0.5, method="search", cost_table=np.ones((6, 8)), min_level=[0, 2, 0, 0, 0, 0],
             max_level=[7, 2, 7, 7, 7, 7], mutation_rate=1.0, generations=3, progress=False)
        """
    )
    try:
        subprocess.run([sys.executable, "-c", script], timeout=10, check=True, cwd=str(_python_dir()))
    except subprocess.TimeoutExpired:
        pytest.fail("msp_search_ask hung")


def _python_dir():
    from pathlib import Path

    return Path(__file__).resolve().parent.parent


# --- the public names ------------------------------------------------------------------------------------


def test_public_exports():
    assert msp.plan is plan  # the function, not the module msp/plan.py
    assert msp.Plan is Plan and msp.Search is Search
    assert msp.Level is Level and msp.nm_levels is nm_levels and msp.ratio_levels is ratio_levels
