"""Concurrency from Python: kernels, Fisher accumulation and searches from several threads at once.

ctypes releases the GIL for every library call, so Python threads really run the kernels at the
same time (the first test checks that). Every result computed concurrently is compared bit for bit
with the same work done serially on one thread: the header promises reentrant, stateless kernels
whose results do not depend on the thread count, Fisher accumulation that is safe across distinct
layers, and searches that depend only on their seed and the fitness values told.

Handles used after ``close()`` must raise ``msp.InvalidStateError`` (documented on every handle
class); a ``Search`` serialises its calls with a lock, so ``close()`` from another thread during
``run()`` waits for the run instead of freeing the handle under it.
"""

import math
import os
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

import msp
from msp.errors import InvalidStateError

try:
    import torch
except ImportError:  # the torch cases skip
    torch = None

THREADS = 4
ROUNDS = 3


# --- helpers -------------------------------------------------------------------------------------


def bits(x):
    """A copy of the stored bit patterns of an array or tensor."""
    if torch is not None and isinstance(x, torch.Tensor):
        x = x.view(torch.int32 if x.element_size() == 4 else torch.int16).numpy()
    return x.view({1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint64}[x.itemsize]).copy()


def as_numpy(mask):
    if torch is not None and isinstance(mask, torch.Tensor):
        return mask.numpy().copy()
    return np.asarray(mask).copy()


def make_buffer(kind, shape, seed):
    """A fresh weight buffer: numpy f32/f16 or, when torch is present, a torch bf16 tensor."""
    rng = np.random.default_rng(seed)
    values = rng.standard_normal(shape).astype(np.float32)
    values[rng.random(shape) < 0.2] = 0.5  # some ties
    if kind == "f32":
        return values
    if kind == "f16":
        return values.astype(np.float16)
    if torch is None:
        return values.astype(np.float16)
    return torch.from_numpy(values).to(torch.bfloat16)


KINDS = ["f32", "f16", "bf16"]


def kernel_jobs():
    """(name, thunk) pairs; each thunk builds its own input from a seed and returns plain results."""
    jobs = []
    shape = (97, 256)  # several row blocks per kernel call
    for i in range(12):
        kind = KINDS[i % 3]
        seed = 1000 + i
        scale = np.random.default_rng(seed).uniform(0.0, 2.0, shape[1]).astype(np.float32)

        def nm_mask(kind=kind, seed=seed):
            s = make_buffer(kind, shape, seed)
            return as_numpy(msp.nm_mask(s, 2, 8))

        def prune_nm(kind=kind, seed=seed, scale=scale):
            w = make_buffer(kind, shape, seed)
            mask = msp.prune_nm_(w, "3:8", col_scale=scale)
            return as_numpy(mask), bits(w)

        def prune_row(kind=kind, seed=seed):
            w = make_buffer(kind, shape, seed)
            return as_numpy(msp.prune_topk_(w, 0.6, "row")), bits(w)

        def prune_layer(kind=kind, seed=seed, scale=scale):
            w = make_buffer(kind, shape, seed)
            return as_numpy(msp.prune_topk_(w, 0.35, "layer", col_scale=scale)), bits(w)

        def sum_squares(kind=kind, seed=seed):
            return msp.sum_squares(make_buffer(kind, (40_001,), seed))

        def diagonal(kind=kind, seed=seed):
            diag = np.full(shape, 0.25, np.float32)
            msp.add_fisher_diagonal(make_buffer(kind, shape, seed), diag, scale=0.5)
            return bits(diag)

        def costs(kind=kind, seed=seed, scale=scale):
            w = make_buffer(kind, (33, 64), seed)
            levels = [(0.0, 8, 8), (0.5, 4, 8), (0.6, 0, 0), (0.75, 2, 8), (0.9, 0, 0)]
            gram = np.random.default_rng(seed).standard_normal((64, 64)).astype(np.float32)
            gram = gram @ gram.T
            energy = msp.cost_table(w, levels, col_scale=scale[:64], scale=0.5)
            recon = msp.cost_table(w, levels, kind="reconstruction", scope="layer", gram=gram)
            return energy.tobytes(), recon.tobytes()

        for fn in (nm_mask, prune_nm, prune_row, prune_layer, sum_squares, diagonal, costs):
            jobs.append((f"{fn.__name__}-{kind}-{i}", fn))
    return jobs


def equal(a, b):
    """Bit-exact equality of nested tuples of arrays, bytes and floats."""
    if isinstance(a, tuple):
        return len(a) == len(b) and all(equal(x, y) for x, y in zip(a, b))
    if isinstance(a, np.ndarray):
        return a.dtype == b.dtype and a.shape == b.shape and np.array_equal(a, b)
    if isinstance(a, float):
        return np.float64(a).tobytes() == np.float64(b).tobytes()
    return a == b


def run_concurrently(jobs, threads=THREADS, barrier=True):
    """Run every job on a pool of ``threads`` threads, starting the first ``threads`` together."""
    start = threading.Barrier(threads) if barrier else None

    def call(item):
        index, (name, fn) = item
        if start is not None and index < threads:
            start.wait()
        return fn()

    with ThreadPoolExecutor(threads) as pool:
        return list(pool.map(call, enumerate(jobs)))


# --- fork --------------------------------------------------------------------------------------------


def test_a_forked_child_runs_kernels_without_the_parents_worker_threads():
    """A child forked after kernels ran on the library's worker threads (which it does not inherit)
    starts a worker of its own (counted in /proc/self/task, on 2 cores or more) and runs its kernels
    with the numpy reference's result, instead of waiting forever or staying on one thread."""
    msp.set_num_threads(2)
    w = np.abs(np.random.default_rng(5).standard_normal((4096, 512)).astype(np.float32))  # scores; several row chunks
    groups = w.reshape(-1, 8)
    reference = np.zeros_like(groups, dtype=bool)
    np.put_along_axis(reference, np.argsort(-groups, axis=1, kind="stable")[:, :2], True, axis=1)
    reference = reference.reshape(w.shape)
    for _ in range(20):  # the parent's workers exist and have run chunks
        assert np.array_equal(as_numpy(msp.nm_mask(w, 2, 8)), reference)
    pid = os.fork()
    if pid == 0:  # the child: report by exit status only
        code = 3
        try:
            before = len(os.listdir("/proc/self/task"))
            code = 0 if all(np.array_equal(as_numpy(msp.nm_mask(w, 2, 8)), reference) for _ in range(20)) else 2
            started = len(os.listdir("/proc/self/task")) - before
            if code == 0 and os.cpu_count() >= 2 and started != 1:
                code = 4  # the child did not start its own worker
        finally:
            os._exit(code)
    deadline = time.monotonic() + 120
    while (done := os.waitpid(pid, os.WNOHANG))[0] == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    if done[0] == 0:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        pytest.fail("the forked child's kernel call did not return")
    assert os.waitstatus_to_exitcode(done[1]) == 0
    msp.set_num_threads(0)


def test_kernels_start_no_thread_at_one_thread_and_one_worker_at_two():
    """``set_num_threads(1)`` keeps every kernel on the calling thread, also the N:M product that
    splits its rows into several chunks per thread; at 2 threads the library starts one worker (on a
    machine with 2 cores or more). Counted in a fresh process, from /proc/self/task."""
    script = """
import os, sys, numpy as np, msp
threads = lambda: len(os.listdir("/proc/self/task"))
msp.set_num_threads(1)
w = np.abs(np.random.default_rng(1).standard_normal((4096, 1024)).astype(np.float32))
packed = msp.nm_pack(w, "2:8")
x = np.ones((1, 1024), np.float32)
before = threads()
for _ in range(5):
    msp.nm_mask(w, 2, 8); msp.nm_linear(x, packed); msp.prune_topk_(w.copy(), 0.5, "row")
one = threads()
msp.set_num_threads(2)
for _ in range(5):
    msp.nm_mask(w, 2, 8); msp.nm_linear(x, packed)
print(before, one, threads(), os.cpu_count())
"""
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1")
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    before, one, two, cores = map(int, result.stdout.split())
    assert one == before, f"kernels at 1 thread started {one - before} thread(s)"
    if cores >= 2:
        assert two == before + 1, f"kernels at 2 threads started {two - before} thread(s), not 1"


# --- the GIL ----------------------------------------------------------------------------------------


def test_library_calls_release_the_gil():
    """A Python thread keeps running while another thread is inside a long kernel call."""
    msp.set_num_threads(1)
    w = np.random.default_rng(0).standard_normal((1024, 4096)).astype(np.float32)
    stop = threading.Event()
    counter = [0]

    def spin():
        while not stop.is_set():
            counter[0] += 1

    spinner = threading.Thread(target=spin)
    spinner.start()
    try:
        time.sleep(0.01)
        longest = 0
        for _ in range(3):
            data = w.copy()
            before = counter[0]
            t0 = time.perf_counter()
            msp.prune_topk_(data, 0.5, "layer", return_mask=False)
            elapsed = time.perf_counter() - t0
            longest = max(longest, counter[0] - before)
    finally:
        stop.set()
        spinner.join()
    # With the GIL held for the whole call the spinner could not count at all during it.
    assert longest > 1000, f"the spinner advanced only {longest} times during a {elapsed:.3f} s call"


# --- stateless kernels -----------------------------------------------------------------------------


def test_kernels_from_many_threads_equal_serial():
    jobs = kernel_jobs()
    serial = [fn() for _, fn in jobs]
    for _ in range(ROUNDS):
        concurrent = run_concurrently(jobs)
        for (name, _), a, b in zip(jobs, serial, concurrent):
            assert equal(a, b), name


def test_kernels_while_another_thread_changes_the_thread_count():
    """``set_num_threads`` is process-wide and thread-safe; results never depend on it."""
    jobs = kernel_jobs()
    msp.set_num_threads(1)
    serial = [fn() for _, fn in jobs]
    msp.set_num_threads(0)
    stop = threading.Event()
    seen = set()

    def churn():
        counts = [1, 2, 3, 0, 4, 1]
        i = 0
        while not stop.is_set():
            msp.set_num_threads(counts[i % len(counts)])
            seen.add(msp.get_num_threads())
            i += 1
            time.sleep(0.0005)

    changer = threading.Thread(target=churn)
    changer.start()
    try:
        for _ in range(ROUNDS):
            concurrent = run_concurrently(jobs, threads=3)
            for (name, _), a, b in zip(jobs, serial, concurrent):
                assert equal(a, b), name
    finally:
        stop.set()
        changer.join()
    assert len(seen) > 1 and all(n >= 1 for n in seen)


def test_errors_in_one_thread_do_not_leak_into_another():
    """The error message is thread-local: each thread's exception names its own bad argument."""

    def bad_pattern(i):
        w = np.ones((4, 8), np.float32)
        for _ in range(50):
            with pytest.raises(msp.InvalidArgumentError) as info:
                msp.prune_nm_(w, 4 + (i % 4), 4)  # n >= m
            assert f"({4 + (i % 4)})" in info.value.message, info.value.message
            assert np.all(w == 1.0)
        return True

    def bad_nan(i):
        w = np.ones((4, 8), np.float32)
        w[i % 4, (3 * i) % 8] = np.nan
        for _ in range(50):
            with pytest.raises(msp.InvalidArgumentError, match="NaN|nan") as info:
                msp.prune_topk_(w, 0.5)
            message = info.value.message
            assert str(i % 4) in message and str((3 * i) % 8) in message, message
        return True

    def ok(i):
        w = np.arange(32, dtype=np.float32).reshape(4, 8)
        for _ in range(50):
            msp.prune_nm_(w.copy(), 2, 4)
        return True

    funcs = [bad_pattern, bad_nan, ok]
    with ThreadPoolExecutor(THREADS) as pool:
        assert all(pool.map(lambda i: funcs[i % 3](i), range(24)))


# --- Fisher accumulation ---------------------------------------------------------------------------


def test_fisher_distinct_layers_from_threads_match_serial_over_many_samples():
    layers, samples = 12, 5
    sizes = [3000 + 517 * l for l in range(layers)]
    grads = {}
    for s in range(samples):
        for l in range(layers):
            kind = KINDS[(s + l) % 3]
            grads[s, l] = make_buffer(kind, (sizes[l],), seed=100 * s + l)

    def feed(acc, s, l):
        g = grads[s, l]
        cut = sizes[l] // 3
        acc.add(l, g[:cut], scale=0.5)
        acc.add(l, g[cut:], scale=0.5)

    with msp.FisherAccumulator(sizes) as serial, msp.FisherAccumulator(sizes) as concurrent:
        for s in range(samples):
            for l in range(layers):
                if (s + l) % 5:  # some layers get nothing in some samples (a zero gradient)
                    feed(serial, s, l)
            serial.end_sample()
        expected = serial.traces().tobytes(), serial.traces(per_parameter=True).tobytes()
        for _ in range(ROUNDS):
            concurrent.reset()
            for s in range(samples):
                work = [l for l in range(layers) if (s + l) % 5]
                run_concurrently([(str(l), lambda l=l: feed(concurrent, s, l)) for l in work])
                concurrent.end_sample()
            assert concurrent.num_samples == samples
            got = concurrent.traces().tobytes(), concurrent.traces(per_parameter=True).tobytes()
            assert got == expected


def test_separate_accumulators_in_separate_threads():
    sizes = [5000, 7000, 9000]

    def accumulate(seed):
        with msp.FisherAccumulator(sizes) as acc:
            for s in range(4):
                for l, size in enumerate(sizes):
                    acc.add(l, make_buffer(KINDS[(seed + l) % 3], (size,), seed * 10 + s))
                acc.end_sample()
            return acc.traces().tobytes()

    seeds = list(range(8))
    serial = [accumulate(seed) for seed in seeds]
    assert run_concurrently([(str(s), lambda s=s: accumulate(s)) for s in seeds]) == serial


# --- searches --------------------------------------------------------------------------------------


def _instance(seed):
    rng = np.random.default_rng(seed)
    sizes = [int(x) for x in rng.integers(500, 5000, 12)]
    costs = rng.random((12, 8)) * np.array(sizes)[:, None] / 1000
    sensitivity = rng.random(12) + 0.1
    return sizes, costs, sensitivity


def _fitness(costs):
    def fitness(p):
        return math.fsum(costs[l][k] for l, k in enumerate(p.levels))

    return fitness


def _plan_run(seed, problem_seed, method="search"):
    sizes, costs, sensitivity = _instance(problem_seed)
    result = msp.plan(
        sizes, 0.6, sensitivity=sensitivity, fitness=_fitness(costs), generations=6, seed=seed,
        method=method, progress=False,
    )
    return tuple(result.levels), result.fitness, tuple(result.history), result.evaluations


def _ask_tell_run(seed, problem_seed):
    sizes, costs, sensitivity = _instance(problem_seed)
    fitness = _fitness(costs)
    asked = []
    with msp.Search(sizes, 0.6, sensitivity=sensitivity, seed=seed, generations=5, offspring=6) as search:
        while candidates := search.ask():
            asked.append(tuple(tuple(c.levels) for c in candidates))
            search.tell([fitness(c) for c in candidates])
        best = search.best
    return tuple(asked), tuple(best.levels), best.fitness, tuple(best.history)


def test_parallel_searches_equal_serial_ones():
    # Same seed on the same problem in several threads at once, plus different seeds/problems.
    cases = [(0, 1), (0, 1), (0, 1), (7, 1), (7, 2), (3, 3), (0, 1), (11, 2)]
    jobs = [(f"plan{c}", lambda c=c: _plan_run(*c)) for c in cases]
    jobs += [(f"asktell{c}", lambda c=c: _ask_tell_run(*c)) for c in cases]
    jobs += [("prior", lambda: _plan_run(0, 4, "prior")), ("uniform", lambda: _plan_run(0, 4, "uniform"))]
    serial = [fn() for _, fn in jobs]
    assert serial[0] == serial[1] == serial[2] == serial[6]
    assert serial[0] != serial[3]  # another seed explores differently
    for _ in range(2):
        concurrent = run_concurrently(jobs)
        for (name, _), a, b in zip(jobs, serial, concurrent):
            assert a == b, name


def test_searches_run_while_kernels_run_in_other_threads():
    sizes_jobs = [(f"search{s}", lambda s=s: _plan_run(s, s)) for s in range(3)]
    kernels = kernel_jobs()[:14]
    jobs = sizes_jobs + kernels
    serial = [fn() for _, fn in jobs]
    concurrent = run_concurrently(jobs)
    for (name, _), a, b in zip(jobs, serial, concurrent):
        assert equal(a, b), name


def test_one_search_shared_by_threads_is_serialised():
    """Calls from other threads on a running search wait for the run (the object's lock)."""
    sizes, costs, sensitivity = _instance(5)
    fitness = _fitness(costs)
    reference = msp.Search(sizes, 0.6, sensitivity=sensitivity, generations=4)
    expected = reference.run(fitness, progress=False)
    reference.close()

    search = msp.Search(sizes, 0.6, sensitivity=sensitivity, generations=4)
    started = threading.Event()

    def slow_fitness(p):
        started.set()
        time.sleep(0.0005)
        return fitness(p)

    with ThreadPoolExecutor(3) as pool:
        running = pool.submit(search.run, slow_fitness, False)
        started.wait(10)
        polls = [pool.submit(lambda: (search.progress, search.best)) for _ in range(5)]
        result = running.result(60)
        for poll in polls:
            progress, best = poll.result(60)
            # The poll waited for the run to finish: it sees the final state, never a torn one.
            assert progress["done"] and best == result
    assert result == expected
    search.close()


def test_close_from_another_thread_during_run_waits_and_never_crashes():
    sizes, costs, sensitivity = _instance(6)
    fitness = _fitness(costs)
    for trial in range(5):
        search = msp.Search(sizes, 0.6, sensitivity=sensitivity, generations=3)
        started = threading.Event()

        def slow_fitness(p):
            started.set()
            time.sleep(0.0002)
            return fitness(p)

        with ThreadPoolExecutor(2) as pool:
            running = pool.submit(search.run, slow_fitness, False)
            started.wait(10)
            closing = pool.submit(search.close)
            closing.result(60)
            try:
                result = running.result(60)
            except InvalidStateError as error:  # closed between the run and reading its best plan
                assert "closed" in str(error)
            else:
                assert result.fitness is not None
        assert search.closed
        with pytest.raises(InvalidStateError):
            search.ask()


# --- handles after close ---------------------------------------------------------------------------


def test_every_handle_method_after_close_raises_invalid_state():
    sizes, costs, sensitivity = _instance(8)
    search = msp.Search(sizes, 0.6, sensitivity=sensitivity)
    candidates = search.ask()
    search.close()
    search.close()  # idempotent
    calls = {
        "ask": search.ask,
        "tell": lambda: search.tell([1.0] * len(candidates)),
        "best": lambda: search.best,
        "progress": lambda: search.progress,
        "done": lambda: search.done,
        "history": lambda: search.history,
        "run": lambda: search.run(lambda p: 1.0, progress=False),
        "with": lambda: search.__enter__(),
    }
    problem = msp.Problem(sizes, 0.6)
    problem.close()
    problem.close()
    calls.update({
        "problem.range": lambda: problem.range,
        "problem.prior": lambda: problem.prior(sensitivity),
        "problem.solve_additive": lambda: problem.solve_additive(costs),
        "problem.check": lambda: problem.check([0] * len(sizes)),
        "problem.with": lambda: problem.__enter__(),
    })
    acc = msp.FisherAccumulator([10, 20])
    acc.add(0, np.ones(10, np.float32))
    acc.end_sample()
    acc.close()
    acc.close()
    calls.update({
        "fisher.add": lambda: acc.add(0, np.ones(10, np.float32)),
        "fisher.end_sample": acc.end_sample,
        "fisher.traces": acc.traces,
        "fisher.reset": acc.reset,
        "fisher.num_samples": lambda: acc.num_samples,
        "fisher.with": lambda: acc.__enter__(),
    })
    for name, call in calls.items():
        with pytest.raises(InvalidStateError, match="closed"):
            call()
    assert "closed" in repr(search) and "closed" in repr(problem) and "closed" in repr(acc)


def test_handles_closed_by_other_threads_raise_in_this_one():
    """A handle closed by thread A raises ``InvalidStateError`` in thread B, never crashes.

    (Closing while another thread is *inside* a call on the same Fisher accumulator or problem is
    the caller's to serialise, as their docs say; a Search serialises it itself.)
    """
    sizes, costs, sensitivity = _instance(9)
    handles = [msp.Search(sizes, 0.6, sensitivity=sensitivity) for _ in range(4)]
    handles += [msp.FisherAccumulator([10]) for _ in range(4)]
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(lambda h: h.close(), handles))
    for h in handles:
        assert h.closed
    with ThreadPoolExecutor(4) as pool:
        def use(h):
            with pytest.raises(InvalidStateError):
                if isinstance(h, msp.Search):
                    h.ask()
                else:
                    h.add(0, np.ones(10, np.float32))
            return True

        assert all(pool.map(use, handles))
