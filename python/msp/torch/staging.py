"""The search inside :func:`msp.torch.prune`: staged fidelity on growing token sets, and checkpoints
that a later call resumes by itself.

Staged fidelity (``fidelity_tokens=(256, 1024)``): every candidate of a generation is scored on the
first 256 tokens of the fitness batches and only the best ``fidelity_keep`` fraction again on the
first 1024 (as EvoPress selects); the values at the last budget are the plans' fitness. The token
sets are prefixes of one another: whole batches, then the leading rows of the next one.

Checkpoints (``checkpoint=path``): the search is saved (``msp.Search.save``, atomic) after every
batch it is told, together with a description of its problem (layers, sizes, levels, target,
settings, Fisher traces, the pruner's statistics, the fitness and its tokens). A call whose problem
matches the file's resumes the search from it and ends with the plan an uninterrupted call gives; a
file of another problem is refused.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Mapping, Sequence
from typing import Any, Callable

import numpy as np
import torch

from .._progress import Progress
from ..errors import InvalidArgumentError
from ..plans import Plan
from ..search import Search

__all__ = ["check_fidelity_tokens", "fidelity_token_sets", "problem_description", "open_search", "run_search"]

CHECKPOINT_KIND = "msp.torch.prune"
"""The ``kind`` of the problem description a prune checkpoint carries."""

# Relative tolerance of the floating-point parts of a problem description (Fisher traces and the
# pruner's statistics are recomputed by a resumed call; another thread count may change last bits).
_RTOL = 1e-6


def _ids(batch: Any) -> torch.Tensor:
    """The token ids ``[B, T]`` of a batch: the tensor itself or a dict's ``input_ids``."""
    ids = batch.get("input_ids") if isinstance(batch, Mapping) else batch
    if not isinstance(ids, torch.Tensor) or ids.dim() != 2:
        raise TypeError("fidelity_tokens needs batches of token ids: tensors [B, T] or dicts with 'input_ids' [B, T]; "
                        f"got {type(batch).__name__}")
    return ids


def _head(batch: Any, rows: int) -> Any:
    """The first ``rows`` rows of a batch (every tensor of a dict with the batch's leading size)."""
    size = _ids(batch).shape[0]
    if isinstance(batch, torch.Tensor):
        return batch[:rows]
    return {k: v[:rows] if isinstance(v, torch.Tensor) and v.dim() > 0 and v.shape[0] == size else v
            for k, v in batch.items()}


def check_fidelity_tokens(tokens: Any) -> tuple[int, ...]:
    """The token budgets of staged fidelity as a tuple of ints.

    Raises:
        TypeError: not a non-empty sequence of integers.
        ValueError: budgets that are not positive and strictly increasing.
    """
    if isinstance(tokens, (str, bytes)) or not isinstance(tokens, Sequence) or not tokens:
        raise TypeError(f"fidelity_tokens must be a non-empty sequence of token counts, got {tokens!r}")
    for t in tokens:
        if isinstance(t, bool) or not isinstance(t, (int, np.integer)):
            raise TypeError(f"fidelity_tokens must hold integers, got {t!r}")
    if any(t <= 0 for t in tokens) or any(b <= a for a, b in zip(tokens, tokens[1:])):
        raise ValueError(f"fidelity_tokens must be positive and increasing, got {tuple(tokens)}")
    return tuple(int(t) for t in tokens)


def fidelity_token_sets(batches: Sequence[Any], tokens: Sequence[int]) -> list[list[Any]]:
    """The batches of each fidelity level: for each budget, the shortest prefix of ``batches`` (whole
    batches, then the leading rows of the next) holding at least that many tokens.

    Args:
        batches: token-id batches (tensors ``[B, T]`` or dicts with ``input_ids``).
        tokens: the token budgets (:func:`check_fidelity_tokens`).

    Raises:
        TypeError, ValueError: as :func:`check_fidelity_tokens`; batches that are not token ids;
            more tokens than the batches hold.
    """
    tokens = check_fidelity_tokens(tokens)
    available = sum(_ids(b).numel() for b in batches)
    if available < tokens[-1]:
        raise ValueError(f"fidelity_tokens asks for {tokens[-1]} tokens but the fitness batches hold {available}")
    sets = []
    for budget in tokens:
        chosen, have = [], 0
        for batch in batches:
            ids = _ids(batch)
            if have + ids.numel() <= budget:
                chosen.append(batch)
                have += ids.numel()
            else:
                chosen.append(_head(batch, math.ceil((budget - have) / ids.shape[1])))
                have = budget
            if have >= budget:
                break
        sets.append(chosen)
    return sets


def _digest(values: Any) -> str:
    """SHA-256 of tensors (their dtype, shape and bytes) nested in lists, tuples and dicts, and of
    the repr of anything else."""
    h = hashlib.sha256()

    def feed(value: Any) -> None:
        if isinstance(value, torch.Tensor):
            data = value.detach().cpu().contiguous()
            h.update(f"{data.dtype}{tuple(data.shape)}".encode())
            h.update(data.reshape(-1).view(torch.uint8).numpy().tobytes())
        elif isinstance(value, Mapping):
            for k in sorted(value, key=repr):
                h.update(repr(k).encode())
                feed(value[k])
        elif isinstance(value, (list, tuple)):
            h.update(f"[{len(value)}".encode())
            for v in value:
                feed(v)
        elif isinstance(value, np.ndarray):
            h.update(f"{value.dtype}{value.shape}".encode() + np.ascontiguousarray(value).tobytes())
        else:
            h.update(repr(value).encode())

    feed(values)
    return h.hexdigest()


def problem_description(*, names: list[str], sizes: list[int], target: float, levels: list[Any], groups: Any,
                        max_level: Any, settings: Any, sensitivity: Sequence[float], pruner: str, statistic: Any,
                        fitness: Any, eval_batches: Sequence[Any], fidelity_tokens: Any,
                        proxy_costs: Any) -> dict:
    """A JSON-ready description of everything a prune search depends on, for its checkpoint."""
    summary = None  # the pruner's statistic (Wanda's norms, SparseGPT's Gram matrices), one sum per layer
    if statistic is not None:
        summary = [float(torch.as_tensor(statistic[n]).double().sum()) for n in names]
    fitness_name = fitness if isinstance(fitness, str) else getattr(fitness, "__qualname__", type(fitness).__name__)
    return {
        "kind": CHECKPOINT_KIND,
        "layers": _digest(names),
        "sizes": _digest(sizes),
        "target": target,
        "levels": [str(level) for level in levels],
        "groups": _digest(groups),
        "max_level": _digest(max_level),
        "settings": _digest(sorted(vars(settings).items()) if hasattr(settings, "__dict__") else settings),
        "sensitivity": [float(s) for s in sensitivity],
        "pruner": pruner,
        "statistic": summary,
        "fitness": fitness_name,
        "fitness batches": _digest(list(eval_batches)),
        "fidelity_tokens": None if fidelity_tokens is None else [int(t) for t in fidelity_tokens],
        "proxy_costs": _digest(proxy_costs),
    }


def _differences(saved: Any, wanted: dict) -> list[str]:
    """The parts of ``wanted`` that ``saved`` describes differently (floats within ``_RTOL``)."""
    if not isinstance(saved, dict) or saved.get("kind") != CHECKPOINT_KIND:
        return ["it was not written by msp.torch.prune"]

    def same(a: Any, b: Any) -> bool:
        if isinstance(a, list) and isinstance(b, list):
            return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
        if isinstance(a, float) and isinstance(b, float):
            return math.isclose(a, b, rel_tol=_RTOL, abs_tol=0.0)
        return a == b

    return [key for key in wanted if not same(saved.get(key), wanted[key])]


def open_search(checkpoint: str | os.PathLike | None, description: dict, make: Callable[[], Search]) -> Search:
    """The search of ``checkpoint`` when that file exists and describes the same problem, else a new
    one from ``make()`` (which carries ``description`` into its checkpoints).

    Raises:
        ValueError: the file holds the search of another problem (the message names what differs).
        msp.InvalidArgumentError: the file is not a valid search file; OSError: it cannot be read.
    """
    if checkpoint is None or not os.path.exists(checkpoint):
        search = make()
        search.note = description
        return search
    search = Search.load(checkpoint)
    differ = _differences(search.note, json.loads(json.dumps(description)))
    if differ:
        search.close()
        raise InvalidArgumentError(
            f"checkpoint {os.fspath(checkpoint)!r} holds the search of another problem (differs in: "
            f"{', '.join(differ)}); remove the file or pass another path to start a new search")
    return search


def run_search(search: Search, score: Callable[[Plan, int], float], checkpoint: str | os.PathLike | None,
               progress: bool) -> Plan:
    """Drive ``search`` to its end with ``score(plan, fidelity)``, saving it to ``checkpoint`` (when
    not None) after every batch told; return the best plan."""
    if checkpoint is None:
        return search.run(score, progress=progress)
    bar = Progress("msp search", search.settings.generations + 1, "generations", bool(progress))
    try:
        while candidates := search.ask():
            fidelity = search.fidelity
            search.tell([score(plan, fidelity) for plan in candidates])
            search.save(checkpoint)
            state = search.progress
            bar.reach(state["generation"] + 1, {"evaluations": state["evaluations"],
                                                "best fitness": f"{state['best_fitness']:.6g}"})
    finally:
        bar.close()
    best = search.best
    if best is None:  # a finished search has evaluated its prior plans
        raise InvalidArgumentError("the checkpointed search finished without evaluating any plan")
    return best
