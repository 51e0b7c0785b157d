#!/usr/bin/env python3
"""SparseGPT's search database for the demo model, next to llm-compressor's one uniform pass.

Run by examples/bench.py (`make bench`) or alone. On SmolLM2-135M-Instruct (the demo's model, its
float32 cache; 210 linear layers) with the demo's 32 x 128 calibration tokens:

- msp: ``gram_matrices`` (one forward pass, 120 distinct inputs) and ``Pruner.build`` of every layer
  at every level of the N:8 set (1:8 .. 7:8) and of the unstructured set (40% .. 90% in steps of
  5%): 210 x 18 SparseGPT sweeps, one factorisation per distinct input;
- llm-compressor: ``oneshot`` with one ``SparseGPTModifier(sparsity=0.7)`` over the same layers and
  tokens (its calibration forwards included), when its environment ``.venv-llmcompressor`` exists
  (``make test-integrations`` creates it: ``scripts/llmcompressor_env.sh``); run as a subprocess
  after msp's part, in the same bench run.

    python examples/bench_database.py [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "python"))

VENV_PYTHON = HERE.parent / ".venv-llmcompressor" / "bin" / "python"
SAMPLES, SEQ_LEN, SPARSITY = 32, 128, 0.7


def levels():
    import msp

    return msp.nm_levels(8)[1:] + msp.ratio_levels([round(0.40 + 0.05 * k, 2) for k in range(11)])


def run() -> dict | None:
    """Both timings, printed; None (with a line saying why) when the demo model is not cached."""
    import demo
    import real_model
    import torch

    import msp
    from msp.torch import Pruner, gram_matrices, linear_layers

    real_model.ensure_installed()
    if not (demo.cache_dir() / "done").is_file():
        print("database: the demo model is not cached (run `make demo` once); section skipped")
        return None
    model, tokenizer = demo.load_model(True)
    calibration_text, _ = real_model.load_corpus()
    batches = real_model.token_batches(tokenizer, calibration_text, SAMPLES, SEQ_LEN, 2)  # the demo's
    layers = linear_layers(model)
    wanted = levels()
    t0 = time.perf_counter()
    grams = gram_matrices(model, layers, batches)
    t1 = time.perf_counter()
    pruner = Pruner(layers, pruner="sparsegpt", grams=grams, cache_bytes=0)
    pruner.build(wanted, progress=False)
    t2 = time.perf_counter()
    pruner.close()
    record = {"layers": len(layers), "levels": len(wanted), "distinct_inputs": len(grams.groups),
              "tokens": SAMPLES * SEQ_LEN, "gram_s": t1 - t0, "build_s": t2 - t1,
              "msp_threads": msp.get_num_threads(), "torch_threads": torch.get_num_threads()}
    print(f"database: SmolLM2-135M-Instruct, {len(layers)} layers x {len(wanted)} levels (7 N:8 + 11 unstructured), "
          f"{SAMPLES} x {SEQ_LEN} calibration tokens: Gram matrices {record['gram_s']:.1f} s ({len(grams.groups)} "
          f"distinct inputs), SparseGPT sweeps {record['build_s']:.1f} s, together "
          f"{record['gram_s'] + record['build_s']:.1f} s")
    if not VENV_PYTHON.exists():
        print(f"llm-compressor: {VENV_PYTHON.parent.parent.name} not found (make test-integrations creates it); "
              f"its uniform pass not timed")
        return record
    with tempfile.TemporaryDirectory() as folder:
        ids = Path(folder) / "ids.pt"
        torch.save(torch.cat(batches), ids)
        env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
        done = subprocess.run([str(VENV_PYTHON), str(HERE / "llmcompressor_pass.py"), str(demo.cache_dir()), str(ids),
                               str(SPARSITY)], capture_output=True, text=True, env=env)
    if done.returncode != 0:
        print(f"llm-compressor: its pass failed (exit {done.returncode}): {done.stderr.strip()[-400:]}")
        return record
    record["llmcompressor"] = json.loads(done.stdout.strip().splitlines()[-1])
    lc = record["llmcompressor"]["seconds"]
    total = record["gram_s"] + record["build_s"]
    print(f"llm-compressor SparseGPTModifier, one uniform {SPARSITY:.0%} pass over the same {record['llmcompressor']['layers']} "
          f"layers and tokens: {lc:.1f} s (measured sparsity {record['llmcompressor']['sparsity']:.4f})")
    print(f"goal: the whole database (Gram matrices + {len(layers) * len(wanted)} sweeps) in no more time than "
          f"llm-compressor's one pass: {total:.1f} s vs {lc:.1f} s ({'met' if total <= lc else 'NOT met'})")
    return record


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", metavar="PATH", help="also write the record as JSON")
    args = parser.parse_args()
    record = run()
    if args.json and record is not None:
        Path(args.json).write_text(json.dumps(record, indent=1) + "\n")


if __name__ == "__main__":
    main()
