"""SparseGPT applied block by block on the pruned model's own activations (``prune(...,
sequential=True)``), as the SparseGPT reference scripts and llm-compressor apply it.

For each group of layers in order (the transformer blocks of ``block_groups``), the Gram matrices of
that group's inputs are collected on the model as it is then, with the earlier groups already
pruned, and the group is pruned with them. The forward passes stop once every layer of the group
has run (the rest of the model is not computed).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping
from typing import Any, Callable

from torch import nn

from ..levels import Level
from .forward import call_model
from .grams import gram_matrices
from .pruner import apply_plan

__all__ = ["apply_sequential"]


class _GroupDone(Exception):
    """Raised by a forward hook once every layer of the group has run in the current batch."""


def apply_sequential(model: nn.Module, layers: Mapping[str, nn.Module], levels: list[Level], batches: list,
                     groups: list[Any], *, forward_fn: Callable[[nn.Module, Any], Any] | None = None,
                     damp: float = 0.01, block: int = 128) -> None:
    """Prune ``layers`` (in order, ``levels[i]`` for the i-th) with SparseGPT group by group, each
    group with the Gram matrices of its inputs on the model pruned so far.

    Args:
        model: the model the layers belong to (dense when called).
        layers: ``{name: module}`` in order; ``levels``: one level per layer.
        batches: the calibration batches (a list).
        groups: one label per layer; layers with the same label are pruned together, groups in
            the order they first appear (e.g. ``block_groups(names)``).
        forward_fn, damp, block: as for ``gram_matrices`` and ``apply_plan``.
    """
    items = list(layers.items())
    run = call_model if forward_fn is None else forward_fn
    for label in dict.fromkeys(groups):
        chosen = [(i, name, module) for i, ((name, module), g) in enumerate(zip(items, groups)) if g == label]
        group = OrderedDict((name, module) for _, name, module in chosen)
        ran: set[str] = set()

        def hook_for(name: str):
            def hook(module: nn.Module, args: tuple, output: Any) -> None:
                ran.add(name)
                if len(ran) == len(group):
                    raise _GroupDone

            return hook

        def forward(model: nn.Module, batch: Any) -> None:
            ran.clear()
            try:
                run(model, batch)
            except _GroupDone:
                pass

        handles = [module.register_forward_hook(hook_for(name)) for name, module in group.items()]
        try:
            grams = gram_matrices(model, group, batches, forward_fn=forward)
        finally:
            for handle in handles:
                handle.remove()
        apply_plan(group, [levels[i] for i, _, _ in chosen], pruner="sparsegpt", grams=grams, damp=damp,
                   block=block)
