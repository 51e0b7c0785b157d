"""msp end to end on a real pretrained LLM: uniform vs Fisher prior vs searched sparsity plans.

    make demo                      # or: python examples/demo.py [--quick] [--out DIR]

SmolLM2-135M-Instruct (30 Llama blocks, 210 linear layers; installed offline from PyPI, see
``real_model.py``) is pruned by magnitude, by Wanda and by SparseGPT at 70 % unstructured and at 75 %
N:8-mixed (every layer some n:8, average 2:8) with three plans each:

- uniform: every layer at the target (70 % / 2:8);
- Fisher prior: ``msp.plan(method="prior")``, more sensitive layers (larger Fisher trace) get less
  sparsity;
- searched: ``msp.plan(method="search")``, the evolutionary search seeded from a small grid of
  Fisher priors, with fitness = KL divergence of the pruned model from the dense one on a few
  calibration sequences.

SparseGPT prunes one shot with the Gram matrices of the dense model's layer inputs
(``msp.torch.gram_matrices``, on 32 x 128 calibration tokens: SparseGPT needs several times more
tokens than a layer has inputs, 1536 here); Wanda's activation norms come from the same pass
(``Grams.norms()``). Before SparseGPT's plans, ``Pruner.build`` prunes every layer at every level of
the setting once (the search's database, timed), and every plan is then assembled by copies.

Fisher traces, the Gram matrices (and norms) and the search's fitness use the calibration text
only; the
table's perplexities are measured on held-out text (disjoint news articles). It prints one table
and writes two PNGs to ``--out`` (default ``out/``): per-layer Fisher trace next to the planned
sparsity, and best fitness per generation of every search. The plans are saved there as JSON.

The first run converts the GGUF checkpoint (about a minute) and caches the float32 model under
``~/.cache/msp`` (or ``$MSP_MODEL_CACHE``; 0.5 GB); ``--no-cache`` skips the cache.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
if importlib.util.find_spec("msp") is None:  # running from a source checkout
    sys.path.insert(0, str(HERE.parent / "python"))

import real_model  # noqa: E402  (sets HF_HUB_OFFLINE before transformers is imported)

MATPLOTLIB = "matplotlib==3.11.2"


@dataclass(frozen=True)
class Config:
    calibration: int  # calibration sequences for the Fisher traces
    calibration_len: int
    statistics: int  # calibration sequences for the Gram matrices and, from them, Wanda's norms
    fitness: int  # calibration sequences scored by the search's fitness (KL to dense)
    fitness_len: int
    evaluation: int  # held-out sequences for the table's perplexities
    evaluation_len: int
    generations: int
    offspring: int
    survivors: int
    pruners: tuple[str, ...]


FULL = Config(16, 128, 32, 2, 128, 16, 128, generations=10, offspring=8, survivors=4,
              pruners=("magnitude", "wanda", "sparsegpt"))
QUICK = Config(4, 128, 16, 1, 128, 4, 128, generations=2, offspring=4, survivors=2, pruners=("magnitude", "wanda", "sparsegpt"))
DATABASE_BYTES = 6 << 30  # SparseGPT's database of one setting in memory: 11 levels x 0.42 GB at most

SETTINGS = (  # (key, column title, target, level set maker)
    ("unstructured", "70% unstructured", 0.70, "ratio"),
    ("nm8", "75% N:8-mixed", 0.75, "nm"),
)


def ensure_matplotlib() -> None:
    """Install matplotlib from PyPI when it is missing (like ``real_model.ensure_installed``)."""
    if importlib.util.find_spec("matplotlib") is None:
        subprocess.run([sys.executable, "-m", "pip", "--disable-pip-version-check", "-q", "install", MATPLOTLIB],
                       check=True)


def log(message: str) -> None:
    print(f"[demo {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


class Clock:
    """Wall time per stage, in the order the stages ran."""

    def __init__(self) -> None:
        self.stages: list[tuple[str, float]] = []
        self.start = time.perf_counter()

    def run(self, name: str, fn, *args, **kwargs):
        log(f"{name} ...")
        t0 = time.perf_counter()
        result = fn(*args, **kwargs)
        seconds = time.perf_counter() - t0
        self.stages.append((name, seconds))
        log(f"{name}: {seconds:.1f} s")
        return result, seconds


# --- model ----------------------------------------------------------------------------------------


def cache_dir() -> Path:
    base = Path(os.environ.get("MSP_MODEL_CACHE", Path.home() / ".cache" / "msp"))
    gguf = real_model.gguf_path()
    stat = gguf.stat()
    return base / f"smollm2-135m-f32-{stat.st_size}-{int(stat.st_mtime)}"


def load_model(use_cache: bool):
    """``(model, tokenizer)``: from the float32 cache when present, else from the GGUF file (and then
    cached). transformers refuses ``save_pretrained`` on a GGUF-loaded model, so the cache holds the
    config (without its quantization entry), the tokenizer files and ``torch.save`` of the
    de-quantised state dict; reloading gives bit-identical weights in about a second."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging

    logging.disable_progress_bar()
    path = cache_dir() if use_cache else None
    if path is not None and (path / "done").is_file():
        tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
        config = AutoConfig.from_pretrained(str(path), local_files_only=True)
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        state = torch.load(path / "model.pt", map_location="cpu", weights_only=True, mmap=True)
        model.load_state_dict(state)
        model.tie_weights()
        model.eval()
        return model, tokenizer
    model, tokenizer = real_model.load_model()
    if path is not None:
        path.mkdir(parents=True, exist_ok=True)
        config = model.config.to_dict()
        config.pop("quantization_config", None)
        (path / "config.json").write_text(json.dumps(config, indent=1) + "\n")
        tokenizer.save_pretrained(str(path))
        torch.save(model.state_dict(), path / "model.pt")
        (path / "done").write_text("ok\n")
    return model, tokenizer


def choose_threads(model, requested: int | None) -> int:
    """torch threads for this run: ``requested``, else the faster of 1 and all cores on a short
    forward pass (on a loaded 2-core machine, two threads can be several times slower than one)."""
    import torch

    import msp

    cores = os.cpu_count() or 1
    if requested is None and cores > 1:
        ids = torch.randint(0, 1000, (1, 64), generator=torch.Generator().manual_seed(0))
        best = None
        with torch.no_grad():
            for n in (1, cores, 1, cores):
                torch.set_num_threads(n)
                t0 = time.perf_counter()
                model(ids)
                seconds = time.perf_counter() - t0
                if best is None or seconds < best[1]:
                    best = (n, seconds)
        requested = best[0]
    threads = requested or 1
    torch.set_num_threads(threads)
    msp.set_num_threads(threads)
    return threads


# --- the experiment ---------------------------------------------------------------------------------


def level_set(kind: str):
    import msp

    if kind == "nm":
        return msp.nm_levels(8)  # 8:8 (dense) .. 1:8
    return msp.ratio_levels([round(0.40 + 0.05 * k, 2) for k in range(11)])  # 40 % .. 90 %


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a smaller run (fewer tokens and evaluations)")
    parser.add_argument("--out", default="out", help="folder for the PNGs and plans (default: out/)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: the faster of 1 and all)")
    parser.add_argument("--no-cache", action="store_true", help="load the GGUF file, do not cache the float32 model")
    parser.add_argument("--seed", type=int, default=0, help="search seed")
    args = parser.parse_args(argv)
    config = QUICK if args.quick else FULL
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    clock = Clock()
    real_model.ensure_installed()
    ensure_matplotlib()
    import msp
    from msp.torch import (
        Pruner,
        fisher_traces,
        gram_matrices,
        kl_to_dense,
        linear_layers,
        perplexity,
        reference_logits,
    )

    (model, tokenizer), _ = clock.run("load SmolLM2-135M", load_model, not args.no_cache)
    for p in model.parameters():
        p.requires_grad_(False)  # fisher_traces enables what it needs
    threads = choose_threads(model, args.threads)
    log(f"torch and msp use {threads} thread(s)")
    calibration_text, evaluation_text = real_model.load_corpus()
    calibration = real_model.token_batches(tokenizer, calibration_text, config.calibration, config.calibration_len, 0)
    statistics = real_model.token_batches(tokenizer, calibration_text, config.statistics, config.calibration_len, 2)
    fitness_batches = real_model.token_batches(tokenizer, calibration_text, config.fitness, config.fitness_len, 1)
    evaluation = real_model.token_batches(tokenizer, evaluation_text, config.evaluation, config.evaluation_len, 0)
    layers = linear_layers(model)
    names = list(layers)
    sizes = [m.weight.numel() for m in layers.values()]

    traces, _ = clock.run(f"Fisher traces ({config.calibration} x {config.calibration_len} tokens)",
                          fisher_traces, model, layers, calibration, progress=False)
    sensitivity = [traces[n] for n in names]
    grams, _ = clock.run(f"Gram matrices ({config.statistics} x {config.calibration_len} tokens)", gram_matrices,
                         model, layers, statistics)
    norms = grams.norms()  # Wanda's activation norms from the same pass
    dense_ppl, dense_seconds = clock.run(
        f"dense perplexity ({config.evaluation} x {config.evaluation_len} held-out tokens)",
        perplexity, model, evaluation)
    reference, _ = clock.run("dense reference for the fitness", reference_logits, model, fitness_batches)

    results = {}  # (criterion, setting, plan kind) -> dict
    fitness_seconds: list[float] = []
    apply_seconds: list[float] = []
    for criterion in config.pruners:
        if criterion == "sparsegpt":
            pruner = Pruner(layers, criterion, grams=grams, cache_bytes=DATABASE_BYTES)
        else:
            pruner = Pruner(layers, criterion, norms if criterion == "wanda" else None)

        def fitness(plan):
            t0 = time.perf_counter()
            pruner.apply(plan)
            t1 = time.perf_counter()
            value = kl_to_dense(model, fitness_batches, reference)
            apply_seconds.append(t1 - t0)
            fitness_seconds.append(time.perf_counter() - t1)
            return value

        for key, title, target, kind in SETTINGS:
            levels = level_set(kind)
            if criterion == "sparsegpt":
                pruner.clear_cache()  # one setting's database at a time
                count = sum(lv.sparsity > 0 for lv in levels)
                _, seconds = clock.run(f"sparsegpt database: {title}, {len(names)} layers x {count} levels",
                                       pruner.build, levels, progress=False)
                results[(criterion, key, "database")] = seconds
            for plan_kind in ("uniform", "prior", "search"):
                stage = f"{criterion} {title} {plan_kind}"
                t0 = time.perf_counter()
                if plan_kind == "search":
                    log(f"{stage}: {config.generations} generations x {config.offspring} offspring ...")
                    plan = msp.plan(sizes, target, levels, sensitivity=sensitivity, fitness=fitness,
                                    method="search", generations=config.generations, offspring=config.offspring,
                                    survivors=config.survivors, seed=args.seed, progress=True)
                else:
                    plan = msp.plan(sizes, target, levels, sensitivity=sensitivity, method=plan_kind)
                plan_seconds = time.perf_counter() - t0
                pruner.apply(plan)
                t1 = time.perf_counter()
                ppl = perplexity(model, evaluation)
                eval_seconds = time.perf_counter() - t1
                clock.stages.append((f"{stage}: plan", plan_seconds))
                clock.stages.append((f"{stage}: held-out perplexity", eval_seconds))
                log(f"{stage}: perplexity {ppl:.2f} (plan {plan_seconds:.1f} s, evaluation {eval_seconds:.1f} s)")
                results[(criterion, key, plan_kind)] = dict(plan=plan, ppl=ppl, seconds=plan_seconds)
                plan.save(out / f"plan_{criterion}_{key}_{plan_kind}.json")
        pruner.restore()
        pruner.close()

    total = time.perf_counter() - clock.start
    print(table(config, dense_ppl, results, clock, total, threads, fitness_seconds, apply_seconds))
    plots(out, names, sensitivity, results, config)
    summary = {
        "dense_perplexity": dense_ppl,
        "perplexity": {"/".join(k): v["ppl"] for k, v in results.items() if k[2] != "database"},
        "plan_seconds": {"/".join(k): v["seconds"] for k, v in results.items() if k[2] != "database"},
        "database_seconds": {k[1]: v for k, v in results.items() if k[2] == "database"},
        "stages": clock.stages,
        "total_seconds": total,
        "threads": threads,
        "mean_fitness_ms": 1e3 * sum(fitness_seconds) / max(1, len(fitness_seconds)),
        "mean_apply_ms": 1e3 * sum(apply_seconds) / max(1, len(apply_seconds)),
        "median_apply_ms": 1e3 * sorted(apply_seconds)[len(apply_seconds) // 2] if apply_seconds else 0.0,
        "quick": args.quick,
    }
    (out / "demo_results.json").write_text(json.dumps(summary, indent=1) + "\n")
    log(f"wrote {out}/fisher_vs_sparsity.png, {out}/search_history.png, plans and demo_results.json")
    return 0


def table(config, dense_ppl, results, clock, total, threads, fitness_seconds, apply_seconds) -> str:
    kinds = {"uniform": "uniform", "prior": "Fisher prior", "search": "searched"}
    lines = [
        f"SmolLM2-135M-Instruct, 210 linear layers; held-out perplexity on {config.evaluation} x "
        f"{config.evaluation_len} tokens of news text not used for calibration",
        "",
        f"{'pruner':<10} {'plan':<13} " + " ".join(f"{title:>24}" for _, title, _, _ in SETTINGS),
        f"{'':<10} {'':<13} " + " ".join(f"{'perplexity':>12}{'plan time':>12}" for _ in SETTINGS),
        f"{'dense':<10} {'-':<13} " + " ".join(f"{dense_ppl:>12.2f}{'':>12}" for _ in SETTINGS),
    ]
    for criterion in config.pruners:
        for kind, label in kinds.items():
            cells = []
            for key, _, _, _ in SETTINGS:
                r = results[(criterion, key, kind)]
                cells.append(f"{r['ppl']:>12.2f}{r['seconds']:>11.1f}s")
            lines.append(f"{criterion:<10} {label:<13} " + " ".join(cells))
    lines.append("")
    for criterion in config.pruners:
        for key, title, _, _ in SETTINGS:
            u, s = results[(criterion, key, "uniform")]["ppl"], results[(criterion, key, "search")]["ppl"]
            p = results[(criterion, key, "prior")]["ppl"]
            plan = results[(criterion, key, "search")]["plan"]
            lines.append(f"{criterion} {title}: searched / uniform = {s / u:.2f}, prior / uniform = {p / u:.2f} "
                         f"({plan.evaluations} fitness evaluations)")
    if "sparsegpt" in config.pruners:
        built = ", ".join(f"{title} {results[('sparsegpt', key, 'database')]:.1f} s" for key, title, _, _ in SETTINGS)
        lines.append(f"sparsegpt database (every layer pruned once at every level of the setting): {built}")
    lines.append("")
    apply_ms = sorted(1e3 * a for a in apply_seconds) or [0.0]
    fitness_ms = 1e3 * sum(fitness_seconds) / max(1, len(fitness_seconds))
    lines.append(f"search: {config.generations} generations x {config.offspring} offspring after a grid of 8 Fisher "
                 f"priors; fitness = KL to dense on {config.fitness} x {config.fitness_len} calibration tokens, "
                 f"{fitness_ms:.0f} ms per evaluation plus applying the plan: median "
                 f"{apply_ms[len(apply_ms) // 2]:.0f} ms, mean {sum(apply_ms) / len(apply_ms):.0f} ms")
    lines.append("wall time per stage:")
    searches = [sec for name, sec in clock.stages if name.endswith("search: plan")]
    evaluations = [sec for name, sec in clock.stages if name.endswith("held-out perplexity")]
    for name, seconds in clock.stages:
        if not name.endswith(("plan", "held-out perplexity")):
            lines.append(f"  {name:<58} {seconds:8.1f} s")
    lines.append(f"  {f'{len(searches)} searches':<58} {sum(searches):8.1f} s")
    lines.append(f"  {f'{len(evaluations)} held-out perplexities of pruned models':<58} {sum(evaluations):8.1f} s")
    lines.append(f"  {'total (with start-up and the rest)':<58} {total:8.1f} s  ({threads} thread(s))")
    return "\n".join(lines)


def plots(out: Path, names, sensitivity, results, config) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    x = list(range(len(names)))
    fig, axes = plt.subplots(3, 1, figsize=(13, 8.5), sharex=True, gridspec_kw={"height_ratios": [1.2, 1, 1]})
    axes[0].bar(x, sensitivity, color="#555555", width=0.9)
    axes[0].set_yscale("log")
    axes[0].set_ylabel("Fisher trace")
    axes[0].set_title("SmolLM2-135M: per-layer Fisher trace and planned sparsity (Wanda)")
    for ax, (key, title, target, _) in zip(axes[1:], SETTINGS):
        for kind, style in (("uniform", ":"), ("prior", "--"), ("search", "-")):
            plan = results[("wanda", key, kind)]["plan"] if "wanda" in config.pruners else None
            if plan is not None:
                ax.step(x, [100 * s for s in plan.sparsity], style, where="mid", label=kind, linewidth=1.2)
        ax.set_ylabel(f"sparsity %\n{title}")
        ax.legend(loc="lower right", fontsize=8, ncol=3)
    blocks = [i for i, n in enumerate(names) if n.endswith("q_proj")]
    axes[-1].set_xticks(blocks[::3])
    axes[-1].set_xticklabels([names[i].split(".")[2] for i in blocks[::3]])
    axes[-1].set_xlabel("transformer block (7 linear layers each: q, k, v, o, gate, up, down)")
    fig.tight_layout()
    fig.savefig(out / "fisher_vs_sparsity.png", dpi=110)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for criterion in config.pruners:
        for key, title, _, _ in SETTINGS:
            history = results[(criterion, key, "search")]["plan"].history
            ax.plot(range(len(history)), history, marker="o", markersize=3, label=f"{criterion}, {title}")
    ax.set_yscale("log")
    ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    ax.set_xlabel("generation (0 = grid of Fisher priors)")
    ax.set_ylabel("best fitness (KL to dense, nats/token)")
    ax.set_title("Evolutionary search: best fitness per generation")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "search_history.png", dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
