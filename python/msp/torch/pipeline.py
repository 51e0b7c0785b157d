"""``prune``: the common case in one call: plan a mixed sparsity for a model and leave it pruned.

::

    plan = prune(model, calibration, target=0.75, structure="N:8", pruner="wanda", generations=10)

The steps are the public ones of ``msp.torch`` and ``msp``: Fisher traces, activation norms, a
:class:`Pruner`, ``msp.plan`` (every candidate applied and scored by a fitness on the model), and
applying the best plan.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Callable

from torch import nn

from .._deprecation import deprecated
from .._progress import Stage
from ..levels import Level, as_level_set, nm_levels, ratio_levels
from ..planner import plan as make_plan
from ..plans import Plan
from ..search import Search
from ..search_settings import SearchSettings
from .batches import calibration_batches
from .calibration import fisher_traces
from .evaluation import kl_to_dense, perplexity, reference_logits
from .layers import block_groups, linear_layers
from .pruner import Pruner
from .records import check_pruner, prepare_layers
from .sequential import apply_sequential
from .staging import check_fidelity_tokens, fidelity_token_sets, open_search, problem_description, run_search

__all__ = ["prune"]

PLANNING_METHODS = ("search", "prior", "uniform")
"""The planning methods of :func:`prune` (``"exact"`` needs a cost table, which prune does not make)."""

_SET_BY_PRUNE = ("sizes", "target", "levels", "sensitivity", "fitness", "groups", "method", "progress")


def _levels_for(structure: str, target: float) -> list[Level]:
    """The default level set of a structure: every N:M for ``"N:M"``; for ``"unstructured"`` the
    sparsities 0, 5 %, ..., 95 % and the target itself (so the uniform plan is exact)."""
    if not isinstance(structure, str):
        raise TypeError(f'structure must be "N:M" (e.g. "N:8") or "unstructured", got {structure!r}')
    text = structure.strip()
    if text.lower() == "unstructured":
        grid = {round(0.05 * k, 10) for k in range(20)} | {float(target)}
        return ratio_levels(sorted(grid))
    match = re.fullmatch(r"[nN]\s*:\s*(\d+)", text)
    if match is None:
        raise ValueError(f'structure must be "N:M" (e.g. "N:8": every layer some n:8) or "unstructured", got {structure!r}')
    return nm_levels(int(match.group(1)))


def _search_settings(settings: SearchSettings | None, search: Mapping[str, Any] | None,
                     overrides: dict[str, Any]) -> SearchSettings:
    """The search settings of ``prune``: ``settings`` with ``overrides`` and the deprecated
    ``search={...}`` mapping applied."""
    if search is not None:
        for key in search:
            if key in _SET_BY_PRUNE:
                raise ValueError(f"search={{{key!r}: ...}} is set by prune itself; pass it as prune's own argument")
            if key in overrides:
                raise TypeError(f"{key!r} is given both in search= and as a keyword")
        overrides = {**search, **overrides}
    return SearchSettings.of(settings, overrides)


def _max_levels(records: list, level_set: list[Level], stage: Stage) -> list[int] | None:
    """The densest-only bound of layers whose in_features no N:M level of the set divides: they can
    only stay dense (their m:m level) or take the unstructured levels. None when every layer fits all."""
    allowed = [[k for k, lv in enumerate(level_set) if not (lv.m and lv.n < lv.m and r.cols % lv.m)] for r in records]
    for record, fits in zip(records, allowed):
        if not fits:
            raise ValueError(f"layer {record.name!r} (in_features {record.cols}) fits no level of the level set")
    if all(fits == list(range(len(level_set))) for fits in allowed):
        return None
    if any(fits != list(range(fits[-1] + 1)) for fits in allowed):
        raise ValueError("some layers fit only a non-contiguous part of the level set; pass layers= without them")
    few = sum(fits[-1] + 1 < len(level_set) for fits in allowed)
    stage.note(f"{few} layer(s) have in_features not divisible by M: they stay dense")
    return [fits[-1] for fits in allowed]


def _measure(fitness: Any, model: nn.Module, batches: list, forward_fn: Any, stage: Stage) -> Callable[[], float]:
    """The fitness of the model as it is now: the user's ``fitness(model)``, or KL to the dense
    model (its reference computed here, while the model is dense), or perplexity on ``batches``."""
    if callable(fitness):
        return lambda: fitness(model)
    if fitness == "perplexity":
        return lambda: perplexity(model, batches)
    with stage(f"dense reference logits on {len(batches)} batches"):
        reference = reference_logits(model, batches, forward_fn=forward_fn)
    return lambda: kl_to_dense(model, batches, reference, forward_fn=forward_fn)


def _applying(worker: Pruner, measures: list[Callable[[], float]]) -> Callable[[Plan, int], float]:
    """The fitness of a candidate plan at a fidelity level: apply it, then measure the model (on the
    level's tokens; the last measure serves every higher level)."""

    def score(candidate: Plan, fidelity: int) -> float:
        worker.apply(candidate)
        return measures[min(fidelity, len(measures) - 1)]()

    return score


def prune(
    model: nn.Module,
    calibration: Any,
    target: float = 0.75,
    structure: str = "N:8",
    pruner: str = "wanda",
    *,
    settings: SearchSettings | None = None,
    fitness: str | Callable[[nn.Module], float] = "kl",
    eval_batches: Sequence[Any] | None = None,
    method: str = "search",
    levels: Sequence[Any] | None = None,
    layers: Mapping[str, nn.Module] | None = None,
    ignore: Iterable[str] = ("lm_head",),
    groups: str | Sequence[Any] | None = None,
    sensitivity: Any = None,
    norms: Any = None,
    grams: Any = None,
    sequential: bool = False,
    loss_fn: Callable[[nn.Module, Any], Any] | None = None,
    forward_fn: Callable[[nn.Module, Any], Any] | None = None,
    kernels: str = "auto",
    dense_copies: str = "device",
    progress: bool = True,
    search: Mapping[str, Any] | None = None,
    checkpoint: str | os.PathLike | None = None,
    fidelity_tokens: Sequence[int] | None = None,
    proxy_costs: Any = None,
    **overrides: Any,
) -> Plan:
    """Plan a mixed sparsity for ``model`` and leave the model pruned with it: the common case in one call.

    Steps (each reported on stderr when ``progress`` is on): Fisher traces of the linear layers on
    ``calibration``; Wanda's activation norms (``pruner="wanda"``) or SparseGPT's Gram matrices
    (``pruner="sparsegpt"``, ``gram_matrices``); the plan (by default the
    evolutionary search from the Fisher prior, every candidate applied to the model by a
    :class:`Pruner` and scored by ``fitness``); applying the best plan.

    Args:
        model: any ``nn.Module`` on any device (its linear weights are pruned in place: CPU
            weights by the native kernels, others on their device; ``kernels``). The defaults
            suit a causal LM taking token ids; other models pass ``loss_fn`` and ``forward_fn``
            (and ``fitness`` other than ``"perplexity"``).
        calibration: a list of batches, one tensor ``[N, ...]`` of N samples (cut into batches of
            8), or an iterable of batches (read into a list); ``msp.torch.batches``. A batch is
            token ids ``[B, T]``, a dict of model inputs, or whatever ``loss_fn``/``forward_fn``
            take (e.g. ``(x, y)``).
        target: average sparsity over the pruned layers, weighted by parameter count.
        structure: ``"N:M"`` (e.g. ``"N:8"``: every layer some n:8 from 1:8 to 8:8 = dense) or
            ``"unstructured"`` (0 %, 5 %, ..., 95 % and ``target``). ``levels`` overrides it.
        pruner: the pruning criterion, ``"wanda"``, ``"magnitude"`` or ``"sparsegpt"``. SparseGPT
            prunes one shot with the dense model's Gram matrices, in the search (every
            (layer, level) pruned once, then candidates assembled by copies: the
            :class:`Pruner`'s database) and, unless ``sequential``, in the final plan too.
        settings: the search settings (:class:`msp.SearchSettings`; None = the defaults).
        fitness: ``"kl"`` (mean KL divergence of the pruned model's output distribution from the
            dense one's: next-token distributions, or with ``forward_fn`` the distributions over
            the last dimension of its logits), ``"perplexity"`` (causal LMs only), or a callable
            ``fitness(model) -> float`` called with the candidate plan applied to ``model``
            (lower is better).
        eval_batches: the batches ``"kl"``/``"perplexity"`` are computed on; default: the first
            two calibration batches (keep it small: it runs once per candidate), or with
            ``fidelity_tokens`` all calibration batches (of which the budgets take prefixes).
        method: the planning method: ``"search"``, ``"prior"`` (the Fisher prior alone) or
            ``"uniform"``.
        levels: an explicit level set (least sparse first), instead of ``structure``.
        layers: the layers to prune; default ``linear_layers(model, ignore)``.
        ignore: layer names to leave dense when ``layers`` is None.
        groups: None, ``"block"`` (layers of one transformer block share a level, ``block_groups``)
            or one group label per layer.
        sensitivity, norms, grams: precomputed Fisher traces (dict or list), activation norms
            (Wanda) and Gram matrices (SparseGPT; ``gram_matrices``), to skip those steps. Given
            Gram matrices, Wanda takes its norms from them (``Grams.norms()``: ``sqrt(diag H)``).
        sequential: SparseGPT only: apply the final plan transformer block by transformer block
            (``block_groups``), each block pruned with the Gram matrices of its inputs on the
            model pruned so far, as the SparseGPT scripts and llm-compressor do; the search still
            scores candidates with the dense model's Gram matrices. On SmolLM2-135M, uniform 70%
            gave held-out perplexity 252.90 this way against 390.53 one shot. Costs about half a
            forward pass over the calibration per block.
        loss_fn: ``loss_fn(model, batch) -> scalar`` for the Fisher traces (``fisher_traces``);
            default: a causal LM's next-token cross-entropy.
        forward_fn: ``forward_fn(model, batch)`` runs one batch, for the activation norms and the
            ``"kl"`` fitness (``activation_norms``, ``kl_to_dense``); default: the causal LM call.
        kernels: ``"auto"``, ``"native"`` or ``"torch"``: where pruning and Fisher sums run
            (``msp.torch.kernels``; the same results).
        dense_copies: where the pruner keeps the dense weights while it searches: ``"device"``
            (each weight's device) or ``"host"`` (CPU memory); see :class:`Pruner`.
        progress: report every step on stderr (and progress bars).
        search: deprecated: a mapping of search settings (``DeprecationWarning``); pass them as
            keywords or ``settings=`` instead.
        checkpoint: ``method="search"`` only: None, or a file path. The search is saved there
            (atomically) after every batch of candidates it is told, with a description of its
            problem (layers, levels, target, settings, Fisher traces, the pruner's statistics, the
            fitness's name and batches). When the file exists, the call resumes its search and
            gives the plan an uninterrupted call gives (a finished search's file gives its plan
            again without evaluating anything); a file of another problem, or a truncated or
            corrupted one, raises ``msp.InvalidArgumentError``. A callable ``fitness`` is known by its name only: keep it
            the same function when resuming.
        fidelity_tokens: ``method="search"`` with ``fitness="kl"`` or ``"perplexity"`` only: None
            (every candidate scored on all of ``eval_batches``), or increasing token budgets,
            e.g. ``(256, 1024)``: staged fidelity, where every candidate of a generation is scored
            on the first 256 tokens of the fitness batches and only the best ``fidelity_keep``
            (a setting, default 0.25) again on the first 1024, whose values are the plans'
            fitness (sets ``fidelity_levels`` to the number of budgets). Batches are token ids
            ``[B, T]`` or dicts with ``input_ids``; a budget takes whole batches, then the leading
            rows of the next. Off by default: on the demo model it did not beat single fidelity
            at the same cost (README, "Search quality on the demo model").
        proxy_costs: ``method="search"`` only: additive cost tables that should track the fitness,
            as for :func:`msp.plan` (``[num_layers, num_levels]``, or a sequence of them).
        **overrides: fields of :class:`msp.SearchSettings` (``generations=10``, ``seed=3``, ...)
            replacing those of ``settings``.

    Returns:
        The applied :class:`msp.Plan`, carrying the layer names (``plan.to_dict()`` gives
        ``{layer name: sparsity}``).

    Raises:
        TypeError, ValueError: bad arguments, before the model is touched (``TypeError`` for an
            override that is not a search setting).
        Whatever the model or a user's ``fitness`` raises propagates unchanged, and the model is
        left dense (restored bit-identically), also on ``KeyboardInterrupt``.
    """
    criterion = check_pruner(pruner)
    if sequential not in (False, True):
        raise ValueError(f"sequential must be True or False, got {sequential!r}")
    if sequential and criterion.name != "sparsegpt":
        raise ValueError(f"sequential=True re-collects SparseGPT's Gram matrices; pruner={criterion.name!r} has none")
    if method not in PLANNING_METHODS:
        raise ValueError(f"method (the planning method) must be 'search', 'prior' or 'uniform', got {method!r}")
    if not (isinstance(fitness, str) and fitness in ("kl", "perplexity")) and not callable(fitness):
        raise ValueError(f"fitness must be 'kl', 'perplexity' or a callable fitness(model) -> float, got {fitness!r}")
    if fitness == "perplexity" and forward_fn is not None:
        raise ValueError("fitness='perplexity' is for causal LMs called on token ids; with forward_fn use 'kl' or "
                         "a callable")
    if search is not None:
        deprecated("prune(search={...})", "prune(..., settings=msp.SearchSettings(...)) or the settings as keywords")
    settings = _search_settings(settings, search, overrides)
    if checkpoint is not None:
        os.fspath(checkpoint)  # TypeError for what is not a path, before any work
    if method != "search" and (checkpoint is not None or fidelity_tokens is not None or proxy_costs is not None):
        raise ValueError("checkpoint, fidelity_tokens and proxy_costs are for method='search'")
    if fidelity_tokens is not None:
        fidelity_tokens = check_fidelity_tokens(fidelity_tokens)
        if callable(fitness):
            raise ValueError("fidelity_tokens needs fitness='kl' or 'perplexity' (a callable fitness(model) sees no "
                             "tokens; give it a fidelity parameter through msp.Search instead)")
        if settings.fidelity_levels not in (1, len(fidelity_tokens)):
            raise ValueError(f"fidelity_levels={settings.fidelity_levels} does not match the "
                             f"{len(fidelity_tokens)} fidelity_tokens budgets")
        settings = dataclasses.replace(settings, fidelity_levels=len(fidelity_tokens))
    level_set = as_level_set(levels) if levels is not None else _levels_for(structure, target)
    calibration = list(calibration_batches(calibration))
    if not calibration:
        raise ValueError("calibration is empty")
    if layers is None:
        layers = linear_layers(model, ignore=ignore)
    records = prepare_layers(layers, kernels=kernels)  # checks every weight before any work
    names = [r.name for r in records]
    if isinstance(groups, str):
        if groups != "block":
            raise ValueError(f"groups must be None, 'block' or one label per layer, got {groups!r}")
        groups = block_groups(names)
    stage = Stage("prune", progress)
    max_level = _max_levels(records, level_set, stage)

    if sensitivity is None:
        with stage(f"Fisher traces of {len(names)} layers on {len(calibration)} calibration batches"):
            traces = fisher_traces(model, layers, calibration, loss_fn, kernels=kernels, progress=progress)
        sensitivity = [traces[n] for n in names]
    elif isinstance(sensitivity, Mapping):
        sensitivity = [float(sensitivity[n]) for n in names]
    if norms is None and grams is not None and criterion.statistic == "norms":
        norms = grams.norms()  # Wanda's norms from the Gram matrices' pass: sqrt(diag H)
    statistics = {"norms": norms, "grams": grams}
    if criterion.statistic is not None and statistics[criterion.statistic] is None:
        with stage(f"{criterion.name}'s {criterion.statistic} on {len(calibration)} calibration batches"):
            statistics[criterion.statistic] = criterion.collect(model, layers, calibration, forward_fn, progress)
    given = {criterion.statistic: statistics[criterion.statistic]} if criterion.statistic else {}
    worker = Pruner(layers, pruner, kernels=kernels, dense_copies=dense_copies, **given)
    try:
        score = batches = None
        if method == "search" or callable(fitness):
            default = calibration[:2] if fidelity_tokens is None else calibration
            batches = list(eval_batches) if eval_batches is not None else default
            sets = [batches] if fidelity_tokens is None else fidelity_token_sets(batches, fidelity_tokens)
            score = _applying(worker, [_measure(fitness, model, s, forward_fn, stage) for s in sets])
        label = {"search": "evolutionary search", "prior": "Fisher prior plan", "uniform": "uniform plan"}[method]
        with stage(f"{label} at {target:.1%} average sparsity over {len(level_set)} levels"):
            if method == "search":
                description = None if checkpoint is None else problem_description(
                    names=names, sizes=worker.sizes, target=target, levels=level_set, groups=groups,
                    max_level=max_level, settings=settings, sensitivity=sensitivity, pruner=criterion.name,
                    statistic=given.get(criterion.statistic), fitness=fitness, eval_batches=batches,
                    fidelity_tokens=fidelity_tokens, proxy_costs=proxy_costs)
                with open_search(checkpoint, description, lambda: Search(
                        worker.sizes, target, level_set, sensitivity, groups, max_level=max_level,
                        settings=settings, names=names, proxy_costs=proxy_costs)) as searching:
                    result = run_search(searching, score, checkpoint, progress)
            else:
                result = make_plan(
                    worker.sizes, target, level_set, sensitivity=sensitivity, fitness=score, groups=groups,
                    max_level=max_level, method=method, settings=settings, progress=progress, names=names,
                )
        if sequential:
            with stage("applying the plan block by block on the pruned model's activations"):
                worker.restore()
                apply_sequential(model, layers, result.layer_levels, calibration, block_groups(names),
                                 forward_fn=forward_fn)
        else:
            with stage("applying the plan"):
                worker.apply(result)
    except BaseException:
        worker.restore()
        raise
    finally:
        worker.close()
    stage.note(f"done: {result!r}")
    return result
