#!/usr/bin/env python3
"""The search-quality record on synthetic problems whose optimum is known: how far the searched
plan ends above the exact optimum, at several evaluation budgets, for the previous search settings
("old": no surrogate, no paired mutation moves) and the current defaults ("new").

Run by `make search-bench` (never by `make test`). Problems, one per seed 0, 1, ...:

- separable (the issue's benchmark): 32 layers of sizes 4096 * {1, 3, 4} * {1, 2, 3, 4} (drawn
  uniformly), the 8 N:8 levels 8:8 .. 1:8, target 0.75, tolerance 0.001. Fitness is additive:
  cost[l, k] is a table of 8 independent lognormal(0, 1) draws per layer, sorted ascending so that
  a sparser level of a layer always costs more. Sensitivity = each layer's cost at the sparsest
  level; no proxy table is given to the search. The optimum is `msp.plan(method="exact")` on the
  true table; the gap is (found - optimum) / optimum.
- interacting: the same tables plus pairwise terms between neighbouring layers,
  0.3 * cost[l, k_l] * cost[l+1, k_l+1] / mean(cost), and multiplicative noise exp(0.02 * N(0, 1))
  on every evaluation (a fixed sequence per instance). The search sees the noisy values; the plan it
  returns is scored without noise, relative to the noise-free value of the additive part's exact
  optimum (so the gap may be negative).
- proxied: the interacting problem, and the search is also given a proxy table (as
  `msp.torch` gives the Fisher-weighted energy): the true table times lognormal(0, 0.3) noise per
  entry. The old settings cannot use it (they predate proxy tables).

The budgets are prefixes of one run per instance and setting (a run capped at B evaluations asks
exactly the first B plans of a longer run with the same seed). `--old-8000` also runs the issue's
reference: the old settings with generations=500, offspring=16 (about 8,000 evaluations).

    python examples/search_bench.py                      # 30 instances, both problems
    python examples/search_bench.py --instances 8 --kinds separable --budgets 500,2000
    python examples/search_bench.py --new surrogate_candidates=4 --new pair_rate=0.5   # try settings
"""

from __future__ import annotations

import argparse
import ast
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "python"))

import msp  # noqa: E402

LEVELS = msp.nm_levels(8)
OLD = {"surrogate_candidates": 0, "pair_rate": 0.0}
"""The settings that reproduce the search before the surrogate and the paired moves."""


def instance(seed: int) -> tuple[list[int], np.ndarray]:
    """Layer sizes and the sorted lognormal cost table of one separable instance."""
    rng = np.random.default_rng(seed)
    sizes = [int(s) for s in rng.choice([1, 3, 4], 32) * rng.integers(1, 5, 32) * 4096]
    costs = np.sort(rng.lognormal(0.0, 1.0, (32, len(LEVELS))), axis=1)
    return sizes, costs


def true_fitness(kind: str, costs: np.ndarray, levels) -> float:
    """The noise-free fitness of a plan (level index per layer)."""
    picked = costs[np.arange(len(costs)), levels]
    value = float(picked.sum())
    if kind != "separable":
        value += 0.3 * float((picked[:-1] * picked[1:]).sum()) / float(costs.mean())
    return value


def run(kind: str, seed: int, budget: int, settings: dict, proxy: bool = True,
        target: float = 0.75) -> tuple[list[float], float]:
    """One search: the best true fitness after each evaluation, and the exact additive optimum's.
    ``proxy``: give the proxied problem's proxy table to the search."""
    sizes, costs = instance(seed)
    optimum = msp.plan(sizes, target, LEVELS, method="exact", cost_table=costs)
    noise = np.random.default_rng(10_000 + seed)
    options = {"generations": 100_000, "max_evaluations": budget, **settings}
    if kind == "proxied" and proxy:
        options["proxy_costs"] = costs * np.random.default_rng(20_000 + seed).lognormal(0.0, 0.3, costs.shape)
    best_seen, best_true, trace = np.inf, np.inf, []
    with msp.Search(sizes, target, LEVELS, sensitivity=costs[:, -1], seed=seed, **options) as search:
        while candidates := search.ask():
            values = []
            for candidate in candidates:
                exact = true_fitness(kind, costs, candidate.levels)
                seen = exact * float(np.exp(0.02 * noise.standard_normal())) if kind != "separable" else exact
                if seen < best_seen:  # the plan the search reports is the one it saw as best
                    best_seen, best_true = seen, exact
                trace.append(best_true)
                values.append(seen)
            search.tell(values)
    return trace, true_fitness(kind, costs, optimum.levels)


def parse_settings(pairs: list[str]) -> dict:
    out = {}
    for pair in pairs:
        name, _, value = pair.partition("=")
        out[name] = ast.literal_eval(value)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description="msp search quality on synthetic problems with a known optimum")
    parser.add_argument("--instances", type=int, default=30)
    parser.add_argument("--first-seed", type=int, default=0, help="instance seeds first-seed, first-seed + 1, ...")
    parser.add_argument("--budgets", default="80,160,500,1000,2000", help="evaluation budgets, comma-separated")
    parser.add_argument("--kinds", default="separable,interacting,proxied")
    parser.add_argument("--new", action="append", default=[], metavar="NAME=VALUE", help="override a new setting")
    parser.add_argument("--old", action="append", default=[], metavar="NAME=VALUE", help="override an old setting")
    parser.add_argument("--old-8000", action="store_true", help="also the old settings at 500 x 16 evaluations")
    args = parser.parse_args()
    budgets = [int(b) for b in args.budgets.split(",")]
    configs = {"old": {**OLD, **parse_settings(args.old)}, "new": parse_settings(args.new)}
    print(f"msp search bench: {args.instances} instances, 32 layers x 8 N:8 levels, target 0.75; "
          f"new = defaults {configs['new'] or ''}, old = {configs['old']}")
    for kind in args.kinds.split(","):
        print(f"\n{kind}: gap to the exact {'optimum' if kind == 'separable' else 'additive optimum (true fitness)'}")
        print(f"{'settings':<10}{'evals':>7}{'within 1%':>11}{'median':>9}{'mean':>9}{'worst':>9}{'time':>8}")
        runs = [(name, budgets, settings) for name, settings in configs.items()]
        if args.old_8000:
            runs.append(("old 500x16", [8000], {**configs["old"], "offspring": 16, "generations": 500}))
        for name, marks, settings in runs:
            proxy = not name.startswith("old")
            start = time.perf_counter()
            gaps = {b: [] for b in marks}
            for seed in range(args.first_seed, args.first_seed + args.instances):
                options = dict(settings)
                generations = options.pop("generations", None)
                trace, optimum = run(kind, seed, max(marks), options if generations is None
                                     else {**options, "generations": generations, "max_evaluations": 0}, proxy)
                for b in marks:
                    gaps[b].append((trace[min(b, len(trace)) - 1] - optimum) / optimum)
            elapsed = time.perf_counter() - start
            for b in marks:
                g = np.array(gaps[b])
                print(f"{name:<10}{b:>7}{int((g <= 0.01).sum()):>8}/{len(g):<2}{np.median(g):>9.2%}{g.mean():>9.2%}"
                      f"{g.max():>9.2%}{elapsed:>7.0f}s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
