"""msp.problem: the Problem handle (range, check, prior, solve_additive, additive_cost, lifetime),
against budgets and costs recomputed here."""

import numpy as np
import pytest

from msp import Problem
from msp.errors import InvalidStateError
from msp.levels import ratio_levels
from planning_reference import EXACT_CELL_BUG, average, small_problem


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


def test_use_after_close_raises_invalid_state():
    sizes, costs = small_problem()
    problem = Problem(sizes, 0.5)
    problem.close()
    for call in (lambda: problem.range, lambda: problem.prior(), lambda: problem.solve_additive(costs),
                 lambda: problem.check([0] * 10), lambda: problem.additive_cost(costs, [0] * 10)):
        with pytest.raises(InvalidStateError):
            call()
