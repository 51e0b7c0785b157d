"""Resource hygiene: many create/free cycles of every handle type and many cancelled searches
leave resident memory flat.

Each test warms up (allocator pools, lazily created library state such as the thread pool), takes
the resident set size from ``/proc/self/statm``, runs its cycles and measures again. A leak of even
200 bytes per cycle would show as 20 MB over 100,000 cycles; the bound is ``GROWTH_BOUND_MB`` (a
generous margin over the noise of the Python allocator). Handles are released in every documented
way: ``close()``, a ``with`` block, and dropping the last reference (``__del__``).

Counts: 100,000 cycles of the Fisher accumulator, the problem and the search (the search with
``prior_grid=False``, about 0.2 ms a cycle, plus 10,000 cycles with the default prior grid, which
allocates more), and 10,000 searches cancelled in the three ways the API has (a NaN fitness, an
exception from the fitness, and ``KeyboardInterrupt``), at different points of the run. Set
``MSP_RESOURCE_SCALE`` (e.g. 0.1) to scale every count.
"""

import gc
import math
import os
import time

import numpy as np
import pytest

import msp
from msp.errors import MSPCancelled

SCALE = float(os.environ.get("MSP_RESOURCE_SCALE", "1"))
GROWTH_BOUND_MB = 16.0
PAGE = os.sysconf("SC_PAGE_SIZE")

pytestmark = pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="needs /proc/self/statm (Linux)")

SIZES = [4096, 16384, 4096, 11008]
SENSITIVITY = np.array([3.0, 1.0, 2.0, 0.5])


def rss_mb():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * PAGE / 2**20


def cycles(count):
    return max(1, int(count * SCALE))


def measure(cycle, count, warmup=2000):
    """Run ``cycle(i)`` ``count`` times after a warm-up; return (growth in MB, seconds)."""
    for i in range(min(warmup, count)):
        cycle(i)
    gc.collect()
    before = rss_mb()
    start = time.perf_counter()
    for i in range(count):
        cycle(i)
    seconds = time.perf_counter() - start
    gc.collect()
    growth = rss_mb() - before
    print(f"\n{count} cycles in {seconds:.1f} s ({seconds / count * 1e6:.0f} us each); RSS growth {growth:+.2f} MB")
    return growth, seconds


def release(handle, i):
    """Release a handle in one of the three documented ways, by cycle number."""
    way = i % 3
    if way == 0:
        handle.close()
    elif way == 1:
        with handle:
            pass
    # way 2: drop the last reference; __del__ frees the native handle


def test_fisher_accumulator_create_free_cycles():
    grad = np.ones(64, np.float32)

    def cycle(i):
        acc = msp.FisherAccumulator(SIZES)
        if i % 10 == 0:  # sometimes used before release, so its sums are allocated and touched
            acc.add(i % len(SIZES), grad)
            acc.end_sample()
            acc.traces()
        release(acc, i)

    growth, _ = measure(cycle, cycles(100_000))
    assert growth < GROWTH_BOUND_MB


def test_problem_create_free_cycles():
    def cycle(i):
        problem = msp.Problem(SIZES, 0.5, groups=[0, 1, 0, 1] if i % 2 else None, max_level=6 if i % 4 == 1 else None)
        if i % 10 == 0:
            problem.prior(SENSITIVITY)
            problem.range
        release(problem, i)

    growth, _ = measure(cycle, cycles(100_000))
    assert growth < GROWTH_BOUND_MB


def test_search_create_free_cycles():
    def cycle(i):
        search = msp.Search(SIZES, 0.5, sensitivity=SENSITIVITY, seed=i, prior_grid=False)
        if i % 10 == 0:  # an ask/tell round trip allocates the population and the batch
            candidates = search.ask()
            search.tell([float(k) for k in range(len(candidates))])
        release(search, i)

    growth, _ = measure(cycle, cycles(100_000))
    assert growth < GROWTH_BOUND_MB


def test_search_with_prior_grid_create_free_cycles():
    def cycle(i):
        search = msp.Search(SIZES, 0.5, sensitivity=SENSITIVITY, seed=i)
        release(search, i)

    growth, _ = measure(cycle, cycles(10_000), warmup=500)
    assert growth < GROWTH_BOUND_MB


class Stop(Exception):
    pass


def test_cancelled_searches():
    counts = {"nan": 0, "exception": 0, "interrupt": 0}

    def cycle(i):
        mode = ("nan", "exception", "interrupt")[i % 3]
        when = 1 + (i % 13)  # during the prior grid (first 8 evaluations) or in generation 1
        calls = [0]

        def fitness(plan):
            calls[0] += 1
            if calls[0] == when:
                if mode == "nan":
                    return math.nan
                if mode == "exception":
                    raise Stop()
                raise KeyboardInterrupt()
            return float(sum(plan.levels))

        search = msp.Search(SIZES, 0.5, sensitivity=SENSITIVITY, seed=i, generations=3)
        try:
            search.run(fitness, progress=False)
        except MSPCancelled:
            counts["nan"] += 1
        except Stop:
            counts["exception"] += 1
        except KeyboardInterrupt:
            counts["interrupt"] += 1
        release(search, i)

    total = cycles(10_000)
    growth, _ = measure(cycle, total, warmup=500)
    assert sum(counts.values()) == total + min(500, total)  # every run was cancelled
    assert growth < GROWTH_BOUND_MB


def test_cancelled_searches_are_freed_without_the_garbage_collector():
    """A cancelled run leaves no reference cycle: the handle is freed as soon as it is dropped."""
    import weakref

    gc.collect()
    gc.disable()
    try:
        refs = []
        for i, value in enumerate([math.nan, Stop(), KeyboardInterrupt()]):
            search = msp.Search(SIZES, 0.5, sensitivity=SENSITIVITY, seed=i)

            def fitness(plan, value=value):
                if isinstance(value, BaseException):
                    raise value
                return value

            try:
                search.run(fitness, progress=False)
            except (MSPCancelled, Stop, KeyboardInterrupt):
                pass
            if isinstance(value, BaseException):
                value.__traceback__ = None  # our own reference to the exception, not the package's
            refs.append(weakref.ref(search))
            del search
        assert [r() for r in refs] == [None, None, None]
    finally:
        gc.enable()
