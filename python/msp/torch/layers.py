"""A model's prunable layers and their groups: which modules msp plans for, in which order.

msp itself never needs to know what a transformer is: these helpers map module names to the layer
indices of the native library::

    layers = linear_layers(model)            # {name: nn.Linear}, lm_head left out
    groups = block_groups(layers)            # one id per transformer block, for msp.plan(groups=...)
"""

from __future__ import annotations

import re
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch import nn

__all__ = ["linear_layers", "block_groups"]

_INDEX = re.compile(r"^\d+$")


def is_hf_conv1d(module: nn.Module) -> bool:
    """True for Hugging Face ``transformers.pytorch_utils.Conv1D`` (GPT-2 style), whose weight is
    ``[in_features, out_features]``, the transpose of ``nn.Linear``'s; transformers is not imported."""
    cls = type(module)
    return cls.__name__ == "Conv1D" and cls.__module__.startswith("transformers")


def _ignored(name: str, ignore: tuple[str, ...]) -> bool:
    """True when ``name`` or one of its ancestors equals an ignore entry or ends with ``.entry``."""
    parts = name.split(".")
    for k in range(1, len(parts) + 1):
        prefix = ".".join(parts[:k])
        for entry in ignore:
            if prefix == entry or prefix.endswith("." + entry):
                return True
    return False


def linear_layers(model: nn.Module, ignore: Iterable[str] | str = ("lm_head",)) -> "OrderedDict[str, nn.Linear]":
    """Return the model's ``nn.Linear`` modules (subclasses included) by name, in module order.

    A layer's weight is ``[out_features, in_features]`` (rows = out, cols = in), the layout every
    msp function expects.

    Args:
        model: any ``nn.Module``.
        ignore: module names to skip. An entry matches a module whose dotted name equals it or ends
            with ``"." + entry``, and every module inside such a module: the default ``("lm_head",)``
            skips the output head; ``"layers.0"`` would skip every linear of block 0.

    Returns:
        An ordered dict ``{name: module}`` as ``model.named_modules()`` lists them.

    Raises:
        TypeError: the model contains Hugging Face ``Conv1D`` modules (GPT-2 style) that are not
            ignored. Their weight is stored ``[in_features, out_features]``, the transpose of
            ``nn.Linear``'s, so N:M groups and Wanda's per-input scales would run along the wrong
            axis; msp rejects them rather than guess. Convert them to ``nn.Linear`` (weight =
            ``conv.weight.T``) or list them in ``ignore``.
    """
    if isinstance(ignore, str):
        ignore = (ignore,)
    ignore = tuple(ignore)
    for entry in ignore:
        if not isinstance(entry, str):
            raise TypeError(f"ignore entries must be module names (str), got {type(entry).__name__}")
    layers: OrderedDict[str, nn.Linear] = OrderedDict()
    conv1d = []
    for name, module in model.named_modules():
        if not name or _ignored(name, ignore):
            continue
        if is_hf_conv1d(module):
            conv1d.append(name)
        elif isinstance(module, nn.Linear):
            layers[name] = module
    if conv1d:
        shown = ", ".join(conv1d[:4]) + (f", ... ({len(conv1d)} in all)" if len(conv1d) > 4 else "")
        raise TypeError(
            f"linear_layers: the model has Hugging Face Conv1D modules ({shown}) whose weight is "
            f"[in_features, out_features], the transpose of nn.Linear's; msp does not guess the layout. "
            f"Replace them with nn.Linear (weight = conv.weight.T) or pass their names in `ignore`."
        )
    return layers


def block_groups(names: Iterable[str] | Mapping[str, Any]) -> list[int]:
    """One group id per layer: layers of the same numbered block share an id.

    A layer's block is its dotted name up to and including the first all-digit component
    (``model.layers.12.self_attn.q_proj`` -> ``model.layers.12``; ``encoder.block.3.layer.0.wi``
    -> ``encoder.block.3``). A name without a numbered component is a group of its own. Ids count
    from 0 in order of first appearance, as ``msp.plan(groups=...)`` takes them.

    Args:
        names: layer names in layer order, or a mapping whose keys are (``linear_layers(model)``).
    """
    if isinstance(names, (str, bytes)):
        raise TypeError("names must be a sequence of layer names, not one string")
    ids: dict[str, int] = {}
    groups = []
    for name in names:
        if not isinstance(name, str):
            raise TypeError(f"layer names must be str, got {type(name).__name__}")
        parts = name.split(".")
        key = name
        for k, part in enumerate(parts):
            if _INDEX.match(part):
                key = ".".join(parts[: k + 1])
                break
        groups.append(ids.setdefault(key, len(ids)))
    return groups


def layer_items(layers: Any, what: str = "layers") -> list[tuple[str, nn.Module]]:
    """``[(name, module)]`` from a mapping (e.g. ``linear_layers(model)``) or ``(name, module)`` pairs.

    Raises:
        TypeError: not a mapping or pairs, a name that is not a str, a value that is not a module.
        ValueError: no layers, or a repeated name.
    """
    if isinstance(layers, Mapping):
        items = list(layers.items())
    elif isinstance(layers, Iterable) and not isinstance(layers, (str, bytes, nn.Module)):
        items = list(layers)
        if not all(isinstance(i, tuple) and len(i) == 2 for i in items):
            raise TypeError(f"{what} must be a mapping {{name: module}} (e.g. msp.torch.linear_layers(model))")
    else:
        raise TypeError(f"{what} must be a mapping {{name: module}}, got {type(layers).__name__}")
    if not items:
        raise ValueError(f"{what} is empty")
    names = [n for n, _ in items]
    if len(set(names)) != len(names):
        raise ValueError(f"{what} repeats a name")
    for name, module in items:
        if not isinstance(name, str):
            raise TypeError(f"layer names must be str, got {type(name).__name__}")
        if not isinstance(module, nn.Module):
            raise TypeError(f"layer {name!r} is a {type(module).__name__}, not an nn.Module")
    return items


def layer_weights(layers: Any) -> list[tuple[str, nn.Module, torch.Tensor]]:
    """``[(name, module, module.weight)]`` of :func:`layer_items`, each weight a tensor used by one
    layer only (a weight listed twice would be counted or pruned twice).

    Raises:
        TypeError, ValueError: as for :func:`layer_items`; ``ValueError`` also for a layer without
            a ``.weight`` tensor or two layers sharing one weight.
    """
    result = []
    owner: dict[int, str] = {}
    for name, module in layer_items(layers):
        weight = getattr(module, "weight", None)
        if not isinstance(weight, torch.Tensor):
            raise ValueError(f"layer {name!r} has no .weight tensor")
        if id(weight) in owner:
            raise ValueError(f"layers {owner[id(weight)]!r} and {name!r} share one weight; list it once")
        owner[id(weight)] = name
        result.append((name, module, weight))
    return result
