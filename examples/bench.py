#!/usr/bin/env python3
"""Times msp.prune_nm_ and msp.prune_topk_ against the PyTorch (and numpy) code users run today.

Run by `make bench`. Every method prunes the same weight buffer by magnitude and produces a keep or
prune mask; the buffer is restored from a saved original (untimed) before every repeat. Reported:
the median time, the ratio baseline / msp, msp's achieved bandwidth counted as one read plus one
write of the weight buffer (the 1-byte keep mask it also writes is not counted), and this machine's
copy bandwidth measured in the same run, counted the same way.

    python examples/bench.py                 # table
    python examples/bench.py --json out.json # table, and JSON to a file ("-" for stdout)
    python examples/bench.py --quick         # 4096 x 4096 only
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "python"))

import numpy as np  # noqa: E402
import torch  # noqa: E402

import msp  # noqa: E402

SHAPES = [(4096, 4096), (11008, 4096)]
DTYPES = {"f32": torch.float32, "bf16": torch.bfloat16}
PATTERNS = [(2, 4), (1, 4), (2, 8)]  # (n kept, m)
SPARSITY = 0.5


def median_time(run, restore, repeats: int, warmup: int = 1) -> float:
    """Median wall time of `run()` over `repeats` timed calls, `restore()` (untimed) before each."""
    times = []
    for i in range(warmup + repeats):
        restore()
        start = time.perf_counter()
        run()
        elapsed = time.perf_counter() - start
        if i >= warmup:
            times.append(elapsed)
    return statistics.median(times)


# --- baselines (written as in the Wanda repository, magnitude scores) ----------------------------


def wanda_nm_loop(W: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """Wanda's per-group loop; it selects the m - n *pruned* weights of every group."""
    W_metric = torch.abs(W)
    W_mask = torch.zeros_like(W_metric, dtype=torch.bool)
    for ii in range(0, W_metric.shape[1], m):
        tmp = W_metric[:, ii : (ii + m)].float()
        W_mask.scatter_(1, ii + torch.topk(tmp, m - n, dim=1, largest=False)[1], True)
    W[W_mask] = 0
    return W_mask


def torch_nm_vectorised(W: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """One topk over [rows, cols/m, m] keeping n, a scatter into a keep mask, a multiply."""
    rows, cols = W.shape
    metric = W.abs().reshape(rows, cols // m, m)
    keep = torch.zeros_like(metric, dtype=torch.bool)
    keep.scatter_(2, torch.topk(metric, n, dim=2).indices, True)
    keep = keep.reshape(rows, cols)
    W.mul_(keep)
    return keep


def wanda_unstructured_sort(W: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Wanda's per-row stable sort; it marks the floor(cols * sparsity) pruned weights per row."""
    W_metric = torch.abs(W)
    W_mask = torch.zeros_like(W_metric, dtype=torch.bool)
    sort_res = torch.sort(W_metric, dim=-1, stable=True)
    indices = sort_res[1][:, : int(W_metric.shape[1] * sparsity)]
    W_mask.scatter_(1, indices, True)
    W[W_mask] = 0
    return W_mask


def numpy_nm(W: np.ndarray, n: int, m: int) -> np.ndarray:
    """numpy: a stable argsort inside every group, keep the first n, multiply."""
    rows, cols = W.shape
    metric = np.abs(W).reshape(rows, cols // m, m)
    keep = np.zeros(metric.shape, dtype=bool)
    np.put_along_axis(keep, np.argsort(-metric, axis=2, kind="stable")[..., :n], True, axis=2)
    keep = keep.reshape(rows, cols)
    W *= keep
    return keep


def numpy_unstructured(W: np.ndarray, sparsity: float) -> np.ndarray:
    """numpy: argpartition per row (fast but not tie-stable), zero the lowest floor(cols*sparsity)."""
    k = int(W.shape[1] * sparsity)
    pruned = np.argpartition(np.abs(W), k, axis=1)[:, :k]
    np.put_along_axis(W, pruned, 0, axis=1)
    return pruned


# --- machine reference --------------------------------------------------------------------------


def copy_bandwidth(repeats: int) -> dict:
    """GB/s of copying a 512 MiB buffer (read + write counted), with numpy and with torch."""
    count = 128 * 1024 * 1024  # float32 elements: 512 MiB
    src = np.ones(count, dtype=np.float32)
    dst = np.zeros_like(src)
    moved = 2 * src.nbytes
    t_np = median_time(lambda: np.copyto(dst, src), lambda: None, repeats)
    tsrc, tdst = torch.from_numpy(src), torch.from_numpy(dst)
    t_torch = median_time(lambda: tdst.copy_(tsrc), lambda: None, repeats)
    t_clone = median_time(lambda: tsrc.clone(), lambda: None, repeats)
    return {
        "numpy_copyto_GBps": moved / t_np / 1e9,
        "torch_copy__GBps": moved / t_torch / 1e9,
        "torch_clone_GBps": moved / t_clone / 1e9,
    }


# --- cases ---------------------------------------------------------------------------------------


def run_case(results: list, shape, dtype_name, label, msp_run, baselines, repeats, slow_repeats):
    rows, cols = shape
    original = torch.randn(rows, cols, generator=torch.Generator().manual_seed(0)).to(DTYPES[dtype_name])
    W = original.clone()
    restore = lambda: W.copy_(original)  # noqa: E731
    nbytes = W.numel() * W.element_size()
    t_msp = median_time(lambda: msp_run(W), restore, repeats)
    row = {
        "shape": f"{rows}x{cols}",
        "dtype": dtype_name,
        "case": label,
        "msp_ms": t_msp * 1e3,
        "msp_GBps": 2 * nbytes / t_msp / 1e9,
        "baselines": {},
    }
    for name, (fn, slow, numpy_only) in baselines.items():
        if numpy_only and dtype_name != "f32":
            continue
        target = W.numpy() if numpy_only else W
        t = median_time(lambda: fn(target), restore, slow_repeats if slow else repeats, warmup=0 if slow else 1)
        row["baselines"][name] = {"ms": t * 1e3, "ratio": t / t_msp}
    results.append(row)
    print_row(row)


def print_header(baseline_names):
    print(f"{'shape':<11} {'dtype':<5} {'case':<9} {'msp ms':>8} {'msp GB/s':>9}  " + "  ".join(
        f"{name:>24}" for name in baseline_names))
    print(f"{'':<11} {'':<5} {'':<9} {'':>8} {'':>9}  " + "  ".join(f"{'ms (x slower than msp)':>24}"
                                                                     for _ in baseline_names))


COLUMNS = ["torch wanda loop", "torch vectorised", "torch wanda sort", "numpy"]


def print_row(row):
    cells = []
    for name in COLUMNS:
        b = row["baselines"].get(name)
        cells.append(f"{b['ms']:>12.1f} ({b['ratio']:>7.1f}x)" if b else f"{'-':>24}")
    print(f"{row['shape']:<11} {row['dtype']:<5} {row['case']:<9} {row['msp_ms']:>8.2f} {row['msp_GBps']:>9.2f}  "
          + "  ".join(cells), flush=True)


def planner_speed(repeats: int) -> dict:
    """The exact solver and the search's own overhead at 224 layers x 16 levels (N:16), target 0.75."""
    rng = np.random.default_rng(0)
    sizes = [int(s) for s in rng.choice([1, 3, 4], 224) * 4096 * 16]
    levels = msp.nm_levels(16)
    sparsity = np.array([level.sparsity for level in levels])
    sensitivity = np.exp(rng.uniform(0, 4, 224))
    costs = sensitivity[:, None] * np.array(sizes)[:, None] * sparsity[None, :] ** 2
    t_exact = median_time(lambda: msp.plan(sizes, 0.75, levels, method="exact", cost_table=costs, progress=False),
                          lambda: None, repeats)
    started = time.perf_counter()
    search = msp.Search(sizes, 0.75, levels, sensitivity=sensitivity, offspring=16, generations=50)
    created = time.perf_counter() - started
    generations, started = 0, time.perf_counter()
    while not search.done:
        candidates = search.ask()
        if not candidates:
            break
        search.tell([float(costs[np.arange(224), c.levels].sum()) for c in candidates])
        generations += 1
    elapsed = time.perf_counter() - started
    search.close()
    return {"exact_ms": t_exact * 1e3, "create_ms": created * 1e3, "generations": generations,
            "ms_per_generation": elapsed / generations * 1e3, "generations_per_s": generations / elapsed}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", nargs="?", const="-", metavar="PATH", help="also write JSON (default: stdout)")
    parser.add_argument("--quick", action="store_true", help="4096 x 4096 only")
    parser.add_argument("--repeats", type=int, default=5, help="timed repeats of the fast methods (default 5)")
    parser.add_argument("--slow-repeats", type=int, default=1, help="timed repeats of the slow baselines (default 1)")
    args = parser.parse_args()

    shapes = SHAPES[:1] if args.quick else SHAPES
    started = time.perf_counter()
    machine = {
        "cpu": _cpu_name(),
        "cores": os.cpu_count(),
        "msp_threads": msp.get_num_threads(),
        "torch_threads": torch.get_num_threads(),
        "msp_version": msp.__version__,
        "library": msp._lib.path,
        "torch": torch.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
    }
    print("msp bench: magnitude scores; weights restored before every repeat (untimed); medians")
    for key, value in machine.items():
        print(f"  {key}: {value}")
    bandwidth = copy_bandwidth(args.repeats)
    print("  copy bandwidth (read + write): " + ", ".join(f"{k.rsplit('_', 1)[0]} {v:.1f} GB/s"
                                                          for k, v in bandwidth.items()))
    print()
    print_header(COLUMNS)

    results: list = []
    for shape in shapes:
        for dtype_name in DTYPES:
            for n, m in PATTERNS:
                run_case(
                    results, shape, dtype_name, f"{n}:{m}",
                    lambda W, n=n, m=m: msp.prune_nm_(W, n, m),
                    {
                        "torch wanda loop": (lambda W, n=n, m=m: wanda_nm_loop(W, n, m), True, False),
                        "torch vectorised": (lambda W, n=n, m=m: torch_nm_vectorised(W, n, m), False, False),
                        "numpy": (lambda W, n=n, m=m: numpy_nm(W, n, m), True, True),
                    },
                    args.repeats, args.slow_repeats,
                )
            run_case(
                results, shape, dtype_name, "row 50%",
                lambda W: msp.prune_topk_(W, SPARSITY, "row"),
                {
                    "torch wanda sort": (lambda W: wanda_unstructured_sort(W, SPARSITY), False, False),
                    "numpy": (lambda W: numpy_unstructured(W, SPARSITY), True, True),
                },
                args.repeats, args.slow_repeats,
            )
    g = torch.randn(11008, 4096, generator=torch.Generator().manual_seed(0)).to(torch.bfloat16)
    t_msp = median_time(lambda: msp.sum_squares(g), lambda: None, args.repeats)
    t_torch = median_time(lambda: (g.float() ** 2).sum(), lambda: None, args.repeats)
    squares = {"msp_ms": t_msp * 1e3, "torch_ms": t_torch * 1e3, "ratio": t_torch / t_msp,
               "msp_GBps": g.numel() * 2 / t_msp / 1e9}
    print(f"sum_squares 11008x4096 bf16: msp {squares['msp_ms']:.1f} ms ({squares['msp_GBps']:.1f} GB/s read), "
          f"torch (g.float()**2).sum() {squares['torch_ms']:.1f} ms: {squares['ratio']:.1f}x")
    planner = planner_speed(args.repeats)
    print(f"planner, 224 layers x 16 levels, tolerance 0.001: exact solver {planner['exact_ms']:.1f} ms "
          f"({1e3 / planner['exact_ms']:.1f} plans/s); search with an additive fitness "
          f"{planner['generations_per_s']:.0f} generations/s ({planner['ms_per_generation']:.2f} ms per "
          f"generation of 16, ask + fitness + tell, after {planner['create_ms']:.0f} ms for the prior grid)")
    print()
    print("ratio = baseline time / msp time (higher: msp faster). numpy (f32 only): stable argsort per group for")
    print("N:M, argpartition per row (not tie-stable) for unstructured. msp GB/s counts 2 x weight bytes.")
    target = next(r for r in results if r["shape"] == "4096x4096" and r["dtype"] == "bf16" and r["case"] == "2:4")
    ratio = target["baselines"]["torch vectorised"]["ratio"]
    print(f"2:4 on 4096x4096 bf16: msp is {ratio:.1f}x faster than the vectorised torch path "
          f"(goal >= 30x: {'met' if ratio >= 30 else 'NOT met'})")
    print(f"total bench time {time.perf_counter() - started:.0f} s")

    if args.json:
        report = {"machine": machine, "copy_bandwidth": bandwidth, "results": results, "sum_squares": squares,
                  "planner": planner}
        text = json.dumps(report, indent=2)
        if args.json == "-":
            print(text)
        else:
            Path(args.json).write_text(text + "\n")


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


if __name__ == "__main__":
    main()
