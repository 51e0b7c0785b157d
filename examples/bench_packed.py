#!/usr/bin/env python3
"""The compressed N:M product (msp.nm_linear) against torch.nn.functional.linear on dense weights.

Run by examples/bench.py (``make bench``), or alone. For every shape (576x1536, 1536x576, 4096x4096,
11008x4096), level (2:8, 1:8, 4:8, 2:4) and batch (1, 4, 16 tokens): msp on bfloat16 weights packed
by msp.nm_pack with bfloat16 tokens, with the AVX-512 kernels (when the CPU has them) and the AVX2
ones (a child process with MSP_ISA=avx2), each at 1 and all threads; torch's F.linear with the dense
bfloat16 weight and bfloat16 tokens, and with the dense float32 weight and float32 tokens, at 1 and
all threads. Medians of single calls.

Decoding reads every layer's weights once per token, from memory rather than cache: each call here
takes the next of enough copies of its weights (msp's packed arrays, torch's dense matrix) to
exceed 128 MiB, more than this CPU's caches hold. GB/s counts msp's compressed bytes (values +
index), next to the machine's read bandwidth measured by examples/bench_stream.c in the same run.

    python examples/bench_packed.py [--quick] [--json PATH] [--read-GBps X]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "python"))

import numpy as np  # noqa: E402
import torch  # noqa: E402

import msp  # noqa: E402

SHAPES = [(576, 1536), (1536, 576), (4096, 4096), (11008, 4096)]
LEVELS = ["2:8", "1:8", "4:8", "2:4"]
BATCHES = [1, 4, 16]
WORKING_SET = 128 << 20  # bytes of weight copies each case cycles through
GOAL_SPEEDUP, GOAL_BANDWIDTH = 2.5, 0.6


def cases(quick: bool) -> list[tuple[tuple[int, int], str, int]]:
    """(shape, level, batch) of the full table, or the headline cases."""
    if quick:
        return [((4096, 4096), "2:8", 1), ((11008, 4096), "2:8", 1)]
    return [(shape, level, batch) for shape in SHAPES for level in LEVELS for batch in BATCHES]


def copies_of(nbytes: int) -> int:
    return max(1, -(-WORKING_SET // nbytes))


def median_call(call, count: int, calls: int) -> float:
    """Median seconds of `calls` single calls `call(i)`, i cycling over `count` weight copies, after
    one pass over all copies (untimed)."""
    for i in range(count):
        call(i)
    times = []
    for i in range(calls):
        start = time.perf_counter()
        call(i % count)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def calls_for(first: float, repeats: int) -> int:
    """Timed calls: as many as take about 0.2 s, from `repeats` to 20 x `repeats`."""
    return max(repeats, min(20 * repeats, int(0.2 / max(first, 1e-6))))


def weight(shape: tuple[int, int]) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(shape[0] * 7 + shape[1])).to(torch.bfloat16)


def tokens(batch: int, cols: int) -> torch.Tensor:
    return torch.randn(batch, cols, generator=torch.Generator().manual_seed(batch)).to(torch.bfloat16)


def with_threads(n: int, fn):
    """Runs `fn()` with msp and torch on `n` threads, then restores both settings."""
    before_msp, before_torch = msp.get_num_threads(), torch.get_num_threads()
    msp.set_num_threads(n)
    torch.set_num_threads(n)
    try:
        return fn()
    finally:
        msp.set_num_threads(before_msp)
        torch.set_num_threads(before_torch)


def time_msp(quick: bool, repeats: int, threads: list[int]) -> dict:
    """Per case "shape level batch": the packed bytes and msp.nm_linear's median ms per thread count
    (keys str(threads)), with this process's kernels."""
    out = {}
    for shape, level, batch in cases(quick):
        packed = msp.nm_pack(weight(shape), level)
        copies = [msp.PackedNM(packed.values.clone(), packed.index.clone(), shape, level)
                  for _ in range(copies_of(packed.nbytes))]
        x = tokens(batch, shape[1])
        call = lambda i: msp.nm_linear(x, copies[i])  # noqa: E731
        first = median_call(call, 1, 1)
        ms = {str(n): 1e3 * with_threads(n, lambda: median_call(call, len(copies), calls_for(first, repeats)))
              for n in threads}
        out[f"{shape[0]}x{shape[1]} {level} {batch}"] = {"bytes": packed.nbytes, "ms": ms}
    return out


def time_torch(quick: bool, repeats: int, threads: list[int]) -> dict:
    """F.linear's median ms per thread count (keys str(threads)) per "shape batch dtype", on dense
    weights."""
    out = {}
    for shape, batch in sorted({(shape, batch) for shape, _, batch in cases(quick)}):
        for name, dtype in (("bf16", torch.bfloat16), ("f32", torch.float32)):
            dense = weight(shape).to(dtype)
            copies = [dense.clone() for _ in range(copies_of(dense.numel() * dense.element_size()))]
            x = tokens(batch, shape[1]).to(dtype)
            call = lambda i: torch.nn.functional.linear(x, copies[i])  # noqa: E731
            first = median_call(call, 1, 1)
            out[f"{shape[0]}x{shape[1]} {batch} {name}"] = {
                str(n): 1e3 * with_threads(n, lambda: median_call(call, len(copies), calls_for(first, repeats)))
                for n in threads}
    return out


def avx2_child(quick: bool, repeats: int, threads: list[int]) -> dict | None:
    """The AVX2 kernels' times from a child process with MSP_ISA=avx2 (None when it fails)."""
    env = dict(os.environ, MSP_ISA="avx2")
    command = [sys.executable, str(Path(__file__)), "--child", "--repeats", str(repeats),
               "--threads", ",".join(map(str, threads))] + (["--quick"] if quick else [])
    result = subprocess.run(command, env=env, capture_output=True, text=True)
    if result.returncode != 0:
        print(f"bench_packed: the AVX2 child failed: {result.stderr.strip()[-500:]}")
        return None
    report = json.loads(result.stdout)
    return report["times"] if report["isa"] == "avx2" else None


def pair(times: dict | None) -> str:
    """ms at each thread count, "a/b"; "-" when not measured."""
    return "-" if times is None else "/".join(f"{v:.2f}" for v in times.values())


def packed_section(quick: bool, repeats: int, read_GBps: float | None) -> list[dict]:
    """Times every case, prints the table and the goal lines, and returns one record per case."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    threads = sorted({1, cores})
    isa = msp._lib.lib.msp_nm_linear_isa().decode()
    print(f"\ncompressed N:M product (msp.nm_linear, {isa} kernels; AVX2 from a child with MSP_ISA=avx2) vs "
          f"F.linear on dense weights; bf16 weights and tokens (f32 for torch f32); each call on the next of "
          f"copies filling {WORKING_SET >> 20} MiB; ms (medians), threads 1/{cores}")
    ours = time_msp(quick, repeats, threads)
    avx2 = avx2_child(quick, repeats, threads) if isa == "avx512" else None
    dense = time_torch(quick, repeats, threads)
    print(f"{'shape':<11} {'level':<5} {'b':>2} {'MB':>6} {f'{isa} 1/{cores}':>15} {'GB/s':>5} {'%bw':>4} "
          f"{f'avx2 1/{cores}':>13} {f'torch bf16 1/{cores}':>19} {f'torch f32 1/{cores}':>18} {'x best':>6}")
    records = []
    for shape, level, batch in cases(quick):
        label = f"{shape[0]}x{shape[1]}"
        key = f"{label} {level} {batch}"
        nbytes, mine = ours[key]["bytes"], ours[key]["ms"]
        theirs = None if avx2 is None else avx2[key]["ms"]
        peers = {name: dense[f"{label} {batch} {name}"] for name in ("bf16", "f32")}
        best = min(mine.values())
        best_dense = min(min(times.values()) for times in peers.values())
        gbps = nbytes / best / 1e6
        records.append({
            "kind": "nm_linear", "case": f"{level} batch {batch}", "shape": label, "dtype": "bf16",
            "packed_bytes": nbytes, "dense_bf16_bytes": 2 * shape[0] * shape[1], "isa": isa, "msp_ms": mine,
            "msp_avx2_ms": theirs, "torch_bf16_ms": peers["bf16"], "torch_f32_ms": peers["f32"],
            "msp_GBps": gbps, "read_GBps": read_GBps,
            "fraction_of_read_bandwidth": None if read_GBps is None else gbps / read_GBps,
            "best_dense_over_msp": best_dense / best,
        })
        bw = "-" if read_GBps is None else f"{100 * gbps / read_GBps:.0f}%"
        print(f"{label:<11} {level:<5} {batch:>2} {nbytes / 1e6:>6.2f} {pair(mine):>15} {gbps:>5.1f} {bw:>4} "
              f"{pair(theirs):>13} {pair(peers['bf16']):>19} {pair(peers['f32']):>18} {best_dense / best:>5.1f}x",
              flush=True)
    for line in goals(records):
        print(line)
    return records


def goals(records: list[dict]) -> list[str]:
    """The issue's bar at 2:8, batch 1, 4096x4096 and 11008x4096 bf16, met or not."""
    lines = []
    for r in records:
        if r["case"] != "2:8 batch 1" or r["shape"] not in ("4096x4096", "11008x4096"):
            continue
        x, f = r["best_dense_over_msp"], r["fraction_of_read_bandwidth"]
        bw = "read bandwidth unknown" if f is None else (
            f"{100 * f:.0f}% of read bandwidth (>= {100 * GOAL_BANDWIDTH:.0f}%: {'met' if f >= GOAL_BANDWIDTH else 'NOT met'})")
        lines.append(f"goal: nm_linear 2:8 batch 1 {r['shape']} bf16: {x:.1f}x the best dense torch F.linear "
                     f"(>= {GOAL_SPEEDUP}x: {'met' if x >= GOAL_SPEEDUP else 'NOT met'}), {bw}")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2:8, batch 1, 4096x4096 and 11008x4096 only")
    parser.add_argument("--repeats", type=int, default=7, help="timed calls per case at least (default 7)")
    parser.add_argument("--json", nargs="?", const="-", metavar="PATH", help="also write JSON (default: stdout)")
    parser.add_argument("--read-GBps", type=float, default=None, help="the machine's read bandwidth, for %%bw")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)  # msp times only, as JSON
    parser.add_argument("--threads", default="", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        threads = [int(t) for t in args.threads.split(",")]
        isa = msp._lib.lib.msp_nm_linear_isa().decode()
        print(json.dumps({"isa": isa, "times": time_msp(args.quick, args.repeats, threads)}))
        return
    records = packed_section(args.quick, args.repeats, args.read_GBps)
    if args.json:
        text = json.dumps({"results": records, "checks": goals(records)}, indent=1)
        if args.json == "-":
            print(text)
        else:
            Path(args.json).write_text(text + "\n")


if __name__ == "__main__":
    main()
