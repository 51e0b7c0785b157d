"""The plan search with its fitness evaluated by several ``torch.distributed`` processes.

    python examples/distributed_search.py --world-size 2          # SmolLM2-135M, Wanda, 75 % N:8-mixed
    python examples/distributed_search.py --world-size 2 --toy    # a small random model: seconds
    python examples/distributed_search.py --world-size 1 ...      # the single-process reference

msp stays a single-process library: only rank 0 owns the ``msp.Search``. Every generation:

1. rank 0 asks the search for a batch of candidate plans and broadcasts their level indices
   (an empty batch = the search is done);
2. every rank applies the candidates of its slice (candidate i goes to rank i % world_size) to its
   own copy of the model with a ``Pruner`` and scores them (KL to the dense model);
3. the values are gathered on rank 0, which puts them back in the order asked and calls ``tell``.

The fitness of a plan does not depend on which rank computes it (same model, same batches, one
torch thread per process), so the search sees exactly the values a single process would see, and
with the same seed returns the same plan as ``msp.plan(..., method="search")`` in one process.

Processes talk over gloo on the loopback interface; ``torch.multiprocessing.spawn`` starts them
(no torchrun needed). The statistics (Fisher traces, Wanda's norms) are computed once, on rank 0,
and the norms are broadcast. A fitness error on any rank stops every rank cleanly and is re-raised.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import os
import socket
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
if importlib.util.find_spec("msp") is None:  # running from a source checkout
    sys.path.insert(0, str(HERE.parent / "python"))

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
import torch.multiprocessing as mp  # noqa: E402

import msp  # noqa: E402
from msp.torch import (  # noqa: E402
    Pruner,
    activation_norms,
    fisher_traces,
    kl_to_dense,
    linear_layers,
    reference_logits,
)


@dataclass
class Job:
    """What to search. Everything here is pickled to the worker processes.

    Attributes:
        setup: a top-level function returning ``(model, calibration_batches, fitness_batches)``;
            every rank calls it and must get the same model and batches (seed everything).
        target: average sparsity.
        levels: the level set (any form ``msp.plan`` takes; default ``msp.nm_levels(8)``).
        pruner: the pruning criterion, ``"wanda"`` or ``"magnitude"``.
        settings: the search settings (generations, offspring, seed, ...).
        threads: torch and msp threads per process (1 keeps the forward passes bit-reproducible
            across processes and spreads the cores over the ranks).
    """

    setup: Callable[[], tuple[Any, list, list]]
    target: float = 0.75
    levels: Any = None
    pruner: str = "wanda"
    settings: msp.SearchSettings = field(default_factory=msp.SearchSettings)
    threads: int = 1


class _Problem:
    """One process's model, pruner and fitness."""

    def __init__(self, job: Job, statistics: bool) -> None:
        torch.set_num_threads(job.threads)
        msp.set_num_threads(job.threads)
        self.model, calibration, self.batches = job.setup()
        self.layers = linear_layers(self.model)
        self.sizes = [m.weight.numel() for m in self.layers.values()]
        self.levels = list(msp.nm_levels(8) if job.levels is None else job.levels)
        self.calibration = calibration
        self.traces = None
        self.norms = None
        if statistics:
            traces = fisher_traces(self.model, self.layers, calibration, progress=False)
            self.traces = [traces[n] for n in self.layers]
            if job.pruner == "wanda":
                self.norms = activation_norms(self.model, self.layers, calibration)
        self.job = job
        self.pruner: Pruner | None = None
        self.reference = None

    def start(self, norms) -> None:
        self.pruner = Pruner(self.layers, self.job.pruner, norms)
        self.reference = reference_logits(self.model, self.batches)

    def fitness(self, plan) -> float:
        self.pruner.apply(plan)
        return kl_to_dense(self.model, self.batches, self.reference)

    def search_kwargs(self) -> dict:
        return dict(sensitivity=self.traces, settings=self.job.settings)


def single_process(job: Job, progress: bool = False) -> "msp.Plan":
    """The reference: ``msp.plan(method="search")`` in this process, with the same fitness.
    Leaves this process's model pruned with the plan (returned with the model: ``(plan, model)``)."""
    problem = _Problem(job, statistics=True)
    problem.start(problem.norms)
    plan = msp.plan(problem.sizes, job.target, problem.levels, fitness=problem.fitness, method="search",
                    progress=progress, **problem.search_kwargs())
    problem.pruner.apply(plan)
    return plan


def _broadcast(value: Any, rank: int) -> Any:
    box = [value if rank == 0 else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def run_rank(rank: int, world_size: int, job: Job, progress: bool = False) -> "msp.Plan":
    """The distributed search as seen by one rank (the process group must be initialised).

    Returns the best plan on every rank, each rank's model pruned with it."""
    problem = _Problem(job, statistics=(rank == 0))
    problem.start(_broadcast(problem.norms, rank))
    search = None
    if rank == 0:
        search = msp.Search(problem.sizes, job.target, problem.levels, **problem.search_kwargs())
    generation = 0
    try:
        while True:
            if rank == 0:
                batch = [candidate.levels for candidate in search.ask()]
                message = {"plans": batch, "fidelity": search.fidelity}
            else:
                message = None
            message = _broadcast(message, rank)
            if message is None or "abort" in message:
                raise RuntimeError(f"rank {rank}: stopped because another rank failed: {message and message['abort']}")
            plans = message["plans"]
            if not plans:
                break
            t0 = time.perf_counter()
            mine, error = {}, None
            try:
                for i in range(rank, len(plans), world_size):
                    mine[i] = problem.fitness([problem.levels[k] for k in plans[i]])
            except Exception as exc:  # report it, so that no rank waits forever
                error = exc
            gathered = [None] * world_size if rank == 0 else None
            dist.gather_object((mine, None if error is None else f"rank {rank}: {error!r}"), gathered, dst=0)
            if error is not None:
                with contextlib.suppress(Exception):  # rank 0 may already have left
                    _broadcast(None, rank)  # matches rank 0's abort message below
                raise error
            if rank == 0:
                failures = [e for _, e in gathered if e is not None]
                if failures:
                    with contextlib.suppress(Exception):  # the failed rank may already have left
                        _broadcast({"abort": "; ".join(failures)}, rank)
                    raise RuntimeError("fitness failed on " + "; ".join(failures))
                values = {}
                for part, _ in gathered:
                    values.update(part)
                search.tell([values[i] for i in range(len(plans))])
                if progress:
                    print(f"generation {generation}: {len(plans)} plans on {world_size} ranks in "
                          f"{time.perf_counter() - t0:.1f} s, best {search.progress['best_fitness']:.5g}",
                          file=sys.stderr, flush=True)
            generation += 1
        best = _broadcast(search.best.to_json() if rank == 0 else None, rank)
    finally:
        if search is not None:
            search.close()
    plan = msp.Plan.from_json(best)
    problem.pruner.apply(plan)
    return plan


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world_size: int, port: int, job: Job, out: str, progress: bool) -> None:
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size)
    try:
        plan = run_rank(rank, world_size, job, progress)
        if rank == 0:
            plan.save(out)
    finally:
        dist.destroy_process_group()


def launch(job: Job, world_size: int = 2, progress: bool = False) -> "msp.Plan":
    """Run the search on ``world_size`` processes started by ``torch.multiprocessing.spawn`` and
    return rank 0's best plan. ``job.setup`` must be importable by name (a module-level function)."""
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "plan.json")
        mp.spawn(_worker, args=(world_size, free_port(), job, out, progress), nprocs=world_size, join=True)
        return msp.Plan.load(out)


# --- the two models of the command line -------------------------------------------------------------


def toy_setup():
    """A small random Llama-like stack (no download): 4 blocks of 7 linear layers."""
    import types

    from torch import nn

    vocab, dim, hidden, seq = 97, 32, 64, 24

    class Block(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.q_proj, self.k_proj, self.v_proj, self.o_proj = (nn.Linear(dim, dim, bias=False) for _ in range(4))
            self.gate_proj, self.up_proj = nn.Linear(dim, hidden, bias=False), nn.Linear(dim, hidden, bias=False)
            self.down_proj = nn.Linear(hidden, dim, bias=False)

        def forward(self, h):
            q, k, v = self.q_proj(h), self.k_proj(h), self.v_proj(h)
            mask = torch.full((h.shape[1], h.shape[1]), float("-inf")).triu(1)
            attn = torch.softmax(q @ k.transpose(1, 2) / dim**0.5 + mask, dim=-1)
            h = h + self.o_proj(attn @ v)
            return h + self.down_proj(torch.nn.functional.silu(self.gate_proj(h)) * self.up_proj(h))

    class Toy(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed = nn.Embedding(vocab, dim)
            self.layers = nn.ModuleList(Block() for _ in range(4))
            self.lm_head = nn.Linear(dim, vocab, bias=False)

        def forward(self, input_ids):
            h = self.embed(input_ids)
            for block in self.layers:
                h = block(h)
            return types.SimpleNamespace(logits=self.lm_head(h))

    torch.manual_seed(0)
    model = Toy().eval()
    g = torch.Generator().manual_seed(1)
    calibration = [torch.randint(0, vocab, (2, seq), generator=g) for _ in range(4)]
    fitness_batches = [torch.randint(0, vocab, (2, seq), generator=g)]
    return model, calibration, fitness_batches


def smollm2_setup():
    """SmolLM2-135M-Instruct and the news corpus of ``real_model.py`` (8 x 128 calibration tokens,
    2 x 128 for the fitness)."""
    import demo  # its loader caches the de-quantised model (the first load converts the GGUF file)
    import real_model

    real_model.ensure_installed()
    model, tokenizer = demo.load_model(use_cache=True)
    for p in model.parameters():
        p.requires_grad_(False)
    text, _ = real_model.load_corpus()
    return model, real_model.token_batches(tokenizer, text, 8, 128, 0), real_model.token_batches(tokenizer, text, 2, 128, 1)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="msp plan search with fitness on several torch.distributed processes")
    parser.add_argument("--world-size", type=int, default=2)
    parser.add_argument("--toy", action="store_true", help="a small random model instead of SmolLM2-135M")
    parser.add_argument("--generations", type=int, default=4)
    parser.add_argument("--offspring", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--compare", action="store_true", help="also run the single-process search and compare")
    args = parser.parse_args(argv)
    job = Job(setup=toy_setup if args.toy else smollm2_setup, target=0.75, pruner="wanda",
              settings=msp.SearchSettings(generations=args.generations, offspring=args.offspring, seed=args.seed))
    t0 = time.perf_counter()
    if args.world_size == 1:
        plan = single_process(job, progress=True)
    else:
        plan = launch(job, args.world_size, progress=True)
    seconds = time.perf_counter() - t0
    print(f"{args.world_size} process(es): {plan!r} in {seconds:.1f} s; history {[round(h, 5) for h in plan.history]}")
    counts: dict[str, int] = {}
    for level in plan.layer_levels:
        counts[str(level)] = counts.get(str(level), 0) + 1
    print("levels used:", ", ".join(f"{name} x{n}" for name, n in counts.items()))
    if args.compare and args.world_size > 1:
        t0 = time.perf_counter()
        reference = single_process(job)
        same = reference.levels == plan.levels and reference.fitness == plan.fitness
        print(f"1 process: {reference!r} in {time.perf_counter() - t0:.1f} s; same plan: {same}")
        return 0 if same else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
