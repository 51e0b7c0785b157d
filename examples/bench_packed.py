#!/usr/bin/env python3
"""The compressed N:M product (msp.nm_linear) against torch.nn.functional.linear on dense weights.

Run by examples/bench.py (``make bench``), or alone. For every shape (576x1536, 1536x576, 4096x4096,
11008x4096), level (2:8, 1:8, 4:8, 2:4) and batch (1, 4, 16 tokens): msp on bfloat16 weights packed
by msp.nm_pack with bfloat16 tokens, with the AVX-512 kernels (when the CPU has them) and the AVX2
ones (a child process with MSP_ISA=avx2), each at 1 and all threads; torch's F.linear with the dense
bfloat16 weight and bfloat16 tokens, and with the dense float32 weight and float32 tokens, at 1 and
all threads. Medians of single calls; the variants of a shape and batch take turns in blocks, so that
changes in the load of a shared machine hit them alike.

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


def groups(quick: bool) -> list[tuple[tuple[int, int], int, list[str]]]:
    """The cases grouped by (shape, batch), whose variants are timed interleaved."""
    out: dict = {}
    for shape, level, batch in cases(quick):
        out.setdefault((shape, batch), []).append(level)
    return [(shape, batch, levels) for (shape, batch), levels in out.items()]


def copies_of(nbytes: int) -> int:
    return max(1, -(-WORKING_SET // nbytes))


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


def interleaved(variants: dict, repeats: int, blocks: int = 3) -> dict:
    """The median and the least ms ({name: (median, least)}) of each variant, `name -> (call(i),
    copies)`, each call on the variant's next weight copy. The variants take turns in `blocks` blocks of consecutive calls, so that a change in the
    load of a shared machine hits all of them alike; calls per block: as many as take about 0.1 s,
    from `repeats` to 10 x `repeats`, after one untimed pass over every copy. Each block waits
    50 ms first: torch's OpenMP threads spin for a while after a parallel call, and would take the
    cores from the next variant's calls."""
    first = {}  # one call of every variant: the last one of its untimed pass
    for name, (call, count) in variants.items():
        for i in range(count):
            start = time.perf_counter()
            call(i)
        first[name] = time.perf_counter() - start
    times: dict = {name: [] for name in variants}
    for _ in range(blocks):
        for name, (call, count) in variants.items():
            time.sleep(0.05)
            for i in range(max(repeats, min(10 * repeats, int(0.1 / max(first[name], 1e-6))))):
                start = time.perf_counter()
                call(i % count)
                times[name].append(time.perf_counter() - start)
    return {name: (1e3 * statistics.median(t), 1e3 * min(t)) for name, t in times.items()}


def time_group(shape: tuple[int, int], batch: int, levels: list[str], repeats: int, threads: list[int],
               dense: bool) -> dict:
    """msp.nm_linear at every level (with this process's kernels) and, when `dense`, F.linear on the
    dense bf16 and f32 weights: {"bytes": {level: packed bytes}, "ms": {threads: {variant: (median,
    least)}}}."""
    variants, nbytes = {}, {}
    for level in levels:
        packed = msp.nm_pack(weight(shape), level)
        copies = [msp.PackedNM(packed.values.clone(), packed.index.clone(), shape, level)
                  for _ in range(copies_of(packed.nbytes))]
        x = tokens(batch, shape[1])
        variants[level] = (lambda i, x=x, copies=copies: msp.nm_linear(x, copies[i]), len(copies))
        nbytes[level] = packed.nbytes
    for name, dtype in (("torch bf16", torch.bfloat16), ("torch f32", torch.float32)) if dense else ():
        w = weight(shape).to(dtype)
        copies = [w.clone() for _ in range(copies_of(w.numel() * w.element_size()))]
        x = tokens(batch, shape[1]).to(dtype)
        variants[name] = (lambda i, x=x, copies=copies: torch.nn.functional.linear(x, copies[i]), len(copies))
    ms = {str(n): with_threads(n, lambda: interleaved(variants, repeats)) for n in threads}
    return {"bytes": nbytes, "ms": ms}


def time_all(quick: bool, repeats: int, threads: list[int], dense: bool) -> dict:
    """time_group of every group, keyed "shape batch"."""
    return {f"{shape[0]}x{shape[1]} {batch}": time_group(shape, batch, levels, repeats, threads, dense)
            for shape, batch, levels in groups(quick)}


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
          f"copies filling {WORKING_SET >> 20} MiB; ms at 1/{cores} threads: medians, and msp's least times; GB/s and "
          f"%bw of the packed bytes and x dense (the best torch time over msp's) by medians (least times)")
    timed = time_all(quick, repeats, threads, dense=True)
    avx2 = avx2_child(quick, repeats, threads) if isa == "avx512" else None
    print(f"{'shape':<11} {'level':<5} {'b':>2} {'MB':>6} {f'{isa} 1/{cores}':>13} {'least':>11} {'GB/s':>10} "
          f"{'%bw':>9} {f'avx2 1/{cores}':>13} {f'torch bf16 1/{cores}':>19} {f'torch f32 1/{cores}':>18} {'x dense':>11}")
    records = []
    for shape, level, batch in cases(quick):
        label = f"{shape[0]}x{shape[1]}"
        group, nbytes = timed[f"{label} {batch}"], timed[f"{label} {batch}"]["bytes"][level]
        record = {"kind": "nm_linear", "case": f"{level} batch {batch}", "shape": label, "dtype": "bf16",
                  "packed_bytes": nbytes, "dense_bf16_bytes": 2 * shape[0] * shape[1], "isa": isa,
                  "read_GBps": read_GBps}
        for k, stat in ((0, "median"), (1, "least")):
            # {threads: ms} of one variant, by this statistic
            pick = lambda ms, name: {t: v[name][k] for t, v in ms.items()}  # noqa: E731
            mine = pick(group["ms"], level)
            peers = {name: pick(group["ms"], f"torch {name}") for name in ("bf16", "f32")}
            best, best_dense = min(mine.values()), min(min(times.values()) for times in peers.values())
            record[stat] = {
                "msp_ms": mine, "msp_avx2_ms": None if avx2 is None else pick(avx2[f"{label} {batch}"]["ms"], level),
                "torch_bf16_ms": peers["bf16"], "torch_f32_ms": peers["f32"], "msp_GBps": nbytes / best / 1e6,
                "fraction_of_read_bandwidth": None if read_GBps is None else nbytes / best / 1e6 / read_GBps,
                "best_dense_over_msp": best_dense / best,
            }
        records.append(record)
        med, least = record["median"], record["least"]
        bw = "-" if read_GBps is None else (
            f"{100 * med['fraction_of_read_bandwidth']:.0f}% ({100 * least['fraction_of_read_bandwidth']:.0f}%)")
        gbps = f"{med['msp_GBps']:.1f} ({least['msp_GBps']:.1f})"
        speedup = f"{med['best_dense_over_msp']:.1f}x ({least['best_dense_over_msp']:.1f}x)"
        print(f"{label:<11} {level:<5} {batch:>2} {nbytes / 1e6:>6.2f} {pair(med['msp_ms']):>13} "
              f"{pair(least['msp_ms']):>11} {gbps:>10} {bw:>9} {pair(med['msp_avx2_ms']):>13} "
              f"{pair(med['torch_bf16_ms']):>19} {pair(med['torch_f32_ms']):>18} {speedup:>11}", flush=True)
    for line in goals(records):
        print(line)
    return records


def goals(records: list[dict]) -> list[str]:
    """The issue's bar at 2:8, batch 1, 4096x4096 and 11008x4096 bf16, met or not, by the medians and
    by the least times (on a shared machine the medians also measure other processes' time slices)."""
    lines = []
    for r in records:
        if r["case"] != "2:8 batch 1" or r["shape"] not in ("4096x4096", "11008x4096"):
            continue
        parts = []
        for stat in ("median", "least"):
            x, f = r[stat]["best_dense_over_msp"], r[stat]["fraction_of_read_bandwidth"]
            met = x >= GOAL_SPEEDUP and (f is None or f >= GOAL_BANDWIDTH)
            bw = "" if f is None else f", {100 * f:.0f}% of read bandwidth"
            parts.append(f"{'medians' if stat == 'median' else 'least times'} {x:.1f}x{bw} ({'met' if met else 'NOT met'})")
        lines.append(f"goal: nm_linear 2:8 batch 1 {r['shape']} bf16 at least {GOAL_SPEEDUP}x the best dense torch "
                     f"F.linear and {100 * GOAL_BANDWIDTH:.0f}% of read bandwidth: " + "; ".join(parts))
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
        print(json.dumps({"isa": isa, "times": time_all(args.quick, args.repeats, threads, dense=False)}))
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
