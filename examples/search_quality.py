#!/usr/bin/env python3
"""The search-quality record on the demo model: held-out perplexity of the searched plan relative to
uniform Wanda, for the previous search settings and the current defaults, at 40, 80 and 160
fitness evaluations over 3 calibration seeds.

    make search-quality                # or: python examples/search_quality.py [--phases ...]

SmolLM2-135M-Instruct (loaded as ``examples/demo.py`` does), Wanda, two targets: 70 % unstructured
(levels 40 % .. 90 %) and 75 % N:8-mixed (8:8 .. 1:8), the demo's search (8 offspring, 4 survivors,
the grid of Fisher priors first) with fitness = KL to the dense model on 8 x 128 calibration tokens.
Two options change the problem (each file holds one setting of them: a rerun with other settings
into the same ``--out`` is refused, so rows never mix):

- ``--levels wide``: the unstructured target's levels 0 % .. 95 % in 5 % steps (``msp.torch.prune``'s
  default for ``"unstructured"``, which at a 70 % target adds no level) instead of the demo's
  40 % .. 90 % (``demo``); the N:8 target keeps 8:8 .. 1:8;
- ``--fitness-tokens T``: the fitness KL on T calibration tokens (a multiple of 128; default 1024:
  measured against the demo's 256, it gave the lower held-out perplexity at 40 and 80 evaluations on
  both targets, for about 3.6 times the seconds per search).
Calibration seed s draws the 16 x 128 Fisher/Wanda tokens (text seed 2s), the fitness tokens (text
seed 2s + 1) and seeds the search with s. The held-out perplexity is the demo's: 16 x 128 tokens of
news text disjoint from the calibration text.

Variants (``--phases`` runs them in the order given; every result is one JSON line appended to
``--out/search_quality.jsonl`` as soon as it is measured, and a rerun skips what the file holds, so a
partial run is usable and an interrupted one resumes):

- ``uniform`` (always) and ``prior``: the uniform plan and the Fisher prior's, without a search;
- ``previous``: ``surrogate_candidates=0, pair_rate=0`` (the settings before issue 17);
- ``current``: the library's defaults;
- ``proxy``: the defaults plus one proxy table, every layer's ``msp.cost_table`` energy (Wanda's
  norms as column scales) times its Fisher trace per parameter;
- ``staged``: the defaults with two fidelity levels, 128 fitness tokens for every offspring and the
  best quarter re-scored on 512 (``fidelity_levels=2, fidelity_keep=0.25``), given the same forward
  tokens as 80 single-fidelity evaluations on ``--fitness-tokens`` (the measured seconds are
  recorded too).

The budgets are prefixes of one run (``generations`` is only a stopping rule, so a run capped at B
evaluations evaluates exactly the first B plans of a longer one): phase ``<variant>`` runs 80
evaluations and records the best plan after 40 and 80, then saves the search (``Search.save``);
phase ``<variant>-160`` loads it and goes on to 160.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import demo  # noqa: E402  (sets up the import paths and real_model, as the demo runs)
import real_model  # noqa: E402

TARGETS = (("unstructured", "70% unstructured", 0.70, "ratio"), ("nm8", "75% N:8-mix", 0.75, "nm"))
VARIANTS = {
    "previous": dict(surrogate_candidates=0, pair_rate=0.0),
    "current": {},
    "proxy": {},
    "staged": dict(fidelity_levels=2, fidelity_keep=0.25),
}
FIXED = ("uniform", "prior")  # plans without a search (budget 0 in the file)
SEARCH = dict(generations=1000, offspring=8, survivors=4)  # generations: a bound never reached here
FITNESS_TOKENS = 1024  # 8 x 128 (the demo's search uses 2 x 128)
LEGACY = dict(levels="demo", fitness_tokens=256)  # the settings of rows that do not name theirs
LEVEL_SETS = ("demo", "wide")
STAGED_TOKENS = (128, 512)  # cheap, full
SEQ = 128


def log(message: str) -> None:
    print(f"[search-quality {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


class Seeded:
    """Everything of one calibration seed: traces, norms, pruner, fitness tokens and references."""

    def __init__(self, model, tokenizer, texts, layers, seed: int, fitness_tokens: int) -> None:
        from msp.torch import activation_norms, fisher_traces, reference_logits

        calibration_text, _ = texts
        self.seed = seed
        self.model = model
        self.layers = layers
        calibration = real_model.token_batches(tokenizer, calibration_text, 16, SEQ, 2 * seed)
        traces = fisher_traces(model, layers, calibration, progress=False)
        self.sensitivity = [traces[n] for n in layers]
        self.norms = activation_norms(model, layers, calibration)
        self.pruner = None
        # The full fitness tokens; the single-fidelity fitness and the cheap level use a prefix.
        count = max(STAGED_TOKENS[-1], fitness_tokens) // SEQ
        self.batches = real_model.token_batches(tokenizer, calibration_text, count, SEQ, 2 * seed + 1)
        self.reference = reference_logits(model, self.batches)
        self.tokens = 0  # forward tokens of every fitness evaluation so far

    def open(self) -> "Seeded":
        """A fresh Wanda pruner on the model (one pruner at a time owns the weights)."""
        from msp.torch import Pruner

        self.pruner = Pruner(self.layers, "wanda", self.norms)
        return self

    def close(self) -> None:
        """Restore the dense model and release the pruner."""
        self.pruner.restore()
        self.pruner.close()
        self.pruner = None

    def kl(self, plan, tokens: int) -> float:
        from msp.torch import kl_to_dense

        count = tokens // SEQ
        self.pruner.apply(plan)
        self.tokens += tokens
        return kl_to_dense(self.model, self.batches[:count], self.reference[:count])

    def proxy_table(self, levels):
        """Every layer's energy cost (Wanda's column norms) times its Fisher trace per parameter."""
        import numpy as np

        import msp

        rows = []
        for (name, layer), trace in zip(self.layers.items(), self.sensitivity):
            weight = layer.weight.detach()
            rows.append(msp.cost_table(weight, levels, "energy", col_scale=self.norms[name],
                                       scale=trace / weight.numel()))
        return np.stack(rows)


def level_set(kind: str, name: str):
    """The levels of a target: the demo's, or with ``name == "wide"`` 0 % .. 95 % for unstructured."""
    import msp

    if kind == "ratio" and name == "wide":
        return msp.ratio_levels([round(0.05 * k, 2) for k in range(20)])
    return demo.level_set(kind)


def held_out(seeded: Seeded, evaluation, plan) -> float:
    from msp.torch import perplexity

    seeded.pruner.apply(plan)
    return perplexity(seeded.model, evaluation)


def search_phase(args, record, seeded: Seeded, evaluation, key, target, kind, variant: str, extend: bool):
    """One search of ``variant`` (to 80 evaluations, or from its checkpoint on to 160)."""
    import msp

    levels = level_set(kind, args.levels)
    checkpoint = Path(args.out) / "search_quality_checkpoints" / f"{variant}_{key}_seed{seeded.seed}.msp"
    budgets = (160,) if extend else (40, 80)
    staged = variant == "staged"
    if staged:
        budgets = (80,)
    todo = [b for b in budgets if not record.has(seeded.seed, key, variant, b)]
    if not todo:
        return
    if extend:
        if not checkpoint.is_file():
            log(f"no checkpoint {checkpoint}: run phase {variant} first")
            return
        search = msp.Search.load(checkpoint)
        state = json.loads(checkpoint.with_suffix(".json").read_text())
        seeded.tokens = state["tokens"]
        seconds = state["seconds"]
    else:
        proxy = seeded.proxy_table(levels) if variant == "proxy" else None
        search = msp.Search(seeded.pruner.sizes, target, levels, sensitivity=seeded.sensitivity, proxy_costs=proxy,
                            seed=seeded.seed, **SEARCH, **VARIANTS[variant])
        seeded.tokens = 0
        seconds = 0.0
    full = STAGED_TOKENS[-1] if staged else args.fitness_tokens
    token_budget = 80 * args.fitness_tokens
    with search:
        best = search.best
        history = []
        while True:
            evaluations = search.progress["evaluations"]
            if staged and seeded.tokens >= token_budget or not staged and evaluations >= max(budgets):
                break
            candidates = search.ask()
            fidelity_tokens = full if search.fidelity == search.settings.fidelity_levels - 1 else STAGED_TOKENS[0]
            t0 = time.perf_counter()
            values = []
            for plan in candidates:
                values.append(seeded.kl(plan, fidelity_tokens))
                if search.fidelity == search.settings.fidelity_levels - 1:
                    evaluations += 1
                    history.append(values[-1])
                    if best is None or values[-1] < best.fitness:
                        best = plan
                        best.fitness = values[-1]
                    if not staged and evaluations in budgets:
                        seconds += time.perf_counter() - t0
                        t0 = time.perf_counter()
                        ppl = held_out(seeded, evaluation, best)
                        record.add(seeded.seed, key, variant, evaluations, ppl, best, seeded.tokens, seconds)
            seconds += time.perf_counter() - t0
            search.tell(values)
        if staged:
            best = search.best
            record.add(seeded.seed, key, variant, 80, held_out(seeded, evaluation, best), best, seeded.tokens, seconds,
                       full_evaluations=search.progress["evaluations"],
                       cheap_evaluations=search.progress["cheap_evaluations"])
        elif not extend:
            checkpoint.parent.mkdir(parents=True, exist_ok=True)
            search.save(checkpoint)
            checkpoint.with_suffix(".json").write_text(json.dumps({"tokens": seeded.tokens, "seconds": seconds}))


class Record:
    """The JSON lines file: what is measured, appended as it comes, every row with the problem's
    settings (rows written before the settings were options hold none: the demo's levels, 256 tokens)."""

    def __init__(self, path: Path, levels: str = "demo", fitness_tokens: int = FITNESS_TOKENS) -> None:
        self.path = path
        self.settings = dict(levels=levels, fitness_tokens=fitness_tokens)
        lines = path.read_text().splitlines() if path.is_file() else []
        self.rows = [json.loads(line) for line in lines if line.strip()]

    def check(self) -> None:
        """Refuse a file that holds rows of other settings (levels or fitness tokens)."""
        for row in self.rows:
            held = {key: row.get(key, value) for key, value in LEGACY.items()}
            if held != self.settings:
                raise SystemExit(f"{self.path} holds rows measured with {held}, not {self.settings}: "
                                 "give another --out")

    def has(self, seed, key, variant, budget) -> bool:
        wanted = (seed, key, variant, budget)
        return any((r["seed"], r["target"], r["variant"], r["budget"]) == wanted for r in self.rows)

    def add(self, seed, key, variant, budget, ppl, plan, tokens, seconds, **extra) -> None:
        row = dict(seed=seed, target=key, variant=variant, budget=budget, ppl=ppl, tokens=tokens,
                   seconds=round(seconds, 2), fitness=getattr(plan, "fitness", None),
                   sparsity=plan.sparsity if hasattr(plan, "sparsity") else None, **self.settings, **extra)
        self.rows.append(row)
        with self.path.open("a") as file:
            file.write(json.dumps(row) + "\n")
        log(f"seed {seed} {key} {variant} @{budget}: held-out perplexity {ppl:.2f} ({seconds:.0f} s)")


def table(record: Record, markdown: bool = False) -> str:
    """Held-out perplexity over uniform's, mean over the seeds measured (their count in brackets;
    with ``markdown`` each seed's value, seeds in order), one row per target and plan, one column
    per budget (staged: the cost of 80 evaluations)."""
    uniform = {(r["seed"], r["target"]): r["ppl"] for r in record.rows if r["variant"] == "uniform"}
    cells: dict[tuple, list[float]] = {}
    for r in record.rows:
        if (r["seed"], r["target"]) in uniform:
            cells.setdefault((r["target"], r["variant"], r["budget"]), []).append(
                (r["seed"], r["ppl"] / uniform[r["seed"], r["target"]]))
    columns = (0, 40, 80, 160)
    if markdown:
        lines = ["| target | plan | no search | 40 | 80 | 160 evaluations |", "|---|---|---|---|---|---|"]
        for key, title, _, _ in TARGETS:
            for variant in (*FIXED, *VARIANTS):
                row = [sorted(cells.get((key, variant, b), [])) for b in columns]
                if any(row):
                    lines.append(f"| {title} | {variant} | " + " | ".join(
                        f"{statistics.fmean(v for _, v in c):.3f} ({', '.join(f'{v:.3f}' for _, v in c)})" if c else ""
                        for c in row) + " |")
        return "\n".join(lines)
    lines = ["held-out perplexity / uniform Wanda's, mean over seeds (seeds measured)", "",
             f"{'target':<18} {'plan':<10}" + "".join(f"{f'{b} evals' if b else 'no search':>16}" for b in columns)]
    for key, title, _, _ in TARGETS:
        for variant in (*FIXED, *VARIANTS):
            row = [cells.get((key, variant, b)) for b in columns]
            if any(row):
                lines.append(f"{title:<18} {variant:<10}" + "".join(
                    f"{f'{statistics.fmean(v for _, v in c):.3f} ({len(c)})':>16}" if c else f"{'':>16}" for c in row))
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="out", help="folder of search_quality.jsonl and the checkpoints")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--targets", default="unstructured,nm8")
    parser.add_argument("--phases", default="prior,previous,current,staged,previous-160,current-160",
                        help="variants in order: previous, current, proxy, staged; '<variant>-160' goes on to 160; "
                             "prior: the Fisher prior's plan (msp.plan(method='prior'))")
    parser.add_argument("--levels", choices=LEVEL_SETS, default="demo",
                        help="unstructured levels: demo (40%% .. 90%%) or wide (0%% .. 95%%), 5%% steps")
    parser.add_argument("--fitness-tokens", type=int, default=FITNESS_TOKENS,
                        help=f"calibration tokens of the fitness KL, a multiple of {SEQ} (default {FITNESS_TOKENS})")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--table", action="store_true", help="print the table of what the file holds and stop")
    parser.add_argument("--markdown", action="store_true", help="with --table: a Markdown table with every seed")
    args = parser.parse_args(argv)
    if args.fitness_tokens < SEQ or args.fitness_tokens % SEQ:
        parser.error(f"--fitness-tokens must be a positive multiple of {SEQ}, got {args.fitness_tokens}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    record = Record(out / "search_quality.jsonl", args.levels, args.fitness_tokens)
    if args.table:
        print(table(record, args.markdown))
        return 0
    record.check()
    real_model.ensure_installed()
    import msp

    model, tokenizer = demo.load_model(True)
    for p in model.parameters():
        p.requires_grad_(False)
    demo.choose_threads(model, args.threads)
    texts = real_model.load_corpus()
    evaluation = real_model.token_batches(tokenizer, texts[1], 16, SEQ, 0)
    from msp.torch import linear_layers

    layers = linear_layers(model)
    targets = [t for t in TARGETS if t[0] in args.targets.split(",")]
    cache: dict[int, Seeded] = {}

    def seeded_for(seed: int) -> Seeded:
        if seed not in cache:
            log(f"seed {seed}: Fisher traces, norms, references")
            cache[seed] = Seeded(model, tokenizer, texts, layers, seed, args.fitness_tokens)
        return cache[seed].open()

    fixed = ("uniform",) + (("prior",) if "prior" in args.phases.split(",") else ())
    for seed in [int(s) for s in args.seeds.split(",")]:
        if all(record.has(seed, key, kind, 0) for kind in fixed for key, _, _, _ in targets):
            continue
        seeded = seeded_for(seed)
        for key, _, target, kind in targets:
            for method in fixed:
                if not record.has(seed, key, method, 0):
                    plan = msp.plan(seeded.pruner.sizes, target, level_set(kind, args.levels), seeded.sensitivity,
                                    method=method)
                    record.add(seed, key, method, 0, held_out(seeded, evaluation, plan), plan, 0, 0.0)
        seeded.close()
    for phase in args.phases.split(","):
        variant, _, extend = phase.partition("-")
        if variant == "prior":
            continue
        for seed in [int(s) for s in args.seeds.split(",")]:
            seeded = None
            for key, _, target, kind in targets:
                budgets = (160,) if extend else ((80,) if variant == "staged" else (40, 80))
                if all(record.has(seed, key, variant, b) for b in budgets):
                    continue
                if seeded is None:
                    seeded = seeded_for(seed)
                search_phase(args, record, seeded, evaluation, key, target, kind, variant, bool(extend))
            if seeded is not None:
                seeded.close()
    print(table(record))
    return 0


if __name__ == "__main__":
    sys.exit(main())
